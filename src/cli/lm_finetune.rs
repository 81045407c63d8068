//! `ulmfit lm-finetune`: fine-tune a pretrained language model on target texts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::data::DataArgs;
use super::precision::TrainPrecision;
use super::training::{
    absolute_path, log_file_of_run, run_folder, select_device, settings_of_run, DeviceSpec,
    DEVICE_HELP,
};
use crate::pipeline::finetune::{
    finetune, prepare_model, target_vocab, tokenize, write_tokens, FinetuneSchedule, StageRun,
    FINETUNE_DROPOUT_MULTIPLIER, FROZEN_LR, STAGE_CHECKPOINT_PREFIX, UNFROZEN_LR,
};
use crate::pipeline::model_folder::{self, ModelFolderConfig, ModelKind};
use crate::rng::Rng;
use crate::text::readers::{read_all, LabelRequirement};
use crate::text::vocab::{DEFAULT_MAX_VOCAB, DEFAULT_MIN_FREQ};
use crate::text::SPECIAL_TOKENS;
use crate::train::RunOptions;

/// File in the output folder with the run's settings.
const SETTINGS_FILE: &str = "lm-finetune.json";

/// Settings of `ulmfit lm-finetune` saved in the output folder and checked on resume.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct LmFinetuneSettings {
    /// Pretrained language-model folder (from `pretrain` or `import-fastai`).
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    pub model: Option<PathBuf>,

    /// Target texts (labels ignored).
    #[arg(long, num_args = 1.., required_unless_present = "resume", value_name = "PATH")]
    pub data: Vec<PathBuf>,

    /// Unfrozen epochs [default: 1; fastai's example: 10].
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,

    /// Peak learning rate of the unfrozen epochs [default: 2e-3].
    #[arg(long, value_name = "X")]
    pub lr: Option<f64>,

    /// Peak learning rate of the frozen first epoch [default: 2e-2].
    #[arg(long, value_name = "X")]
    pub frozen_lr: Option<f64>,

    /// Frozen epochs before unfreezing [default: 1].
    #[arg(long, value_name = "N")]
    pub frozen_epochs: Option<usize>,

    /// Share of the documents held out for validation [default: 0.1].
    #[arg(long, value_name = "F")]
    pub valid_fraction: Option<f64>,

    /// Rows per batch [default: 64].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,

    /// Tokens per window [default: 72].
    #[arg(long, value_name = "N")]
    pub bptt: Option<usize>,

    /// Dropout multiplier [default: 0.3].
    #[arg(long, value_name = "X")]
    pub drop_mult: Option<f32>,

    /// Seed of the validation split, data order and dropout [default: 0].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,

    /// Also write a checkpoint every N optimizer steps (one is always written at each
    /// epoch end).
    #[arg(long, value_name = "N")]
    pub save_every: Option<usize>,

    /// Keep target-vocabulary words seen at least this many times in the texts read
    /// [default: 3, as fastai].
    #[arg(long, value_name = "N")]
    pub min_freq: Option<u64>,

    /// Maximum target-vocabulary size, the 9 special tokens included [default: 60,000, as
    /// fastai].
    #[arg(long, value_name = "N")]
    pub max_vocab: Option<usize>,

    /// Train on at most this many documents, drawn at random (seeded) from the texts read.
    /// The vocabulary is still built from every document [default: all].
    #[arg(long, value_name = "N")]
    pub max_documents: Option<usize>,

    /// Format of the matrix products of the LSTM layers and the decoder: f32, or bf16
    /// (inputs rounded to bfloat16, f32 sums, parameters kept in f32). bf16 needs a CPU
    /// with AVX512-BF16, and without it the command fails [default: f32].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub precision: Option<TrainPrecision>,
}

impl LmFinetuneSettings {
    /// Returns these settings with every default filled in.
    fn resolved(&self) -> Self {
        Self {
            model: self.model.clone(),
            data: self.data.clone(),
            epochs: Some(self.epochs.unwrap_or(1)),
            lr: Some(self.lr.unwrap_or(UNFROZEN_LR)),
            frozen_lr: Some(self.frozen_lr.unwrap_or(FROZEN_LR)),
            frozen_epochs: Some(self.frozen_epochs.unwrap_or(1)),
            valid_fraction: Some(self.valid_fraction.unwrap_or(0.1)),
            batch_size: Some(self.batch_size.unwrap_or(64)),
            bptt: Some(self.bptt.unwrap_or(72)),
            drop_mult: Some(self.drop_mult.unwrap_or(FINETUNE_DROPOUT_MULTIPLIER)),
            seed: Some(self.seed.unwrap_or(0)),
            save_every: self.save_every,
            min_freq: Some(self.min_freq.unwrap_or(DEFAULT_MIN_FREQ)),
            max_vocab: Some(self.max_vocab.unwrap_or(DEFAULT_MAX_VOCAB)),
            max_documents: self.max_documents,
            precision: Some(self.precision.unwrap_or_default()),
        }
    }
}

/// Arguments of `ulmfit lm-finetune`.
#[derive(Debug, Args)]
#[command(after_help = "\
Defaults follow fastai 2.x's IMDb example: a target vocabulary (--min-freq 3, \
--max-vocab 60,000) with the model remapped to it, drop_mult 0.3, 1 epoch training only the embedding and \
decoder at 2e-2, then unfrozen epochs at --lr 2e-3, momentum 0.8 -> 0.7 -> 0.8, weight \
decay 0.1. fastai runs 10 unfrozen epochs; the default here is 1 for CPU practicality.")]
pub struct LmFinetuneArgs {
    #[command(flatten)]
    pub settings: LmFinetuneSettings,

    /// Output model folder, also holding the run settings and stage checkpoints.
    /// Optional with `--resume`.
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    pub out: Option<PathBuf>,

    /// Continue the run in this output folder with its saved settings. Options given
    /// again must have their saved values.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,

    #[arg(long, default_value = "cpu", value_name = "DEVICE", help = DEVICE_HELP)]
    pub device: DeviceSpec,

    /// Stop after this many optimizer steps, leaving a checkpoint to resume from.
    #[arg(long, value_name = "N", hide = true)]
    pub max_steps: Option<usize>,

    /// Append one JSON object per epoch to this file. The run folder records it, so
    /// `--resume` without this option keeps appending to the same file.
    #[arg(long, value_name = "FILE")]
    pub log_json: Option<PathBuf>,

    #[command(flatten)]
    pub data_options: DataArgs,
}

/// Replaces the `--model` and `--data` paths given again on resume by the saved ones when
/// they name the same files. So `lm` and `/abs/lm/` match a saved `/abs/lm`, and a
/// relative path saved by an older run matches its absolute form when resumed from the
/// folder that run started in. Paths that name other files stay, so the settings check
/// reports them.
fn keep_saved_paths(settings_file: &Path, given: &mut LmFinetuneSettings) {
    let Ok(text) = std::fs::read_to_string(settings_file) else {
        return;
    };
    let Ok(saved) = serde_json::from_str::<LmFinetuneSettings>(&text) else {
        return;
    };
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if let (Some(path), Some(saved_path)) = (&given.model, &saved.model) {
        if same(path, saved_path) {
            given.model = saved.model.clone();
        }
    }
    let data_matches = given.data.len() == saved.data.len()
        && given.data.iter().zip(&saved.data).all(|(a, b)| same(a, b));
    if !given.data.is_empty() && data_matches {
        given.data = saved.data.clone();
    }
}

/// Runs `ulmfit lm-finetune`.
pub fn run(args: LmFinetuneArgs, progress: bool) -> anyhow::Result<()> {
    let device = select_device(args.device)?;
    let out = run_folder(
        args.out.as_ref(),
        args.resume.as_ref(),
        STAGE_CHECKPOINT_PREFIX,
    )?;
    let resuming = args.resume.is_some();
    let mut given = args.settings.clone();
    given.model = given.model.as_deref().map(absolute_path).transpose()?;
    given.data = given
        .data
        .iter()
        .map(|path| absolute_path(path))
        .collect::<anyhow::Result<_>>()?;
    if resuming {
        keep_saved_paths(&out.join(SETTINGS_FILE), &mut given);
    }
    let given = &given;
    if let Some(fraction) = given.valid_fraction.filter(|f| !(0.0..1.0).contains(f)) {
        bail!("--valid-fraction {fraction} must lie in [0, 1)");
    }
    if let Some(size) = given.max_vocab.filter(|&n| n <= SPECIAL_TOKENS.len()) {
        bail!(
            "invalid --max-vocab {size}: it must exceed the {} special tokens, which are always kept",
            SPECIAL_TOKENS.len()
        );
    }
    if given.max_documents == Some(0) {
        bail!("invalid --max-documents 0: it must be at least 1");
    }
    let settings = settings_of_run(
        &out,
        SETTINGS_FILE,
        given,
        LmFinetuneSettings::resolved,
        resuming,
    )?
    .resolved();
    let model_dir = settings
        .model
        .clone()
        .context("--model is required for a new run")?;
    let seed = settings.seed.unwrap_or(0);
    let valid_fraction = settings.valid_fraction.unwrap_or(0.1);
    let loaded = model_folder::load(&model_dir, &device).with_context(|| {
        let source = if args.settings.model.is_none() {
            format!(
                " (the --model saved in {}; a relative path there is relative to the folder \
                 the run started in, so resume from that folder)",
                out.join(SETTINGS_FILE).display()
            )
        } else {
            String::new()
        };
        format!(
            "failed to load the language model in {}{source}",
            model_dir.display()
        )
    })?;
    let options = args.data_options.read_options(LabelRequirement::Ignored);
    let mut documents = read_all(&settings.data, &options)?.documents;
    Rng::seed(seed).shuffle(&mut documents);
    let texts: Vec<&str> = documents.iter().map(|d| d.text.as_str()).collect();
    let tokens = tokenize(&loaded.tokenizer, &texts)?;
    let is_word = matches!(
        loaded.tokenizer.splitter(),
        crate::text::tokenizer::Splitter::Word(_)
    );
    // A subword model fixes its vocabulary, so only word vocabularies are rebuilt.
    let vocab = if is_word {
        target_vocab(
            &tokens,
            settings.min_freq.unwrap_or(DEFAULT_MIN_FREQ),
            settings.max_vocab.unwrap_or(DEFAULT_MAX_VOCAB),
        )
    } else {
        loaded.vocab.clone()
    };
    // The documents are already shuffled, so the first ones are a random sample.
    let mut tokens = tokens;
    if let Some(limit) = settings.max_documents {
        if limit < tokens.len() {
            tracing::info!(
                "training on {limit} of {} documents (--max-documents)",
                tokens.len()
            );
            tokens.truncate(limit);
        }
    }
    let drop_mult = settings.drop_mult.unwrap_or(FINETUNE_DROPOUT_MULTIPLIER);
    let mut model = prepare_model(&loaded.model, &loaded.vocab, &vocab, drop_mult)?;
    model.set_precision(settings.precision.unwrap_or_default().checked()?);
    tracing::info!(
        "target vocabulary of {} tokens ({} in the pretrained one)",
        vocab.len(),
        loaded.vocab.len()
    );
    let n_valid = (tokens.len() as f64 * valid_fraction).round() as usize;
    let (train_tokens, valid_tokens) = tokens.split_at(tokens.len() - n_valid);
    let train = write_tokens(&out.join("train.tok"), &vocab, train_tokens)?;
    let valid = if valid_tokens.is_empty() {
        None
    } else {
        Some(write_tokens(&out.join("valid.tok"), &vocab, valid_tokens)?)
    };
    let schedule = FinetuneSchedule {
        frozen_epochs: settings.frozen_epochs.unwrap_or(1),
        frozen_lr: settings.frozen_lr.unwrap_or(FROZEN_LR),
        unfrozen_epochs: settings.epochs.unwrap_or(1),
        unfrozen_lr: settings.lr.unwrap_or(UNFROZEN_LR),
        seed,
        save_every: settings.save_every,
    };
    let stage_run = StageRun {
        dir: Some(out.clone()),
        resume: resuming,
        max_steps: args.max_steps,
    };
    let run_options = RunOptions {
        json_log: log_file_of_run(&out, args.log_json.as_deref(), resuming)?,
        progress,
        item_unit: "tokens",
        ..RunOptions::default()
    };
    let backwards = loaded.config.backwards;
    let (model, outcome) = finetune(
        model,
        train,
        valid,
        settings.batch_size.unwrap_or(64),
        settings.bptt.unwrap_or(72),
        backwards,
        schedule,
        &stage_run,
        run_options,
    )?;
    if !outcome.finished {
        println!(
            "{}",
            serde_json::json!({ "stopped": true, "resume": out.display().to_string(), "epochs_run": outcome.records.len() })
        );
        return Ok(());
    }
    let records = outcome.records;
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
    model_folder::save(&out, &folder, &model, &vocab, &rules, subword.as_ref())
        .with_context(|| format!("failed to write the model folder {}", out.display()))?;
    let mut summary =
        serde_json::json!({ "model": out.display().to_string(), "vocab_size": vocab.len() });
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
