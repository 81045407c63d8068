//! f32 `exp`, `sigmoid` and `tanh` from arithmetic alone, as scalar functions and as
//! 16-lane AVX-512 functions.
//!
//! The C library's `expf` and `tanhf` are scalar calls, so the LSTM gate pass ran one
//! element per call. The vector functions use the same range reduction and
//! polynomials as the scalar ones, with fused multiply-adds. The unit tests check the
//! largest errors over `[-20, 20]` in steps of 2^-12. Scalar `exp` is within 2 units in
//! the last place of the C library, `sigmoid` within 2.5e-7 relative and `tanh` within
//! 3e-7 absolute. Each vector function is within 3e-7 (relative above 1) of its scalar
//! twin.

/// log2(e).
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln(2) split in a high part with a short mantissa and the remainder (Cody and Waite),
/// so that `n * LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// Returns e^x. Inputs are clamped to `[-87, 88]`, so the result is never infinite
/// or denormal (e^88 is about 1.65e38, e^-87 about 1.65e-38).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // x = n ln2 + r with |r| <= ln2 / 2, so e^x = 2^n e^r.
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer (ties to even)
    // with plain arithmetic, which vectorises without SSE4.1's rounding instruction.
    const ROUND: f32 = 12_582_912.0;
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor series of e^r to degree 7 (truncation error below 2e-9 for |r| <= 0.35).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^n as a float: n + 127 lies in [1, 254] for the clamped range.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// Returns 1 / (1 + e^-x). Below x = -88 the result stays at about 6e-39 (a denormal)
/// instead of falling further, because `exp` clamps its input.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Returns tanh(x): an odd polynomial below |x| = 0.55, `1 - 2 / (e^2|x| + 1)` above,
/// with the sign of `x`.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    // Taylor series of tanh to degree 13; the first omitted term is below 2e-7 at 0.55.
    let s = a * a;
    let small = a
        * (1.0
            + s * (-1.0 / 3.0
                + s * (2.0 / 15.0
                    + s * (-17.0 / 315.0
                        + s * (62.0 / 2835.0
                            + s * (-1382.0 / 155_925.0 + s * (21_844.0 / 6_081_075.0)))))));
    let large = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
    let magnitude = if a < 0.55 { small } else { large };
    magnitude.copysign(x)
}

/// The same functions on 16 lanes of AVX-512, with fused multiply-adds, and masked
/// loads and stores for slices whose length is not a multiple of 16.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::{LN2_HI, LN2_LO, LOG2_E};

    /// e^x per lane, inputs clamped to `[-87, 88]` as [`super::exp`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn exp(x: __m512) -> __m512 {
        // max and min return their second operand when either is NaN, so this order
        // keeps a NaN input NaN, as the scalar clamp does.
        let x = _mm512_min_ps(
            _mm512_set1_ps(88.0),
            _mm512_max_ps(_mm512_set1_ps(-87.0), x),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(1.0 / 5040.0);
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// 1 / (1 + e^-x) per lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn sigmoid(x: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        _mm512_div_ps(
            one,
            _mm512_add_ps(one, exp(_mm512_sub_ps(_mm512_setzero_ps(), x))),
        )
    }

    /// tanh(x) per lane, with the split of [`super::tanh`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn tanh(x: __m512) -> __m512 {
        let a = _mm512_abs_ps(x);
        let s = _mm512_mul_ps(a, a);
        let mut p = _mm512_set1_ps(21_844.0 / 6_081_075.0);
        for c in [
            -1382.0 / 155_925.0,
            62.0 / 2835.0,
            -17.0 / 315.0,
            2.0 / 15.0,
            -1.0 / 3.0,
            1.0,
        ] {
            p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(c));
        }
        let small = _mm512_mul_ps(a, p);
        let one = _mm512_set1_ps(1.0);
        let e = exp(_mm512_add_ps(a, a));
        let large = _mm512_sub_ps(
            one,
            _mm512_div_ps(_mm512_set1_ps(2.0), _mm512_add_ps(e, one)),
        );
        let is_small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, _mm512_set1_ps(0.55));
        let magnitude = _mm512_mask_blend_ps(is_small, large, small);
        let sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN));
        _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(magnitude), sign))
    }

    /// Lane mask for the `len - j` (at most 16) elements left from `j`.
    #[inline]
    pub(crate) fn tail(j: usize, len: usize) -> __mmask16 {
        let left = (len - j).min(16);
        ((1u32 << left) - 1) as __mmask16
    }

    /// Panics unless `mask` selects the first lanes only (the form [`tail`] returns) and
    /// those lanes lie inside a slice of `len` elements from `j`.
    #[inline]
    fn check_lanes(len: usize, j: usize, mask: __mmask16) {
        let lanes = mask.count_ones() as usize;
        assert!(
            u32::from(mask) == (1u32 << lanes) - 1 && j + lanes <= len,
            "lane mask {mask:#06x} at {j} does not fit a slice of {len} elements"
        );
    }

    /// Loads up to 16 elements of `v` from `j` (zeros beyond the end). Panics when the
    /// mask reaches past `v`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn load(v: &[f32], j: usize, mask: __mmask16) -> __m512 {
        check_lanes(v.len(), j, mask);
        // SAFETY: `check_lanes` showed that the selected lanes lie inside `v`.
        unsafe { _mm512_maskz_loadu_ps(mask, v.as_ptr().add(j)) }
    }

    /// Stores the lanes of `x` selected by `mask` into `v` from `j`. Panics when the
    /// mask reaches past `v`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn store(v: &mut [f32], j: usize, mask: __mmask16, x: __m512) {
        check_lanes(v.len(), j, mask);
        // SAFETY: `check_lanes` showed that the selected lanes lie inside `v`.
        unsafe { _mm512_mask_storeu_ps(v.as_mut_ptr().add(j), mask, x) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep() -> impl Iterator<Item = f32> {
        (-20 * 4096..=20 * 4096).map(|i| i as f32 / 4096.0)
    }

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulps() {
        let worst = sweep().map(|x| ulps(exp(x), x.exp())).max();
        assert!(worst <= Some(2), "largest error {worst:?} ulps");
        // Clamped ends stay finite and positive.
        assert!(exp(1000.0).is_finite());
        assert!(exp(-1000.0) > 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(sigmoid(f32::NAN).is_nan());
        assert!(tanh(f32::NAN).is_nan());
    }

    #[test]
    fn sigmoid_matches_the_library_formula() {
        for x in sweep() {
            let reference = 1.0 / (1.0 + (-(x as f64)).exp());
            let error = (sigmoid(x) as f64 - reference).abs() / reference;
            assert!(
                error < 2.5e-7,
                "sigmoid({x}) = {}, expected {reference}",
                sigmoid(x)
            );
        }
        assert_eq!(sigmoid(-1000.0).max(0.0), sigmoid(-1000.0));
        assert!((sigmoid(1000.0) - 1.0).abs() < 1e-7);
    }

    #[test]
    fn tanh_matches_the_library() {
        for x in sweep().chain([1e-30, -1e-30, 0.549_999, 0.55, 100.0, -100.0]) {
            let reference = (x as f64).tanh();
            let error = (tanh(x) as f64 - reference).abs();
            assert!(
                error < 3e-7,
                "tanh({x}) = {}, expected {reference}",
                tanh(x)
            );
            assert_eq!(
                tanh(x).is_sign_negative(),
                x.is_sign_negative(),
                "sign of tanh({x})"
            );
        }
        assert_eq!(tanh(0.0), 0.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_versions_match_the_scalar_ones() {
        use std::arch::x86_64::*;
        if !crate::kernels::f32gemm::has_avx512f() {
            eprintln!("skipped: this CPU has no AVX512F");
            return;
        }
        // A NaN input gives NaN in every function, so a diverged model is not hidden.
        let nan = [f32::NAN; 16];
        let vectors: [unsafe fn(__m512) -> __m512; 3] =
            [avx512::exp, avx512::sigmoid, avx512::tanh];
        for vector in vectors {
            let mut out = [0.0f32; 16];
            // SAFETY: AVX512F is present (checked above); both arrays hold 16 floats.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), vector(_mm512_loadu_ps(nan.as_ptr()))) };
            assert!(out.iter().all(|v| v.is_nan()), "NaN in, {out:?} out");
        }
        let xs: Vec<f32> = sweep().chain([1000.0, -1000.0, 0.55, -0.55, 0.0]).collect();
        for chunk in xs.chunks(16) {
            let mut lanes = [0.0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            type Vector = unsafe fn(__m512) -> __m512;
            type Scalar = fn(f32) -> f32;
            let functions: [(Vector, Scalar); 3] = [
                (avx512::exp, exp),
                (avx512::sigmoid, sigmoid),
                (avx512::tanh, tanh),
            ];
            for (vector, scalar) in functions {
                let mut out = [0.0f32; 16];
                // SAFETY: AVX512F is present (checked above); both arrays hold 16 floats.
                unsafe {
                    _mm512_storeu_ps(out.as_mut_ptr(), vector(_mm512_loadu_ps(lanes.as_ptr())))
                };
                for (x, y) in chunk.iter().zip(out) {
                    let expected = scalar(*x);
                    // Relative error for large results, absolute below 1.
                    let error = (y - expected).abs() / expected.abs().max(1.0);
                    assert!(error <= 3e-7, "at {x}: vector {y}, scalar {expected}");
                }
            }
        }
    }
}
