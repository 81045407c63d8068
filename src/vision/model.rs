//! The image classifier: a pretrained backbone body and fastai's `cnn_learner` head,
//! saved as a model folder.
//!
//! The head is fastai 2.x's `create_head(2 * channels, classes)`: concat pooling (max
//! then average over the feature map), BatchNorm, dropout 0.25, a bias-free linear
//! layer to 512, ReLU, BatchNorm, dropout 0.5 and a bias-free linear layer to the
//! classes. Linear weights start from Kaiming-normal draws.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::mobilenet::MobileNet;
use super::resnet::ResNet;
use super::tflite::Model;
use super::{Result, VisionError};
use crate::rng::Rng;

/// Width of the head's hidden layer (fastai's `lin_ftrs` default).
pub const HEAD_HIDDEN: usize = 512;
/// Dropout before the first linear layer of the head.
pub const HEAD_DROPOUT_FIRST: f32 = 0.25;
/// Dropout before the last linear layer of the head.
pub const HEAD_DROPOUT_LAST: f32 = 0.5;
/// PyTorch's BatchNorm momentum and epsilon.
const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// Folder file names.
pub const CONFIG_FILE: &str = "config.json";
/// Trained weights of the body and head, and the head's running statistics.
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// A pretrained image backbone.
pub enum Backbone {
    /// A TensorFlow Lite MobileNet; its body is every operator before the last global
    /// average pool.
    MobileNet(MobileNet),
    /// A torchvision BasicBlock ResNet without its `fc` layer.
    ResNet(ResNet),
}

/// Kind of backbone, stored in the model folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackboneKind {
    /// A `.tflite` MobileNet.
    MobileNet,
    /// A torchvision ResNet `.pth` state dict.
    ResNet,
}

impl BackboneKind {
    /// Picks the kind from the file extension: `.tflite` or `.pth`/`.pt`.
    pub fn from_path(path: &Path) -> Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("tflite") => Ok(Self::MobileNet),
            Some("pth") | Some("pt") => Ok(Self::ResNet),
            _ => Err(VisionError::Unsupported(format!(
                "backbone {} must be a TensorFlow Lite MobileNet (.tflite) or a torchvision ResNet state dict (.pth or .pt)",
                path.display()
            ))),
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Self::MobileNet => "backbone.tflite",
            Self::ResNet => "backbone.pth",
        }
    }
}

impl Backbone {
    /// Loads a backbone file (kind from its extension) with weights on `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        match BackboneKind::from_path(path)? {
            BackboneKind::MobileNet => {
                let model = Model::load(path)?;
                Ok(Self::MobileNet(MobileNet::from_tflite(&model, device)?))
            }
            BackboneKind::ResNet => Ok(Self::ResNet(ResNet::load(path, device)?)),
        }
    }

    /// The kind.
    pub fn kind(&self) -> BackboneKind {
        match self {
            Self::MobileNet(_) => BackboneKind::MobileNet,
            Self::ResNet(_) => BackboneKind::ResNet,
        }
    }

    /// Runs the body on pixel values in 0..=255 `[batch, 3, h, w]` and returns the
    /// feature map `[batch, channels, h', w']`. Each backbone applies its own input
    /// normalisation: the MobileNet's input quantization, ImageNet mean and std for
    /// ResNets.
    pub fn body(&self, images: &Tensor) -> Result<Tensor> {
        match self {
            Self::MobileNet(net) => net.body(images),
            Self::ResNet(net) => net.body(images),
        }
    }

    /// Channels of the body's feature map.
    pub fn channels(&self) -> Result<usize> {
        match self {
            Self::MobileNet(net) => net.body_channels(),
            Self::ResNet(net) => net.body_channels(),
        }
    }

    /// The body's variables in fastai's layer groups: one group for a MobileNet
    /// (`default_split`), two for a ResNet (`_resnet_split`).
    pub fn groups(&self) -> Result<Vec<Vec<(String, Var)>>> {
        match self {
            Self::MobileNet(net) => Ok(vec![net.body_vars()?]),
            Self::ResNet(net) => Ok(net.body_groups()),
        }
    }
}

/// BatchNorm over the features of `[batch, features]`.
pub struct BatchNorm1d {
    /// Scale `[features]`.
    pub weight: Var,
    /// Shift `[features]`.
    pub bias: Var,
    /// Running mean `[features]`.
    pub running_mean: Tensor,
    /// Running (unbiased) variance `[features]`.
    pub running_var: Tensor,
}

impl BatchNorm1d {
    fn new(features: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: Var::ones(features, DType::F32, device)?,
            bias: Var::zeros(features, DType::F32, device)?,
            running_mean: Tensor::zeros(features, DType::F32, device)?,
            running_var: Tensor::ones(features, DType::F32, device)?,
        })
    }

    /// Normalises `x` `[batch, features]` with the batch statistics (updating the
    /// running ones, as PyTorch does in training mode) or with the running statistics.
    fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (mean, var) = if train {
            let n = x.dim(0)?;
            if n < 2 {
                return Err(VisionError::Unsupported(
                    "BatchNorm in training mode needs at least 2 images per batch".to_string(),
                ));
            }
            let mean = x.mean(0)?;
            let centered = x.broadcast_sub(&mean)?;
            let var = centered.sqr()?.mean(0)?;
            let unbiased = (var.detach() * (n as f64 / (n - 1) as f64))?;
            self.running_mean =
                ((&self.running_mean * (1.0 - BN_MOMENTUM))? + (mean.detach() * BN_MOMENTUM)?)?;
            self.running_var =
                ((&self.running_var * (1.0 - BN_MOMENTUM))? + (unbiased * BN_MOMENTUM)?)?;
            (mean, var)
        } else {
            (self.running_mean.clone(), self.running_var.clone())
        };
        let normalized = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + BN_EPS)?.sqrt()?)?;
        Ok(normalized
            .broadcast_mul(self.weight.as_tensor())?
            .broadcast_add(self.bias.as_tensor())?)
    }
}

/// fastai's classifier head.
pub struct Head {
    /// BatchNorm of the pooled features.
    pub bn1: BatchNorm1d,
    /// `[512, 2 * channels]`.
    pub linear1: Var,
    /// BatchNorm of the hidden layer.
    pub bn2: BatchNorm1d,
    /// `[classes, 512]`.
    pub linear2: Var,
}

/// Returns Kaiming-normal weights `[rows, cols]` (std `sqrt(2 / cols)`), drawn with
/// the Box-Muller transform.
fn kaiming_normal(rows: usize, cols: usize, rng: &mut Rng, device: &Device) -> Result<Var> {
    let std = (2.0 / cols as f64).sqrt();
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let u1 = rng.next_f64().max(1e-12);
            let u2 = rng.next_f64();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
        })
        .collect();
    Ok(Var::from_vec(values, (rows, cols), device)?)
}

/// Applies inverted dropout with probability `p` using `rng`.
fn dropout(x: &Tensor, p: f32, rng: &mut Rng) -> Result<Tensor> {
    let mask = rng.dropout_mask(x.elem_count(), p);
    let mask = Tensor::from_vec(mask, x.dims(), x.device())?;
    Ok(x.mul(&mask)?)
}

impl Head {
    /// Creates a head for a feature map of `channels` channels and `classes` outputs.
    pub fn new(channels: usize, classes: usize, rng: &mut Rng, device: &Device) -> Result<Self> {
        Ok(Self {
            bn1: BatchNorm1d::new(2 * channels, device)?,
            linear1: kaiming_normal(HEAD_HIDDEN, 2 * channels, rng, device)?,
            bn2: BatchNorm1d::new(HEAD_HIDDEN, device)?,
            linear2: kaiming_normal(classes, HEAD_HIDDEN, rng, device)?,
        })
    }

    /// Maps a feature map `[batch, channels, h, w]` to logits `[batch, classes]`.
    /// `rng` is `Some` in training mode (dropout on, BatchNorm batch statistics).
    pub fn forward(&mut self, features: &Tensor, rng: Option<&mut Rng>) -> Result<Tensor> {
        let train = rng.is_some();
        let flat = features.flatten_from(2)?;
        let pooled = Tensor::cat(&[flat.max(2)?, flat.mean(2)?], 1)?;
        let mut x = self.bn1.forward(&pooled, train)?;
        let mut rng = rng;
        if let Some(rng) = rng.as_mut() {
            x = dropout(&x, HEAD_DROPOUT_FIRST, rng)?;
        }
        x = x.matmul(&self.linear1.as_tensor().t()?)?.relu()?;
        x = self.bn2.forward(&x, train)?;
        if let Some(rng) = rng {
            x = dropout(&x, HEAD_DROPOUT_LAST, rng)?;
        }
        Ok(x.matmul(&self.linear2.as_tensor().t()?)?)
    }

    /// The trainable variables with their names and whether weight decay applies.
    pub fn vars(&self) -> Vec<(String, Var, bool)> {
        vec![
            ("head.bn1.weight".into(), self.bn1.weight.clone(), false),
            ("head.bn1.bias".into(), self.bn1.bias.clone(), false),
            ("head.linear1.weight".into(), self.linear1.clone(), true),
            ("head.bn2.weight".into(), self.bn2.weight.clone(), false),
            ("head.bn2.bias".into(), self.bn2.bias.clone(), false),
            ("head.linear2.weight".into(), self.linear2.clone(), true),
        ]
    }

    /// Returns the BatchNorm running statistics under their canonical names.
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        vec![
            (
                "head.bn1.running_mean".into(),
                self.bn1.running_mean.clone(),
            ),
            ("head.bn1.running_var".into(), self.bn1.running_var.clone()),
            (
                "head.bn2.running_mean".into(),
                self.bn2.running_mean.clone(),
            ),
            ("head.bn2.running_var".into(), self.bn2.running_var.clone()),
        ]
    }

    /// Replaces the running statistics named in `tensors` (see [`Self::buffers`]).
    /// Statistics that `tensors` lacks keep their values, and a tensor of the wrong shape
    /// is an error that names it.
    pub fn set_buffers(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let targets = [
            ("head.bn1.running_mean", &mut self.bn1.running_mean),
            ("head.bn1.running_var", &mut self.bn1.running_var),
            ("head.bn2.running_mean", &mut self.bn2.running_mean),
            ("head.bn2.running_var", &mut self.bn2.running_var),
        ];
        for (name, target) in targets {
            let Some(value) = tensors.get(name) else {
                continue;
            };
            if value.dims() != target.dims() {
                return Err(VisionError::Unsupported(format!(
                    "`{name}` has shape {:?} but the head expects {:?}",
                    value.dims(),
                    target.dims()
                )));
            }
            *target = value.to_device(target.device())?.to_dtype(target.dtype())?;
        }
        Ok(())
    }
}

/// Settings stored in a model folder's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// Always `image-classifier`.
    pub kind: String,
    /// Class names in output order.
    pub classes: Vec<String>,
    /// Backbone kind.
    pub backbone: BackboneKind,
    /// Backbone file inside the folder (a copy of the original, for the structure).
    pub backbone_file: String,
    /// Side of the square model input in pixels.
    pub size: usize,
}

/// A backbone with its head and classes.
pub struct ImageClassifier {
    /// The body.
    pub backbone: Backbone,
    /// The head.
    pub head: Head,
    /// Folder settings.
    pub config: VisionConfig,
}

impl ImageClassifier {
    /// Creates a classifier with a new head on a loaded backbone.
    pub fn new(
        backbone: Backbone,
        classes: Vec<String>,
        size: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self> {
        let head = Head::new(backbone.channels()?, classes.len(), rng, device)?;
        let kind = backbone.kind();
        Ok(Self {
            backbone,
            head,
            config: VisionConfig {
                kind: "image-classifier".into(),
                classes,
                backbone: kind,
                backbone_file: kind.file_name().into(),
                size,
            },
        })
    }

    /// Returns logits `[batch, classes]` for pixel values in 0..=255 `[batch, 3, h, w]`.
    /// `rng` is `Some` in training mode. With `detach_body` the backward pass stops at
    /// the body's output (a frozen body).
    pub fn forward(
        &mut self,
        images: &Tensor,
        rng: Option<&mut Rng>,
        detach_body: bool,
    ) -> Result<Tensor> {
        let mut features = self.backbone.body(images)?;
        if detach_body {
            features = features.detach();
        }
        self.head.forward(&features, rng)
    }

    /// Returns class probabilities `[batch, classes]` in eval mode.
    pub fn predict(&mut self, images: &Tensor) -> Result<Tensor> {
        let logits = self.forward(images, None, true)?;
        Ok(candle_nn::ops::softmax(&logits, 1)?)
    }

    /// Writes `config.json`, a copy of the backbone file and `weights.safetensors` (the
    /// body and head variables and the head's running statistics) into `dir`.
    pub fn save(&self, dir: &Path, backbone_source: &Path) -> Result<()> {
        let io = |path: PathBuf| move |source| VisionError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        let target = dir.join(&self.config.backbone_file);
        if backbone_source != target {
            std::fs::copy(backbone_source, &target).map_err(io(target.clone()))?;
        }
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for group in self.backbone.groups()? {
            for (name, var) in group {
                tensors.insert(format!("body.{name}"), var.as_tensor().clone());
            }
        }
        for (name, var, _) in self.head.vars() {
            tensors.insert(name, var.as_tensor().clone());
        }
        tensors.extend(self.head.buffers());
        let weights = dir.join(WEIGHTS_FILE);
        candle_core::safetensors::save(&tensors, &weights).map_err(|source| {
            VisionError::InvalidWeights {
                path: weights.clone(),
                message: format!("failed to write: {source}"),
            }
        })?;
        crate::model::apply_umask(&weights).map_err(io(weights.clone()))?;
        let config = serde_json::to_string_pretty(&self.config)
            .map_err(|e| VisionError::Unsupported(format!("failed to encode the config: {e}")))?;
        let path = dir.join(CONFIG_FILE);
        std::fs::write(&path, config + "\n").map_err(io(path))?;
        Ok(())
    }

    /// Loads a model folder written by [`Self::save`].
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| VisionError::Io {
            path: path.clone(),
            source,
        })?;
        let config: VisionConfig =
            serde_json::from_str(&text).map_err(|e| VisionError::InvalidWeights {
                path: path.clone(),
                message: format!("not an image classifier config: {e}"),
            })?;
        if config.kind != "image-classifier" {
            return Err(VisionError::InvalidWeights {
                path,
                message: format!(
                    "kind is `{}`, expected `image-classifier`; pass a folder written by `ulmfit vision train`",
                    config.kind
                ),
            });
        }
        let backbone = Backbone::load(&dir.join(&config.backbone_file), device)?;
        let mut model = Self::new(
            backbone,
            config.classes.clone(),
            config.size,
            &mut Rng::seed(0),
            device,
        )?;
        model.config = config;
        let weights_path = dir.join(WEIGHTS_FILE);
        let weights = candle_core::safetensors::load(&weights_path, device).map_err(|source| {
            VisionError::InvalidWeights {
                path: weights_path.clone(),
                message: source.to_string(),
            }
        })?;
        let missing = |name: &str| VisionError::InvalidWeights {
            path: weights_path.clone(),
            message: format!("no tensor `{name}`"),
        };
        let mut vars: Vec<(String, Var)> = model
            .backbone
            .groups()?
            .into_iter()
            .flatten()
            .map(|(name, var)| (format!("body.{name}"), var))
            .collect();
        vars.extend(model.head.vars().into_iter().map(|(n, v, _)| (n, v)));
        for (name, var) in vars {
            let tensor = weights.get(&name).ok_or_else(|| missing(&name))?;
            if tensor.dims() != var.dims() {
                return Err(VisionError::InvalidWeights {
                    path: weights_path.clone(),
                    message: format!(
                        "`{name}` has shape {:?}, the model expects {:?}",
                        tensor.dims(),
                        var.dims()
                    ),
                });
            }
            var.set(tensor)?;
        }
        for (name, _) in model.head.buffers() {
            if !weights.contains_key(&name) {
                return Err(missing(&name));
            }
        }
        model
            .head
            .set_buffers(&weights)
            .map_err(|error| VisionError::InvalidWeights {
                path: weights_path.clone(),
                message: error.to_string(),
            })?;
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_buffers_move_between_heads() {
        let device = Device::Cpu;
        let mut trained = Head::new(2, 3, &mut Rng::seed(1), &device).unwrap();
        trained.bn1.running_mean = Tensor::new(&[0.5f32, -1.0, 2.0, 3.0], &device).unwrap();
        trained.bn2.running_var = (trained.bn2.running_var.clone() * 4.0).unwrap();
        let mut fresh = Head::new(2, 3, &mut Rng::seed(1), &device).unwrap();
        let saved: HashMap<String, Tensor> = trained.buffers().into_iter().collect();
        assert_eq!(saved.len(), 4);
        fresh.set_buffers(&saved).unwrap();
        for (name, tensor) in fresh.buffers() {
            let got = tensor.to_vec1::<f32>().unwrap();
            let want = saved[&name].to_vec1::<f32>().unwrap();
            assert_eq!(got, want, "{name}");
        }

        let wrong = HashMap::from([(
            "head.bn1.running_var".to_string(),
            Tensor::ones(3, DType::F32, &device).unwrap(),
        )]);
        let error = fresh.set_buffers(&wrong).unwrap_err().to_string();
        assert!(error.contains("head.bn1.running_var"), "{error}");
    }

    #[test]
    fn concat_pool_puts_max_first() {
        let device = Device::Cpu;
        let mut head = Head::new(1, 2, &mut Rng::seed(1), &device).unwrap();
        // Identity-like check through the first BatchNorm in eval mode: running mean 0,
        // variance 1, so the pooled features pass through (scaled by 1/sqrt(1 + eps)).
        let features = Tensor::new(&[[[[1f32, 5.0], [3.0, 3.0]]]], &device).unwrap();
        let flat = features.flatten_from(2).unwrap();
        let pooled = Tensor::cat(&[flat.max(2).unwrap(), flat.mean(2).unwrap()], 1).unwrap();
        assert_eq!(pooled.to_vec2::<f32>().unwrap(), vec![vec![5.0, 3.0]]);
        let logits = head.forward(&features, None).unwrap();
        assert_eq!(logits.dims(), &[1, 2]);
    }

    #[test]
    fn batch_norm_training_updates_running_stats() {
        let device = Device::Cpu;
        let mut bn = BatchNorm1d::new(1, &device).unwrap();
        let x = Tensor::new(&[[1f32], [3.0]], &device).unwrap();
        let y = bn.forward(&x, true).unwrap().to_vec2::<f32>().unwrap();
        // Batch mean 2, biased variance 1: outputs -1 and 1 (up to eps).
        assert!((y[0][0] + 1.0).abs() < 1e-4);
        assert!((y[1][0] - 1.0).abs() < 1e-4);
        // Running mean 0.9 * 0 + 0.1 * 2; running variance 0.9 * 1 + 0.1 * 2 (unbiased).
        let mean = bn.running_mean.to_vec1::<f32>().unwrap()[0];
        let var = bn.running_var.to_vec1::<f32>().unwrap()[0];
        assert!((mean - 0.2).abs() < 1e-6);
        assert!((var - 1.1).abs() < 1e-6);
    }
}
