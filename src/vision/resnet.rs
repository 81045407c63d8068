//! torchvision ResNet-18/34 (BasicBlock networks) imported from a `torch.save` state dict.
//!
//! Key names are torchvision's: `conv1.weight`, `bn1.{weight,bias,running_mean,
//! running_var}`, `layer{1..4}.{block}.{conv1,bn1,conv2,bn2}.*`, the projection
//! shortcut `layer{k}.0.downsample.{0,1}.*`, and `fc.{weight,bias}`. The first block of
//! layers 2 to 4 has stride 2, as in torchvision. BatchNorm always uses the running
//! statistics (eval mode). Inputs are pixel values in 0..=255, normalised with the
//! ImageNet mean and standard deviation.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};

use super::{Result, VisionError};
use crate::import::load_torch;

/// ImageNet channel means of pixel values scaled to `[0, 1]`.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations of pixel values scaled to `[0, 1]`.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// PyTorch's default BatchNorm epsilon.
const BN_EPS: f64 = 1e-5;

/// Eval-mode BatchNorm over channels of `[batch, channels, h, w]`.
struct BatchNorm {
    weight: Var,
    bias: Var,
    mean: Tensor,
    var: Tensor,
}

impl BatchNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let channels = self.mean.dim(0)?;
        let scale = self
            .weight
            .as_tensor()
            .div(&(&self.var + BN_EPS)?.sqrt()?)?;
        let shift = self.bias.as_tensor().sub(&self.mean.mul(&scale)?)?;
        let scale = scale.reshape((1, channels, 1, 1))?;
        let shift = shift.reshape((1, channels, 1, 1))?;
        Ok(x.broadcast_mul(&scale)?.broadcast_add(&shift)?)
    }
}

/// A bias-free convolution followed by BatchNorm.
struct ConvBn {
    weight: Var,
    stride: usize,
    padding: usize,
    bn: BatchNorm,
}

impl ConvBn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = x.conv2d(self.weight.as_tensor(), self.padding, self.stride, 1, 1)?;
        self.bn.forward(&out)
    }
}

/// torchvision's `BasicBlock`.
struct Block {
    first: ConvBn,
    second: ConvBn,
    downsample: Option<ConvBn>,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.first.forward(x)?.relu()?;
        let out = self.second.forward(&out)?;
        let identity = match &self.downsample {
            Some(downsample) => downsample.forward(x)?,
            None => x.clone(),
        };
        Ok((out + identity)?.relu()?)
    }
}

/// A ResNet with BasicBlocks (ResNet-18 and ResNet-34 and narrower variants).
pub struct ResNet {
    stem: ConvBn,
    layers: Vec<Vec<Block>>,
    fc: Option<(Var, Var)>,
    /// Every trainable variable and buffer under its torchvision key, in file order.
    named: Vec<(String, Tensor)>,
    vars: Vec<(String, Var)>,
}

/// Reads tensors by key and records which were used.
struct Keys<'a> {
    path: &'a Path,
    tensors: HashMap<String, Tensor>,
    device: &'a Device,
    vars: Vec<(String, Var)>,
    named: Vec<(String, Tensor)>,
}

impl Keys<'_> {
    fn tensor(&mut self, key: &str) -> Result<Tensor> {
        let tensor = self
            .tensors
            .remove(key)
            .ok_or_else(|| VisionError::InvalidWeights {
                path: self.path.to_path_buf(),
                message: format!(
                    "the state dict has no `{key}`; expected torchvision ResNet keys \
                     (conv1.weight, bn1.weight, layer1.0.conv1.weight, ..., fc.weight)"
                ),
            })?;
        let tensor = tensor.to_device(self.device)?;
        self.named.push((key.to_string(), tensor.clone()));
        Ok(tensor)
    }

    fn var(&mut self, key: &str) -> Result<Var> {
        let var = Var::from_tensor(&self.tensor(key)?)?;
        self.vars.push((key.to_string(), var.clone()));
        Ok(var)
    }

    fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    fn bn(&mut self, prefix: &str) -> Result<BatchNorm> {
        let bn = BatchNorm {
            weight: self.var(&format!("{prefix}.weight"))?,
            bias: self.var(&format!("{prefix}.bias"))?,
            mean: self.tensor(&format!("{prefix}.running_mean"))?,
            var: self.tensor(&format!("{prefix}.running_var"))?,
        };
        self.tensors
            .remove(&format!("{prefix}.num_batches_tracked"));
        Ok(bn)
    }

    fn conv_bn(&mut self, conv: &str, bn: &str, stride: usize) -> Result<ConvBn> {
        let weight = self.var(&format!("{conv}.weight"))?;
        let padding = weight.dim(3)? / 2;
        Ok(ConvBn {
            weight,
            stride,
            padding,
            bn: self.bn(bn)?,
        })
    }
}

/// Max pool with a 3x3 window and stride 2 over `[n, c, h, w]` (no padding), built from
/// differentiable ops because Candle's `max_pool2d` has no backward pass when the window
/// and stride differ. Returns `[n, c, (h - 3) / 2 + 1, (w - 3) / 2 + 1]`.
pub fn max_pool_3x3_stride_2(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if h < 3 || w < 3 {
        return Err(VisionError::InvalidGraph(format!(
            "max pool input {h}x{w} is smaller than its 3x3 window"
        )));
    }
    let (oh, ow) = ((h - 3) / 2 + 1, (w - 3) / 2 + 1);
    // Pad to an even size 2 * (out + 1), then split each axis into (position, parity):
    // window row i of output row y is source row 2y + i = position y + i / 2, parity i % 2.
    let x = x
        .pad_with_zeros(2, 0, 2 * (oh + 1) - h)?
        .pad_with_zeros(3, 0, 2 * (ow + 1) - w)?
        .reshape((n, c, oh + 1, 2, ow + 1, 2))?;
    let mut out: Option<Tensor> = None;
    for i in 0..3 {
        let rows = x.narrow(2, i / 2, oh)?.narrow(3, i % 2, 1)?;
        for j in 0..3 {
            let window = rows.narrow(4, j / 2, ow)?.narrow(5, j % 2, 1)?;
            out = Some(match out {
                None => window,
                Some(max) => max.maximum(&window)?,
            });
        }
    }
    let out = out.ok_or_else(|| VisionError::InvalidGraph("empty max pool".to_string()))?;
    Ok(out.reshape((n, c, oh, ow))?)
}

impl ResNet {
    /// Loads a torchvision ResNet state dict saved with `torch.save(model.state_dict())`.
    /// The number of blocks per layer is read from the keys. Fails naming the key when
    /// one is missing and rejects Bottleneck networks (ResNet-50 and deeper).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let file = load_torch(path).map_err(|e| VisionError::InvalidWeights {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut keys = Keys {
            path,
            tensors: file.tensors.into_iter().collect(),
            device,
            vars: Vec::new(),
            named: Vec::new(),
        };
        if keys.has("layer1.0.conv3.weight") {
            return Err(VisionError::Unsupported(format!(
                "{} is a Bottleneck ResNet (ResNet-50 or deeper); only BasicBlock networks (ResNet-18 and ResNet-34) are supported",
                path.display()
            )));
        }
        let stem = keys.conv_bn("conv1", "bn1", 2)?;
        let mut layers = Vec::new();
        for layer in 1..=4 {
            let mut blocks = Vec::new();
            let mut index = 0;
            while keys.has(&format!("layer{layer}.{index}.conv1.weight")) {
                let prefix = format!("layer{layer}.{index}");
                let stride = if layer > 1 && index == 0 { 2 } else { 1 };
                let first =
                    keys.conv_bn(&format!("{prefix}.conv1"), &format!("{prefix}.bn1"), stride)?;
                let second =
                    keys.conv_bn(&format!("{prefix}.conv2"), &format!("{prefix}.bn2"), 1)?;
                let downsample = if keys.has(&format!("{prefix}.downsample.0.weight")) {
                    Some(keys.conv_bn(
                        &format!("{prefix}.downsample.0"),
                        &format!("{prefix}.downsample.1"),
                        stride,
                    )?)
                } else {
                    None
                };
                blocks.push(Block {
                    first,
                    second,
                    downsample,
                });
                index += 1;
            }
            if blocks.is_empty() {
                return Err(VisionError::InvalidWeights {
                    path: path.to_path_buf(),
                    message: format!("the state dict has no `layer{layer}.0.conv1.weight`"),
                });
            }
            layers.push(blocks);
        }
        let fc = if keys.has("fc.weight") {
            Some((keys.var("fc.weight")?, keys.var("fc.bias")?))
        } else {
            None
        };
        let mut unexpected: Vec<&String> = keys.tensors.keys().collect();
        if !unexpected.is_empty() {
            unexpected.sort();
            return Err(VisionError::InvalidWeights {
                path: path.to_path_buf(),
                message: format!(
                    "unexpected keys for a BasicBlock ResNet: {}",
                    unexpected
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Ok(Self {
            stem,
            layers,
            fc,
            named: keys.named,
            vars: keys.vars,
        })
    }

    /// Maps pixel values in 0..=255 `[batch, 3, h, w]` to ImageNet-normalised inputs.
    pub fn normalize(images: &Tensor) -> Result<Tensor> {
        let device = images.device();
        let mean: Vec<f32> = IMAGENET_MEAN.iter().map(|m| m * 255.0).collect();
        let std: Vec<f32> = IMAGENET_STD.iter().map(|s| s * 255.0).collect();
        let mean = Tensor::from_vec(mean, (1, 3, 1, 1), device)?;
        let std = Tensor::from_vec(std, (1, 3, 1, 1), device)?;
        Ok(images.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }

    /// Runs the body (stem, max pool and the four layers) on normalised inputs
    /// `[batch, 3, h, w]` and returns the feature map `[batch, channels, h / 32, w / 32]`.
    pub fn body_normalized(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.stem.forward(x)?.relu()?;
        // Zero padding acts as -inf padding here because the input follows a ReLU.
        let mut x = max_pool_3x3_stride_2(&x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?)?;
        for layer in &self.layers {
            for block in layer {
                x = block.forward(&x)?;
            }
        }
        Ok(x)
    }

    /// Runs the body on pixel values in 0..=255.
    pub fn body(&self, images: &Tensor) -> Result<Tensor> {
        self.body_normalized(&Self::normalize(images)?)
    }

    /// Returns the logits `[batch, classes]` of the ImageNet classifier `fc` for
    /// normalised inputs. Fails when the state dict had no `fc` keys.
    pub fn logits_normalized(&self, x: &Tensor) -> Result<Tensor> {
        let (weight, bias) = self.fc.as_ref().ok_or_else(|| {
            VisionError::Unsupported("this ResNet has no fc classifier".to_string())
        })?;
        let features = self.body_normalized(x)?.mean((2, 3))?;
        Ok(features
            .matmul(&weight.as_tensor().t()?)?
            .broadcast_add(bias.as_tensor())?)
    }

    /// Channels of the body's feature map.
    pub fn body_channels(&self) -> Result<usize> {
        let last = self
            .layers
            .last()
            .and_then(|layer| layer.last())
            .ok_or_else(|| VisionError::InvalidGraph("the ResNet has no layers".to_string()))?;
        Ok(last.second.weight.dim(0)?)
    }

    /// Returns the body's variables split as fastai splits a ResNet: stem, layer1 and
    /// layer2 first, then layer3 and layer4. The `fc` classifier is left out.
    pub fn body_groups(&self) -> Vec<Vec<(String, Var)>> {
        let mut groups = vec![Vec::new(), Vec::new()];
        for (name, var) in &self.vars {
            if name.starts_with("fc.") {
                continue;
            }
            let late = name.starts_with("layer3.") || name.starts_with("layer4.");
            groups[usize::from(late)].push((name.clone(), var.clone()));
        }
        groups
    }

    /// Returns the running statistics (buffers) of every BatchNorm, by key.
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        self.named
            .iter()
            .filter(|(name, _)| name.ends_with("running_mean") || name.ends_with("running_var"))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_pool_matches_candle_forward() {
        for (h, w) in [(7, 9), (8, 8), (3, 4)] {
            let values: Vec<f32> = (0..2 * h * w)
                .map(|i| ((i * 29 % 31) as f32) - 15.0)
                .collect();
            let x = Tensor::from_vec(values, (1, 2, h, w), &Device::Cpu).unwrap();
            let ours = max_pool_3x3_stride_2(&x).unwrap();
            let reference = x.max_pool2d_with_stride((3, 3), (2, 2)).unwrap();
            assert_eq!(ours.dims(), reference.dims(), "{h}x{w}");
            let diff = (ours - reference)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0, "{h}x{w}");
        }
    }
}
