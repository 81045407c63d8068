//! The matrix products of the `small` language-model preset and of classifier
//! inference, in f32 with the `gemm` crate (as Candle's matmul calls it), in f32 with
//! the packed kernels (`ulmfit::kernels::f32gemm`), and in bf16 with f32 accumulation
//! (`ulmfit::kernels::bf16`).
//!
//! Products with a weight (`x W^T`) pack the weight once outside the timed loop, as a
//! forward pass packs it once for all its products, and pack the activations inside
//! it. Weight gradients (`G^T X`) pack both operands inside the timed loop, because
//! both change at every step. Run with `cargo bench --bench matmul_precision`.

use criterion::{criterion_group, criterion_main, Criterion};
use ulmfit::kernels::bf16::{self, Bf16Kernel};
use ulmfit::kernels::f32gemm::{self, F32Kernel};
use ulmfit::kernels::packed::MatRef;
use ulmfit::rng::Rng;

/// Operand layout of a benchmarked product.
#[derive(Clone, Copy)]
enum Layout {
    /// Activations `[m, k]` times the transpose of a row-major weight `[n, k]`.
    TimesWeightT,
    /// The transpose of gate gradients stored `[k, m]` times activations `[k, n]`.
    WeightGradient,
}

/// `(name, m, k, n, layout)` of the product `[m, k] x [k, n]`.
const SHAPES: [(&str, usize, usize, usize, Layout); 6] = [
    (
        "input_projection_2240x200x2400",
        2240,
        200,
        2400,
        Layout::TimesWeightT,
    ),
    (
        "recurrence_step_32x600x2400",
        32,
        600,
        2400,
        Layout::TimesWeightT,
    ),
    (
        "decoder_chunk_256x200x16000",
        256,
        200,
        16_000,
        Layout::TimesWeightT,
    ),
    (
        "grad_w_hh_2400x2240x600",
        2400,
        2240,
        600,
        Layout::WeightGradient,
    ),
    (
        "grad_w_ih_2400x2240x200",
        2400,
        2240,
        200,
        Layout::WeightGradient,
    ),
    (
        "classifier_step_64x600x2400",
        64,
        600,
        2400,
        Layout::TimesWeightT,
    ),
];

/// Computes `out = a b` with the `gemm` crate, reading both views through their
/// strides.
fn gemm_crate(a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32], parallelism: gemm::Parallelism) {
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    assert!(out.len() >= m * n);
    // SAFETY: `out` is row-major [m, n]; `a` and `b` are valid [m, k] and [k, n] views
    // (checked by `MatRef`) with the strides passed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data().as_ptr(),
            a.col_stride() as isize,
            a.row_stride() as isize,
            b.data().as_ptr(),
            b.col_stride() as isize,
            b.row_stride() as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}

fn products(c: &mut Criterion) {
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    for (name, m, k, n, layout) in SHAPES {
        let mut rng = Rng::seed(3);
        let left = rng.uniform(m * k, -1.0, 1.0);
        let right = rng.uniform(k * n, -0.1, 0.1);
        let (a, b) = match layout {
            Layout::TimesWeightT => (
                MatRef::row_major(&left, m, k),
                MatRef::transposed(&right, k, n),
            ),
            Layout::WeightGradient => (
                MatRef::transposed(&left, m, k),
                MatRef::row_major(&right, k, n),
            ),
        };
        let mut out = vec![0.0f32; m * n];
        let mut group = c.benchmark_group(name);
        group.sample_size(10);
        group.warm_up_time(std::time::Duration::from_secs(1));
        group.measurement_time(std::time::Duration::from_secs(3));
        group.bench_function("f32_gemm_crate", |bench| {
            bench.iter(|| gemm_crate(a, b, &mut out, parallelism))
        });
        let f32_kernel = F32Kernel::detect();
        let bf16_kernel = Bf16Kernel::detect();
        match layout {
            Layout::TimesWeightT => {
                let f32_weight = f32gemm::PackedB::pack(b);
                group.bench_function(format!("f32_packed_{f32_kernel:?}"), |bench| {
                    bench.iter(|| {
                        let x = f32gemm::PackedA::pack(a);
                        f32gemm::gemm_packed(
                            f32_kernel,
                            &x,
                            &f32_weight,
                            &mut out,
                            n,
                            false,
                            threads,
                        );
                    })
                });
                let bf16_weight = bf16::PackedB::pack(b);
                group.bench_function(format!("bf16_{bf16_kernel:?}"), |bench| {
                    bench.iter(|| {
                        let x = bf16::PackedA::pack(a);
                        bf16::gemm_packed(
                            bf16_kernel,
                            &x,
                            &bf16_weight,
                            &mut out,
                            n,
                            false,
                            threads,
                        );
                    })
                });
            }
            Layout::WeightGradient => {
                group.bench_function(format!("f32_packed_{f32_kernel:?}"), |bench| {
                    bench.iter(|| f32gemm::matmul(a, b, &mut out, n, false))
                });
                group.bench_function(format!("bf16_{bf16_kernel:?}"), |bench| {
                    bench.iter(|| bf16::matmul(a, b, &mut out, n, false))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, products);
criterion_main!(benches);
