//! `ulmfit lm-finetune`: fine-tune a pretrained language model on target texts.

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::Device;
use clap::Args;

use super::data::DataArgs;
use crate::pipeline::finetune::{
    finetune, prepare_model, target_vocab, tokenize, write_tokens, FinetuneSchedule,
    FINETUNE_DROPOUT_MULTIPLIER, FROZEN_LR, UNFROZEN_LR,
};
use crate::pipeline::model_folder::{self, ModelFolderConfig, ModelKind};
use crate::rng::Rng;
use crate::text::readers::{read_all, LabelRequirement};
use crate::train::RunOptions;

/// Arguments of `ulmfit lm-finetune`.
#[derive(Debug, Args)]
#[command(after_help = "\
Defaults follow fastai 2.x's IMDb example: a target vocabulary (min_freq 3, max 60,000) \
with the model remapped to it, drop_mult 0.3, 1 epoch training only the embedding and \
decoder at 2e-2, then unfrozen epochs at --lr 2e-3, momentum 0.8 -> 0.7 -> 0.8, weight \
decay 0.1. fastai runs 10 unfrozen epochs; the default here is 1 for CPU practicality.")]
pub struct LmFinetuneArgs {
    /// Pretrained language-model folder (from `pretrain` or `import-fastai`).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Target texts (labels ignored).
    #[arg(long, num_args = 1.., required = true, value_name = "PATH")]
    pub data: Vec<PathBuf>,

    /// Output model folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Unfrozen epochs (fastai's example: 10).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub epochs: usize,

    /// Peak learning rate of the unfrozen epochs.
    #[arg(long, default_value_t = UNFROZEN_LR, value_name = "X")]
    pub lr: f64,

    /// Peak learning rate of the frozen first epoch.
    #[arg(long, default_value_t = FROZEN_LR, value_name = "X")]
    pub frozen_lr: f64,

    /// Frozen epochs before unfreezing.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub frozen_epochs: usize,

    /// Share of the documents held out for validation.
    #[arg(long, default_value_t = 0.1, value_name = "F")]
    pub valid_fraction: f64,

    /// Rows per batch.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub batch_size: usize,

    /// Tokens per window.
    #[arg(long, default_value_t = 72, value_name = "N")]
    pub bptt: usize,

    /// Dropout multiplier.
    #[arg(long, default_value_t = FINETUNE_DROPOUT_MULTIPLIER, value_name = "X")]
    pub drop_mult: f32,

    /// Seed of the validation split, data order and dropout.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,

    /// Append one JSON object per epoch to this file.
    #[arg(long, value_name = "FILE")]
    pub log_json: Option<PathBuf>,

    #[command(flatten)]
    pub data_options: DataArgs,
}

/// Runs `ulmfit lm-finetune`.
pub fn run(args: LmFinetuneArgs, progress: bool) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&args.valid_fraction) {
        bail!(
            "--valid-fraction {} must lie in [0, 1)",
            args.valid_fraction
        );
    }
    let loaded = model_folder::load(&args.model, &Device::Cpu).with_context(|| {
        format!(
            "failed to load the language model in {}",
            args.model.display()
        )
    })?;
    let options = args.data_options.read_options(LabelRequirement::Ignored);
    let mut documents = read_all(&args.data, &options)?.documents;
    Rng::seed(args.seed).shuffle(&mut documents);
    let texts: Vec<&str> = documents.iter().map(|d| d.text.as_str()).collect();
    let tokens = tokenize(&loaded.tokenizer, &texts)?;
    let is_word = matches!(
        loaded.tokenizer.splitter(),
        crate::text::tokenizer::Splitter::Word(_)
    );
    // A subword model fixes its vocabulary, so only word vocabularies are rebuilt.
    let vocab = if is_word {
        target_vocab(&tokens)
    } else {
        loaded.vocab.clone()
    };
    let model = prepare_model(&loaded.model, &loaded.vocab, &vocab, args.drop_mult)?;
    tracing::info!(
        "target vocabulary of {} tokens ({} in the pretrained one)",
        vocab.len(),
        loaded.vocab.len()
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("failed to create {}", args.out.display()))?;
    let n_valid = (tokens.len() as f64 * args.valid_fraction).round() as usize;
    let (train_tokens, valid_tokens) = tokens.split_at(tokens.len() - n_valid);
    let train = write_tokens(&args.out.join("train.tok"), &vocab, train_tokens)?;
    let valid = if valid_tokens.is_empty() {
        None
    } else {
        Some(write_tokens(
            &args.out.join("valid.tok"),
            &vocab,
            valid_tokens,
        )?)
    };
    let schedule = FinetuneSchedule {
        frozen_epochs: args.frozen_epochs,
        frozen_lr: args.frozen_lr,
        unfrozen_epochs: args.epochs,
        unfrozen_lr: args.lr,
        seed: args.seed,
    };
    let run_options = RunOptions {
        json_log: args.log_json.clone(),
        progress,
        item_unit: "tokens",
        ..RunOptions::default()
    };
    let backwards = loaded.config.backwards;
    let (model, records) = finetune(
        model,
        train,
        valid,
        args.batch_size,
        args.bptt,
        backwards,
        schedule,
        run_options,
    )?;
    let folder = ModelFolderConfig {
        kind: ModelKind::LanguageModel,
        model: model.config().clone(),
        backwards,
    };
    let rules = loaded.tokenizer.rules().name.clone();
    let subword = match loaded.tokenizer.splitter() {
        crate::text::tokenizer::Splitter::Subword(model) => Some(model.as_ref().clone()),
        _ => None,
    };
    model_folder::save(&args.out, &folder, &model, &vocab, &rules, subword.as_ref())
        .with_context(|| format!("failed to write the model folder {}", args.out.display()))?;
    let mut summary = serde_json::json!({ "model": args.out, "vocab_size": vocab.len() });
    if let Some(last) = records.last() {
        summary["train_loss"] = last.train_loss.into();
        summary["valid_loss"] = last.valid_loss.into();
        for (name, value) in &last.metrics {
            summary[name] = (*value).into();
        }
    }
    println!("{summary}");
    Ok(())
}
