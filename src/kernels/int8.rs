//! int8 products `x W^T` for inference, on AVX512-VNNI when the CPU has it.
//!
//! Each weight row `j` is quantised symmetrically once, `w[j, p] ~ s_j q[j, p]` with
//! `s_j = max_p |w[j, p]| / 127` and `q` in `[-127, 127]`. Each activation row `i` is
//! quantised the same way for every product, `x[i, p] ~ t_i r[i, p]`, and stored as the
//! unsigned byte `r + 128`, because `vpdpbusd` multiplies unsigned bytes by signed ones
//! and sums groups of four into i32 lanes. The offset is removed with the precomputed
//! row sums of `q`:
//!
//! ```text
//! out[i, j] = t_i s_j (sum_p (r[i, p] + 128) q[j, p]  -  128 sum_p q[j, p])
//! ```
//!
//! The packing follows [`super::bf16`] with `k` grouped by four instead of two.

use std::sync::OnceLock;

use rayon::prelude::*;

/// Rows of the register tile.
const MR: usize = 8;
/// Columns of the register tile: three 16-lane vectors.
const NR: usize = 48;
/// Rows of activations per cache block (a multiple of [`MR`]).
const MC: usize = 256;
/// Multiply-adds below which a product runs on one thread.
const PARALLEL_THRESHOLD: usize = 1 << 21;

/// Implementation of the micro-kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    /// `vpdpbusd` on 512-bit registers (x86-64 with AVX512F and AVX512-VNNI).
    Avx512Vnni,
    /// Plain Rust i32 arithmetic.
    Portable,
}

impl Int8Kernel {
    /// Returns the VNNI kernel when this CPU has the feature, else the portable one.
    pub fn detect() -> Self {
        static KERNEL: OnceLock<Int8Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            if has_avx512_vnni() {
                Self::Avx512Vnni
            } else {
                Self::Portable
            }
        })
    }
}

/// Returns whether this CPU has AVX512F and AVX512-VNNI.
pub fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Returns `(scale, quantised values)` of one row: `scale = max |v| / 127` and each
/// value rounded to the nearest integer multiple of it. An all-zero row has scale 0.
fn quantise_row(row: &[f32]) -> (f32, impl Iterator<Item = i32> + '_) {
    let max = row.iter().fold(0.0f32, |max, v| max.max(v.abs()));
    let scale = max / 127.0;
    let inverse = if max > 0.0 { 127.0 / max } else { 0.0 };
    let values = row
        .iter()
        .map(move |v| ((v * inverse).round() as i32).clamp(-127, 127));
    (scale, values)
}

/// A weight `W [n, k]` quantised to int8 per row and packed into panels of [`NR`] rows.
#[derive(Debug, Clone)]
pub struct PackedInt8 {
    /// Panel `p`, group `g`, column `c`: the four bytes `q[p NR + c, 4g..4g + 4]`.
    words: Vec<u32>,
    /// `s_j`, padded with zeros to whole panels.
    scales: Vec<f32>,
    /// `sum_p q[j, p]`, padded with zeros to whole panels.
    sums: Vec<i32>,
    rows: usize,
    depth: usize,
    groups: usize,
}

impl PackedInt8 {
    /// Quantises and packs the row-major weight `w` `[n, k]`.
    ///
    /// Panics when `w` has fewer than `n * k` elements.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert!(
            w.len() >= n * k,
            "PackedInt8::pack: a [{n}, {k}] weight needs {} values, got {}",
            n * k,
            w.len()
        );
        let groups = k.div_ceil(4);
        let panels = n.div_ceil(NR);
        let mut words = vec![0u32; panels * groups * NR];
        let mut scales = vec![0.0f32; panels * NR];
        let mut sums = vec![0i32; panels * NR];
        for j in 0..n {
            let (scale, values) = quantise_row(&w[j * k..(j + 1) * k]);
            scales[j] = scale;
            let (panel, c) = (j / NR, j % NR);
            let base = panel * groups * NR + c;
            for (p, value) in values.enumerate() {
                sums[j] += value;
                let byte = (value as i8 as u8 as u32) << (8 * (p % 4));
                words[base + (p / 4) * NR] |= byte;
            }
        }
        Self {
            words,
            scales,
            sums,
            rows: n,
            depth: k,
            groups,
        }
    }

    /// Number of weight rows `n` (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of weight columns `k` (inputs).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Computes `out = x W^T`, or `out += x W^T` with `accumulate`, for `x` row-major
    /// `[m, k]` and `out` row-major `[m, n]`, with the detected kernel.
    ///
    /// Panics when `x` or `out` is shorter than its shape.
    pub fn matmul_transposed(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        accumulate: bool,
        threads: usize,
    ) {
        self.matmul_with(Int8Kernel::detect(), x, m, out, accumulate, threads);
    }

    /// [`Self::matmul_transposed`] with an explicit kernel.
    pub fn matmul_with(
        &self,
        kernel: Int8Kernel,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        accumulate: bool,
        threads: usize,
    ) {
        let (n, k, groups) = (self.rows, self.depth, self.groups);
        assert!(
            x.len() >= m * k && out.len() >= m * n,
            "PackedInt8::matmul: x has {} values and out {}, expected [{m}, {k}] and [{m}, {n}]",
            x.len(),
            out.len()
        );
        if m == 0 || n == 0 {
            return;
        }
        let padded_rows = m.div_ceil(MR) * MR;
        // 128 is the unsigned code of 0, so padding rows and groups contribute nothing.
        let mut a_words = vec![0x8080_8080u32; padded_rows * groups];
        let mut a_scales = vec![0.0f32; padded_rows];
        a_words
            .par_chunks_mut(groups.max(1))
            .zip(a_scales.par_iter_mut())
            .take(m)
            .enumerate()
            .for_each(|(i, (row_words, scale))| {
                let (row_scale, values) = quantise_row(&x[i * k..(i + 1) * k]);
                *scale = row_scale;
                for (p, value) in values.enumerate() {
                    let shift = 8 * (p % 4);
                    let word = &mut row_words[p / 4];
                    *word = (*word & !(0xff << shift)) | (((value + 128) as u32) << shift);
                }
            });
        let activations = Activations {
            words: &a_words,
            scales: &a_scales,
            rows: m,
        };
        let panels = n.div_ceil(NR);
        let tasks = if m * n * k < PARALLEL_THRESHOLD {
            1
        } else {
            threads.clamp(1, panels)
        };
        let out_ptr = OutPtr(out.as_mut_ptr());
        let run = |task: usize| {
            let first = panels * task / tasks;
            let last = panels * (task + 1) / tasks;
            // SAFETY: the task writes only the columns of panels `first..last`, inside
            // `out` (checked above), which no other task writes.
            unsafe { self.run_panels(kernel, &activations, out_ptr, accumulate, first..last) };
        };
        if tasks == 1 {
            run(0);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
    }

    /// Runs the tiles of the panels `panels`.
    ///
    /// # Safety
    /// `out` must point to a row-major `[activations.rows, self.rows]` output that no
    /// other thread accesses in these panels' columns meanwhile.
    unsafe fn run_panels(
        &self,
        kernel: Int8Kernel,
        activations: &Activations<'_>,
        out: OutPtr,
        accumulate: bool,
        panels: std::ops::Range<usize>,
    ) {
        let (m, n, groups) = (activations.rows, self.rows, self.groups);
        for row_block in (0..m).step_by(MC) {
            let block_end = (row_block + MC).min(m);
            for panel in panels.clone() {
                let cols = NR.min(n - panel * NR);
                let b = &self.words[panel * groups * NR..(panel + 1) * groups * NR];
                let columns = panel * NR..(panel + 1) * NR;
                let epilogue = Epilogue {
                    row_scales: &[],
                    col_scales: &self.scales[columns.clone()],
                    col_sums: &self.sums[columns],
                };
                for row in (row_block..block_end).step_by(MR) {
                    let epilogue = Epilogue {
                        row_scales: &activations.scales[row..row + MR],
                        ..epilogue
                    };
                    let a = &activations.words[row * groups..(row + MR) * groups];
                    let c = out.0.add(row * n + panel * NR);
                    let rows = MR.min(m - row);
                    match kernel {
                        #[cfg(target_arch = "x86_64")]
                        Int8Kernel::Avx512Vnni => {
                            avx512::tile(a, b, groups, &epilogue, c, n, rows, cols, accumulate)
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        Int8Kernel::Avx512Vnni => {
                            portable_tile(a, b, groups, &epilogue, c, n, rows, cols, accumulate)
                        }
                        Int8Kernel::Portable => {
                            portable_tile(a, b, groups, &epilogue, c, n, rows, cols, accumulate)
                        }
                    }
                }
            }
        }
    }
}

/// Quantised activations: row-major groups of four unsigned bytes, rows padded to
/// [`MR`], and one scale per row.
struct Activations<'a> {
    words: &'a [u32],
    scales: &'a [f32],
    rows: usize,
}

/// Scales and offsets that turn a tile of i32 sums into f32 outputs.
#[derive(Clone, Copy)]
struct Epilogue<'a> {
    /// `t_i` of the tile's [`MR`] rows.
    row_scales: &'a [f32],
    /// `s_j` of the tile's [`NR`] columns.
    col_scales: &'a [f32],
    /// `sum_p q[j, p]` of the tile's [`NR`] columns.
    col_sums: &'a [i32],
}

impl Epilogue<'_> {
    #[inline]
    fn value(&self, r: usize, c: usize, sum: i32) -> f32 {
        (sum - 128 * self.col_sums[c]) as f32 * self.row_scales[r] * self.col_scales[c]
    }
}

/// A raw output pointer that rayon tasks may share: every task writes its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges of the output (see `matmul_with`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Portable micro-kernel for one `MR x NR` tile.
///
/// # Safety
/// `c` must point to `rows` rows of `cols` writable values with row stride `ldc`.
#[allow(clippy::too_many_arguments)]
unsafe fn portable_tile(
    a: &[u32],
    b: &[u32],
    groups: usize,
    epilogue: &Epilogue<'_>,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    let mut sums = [[0i32; NR]; MR];
    for g in 0..groups {
        let b_row = &b[g * NR..(g + 1) * NR];
        for (r, row) in sums.iter_mut().enumerate() {
            let a_bytes = a[r * groups + g].to_le_bytes();
            for (sum, &b_word) in row.iter_mut().zip(b_row) {
                let b_bytes = b_word.to_le_bytes();
                for lane in 0..4 {
                    *sum += a_bytes[lane] as i32 * b_bytes[lane] as i8 as i32;
                }
            }
        }
    }
    for (r, row) in sums.iter().enumerate().take(rows) {
        let out = c.add(r * ldc);
        for (j, &sum) in row.iter().enumerate().take(cols) {
            let value = epilogue.value(r, j, sum);
            *out.add(j) = if accumulate {
                *out.add(j) + value
            } else {
                value
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Epilogue, MR, NR};

    /// One `MR x NR` tile with `vpdpbusd`.
    ///
    /// # Safety
    /// The CPU must have AVX512F and AVX512-VNNI. `a` contains [`MR`] rows of `groups`
    /// words, `b` contains `groups * NR` words, the epilogue slices contain [`MR`] and [`NR`]
    /// values, and `c` points to `rows` rows of `cols` writable values with row stride
    /// `ldc`.
    #[target_feature(enable = "avx512f,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(
        a: &[u32],
        b: &[u32],
        groups: usize,
        epilogue: &Epilogue<'_>,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        debug_assert!(a.len() >= MR * groups && b.len() >= groups * NR);
        let mut acc = [[_mm512_setzero_si512(); 3]; MR];
        let a_ptr = a.as_ptr();
        let mut b_ptr = b.as_ptr();
        for g in 0..groups {
            let b0 = _mm512_loadu_si512(b_ptr as *const _);
            let b1 = _mm512_loadu_si512(b_ptr.add(16) as *const _);
            let b2 = _mm512_loadu_si512(b_ptr.add(32) as *const _);
            for (r, row) in acc.iter_mut().enumerate() {
                let broadcast = _mm512_set1_epi32(*a_ptr.add(r * groups + g) as i32);
                row[0] = _mm512_dpbusd_epi32(row[0], broadcast, b0);
                row[1] = _mm512_dpbusd_epi32(row[1], broadcast, b1);
                row[2] = _mm512_dpbusd_epi32(row[2], broadcast, b2);
            }
            b_ptr = b_ptr.add(NR);
        }
        let offset = _mm512_set1_epi32(128);
        for (r, row) in acc.iter().enumerate().take(rows) {
            let out = c.add(r * ldc);
            let row_scale = _mm512_set1_ps(epilogue.row_scales[r]);
            for (v, &sum) in row.iter().enumerate() {
                let first = v * 16;
                if first >= cols {
                    break;
                }
                let lanes = (cols - first).min(16);
                let mask: __mmask16 = if lanes == 16 {
                    0xffff
                } else {
                    (1u16 << lanes) - 1
                };
                let col_sums =
                    _mm512_loadu_si512(epilogue.col_sums.as_ptr().add(first) as *const _);
                let centred = _mm512_sub_epi32(sum, _mm512_mullo_epi32(offset, col_sums));
                let col_scales = _mm512_loadu_ps(epilogue.col_scales.as_ptr().add(first));
                let value = _mm512_mul_ps(
                    _mm512_mul_ps(_mm512_cvtepi32_ps(centred), row_scale),
                    col_scales,
                );
                let ptr = out.add(first);
                let value = if accumulate {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, ptr), value)
                } else {
                    value
                };
                _mm512_mask_storeu_ps(ptr, mask, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn kernels() -> Vec<Int8Kernel> {
        let mut kernels = vec![Int8Kernel::Portable];
        if has_avx512_vnni() {
            kernels.push(Int8Kernel::Avx512Vnni);
        }
        kernels
    }

    fn check_shape(m: usize, k: usize, n: usize) {
        let mut rng = Rng::seed((m * 131 + k * 7 + n) as u64);
        let x = rng.uniform(m * k, -1.0, 1.0);
        let w = rng.uniform(n * k, -0.5, 0.5);
        let packed = PackedInt8::pack(&w, n, k);
        let start = rng.uniform(m * n, -1.0, 1.0);
        for kernel in kernels() {
            for accumulate in [false, true] {
                let mut out = start.clone();
                packed.matmul_with(kernel, &x, m, &mut out, accumulate, 2);
                for i in 0..m {
                    let x_max = x[i * k..(i + 1) * k]
                        .iter()
                        .fold(0.0f32, |a, v| a.max(v.abs()));
                    for j in 0..n {
                        let w_max = w[j * k..(j + 1) * k]
                            .iter()
                            .fold(0.0f32, |a, v| a.max(v.abs()));
                        let exact: f64 = (0..k)
                            .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                            .sum();
                        let base = if accumulate {
                            start[i * n + j] as f64
                        } else {
                            0.0
                        };
                        let got = out[i * n + j] as f64 - base;
                        // Each factor is off by at most half a step (max / 254).
                        let step_error = k as f64
                            * (x_max as f64 * w_max as f64)
                            * (2.0 / 254.0 + 1.0 / 254.0_f64.powi(2));
                        assert!(
                            (got - exact).abs() <= step_error + 1e-5,
                            "{kernel:?} [{m}x{k}]x[{k}x{n}] accumulate {accumulate} at ({i}, {j}): got {got}, f64 {exact}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn odd_shapes_match_f64_within_quantisation() {
        for (m, k, n) in [
            (1, 1, 1),
            (3, 17, 5),
            (17, 3, 49),
            (9, 130, 97),
            (300, 8, 2),
        ] {
            check_shape(m, k, n);
        }
    }

    #[test]
    fn exact_on_representable_values() {
        // Rows with max 127 quantise exactly, so the product is exact.
        let (m, k, n) = (2, 5, 3);
        let x: Vec<f32> = vec![127.0, -3.0, 0.0, 5.0, 1.0, -127.0, 2.0, 2.0, 2.0, 2.0];
        let w: Vec<f32> = (0..n * k)
            .map(|v| if v % k == 0 { 127.0 } else { (v as f32) - 7.0 })
            .collect();
        let packed = PackedInt8::pack(&w, n, k);
        for kernel in kernels() {
            let mut out = vec![0.0f32; m * n];
            packed.matmul_with(kernel, &x, m, &mut out, false, 1);
            for i in 0..m {
                for j in 0..n {
                    let exact: f32 = (0..k).map(|p| x[i * k + p] * w[j * k + p]).sum();
                    assert_eq!(out[i * n + j], exact, "{kernel:?} at ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn zero_rows_give_zero() {
        let packed = PackedInt8::pack(&[0.0; 6], 2, 3);
        for kernel in kernels() {
            let mut out = vec![5.0f32; 2];
            packed.matmul_with(kernel, &[1.0, 2.0, 3.0], 1, &mut out, false, 1);
            assert_eq!(out, [0.0, 0.0], "{kernel:?}");
        }
    }
}
