//! One single-layer LSTM with weight dropout on its hidden-to-hidden matrix.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, Var};

use super::dropout::{uses_cuda_kernels, WeightMask};
use crate::kernels::cuda::ops::lstm_sequence_stepwise;
use crate::kernels::lstm::{lstm_sequence_autograd, lstm_sequence_with, LstmSequenceOutput};
use crate::kernels::precision::{
    bf16_matmul, f32_matmul, linear_inference, linear_packed, PackedWeight, Precision,
};
use crate::rng::Rng;

/// The two weights of one layer packed once for reduced-precision inference.
#[derive(Debug, Clone)]
pub struct PackedLayer {
    /// `weight_ih` packed for `x W_ih^T`.
    pub weight_ih: Arc<PackedWeight>,
    /// `weight_hh` packed for `h W_hh^T`.
    pub weight_hh: Arc<PackedWeight>,
}

/// The parameters of one LSTM layer, in PyTorch's layout and gate order (input, forget,
/// cell, output).
#[derive(Debug, Clone)]
pub struct LstmLayer {
    /// Input-to-hidden weight `[4 hidden, input]`.
    pub weight_ih: Var,
    /// Raw hidden-to-hidden weight `[4 hidden, hidden]`, before weight dropout. Training
    /// forwards multiply it by a fresh mask and never change it in place.
    pub weight_hh: Var,
    /// Input-to-hidden bias `[4 hidden]`.
    pub bias_ih: Var,
    /// Hidden-to-hidden bias `[4 hidden]`.
    pub bias_hh: Var,
}

impl LstmLayer {
    /// Creates a layer with PyTorch's initialisation: every weight and bias uniform in
    /// `[-1/sqrt(hidden), 1/sqrt(hidden))`.
    pub fn new(
        input_size: usize,
        hidden_size: usize,
        rng: &mut Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let bound = 1.0 / (hidden_size as f32).sqrt();
        let mut draw = |shape: &[usize]| -> Result<Var> {
            let count = shape.iter().product();
            let tensor = Tensor::from_vec(rng.uniform(count, -bound, bound), shape, device)?;
            Var::from_tensor(&tensor.to_dtype(dtype)?)
        };
        Ok(Self {
            weight_ih: draw(&[4 * hidden_size, input_size])?,
            weight_hh: draw(&[4 * hidden_size, hidden_size])?,
            bias_ih: draw(&[4 * hidden_size])?,
            bias_hh: draw(&[4 * hidden_size])?,
        })
    }

    /// Width of the hidden state.
    pub fn hidden_size(&self) -> usize {
        self.weight_hh.dims()[1]
    }

    /// Width of the input.
    pub fn input_size(&self) -> usize {
        self.weight_ih.dims()[1]
    }

    /// Returns the four parameters in canonical order: `weight_ih`, `weight_hh`,
    /// `bias_ih`, `bias_hh`.
    pub fn vars(&self) -> Vec<Var> {
        vec![
            self.weight_ih.clone(),
            self.weight_hh.clone(),
            self.bias_ih.clone(),
            self.bias_hh.clone(),
        ]
    }

    /// Packs both weights for inference in `precision`, or returns `None` for f32 when
    /// the `gemm` backend is selected ([`crate::kernels::f32gemm::f32_backend`]).
    pub fn pack(&self, precision: Precision) -> Result<Option<PackedLayer>> {
        let pack = |var: &Var| -> Result<Option<Arc<PackedWeight>>> {
            let (rows, cols) = var.dims2()?;
            let values = var
                .as_tensor()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            Ok(PackedWeight::pack(&values, rows, cols, precision).map(Arc::new))
        };
        match (pack(&self.weight_ih)?, pack(&self.weight_hh)?) {
            (Some(weight_ih), Some(weight_hh)) => Ok(Some(PackedLayer {
                weight_ih,
                weight_hh,
            })),
            _ => Ok(None),
        }
    }

    /// Runs the layer over a time-major `input` `[time, batch, input]` from the state
    /// `h0`, `c0` (`[batch, hidden]`). With `weight_mask` (`[4 hidden, hidden]`), the
    /// recurrence uses the masked `weight_hh`, so the gradient reaches the raw weight.
    /// With `track_gradients` false, the parameters enter detached and the kernels keep
    /// nothing for a backward pass.
    ///
    /// `precision` sets the format of the input projection and the recurrent products
    /// (see [`Precision`]; int8 needs `track_gradients` false). `packed`, from
    /// [`Self::pack`] on the current weights, replaces the per-call packing in inference
    /// and then must come without `weight_mask` and with `track_gradients` false.
    ///
    /// On the CPU the recurrence is the fused whole-sequence operation
    /// ([`lstm_sequence_with`]). On a CUDA device it runs one cuBLAS product and one cell
    /// kernel per step ([`lstm_sequence_stepwise`]) in f32, and stock Candle operations
    /// in other dtypes.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        input: &Tensor,
        h0: &Tensor,
        c0: &Tensor,
        weight_mask: Option<&WeightMask>,
        track_gradients: bool,
        precision: Precision,
        packed: Option<&PackedLayer>,
    ) -> Result<LstmSequenceOutput> {
        if packed.is_some() && (track_gradients || weight_mask.is_some()) {
            candle_core::bail!(
                "LstmLayer::forward: packed weights serve inference only, without weight dropout or gradient tracking"
            );
        }
        let param = |var: &Var| {
            if track_gradients {
                var.as_tensor().clone()
            } else {
                var.as_tensor().detach()
            }
        };
        let (time, batch, features) = input.dims3()?;
        let gate_width = 4 * self.hidden_size();
        let bias = param(&self.bias_ih).add(&param(&self.bias_hh))?;
        let rows = input.reshape((time * batch, features))?;
        let weight_ih = param(&self.weight_ih);
        let projected = if !track_gradients && input.device().is_cpu() {
            let packed_ih = packed.map(|packed| &packed.weight_ih);
            linear_inference(&rows, &weight_ih, Some(&bias), precision, packed_ih)?
                .reshape((time, batch, gate_width))?
        } else {
            self.project_with_gradients(&rows, &weight_ih, &bias, precision, packed)?
                .reshape((time, batch, gate_width))?
        };
        let weight_hh = match weight_mask {
            Some(mask) => mask.apply(&param(&self.weight_hh))?,
            None => param(&self.weight_hh),
        };
        if projected.device().is_cpu() {
            let packed_hh = packed.map(|packed| packed.weight_hh.clone());
            lstm_sequence_with(&projected, &weight_hh, h0, c0, precision, packed_hh)
        } else if uses_cuda_kernels(&projected) {
            lstm_sequence_stepwise(&projected, &weight_hh, h0, c0)
        } else {
            lstm_sequence_autograd(&projected, &weight_hh, h0, c0)
        }
    }

    /// Returns the input projection `rows W_ih^T + bias` as a graph that gradients flow
    /// through (the path of training, and of every device but the CPU).
    fn project_with_gradients(
        &self,
        rows: &Tensor,
        weight_ih: &Tensor,
        bias: &Tensor,
        precision: Precision,
        packed: Option<&PackedLayer>,
    ) -> Result<Tensor> {
        let product = match (packed, precision) {
            (Some(packed), _) => linear_packed(rows, weight_ih, Some(&packed.weight_ih))?,
            (None, Precision::F32) => f32_matmul(rows, weight_ih, false, true)?,
            (None, Precision::Bf16) if rows.dtype() == DType::F32 => {
                bf16_matmul(rows, weight_ih, false, true)?
            }
            (None, Precision::Bf16) => rows.matmul(&weight_ih.t()?)?,
            (None, Precision::Int8) => {
                let (rows_ih, cols_ih) = weight_ih.dims2()?;
                let values = weight_ih
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let packed_ih =
                    PackedWeight::pack(&values, rows_ih, cols_ih, precision).map(Arc::new);
                linear_packed(rows, weight_ih, packed_ih.as_ref())?
            }
        };
        product.broadcast_add(bias)
    }
}
