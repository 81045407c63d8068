//! bf16 matrix products with f32 accumulation, for CPUs with AVX512-BF16.
//!
//! `C = A B` (or `C += A B`) with f32 inputs and output. Both operands are rounded to
//! bfloat16 (round to nearest even) while they are packed. The micro-kernel sums their
//! products in f32 with `vdpbf16ps`, which multiplies pairs of bf16 values along `k`
//! and adds both products to one f32 lane. The product of two bf16 values is exact
//! in f32, so the error comes from the rounding of the inputs (a relative 2^-9 each)
//! and from the f32 sums.
//!
//! Layout, with `k` grouped into pairs (an odd `k` gets one zero pad):
//! - [`PackedA`] is row-major: row `i` contains `ceil(k / 2)` 32-bit words, each two bf16
//!   values `(a[i, 2q], a[i, 2q + 1])`. Rows are padded with zeros to a multiple of
//!   [`MR`]. The micro-kernel broadcasts one word per row.
//! - [`PackedB`] is cut into panels of [`NR`] columns. Panel `p` contains, for every pair
//!   `q`, the [`NR`] words `(b[2q, j], b[2q + 1, j])` of its columns, so one 64-byte load
//!   reads 16 columns.
//!
//! [`Bf16Kernel::detect`] picks the AVX512-BF16 micro-kernel at run time and falls back
//! to a portable one, with the same packing and nearly the same results (f32 sums in a
//! different order), on other CPUs.

use std::sync::OnceLock;

use rayon::prelude::*;

pub use super::packed::MatRef;
use super::packed::{
    fill_bias_rows, for_each_tile, impl_packed_gemm, prepare_output, run_tasks, start_tile,
    store_portable_tile, Blocking, OutPtr, PackedGemm,
};

/// Rows of the register tile.
pub const MR: usize = 8;
/// Columns of the register tile: three 16-lane vectors.
pub const NR: usize = 48;
/// Tile and cache blocking, in pairs of `k`: a `128 x NR` panel of B is 24 KiB, and a
/// `256 x 128` block of A 128 KiB.
const BLOCKING: Blocking = Blocking {
    mr: MR,
    nr: NR,
    kc: 128,
    mc: 256,
};

/// Implementation of the micro-kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// `vdpbf16ps` on 512-bit registers (x86-64 with AVX512F and AVX512-BF16).
    Avx512Bf16,
    /// Plain Rust: bf16 values widened to f32 and multiplied in f32.
    Portable,
}

impl Bf16Kernel {
    /// Returns the AVX512-BF16 kernel when this CPU has the feature, else the portable
    /// one. The check runs once per process.
    pub fn detect() -> Self {
        static KERNEL: OnceLock<Bf16Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            if has_avx512_bf16() {
                Self::Avx512Bf16
            } else {
                Self::Portable
            }
        })
    }
}

/// Returns whether this CPU has AVX512F and AVX512-BF16.
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rounds `x` to bfloat16 (nearest, ties to even) and returns its 16 bits. A NaN stays
/// a (quiet) NaN.
#[inline]
pub fn to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

/// Widens bfloat16 bits to f32 (exact).
#[inline]
pub fn from_bf16_bits(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Returns `x` rounded to the nearest bfloat16, as an f32.
#[inline]
pub fn round_to_bf16(x: f32) -> f32 {
    from_bf16_bits(to_bf16_bits(x))
}

/// Packs two values into one word, `lo` in the low 16 bits.
#[inline]
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16_bits(lo) as u32 | ((to_bf16_bits(hi) as u32) << 16)
}

/// The left operand `A [m, k]` of a product, rounded to bf16 and packed.
#[derive(Debug, Clone)]
pub struct PackedA {
    words: Vec<u32>,
    rows: usize,
    depth: usize,
    pairs: usize,
}

impl PackedA {
    /// Rounds and packs `a` (`[m, k]`).
    pub fn pack(a: MatRef<'_>) -> Self {
        let (rows, depth) = (a.rows(), a.cols());
        let pairs = depth.div_ceil(2);
        let padded_rows = rows.div_ceil(MR) * MR;
        let mut words = vec![0u32; padded_rows * pairs];
        if pairs == 0 {
            return Self {
                words,
                rows,
                depth,
                pairs,
            };
        }
        if a.col_stride() == 1 || rows == 1 {
            // Rows are contiguous in the source: convert them one by one.
            words
                .par_chunks_mut(pairs)
                .take(rows)
                .enumerate()
                .for_each(|(i, out)| {
                    let start = i * a.row_stride();
                    if a.col_stride() == 1 {
                        pack_contiguous_row(&a.data()[start..start + depth], out);
                    } else {
                        for (q, word) in out.iter_mut().enumerate() {
                            let hi = if 2 * q + 1 < depth {
                                a.at(i, 2 * q + 1)
                            } else {
                                0.0
                            };
                            *word = pair(a.at(i, 2 * q), hi);
                        }
                    }
                });
        } else {
            // Columns are contiguous in the source (a transposed view): walk blocks of
            // 16 rows so that both reads and writes stay in a few cache lines.
            const BLOCK: usize = 16;
            words
                .par_chunks_mut(pairs * BLOCK)
                .enumerate()
                .for_each(|(block, out)| {
                    let first = block * BLOCK;
                    let count = BLOCK.min(rows.saturating_sub(first));
                    for q in 0..pairs {
                        for r in 0..count {
                            let i = first + r;
                            let hi = if 2 * q + 1 < depth {
                                a.at(i, 2 * q + 1)
                            } else {
                                0.0
                            };
                            out[r * pairs + q] = pair(a.at(i, 2 * q), hi);
                        }
                    }
                });
        }
        Self {
            words,
            rows,
            depth,
            pairs,
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

/// Converts one contiguous row of `depth` values into `ceil(depth / 2)` pair words.
fn pack_contiguous_row(row: &[f32], out: &mut [u32]) {
    let depth = row.len();
    #[cfg(target_arch = "x86_64")]
    if Bf16Kernel::detect() == Bf16Kernel::Avx512Bf16 {
        // SAFETY: the CPU has AVX512F and AVX512-BF16 (checked by `detect`), and the
        // function reads `row` and writes `out` within their lengths.
        unsafe { avx512::pack_row(row, out) };
        return;
    }
    for (q, word) in out.iter_mut().enumerate() {
        let hi = if 2 * q + 1 < depth {
            row[2 * q + 1]
        } else {
            0.0
        };
        *word = pair(row[2 * q], hi);
    }
}

/// The right operand `B [k, n]` of a product, rounded to bf16 and packed into panels of
/// [`NR`] columns. Pack a weight once and reuse it for many products.
#[derive(Debug, Clone)]
pub struct PackedB {
    words: Vec<u32>,
    depth: usize,
    cols: usize,
}

impl PackedB {
    /// Rounds and packs `b` (`[k, n]`).
    pub fn pack(b: MatRef<'_>) -> Self {
        let (depth, cols) = (b.rows(), b.cols());
        let pairs = depth.div_ceil(2);
        let panels = cols.div_ceil(NR);
        let mut words = vec![0u32; panels * pairs * NR];
        if pairs > 0 {
            words
                .par_chunks_mut(pairs * NR)
                .enumerate()
                .for_each(|(panel, out)| {
                    let first = panel * NR;
                    let count = NR.min(cols - first);
                    if b.row_stride() == 1 && b.col_stride() != 1 {
                        // Column j of B is contiguous (B is a transposed row-major
                        // weight): convert it, then spread its words with stride NR.
                        let mut column = vec![0u32; pairs];
                        for c in 0..count {
                            let start = (first + c) * b.col_stride();
                            pack_contiguous_row(&b.data()[start..start + depth], &mut column);
                            for (q, &word) in column.iter().enumerate() {
                                out[q * NR + c] = word;
                            }
                        }
                    } else {
                        for q in 0..pairs {
                            for c in 0..count {
                                let j = first + c;
                                let hi = if 2 * q + 1 < depth {
                                    b.at(2 * q + 1, j)
                                } else {
                                    0.0
                                };
                                out[q * NR + c] = pair(b.at(2 * q, j), hi);
                            }
                        }
                    }
                });
        }
        Self { words, depth, cols }
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
    kernel: Bf16Kernel,
    a: &PackedA,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    threads: usize,
) {
    gemm_packed_with(kernel, a, b, c, ldc, accumulate, None, threads);
}

/// Computes `c = a b + bias` with `bias` (`[n]`) added to every row, writing each tile's
/// part of the bias just before its first product.
///
/// Panics as [`gemm_packed`], and when `bias` does not have `n` values.
pub fn gemm_packed_bias(
    kernel: Bf16Kernel,
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
        "gemm_packed_bias: bias has {} values for {} columns",
        bias.len(),
        b.cols
    );
    gemm_packed_with(kernel, a, b, c, ldc, false, Some(bias), threads);
}

/// [`gemm_packed`] with an optional bias that replaces the zeros of `c = a b`.
#[allow(clippy::too_many_arguments)]
fn gemm_packed_with(
    kernel: Bf16Kernel,
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
        "gemm_packed: A has k = {} but B has k = {}",
        a.depth, b.depth
    );
    let (m, n, pairs) = (a.rows, b.cols, a.pairs);
    if !prepare_output("gemm_packed", (m, n, pairs), c, ldc, accumulate) {
        if let (Some(bias), true) = (bias, pairs == 0) {
            fill_bias_rows(c, ldc, m, bias);
        }
        return;
    }
    let out = OutPtr(c.as_mut_ptr());
    run_tasks(
        BLOCKING,
        (m, n),
        m * n * a.depth,
        threads,
        |rows, panels| {
            let mut scratch = [0.0f32; MR * NR];
            for_each_tile(BLOCKING, rows, panels, (pairs, n), accumulate, |tile| {
                let a_block = &a.words[tile.row * pairs + tile.k_start..];
                let b_panel = &b.words[(tile.panel * pairs + tile.k_start) * NR..][..tile.kc * NR];
                // SAFETY: the tile lies inside `c` (checked by `prepare_output`), and
                // `run_tasks` gives its rows and columns to this task alone.
                unsafe {
                    let c_tile = out.get().add(tile.row * ldc + tile.panel * NR);
                    let add = start_tile(&tile, bias, NR, c_tile, ldc);
                    match kernel {
                        #[cfg(target_arch = "x86_64")]
                        Bf16Kernel::Avx512Bf16 => avx512::tile(
                            a_block, pairs, b_panel, tile.kc, c_tile, ldc, tile.rows, tile.cols,
                            add,
                        ),
                        _ => {
                            portable_tile(a_block, pairs, b_panel, tile.kc, &mut scratch);
                            let shape = (tile.rows, tile.cols);
                            store_portable_tile(&scratch, NR, c_tile, ldc, shape, add);
                        }
                    }
                }
            });
        },
    );
}

/// Computes `c = a b` or `c += a b` from unpacked operands: packs both, then calls
/// [`gemm_packed`] with the detected kernel and Candle's CPU thread count.
pub fn matmul(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
    Bf16Gemm::matmul(a, b, c, ldc, accumulate);
}

/// This module's kernels behind the [`PackedGemm`] trait.
pub struct Bf16Gemm;

impl_packed_gemm!(Bf16Gemm, Bf16Kernel);

/// Portable micro-kernel: sets `scratch` (`MR x NR`, row-major) to the product of
/// [`MR`] rows of A (`kc` words each at row stride `a_stride`) and one panel of B.
fn portable_tile(a: &[u32], a_stride: usize, b: &[u32], kc: usize, scratch: &mut [f32; MR * NR]) {
    scratch.fill(0.0);
    for q in 0..kc {
        let b_row = &b[q * NR..(q + 1) * NR];
        for r in 0..MR {
            let word = a[r * a_stride + q];
            let a_lo = from_bf16_bits(word as u16);
            let a_hi = from_bf16_bits((word >> 16) as u16);
            let acc = &mut scratch[r * NR..(r + 1) * NR];
            for (sum, &b_word) in acc.iter_mut().zip(b_row) {
                let b_lo = from_bf16_bits(b_word as u16);
                let b_hi = from_bf16_bits((b_word >> 16) as u16);
                *sum += a_lo * b_lo + a_hi * b_hi;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::transmute;

    use super::super::packed::avx512::store_tile;
    use super::{MR, NR};

    /// Converts a contiguous row into pair words with `vcvtne2ps2bf16`.
    ///
    /// # Safety
    /// The CPU must have AVX512F and AVX512-BF16; `out` contains `ceil(row.len() / 2)`
    /// words.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn pack_row(row: &[f32], out: &mut [u32]) {
        let depth = row.len();
        let full = depth / 32;
        for block in 0..full {
            let lo = _mm512_loadu_ps(row.as_ptr().add(block * 32));
            let hi = _mm512_loadu_ps(row.as_ptr().add(block * 32 + 16));
            // The second operand fills the low half: words keep the source order.
            let packed: __m512i = transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(out.as_mut_ptr().add(block * 16) as *mut _, packed);
        }
        for q in full * 16..out.len() {
            let hi = if 2 * q + 1 < depth {
                row[2 * q + 1]
            } else {
                0.0
            };
            out[q] = super::pair(row[2 * q], hi);
        }
    }

    /// One `MR x NR` tile over `kc` pairs: `c (+)= a b`.
    ///
    /// # Safety
    /// The CPU must have AVX512F and AVX512-BF16. `a` contains [`MR`] rows of `kc` words
    /// at row stride `a_stride`, `b` contains `kc * NR` words, and `c` points to `rows`
    /// rows of `cols` writable values with row stride `ldc`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(
        a: &[u32],
        a_stride: usize,
        b: &[u32],
        kc: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        add: bool,
    ) {
        debug_assert!(a.len() > (MR - 1) * a_stride + kc - 1);
        debug_assert!(b.len() >= kc * NR);
        let mut acc = [[_mm512_setzero_ps(); 3]; MR];
        let a_ptr = a.as_ptr();
        let mut b_ptr = b.as_ptr();
        for q in 0..kc {
            let b0: __m512bh = transmute(_mm512_loadu_ps(b_ptr as *const f32));
            let b1: __m512bh = transmute(_mm512_loadu_ps(b_ptr.add(16) as *const f32));
            let b2: __m512bh = transmute(_mm512_loadu_ps(b_ptr.add(32) as *const f32));
            for (r, row) in acc.iter_mut().enumerate() {
                let word = *a_ptr.add(r * a_stride + q);
                let broadcast: __m512bh = transmute(_mm512_set1_epi32(word as i32));
                row[0] = _mm512_dpbf16_ps(row[0], broadcast, b0);
                row[1] = _mm512_dpbf16_ps(row[1], broadcast, b1);
                row[2] = _mm512_dpbf16_ps(row[2], broadcast, b2);
            }
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

    fn kernels() -> Vec<Bf16Kernel> {
        let mut kernels = vec![Bf16Kernel::Portable];
        if has_avx512_bf16() {
            kernels.push(Bf16Kernel::Avx512Bf16);
        }
        kernels
    }

    /// Checks one product of shape `[m, k] x [k, n]` against the f64 references, with
    /// A stored transposed when `a_transposed` and B when `b_transposed`.
    fn check_shape(m: usize, k: usize, n: usize, a_transposed: bool, b_transposed: bool) {
        let mut rng = Rng::seed((m * 1000 + k * 10 + n) as u64);
        let a_data = random(&mut rng, m * k);
        let b_data = random(&mut rng, k * n);
        let a = view(&a_data, m, k, a_transposed);
        let b = view(&b_data, k, n, b_transposed);
        let (exact, bound) = reference(a, b, round_to_bf16);
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
                        let got = c[index] as f64 - base;
                        // f32 sums of k terms: at most k * 2^-24 of sum |a b| each way.
                        let f32_error = (k as f64 + 2.0) * 6e-8 * bound[index] + 1e-6;
                        assert!(
                            (got - exact[index]).abs() <= f32_error,
                            "{kernel:?} [{m}x{k}]x[{k}x{n}] ({a_transposed}, {b_transposed}) accumulate {accumulate} threads {threads} at {index}: got {got}, bf16 reference {}",
                            exact[index]
                        );
                        // Against unrounded inputs: each factor moves by at most 2^-9.
                        let unrounded: f64 = (0..k)
                            .map(|p| a.at(index / n, p) as f64 * b.at(p, index % n) as f64)
                            .sum();
                        assert!(
                            (got - unrounded).abs()
                                <= 2.0 * 2f64.powi(-8) * bound[index] + f32_error,
                            "{kernel:?} at {index}: got {got}, f64 product {unrounded}"
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
        for (m, k, n) in [(1, 1, 1), (3, 17, 5), (17, 3, 49), (1, 200, 97), (9, 50, 1)] {
            check_shape(m, k, n, false, false);
        }
    }

    #[test]
    fn transposed_views_match_reference() {
        for (m, k, n) in [(17, 33, 50), (8, 48, 48), (3, 1, 3)] {
            check_shape(m, k, n, true, false);
            check_shape(m, k, n, false, true);
            check_shape(m, k, n, true, true);
        }
    }

    #[test]
    fn blocks_of_k_and_rows_match_reference() {
        // k = 301 crosses one block of 128 pairs twice; m = 263 crosses the row block.
        check_shape(263, 301, 20, false, true);
        check_shape(10, 301, 100, true, false);
    }

    #[test]
    fn kernels_agree_closely() {
        if !has_avx512_bf16() {
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
        gemm_packed(Bf16Kernel::Avx512Bf16, &a, &b, &mut fast, n, false, 2);
        gemm_packed(Bf16Kernel::Portable, &a, &b, &mut portable, n, false, 2);
        for (index, (x, y)) in fast.iter().zip(&portable).enumerate() {
            assert!((x - y).abs() < 1e-4, "at {index}: AVX512 {x}, portable {y}");
        }
    }

    #[test]
    fn rounding_is_nearest_even() {
        // 1 + 2^-8 lies halfway between two bf16 values and rounds to even (1.0);
        // 1 + 3 * 2^-8 rounds up to 1 + 2^-6.
        assert_eq!(round_to_bf16(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(
            round_to_bf16(1.0 + 3.0 * 2f32.powi(-8)),
            1.0 + 2f32.powi(-6)
        );
        assert_eq!(round_to_bf16(-2.5), -2.5);
        assert!(round_to_bf16(f32::NAN).is_nan());
        assert_eq!(round_to_bf16(f32::INFINITY), f32::INFINITY);
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
            assert_eq!(c[5], -1.0, "{kernel:?} wrote into the gap of row 0");
            assert_eq!(c[6], -1.0, "{kernel:?} wrote into the gap of row 0");
            assert_eq!(
                c[(m - 1) * ldc + n],
                -1.0,
                "{kernel:?} wrote past the last row"
            );
        }
    }
}
