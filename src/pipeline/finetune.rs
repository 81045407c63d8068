//! Fine-tuning a pretrained language model on the target corpus (ULMFiT's second stage):
//! a target vocabulary, the model remapped to it, and fastai's two-stage schedule.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use super::lm_task::{LmTask, LmTaskSettings};
use super::remap::remap_language_model;
use crate::model::{LanguageModel, DEFAULT_AR_ALPHA, DEFAULT_TAR_BETA};
use crate::text::token_file::{TokenFile, TokenFileWriter};
use crate::text::tokenizer::Tokenizer;
use crate::text::vocab::{TokenCounter, Vocab, DEFAULT_MAX_VOCAB, DEFAULT_MIN_FREQ};
use crate::train::{
    AdamConfig, EpochRecord, LrSpec, OneCycle, RunOptions, Schedule, TrainSettings, Trainer,
};

/// fastai's learning rate of the frozen first epoch.
pub const FROZEN_LR: f64 = 2e-2;
/// fastai's learning rate of the unfrozen epochs.
pub const UNFROZEN_LR: f64 = 2e-3;
/// fastai's dropout multiplier for fine-tuning in its IMDb example.
pub const FINETUNE_DROPOUT_MULTIPLIER: f32 = 0.3;
/// fastai's weight decay in its IMDb language-model example.
pub const FINETUNE_WEIGHT_DECAY: f64 = 0.1;

/// Builds the target vocabulary from tokenized documents (min_freq 3, max 60,000).
pub fn target_vocab(documents: &[Vec<String>]) -> Vocab {
    let mut counter = TokenCounter::new();
    for tokens in documents {
        counter.add(tokens);
    }
    counter.build(DEFAULT_MIN_FREQ, DEFAULT_MAX_VOCAB)
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
}

fn settings(stage: &str, epochs: usize, lr: f64, freeze_to: isize, seed: u64) -> TrainSettings {
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
        save_every: None,
    }
}

/// Fine-tunes `model` on `train` as fastai's IMDb example: `fit_one_cycle(frozen_epochs,
/// frozen_lr)` with only the last group trainable, then `unfreeze()` and
/// `fit_one_cycle(unfrozen_epochs, unfrozen_lr)`, momentum 0.8 -> 0.7 -> 0.8, weight
/// decay 0.1, AR 2 and TAR 1. Returns the model and the epoch records.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    model: LanguageModel,
    train: Arc<TokenFile>,
    valid: Option<Arc<TokenFile>>,
    batch_size: usize,
    bptt: usize,
    backwards: bool,
    schedule: FinetuneSchedule,
    options: RunOptions,
) -> anyhow::Result<(LanguageModel, Vec<EpochRecord>)> {
    let task_settings = LmTaskSettings {
        batch_size,
        bptt,
        backwards,
        ar_alpha: DEFAULT_AR_ALPHA,
        tar_beta: DEFAULT_TAR_BETA,
    };
    let mut task = LmTask::new(model, train, valid, task_settings)?;
    let mut records = Vec::new();
    let mut trainer: Option<Trainer> = None;
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
    for (index, (name, epochs, lr, freeze_to)) in stages.into_iter().enumerate() {
        if epochs == 0 {
            continue;
        }
        let stage = settings(name, epochs, lr, freeze_to, schedule.seed + index as u64);
        let mut next = match trainer.take() {
            None => Trainer::new(&mut task, stage, options.clone())?,
            Some(previous) => previous.next_stage(&mut task, stage, options.clone())?,
        };
        records.extend(next.fit(&mut task)?);
        trainer = Some(next);
    }
    Ok((task.into_model(), records))
}
