//! The classifier stage: labelled documents, the trainer task, and fastai's gradual
//! unfreezing recipe for text classifiers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::bail;
use candle_core::{DType, Tensor};

use crate::model::classifier::argmax;
use crate::model::{Classifier, DEFAULT_AR_ALPHA, DEFAULT_TAR_BETA};
use crate::rng::Rng;
use crate::text::batches::{sorted_order, sortish_order};
use crate::train::{
    AdamConfig, BatchIter, ConfusionMatrix, LrSpec, Metrics, OneCycle, Param, ParamGroup, Schedule,
    TrainSettings, TrainTask,
};

/// File in a classifier run folder with the run's encoder and data paths and a digest of
/// its documents, which `classify --resume` reads and checks.
pub const RUN_INPUTS_FILE: &str = "classify-inputs.json";

/// fastai's factor between the learning rates of neighbouring layer groups.
pub const LR_GROUP_FACTOR: f64 = 2.6;
/// fastai's peak learning rate of the first classifier stage.
pub const DEFAULT_CLASSIFIER_LR: f64 = 2e-2;
/// fastai's epochs of the last (fully unfrozen) classifier stage.
pub const DEFAULT_FINAL_EPOCHS: usize = 2;

/// Returns the sorted class names of `labels`: numerically when every label is an
/// integer (so "2" precedes "10"), otherwise lexicographically.
pub fn class_names<'a>(labels: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let distinct: BTreeSet<&str> = labels.into_iter().collect();
    let mut classes: Vec<String> = distinct.into_iter().map(str::to_string).collect();
    if classes.iter().all(|label| label.parse::<i64>().is_ok()) {
        classes.sort_by_key(|label| label.parse::<i64>().unwrap_or(0));
    }
    classes
}

/// Checks the class sets of the training and validation labels and returns the classes
/// in output order. Fails naming the class when one occurs only in validation or has
/// fewer than 2 training examples.
pub fn check_classes(train: &[String], valid: &[String]) -> anyhow::Result<Vec<String>> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for label in train {
        *counts.entry(label.as_str()).or_default() += 1;
    }
    for label in valid {
        if !counts.contains_key(label.as_str()) {
            bail!(
                "class `{label}` occurs in the validation set but not in the training set; add training examples of it or remove it from the validation set"
            );
        }
    }
    for (label, count) in &counts {
        if *count < 2 {
            bail!(
                "class `{label}` has {count} training example; a class needs at least 2, so add examples or remove the class"
            );
        }
    }
    let classes = class_names(train.iter().map(String::as_str));
    if classes.len() < 2 {
        bail!(
            "the training set has {} class ({}); a classifier needs at least 2",
            classes.len(),
            classes.join(", ")
        );
    }
    Ok(classes)
}

/// Returns sklearn's `balanced` class weights `n / (k * count_c)` for class ids `labels`.
pub fn balanced_weights(labels: &[u32], n_classes: usize) -> Vec<f32> {
    let mut counts = vec![0usize; n_classes];
    for &label in labels {
        counts[label as usize] += 1;
    }
    let n = labels.len() as f32;
    counts
        .iter()
        .map(|&count| {
            if count == 0 {
                0.0
            } else {
                n / (n_classes as f32 * count as f32)
            }
        })
        .collect()
}

/// Numericalized documents with class ids.
#[derive(Debug, Clone, Default)]
pub struct LabelledDocuments {
    /// Token ids of each document, each non-empty.
    pub ids: Vec<Vec<u32>>,
    /// Class id of each document (single-label training).
    pub labels: Vec<u32>,
    /// Class ids of each document, possibly none (multi-label training; empty otherwise).
    pub label_sets: Vec<Vec<u32>>,
}

/// Default probability at or above which a multi-label prediction includes a class
/// (fastai's `accuracy_multi` threshold).
pub const DEFAULT_MULTI_LABEL_THRESHOLD: f32 = 0.5;

/// Splits a multi-label `label` on `delimiter` into trimmed, non-empty class names.
pub fn split_labels<'a>(label: &'a str, delimiter: &str) -> Vec<&'a str> {
    label
        .split(delimiter)
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect()
}

/// Returns fastai's activation penalties on the last LSTM layer's outputs of each
/// document (`[positions, embedding]`, padding excluded), or `None` when both factors
/// are 0. AR is `ar_alpha` times the mean square of every output value. TAR is
/// `tar_beta` times the mean square of the change between neighbouring positions of a
/// document. Both means run over every value of every document in the batch, where
/// fastai's run over the padded batch.
pub fn activation_penalty(
    outputs: &[Tensor],
    ar_alpha: f64,
    tar_beta: f64,
) -> candle_core::Result<Option<Tensor>> {
    let mut penalty: Option<Tensor> = None;
    let mut add = |term: Tensor| -> candle_core::Result<()> {
        penalty = Some(match penalty.take() {
            Some(sum) => sum.add(&term)?,
            None => term,
        });
        Ok(())
    };
    if ar_alpha != 0.0 {
        let mut sum: Option<Tensor> = None;
        let mut count = 0usize;
        for output in outputs {
            let squares = output.sqr()?.sum_all()?;
            sum = Some(match sum {
                Some(total) => total.add(&squares)?,
                None => squares,
            });
            count += output.elem_count();
        }
        if let Some(sum) = sum.filter(|_| count > 0) {
            add(sum.affine(ar_alpha / count as f64, 0.0)?)?;
        }
    }
    if tar_beta != 0.0 {
        let mut sum: Option<Tensor> = None;
        let mut count = 0usize;
        for output in outputs {
            let positions = output.dims()[0];
            if positions < 2 {
                continue;
            }
            let later = output.narrow(0, 1, positions - 1)?;
            let earlier = output.narrow(0, 0, positions - 1)?;
            let change = later.sub(&earlier)?;
            count += change.elem_count();
            let squares = change.sqr()?.sum_all()?;
            sum = Some(match sum {
                Some(total) => total.add(&squares)?,
                None => squares,
            });
        }
        if let Some(sum) = sum.filter(|_| count > 0) {
            add(sum.affine(tar_beta / count as f64, 0.0)?)?;
        }
    }
    Ok(penalty)
}

/// One stage of the gradual-unfreezing recipe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnfreezeStage {
    /// fastai `freeze_to(n)`; 0 trains every group.
    pub freeze_to: isize,
    /// Epochs of the stage.
    pub epochs: usize,
    /// Peak learning rate(s).
    pub lr: LrSpec,
}

/// Returns fastai 2.x's IMDb classifier recipe scaled to the first stage's rate `lr`
/// (2e-2 in fastai): `freeze_to(-1)` 1 epoch at `lr`; `freeze_to(-2)` 1 epoch at
/// `slice(lr/2/2.6^4, lr/2)`; `freeze_to(-3)` 1 epoch at `slice(lr/4/2.6^4, lr/4)`;
/// `unfreeze()` `final_epochs` epochs at `slice(lr/20/2.6^4, lr/20)`.
pub fn gradual_unfreezing(lr: f64, final_epochs: usize) -> Vec<UnfreezeStage> {
    let spread = LR_GROUP_FACTOR.powi(4);
    let range = |top: f64| LrSpec::Range(top / spread, top);
    vec![
        UnfreezeStage {
            freeze_to: -1,
            epochs: 1,
            lr: LrSpec::Value(lr),
        },
        UnfreezeStage {
            freeze_to: -2,
            epochs: 1,
            lr: range(lr / 2.0),
        },
        UnfreezeStage {
            freeze_to: -3,
            epochs: 1,
            lr: range(lr / 4.0),
        },
        UnfreezeStage {
            freeze_to: 0,
            epochs: final_epochs,
            lr: range(lr / 20.0),
        },
    ]
}

/// Returns the trainer settings of one stage: one-cycle with momentum 0.8 -> 0.7 -> 0.8
/// and Adam with fastai's default decoupled weight decay 0.01, with a checkpoint every
/// `save_every` optimizer steps besides each epoch end.
pub fn stage_settings(
    stage: &UnfreezeStage,
    index: usize,
    seed: u64,
    save_every: Option<usize>,
) -> TrainSettings {
    TrainSettings {
        stage: format!("classify stage {}", index + 1),
        epochs: stage.epochs,
        lr: stage.lr,
        schedule: Schedule::OneCycle(OneCycle {
            moms: (0.8, 0.7, 0.8),
            ..OneCycle::default()
        }),
        adam: AdamConfig::default(),
        clip: None,
        accumulate: 1,
        freeze_to: stage.freeze_to,
        seed: seed.wrapping_add(index as u64),
        save_every,
    }
}

/// Order of the training documents within an epoch.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BatchOrder {
    /// fastai's `SortedDL` order: batches of documents of similar length, in random
    /// order. It pads least, but BatchNorm then normalises each batch over one length range.
    #[default]
    Sortish,
    /// Uniformly random batches, so BatchNorm's batch statistics represent the whole
    /// set. Batches run as long as their longest document.
    Shuffled,
}

/// The classifier with its training and validation documents, for the trainer.
pub struct ClassifierTask {
    model: Classifier,
    train: Arc<LabelledDocuments>,
    valid: LabelledDocuments,
    batch_size: usize,
    class_weights: Option<Vec<f32>>,
    frozen: Vec<bool>,
    batch_order: BatchOrder,
    /// Probability threshold of multi-label training, `None` for single-label.
    multi_label: Option<f32>,
    /// Activation regularisation factor (fastai `alpha`).
    ar_alpha: f64,
    /// Temporal activation regularisation factor (fastai `beta`).
    tar_beta: f64,
}

impl ClassifierTask {
    /// Creates the task. `class_weights` (one per class) weight the cross-entropy as
    /// PyTorch's `weight` argument does.
    pub fn new(
        model: Classifier,
        train: LabelledDocuments,
        valid: LabelledDocuments,
        batch_size: usize,
        class_weights: Option<Vec<f32>>,
    ) -> anyhow::Result<Self> {
        if batch_size == 0 {
            bail!("the batch size must be at least 1");
        }
        if train.ids.is_empty() {
            bail!("the training set has no documents");
        }
        let n_groups = model.layer_groups().len();
        Ok(Self {
            model,
            train: Arc::new(train),
            valid,
            batch_size,
            class_weights,
            frozen: vec![false; n_groups],
            batch_order: BatchOrder::default(),
            multi_label: None,
            ar_alpha: DEFAULT_AR_ALPHA,
            tar_beta: DEFAULT_TAR_BETA,
        })
    }

    /// Switches to multi-label training: sigmoid outputs, binary cross-entropy against
    /// `label_sets`, and validation that predicts every class whose probability reaches
    /// `threshold`. Fails when a document has no label set or a class id is out of range.
    pub fn with_multi_label(mut self, threshold: f32) -> anyhow::Result<Self> {
        let n_classes = self.model.config().n_classes;
        for (name, set) in [("training", &*self.train), ("validation", &self.valid)] {
            if set.label_sets.len() != set.ids.len() {
                bail!(
                    "the {name} set has {} label sets for {} documents",
                    set.label_sets.len(),
                    set.ids.len()
                );
            }
            if let Some(id) = set
                .label_sets
                .iter()
                .flatten()
                .find(|&&id| id as usize >= n_classes)
            {
                bail!("the {name} set has class id {id}, outside the {n_classes} classes");
            }
        }
        if self.class_weights.is_some() {
            bail!("class weights apply to single-label training only");
        }
        self.multi_label = Some(threshold);
        Ok(self)
    }

    /// Sets the AR and TAR factors of the training loss (see [`activation_penalty`]).
    /// The defaults are fastai's `text_classifier_learner` values, 2 and 1.
    pub fn with_activation_regularization(mut self, ar_alpha: f64, tar_beta: f64) -> Self {
        self.ar_alpha = ar_alpha;
        self.tar_beta = tar_beta;
        self
    }

    /// Sets the order of the training documents (default [`BatchOrder::Sortish`]).
    pub fn with_batch_order(mut self, order: BatchOrder) -> Self {
        self.batch_order = order;
        self
    }

    /// Sets the head's BatchNorm running statistics to their values over the whole
    /// training set (see [`Classifier::set_population_statistics`]), calling `on_batch`
    /// with the number of documents of each pooled batch.
    pub fn set_population_statistics(
        &mut self,
        on_batch: &mut dyn FnMut(usize),
    ) -> anyhow::Result<()> {
        let documents: Vec<&[u32]> = self.train.ids.iter().map(Vec::as_slice).collect();
        self.model.set_population_statistics_with_progress(
            &documents,
            self.batch_size,
            on_batch,
        )?;
        Ok(())
    }

    /// Returns the number of training documents.
    pub fn train_documents(&self) -> usize {
        self.train.ids.len()
    }

    /// The model.
    pub fn model(&self) -> &Classifier {
        &self.model
    }

    /// Returns the model, ending the task.
    pub fn into_model(self) -> Classifier {
        self.model
    }

    /// Returns the (weighted) mean cross-entropy of `logits` `[batch, classes]`.
    fn loss(&self, logits: &Tensor, labels: &[u32]) -> anyhow::Result<Tensor> {
        let device = logits.device();
        let targets = Tensor::from_slice(labels, labels.len(), device)?;
        let log_probs = candle_nn::ops::log_softmax(logits, 1)?;
        let picked = log_probs
            .gather(&targets.unsqueeze(1)?, 1)?
            .squeeze(1)?
            .neg()?;
        match &self.class_weights {
            None => Ok(picked.mean_all()?),
            Some(weights) => {
                let per_row: Vec<f32> = labels.iter().map(|&l| weights[l as usize]).collect();
                let total: f32 = per_row.iter().sum();
                let w = Tensor::from_vec(per_row, labels.len(), device)?;
                Ok(picked.mul(&w)?.sum_all()?.affine(1.0 / total as f64, 0.0)?)
            }
        }
    }

    /// Returns the multi-hot targets `[documents, n_classes]` of `label_sets`.
    fn multi_hot(
        &self,
        label_sets: &[&Vec<u32>],
        device: &candle_core::Device,
    ) -> anyhow::Result<Tensor> {
        let n_classes = self.model.config().n_classes;
        let mut values = vec![0f32; label_sets.len() * n_classes];
        for (row, set) in label_sets.iter().enumerate() {
            for &id in set.iter() {
                values[row * n_classes + id as usize] = 1.0;
            }
        }
        Ok(Tensor::from_vec(
            values,
            (label_sets.len(), n_classes),
            device,
        )?)
    }

    /// Returns the mean binary cross-entropy of `logits` `[batch, classes]` against the
    /// multi-hot `targets`, computed stably as `max(x, 0) - x * y + ln(1 + exp(-|x|))`.
    fn binary_loss(logits: &Tensor, targets: &Tensor) -> anyhow::Result<Tensor> {
        let targets = targets.to_dtype(logits.dtype())?;
        let softplus = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
        let loss = logits.relu()?.sub(&logits.mul(&targets)?)?.add(&softplus)?;
        Ok(loss.mean_all()?)
    }

    /// Returns the validation loss, `accuracy_multi` (share of correct class decisions,
    /// as fastai's metric) and `exact_match` (share of documents whose predicted set
    /// equals the true set) of multi-label training.
    fn validate_multi_label(&self, threshold: f32) -> anyhow::Result<Metrics> {
        let lengths: Vec<usize> = self.valid.ids.iter().map(Vec::len).collect();
        let order = sorted_order(&lengths);
        let n_classes = self.model.config().n_classes;
        let (mut loss_sum, mut decisions_right, mut exact) = (0.0f64, 0usize, 0usize);
        for chunk in order.chunks(self.batch_size) {
            let documents: Vec<&[u32]> = chunk
                .iter()
                .map(|&i| self.valid.ids[i].as_slice())
                .collect();
            let sets: Vec<&Vec<u32>> = chunk.iter().map(|&i| &self.valid.label_sets[i]).collect();
            let output = self.model.predict(&documents)?;
            let targets = self.multi_hot(&sets, output.logits.device())?;
            let loss = Self::binary_loss(&output.logits, &targets)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            loss_sum += loss * chunk.len() as f64;
            let probabilities =
                candle_nn::ops::sigmoid(&output.logits.to_dtype(DType::F32)?)?.to_vec2::<f32>()?;
            let targets = targets.to_vec2::<f32>()?;
            for (row, target) in probabilities.iter().zip(&targets) {
                let right = row
                    .iter()
                    .zip(target)
                    .filter(|(p, t)| (**p >= threshold) == (**t > 0.5))
                    .count();
                decisions_right += right;
                if right == n_classes {
                    exact += 1;
                }
            }
        }
        let count = self.valid.ids.len() as f64;
        let mut metrics = Metrics::with_loss(loss_sum / count);
        metrics.values.insert(
            "accuracy_multi".into(),
            decisions_right as f64 / (count * n_classes as f64),
        );
        metrics
            .values
            .insert("exact_match".into(), exact as f64 / count);
        Ok(metrics)
    }

    fn n_batches(&self) -> usize {
        let n = self.train.ids.len();
        // fastai drops the last incomplete training batch; a lone batch is kept.
        (n / self.batch_size).max(1)
    }
}

impl TrainTask for ClassifierTask {
    type Batch = Vec<usize>;

    /// fastai's classifier groups: embedding, one per LSTM layer, then the head.
    /// Biases and BatchNorm parameters get no weight decay.
    fn groups(&self) -> Vec<ParamGroup> {
        let groups = self.model.layer_groups();
        let last = groups.len() - 1;
        groups
            .into_iter()
            .enumerate()
            .map(|(index, vars)| {
                let params = vars
                    .into_iter()
                    .map(|(name, var)| {
                        if name.contains("bias") || name.contains(".bn.") {
                            Param::no_decay(name, var)
                        } else {
                            Param::new(name, var)
                        }
                    })
                    .collect();
                let name = match index {
                    0 => "embedding".to_string(),
                    i if i == last => "head".to_string(),
                    i => format!("lstm {}", i - 1),
                };
                ParamGroup::new(name, params)
            })
            .collect()
    }

    fn batches_per_epoch(&self) -> usize {
        self.n_batches()
    }

    /// Yields batches of document indices in fastai's sortish order.
    fn train_batches(
        &mut self,
        _epoch: usize,
        mut rng: Rng,
        skip: usize,
    ) -> anyhow::Result<BatchIter<Vec<usize>>> {
        let lengths: Vec<usize> = self.train.ids.iter().map(Vec::len).collect();
        let order = match self.batch_order {
            BatchOrder::Sortish => sortish_order(&lengths, self.batch_size, rng.next_u64())?,
            BatchOrder::Shuffled => {
                let mut order: Vec<usize> = (0..lengths.len()).collect();
                rng.shuffle(&mut order);
                order
            }
        };
        let n_batches = self.n_batches();
        let batches: Vec<Vec<usize>> = order
            .chunks(self.batch_size)
            .take(n_batches)
            .map(<[usize]>::to_vec)
            .skip(skip)
            .collect();
        Ok(Box::new(batches.into_iter().map(Ok)))
    }

    fn batch_items(&self, batch: &Vec<usize>) -> usize {
        batch.len()
    }

    fn train_step(&mut self, batch: Vec<usize>, rng: &mut Rng) -> anyhow::Result<Tensor> {
        let train = Arc::clone(&self.train);
        let documents: Vec<&[u32]> = batch.iter().map(|&i| train.ids[i].as_slice()).collect();
        let frozen = self.frozen.clone();
        let output = self.model.forward_train(&documents, &frozen, rng)?;
        let loss = if self.multi_label.is_some() {
            let sets: Vec<&Vec<u32>> = batch.iter().map(|&i| &train.label_sets[i]).collect();
            let targets = self.multi_hot(&sets, output.logits.device())?;
            Self::binary_loss(&output.logits, &targets)?
        } else {
            let labels: Vec<u32> = batch.iter().map(|&i| train.labels[i]).collect();
            self.loss(&output.logits, &labels)?
        };
        match activation_penalty(&output.outputs, self.ar_alpha, self.tar_beta)? {
            Some(penalty) => Ok(loss.add(&penalty.to_dtype(loss.dtype())?)?),
            None => Ok(loss),
        }
    }

    /// Returns the validation loss, `accuracy`, `macro_f1` and per-class precision,
    /// recall and F1 (named by class index). Without validation documents the loss is NaN.
    fn validate(&mut self) -> anyhow::Result<Metrics> {
        if self.valid.ids.is_empty() {
            return Ok(Metrics::with_loss(f64::NAN));
        }
        if let Some(threshold) = self.multi_label {
            return self.validate_multi_label(threshold);
        }
        let n_classes = self.model.config().n_classes;
        let lengths: Vec<usize> = self.valid.ids.iter().map(Vec::len).collect();
        let order = sorted_order(&lengths);
        let mut confusion = ConfusionMatrix::new(n_classes);
        let (mut loss_sum, mut count) = (0.0f64, 0usize);
        for chunk in order.chunks(self.batch_size) {
            let documents: Vec<&[u32]> = chunk
                .iter()
                .map(|&i| self.valid.ids[i].as_slice())
                .collect();
            let labels: Vec<u32> = chunk.iter().map(|&i| self.valid.labels[i]).collect();
            let output = self.model.predict(&documents)?;
            let loss = self
                .loss(&output.logits, &labels)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            loss_sum += loss * labels.len() as f64;
            count += labels.len();
            let logits = output.logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let predicted: Vec<u32> = logits.iter().map(|row| argmax(row) as u32).collect();
            confusion.add_all(&labels, &predicted);
        }
        let mut metrics = Metrics::with_loss(loss_sum / count.max(1) as f64);
        confusion.add_to(&mut metrics);
        Ok(metrics)
    }

    fn set_frozen(&mut self, frozen: &[bool]) {
        self.frozen = frozen.to_vec();
    }

    /// Returns the head's BatchNorm running statistics, which training updates outside
    /// the optimizer and validation reads.
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.model.running_statistics()
    }

    fn restore_buffers(&mut self, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        Ok(self.model.set_running_statistics(tensors)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_classes_sort_numerically() {
        let classes = class_names(["10", "2", "1", "2"]);
        assert_eq!(classes, ["1", "2", "10"]);
    }

    /// A resumed run compares each stage's saved settings with recomputed ones, so the
    /// learning rates must read back from JSON bit for bit.
    #[test]
    fn stage_rates_survive_json() {
        for stage in gradual_unfreezing(0.02, 1) {
            let text = serde_json::to_string(&stage.lr).unwrap();
            let back: LrSpec = serde_json::from_str(&text).unwrap();
            assert_eq!(back, stage.lr, "{text}");
        }
    }

    #[test]
    fn balanced_weights_by_hand() {
        // 3 of class 0, 1 of class 1: 4 / (2 * 3) and 4 / (2 * 1).
        let weights = balanced_weights(&[0, 0, 0, 1], 2);
        assert!((weights[0] - 2.0 / 3.0).abs() < 1e-6);
        assert!((weights[1] - 2.0).abs() < 1e-6);
    }

    /// Returns the length spread (longest minus shortest) of every batch of `order`.
    fn batch_spreads(order: BatchOrder) -> Vec<usize> {
        let mut config = crate::model::ClassifierConfig::new(40, 2);
        config.encoder.embedding_size = 4;
        config.encoder.hidden_size = 6;
        let device = candle_core::Device::Cpu;
        let model = Classifier::new(config, &mut Rng::seed(1), &device).unwrap();
        // Document i has i + 1 tokens.
        let train = LabelledDocuments {
            ids: (1..=32).map(|len| vec![5; len]).collect(),
            labels: (0..32).map(|i| i % 2).collect(),
            label_sets: Vec::new(),
        };
        let mut task = ClassifierTask::new(model, train, LabelledDocuments::default(), 4, None)
            .unwrap()
            .with_batch_order(order);
        let batches: Vec<Vec<usize>> = task
            .train_batches(0, Rng::seed(3), 0)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut seen: Vec<usize> = batches.concat();
        seen.sort();
        assert_eq!(
            seen,
            (0..32).collect::<Vec<_>>(),
            "{order:?} covers every document"
        );
        batches
            .iter()
            .map(|batch| batch.iter().max().unwrap() - batch.iter().min().unwrap())
            .collect()
    }

    #[test]
    fn sortish_batches_group_lengths() {
        // 32 documents fit in one sorting window, so each batch contains 4 neighbours.
        assert!(batch_spreads(BatchOrder::Sortish).iter().all(|&s| s == 3));
    }

    #[test]
    fn shuffled_batches_mix_lengths() {
        let widest = batch_spreads(BatchOrder::Shuffled)
            .into_iter()
            .max()
            .unwrap();
        assert!(widest > 3, "the widest batch spans {widest} lengths");
    }

    #[test]
    fn split_labels_trims_and_skips_empty() {
        assert_eq!(split_labels("a| b||c |", "|"), ["a", "b", "c"]);
    }

    #[test]
    fn binary_loss_by_hand() {
        // Target 1 at logit 0: ln 2. Target 0 at logit 2: 2 + ln(1 + e^-2). Mean of both.
        let device = candle_core::Device::Cpu;
        let logits = Tensor::new(&[[0f32, 2.0]], &device).unwrap();
        let targets = Tensor::new(&[[1f32, 0.0]], &device).unwrap();
        let loss = ClassifierTask::binary_loss(&logits, &targets)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let want = (2f32.ln() + 2.0 + (1.0 + (-2f32).exp()).ln()) / 2.0;
        assert!((loss - want).abs() < 1e-6, "loss {loss}, expected {want}");
    }

    #[test]
    fn recipe_matches_fastai_imdb() {
        let stages = gradual_unfreezing(2e-2, 2);
        assert_eq!(stages[1].lr, LrSpec::Range(1e-2 / 2.6f64.powi(4), 1e-2));
        assert_eq!(stages[2].lr, LrSpec::Range(5e-3 / 2.6f64.powi(4), 5e-3));
        assert_eq!(stages[3].lr, LrSpec::Range(1e-3 / 2.6f64.powi(4), 1e-3));
        assert_eq!(stages[3].freeze_to, 0);
    }
}
