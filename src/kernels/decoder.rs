//! A linear decoder fused with the mean cross-entropy, as one Candle custom operation.
//!
//! `logits = h W^T + b` for `N` positions and `V` classes would take `N * V` values, and
//! autograd would hold their gradient too: 0.5 GB each for fastai's WikiText-103 model.
//! This operation walks over the positions in chunks of [`CHUNK_ROWS`]. For each chunk it
//! computes the logits, their log-sum-exp and loss, turns the logits in place into the
//! gradient of the mean loss (`(softmax - one_hot(target)) / N`), and accumulates the
//! gradients of `h`, `W` and `b` with matrix products. The forward pass therefore does the
//! backward work too when an input tracks gradients, and keeps only the three gradients.

use std::sync::Mutex;

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, DType, Device, Layout, Result, Shape, Tensor,
    WithDType,
};
use rayon::prelude::*;

use super::bf16::{Bf16Gemm, MatRef};
use super::f32gemm::{f32_backend, F32Backend, F32Gemm};
use super::packed::PackedGemm;
use super::precision::Precision;
use super::{contiguous_slice, parallelism};

/// Positions per chunk: the largest logits block held at once is `CHUNK_ROWS x V`.
pub const CHUNK_ROWS: usize = 256;

/// Returns the mean cross-entropy of `h W^T + b` against `targets`, as a scalar tensor,
/// without holding all logits at once.
///
/// Shapes: `hidden` `[N, E]`, `weight` `[V, E]` (a tied embedding works as is), `bias`
/// `[V]` or `None`, `targets` `[N]` u32 with every id below `V`. `hidden`, `weight` and
/// `bias` share one floating dtype (f32 or f64) and live on the CPU. Gradients flow to
/// `hidden`, `weight` and `bias`.
pub fn decoder_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    targets: &Tensor,
) -> Result<Tensor> {
    decoder_cross_entropy_with(hidden, weight, bias, targets, Precision::F32)
}

/// Runs [`decoder_cross_entropy`] with its three matrix products in `precision`.
/// f32 inputs with [`Precision::F32`] run on the packed f32 kernels, or on the `gemm`
/// crate when [`super::f32gemm::f32_backend`] selects it; f64 inputs always run on the
/// `gemm` crate. [`Precision::Bf16`] packs the weight to bf16 once per call and rounds the
/// activations of every product, with f32 sums. It applies to f32 inputs only.
/// [`Precision::Int8`] is rejected, because this operation computes gradients.
pub fn decoder_cross_entropy_with(
    hidden: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    targets: &Tensor,
    precision: Precision,
) -> Result<Tensor> {
    if precision == Precision::Int8 {
        bail!("decoder_cross_entropy: int8 products serve inference only; use f32 or bf16");
    }
    let (rows, features) = hidden.dims2()?;
    let (classes, weight_features) = weight.dims2()?;
    if weight_features != features {
        bail!(
            "decoder_cross_entropy: hidden {:?} and weight {:?} do not match [N, E] and [V, E]",
            hidden.dims(),
            weight.dims()
        );
    }
    if rows == 0 {
        bail!(
            "decoder_cross_entropy: no positions (hidden {:?})",
            hidden.dims()
        );
    }
    if targets.dims() != [rows] {
        bail!(
            "decoder_cross_entropy: targets have shape {:?}, expected [{rows}]",
            targets.dims()
        );
    }
    let targets: Vec<u32> = targets.to_dtype(DType::U32)?.to_vec1()?;
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= classes) {
        bail!("decoder_cross_entropy: target {bad} is outside the {classes} classes");
    }
    let bias = match bias {
        Some(bias) => {
            if bias.dims() != [classes] {
                bail!(
                    "decoder_cross_entropy: bias has shape {:?}, expected [{classes}]",
                    bias.dims()
                );
            }
            bias.contiguous()?
        }
        None => Tensor::zeros(classes, hidden.dtype(), hidden.device())?,
    };
    let save_for_backward = hidden.track_op() || weight.track_op() || bias.track_op();
    let op = FusedDecoderLoss {
        targets,
        precision,
        save_for_backward,
        grads: Mutex::new(None),
    };
    hidden
        .contiguous()?
        .apply_op3(&weight.contiguous()?, &bias, op)
}

/// Computes the same loss with stock Candle operations: the full logits, then
/// `candle_nn::loss::cross_entropy`. Same arguments and result as
/// [`decoder_cross_entropy`]; kept as the reference for tests.
pub fn decoder_cross_entropy_autograd(
    hidden: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    targets: &Tensor,
) -> Result<Tensor> {
    let mut logits = hidden.matmul(&weight.t()?)?;
    if let Some(bias) = bias {
        logits = logits.broadcast_add(bias)?;
    }
    candle_nn::loss::cross_entropy(&logits, targets)
}

/// The custom operation. Inputs: hidden `[N, E]`, weight `[V, E]`, bias `[V]`; output:
/// the mean loss, a scalar.
struct FusedDecoderLoss {
    targets: Vec<u32>,
    /// Format of the products of f32 inputs.
    precision: Precision,
    save_for_backward: bool,
    /// Gradients of the mean loss wrt hidden, weight and bias, from the forward pass.
    grads: Mutex<Option<(Tensor, Tensor, Tensor)>>,
}

/// Element types the kernel runs on.
trait DecoderFloat: WithDType + Send + Sync {
    fn exp(self) -> Self;
    fn ln(self) -> Self;

    /// Runs [`row_loss`] on one row.
    fn row_loss(
        row: &mut [Self],
        bias: &[Self],
        target: usize,
        scale: f64,
        with_grads: bool,
    ) -> f64 {
        row_loss(row, bias, target, scale, with_grads)
    }
}

impl DecoderFloat for f32 {
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn row_loss(row: &mut [f32], bias: &[f32], target: usize, scale: f64, with_grads: bool) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if super::f32gemm::has_avx512f() {
            // SAFETY: the CPU supports AVX512F, checked just above.
            return unsafe { avx512::row_loss(row, bias, target, scale, with_grads) };
        }
        row_loss(row, bias, target, scale, with_grads)
    }
}

impl DecoderFloat for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
}

/// Gradients of the mean loss: `(dh [N, E], dW [V, E], db [V])`.
type Gradients<T> = (Vec<T>, Vec<T>, Vec<T>);

impl FusedDecoderLoss {
    /// Returns the mean loss and, when `with_grads`, the gradients.
    fn compute<T: DecoderFloat>(
        &self,
        hidden: &[T],
        weight: &[T],
        bias: &[T],
        (rows, features, classes): (usize, usize, usize),
        with_grads: bool,
    ) -> (f64, Option<Gradients<T>>) {
        let parallelism = parallelism();
        let chunk_rows = CHUNK_ROWS.min(rows);
        let mut logits = vec![T::zero(); chunk_rows * classes];
        let mut grads = with_grads.then(|| {
            (
                vec![T::zero(); rows * features],
                vec![T::zero(); classes * features],
                vec![T::zero(); classes],
            )
        });
        let scale = 1.0 / rows as f64;
        let mut total = 0.0f64;
        for start in (0..rows).step_by(chunk_rows) {
            let count = chunk_rows.min(rows - start);
            let h = &hidden[start * features..(start + count) * features];
            let block = &mut logits[..count * classes];
            // block[r, v] = sum_k h[r, k] * weight[v, k]
            // SAFETY: `block` is [count, classes] row-major, `h` [count, features]
            // row-major, and `weight` [classes, features] row-major read as its transpose.
            unsafe {
                gemm::gemm(
                    count,
                    classes,
                    features,
                    block.as_mut_ptr(),
                    1,
                    classes as isize,
                    false,
                    h.as_ptr(),
                    1,
                    features as isize,
                    weight.as_ptr(),
                    features as isize,
                    1,
                    T::zero(),
                    T::one(),
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            let targets = &self.targets[start..start + count];
            total += block
                .par_chunks_mut(classes)
                .zip(targets.par_iter())
                .map(|(row, &target)| T::row_loss(row, bias, target as usize, scale, with_grads))
                .sum::<f64>();
            let Some((grad_h, grad_w, grad_b)) = grads.as_mut() else {
                continue;
            };
            for row in block.chunks(classes) {
                for (sum, &g) in grad_b.iter_mut().zip(row) {
                    *sum += g;
                }
            }
            let grad_h = &mut grad_h[start * features..(start + count) * features];
            // grad_h[r, k] = sum_v block[r, v] * weight[v, k]
            // SAFETY: `grad_h` is [count, features], `block` [count, classes] and
            // `weight` [classes, features], all row-major and fully allocated.
            unsafe {
                gemm::gemm(
                    count,
                    features,
                    classes,
                    grad_h.as_mut_ptr(),
                    1,
                    features as isize,
                    false,
                    block.as_ptr(),
                    1,
                    classes as isize,
                    weight.as_ptr(),
                    1,
                    features as isize,
                    T::zero(),
                    T::one(),
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            // grad_w[v, k] += sum_r block[r, v] * h[r, k]
            // SAFETY: `grad_w` is [classes, features] row-major; `block` [count, classes]
            // row-major read as its transpose; `h` [count, features] row-major.
            unsafe {
                gemm::gemm(
                    classes,
                    features,
                    count,
                    grad_w.as_mut_ptr(),
                    1,
                    features as isize,
                    true,
                    block.as_ptr(),
                    classes as isize,
                    1,
                    h.as_ptr(),
                    1,
                    features as isize,
                    T::one(),
                    T::one(),
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
        (total * scale, grads)
    }

    /// Computes what [`Self::compute`] does, for f32 inputs, with the packed kernels
    /// of `G`.
    fn compute_packed<G: PackedGemm>(
        &self,
        hidden: &[f32],
        weight: &[f32],
        bias: &[f32],
        (rows, features, classes): (usize, usize, usize),
        with_grads: bool,
    ) -> (f64, Option<Gradients<f32>>) {
        let threads = candle_core::utils::get_num_threads();
        // The weight serves as W^T [features, classes] for the logits and as W
        // [classes, features] for the gradient of h: pack it both ways, once.
        let weight_t = G::pack_b(MatRef::transposed(weight, features, classes));
        let weight_rows =
            with_grads.then(|| G::pack_b(MatRef::row_major(weight, classes, features)));
        let chunk_rows = CHUNK_ROWS.min(rows);
        let mut logits = vec![0.0f32; chunk_rows * classes];
        let mut grads = with_grads.then(|| {
            (
                vec![0.0f32; rows * features],
                vec![0.0f32; classes * features],
                vec![0.0f32; classes],
            )
        });
        let scale = 1.0 / rows as f64;
        let mut total = 0.0f64;
        for start in (0..rows).step_by(chunk_rows) {
            let count = chunk_rows.min(rows - start);
            let h = &hidden[start * features..(start + count) * features];
            let block = &mut logits[..count * classes];
            let h_packed = G::pack_a(MatRef::row_major(h, count, features));
            G::gemm(&h_packed, &weight_t, block, classes, false, threads);
            let targets = &self.targets[start..start + count];
            total += block
                .par_chunks_mut(classes)
                .zip(targets.par_iter())
                .map(|(row, &target)| f32::row_loss(row, bias, target as usize, scale, with_grads))
                .sum::<f64>();
            let (Some((grad_h, grad_w, grad_b)), Some(weight_rows)) =
                (grads.as_mut(), weight_rows.as_ref())
            else {
                continue;
            };
            for row in block.chunks(classes) {
                for (sum, &g) in grad_b.iter_mut().zip(row) {
                    *sum += g;
                }
            }
            // grad_h = block W
            let block_packed = G::pack_a(MatRef::row_major(block, count, classes));
            let grad_h = &mut grad_h[start * features..(start + count) * features];
            G::gemm(&block_packed, weight_rows, grad_h, features, false, threads);
            // grad_w += block^T h
            let block_t = G::pack_a(MatRef::transposed(block, classes, count));
            let h_rows = G::pack_b(MatRef::row_major(h, count, features));
            G::gemm(&block_t, &h_rows, grad_w, features, true, threads);
        }
        (total * scale, grads)
    }

    fn run<T: DecoderFloat>(
        &self,
        storages: [(&CpuStorage, &Layout); 3],
    ) -> Result<(CpuStorage, Shape)> {
        let [(s1, l1), (s2, l2), (s3, l3)] = storages;
        let (rows, features) = l1.shape().dims2()?;
        let classes = l2.shape().dims2()?.0;
        let hidden = contiguous_slice::<T>(s1, l1, "decoder_cross_entropy", "hidden")?;
        let weight = contiguous_slice::<T>(s2, l2, "decoder_cross_entropy", "weight")?;
        let bias = contiguous_slice::<T>(s3, l3, "decoder_cross_entropy", "bias")?;
        let dims = (rows, features, classes);
        let (loss, grads) = self.compute(hidden, weight, bias, dims, self.save_for_backward);
        self.finish(loss, grads, dims)
    }

    /// Runs the operation on f32 inputs with the packed kernels of `G`.
    fn run_packed<G: PackedGemm>(
        &self,
        storages: [(&CpuStorage, &Layout); 3],
    ) -> Result<(CpuStorage, Shape)> {
        let [(s1, l1), (s2, l2), (s3, l3)] = storages;
        let (rows, features) = l1.shape().dims2()?;
        let classes = l2.shape().dims2()?.0;
        let hidden = contiguous_slice::<f32>(s1, l1, "decoder_cross_entropy", "hidden")?;
        let weight = contiguous_slice::<f32>(s2, l2, "decoder_cross_entropy", "weight")?;
        let bias = contiguous_slice::<f32>(s3, l3, "decoder_cross_entropy", "bias")?;
        let dims = (rows, features, classes);
        let (loss, grads) =
            self.compute_packed::<G>(hidden, weight, bias, dims, self.save_for_backward);
        self.finish(loss, grads, dims)
    }

    /// Stores the gradients for the backward pass and returns the loss as the output.
    fn finish<T: DecoderFloat>(
        &self,
        loss: f64,
        grads: Option<Gradients<T>>,
        (rows, features, classes): (usize, usize, usize),
    ) -> Result<(CpuStorage, Shape)> {
        if let Some((grad_h, grad_w, grad_b)) = grads {
            let device = Device::Cpu;
            let tensors = (
                Tensor::from_vec(grad_h, (rows, features), &device)?,
                Tensor::from_vec(grad_w, (classes, features), &device)?,
                Tensor::from_vec(grad_b, classes, &device)?,
            );
            let mut slot = self.grads.lock().map_err(|_| {
                candle_core::Error::Msg("decoder_cross_entropy: gradient lock poisoned".into())
            })?;
            *slot = Some(tensors);
        }
        Ok((T::to_cpu_storage(&[T::from_f64(loss)]), Shape::from(())))
    }
}

/// Turns one row of logits (bias not yet added) into the gradient of the mean loss,
/// `(softmax - one_hot(target)) * scale`, when `with_grads`, and returns the row's loss
/// `logsumexp - logit[target]`.
fn row_loss<T: DecoderFloat>(
    row: &mut [T],
    bias: &[T],
    target: usize,
    scale: f64,
    with_grads: bool,
) -> f64 {
    let mut max = T::from_f64(f64::NEG_INFINITY);
    for (value, &b) in row.iter_mut().zip(bias) {
        *value += b;
        if *value > max {
            max = *value;
        }
    }
    let target_logit = row[target];
    let mut sum = T::zero();
    if with_grads {
        // Keep exp(logit - max) in place, so the softmax needs no second exponential.
        for value in row.iter_mut() {
            *value = (*value - max).exp();
            sum += *value;
        }
        let factor = T::from_f64(scale) / sum;
        for value in row.iter_mut() {
            *value *= factor;
        }
        row[target] -= T::from_f64(scale);
    } else {
        for &value in row.iter() {
            sum += (value - max).exp();
        }
    }
    (max + sum.ln() - target_logit).to_f64()
}

/// [`row_loss`] on 16 lanes of AVX-512, with the exponential of
/// [`super::activations::avx512::exp`] (within 3e-7 of the C library's).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::activations::avx512::{exp, load, store, tail};

    /// The AVX-512 version of [`super::row_loss`] for f32.
    #[target_feature(enable = "avx512f")]
    pub fn row_loss(
        row: &mut [f32],
        bias: &[f32],
        target: usize,
        scale: f64,
        with_grads: bool,
    ) -> f64 {
        let len = row.len();
        assert_eq!(bias.len(), len, "row_loss: bias and row lengths differ");
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for j in (0..len).step_by(16) {
            let m = tail(j, len);
            let value = _mm512_add_ps(load(row, j, m), load(bias, j, m));
            store(row, j, m, value);
            max = _mm512_mask_max_ps(max, m, max, value);
        }
        let max = _mm512_reduce_max_ps(max);
        let target_logit = row[target];
        let shift = _mm512_set1_ps(max);
        let mut sum = _mm512_setzero_ps();
        for j in (0..len).step_by(16) {
            let m = tail(j, len);
            let e = exp(_mm512_sub_ps(load(row, j, m), shift));
            sum = _mm512_mask_add_ps(sum, m, sum, e);
            if with_grads {
                // Keep exp(logit - max) in place, so the softmax needs no second exponential.
                store(row, j, m, e);
            }
        }
        let sum = _mm512_reduce_add_ps(sum);
        if with_grads {
            let factor = _mm512_set1_ps(scale as f32 / sum);
            for j in (0..len).step_by(16) {
                let m = tail(j, len);
                store(row, j, m, _mm512_mul_ps(load(row, j, m), factor));
            }
            row[target] -= scale as f32;
        }
        f64::from(max + sum.ln() - target_logit)
    }
}

impl candle_core::CustomOp3 for FusedDecoderLoss {
    fn name(&self) -> &'static str {
        "fused_decoder_cross_entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let storages = [(s1, l1), (s2, l2), (s3, l3)];
        match s1.dtype() {
            DType::F32 if self.precision == Precision::Bf16 => {
                self.run_packed::<Bf16Gemm>(storages)
            }
            DType::F32 if f32_backend() == F32Backend::Packed => {
                self.run_packed::<F32Gemm>(storages)
            }
            DType::F32 => self.run::<f32>(storages),
            DType::F64 => self.run::<f64>(storages),
            dtype => {
                bail!("decoder_cross_entropy: dtype {dtype:?} is not supported, use f32 or f64")
            }
        }
    }

    fn bwd(
        &self,
        _hidden: &Tensor,
        _weight: &Tensor,
        _bias: &Tensor,
        _loss: &Tensor,
        grad_loss: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grads = self
            .grads
            .lock()
            .map_err(|_| {
                candle_core::Error::Msg("decoder_cross_entropy: gradient lock poisoned".into())
            })?
            .clone();
        let Some((grad_h, grad_w, grad_b)) = grads else {
            bail!("decoder_cross_entropy: backward called, but the forward pass saved no gradients (no input tracked gradients)");
        };
        let scale = grad_loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let scaled = |t: Tensor| -> Result<Tensor> {
            if scale == 1.0 {
                Ok(t)
            } else {
                t.affine(scale, 0.0)
            }
        };
        Ok((
            Some(scaled(grad_h)?),
            Some(scaled(grad_w)?),
            Some(scaled(grad_b)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The f32 row pass, vectorised where the CPU has AVX-512, against the scalar pass
    /// in f64, on a row of 1,007 logits (whole vectors and a partial one).
    #[test]
    fn f32_row_loss_matches_f64() {
        let mut rng = Rng::seed(8);
        let logits = rng.uniform(1007, -8.0, 8.0);
        let bias = rng.uniform(1007, -1.0, 1.0);
        let (target, scale) = (1000, 0.25);
        for with_grads in [false, true] {
            let mut row = logits.clone();
            let loss = f32::row_loss(&mut row, &bias, target, scale, with_grads);
            let mut reference: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
            let bias64: Vec<f64> = bias.iter().map(|&v| f64::from(v)).collect();
            let expected = row_loss(&mut reference, &bias64, target, scale, with_grads);
            assert!((loss - expected).abs() < 1e-5, "loss {loss} vs {expected}");
            if with_grads {
                for (index, (got, want)) in row.iter().zip(&reference).enumerate() {
                    let error = (f64::from(*got) - want).abs();
                    assert!(error < 1e-7, "gradient {index}: {got} vs {want}");
                }
            }
        }

        // One NaN logit makes the loss NaN, so a diverged model is not hidden.
        let mut row = logits.clone();
        row[17] = f32::NAN;
        let loss = f32::row_loss(&mut row, &bias, target, scale, false);
        assert!(loss.is_nan(), "loss {loss} with a NaN logit");
    }
}
