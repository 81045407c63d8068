//! The number format of the CPU matrix products, weights packed in that format, and a
//! differentiable bf16 matrix product for Candle tensors.
//!
//! f32 is the default. Its products run on the packed f32 kernels of
//! [`super::f32gemm`], or on the `gemm` crate (as Candle's matmul does) when
//! [`super::f32gemm::f32_backend`] selects it. bf16 rounds both operands of every
//! product to bfloat16 and accumulates in f32 ([`super::bf16`]); the parameters and
//! every other operation stay f32. int8
//! ([`super::int8`]) quantises weights per output row and activations per input row,
//! and serves inference only.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, DType, Layout, Result, Shape, Tensor,
};
use serde::{Deserialize, Serialize};

use super::bf16::{self, Bf16Gemm, MatRef, PackedB};
use super::contiguous_slice;
use super::f32gemm::{self, f32_backend, F32Backend, F32Gemm};
use super::int8::{self, PackedInt8};
use super::packed::PackedGemm;

/// Number format of the matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 inputs and sums (packed AVX-512 kernels, or the `gemm` crate).
    #[default]
    F32,
    /// Inputs rounded to bfloat16, f32 sums (AVX512-BF16 `vdpbf16ps`).
    Bf16,
    /// Weights as int8 with one scale per row, activations quantised per row at run
    /// time, i32 sums (AVX512-VNNI `vpdpbusd`). Inference only.
    Int8,
}

impl Precision {
    /// Returns the name used by `--precision` and in reports: `f32`, `bf16` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        }
    }

    /// Checks that this CPU has the instructions the fast kernels of `self` need.
    /// Without them the products still run, on slower portable kernels, so callers
    /// that only want correct results may skip this check.
    pub fn check_cpu(self) -> std::result::Result<(), PrecisionError> {
        let (supported, feature) = match self {
            Self::F32 => (true, ""),
            Self::Bf16 => (bf16::has_avx512_bf16(), "AVX512-BF16"),
            Self::Int8 => (int8::has_avx512_vnni(), "AVX512-VNNI"),
        };
        if supported {
            Ok(())
        } else {
            Err(PrecisionError::MissingCpuFeature {
                precision: self,
                feature,
            })
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = PrecisionError;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        match text {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "int8" => Ok(Self::Int8),
            other => Err(PrecisionError::Unknown(other.to_string())),
        }
    }
}

/// Errors of [`Precision`] parsing and checks.
#[derive(Debug, thiserror::Error)]
pub enum PrecisionError {
    /// The name is not a precision.
    #[error("unknown precision `{0}`; expected f32, bf16 or int8")]
    Unknown(String),
    /// The CPU lacks the instructions of the fast kernels.
    #[error("--precision {precision} needs a CPU with {feature}, which this one does not report; use --precision f32")]
    MissingCpuFeature {
        /// The requested precision.
        precision: Precision,
        /// The missing CPU feature.
        feature: &'static str,
    },
}

/// A weight `W [n, k]` packed once for products `x W^T`.
#[derive(Debug, Clone)]
pub enum PackedWeight {
    /// Packed for the f32 kernels.
    F32(f32gemm::PackedB),
    /// Rounded to bf16.
    Bf16(PackedB),
    /// Quantised to int8 per row.
    Int8(PackedInt8),
}

impl PackedWeight {
    /// Packs the row-major weight `w` `[n, k]` for `precision`, or returns `None` for
    /// f32 when [`f32_backend`] is the `gemm` crate, which multiplies the weight as it
    /// is.
    ///
    /// NOTE: every packed weight is f32, so packing an f64 model for inference makes
    /// its packed products f32.
    pub fn pack(w: &[f32], n: usize, k: usize, precision: Precision) -> Option<Self> {
        match precision {
            Precision::F32 => match f32_backend() {
                F32Backend::Packed => Some(Self::F32(f32gemm::PackedB::pack_transposed(w, n, k))),
                F32Backend::GemmCrate => None,
            },
            Precision::Bf16 => Some(Self::Bf16(PackedB::pack_transposed(w, n, k))),
            Precision::Int8 => Some(Self::Int8(PackedInt8::pack(w, n, k))),
        }
    }

    /// Returns `(n, k)`, the shape of the packed weight.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Self::F32(b) => (b.cols(), b.depth()),
            Self::Bf16(b) => (b.cols(), b.depth()),
            Self::Int8(w) => (w.rows(), w.depth()),
        }
    }

    /// Computes `out = x W^T + bias` for `x` row-major `[m, k]`, `out` row-major
    /// `[m, n]` and `bias` `[n]`. The f32 and bf16 kernels write the bias tile by tile.
    pub fn matmul_transposed_bias(&self, x: &[f32], m: usize, out: &mut [f32], bias: &[f32]) {
        let n = self.dims().0;
        assert_eq!(
            bias.len(),
            n,
            "matmul_transposed_bias: bias has {} values for {n} columns",
            bias.len()
        );
        if n == 0 {
            return;
        }
        let threads = candle_core::utils::get_num_threads();
        match self {
            Self::F32(b) => {
                let a = F32Gemm::pack_a(MatRef::row_major(x, m, b.depth()));
                let kernel = f32gemm::F32Kernel::detect();
                f32gemm::gemm_packed_bias(kernel, &a, b, out, b.cols(), bias, threads);
            }
            Self::Bf16(b) => {
                let a = Bf16Gemm::pack_a(MatRef::row_major(x, m, b.depth()));
                let kernel = bf16::Bf16Kernel::detect();
                bf16::gemm_packed_bias(kernel, &a, b, out, b.cols(), bias, threads);
            }
            Self::Int8(w) => {
                for row in out.chunks_exact_mut(bias.len()).take(m) {
                    row.copy_from_slice(bias);
                }
                w.matmul_transposed(x, m, out, true, threads);
            }
        }
    }

    /// Computes `out = x W^T`, or `out += x W^T` with `accumulate`, for `x` row-major
    /// `[m, k]` and `out` row-major `[m, n]`.
    pub fn matmul_transposed(&self, x: &[f32], m: usize, out: &mut [f32], accumulate: bool) {
        let threads = candle_core::utils::get_num_threads();
        match self {
            Self::F32(b) => {
                let a = F32Gemm::pack_a(MatRef::row_major(x, m, b.depth()));
                F32Gemm::gemm(&a, b, out, b.cols(), accumulate, threads);
            }
            Self::Bf16(b) => {
                let a = Bf16Gemm::pack_a(MatRef::row_major(x, m, b.depth()));
                Bf16Gemm::gemm(&a, b, out, b.cols(), accumulate, threads);
            }
            Self::Int8(w) => w.matmul_transposed(x, m, out, accumulate, threads),
        }
    }
}

/// Returns `x W^T` for `x` `[m, k]` and a weight `[n, k]`: in f32 with Candle when
/// `packed` is `None`, else with the packed weight (no gradient flows then).
pub fn linear_packed(x: &Tensor, w: &Tensor, packed: Option<&Arc<PackedWeight>>) -> Result<Tensor> {
    let Some(packed) = packed else {
        return x.matmul(&w.t()?);
    };
    let (m, k) = x.dims2()?;
    let (n, packed_k) = packed.dims();
    if packed_k != k || w.dims() != [n, k] {
        bail!(
            "linear_packed: input {:?}, weight {:?} and packed weight [{n}, {packed_k}] do not match",
            x.dims(),
            w.dims()
        );
    }
    let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0.0f32; m * n];
    packed.matmul_transposed(&values, m, &mut out, false);
    Tensor::from_vec(out, (m, n), x.device())?.to_dtype(x.dtype())
}

/// Minimum number of rows for which [`linear_inference`] packs an f32 weight for one call. Packing
/// reads and writes the whole weight, which costs more than the product saves for a few
/// rows (one token at a time in `generate`).
const MIN_ROWS_TO_PACK: usize = 256;

/// Returns `x W^T + bias` for inference: `x` `[m, k]`, `w` `[n, k]`, `bias` `[n]`.
///
/// For f32 CPU tensors the product runs on the kernels of `precision`, with `packed`
/// when given (it must have been packed from `w`) or with `w` packed for this call
/// (f32 packs only from 256 rows of `x`). The bias is written into the output before
/// the product adds to it (tile by tile in f32 and bf16), so the `[m, n]` result is
/// allocated once and never copied. Other tensors, f32 with fewer rows and no packed
/// weight, and f32 with the `gemm` backend take Candle's matmul and a broadcast add. No
/// gradient flows to any input.
pub fn linear_inference(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    precision: Precision,
    packed: Option<&Arc<PackedWeight>>,
) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let (n, w_k) = w.dims2()?;
    if w_k != k {
        bail!(
            "linear_inference: input {:?} and weight {:?} do not match",
            x.dims(),
            w.dims()
        );
    }
    if let Some(bias) = bias {
        if bias.dims() != [n] {
            bail!(
                "linear_inference: bias {:?} does not match weight {:?}",
                bias.dims(),
                w.dims()
            );
        }
    }
    let fused = x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && bias.is_none_or(|bias| bias.dtype() == DType::F32)
        && (packed.is_some() || precision != Precision::F32 || m >= MIN_ROWS_TO_PACK);
    let owned;
    let packed = match packed {
        Some(packed) if fused => {
            if packed.dims() != (n, k) {
                bail!(
                    "linear_inference: weight {:?} and packed weight {:?} do not match",
                    w.dims(),
                    packed.dims()
                );
            }
            Some(packed.as_ref())
        }
        _ if fused => {
            owned = with_f32_slice(w, |values| PackedWeight::pack(values, n, k, precision))?;
            owned.as_ref()
        }
        _ => None,
    };
    let Some(packed) = packed else {
        let product = match precision {
            Precision::Bf16 if fused => bf16_matmul(&x.detach(), &w.detach(), false, true)?,
            _ => x.detach().matmul(&w.detach().t()?)?,
        };
        return match bias {
            Some(bias) => product.broadcast_add(&bias.detach()),
            None => Ok(product),
        };
    };
    let mut out = vec![0.0f32; m * n];
    match bias {
        Some(bias) => {
            let bias = bias.detach().to_vec1::<f32>()?;
            with_f32_slice(x, |values| {
                packed.matmul_transposed_bias(values, m, &mut out, &bias)
            })?;
        }
        None => with_f32_slice(x, |values| {
            packed.matmul_transposed(values, m, &mut out, false)
        })?,
    }
    Tensor::from_vec(out, (m, n), x.device())
}

/// Runs `f` on the elements of the f32 CPU tensor `t` in row-major order, without a
/// copy when `t` is contiguous.
fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        bail!(
            "linear_inference: expected a CPU tensor, got {:?}",
            t.device()
        );
    };
    Ok(f(contiguous_slice::<f32>(
        storage,
        layout,
        "linear_inference",
        "input",
    )?))
}

/// Returns `op(a) op(b)` with bf16 products and f32 sums, for f32 CPU tensors.
///
/// `op(a)` is `a` `[m, k]`, or with `a_transposed` the transpose of `a` stored
/// `[k, m]`. Likewise `op(b)` is `b` `[k, n]`, or with `b_transposed` the transpose of
/// `b` stored `[n, k]`. Gradients flow to both, computed with bf16 products too.
pub fn bf16_matmul(
    a: &Tensor,
    b: &Tensor,
    a_transposed: bool,
    b_transposed: bool,
) -> Result<Tensor> {
    packed_matmul(a, b, a_transposed, b_transposed, Precision::Bf16)
}

/// Returns `op(a) op(b)` (operands as in [`bf16_matmul`]) in f32: with the packed f32
/// kernels for f32 CPU tensors when [`f32_backend`] selects them, else with Candle's
/// matmul. Gradients flow to both, computed the same way.
pub fn f32_matmul(
    a: &Tensor,
    b: &Tensor,
    a_transposed: bool,
    b_transposed: bool,
) -> Result<Tensor> {
    let packed = a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && a.device().is_cpu()
        && b.device().is_cpu()
        && f32_backend() == F32Backend::Packed;
    if packed {
        return packed_matmul(a, b, a_transposed, b_transposed, Precision::F32);
    }
    let op = |t: &Tensor, transposed: bool| if transposed { t.t() } else { Ok(t.clone()) };
    op(a, a_transposed)?.matmul(&op(b, b_transposed)?)
}

/// Runs [`PackedMatmul`] in `precision` (f32 or bf16) after checking the shapes.
fn packed_matmul(
    a: &Tensor,
    b: &Tensor,
    a_transposed: bool,
    b_transposed: bool,
    precision: Precision,
) -> Result<Tensor> {
    let (a_rows, a_cols) = a.dims2()?;
    let (b_rows, b_cols) = b.dims2()?;
    let inner_a = if a_transposed { a_rows } else { a_cols };
    let inner_b = if b_transposed { b_cols } else { b_rows };
    if inner_a != inner_b {
        bail!(
            "{precision}_matmul: inner dimensions differ: a {:?} (transposed: {a_transposed}), b {:?} (transposed: {b_transposed})",
            a.dims(),
            b.dims()
        );
    }
    a.contiguous()?.apply_op2(
        &b.contiguous()?,
        PackedMatmul {
            a_transposed,
            b_transposed,
            precision,
        },
    )
}

/// The custom operation behind [`bf16_matmul`] and [`f32_matmul`].
struct PackedMatmul {
    a_transposed: bool,
    b_transposed: bool,
    /// [`Precision::F32`] or [`Precision::Bf16`].
    precision: Precision,
}

impl candle_core::CustomOp2 for PackedMatmul {
    fn name(&self) -> &'static str {
        match self.precision {
            Precision::Bf16 => "bf16-matmul",
            _ => "f32-packed-matmul",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        if s1.dtype() != DType::F32 || s2.dtype() != DType::F32 {
            bail!(
                "{op}: operands have dtypes {:?} and {:?}, expected f32",
                s1.dtype(),
                s2.dtype()
            );
        }
        let a_data = contiguous_slice::<f32>(s1, l1, op, "a")?;
        let b_data = contiguous_slice::<f32>(s2, l2, op, "b")?;
        let (a_rows, a_cols) = l1.shape().dims2()?;
        let (b_rows, b_cols) = l2.shape().dims2()?;
        let a = if self.a_transposed {
            MatRef::transposed(a_data, a_cols, a_rows)
        } else {
            MatRef::row_major(a_data, a_rows, a_cols)
        };
        let b = if self.b_transposed {
            MatRef::transposed(b_data, b_cols, b_rows)
        } else {
            MatRef::row_major(b_data, b_rows, b_cols)
        };
        let (m, n) = (a.rows(), b.cols());
        let mut out = vec![0.0f32; m * n];
        match self.precision {
            Precision::F32 => F32Gemm::matmul(a, b, &mut out, n, false),
            Precision::Bf16 => Bf16Gemm::matmul(a, b, &mut out, n, false),
            Precision::Int8 => bail!("{op}: int8 products serve inference only"),
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // With C = op(a) op(b): dop(a) = dC op(b)^T and dop(b) = op(a)^T dC; a stored
        // transposed operand gets the transpose of its gradient.
        let product = |x: &Tensor, y: &Tensor, x_transposed: bool, y_transposed: bool| {
            packed_matmul(x, y, x_transposed, y_transposed, self.precision)
        };
        let grad_a = if self.a_transposed {
            product(b, grad, self.b_transposed, true)?
        } else {
            product(grad, b, false, !self.b_transposed)?
        };
        let grad_b = if self.b_transposed {
            product(grad, a, true, self.a_transposed)?
        } else {
            product(a, grad, !self.a_transposed, false)?
        };
        Ok((Some(grad_a), Some(grad_b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::f32gemm::with_f32_backend;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    fn var(rng: &mut Rng, shape: (usize, usize)) -> Var {
        let tensor = Tensor::from_vec(
            rng.uniform(shape.0 * shape.1, -1.0, 1.0),
            shape,
            &Device::Cpu,
        )
        .unwrap();
        Var::from_tensor(&tensor).unwrap()
    }

    fn values(tensor: &Tensor) -> Vec<f32> {
        tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths differ");
        for (index, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tolerance,
                "{what}[{index}]: got {g}, f32 {w}"
            );
        }
    }

    /// `linear_inference` in every precision this CPU runs, with the weight packed per
    /// call and beforehand, with and without a bias, against Candle's f32 product.
    #[test]
    fn linear_inference_matches_matmul_plus_bias() {
        let mut rng = Rng::seed(5);
        let (m, k, n) = (37, 50, 70);
        let x = var(&mut rng, (m, k));
        let w = var(&mut rng, (n, k));
        let bias = Tensor::from_vec(rng.uniform(n, -1.0, 1.0), n, &Device::Cpu).unwrap();
        let product = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        let with_bias = product.broadcast_add(&bias).unwrap();
        let w_values = values(w.as_tensor());
        // bf16 and int8 round inputs to 8 significant bits over sums of 50 terms.
        for (precision, tolerance) in [
            (Precision::F32, 1e-5),
            (Precision::Bf16, 0.05),
            (Precision::Int8, 0.08),
        ] {
            if precision.check_cpu().is_err() {
                eprintln!(
                    "skipped {}: this CPU lacks its instructions",
                    precision.name()
                );
                continue;
            }
            let packed = PackedWeight::pack(&w_values, n, k, precision).map(Arc::new);
            for prepacked in [None, packed.as_ref()] {
                let what = format!("{} prepacked {}", precision.name(), prepacked.is_some());
                let got = linear_inference(
                    x.as_tensor(),
                    w.as_tensor(),
                    Some(&bias),
                    precision,
                    prepacked,
                )
                .unwrap();
                assert_close(&values(&got), &values(&with_bias), tolerance, &what);
                let got =
                    linear_inference(x.as_tensor(), w.as_tensor(), None, precision, prepacked)
                        .unwrap();
                assert_close(&values(&got), &values(&product), tolerance, &what);
            }
        }
        let wrong_bias = Tensor::zeros(n + 1, DType::F32, &Device::Cpu).unwrap();
        let error = linear_inference(
            x.as_tensor(),
            w.as_tensor(),
            Some(&wrong_bias),
            Precision::F32,
            None,
        )
        .unwrap_err();
        assert!(error.to_string().contains("bias"), "{error}");
    }

    #[test]
    fn bf16_matmul_gradients_match_f32() {
        // Every layout: forward and both gradients against Candle's f32 matmul of a
        // weighted sum, within bf16 rounding of sums over 9 to 13 terms.
        let mut rng = Rng::seed(4);
        let (m, k, n) = (7, 9, 13);
        let weights =
            Tensor::from_vec(rng.uniform(m * n, -1.0, 1.0), (m, n), &Device::Cpu).unwrap();
        for (a_transposed, b_transposed) in
            [(false, false), (false, true), (true, false), (true, true)]
        {
            let a = var(&mut rng, if a_transposed { (k, m) } else { (m, k) });
            let b = var(&mut rng, if b_transposed { (n, k) } else { (k, n) });
            let op = |t: &Tensor, transposed: bool| {
                if transposed {
                    t.t().unwrap()
                } else {
                    t.clone()
                }
            };
            let reference = op(a.as_tensor(), a_transposed)
                .matmul(&op(b.as_tensor(), b_transposed))
                .unwrap();
            let result =
                bf16_matmul(a.as_tensor(), b.as_tensor(), a_transposed, b_transposed).unwrap();
            let what = format!("layout ({a_transposed}, {b_transposed})");
            assert_close(
                &values(&result),
                &values(&reference),
                0.05,
                &format!("{what} product"),
            );
            let grads = result
                .mul(&weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grads_ref = reference
                .mul(&weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [("a", &a), ("b", &b)] {
                let got = grads.get(v.as_tensor()).unwrap();
                let want = grads_ref.get(v.as_tensor()).unwrap();
                assert_eq!(got.dims(), want.dims(), "{what} gradient of {name}: shapes");
                assert_close(
                    &values(got),
                    &values(want),
                    0.06,
                    &format!("{what} gradient of {name}"),
                );
            }
        }
    }

    /// Returns the value of `loss` and its gradients with respect to `vars`.
    fn loss_and_grads(vars: &[Var], loss: Tensor) -> (f32, Vec<Vec<f32>>) {
        let grads = loss.backward().unwrap();
        let gradients = vars
            .iter()
            .map(|v| values(grads.get(v.as_tensor()).unwrap()))
            .collect();
        (loss.to_scalar::<f32>().unwrap(), gradients)
    }

    #[test]
    fn bf16_lstm_matches_f32() {
        use crate::kernels::lstm::lstm_sequence_with;
        let (time, batch, hidden) = (5, 3, 20);
        let mut rng = Rng::seed(12);
        let vars = [
            var(&mut rng, (time * batch, 4 * hidden)),
            var(&mut rng, (4 * hidden, hidden)),
            var(&mut rng, (batch, hidden)),
            var(&mut rng, (batch, hidden)),
        ];
        let weights = Tensor::from_vec(
            rng.uniform(time * batch * hidden, -1.0, 1.0),
            (time, batch, hidden),
            &Device::Cpu,
        )
        .unwrap();
        let run = |precision: Precision| {
            let projected = vars[0]
                .as_tensor()
                .reshape((time, batch, 4 * hidden))
                .unwrap();
            let output = lstm_sequence_with(
                &projected,
                vars[1].as_tensor(),
                vars[2].as_tensor(),
                vars[3].as_tensor(),
                precision,
                None,
            )
            .unwrap();
            let loss = output.outputs.mul(&weights).unwrap().sum_all().unwrap();
            loss_and_grads(&vars, loss)
        };
        let (loss_f32, grads_f32) = run(Precision::F32);
        let (loss_bf16, grads_bf16) = run(Precision::Bf16);
        assert!(
            (loss_f32 - loss_bf16).abs() < 0.02 * loss_f32.abs().max(1.0),
            "loss: bf16 {loss_bf16}, f32 {loss_f32}"
        );
        for (name, (got, want)) in ["projected", "W_hh", "h0", "c0"]
            .iter()
            .zip(grads_bf16.iter().zip(&grads_f32))
        {
            assert_close(got, want, 0.05, &format!("gradient of {name}"));
        }
    }

    #[test]
    fn bf16_decoder_loss_matches_f32() {
        use crate::kernels::decoder::decoder_cross_entropy_with;
        // 300 rows cross one chunk of 256 positions.
        let (rows, features, classes) = (300, 24, 70);
        let mut rng = Rng::seed(13);
        let vars = [
            var(&mut rng, (rows, features)),
            var(&mut rng, (classes, features)),
        ];
        let bias = Var::from_tensor(
            &Tensor::from_vec(rng.uniform(classes, -1.0, 1.0), classes, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let ids: Vec<u32> = (0..rows)
            .map(|_| rng.below(classes as u64) as u32)
            .collect();
        let targets = Tensor::from_vec(ids, rows, &Device::Cpu).unwrap();
        let run = |precision: Precision| {
            let loss = decoder_cross_entropy_with(
                vars[0].as_tensor(),
                vars[1].as_tensor(),
                Some(bias.as_tensor()),
                &targets,
                precision,
            )
            .unwrap();
            loss_and_grads(&vars, loss)
        };
        let (loss_f32, grads_f32) = run(Precision::F32);
        let (loss_bf16, grads_bf16) = run(Precision::Bf16);
        assert!(
            (loss_f32 - loss_bf16).abs() < 0.01 * loss_f32,
            "loss: bf16 {loss_bf16}, f32 {loss_f32}"
        );
        // Gradients of a mean over 300 rows are small: compare with a matching scale.
        for (name, (got, want)) in ["hidden", "weight"]
            .iter()
            .zip(grads_bf16.iter().zip(&grads_f32))
        {
            assert_close(got, want, 2e-3, &format!("gradient of {name}"));
        }
    }

    /// Returns the largest difference between `got` and `want`, relative to the largest
    /// magnitude in `want`.
    fn relative_difference(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len(), "lengths differ");
        let scale = want.iter().fold(0.0f32, |max, v| max.max(v.abs()));
        let difference = got
            .iter()
            .zip(want)
            .fold(0.0f32, |max, (g, w)| max.max((g - w).abs()));
        difference / scale.max(f32::MIN_POSITIVE)
    }

    #[test]
    fn packed_f32_model_matches_gemm_crate() {
        use super::super::decoder::decoder_cross_entropy;
        use super::super::lstm::lstm_sequence;
        // A one-layer language model: input projection, LSTM, decoder loss, with sizes
        // that are no multiple of the 8 x 48 register tile.
        let (time, batch, embedding, hidden, vocab) = (7, 5, 19, 21, 103);
        let mut rng = Rng::seed(31);
        let vars = [
            var(&mut rng, (time * batch, embedding)),
            var(&mut rng, (4 * hidden, embedding)),
            var(&mut rng, (4 * hidden, hidden)),
            var(&mut rng, (batch, hidden)),
            var(&mut rng, (batch, hidden)),
            var(&mut rng, (vocab, hidden)),
        ];
        let ids: Vec<u32> = (0..time * batch)
            .map(|_| rng.below(vocab as u64) as u32)
            .collect();
        let targets = Tensor::from_vec(ids, time * batch, &Device::Cpu).unwrap();
        let run = || {
            let [x, w_ih, w_hh, h0, c0, decoder] = vars.each_ref().map(|v| v.as_tensor());
            let projected = f32_matmul(x, w_ih, false, true)
                .unwrap()
                .reshape((time, batch, 4 * hidden))
                .unwrap();
            let output = lstm_sequence(&projected, w_hh, h0, c0).unwrap();
            let rows = output.outputs.reshape((time * batch, hidden)).unwrap();
            let loss = decoder_cross_entropy(&rows, decoder, None, &targets).unwrap();
            loss_and_grads(&vars, loss)
        };
        let (loss_packed, grads_packed) = with_f32_backend(F32Backend::Packed, run);
        let (loss_gemm, grads_gemm) = with_f32_backend(F32Backend::GemmCrate, run);
        assert!(
            (loss_packed - loss_gemm).abs() <= 1e-5 * loss_gemm.abs(),
            "loss: packed {loss_packed}, gemm crate {loss_gemm}"
        );
        for (name, (got, want)) in ["x", "W_ih", "W_hh", "h0", "c0", "decoder"]
            .iter()
            .zip(grads_packed.iter().zip(&grads_gemm))
        {
            let difference = relative_difference(got, want);
            assert!(
                difference <= 1e-5,
                "gradient of {name}: packed and gemm crate differ by {difference} of its largest value"
            );
        }
    }

    #[test]
    fn packed_f32_weight_matches_f64_product() {
        // x [3, 5] times W^T for W [50, 5]: one full panel of 48 columns and a partial one.
        let (m, k, n) = (3, 5, 50);
        let mut rng = Rng::seed(32);
        let x = rng.uniform(m * k, -1.0, 1.0);
        let w = rng.uniform(n * k, -1.0, 1.0);
        let packed = with_f32_backend(F32Backend::Packed, || {
            PackedWeight::pack(&w, n, k, Precision::F32)
        });
        let Some(packed) = packed else {
            panic!("f32 weights are packed with the packed backend");
        };
        assert_eq!(packed.dims(), (n, k));
        let mut out = vec![1.0f32; m * n];
        packed.matmul_transposed(&x, m, &mut out, true);
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum::<f64>()
                    + 1.0;
                assert!(
                    (out[i * n + j] as f64 - exact).abs() < 1e-5,
                    "[{i}, {j}]: {} vs {exact}",
                    out[i * n + j]
                );
            }
        }
        let unpacked = with_f32_backend(F32Backend::GemmCrate, || {
            PackedWeight::pack(&w, n, k, Precision::F32)
        });
        assert!(
            unpacked.is_none(),
            "the gemm crate multiplies f32 weights unpacked"
        );
    }

    #[test]
    fn precision_names_round_trip() {
        for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
            assert_eq!(precision.name().parse::<Precision>().unwrap(), precision);
        }
        assert!("fp16".parse::<Precision>().is_err());
    }
}
