//! Fused CPU operations that Candle's stock operations would spread over many small
//! tensors: the leaves of the model code, with no knowledge of the model above them.
//! [`cuda`] contains CUDA kernels (launched only with the `cuda` feature) and their CPU
//! twins.

pub mod activations;
pub mod bf16;
pub mod cuda;
pub mod decoder;
pub mod f32gemm;
pub mod int8;
pub mod lstm;
pub mod packed;
pub mod precision;

use candle_core::{bail, CpuStorage, Layout, Result, WithDType};
use gemm::Parallelism;

/// Returns the `gemm` parallelism matching Candle's CPU thread count.
fn parallelism() -> Parallelism {
    let threads = candle_core::utils::get_num_threads();
    if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// Returns the contiguous elements of a storage, or an error naming the op and operand.
fn contiguous_slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
    operand: &str,
) -> Result<&'a [T]> {
    let data = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: {operand} must be contiguous"),
    }
}
