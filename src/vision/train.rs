//! Training an image classifier on the shared trainer with fastai's `fine_tune` recipe,
//! and the evaluation report.
//!
//! `fine_tune(epochs, base_lr)` in fastai 2.8: `freeze()` and `fit_one_cycle(
//! freeze_epochs, slice(base_lr), pct_start=0.99)`, then `unfreeze()` and
//! `fit_one_cycle(epochs, slice(base_lr / 2 / 100, base_lr / 2), pct_start=0.3, div=5)`.
//! The body is never run with precomputed features: every training image is augmented
//! afresh at each epoch and passes through the body, frozen or not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::bail;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;

use super::augment::{render, Augment, Crop, Lighting};
use super::folder::{decode_for_cache, ImageItem};
use super::model::ImageClassifier;
use super::Result as VisionResult;
use crate::model::classifier::argmax;
use crate::rng::Rng;
use crate::train::{
    AdamConfig, BatchIter, ConfusionMatrix, LrSpec, Metrics, OneCycle, Param, ParamGroup, Schedule,
    TrainSettings, TrainTask,
};

/// fastai's `fine_tune` base learning rate.
pub const DEFAULT_LR: f64 = 2e-3;
/// fastai's default batch size.
pub const DEFAULT_BATCH_SIZE: usize = 64;
/// Default input side in pixels.
pub const DEFAULT_SIZE: usize = 224;
/// fastai's `lr_mult`: the unfrozen body's first group trains this much slower.
pub const LR_MULT: f64 = 100.0;

/// Returns the trainer settings of fastai's `fine_tune`: a frozen stage of
/// `frozen_epochs` (skipped when 0) and an unfrozen stage of `epochs` (skipped when 0).
pub fn fine_tune_stages(
    lr: f64,
    frozen_epochs: usize,
    epochs: usize,
    seed: u64,
) -> Vec<TrainSettings> {
    let mut stages = Vec::new();
    if frozen_epochs > 0 {
        stages.push(TrainSettings {
            stage: "frozen".into(),
            epochs: frozen_epochs,
            lr: LrSpec::Top(lr),
            schedule: Schedule::OneCycle(OneCycle {
                pct_start: 0.99,
                ..OneCycle::default()
            }),
            adam: AdamConfig::default(),
            clip: None,
            accumulate: 1,
            freeze_to: -1,
            seed,
            save_every: None,
        });
    }
    if epochs > 0 {
        let top = lr / 2.0;
        stages.push(TrainSettings {
            stage: "unfrozen".into(),
            epochs,
            lr: LrSpec::Range(top / LR_MULT, top),
            schedule: Schedule::OneCycle(OneCycle {
                pct_start: 0.3,
                div: 5.0,
                ..OneCycle::default()
            }),
            adam: AdamConfig::default(),
            clip: None,
            accumulate: 1,
            freeze_to: 0,
            seed: seed.wrapping_add(1),
            save_every: None,
        });
    }
    stages
}

/// Loads one image and renders it: a random augmented crop when `augment` is given
/// (drawing from `rng`), else the resized centre crop. Returns `[3, size, size]`
/// values in 0..=255.
pub fn render_item(
    item: &ImageItem,
    size: usize,
    augment: Option<(&Augment, &mut Rng)>,
) -> VisionResult<Vec<f32>> {
    let decoded;
    let image = match &item.cached {
        Some(image) => image.as_ref(),
        None => {
            decoded = decode_for_cache(&item.path, None)?;
            &decoded
        }
    };
    let (crop, lighting) = match augment {
        Some((augment, rng)) => (
            Crop::random(image.width(), image.height(), augment, rng),
            Lighting::random(augment, rng),
        ),
        None => (Crop::center(image.width(), image.height()), Lighting::NONE),
    };
    Ok(render(image, &crop, &lighting, size))
}

/// Renders `items` in parallel into `[batch, 3, size, size]`. With `augment`, image
/// `i` draws from a generator seeded with `seed` and `i`.
pub fn batch_tensor(
    items: &[&ImageItem],
    size: usize,
    augment: Option<(&Augment, u64)>,
    device: &Device,
) -> VisionResult<Tensor> {
    let rendered: Vec<Vec<f32>> = items
        .par_iter()
        .enumerate()
        .map(|(i, item)| match augment {
            Some((augment, seed)) => {
                let mut rng = Rng::seed(seed ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
                render_item(item, size, Some((augment, &mut rng)))
            }
            None => render_item(item, size, None),
        })
        .collect::<VisionResult<_>>()?;
    let values: Vec<f32> = rendered.concat();
    Ok(Tensor::from_vec(
        values,
        (items.len(), 3, size, size),
        device,
    )?)
}

/// The image classifier with its data, for the trainer.
pub struct ImageTask {
    model: ImageClassifier,
    train: Arc<Vec<ImageItem>>,
    valid: Vec<ImageItem>,
    /// Rendered validation batches, filled at the first validation.
    valid_batches: Vec<(Tensor, Vec<u32>)>,
    batch_size: usize,
    size: usize,
    augment: Augment,
    frozen: Vec<bool>,
    device: Device,
}

impl ImageTask {
    /// Creates the task. Fails when the batch size is below 2 (BatchNorm needs two
    /// images) or the training set has fewer than 2 images.
    pub fn new(
        model: ImageClassifier,
        train: Vec<ImageItem>,
        valid: Vec<ImageItem>,
        batch_size: usize,
        device: Device,
    ) -> anyhow::Result<Self> {
        if batch_size < 2 {
            bail!("the batch size must be at least 2, because the head's BatchNorm needs 2 images per batch");
        }
        if train.len() < 2 {
            bail!(
                "the training set has {} image; at least 2 are needed",
                train.len()
            );
        }
        let size = model.config.size;
        let groups = model.backbone.groups()?.len() + 1;
        Ok(Self {
            model,
            train: Arc::new(train),
            valid,
            valid_batches: Vec::new(),
            batch_size,
            size,
            augment: Augment::default(),
            frozen: vec![false; groups],
            device,
        })
    }

    /// Sets the augmentation settings.
    pub fn with_augment(mut self, augment: Augment) -> Self {
        self.augment = augment;
        self
    }

    /// The model.
    pub fn model(&self) -> &ImageClassifier {
        &self.model
    }

    /// Returns the model, ending the task.
    pub fn into_model(self) -> ImageClassifier {
        self.model
    }

    /// Full batches per epoch; the last partial batch is dropped as fastai does, unless
    /// it is the only one.
    fn n_batches(&self) -> usize {
        let size = self.batch_size.min(self.train.len());
        (self.train.len() / size).max(1)
    }

    fn body_frozen(&self) -> bool {
        let body = self.frozen.len().saturating_sub(1);
        self.frozen[..body].iter().all(|&f| f)
    }
}

/// Mean cross-entropy of `logits` `[batch, classes]` against `labels`.
fn cross_entropy(logits: &Tensor, labels: &[u32]) -> anyhow::Result<Tensor> {
    let targets = Tensor::from_slice(labels, labels.len(), logits.device())?;
    let log_probs = candle_nn::ops::log_softmax(logits, 1)?;
    Ok(log_probs
        .gather(&targets.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()?
        .mean_all()?)
}

impl TrainTask for ImageTask {
    type Batch = (Tensor, Vec<u32>);

    /// fastai's groups: the body groups, then the head. Biases and BatchNorm
    /// parameters get no weight decay.
    fn groups(&self) -> Vec<ParamGroup> {
        let mut groups: Vec<ParamGroup> = self
            .model
            .backbone
            .groups()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(index, vars)| {
                let params = vars
                    .into_iter()
                    .map(|(name, var)| {
                        let name = format!("body.{name}");
                        if name.ends_with("bias")
                            || name.contains("bn")
                            || name.contains("downsample.1")
                        {
                            Param::no_decay(name, var)
                        } else {
                            Param::new(name, var)
                        }
                    })
                    .collect();
                ParamGroup::new(format!("body {index}"), params)
            })
            .collect();
        let head = self
            .model
            .head
            .vars()
            .into_iter()
            .map(|(name, var, decay)| {
                if decay {
                    Param::new(name, var)
                } else {
                    Param::no_decay(name, var)
                }
            })
            .collect();
        groups.push(ParamGroup::new("head", head));
        groups
    }

    fn batches_per_epoch(&self) -> usize {
        self.n_batches()
    }

    /// Yields shuffled, augmented batches rendered in parallel on the data thread.
    fn train_batches(
        &mut self,
        _epoch: usize,
        mut rng: Rng,
        skip: usize,
    ) -> anyhow::Result<BatchIter<(Tensor, Vec<u32>)>> {
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        rng.shuffle(&mut order);
        let batch = self.batch_size.min(order.len());
        let batches: Vec<(Vec<usize>, u64)> = order
            .chunks(batch)
            .take(self.n_batches())
            .map(|chunk| (chunk.to_vec(), rng.next_u64()))
            .skip(skip)
            .collect();
        let train = Arc::clone(&self.train);
        let (size, augment, device) = (self.size, self.augment, self.device.clone());
        Ok(Box::new(batches.into_iter().map(move |(indices, seed)| {
            let items: Vec<&ImageItem> = indices.iter().map(|&i| &train[i]).collect();
            let images = batch_tensor(&items, size, Some((&augment, seed)), &device)?;
            let labels = items.iter().map(|item| item.label).collect();
            Ok((images, labels))
        })))
    }

    fn batch_items(&self, batch: &(Tensor, Vec<u32>)) -> usize {
        batch.1.len()
    }

    fn train_step(&mut self, batch: (Tensor, Vec<u32>), rng: &mut Rng) -> anyhow::Result<Tensor> {
        let (images, labels) = batch;
        let detach = self.body_frozen();
        let logits = self.model.forward(&images, Some(rng), detach)?;
        cross_entropy(&logits, &labels)
    }

    /// Returns the validation loss, `accuracy`, `macro_f1` and per-class precision,
    /// recall and F1 (named by class index). Without validation images the loss is NaN.
    fn validate(&mut self) -> anyhow::Result<Metrics> {
        if self.valid.is_empty() {
            return Ok(Metrics::with_loss(f64::NAN));
        }
        if self.valid_batches.is_empty() {
            for chunk in self.valid.chunks(self.batch_size) {
                let items: Vec<&ImageItem> = chunk.iter().collect();
                let images = batch_tensor(&items, self.size, None, &self.device)?;
                self.valid_batches
                    .push((images, chunk.iter().map(|item| item.label).collect()));
            }
        }
        let n_classes = self.model.config.classes.len();
        let mut confusion = ConfusionMatrix::new(n_classes);
        let (mut loss_sum, mut count) = (0.0f64, 0usize);
        for (images, labels) in &self.valid_batches {
            let logits = self.model.forward(images, None, true)?;
            let loss = cross_entropy(&logits, labels)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            loss_sum += loss * labels.len() as f64;
            count += labels.len();
            let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let predicted: Vec<u32> = rows.iter().map(|row| argmax(row) as u32).collect();
            confusion.add_all(labels, &predicted);
        }
        let mut metrics = Metrics::with_loss(loss_sum / count.max(1) as f64);
        confusion.add_to(&mut metrics);
        Ok(metrics)
    }

    fn set_frozen(&mut self, frozen: &[bool]) {
        self.frozen = frozen.to_vec();
    }

    /// Returns the head's BatchNorm running statistics. The body runs in eval mode, so
    /// its statistics never change.
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.model.head.buffers()
    }

    fn restore_buffers(&mut self, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        Ok(self.model.head.set_buffers(tensors)?)
    }
}

/// Scores of one class in an [`EvaluationReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScores {
    /// Share of the predictions of this class that are right.
    pub precision: f64,
    /// Share of the images of this class predicted as it.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Images of this class.
    pub support: u64,
}

/// Accuracy, per-class scores and the confusion matrix of a labelled image set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvaluationReport {
    /// Share of images predicted right.
    pub accuracy: f64,
    /// Class names; the order of `confusion_matrix` rows and columns.
    pub classes: Vec<String>,
    /// Scores by class name.
    pub per_class: std::collections::BTreeMap<String, ClassScores>,
    /// Counts with true classes as rows and predicted classes as columns.
    pub confusion_matrix: Vec<Vec<u64>>,
}

impl EvaluationReport {
    /// Builds the report from a confusion matrix over `classes`.
    pub fn from_confusion(classes: &[String], confusion: &ConfusionMatrix) -> Self {
        let rows = confusion.rows();
        let per_class = classes
            .iter()
            .enumerate()
            .map(|(c, name)| {
                (
                    name.clone(),
                    ClassScores {
                        precision: confusion.precision(c),
                        recall: confusion.recall(c),
                        f1: confusion.f1(c),
                        support: rows[c].iter().sum(),
                    },
                )
            })
            .collect();
        Self {
            accuracy: confusion.accuracy(),
            classes: classes.to_vec(),
            per_class,
            confusion_matrix: rows,
        }
    }

    /// Formats the report as a table for people.
    pub fn to_text(&self) -> String {
        let width = self
            .classes
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(5)
            .max(5);
        let mut text = format!("accuracy {:.4}\n\n", self.accuracy);
        text += &format!("{:width$}  precision  recall      f1  support\n", "class");
        for class in &self.classes {
            let s = &self.per_class[class];
            text += &format!(
                "{class:width$}  {:9.4}  {:6.4}  {:6.4}  {:7}\n",
                s.precision, s.recall, s.f1, s.support
            );
        }
        text += "\nconfusion matrix (rows: true class, columns: predicted class)\n";
        text += &format!("{:width$}", "");
        for class in &self.classes {
            text += &format!("  {class:>width$}");
        }
        text.push('\n');
        for (class, row) in self.classes.iter().zip(&self.confusion_matrix) {
            text += &format!("{class:width$}");
            for count in row {
                text += &format!("  {count:>width$}");
            }
            text.push('\n');
        }
        text
    }
}

/// Predicts every item and returns the report against their labels.
pub fn evaluate(
    model: &mut ImageClassifier,
    items: &[ImageItem],
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<EvaluationReport> {
    let classes = model.config.classes.clone();
    let mut confusion = ConfusionMatrix::new(classes.len());
    for chunk in items.chunks(batch_size.max(1)) {
        let refs: Vec<&ImageItem> = chunk.iter().collect();
        let images = batch_tensor(&refs, model.config.size, None, device)?;
        let probabilities = model.predict(&images)?.to_vec2::<f32>()?;
        for (item, row) in chunk.iter().zip(&probabilities) {
            confusion.add(item.label as usize, argmax(row));
        }
    }
    Ok(EvaluationReport::from_confusion(&classes, &confusion))
}

/// Folder for the trainer's checkpoints inside a model folder.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// Runs `stages` (from [`fine_tune_stages`]) on `task` one after another, keeping the
/// optimizer state between them as fastai does. Checkpoints go to `checkpoint` when
/// given. Returns every epoch's record.
pub fn run_stages(
    task: &mut ImageTask,
    stages: Vec<TrainSettings>,
    options: crate::train::RunOptions,
) -> crate::train::Result<Vec<crate::train::EpochRecord>> {
    let mut records = Vec::new();
    let mut trainer: Option<crate::train::Trainer> = None;
    for settings in stages {
        let mut next = match trainer.take() {
            None => crate::train::Trainer::new(task, settings, options.clone())?,
            Some(previous) => previous.next_stage(task, settings, options.clone())?,
        };
        records.extend(next.fit(task)?);
        trainer = Some(next);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_tune_matches_fastai() {
        let stages = fine_tune_stages(2e-3, 1, 3, 7);
        assert_eq!(stages.len(), 2);
        assert_eq!(stages[0].lr, LrSpec::Top(2e-3));
        assert_eq!(stages[0].freeze_to, -1);
        let Schedule::OneCycle(first) = stages[0].schedule else {
            panic!("the frozen stage is not one-cycle");
        };
        assert_eq!(first.pct_start, 0.99);
        assert_eq!(first.div, 25.0);
        assert_eq!(stages[1].lr, LrSpec::Range(1e-5, 1e-3));
        assert_eq!(stages[1].epochs, 3);
        assert_eq!(stages[1].freeze_to, 0);
        let Schedule::OneCycle(second) = stages[1].schedule else {
            panic!("the unfrozen stage is not one-cycle");
        };
        assert_eq!(second.pct_start, 0.3);
        assert_eq!(second.div, 5.0);
    }

    #[test]
    fn zero_frozen_epochs_skip_the_stage() {
        let stages = fine_tune_stages(1e-3, 0, 2, 0);
        assert_eq!(stages.len(), 1);
        assert_eq!(stages[0].freeze_to, 0);
    }

    #[test]
    fn report_counts_support_per_true_class() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let mut confusion = ConfusionMatrix::new(2);
        confusion.add_all(&[0, 0, 1], &[0, 1, 1]);
        let report = EvaluationReport::from_confusion(&classes, &confusion);
        assert_eq!(report.per_class["a"].support, 2);
        assert_eq!(report.per_class["b"].support, 1);
        assert_eq!(report.confusion_matrix, vec![vec![1, 1], vec![0, 1]]);
        assert!((report.accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert!((report.per_class["b"].precision - 0.5).abs() < 1e-12);
    }
}
