//! Clamping as one differentiable op on the CPU.
//!
//! Candle's `Tensor::clamp` is a `maximum` then a `minimum` against broadcast scalars.
//! Its forward pass keeps both results alive for the backward pass, and the backward
//! pass stores a full-size gradient for each broadcast scalar until it ends: three
//! activation-sized tensors per clamp beyond the result. A MobileNet clamps after every
//! convolution (ReLU6, then the quantized range). This op produces one tensor and its
//! backward pass one gradient.

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// Returns `x` clamped to `[min, max]`. The gradient passes where `min < x < max` and
/// is 0 elsewhere. `x` may have any shape. Off the CPU, or for a dtype other than f32,
/// it falls back to `Tensor::clamp`.
pub fn clamp(x: &Tensor, min: f32, max: f32) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        return x.clamp(min, max);
    }
    x.contiguous()?.apply_op1(Clamp { min, max })
}

/// Returns the contiguous f32 elements of a storage, or an error naming the operand.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, operand: &str) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(data) => data.as_slice(),
        other => bail!("clamp: {operand} is {:?}, expected f32", other.dtype()),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("clamp: {operand} must be contiguous"),
    }
}

/// The forward op.
struct Clamp {
    min: f32,
    max: f32,
}

impl CustomOp1 for Clamp {
    fn name(&self) -> &'static str {
        "clamp"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "input")?;
        let (min, max) = (self.min, self.max);
        let out: Vec<f32> = x.par_iter().map(|&v| v.max(min).min(max)).collect();
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        let grad_arg = arg.apply_op2_no_bwd(
            &grad,
            &ClampGrad {
                min: self.min,
                max: self.max,
            },
        )?;
        Ok(Some(grad_arg))
    }
}

/// Gradient with respect to the input: arguments `(x, grad_out)`.
struct ClampGrad {
    min: f32,
    max: f32,
}

impl CustomOp2 for ClampGrad {
    fn name(&self) -> &'static str {
        "clamp_grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "input")?;
        let grad = f32_slice(s2, l2, "output gradient")?;
        if x.len() != grad.len() {
            bail!(
                "clamp: input has {} elements, output gradient {}",
                x.len(),
                grad.len()
            );
        }
        let (min, max) = (self.min, self.max);
        let out: Vec<f32> = x
            .par_iter()
            .zip(grad.par_iter())
            .map(|(&v, &g)| if v > min && v < max { g } else { 0.0 })
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn forward_clamps_both_sides() {
        let x = Tensor::new(&[[-2f32, 0.5], [6.5, 3.0]], &Device::Cpu).unwrap();
        let y = clamp(&x, 0.0, 6.0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y, vec![vec![0.0, 0.5], vec![6.0, 3.0]]);
    }

    #[test]
    fn gradient_passes_inside_the_range_only() {
        let x = Var::new(&[-2f32, 0.5, 6.5, 3.0, -0.1], &Device::Cpu).unwrap();
        let weights = Tensor::new(&[1f32, 2.0, 3.0, 4.0, 5.0], &Device::Cpu).unwrap();
        let loss = (clamp(x.as_tensor(), 0.0, 6.0).unwrap() * &weights)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let grad = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(grad, vec![0.0, 2.0, 0.0, 4.0, 0.0]);
    }
}
