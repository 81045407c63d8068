//! The matrix products of the `small` language-model preset in f32 (the `gemm` crate,
//! as the fused kernels call it) and in bf16 with f32 accumulation
//! (`ulmfit::kernels::bf16`), each `x W^T` with a row-major weight `W`.
//!
//! The bf16 figures include packing the activations, as every product must; the weight
//! is packed once outside the timed loop, as a forward pass packs it once for all its
//! products. Run with `cargo bench --bench matmul_precision`.

use criterion::{criterion_group, criterion_main, Criterion};
use ulmfit::kernels::bf16::{gemm_packed, Bf16Kernel, MatRef, PackedA, PackedB};
use ulmfit::rng::Rng;

/// `(name, m, k, n)`: activations `[m, k]` times the transpose of a weight `[n, k]`.
const SHAPES: [(&str, usize, usize, usize); 3] = [
    ("input_projection_2240x200x2400", 2240, 200, 2400),
    ("recurrence_step_32x600x2400", 32, 600, 2400),
    ("decoder_chunk_256x200x16000", 256, 200, 16_000),
];

fn products(c: &mut Criterion) {
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    for (name, m, k, n) in SHAPES {
        let mut rng = Rng::seed(3);
        let x = rng.uniform(m * k, -1.0, 1.0);
        let w = rng.uniform(n * k, -0.1, 0.1);
        let mut out = vec![0.0f32; m * n];
        let mut group = c.benchmark_group(name);
        group.sample_size(10);
        group.bench_function("f32_gemm", |b| {
            b.iter(|| {
                // SAFETY: `out` is [m, n], `x` [m, k] and `w` [n, k], all row-major.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        out.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        x.as_ptr(),
                        1,
                        k as isize,
                        w.as_ptr(),
                        k as isize,
                        1,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        parallelism,
                    )
                }
            })
        });
        let packed_w = PackedB::pack_transposed(&w, n, k);
        let kernel = Bf16Kernel::detect();
        group.bench_function(format!("bf16_{kernel:?}"), |b| {
            b.iter(|| {
                let a = PackedA::pack(MatRef::row_major(&x, m, k));
                gemm_packed(kernel, &a, &packed_w, &mut out, n, false, threads);
            })
        });
        group.bench_function("bf16_weight_packing", |b| {
            b.iter(|| PackedB::pack_transposed(&w, n, k))
        });
        group.finish();
    }
}

criterion_group!(benches, products);
criterion_main!(benches);
