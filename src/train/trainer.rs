//! The training loop over a [`TrainTask`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, TrainState};
use super::groups::{frozen_count, frozen_mask, spread_lrs, LrSpec, ParamGroup};
use super::lr_find::{LrFindResult, LrFinder, SmoothLoss};
use super::metrics::Metrics;
use super::optimizer::{self, AdamConfig, AdamW, Grads};
use super::progress::{append_json_line, log_ends_with, EpochBar, EpochRecord};
use super::schedule::Schedule;
use super::{Result, TrainError};
use crate::rng::Rng;

/// Batches handed from the data thread to the training loop.
pub type BatchIter<B> = Box<dyn Iterator<Item = anyhow::Result<B>> + Send>;

/// A model stage the trainer can train: it owns the model and the data.
pub trait TrainTask {
    /// One training batch, prepared on the data thread.
    type Batch: Send + 'static;

    /// Parameter groups from input to output; names must be unique.
    fn groups(&self) -> Vec<ParamGroup>;

    /// Number of batches [`TrainTask::train_batches`] yields per epoch.
    fn batches_per_epoch(&self) -> usize;

    /// Returns the batches of `epoch`, starting at batch `skip` (non-zero when resuming
    /// mid-epoch). Shuffling must draw only from `rng`, which the trainer derives from
    /// the seed and the epoch, so the same epoch always yields the same order.
    fn train_batches(
        &mut self,
        epoch: usize,
        rng: Rng,
        skip: usize,
    ) -> anyhow::Result<BatchIter<Self::Batch>>;

    /// Number of items (tokens, documents, images) in `batch`, for the throughput.
    fn batch_items(&self, batch: &Self::Batch) -> usize {
        let _ = batch;
        1
    }

    /// Runs the forward pass in training mode and returns the scalar loss. Dropout and
    /// other random draws must use `rng`.
    fn train_step(&mut self, batch: Self::Batch, rng: &mut Rng) -> anyhow::Result<Tensor>;

    /// Evaluates on the validation set.
    fn validate(&mut self) -> anyhow::Result<Metrics>;

    /// Clears state carried between batches (such as an RNN's hidden state); called at
    /// the start of each epoch.
    fn reset_state(&mut self) {}

    /// Returns the state carried between batches as named tensors, which checkpoints
    /// store so that a run resumed mid-epoch continues exactly.
    fn carried_state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Restores state returned by [`Self::carried_state`]; called instead of
    /// [`Self::reset_state`] when a run resumes mid-epoch.
    fn restore_carried_state(&mut self, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        let _ = tensors;
        Ok(())
    }

    /// Returns model tensors that training changes outside the optimizer (such as
    /// BatchNorm running statistics) under names distinct from the parameters'.
    /// Checkpoints store them next to the weights, and a resumed run restores them.
    fn buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Restores tensors returned by [`Self::buffers`] when a run resumes. `tensors`
    /// contains those found in the checkpoint, each with its saved shape.
    fn restore_buffers(&mut self, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        let _ = tensors;
        Ok(())
    }

    /// Receives, for each group, whether it is frozen. A task may read frozen weights
    /// through detached tensors so the backward pass skips them; the trainer already
    /// ignores their gradients.
    fn set_frozen(&mut self, frozen: &[bool]) {
        let _ = frozen;
    }
}

/// Restores the task's buffers from the weights of the checkpoint in `dir`. A checkpoint
/// written before its task had buffers lacks them, so those keep their current values
/// with a warning.
fn restore_buffers<T: TrainTask>(
    task: &mut T,
    weights: &HashMap<String, Tensor>,
    dir: &Path,
) -> Result<()> {
    let buffers = task.buffers();
    if buffers.is_empty() {
        return Ok(());
    }
    let mut restored = HashMap::new();
    let mut missing = Vec::new();
    for (name, current) in buffers {
        let Some(saved) = weights.get(&name) else {
            missing.push(name);
            continue;
        };
        if saved.dims() != current.dims() {
            return Err(TrainError::Checkpoint {
                path: dir.join(checkpoint::WEIGHTS_FILE),
                reason: format!(
                    "buffer `{name}` has shape {:?} but the model expects {:?}",
                    saved.dims(),
                    current.dims()
                ),
            });
        }
        restored.insert(name, saved.to_dtype(current.dtype())?);
    }
    if !missing.is_empty() {
        tracing::warn!(
            "{} has no {}, so the resumed run starts them from their initial values and \
             its validation figures can differ from those of an uninterrupted run",
            dir.join(checkpoint::WEIGHTS_FILE).display(),
            missing.join(", ")
        );
    }
    task.restore_buffers(&restored).map_err(TrainError::Task)
}

/// Prefix of carried task state in a checkpoint's optimizer file.
const CARRIED_PREFIX: &str = "carried.";

/// Settings of one training stage; all are stored in checkpoints and checked on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Stage name used in progress lines and logs.
    pub stage: String,
    /// Number of epochs.
    pub epochs: usize,
    /// Peak learning rate(s).
    pub lr: LrSpec,
    /// Learning-rate and momentum schedule.
    pub schedule: Schedule,
    /// Adam hyper-parameters.
    pub adam: AdamConfig,
    /// Maximum global gradient norm, or `None` for no clipping.
    pub clip: Option<f64>,
    /// Batches whose gradients are averaged into one optimizer step (at least 1).
    pub accumulate: usize,
    /// fastai `freeze_to(n)`: 0 trains all groups, -1 only the last one.
    pub freeze_to: isize,
    /// Seed of the data order and of the generator passed to training steps.
    pub seed: u64,
    /// Write a checkpoint every this many optimizer steps (besides each epoch end).
    pub save_every: Option<usize>,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            stage: "train".into(),
            epochs: 1,
            lr: LrSpec::Value(1e-3),
            schedule: Schedule::OneCycle(Default::default()),
            adam: AdamConfig::default(),
            clip: None,
            accumulate: 1,
            freeze_to: 0,
            seed: 0,
            save_every: None,
        }
    }
}

impl TrainSettings {
    /// Checks `given` (setting name to value, the options given again when resuming)
    /// against these settings and names the first one that differs or is unknown.
    pub fn check_given(&self, given: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
        let saved = serde_json::to_value(self)
            .map_err(|e| TrainError::Invalid(format!("failed to encode settings: {e}")))?;
        for (key, value) in given {
            match saved.get(key) {
                None => {
                    return Err(TrainError::Invalid(format!(
                        "unknown training setting `{key}`"
                    )))
                }
                Some(saved_value) if saved_value != value => {
                    return Err(TrainError::ResumeMismatch {
                        setting: key.clone(),
                        saved: saved_value.to_string(),
                        given: value.to_string(),
                    })
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        if self.accumulate == 0 {
            return Err(TrainError::Invalid(
                "accumulate must be at least 1 batch per optimizer step".into(),
            ));
        }
        if self.save_every == Some(0) {
            return Err(TrainError::Invalid(
                "save_every must be at least 1 step; leave it unset to save only at epoch ends"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// File in a run folder that stores the absolute path of the run's per-epoch JSON log, so
/// that a resumed run keeps appending to it.
pub const LOG_PATH_FILE: &str = "log-json-path.txt";

/// Options of one run that do not affect the result and are not checked on resume.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Checkpoint folder, or `None` for no checkpoints.
    pub checkpoint_dir: Option<PathBuf>,
    /// Model configuration stored as `config.json` in checkpoints.
    pub config: serde_json::Value,
    /// Append one JSON object per epoch to this file.
    pub json_log: Option<PathBuf>,
    /// Show progress bars and per-epoch summaries on stderr.
    pub progress: bool,
    /// Batches prepared ahead by the data thread.
    pub prefetch: usize,
    /// Return after this many optimizer steps in this call (for time-boxed runs),
    /// writing a checkpoint when stopping mid-epoch.
    pub max_steps: Option<usize>,
    /// Unit of [`TrainTask::batch_items`] shown in progress, such as `tokens`.
    pub item_unit: &'static str,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            checkpoint_dir: None,
            config: serde_json::Value::Null,
            json_log: None,
            progress: false,
            prefetch: 2,
            max_steps: None,
            item_unit: "items",
        }
    }
}

/// Derives the data-order generator of `epoch` from the run seed.
fn epoch_rng(seed: u64, epoch: usize) -> Rng {
    Rng::seed(seed ^ (epoch as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Returns the scalar value of `loss` as `f64`.
fn scalar(loss: &Tensor) -> Result<f64> {
    let loss = loss.to_dtype(DType::F64)?;
    let value = if loss.rank() == 0 {
        loss.to_scalar::<f64>()?
    } else {
        loss.flatten_all()?.mean(0)?.to_scalar::<f64>()?
    };
    Ok(value)
}

/// Spawns the data thread; batches arrive through a channel bounded to `prefetch`.
fn spawn_loader<B: Send + 'static>(
    iter: BatchIter<B>,
    prefetch: usize,
) -> (
    mpsc::Receiver<anyhow::Result<B>>,
    std::thread::JoinHandle<()>,
) {
    let (sender, receiver) = mpsc::sync_channel(prefetch.max(1));
    let handle = std::thread::spawn(move || {
        for item in iter {
            // A closed channel means the loop stopped early, so stop preparing batches.
            if sender.send(item).is_err() {
                break;
            }
        }
    });
    (receiver, handle)
}

/// Trains a task's parameters with AdamW under a schedule, with checkpoints.
pub struct Trainer {
    settings: TrainSettings,
    options: RunOptions,
    optimizer: AdamW,
    lr_max: Vec<f64>,
    state: TrainState,
    rng: Rng,
    pending: Grads,
    pending_count: usize,
    records: Vec<EpochRecord>,
    /// Carried task state read from a checkpoint, restored at the start of `fit`.
    resumed_carried: Option<HashMap<String, Tensor>>,
    /// Whether the next epoch record is checked against the end of the log, which
    /// [`Self::resume`] sets. A run stopped after logging an epoch but before its
    /// checkpoint reruns that epoch on resume and produces the same record, which is then
    /// not logged twice.
    check_logged_epoch: bool,
}

impl Trainer {
    /// Creates a trainer for a new run of `task`.
    pub fn new<T: TrainTask>(
        task: &mut T,
        settings: TrainSettings,
        options: RunOptions,
    ) -> Result<Self> {
        let optimizer = AdamW::new(task.groups(), settings.adam)?;
        Self::with_optimizer(task, optimizer, settings, options)
    }

    /// Starts a new stage on the same task, keeping the optimizer moments (as fastai
    /// keeps `learn.opt` between `fit` calls) but resetting the position.
    pub fn next_stage<T: TrainTask>(
        self,
        task: &mut T,
        settings: TrainSettings,
        options: RunOptions,
    ) -> Result<Self> {
        let mut optimizer = self.optimizer;
        let (tensors, steps) = optimizer.state_tensors();
        optimizer = AdamW::new(optimizer.groups().to_vec(), settings.adam)?;
        optimizer.load_state(&tensors, &steps)?;
        Self::with_optimizer(task, optimizer, settings, options)
    }

    fn with_optimizer<T: TrainTask>(
        task: &mut T,
        mut optimizer: AdamW,
        settings: TrainSettings,
        options: RunOptions,
    ) -> Result<Self> {
        settings.validate()?;
        let n_groups = optimizer.groups().len();
        let frozen = frozen_count(settings.freeze_to, n_groups)?;
        optimizer.set_frozen_count(frozen);
        task.set_frozen(&frozen_mask(frozen, n_groups));
        let lr_max = spread_lrs(settings.lr, n_groups);
        let steps_per_epoch = task.batches_per_epoch().div_ceil(settings.accumulate);
        let settings_json = serde_json::to_value(&settings)
            .map_err(|e| TrainError::Invalid(format!("failed to encode settings: {e}")))?;
        let rng = Rng::seed(settings.seed);
        let state = TrainState {
            epoch: 0,
            batch_in_epoch: 0,
            opt_step: 0,
            total_steps: steps_per_epoch * settings.epochs,
            epoch_loss_sum: 0.0,
            epoch_loss_count: 0,
            rng: rng.state(),
            frozen_groups: frozen,
            adam_steps: Default::default(),
            settings: settings_json,
            sha256: Default::default(),
        };
        Ok(Self {
            settings,
            options,
            optimizer,
            lr_max,
            state,
            rng,
            pending: Vec::new(),
            pending_count: 0,
            records: Vec::new(),
            resumed_carried: None,
            check_logged_epoch: false,
        })
    }

    /// Resumes the run checkpointed in `dir`: loads weights into the task's parameters,
    /// the optimizer state, the position and the generator. `given` contains the settings
    /// given again now, which must equal the stored ones.
    pub fn resume<T: TrainTask>(
        task: &mut T,
        dir: &Path,
        given: &serde_json::Map<String, serde_json::Value>,
        options: RunOptions,
    ) -> Result<Self> {
        let groups = task.groups();
        let device = groups
            .iter()
            .flat_map(|g| g.params.first())
            .map(|p| p.var.device().clone())
            .next()
            .unwrap_or(candle_core::Device::Cpu);
        let ckpt = checkpoint::load(dir, &device)?;
        let settings: TrainSettings =
            serde_json::from_value(ckpt.state.settings.clone()).map_err(|e| {
                TrainError::Checkpoint {
                    path: ckpt.dir.join(checkpoint::STATE_FILE),
                    reason: format!("invalid settings: {e}"),
                }
            })?;
        settings.check_given(given)?;
        for group in &groups {
            for param in &group.params {
                let saved =
                    ckpt.weights
                        .get(&param.name)
                        .ok_or_else(|| TrainError::Checkpoint {
                            path: ckpt.dir.join(checkpoint::WEIGHTS_FILE),
                            reason: format!("no tensor for parameter `{}`", param.name),
                        })?;
                if saved.dims() != param.var.dims() {
                    return Err(TrainError::Checkpoint {
                        path: ckpt.dir.join(checkpoint::WEIGHTS_FILE),
                        reason: format!(
                            "parameter `{}` has shape {:?} but the model expects {:?}",
                            param.name,
                            saved.dims(),
                            param.var.dims()
                        ),
                    });
                }
                param.var.set(&saved.to_dtype(param.var.dtype())?)?;
            }
        }
        restore_buffers(task, &ckpt.weights, &ckpt.dir)?;
        let (carried, moments): (HashMap<_, _>, HashMap<_, _>) = ckpt
            .optimizer
            .into_iter()
            .partition(|(name, _)| name.starts_with(CARRIED_PREFIX));
        let carried: HashMap<String, Tensor> = carried
            .into_iter()
            .map(|(name, tensor)| (name[CARRIED_PREFIX.len()..].to_string(), tensor))
            .collect();
        let mut optimizer = AdamW::new(groups, settings.adam)?;
        optimizer.load_state(&moments, &ckpt.state.adam_steps)?;
        let mut trainer = Self::with_optimizer(task, optimizer, settings, options)?;
        trainer.optimizer.set_frozen_count(ckpt.state.frozen_groups);
        task.set_frozen(&frozen_mask(
            ckpt.state.frozen_groups,
            trainer.optimizer.groups().len(),
        ));
        trainer.rng = Rng::from_state(ckpt.state.rng);
        let position = if ckpt.state.epoch < trainer.settings.epochs {
            format!(
                "epoch {} of {}, after batch {}",
                ckpt.state.epoch + 1,
                trainer.settings.epochs,
                ckpt.state.batch_in_epoch
            )
        } else {
            format!("all {} epochs done", trainer.settings.epochs)
        };
        tracing::info!(
            "resuming {} from {}: {position} (optimizer step {} of {})",
            trainer.settings.stage,
            ckpt.dir.display(),
            ckpt.state.opt_step,
            ckpt.state.total_steps
        );
        trainer.state = ckpt.state;
        trainer.resumed_carried = Some(carried);
        trainer.check_logged_epoch = true;
        Ok(trainer)
    }

    /// Makes the next epoch record be skipped when the log already ends with it, as after
    /// [`Self::resume`]. A run resumed before a stage's first checkpoint trains that stage
    /// with a new trainer, which may rerun an epoch that was logged before a stop.
    pub fn skip_logged_epoch_once(&mut self) {
        self.check_logged_epoch = true;
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// Returns the run settings.
    pub fn settings(&self) -> &TrainSettings {
        &self.settings
    }

    /// Returns the current position.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Records of the epochs finished by this trainer.
    pub fn records(&self) -> &[EpochRecord] {
        &self.records
    }

    /// Returns whether every epoch has run.
    pub fn is_done(&self) -> bool {
        self.state.epoch >= self.settings.epochs
    }

    fn save_checkpoint<T: TrainTask>(&mut self, task: &T) -> Result<()> {
        let Some(dir) = self.options.checkpoint_dir.clone() else {
            return Ok(());
        };
        let mut weights = HashMap::new();
        for group in self.optimizer.groups() {
            for param in &group.params {
                weights.insert(param.name.clone(), param.var.as_tensor().clone());
            }
        }
        for (name, tensor) in task.buffers() {
            if weights.contains_key(&name) {
                return Err(TrainError::Invalid(format!(
                    "buffer `{name}` has the name of a parameter, so the checkpoint cannot store both"
                )));
            }
            weights.insert(name, tensor);
        }
        let (mut moments, steps) = self.optimizer.state_tensors();
        for (name, tensor) in task.carried_state() {
            moments.insert(format!("{CARRIED_PREFIX}{name}"), tensor);
        }
        self.state.adam_steps = steps;
        self.state.rng = self.rng.state();
        self.state.frozen_groups = self.optimizer.frozen().iter().filter(|f| **f).count();
        checkpoint::save(&dir, &self.options.config, &weights, &moments, &self.state)
    }

    /// Takes one optimizer step with the pending gradients.
    fn apply_step(&mut self, epoch: usize, step: usize) -> Result<()> {
        let mut grads = std::mem::take(&mut self.pending);
        if self.pending_count > 1 {
            optimizer::scale_grads(&mut grads, 1.0 / self.pending_count as f64)?;
        }
        self.pending_count = 0;
        let norm = match self.settings.clip {
            Some(max_norm) => optimizer::clip_grad_norm(&mut grads, max_norm)?,
            None => optimizer::global_norm(&grads)?,
        };
        if !norm.is_finite() {
            return Err(TrainError::NonFinite {
                what: "gradient norm",
                value: norm,
                epoch,
                step,
            });
        }
        let mut lrs = Vec::with_capacity(self.lr_max.len());
        let mut mom = self.settings.adam.mom;
        for &lr_max in &self.lr_max {
            let (lr, m) = self.settings.schedule.at(
                lr_max,
                self.settings.adam.mom,
                self.state.opt_step,
                self.state.total_steps,
            );
            lrs.push(lr);
            mom = m;
        }
        self.optimizer.step(&grads, &lrs, mom)?;
        self.state.opt_step += 1;
        Ok(())
    }

    /// Trains until the last epoch ends (or `max_steps` steps were taken in this call) and
    /// returns the records of the epochs finished in this call.
    pub fn fit<T: TrainTask>(&mut self, task: &mut T) -> Result<Vec<EpochRecord>> {
        let mut finished = Vec::new();
        let mut steps_this_call = 0usize;
        while !self.is_done() {
            let epoch = self.state.epoch;
            let start = Instant::now();
            // A run resumed mid-epoch continues from the carried state it saved; every
            // other epoch starts from a reset state.
            match self.resumed_carried.take() {
                Some(carried) if self.state.batch_in_epoch > 0 => task
                    .restore_carried_state(&carried)
                    .map_err(TrainError::Task)?,
                _ => task.reset_state(),
            }
            let batches = task.batches_per_epoch();
            let iter = task.train_batches(
                epoch,
                epoch_rng(self.settings.seed, epoch),
                self.state.batch_in_epoch,
            )?;
            let (receiver, loader) = spawn_loader(iter, self.options.prefetch);
            let label = format!(
                "{} {}/{}",
                self.settings.stage,
                epoch + 1,
                self.settings.epochs
            );
            let bar = EpochBar::new(
                &label,
                batches,
                self.state.batch_in_epoch,
                self.options.item_unit,
                self.options.progress,
            );
            let mut items = 0usize;
            let mut stopped = false;
            let result: Result<()> = (|| {
                for batch in receiver.iter() {
                    let batch = batch?;
                    let step = self.state.batch_in_epoch;
                    items += task.batch_items(&batch);
                    let loss = task.train_step(batch, &mut self.rng)?;
                    let value = scalar(&loss)?;
                    if !value.is_finite() {
                        return Err(TrainError::NonFinite {
                            what: "loss",
                            value,
                            epoch,
                            step,
                        });
                    }
                    let store = loss.backward()?;
                    let grads = self.optimizer.collect_grads(&store);
                    optimizer::accumulate_grads(&mut self.pending, grads)?;
                    self.pending_count += 1;
                    self.state.batch_in_epoch += 1;
                    self.state.epoch_loss_sum += value;
                    self.state.epoch_loss_count += 1;
                    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
                    bar.update(value, items as f64 / elapsed);
                    if self.pending_count == self.settings.accumulate {
                        self.apply_step(epoch, step)?;
                        steps_this_call += 1;
                        let save_now = self
                            .settings
                            .save_every
                            .is_some_and(|n| self.state.opt_step.is_multiple_of(n));
                        if save_now && self.state.batch_in_epoch < batches {
                            self.save_checkpoint(task)?;
                        }
                        if self.options.max_steps.is_some_and(|m| steps_this_call >= m) {
                            stopped = true;
                            return Ok(());
                        }
                    }
                }
                if self.pending_count > 0 {
                    let step = self.state.batch_in_epoch.saturating_sub(1);
                    self.apply_step(epoch, step)?;
                    steps_this_call += 1;
                }
                Ok(())
            })();
            bar.finish();
            drop(receiver);
            let _ = loader.join();
            result?;
            if stopped && self.state.batch_in_epoch < batches {
                self.save_checkpoint(task)?;
                return Ok(finished);
            }
            let metrics = task.validate()?;
            let train_loss = self.state.epoch_loss_sum / self.state.epoch_loss_count.max(1) as f64;
            let seconds = start.elapsed().as_secs_f64();
            let record = EpochRecord {
                stage: self.settings.stage.clone(),
                epoch,
                train_loss,
                valid_loss: metrics.valid_loss,
                metrics: metrics.values,
                seconds,
                items_per_second: items as f64 / seconds.max(1e-9),
            };
            if self.options.progress {
                eprintln!("{}", record.summary());
            }
            let check_logged = std::mem::take(&mut self.check_logged_epoch);
            if let Some(path) = &self.options.json_log {
                if !(check_logged && log_ends_with(path, &record)) {
                    append_json_line(path, &record)?;
                }
            }
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
            self.state.epoch_loss_sum = 0.0;
            self.state.epoch_loss_count = 0;
            self.save_checkpoint(task)?;
            self.records.push(record.clone());
            finished.push(record);
            if stopped {
                return Ok(finished);
            }
        }
        Ok(finished)
    }

    /// Runs fastai's learning-rate sweep on `task` with a fresh optimizer and restores
    /// the weights afterwards. `settings` supplies the Adam values, clipping, freezing
    /// and seed; its learning rate and schedule are ignored.
    pub fn lr_find<T: TrainTask>(
        task: &mut T,
        finder: &LrFinder,
        settings: &TrainSettings,
    ) -> Result<LrFindResult> {
        let groups = task.groups();
        let mut saved = Vec::new();
        for group in &groups {
            for param in &group.params {
                saved.push((param.var.clone(), param.var.as_tensor().copy()?));
            }
        }
        let result = Self::sweep(task, groups, finder, settings);
        for (var, value) in saved {
            var.set(&value)?;
        }
        task.reset_state();
        result
    }

    fn sweep<T: TrainTask>(
        task: &mut T,
        groups: Vec<ParamGroup>,
        finder: &LrFinder,
        settings: &TrainSettings,
    ) -> Result<LrFindResult> {
        let n_groups = groups.len();
        let mut optimizer = AdamW::new(groups, settings.adam)?;
        let frozen = frozen_count(settings.freeze_to, n_groups)?;
        optimizer.set_frozen_count(frozen);
        task.set_frozen(&frozen_mask(frozen, n_groups));
        let mut rng = Rng::seed(settings.seed);
        let mut smooth = SmoothLoss::new(0.98);
        let mut best = f64::INFINITY;
        let mut result = LrFindResult {
            num_it: finder.steps(),
            ..Default::default()
        };
        let mut epoch = 0;
        'sweep: while result.lrs.len() < finder.steps() {
            task.reset_state();
            let iter = task.train_batches(epoch, epoch_rng(settings.seed, epoch), 0)?;
            let mut any = false;
            for batch in iter {
                any = true;
                let i = result.lrs.len();
                let lr = finder.lr_at(i);
                let loss = task.train_step(batch?, &mut rng)?;
                let value = scalar(&loss)?;
                let mut grads = optimizer.collect_grads(&loss.backward()?);
                let mut norm = optimizer::global_norm(&grads)?;
                if let Some(max_norm) = settings.clip {
                    norm = optimizer::clip_grad_norm(&mut grads, max_norm)?;
                }
                if value.is_finite() && norm.is_finite() {
                    optimizer.step(&grads, &vec![lr; n_groups], settings.adam.mom)?;
                }
                let smoothed = smooth.update(value);
                result.lrs.push(lr);
                result.losses.push(smoothed);
                best = best.min(smoothed);
                let diverged = !smoothed.is_finite() || (finder.stop_div && smoothed > 4.0 * best);
                if diverged || result.lrs.len() >= finder.steps() {
                    break 'sweep;
                }
            }
            if !any {
                return Err(TrainError::Invalid(
                    "the task yielded no training batches for the learning-rate finder".into(),
                ));
            }
            epoch += 1;
        }
        Ok(result)
    }
}
