//! The AWD-LSTM's dropouts, with masks drawn from the crate's seeded [`Rng`].
//!
//! All masks are inverted-dropout masks: kept values are scaled by `1 / (1 - p)`, so
//! evaluation needs no rescaling and simply skips the mask.

use candle_core::{DType, Device, Result, Tensor};

use crate::kernels::cuda::ops;
use crate::rng::Rng;

/// Returns whether `tensor` lives on a CUDA device in f32, where the model uses the CUDA
/// kernels of [`crate::kernels::cuda`].
pub(crate) fn uses_cuda_kernels(tensor: &Tensor) -> bool {
    tensor.device().is_cuda() && tensor.dtype() == DType::F32
}

/// Draws an inverted-dropout mask of `shape` with drop probability `p`, as a tensor of
/// `dtype` on `device`.
pub fn dropout_mask(
    rng: &mut Rng,
    shape: &[usize],
    p: f32,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let count = shape.iter().product();
    Tensor::from_vec(rng.dropout_mask(count, p), shape, device)?.to_dtype(dtype)
}

/// Draws a locked ("variational") dropout mask for a time-major activation
/// `[time, batch, features]`: shape `[1, batch, features]`, one mask per sequence and
/// feature, shared by every time step. Returns `None` when `p` is 0.
pub fn locked_dropout_mask(
    rng: &mut Rng,
    batch: usize,
    features: usize,
    p: f32,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    if p <= 0.0 {
        return Ok(None);
    }
    dropout_mask(rng, &[1, batch, features], p, dtype, device).map(Some)
}

/// A weight-dropout (DropConnect) mask for one forward pass.
#[derive(Debug, Clone)]
pub enum WeightMask {
    /// Inverted-dropout values (0 or `1 / (1 - p)`) in the weight's dtype, applied by
    /// multiplication.
    Scaled(Tensor),
    /// One u8 per weight (0 for a dropped one) and the scale of the kept ones, applied
    /// by the weight-dropout kernel (f32 only).
    Keep {
        /// Kept weights, u8, the weight's shape.
        keep: Tensor,
        /// `1 / (1 - p)`.
        scale: f32,
    },
}

impl WeightMask {
    /// Draws a mask of `shape` with drop probability `p`: [`Self::Keep`] for f32 on a
    /// CUDA device, else [`Self::Scaled`]. Both take the same draws from `rng`, so a seed
    /// gives the same mask on every device.
    pub fn draw(
        rng: &mut Rng,
        shape: &[usize],
        p: f32,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if !(device.is_cuda() && dtype == DType::F32) {
            return dropout_mask(rng, shape, p, dtype, device).map(Self::Scaled);
        }
        let count = shape.iter().product();
        let values = rng.dropout_mask(count, p);
        let scale = values.iter().copied().find(|&v| v != 0.0).unwrap_or(0.0);
        let keep: Vec<u8> = values.iter().map(|&v| u8::from(v != 0.0)).collect();
        Ok(Self::Keep {
            keep: Tensor::from_vec(keep, shape, device)?,
            scale,
        })
    }

    /// Returns `weight` with the mask applied; the gradient reaches `weight` masked the
    /// same way.
    pub fn apply(&self, weight: &Tensor) -> Result<Tensor> {
        match self {
            Self::Scaled(mask) => weight.mul(mask),
            Self::Keep { keep, scale } => ops::weight_dropout(weight, keep, *scale),
        }
    }
}

/// Applies an optional mask by broadcasting multiplication.
pub fn apply_mask(input: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    match mask {
        Some(mask) => input.broadcast_mul(mask),
        None => Ok(input.clone()),
    }
}

/// Draws an embedding-dropout mask `[vocab, 1]`: each row of the embedding matrix, that
/// is each word, is dropped whole with probability `p`. Returns `None` when `p` is 0.
pub fn embedding_row_mask(
    rng: &mut Rng,
    vocab_size: usize,
    p: f32,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    if p <= 0.0 {
        return Ok(None);
    }
    dropout_mask(rng, &[vocab_size, 1], p, dtype, device).map(Some)
}

/// Looks up the embedding rows of `ids` (`[n]` u32) in `weight` (`[vocab, features]`)
/// and returns `[n, features]`.
///
/// With `row_mask` (`[vocab, 1]`), each row is scaled by its word's mask value, which
/// equals looking up in `weight * row_mask` without building that matrix. Rows of
/// `pad_id` take no gradient, as with PyTorch's `padding_idx`. For f32 on a CUDA device,
/// the masked lookup runs the embedding-dropout kernel.
pub fn embed(
    weight: &Tensor,
    ids: &Tensor,
    row_mask: Option<&Tensor>,
    pad_id: Option<u32>,
) -> Result<Tensor> {
    if let Some(mask) = row_mask.filter(|_| uses_cuda_kernels(weight)) {
        return ops::embedding_dropout(weight, ids, &mask.flatten_all()?, pad_id);
    }
    let mut rows = weight.index_select(ids, 0)?;
    if let Some(mask) = row_mask {
        rows = rows.broadcast_mul(&mask.index_select(ids, 0)?)?;
    }
    if let Some(pad_id) = pad_id {
        let is_pad = ids.eq(pad_id)?;
        if is_pad.max_all()?.to_scalar::<u8>()? > 0 {
            let is_pad = is_pad.to_dtype(weight.dtype())?.unsqueeze(1)?;
            let not_pad = is_pad.affine(-1.0, 1.0)?;
            rows = rows
                .broadcast_mul(&not_pad)?
                .add(&rows.detach().broadcast_mul(&is_pad)?)?;
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_mask_values_are_zero_or_scaled() {
        let mut rng = Rng::seed(5);
        let mask = locked_dropout_mask(&mut rng, 4, 50, 0.5, DType::F32, &Device::Cpu)
            .unwrap()
            .unwrap();
        assert_eq!(mask.dims(), &[1, 4, 50]);
        let values = mask.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|&v| v == 0.0 || v == 2.0));
        assert!(values.contains(&0.0));
        assert!(values.contains(&2.0));
    }

    #[test]
    fn zero_probability_draws_no_mask() {
        let mut rng = Rng::seed(5);
        let before = rng.clone();
        let mask = embedding_row_mask(&mut rng, 10, 0.0, DType::F32, &Device::Cpu).unwrap();
        assert!(mask.is_none());
        assert_eq!(rng, before);
    }
}
