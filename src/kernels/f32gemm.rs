//! f32 matrix products with packed operands and an AVX-512 register tile.
//!
//! `C = A B` (or `C += A B`) in f32 throughout. The micro-kernel keeps an
//! [`MR`] x [`NR`] tile of C in 24 of the 32 zmm registers and, for every step along
//! `k`, loads three 16-lane vectors of B, broadcasts one value of A per row and issues
//! 24 `vfmadd231ps`.
//!
//! Layout of the packed operands:
//! - [`PackedA`] is cut into groups of [`MR`] rows. Group `g` contains, for every `p` in
//!   `0..k`, the [`MR`] values `a[g MR + r, p]`, so the micro-kernel reads A in order.
//!   The last group is padded with zero rows.
//! - [`PackedB`] is cut into panels of [`NR`] columns. Panel `q` contains, for every `p`,
//!   the [`NR`] values `b[p, q NR + c]`, padded with zero columns.
//!
//! [`F32Kernel::detect`] picks the AVX-512 micro-kernel at run time and falls back to a
//! portable one with the same packing on other CPUs. The products of the fused LSTM
//! and decoder operations choose between this module and the `gemm` crate with
//! [`f32_backend`].

use std::cell::Cell;
use std::sync::OnceLock;

pub use super::packed::MatRef;
use super::packed::{
    fill_bias_rows, fill_groups, for_each_tile, impl_packed_gemm, prepare_output, run_tasks,
    start_tile, store_portable_tile, Blocking, OutPtr, PackedGemm,
};

/// Rows of the register tile.
pub const MR: usize = 8;
/// Columns of the register tile: three 16-lane vectors.
pub const NR: usize = 48;
/// Tile and cache blocking: a `128 x NR` panel of B is 24 KiB (it fits a 32 KiB L1 data
/// cache), and a `256 x 128` block of A 128 KiB.
const BLOCKING: Blocking = Blocking {
    mr: MR,
    nr: NR,
    kc: 128,
    mc: 256,
};
/// Packed values below which packing runs on one thread.
const PARALLEL_PACKING: usize = 1 << 16;

/// Implementation of the micro-kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F32Kernel {
    /// `vfmadd231ps` on 512-bit registers (x86-64 with AVX512F).
    Avx512,
    /// Plain Rust loops, which the compiler may vectorise for the build target.
    Portable,
}

impl F32Kernel {
    /// Returns the AVX-512 kernel when this CPU has AVX512F, else the portable one.
    /// The check runs once per process.
    pub fn detect() -> Self {
        static KERNEL: OnceLock<F32Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            if has_avx512f() {
                Self::Avx512
            } else {
                Self::Portable
            }
        })
    }
}

/// Returns whether this CPU has AVX512F.
pub fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Library behind the f32 products of the fused CPU operations
/// ([`super::lstm`], [`super::decoder`]) and of packed f32 inference weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F32Backend {
    /// This module's packed kernels.
    Packed,
    /// The `gemm` crate, as Candle's CPU matmul uses it.
    GemmCrate,
}

thread_local! {
    static BACKEND_OVERRIDE: Cell<Option<F32Backend>> = const { Cell::new(None) };
}

/// Returns the f32 backend for operations started on this thread: the one set by
/// [`with_f32_backend`] while it runs, else `gemm` when the environment variable
/// `ULMFIT_F32_GEMM` is `gemm` (read once per process), else [`F32Backend::Packed`].
pub fn f32_backend() -> F32Backend {
    static FROM_ENV: OnceLock<F32Backend> = OnceLock::new();
    BACKEND_OVERRIDE.with(Cell::get).unwrap_or_else(|| {
        *FROM_ENV.get_or_init(|| match std::env::var("ULMFIT_F32_GEMM").as_deref() {
            Ok("gemm") => F32Backend::GemmCrate,
            _ => F32Backend::Packed,
        })
    })
}

/// Runs `f` with `backend` for the f32 products of operations started on this thread,
/// then restores the previous choice. Products run on rayon workers follow the choice
/// of the thread that started the operation.
pub fn with_f32_backend<R>(backend: F32Backend, f: impl FnOnce() -> R) -> R {
    /// Restores the previous override, also when `f` panics.
    struct Restore(Option<F32Backend>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BACKEND_OVERRIDE.with(|cell| cell.set(self.0));
        }
    }
    let _restore = Restore(BACKEND_OVERRIDE.with(|cell| cell.replace(Some(backend))));
    f()
}

/// The left operand `A [m, k]` of a product, packed in groups of [`MR`] rows.
#[derive(Debug, Clone)]
pub struct PackedA {
    values: Vec<f32>,
    rows: usize,
    depth: usize,
}

impl PackedA {
    /// Packs `a` (`[m, k]`).
    pub fn pack(a: MatRef<'_>) -> Self {
        let (rows, depth) = (a.rows(), a.cols());
        let groups = rows.div_ceil(MR);
        let mut values = vec![0.0f32; groups * depth * MR];
        let data = a.data();
        let (row_stride, col_stride) = (a.row_stride(), a.col_stride());
        fill_groups(&mut values, depth * MR, PARALLEL_PACKING, |group, out| {
            let first = group * MR;
            let count = MR.min(rows - first);
            if row_stride == 1 {
                // A transposed view: the rows of one group are adjacent for each p.
                for (p, chunk) in out.chunks_exact_mut(MR).enumerate() {
                    let start = first + p * col_stride;
                    chunk[..count].copy_from_slice(&data[start..start + count]);
                }
            } else if col_stride == 1 {
                for r in 0..count {
                    let start = (first + r) * row_stride;
                    for (p, &value) in data[start..start + depth].iter().enumerate() {
                        out[p * MR + r] = value;
                    }
                }
            } else {
                for p in 0..depth {
                    for r in 0..count {
                        out[p * MR + r] = a.at(first + r, p);
                    }
                }
            }
        });
        Self {
            values,
            rows,
            depth,
        }
    }

    /// Number of rows `m`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inner dimension `k`.
    pub fn depth(&self) -> usize {
        self.depth
    }
}

/// The right operand `B [k, n]` of a product, packed into panels of [`NR`] columns.
/// Pack a weight once and reuse it for many products.
#[derive(Debug, Clone)]
pub struct PackedB {
    values: Vec<f32>,
    depth: usize,
    cols: usize,
}

impl PackedB {
    /// Packs `b` (`[k, n]`).
    pub fn pack(b: MatRef<'_>) -> Self {
        let (depth, cols) = (b.rows(), b.cols());
        let panels = cols.div_ceil(NR);
        let mut values = vec![0.0f32; panels * depth * NR];
        let data = b.data();
        let (row_stride, col_stride) = (b.row_stride(), b.col_stride());
        fill_groups(&mut values, depth * NR, PARALLEL_PACKING, |panel, out| {
            let first = panel * NR;
            let count = NR.min(cols - first);
            if col_stride == 1 {
                for (p, chunk) in out.chunks_exact_mut(NR).enumerate() {
                    let start = p * row_stride + first;
                    chunk[..count].copy_from_slice(&data[start..start + count]);
                }
            } else if row_stride == 1 {
                // A transposed view (a row-major weight): column j is contiguous.
                for c in 0..count {
                    let start = (first + c) * col_stride;
                    for (p, &value) in data[start..start + depth].iter().enumerate() {
                        out[p * NR + c] = value;
                    }
                }
            } else {
                for p in 0..depth {
                    for c in 0..count {
                        out[p * NR + c] = b.at(p, first + c);
                    }
                }
            }
        });
        Self {
            values,
            depth,
            cols,
        }
    }

    /// Packs the transpose of a row-major weight `w` `[n, k]`, so that the product
    /// computes `x w^T` as a linear layer does.
    pub fn pack_transposed(w: &[f32], n: usize, k: usize) -> Self {
        Self::pack(MatRef::transposed(w, k, n))
    }

    /// Inner dimension `k`.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Number of columns `n`.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Computes `c = a b`, or `c += a b` with `accumulate`, where `c` is row-major `[m, n]`
/// with row stride `ldc`, using `kernel` and up to `threads` rayon tasks.
///
/// Panics when the inner dimensions differ or `c` is too short for `[m, n]`.
pub fn gemm_packed(
    kernel: F32Kernel,
    a: &PackedA,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    gemm_packed_with(kernel, a, b, c, ldc, accumulate, None, threads);
}

/// Computes `c = a b + bias` with `bias` (`[n]`) added to every row, as
/// [`gemm_packed`] does `c = a b`. Each tile writes its part of the bias just before
/// its first product, while that part of `c` is in cache, so `c` is not traversed
/// twice.
///
/// Panics as [`gemm_packed`], and when `bias` does not have `n` values.
pub fn gemm_packed_bias(
    kernel: F32Kernel,
    a: &PackedA,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    bias: &[f32],
    threads: usize,
) {
    assert_eq!(
        bias.len(),
        b.cols,
        "f32 gemm_packed_bias: bias has {} values for {} columns",
        bias.len(),
        b.cols
    );
    gemm_packed_with(kernel, a, b, c, ldc, false, Some(bias), threads);
}

/// [`gemm_packed`] with an optional bias that replaces the zeros of `c = a b`.
#[allow(clippy::too_many_arguments)]
fn gemm_packed_with(
    kernel: F32Kernel,
    a: &PackedA,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
    threads: usize,
) {
    assert_eq!(
        a.depth, b.depth,
        "f32 gemm_packed: A has k = {} but B has k = {}",
        a.depth, b.depth
    );
    let (m, n, depth) = (a.rows, b.cols, a.depth);
    if !prepare_output("f32 gemm_packed", (m, n, depth), c, ldc, accumulate) {
        if let (Some(bias), true) = (bias, depth == 0) {
            fill_bias_rows(c, ldc, m, bias);
        }
        return;
    }
    let out = OutPtr(c.as_mut_ptr());
    run_tasks(BLOCKING, (m, n), m * n * depth, threads, |rows, panels| {
        let mut scratch = [0.0f32; MR * NR];
        for_each_tile(BLOCKING, rows, panels, (depth, n), accumulate, |tile| {
            debug_assert_eq!(tile.row % MR, 0);
            let a_tile = &a.values[(tile.row / MR * depth + tile.k_start) * MR..][..tile.kc * MR];
            let b_tile = &b.values[(tile.panel * depth + tile.k_start) * NR..][..tile.kc * NR];
            // SAFETY: the tile lies inside `c` (checked by `prepare_output`), and
            // `run_tasks` gives its rows and columns to this task alone.
            unsafe {
                let c_tile = out.get().add(tile.row * ldc + tile.panel * NR);
                let add = start_tile(&tile, bias, NR, c_tile, ldc);
                match kernel {
                    #[cfg(target_arch = "x86_64")]
                    F32Kernel::Avx512 => avx512::tile(
                        a_tile, b_tile, tile.kc, c_tile, ldc, tile.rows, tile.cols, add,
                    ),
                    _ => {
                        portable_tile(a_tile, b_tile, tile.kc, &mut scratch);
                        let shape = (tile.rows, tile.cols);
                        store_portable_tile(&scratch, NR, c_tile, ldc, shape, add);
                    }
                }
            }
        });
    });
}

/// Computes `c = a b` or `c += a b` from unpacked operands: packs both, then calls
/// [`gemm_packed`] with the detected kernel and Candle's CPU thread count.
pub fn matmul(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
    F32Gemm::matmul(a, b, c, ldc, accumulate);
}

/// This module's kernels behind the [`PackedGemm`] trait.
pub struct F32Gemm;

impl_packed_gemm!(F32Gemm, F32Kernel);

/// Portable micro-kernel: sets `scratch` (`MR x NR`, row-major) to the product of one
/// group of A and one panel of B over `kc` steps.
fn portable_tile(a: &[f32], b: &[f32], kc: usize, scratch: &mut [f32; MR * NR]) {
    scratch.fill(0.0);
    for p in 0..kc {
        let b_row = &b[p * NR..(p + 1) * NR];
        for r in 0..MR {
            let a_value = a[p * MR + r];
            let acc = &mut scratch[r * NR..(r + 1) * NR];
            for (sum, &b_value) in acc.iter_mut().zip(b_row) {
                *sum += a_value * b_value;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::packed::avx512::store_tile;
    use super::{MR, NR};

    /// One `MR x NR` tile over `kc` steps: `c (+)= a b`.
    ///
    /// # Safety
    /// The CPU must have AVX512F. `a` contains `kc * MR` values, `b` contains `kc * NR`, and
    /// `c` points to `rows` rows of `cols` writable values with row stride `ldc`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(
        a: &[f32],
        b: &[f32],
        kc: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        add: bool,
    ) {
        assert!(a.len() >= kc * MR && b.len() >= kc * NR);
        let mut acc = [[_mm512_setzero_ps(); 3]; MR];
        let mut a_ptr = a.as_ptr();
        let mut b_ptr = b.as_ptr();
        for _ in 0..kc {
            let b0 = _mm512_loadu_ps(b_ptr);
            let b1 = _mm512_loadu_ps(b_ptr.add(16));
            let b2 = _mm512_loadu_ps(b_ptr.add(32));
            for (r, row) in acc.iter_mut().enumerate() {
                let broadcast = _mm512_set1_ps(*a_ptr.add(r));
                row[0] = _mm512_fmadd_ps(broadcast, b0, row[0]);
                row[1] = _mm512_fmadd_ps(broadcast, b1, row[1]);
                row[2] = _mm512_fmadd_ps(broadcast, b2, row[2]);
            }
            a_ptr = a_ptr.add(MR);
            b_ptr = b_ptr.add(NR);
        }
        store_tile(&acc, c, ldc, rows, cols, add);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::packed::test_support::{check_bias, reference, view};
    use crate::rng::Rng;

    fn random(rng: &mut Rng, count: usize) -> Vec<f32> {
        rng.uniform(count, -1.0, 1.0)
    }

    fn kernels() -> Vec<F32Kernel> {
        let mut kernels = vec![F32Kernel::Portable];
        if has_avx512f() {
            kernels.push(F32Kernel::Avx512);
        }
        kernels
    }

    /// Checks one product of shape `[m, k] x [k, n]` against the f64 reference, with
    /// A stored transposed when `a_transposed` and B when `b_transposed`, for both
    /// kernels, overwrite and accumulate, and 1 and 3 threads.
    fn check_shape(m: usize, k: usize, n: usize, a_transposed: bool, b_transposed: bool) {
        let mut rng = Rng::seed((m * 1000 + k * 10 + n) as u64);
        let a_data = random(&mut rng, m * k);
        let b_data = random(&mut rng, k * n);
        let a = view(&a_data, m, k, a_transposed);
        let b = view(&b_data, k, n, b_transposed);
        let (exact, bound) = reference(a, b, |x| x);
        let start = random(&mut rng, m * n);
        let packed_a = PackedA::pack(a);
        let packed_b = PackedB::pack(b);
        for kernel in kernels() {
            for accumulate in [false, true] {
                for threads in [1, 3] {
                    let mut c = start.clone();
                    gemm_packed(kernel, &packed_a, &packed_b, &mut c, n, accumulate, threads);
                    for index in 0..m * n {
                        let base = if accumulate { start[index] as f64 } else { 0.0 };
                        // f32 sums of k terms: at most (k + 2) 2^-24 of sum |a b|, plus
                        // the rounding of the start value when accumulating.
                        let tolerance =
                            (k as f64 + 2.0) * 6e-8 * (bound[index] + base.abs()) + 1e-7;
                        let want = base + exact[index];
                        assert!(
                            (c[index] as f64 - want).abs() <= tolerance,
                            "{kernel:?} [{m}x{k}]x[{k}x{n}] ({a_transposed}, {b_transposed}) accumulate {accumulate} threads {threads} at {index}: got {}, f64 reference {want}",
                            c[index]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bias_matches_bias_added_afterwards() {
        for kernel in kernels() {
            check_bias(&|a, b, (m, k, n), bias, threads| {
                let a = PackedA::pack(MatRef::row_major(a, m, k));
                let b = PackedB::pack(MatRef::row_major(b, k, n));
                let mut c = vec![f32::NAN; m * n];
                match bias {
                    Some(bias) => gemm_packed_bias(kernel, &a, &b, &mut c, n, bias, threads),
                    None => gemm_packed(kernel, &a, &b, &mut c, n, false, threads),
                }
                c
            });
        }
    }

    #[test]
    fn tiny_and_odd_shapes_match_reference() {
        for (m, k, n) in [
            (1, 1, 1),
            (3, 17, 5),
            (17, 3, 49),
            (1, 200, 97),
            (9, 50, 1),
            (8, 48, 48),
            (7, 1, 95),
        ] {
            check_shape(m, k, n, false, false);
        }
    }

    #[test]
    fn transposed_views_match_reference() {
        for (m, k, n) in [(17, 33, 50), (8, 48, 48), (3, 1, 3), (1, 17, 3)] {
            check_shape(m, k, n, true, false);
            check_shape(m, k, n, false, true);
            check_shape(m, k, n, true, true);
        }
    }

    #[test]
    fn blocks_of_k_and_rows_match_reference() {
        // k = 301 crosses the 128-step block twice; m = 263 crosses the 256-row block,
        // and with 3 threads the 33 row tiles split across tasks.
        check_shape(263, 301, 20, false, true);
        check_shape(263, 130, 3, true, false);
        check_shape(10, 301, 100, true, false);
    }

    #[test]
    fn many_panels_split_across_threads() {
        // 2400 columns: 50 panels, enough work to run in parallel.
        check_shape(17, 40, 2400, false, true);
    }

    #[test]
    fn kernels_agree_closely() {
        if !has_avx512f() {
            return;
        }
        let (m, k, n) = (37, 130, 101);
        let mut rng = Rng::seed(5);
        let a_data = random(&mut rng, m * k);
        let b_data = random(&mut rng, k * n);
        let a = PackedA::pack(MatRef::row_major(&a_data, m, k));
        let b = PackedB::pack(MatRef::row_major(&b_data, k, n));
        let mut fast = vec![0.0; m * n];
        let mut portable = vec![0.0; m * n];
        gemm_packed(F32Kernel::Avx512, &a, &b, &mut fast, n, false, 2);
        gemm_packed(F32Kernel::Portable, &a, &b, &mut portable, n, false, 2);
        for (index, (x, y)) in fast.iter().zip(&portable).enumerate() {
            assert!(
                (x - y).abs() < 1e-5,
                "at {index}: AVX-512 {x}, portable {y}"
            );
        }
    }

    #[test]
    fn output_row_stride_leaves_gaps_untouched() {
        let (m, k, n, ldc) = (3, 4, 5, 7);
        let a_data: Vec<f32> = (0..m * k).map(|v| v as f32).collect();
        let b_data: Vec<f32> = (0..k * n).map(|v| (v % 3) as f32).collect();
        let a = PackedA::pack(MatRef::row_major(&a_data, m, k));
        let b = PackedB::pack(MatRef::row_major(&b_data, k, n));
        for kernel in kernels() {
            let mut c = vec![-1.0f32; (m - 1) * ldc + n + 2];
            gemm_packed(kernel, &a, &b, &mut c, ldc, false, 1);
            // Row 0 of A is [0, 1, 2, 3]; column 0 of B is [0, 2, 1, 0]: 0 + 2 + 2 + 0.
            assert_eq!(c[0], 4.0, "{kernel:?}");
            // Row 2 of A is [8, 9, 10, 11]; column 4 of B is [1, 0, 2, 1]: 8 + 20 + 11.
            assert_eq!(c[2 * ldc + 4], 39.0, "{kernel:?}");
            assert_eq!(c[5], -1.0, "{kernel:?} wrote into the gap of row 0");
            assert_eq!(c[6], -1.0, "{kernel:?} wrote into the gap of row 0");
            assert_eq!(
                c[(m - 1) * ldc + n],
                -1.0,
                "{kernel:?} wrote past the last row"
            );
        }
    }

    #[test]
    fn empty_depth_clears_or_keeps_output() {
        let a = PackedA::pack(MatRef::row_major(&[], 2, 0));
        let b = PackedB::pack(MatRef::row_major(&[], 0, 3));
        let mut c = vec![5.0f32; 6];
        gemm_packed(F32Kernel::detect(), &a, &b, &mut c, 3, true, 1);
        assert_eq!(c, vec![5.0; 6]);
        gemm_packed(F32Kernel::detect(), &a, &b, &mut c, 3, false, 1);
        assert_eq!(c, vec![0.0; 6]);
    }

    #[test]
    fn backend_override_is_scoped() {
        let outside = f32_backend();
        let inside = with_f32_backend(F32Backend::GemmCrate, f32_backend);
        assert_eq!(inside, F32Backend::GemmCrate);
        assert_eq!(f32_backend(), outside);
    }
}
