//! Pieces shared by the packed matrix-product kernels ([`super::f32gemm`] and
//! [`super::bf16`]): strided matrix views, the blocked loop nest over register tiles,
//! the split of a product into threads, and a trait that lets callers run the same
//! code with either number format.
//!
//! Both kernels compute `C = A B` or `C += A B` for a row-major `C [m, n]`. They pack
//! B into panels of `nr` columns and A into groups of `mr` rows, and run one register
//! tile of `mr x nr` outputs at a time, over blocks of the inner dimension.

use std::ops::Range;

use rayon::prelude::*;

/// A read-only view of an f32 matrix with arbitrary strides, in elements.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// Views `data` as a row-major `[rows, cols]` matrix.
    ///
    /// Panics when `data` has fewer than `rows * cols` elements.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// Views `data`, a row-major `[cols, rows]` matrix, as its transpose `[rows, cols]`.
    ///
    /// Panics when `data` has fewer than `rows * cols` elements.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, 1, rows)
    }

    /// Views `data` as `[rows, cols]` with element `(i, j)` at `i * row_stride + j *
    /// col_stride`.
    ///
    /// Panics when the last element lies outside `data`.
    pub fn new(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * row_stride + (cols - 1) * col_stride;
            assert!(
                last < data.len(),
                "MatRef: a [{rows}, {cols}] view with strides ({row_stride}, {col_stride}) needs {} elements, the slice has {}",
                last + 1,
                data.len()
            );
        }
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance between rows, in elements.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }

    /// Distance between columns, in elements.
    pub fn col_stride(&self) -> usize {
        self.col_stride
    }

    /// The viewed slice.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Returns element `(i, j)`.
    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.row_stride + j * self.col_stride]
    }
}

/// A raw output pointer that rayon tasks may share: every task writes its own part.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint parts of the output (see `run_tasks`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Returns the pointer. Closures that call this capture the whole `OutPtr`, which
    /// is `Sync`, rather than the raw pointer field, which is not.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Checks that `c` with row stride `ldc` contains `[m, n]`, and handles the products
/// that need no tile: `m` or `n` zero, and `depth` zero (where `c = A B` clears `c`).
/// Returns whether the tiles still have to run.
///
/// Panics when `c` is too short for `[m, n]` or `ldc < n`.
pub(crate) fn prepare_output(
    op: &str,
    (m, n, depth): (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) -> bool {
    if m == 0 || n == 0 {
        return false;
    }
    assert!(
        ldc >= n && c.len() >= (m - 1) * ldc + n,
        "{op}: output of {} elements with row stride {ldc} cannot hold [{m}, {n}]",
        c.len()
    );
    if depth == 0 {
        if !accumulate {
            for row in 0..m {
                c[row * ldc..row * ldc + n].fill(0.0);
            }
        }
        return false;
    }
    true
}

/// Tile shape and cache blocking of one kernel, in its own units of the inner
/// dimension (values for f32, pairs of values for bf16).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blocking {
    /// Rows of the register tile.
    pub mr: usize,
    /// Columns of the register tile.
    pub nr: usize,
    /// Inner-dimension units per cache block.
    pub kc: usize,
    /// Rows per cache block (a multiple of `mr`).
    pub mc: usize,
}

/// Multiply-adds below which a product runs on one thread.
const PARALLEL_THRESHOLD: usize = 1 << 21;

/// Splits the output `[m, n]` into up to `threads` parts of whole register tiles and
/// runs `run(rows, panels)` for each, in parallel when the product has more than
/// [`PARALLEL_THRESHOLD`] multiply-adds. `rows` counts rows of C and `panels` panels of
/// `nr` columns. The parts are disjoint, so every output value has one writer.
///
/// It splits the columns when that balances the tasks at least as well as splitting
/// the rows, else the rows (a product with few columns, such as a weight gradient).
pub(crate) fn run_tasks(
    blocking: Blocking,
    (m, n): (usize, usize),
    multiply_adds: usize,
    threads: usize,
    run: impl Fn(Range<usize>, Range<usize>) + Sync,
) {
    let panels = n.div_ceil(blocking.nr);
    let row_tiles = m.div_ceil(blocking.mr);
    let tasks = if multiply_adds < PARALLEL_THRESHOLD {
        1
    } else {
        threads.clamp(1, panels.max(row_tiles))
    };
    if tasks == 1 {
        run(0..m, 0..panels);
        return;
    }
    // The largest task's share of the work, in units of 1 / tasks: 1 is a perfect
    // balance.
    let imbalance = |units: usize| units.div_ceil(tasks) as f64 * tasks as f64 / units as f64;
    let split_columns = panels >= tasks && imbalance(panels) <= imbalance(row_tiles);
    (0..tasks).into_par_iter().for_each(|task| {
        if split_columns {
            run(0..m, panels * task / tasks..panels * (task + 1) / tasks);
        } else {
            let first = row_tiles * task / tasks * blocking.mr;
            let last = (row_tiles * (task + 1) / tasks * blocking.mr).min(m);
            run(first..last, 0..panels);
        }
    });
}

/// One register tile of the blocked loop nest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tile {
    /// First row of C.
    pub row: usize,
    /// Rows of C that the tile writes (at most `mr`).
    pub rows: usize,
    /// Panel of B (first column `panel * nr`).
    pub panel: usize,
    /// Columns of C that the tile writes (at most `nr`).
    pub cols: usize,
    /// First inner-dimension unit of the block.
    pub k_start: usize,
    /// Inner-dimension units of the block.
    pub kc: usize,
    /// Whether the tile adds to C (after the first block, or for `C += A B`).
    pub add: bool,
}

/// Writes the tile's part of `bias` into `c` when the tile is the first to write its
/// part of `c = A B + bias`, and returns whether the tile's product adds to `c`: always
/// after the bias is written, else `tile.add`.
///
/// # Safety
/// `c_tile` must point to `tile.rows` rows of `tile.cols` writable values with row stride
/// `ldc`, and `bias` must hold the columns `panel * nr..panel * nr + cols`.
pub(crate) unsafe fn start_tile(
    tile: &Tile,
    bias: Option<&[f32]>,
    nr: usize,
    c_tile: *mut f32,
    ldc: usize,
) -> bool {
    let Some(bias) = bias.filter(|_| !tile.add) else {
        return tile.add;
    };
    let first = tile.panel * nr;
    let bias = &bias[first..first + tile.cols];
    for r in 0..tile.rows {
        std::slice::from_raw_parts_mut(c_tile.add(r * ldc), tile.cols).copy_from_slice(bias);
    }
    true
}

/// Sets every row of the `[m, n]` output `c` (row stride `ldc`) to `bias`, the result of
/// `c = A B + bias` when A and B have no inner dimension.
pub(crate) fn fill_bias_rows(c: &mut [f32], ldc: usize, m: usize, bias: &[f32]) {
    for row in 0..m {
        c[row * ldc..row * ldc + bias.len()].copy_from_slice(bias);
    }
}

/// Visits the register tiles of rows `rows` and panels `panels` of a product with
/// `depth` inner units and `n` columns, in cache-blocked order: for each block of
/// `mc` rows and each block of `kc` units, one panel of B at a time (it stays in L1)
/// against all row tiles of the block (A's block stays in L2).
pub(crate) fn for_each_tile(
    blocking: Blocking,
    rows: Range<usize>,
    panels: Range<usize>,
    (depth, n): (usize, usize),
    accumulate: bool,
    mut tile: impl FnMut(Tile),
) {
    let Blocking { mr, nr, kc, mc } = blocking;
    for row_block in rows.clone().step_by(mc) {
        let block_end = (row_block + mc).min(rows.end);
        for k_start in (0..depth).step_by(kc) {
            let kc = kc.min(depth - k_start);
            let add = accumulate || k_start > 0;
            for panel in panels.clone() {
                let cols = nr.min(n - panel * nr);
                for row in (row_block..block_end).step_by(mr) {
                    tile(Tile {
                        row,
                        rows: mr.min(block_end - row),
                        panel,
                        cols,
                        k_start,
                        kc,
                        add,
                    });
                }
            }
        }
    }
}

/// A packed matrix-product kernel in one number format, so that callers can run the
/// same code in f32 or bf16.
pub trait PackedGemm {
    /// The packed left operand.
    type PackedA: Send + Sync;
    /// The packed right operand.
    type PackedB: Send + Sync;

    /// Packs the left operand `a` (`[m, k]`).
    fn pack_a(a: MatRef<'_>) -> Self::PackedA;

    /// Packs the right operand `b` (`[k, n]`).
    fn pack_b(b: MatRef<'_>) -> Self::PackedB;

    /// Computes `c = a b`, or `c += a b` with `accumulate`, where `c` is row-major
    /// `[m, n]` with row stride `ldc`, with the detected micro-kernel on up to
    /// `threads` rayon tasks.
    fn gemm(
        a: &Self::PackedA,
        b: &Self::PackedB,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
        threads: usize,
    );

    /// Computes `c (+)= a b` from unpacked operands with Candle's CPU thread count.
    fn matmul(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
        let a = Self::pack_a(a);
        let b = Self::pack_b(b);
        Self::gemm(
            &a,
            &b,
            c,
            ldc,
            accumulate,
            candle_core::utils::get_num_threads(),
        );
    }
}

/// Implements [`PackedGemm`] for the unit struct `$name` with the calling module's
/// `PackedA::pack`, `PackedB::pack`, and `gemm_packed` on `$kernel::detect()`.
macro_rules! impl_packed_gemm {
    ($name:ident, $kernel:ident) => {
        impl PackedGemm for $name {
            type PackedA = PackedA;
            type PackedB = PackedB;

            fn pack_a(a: MatRef<'_>) -> PackedA {
                PackedA::pack(a)
            }

            fn pack_b(b: MatRef<'_>) -> PackedB {
                PackedB::pack(b)
            }

            fn gemm(
                a: &PackedA,
                b: &PackedB,
                c: &mut [f32],
                ldc: usize,
                accumulate: bool,
                threads: usize,
            ) {
                gemm_packed($kernel::detect(), a, b, c, ldc, accumulate, threads);
            }
        }
    };
}
pub(crate) use impl_packed_gemm;

/// Writes the row-major `[mr, nr]` tile `scratch` (row length `nr`) to the first
/// `rows x cols` values of `c`, or adds it with `add`.
///
/// # Safety
/// `c` must point to `rows` rows of `cols` writable values with row stride `ldc`.
pub(crate) unsafe fn store_portable_tile(
    scratch: &[f32],
    nr: usize,
    c: *mut f32,
    ldc: usize,
    (rows, cols): (usize, usize),
    add: bool,
) {
    for r in 0..rows {
        let row = c.add(r * ldc);
        for j in 0..cols {
            let value = scratch[r * nr + j];
            *row.add(j) = if add { *row.add(j) + value } else { value };
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// Writes the first `rows x cols` values of a register tile of three 16-lane
    /// vectors per row to `c`, or adds them with `add`, with masked loads and stores
    /// at the right edge.
    ///
    /// # Safety
    /// The CPU must have AVX512F, and `c` must point to `rows` rows of `cols` writable
    /// values with row stride `ldc`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn store_tile<const ROWS: usize>(
        acc: &[[__m512; 3]; ROWS],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        add: bool,
    ) {
        for (r, row) in acc.iter().enumerate().take(rows) {
            let out = c.add(r * ldc);
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
                let ptr = out.add(first);
                let value = if add {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, ptr), sum)
                } else {
                    sum
                };
                _mm512_mask_storeu_ps(ptr, mask, value);
            }
        }
    }
}

/// Fills `out` (one slice per group of `group` rows or columns) in parallel when the
/// whole packed matrix has at least `min_parallel` values, else on this thread.
pub(crate) fn fill_groups<T: Send>(
    out: &mut [T],
    group_len: usize,
    min_parallel: usize,
    fill: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if group_len == 0 {
        return;
    }
    if out.len() >= min_parallel {
        out.par_chunks_mut(group_len)
            .enumerate()
            .for_each(|(index, chunk)| fill(index, chunk));
    } else {
        out.chunks_mut(group_len)
            .enumerate()
            .for_each(|(index, chunk)| fill(index, chunk));
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Reference products shared by the kernels' tests.

    use super::MatRef;
    use crate::rng::Rng;

    /// A product under test: `(a, b, (m, k, n), bias, threads)` returns `c = a b`, or
    /// `c = a b + bias` with a bias, for row-major `a` `[m, k]` and `b` `[k, n]`.
    pub(crate) type BiasProduct<'a> =
        &'a dyn Fn(&[f32], &[f32], (usize, usize, usize), Option<&[f32]>, usize) -> Vec<f32>;

    /// Checks `c = a b + bias` against `c = a b` with the bias added afterwards, for
    /// partial tiles, two blocks of k (k > 128), a zero-depth product, and 1 and 3 threads.
    pub(crate) fn check_bias(product: BiasProduct<'_>) {
        let mut rng = Rng::seed(77);
        // [130, 300] x [300, 97] has more multiply-adds than PARALLEL_THRESHOLD, so it
        // is split between 3 threads.
        for (m, k, n) in [
            (1, 1, 1),
            (7, 3, 50),
            (37, 300, 97),
            (130, 300, 97),
            (20, 0, 5),
        ] {
            let a = rng.uniform(m * k, -1.0, 1.0);
            let b = rng.uniform(k * n, -1.0, 1.0);
            let bias = rng.uniform(n, -1.0, 1.0);
            for threads in [1, 3] {
                let mut expected = product(&a, &b, (m, k, n), None, threads);
                for row in expected.chunks_exact_mut(n) {
                    for (value, add) in row.iter_mut().zip(&bias) {
                        *value += add;
                    }
                }
                let got = product(&a, &b, (m, k, n), Some(&bias), threads);
                for (index, (g, e)) in got.iter().zip(&expected).enumerate() {
                    let bound = 1e-5 * e.abs().max(1.0);
                    assert!(
                        (g - e).abs() <= bound,
                        "[{m}, {k}] x [{k}, {n}], {threads} threads, value {index}: {g} vs {e}"
                    );
                }
            }
        }
    }

    /// Returns a view of `data` as `[rows, cols]`, stored transposed when `transposed`.
    pub(crate) fn view(data: &[f32], rows: usize, cols: usize, transposed: bool) -> MatRef<'_> {
        if transposed {
            MatRef::transposed(data, rows, cols)
        } else {
            MatRef::row_major(data, rows, cols)
        }
    }

    /// Returns `(exact, bound)` for each output of `a b`: the f64 product of the inputs
    /// after `round`, and `sum |a| |b|` of the unrounded inputs, which scales the
    /// rounding error.
    pub(crate) fn reference(
        a: MatRef<'_>,
        b: MatRef<'_>,
        round: impl Fn(f32) -> f32,
    ) -> (Vec<f64>, Vec<f64>) {
        let (m, k, n) = (a.rows(), a.cols(), b.cols());
        let mut exact = vec![0.0; m * n];
        let mut bound = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let (x, y) = (a.at(i, p), b.at(p, j));
                    exact[i * n + j] += round(x) as f64 * round(y) as f64;
                    bound[i * n + j] += (x as f64 * y as f64).abs();
                }
            }
        }
        (exact, bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const BLOCKING: Blocking = Blocking {
        mr: 8,
        nr: 48,
        kc: 128,
        mc: 256,
    };

    /// Returns the tasks of `run_tasks` as `(rows, panels)` pairs, sorted.
    fn tasks(m: usize, n: usize, threads: usize) -> Vec<(Range<usize>, Range<usize>)> {
        let seen = Mutex::new(Vec::new());
        run_tasks(BLOCKING, (m, n), usize::MAX, threads, |rows, panels| {
            seen.lock().unwrap().push((rows, panels));
        });
        let mut seen = seen.into_inner().unwrap();
        seen.sort_by_key(|(rows, panels)| (rows.start, panels.start));
        seen
    }

    #[test]
    fn wide_output_splits_columns() {
        // 50 panels and 4 row tiles both split evenly; a tie goes to the columns.
        assert_eq!(tasks(32, 2400, 2), vec![(0..32, 0..25), (0..32, 25..50)]);
    }

    #[test]
    fn narrow_output_splits_rows() {
        // 5 panels split 2 / 3, but 300 row tiles split 150 / 150.
        assert_eq!(
            tasks(2400, 200, 2),
            vec![(0..1200, 0..5), (1200..2400, 0..5)]
        );
    }

    #[test]
    fn row_split_ends_at_last_row() {
        // 3 row tiles for 19 rows: tasks get 1 and 2 tiles, the last one cut at 19.
        assert_eq!(tasks(19, 20, 2), vec![(0..8, 0..1), (8..19, 0..1)]);
    }

    #[test]
    fn small_product_runs_one_task() {
        let seen = Mutex::new(Vec::new());
        run_tasks(BLOCKING, (8, 48), 1000, 4, |rows, panels| {
            seen.lock().unwrap().push((rows, panels));
        });
        assert_eq!(seen.into_inner().unwrap(), vec![(0..8, 0..1)]);
    }

    #[test]
    fn tiles_cover_every_output_once_per_block() {
        let blocking = Blocking {
            mr: 4,
            nr: 8,
            kc: 5,
            mc: 8,
        };
        let (m, n, depth) = (11, 19, 12);
        let mut count = vec![0usize; m * n];
        let mut first_blocks_added = 0;
        for_each_tile(blocking, 0..m, 0..3, (depth, n), false, |tile| {
            assert!(tile.rows <= 4 && tile.cols <= 8);
            if tile.k_start == 0 && tile.add {
                first_blocks_added += 1;
            }
            for r in tile.row..tile.row + tile.rows {
                for j in tile.panel * 8..tile.panel * 8 + tile.cols {
                    count[r * n + j] += tile.kc;
                }
            }
        });
        assert_eq!(first_blocks_added, 0, "the first block must overwrite C");
        assert!(count.iter().all(|&units| units == depth));
    }
}
