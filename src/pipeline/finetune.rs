//! Fine-tuning a pretrained language model on the target corpus (ULMFiT's second stage):
//! a target vocabulary, the model remapped to it, and fastai's two-stage schedule.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use super::lm_task::{LmTask, LmTaskSettings};
use super::remap::remap_language_model;
use crate::model::{LanguageModel, DEFAULT_AR_ALPHA, DEFAULT_TAR_BETA};
use crate::text::token_file::{TokenFile, TokenFileWriter};
use crate::text::tokenizer::Tokenizer;
use crate::text::vocab::{TokenCounter, Vocab};
use crate::train::{
    checkpoint, AdamConfig, EpochRecord, LrSpec, OneCycle, RunOptions, Schedule, TrainSettings,
    TrainTask, Trainer,
};

/// Prefix of the stage checkpoint folders in a run folder: stage K (from 1) checkpoints
/// into `checkpoint-stage-K`.
pub const STAGE_CHECKPOINT_PREFIX: &str = "checkpoint-stage-";

/// Returns the checkpoint folder of stage `index` (from 0) in the run folder `dir`.
pub fn stage_checkpoint_dir(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("{STAGE_CHECKPOINT_PREFIX}{}", index + 1))
}

/// Checkpoint folder, resume flag and step limit of [`run_stages`].
#[derive(Debug, Clone)]
pub struct StageRun {
    /// Run folder containing the stage checkpoints, or `None` for no checkpoints.
    pub dir: Option<PathBuf>,
    /// Continue the run checkpointed in `dir`.
    pub resume: bool,
    /// Stop after this many optimizer steps in this call, all stages together.
    pub max_steps: Option<usize>,
}

/// Result of [`run_stages`].
#[derive(Debug, Default)]
pub struct StagesOutcome {
    /// Records of the epochs finished by this call.
    pub records: Vec<EpochRecord>,
    /// Whether every stage has finished (false when `max_steps` stopped the run).
    pub finished: bool,
}

/// Trains `task` through `stages` (stage index, settings), each stage keeping the
/// optimizer moments of the previous one. Each stage checkpoints into
/// [`stage_checkpoint_dir`]. When resuming, the latest stage with a checkpoint is
/// resumed from it (its stored settings must equal the expected ones), and the later
/// stages run after it. Earlier stages are skipped because that checkpoint contains
/// their result.
pub fn run_stages<T: TrainTask>(
    task: &mut T,
    stages: &[(usize, TrainSettings)],
    run: &StageRun,
    options: &RunOptions,
) -> anyhow::Result<StagesOutcome> {
    let options_of = |index: usize| RunOptions {
        checkpoint_dir: run
            .dir
            .as_deref()
            .map(|dir| stage_checkpoint_dir(dir, index)),
        ..options.clone()
    };
    let mut start = 0;
    let mut trainer: Option<Trainer> = None;
    if run.resume {
        let dir = run
            .dir
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("resuming needs the run folder"))?;
        let latest = stages
            .iter()
            .rposition(|(index, _)| checkpoint::exists(&stage_checkpoint_dir(dir, *index)));
        if let Some(position) = latest {
            let (index, settings) = &stages[position];
            let serde_json::Value::Object(expected) = serde_json::to_value(settings)? else {
                anyhow::bail!("stage settings are not a JSON object");
            };
            let checkpoint = stage_checkpoint_dir(dir, *index);
            let resume_options = RunOptions {
                max_steps: run.max_steps,
                ..options_of(*index)
            };
            let resumed = Trainer::resume(task, &checkpoint, &expected, resume_options)
                .with_context(|| format!("failed to resume from {}", checkpoint.display()))?;
            trainer = Some(resumed);
            start = position;
        }
    }
    let mut outcome = StagesOutcome::default();
    let mut steps_left = run.max_steps;
    // The first epoch trained after a resume may have been logged before the stop.
    let mut first_fit = run.resume;
    for (position, (index, settings)) in stages.iter().enumerate().skip(start) {
        let mut stage_options = options_of(*index);
        stage_options.max_steps = steps_left;
        let mut current = match trainer.take() {
            Some(resumed) if position == start && run.resume => resumed,
            Some(previous) => previous.next_stage(task, settings.clone(), stage_options)?,
            None => Trainer::new(task, settings.clone(), stage_options)?,
        };
        if !current.is_done() {
            if steps_left == Some(0) {
                return Ok(outcome);
            }
            if std::mem::take(&mut first_fit) {
                current.skip_logged_epoch_once();
            }
            let before = current.state().opt_step;
            outcome.records.extend(current.fit(task)?);
            let taken = current.state().opt_step - before;
            steps_left = steps_left.map(|left| left.saturating_sub(taken));
            if !current.is_done() {
                return Ok(outcome);
            }
        }
        trainer = Some(current);
    }
    outcome.finished = true;
    Ok(outcome)
}

/// fastai's learning rate of the frozen first epoch.
pub const FROZEN_LR: f64 = 2e-2;
/// fastai's learning rate of the unfrozen epochs.
pub const UNFROZEN_LR: f64 = 2e-3;
/// fastai's dropout multiplier for fine-tuning in its IMDb example.
pub const FINETUNE_DROPOUT_MULTIPLIER: f32 = 0.3;
/// fastai's weight decay in its IMDb language-model example.
pub const FINETUNE_WEIGHT_DECAY: f64 = 0.1;

/// Builds the target vocabulary from tokenized documents: the words seen at least
/// `min_freq` times, at most `max_vocab` tokens with the special tokens (fastai: 3 and
/// 60,000).
pub fn target_vocab(documents: &[Vec<String>], min_freq: u64, max_vocab: usize) -> Vocab {
    let mut counter = TokenCounter::new();
    for tokens in documents {
        counter.add(tokens);
    }
    counter.build(min_freq, max_vocab)
}

/// Tokenizes `texts` and returns their tokens, each document starting as the
/// tokenizer's rules make it (fastai rules add `xxbos`).
pub fn tokenize(tokenizer: &Tokenizer, texts: &[&str]) -> anyhow::Result<Vec<Vec<String>>> {
    Ok(tokenizer.tokenize_all(texts)?)
}

/// Returns `model` remapped from `old_vocab` to `new_vocab`, with its dropout
/// multiplier set for fine-tuning.
pub fn prepare_model(
    model: &LanguageModel,
    old_vocab: &Vocab,
    new_vocab: &Vocab,
    dropout_multiplier: f32,
) -> anyhow::Result<LanguageModel> {
    let remapped = remap_language_model(model, old_vocab, new_vocab)?;
    let mut config = remapped.config().clone();
    config.dropout_multiplier = dropout_multiplier;
    Ok(LanguageModel::from_named_tensors(
        config,
        remapped.tensors(),
    )?)
}

/// Writes numericalized documents into a token file at `path` and opens it.
pub fn write_tokens(
    path: &Path,
    vocab: &Vocab,
    documents: &[Vec<String>],
) -> anyhow::Result<Arc<TokenFile>> {
    let hash = vocab.content_hash();
    let mut writer = TokenFileWriter::create(path, vocab.len() as u64, &hash, None)
        .with_context(|| format!("failed to create token file {}", path.display()))?;
    for tokens in documents {
        writer.push_document(&vocab.encode(tokens), None)?;
    }
    writer
        .finish()
        .with_context(|| format!("failed to write token file {}", path.display()))?;
    Ok(Arc::new(TokenFile::open(path, Some(&hash))?))
}

/// Schedule of a fine-tuning run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FinetuneSchedule {
    /// Epochs with only the last group (embedding and decoder) trainable.
    pub frozen_epochs: usize,
    /// Peak rate of the frozen epochs.
    pub frozen_lr: f64,
    /// Epochs with every group trainable.
    pub unfrozen_epochs: usize,
    /// Peak rate of the unfrozen epochs.
    pub unfrozen_lr: f64,
    /// Seed of the data order and dropout.
    pub seed: u64,
    /// Write a checkpoint every this many optimizer steps (besides each epoch end).
    pub save_every: Option<usize>,
}

fn settings(
    stage: &str,
    epochs: usize,
    lr: f64,
    freeze_to: isize,
    seed: u64,
    save_every: Option<usize>,
) -> TrainSettings {
    TrainSettings {
        stage: stage.into(),
        epochs,
        lr: LrSpec::Value(lr),
        schedule: Schedule::OneCycle(OneCycle {
            moms: (0.8, 0.7, 0.8),
            ..OneCycle::default()
        }),
        adam: AdamConfig {
            wd: FINETUNE_WEIGHT_DECAY,
            ..AdamConfig::default()
        },
        clip: None,
        accumulate: 1,
        freeze_to,
        seed,
        save_every,
    }
}

/// Fine-tunes `model` on `train` as fastai's IMDb example: `fit_one_cycle(frozen_epochs,
/// frozen_lr)` with only the last group trainable, then `unfreeze()` and
/// `fit_one_cycle(unfrozen_epochs, unfrozen_lr)`, momentum 0.8 -> 0.7 -> 0.8, weight
/// decay 0.1, AR 2 and TAR 1, with stage checkpoints and resuming set by `run` (see
/// [`run_stages`]). Returns the model and the outcome.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    model: LanguageModel,
    train: Arc<TokenFile>,
    valid: Option<Arc<TokenFile>>,
    batch_size: usize,
    bptt: usize,
    backwards: bool,
    schedule: FinetuneSchedule,
    run: &StageRun,
    options: RunOptions,
) -> anyhow::Result<(LanguageModel, StagesOutcome)> {
    let task_settings = LmTaskSettings {
        batch_size,
        bptt,
        backwards,
        ar_alpha: DEFAULT_AR_ALPHA,
        tar_beta: DEFAULT_TAR_BETA,
    };
    let mut task = LmTask::new(model, train, valid, task_settings)?;
    let stages = [
        (
            "lm-finetune frozen",
            schedule.frozen_epochs,
            schedule.frozen_lr,
            -1,
        ),
        (
            "lm-finetune",
            schedule.unfrozen_epochs,
            schedule.unfrozen_lr,
            0,
        ),
    ];
    let stages: Vec<(usize, TrainSettings)> = stages
        .into_iter()
        .enumerate()
        .filter(|(_, (_, epochs, _, _))| *epochs > 0)
        .map(|(index, (name, epochs, lr, freeze_to))| {
            let seed = schedule.seed + index as u64;
            let stage = settings(name, epochs, lr, freeze_to, seed, schedule.save_every);
            (index, stage)
        })
        .collect();
    let outcome = run_stages(&mut task, &stages, run, &options)?;
    Ok((task.into_model(), outcome))
}
