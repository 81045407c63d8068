//! `ulmfit pretrain` and `ulmfit lr-find`: train an AWD-LSTM language model from scratch
//! on text corpora, or sweep learning rates for it.
//!
//! Both commands keep their working files in the output folder: the vocabulary
//! (`vocab.txt`, `vocab.json`), the token files (`train.tok`, `valid.tok`, each with a
//! `.sources.json` that records what it was built from) and, for `pretrain`, the run
//! settings (`pretrain.json`), the checkpoint folder and finally the model folder files.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::corpus::{document_spinner, for_each_chunk};
use super::data::DataArgs;
use super::numericalize::{encode_documents, load_tokenizer};
use super::precision::TrainPrecision;
use super::training::{log_file_of_run, select_device, DeviceSpec, DEVICE_HELP};
use super::vocab::count_tokens;
use crate::kernels::precision::Precision;
use crate::model::{AwdLstmConfig, DEFAULT_AR_ALPHA, DEFAULT_TAR_BETA};
use crate::pipeline::model_folder::{self, ModelFolderConfig, ModelKind};
use crate::pipeline::pretrain::{
    self, PretrainData, PretrainSpec, CHECKPOINT_DIR, TRAIN_TOKENS, VALID_TOKENS, WT103_BPTT,
    WT103_DROPOUT_MULTIPLIER, WT103_LR,
};
use crate::text::readers::{LabelRequirement, ReadOptions};
use crate::text::rules::RuleSet;
use crate::text::subword::{SubwordModel, TOKENIZER_JSON};
use crate::text::token_file::{TokenFile, TokenFileWriter};
use crate::text::tokenizer::Tokenizer;
use crate::text::vocab::{
    TokenCounter, Vocab, VocabKind, DEFAULT_MAX_VOCAB, DEFAULT_MIN_FREQ, VOCAB_JSON, VOCAB_TXT,
};
use crate::train::{LrFinder, RunOptions, TrainError};

/// Default rows per batch (fastai's WikiText-103 run uses 256).
const DEFAULT_BATCH_SIZE: usize = 64;
/// Default embedding width (fastai: 400).
const DEFAULT_EMBEDDING_SIZE: usize = 200;
/// Default LSTM hidden width (fastai: 1152).
const DEFAULT_HIDDEN_SIZE: usize = 600;
/// Default number of LSTM layers (as fastai).
const DEFAULT_LAYERS: usize = 3;
/// Default number of epochs (fastai's WikiText-103 run: 12).
const DEFAULT_EPOCHS: usize = 1;

/// Data and model options shared by `pretrain` and `lr-find`.
#[derive(Debug, Args)]
pub struct LmArgs {
    /// Training corpora (`--corpus A B` or `--corpus A --corpus B`): files or folders, see
    /// `--format`. Labels are ignored. Optional when the output folder already has
    /// `train.tok`.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub corpus: Vec<PathBuf>,

    /// Vocabulary folder from `ulmfit vocab build`. Default: build one from the corpus
    /// (words seen at least 3 times, at most 60,000 tokens) or reuse the output folder's.
    #[arg(long, value_name = "DIR")]
    pub vocab: Option<PathBuf>,

    /// Validation text, numericalized into the output folder's `valid.tok`.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub valid: Vec<PathBuf>,

    /// Rows per batch [default: 64; fastai's WikiText-103 run: 256].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,

    /// Tokens per window for backpropagation through time [default: 80, as fastai].
    #[arg(long, value_name = "N")]
    pub bptt: Option<usize>,

    /// Embedding width [default: 200; fastai: 400].
    #[arg(long, value_name = "N")]
    pub embedding_size: Option<usize>,

    /// Hidden width of every LSTM layer but the last [default: 600; fastai: 1152].
    #[arg(long, value_name = "N")]
    pub hidden_size: Option<usize>,

    /// Number of LSTM layers [default: 3, as fastai].
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,

    /// Train on every document's tokens in reverse order (the backward model of a
    /// ULMFiT ensemble).
    #[arg(long)]
    pub backwards: bool,

    /// Seed of the weight initialisation, data order and dropout masks [default: 0].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,

    #[arg(long, default_value = "cpu", value_name = "DEVICE", help = DEVICE_HELP)]
    pub device: DeviceSpec,

    #[command(flatten)]
    pub data: DataArgs,
}

/// Arguments of `ulmfit pretrain`.
#[derive(Debug, Args)]
#[command(after_help = "\
Defaults follow fastai's WikiText-103 recipe: one-cycle schedule (fastai 2.x shape: 25% \
warm-up from lr/10, annealing to lr/1e5), momentum 0.8 -> 0.7 -> 0.8, Adam with decoupled \
weight decay 0.1 (none on biases), dropout multiplier 0.1, AR 2, TAR 1, gradient clipping \
at norm 0.1, learning rate 1e-2, bptt 80. For CPU practicality these defaults differ: \
batch size 64 (fastai 256), embedding 200 (400), hidden 600 (1152), 1 epoch (12), and \
training runs in f32 (fastai used fp16 on a GPU).")]
pub struct PretrainArgs {
    /// Output folder: working files, checkpoint and, at the end, the model folder.
    /// Optional with `--resume`.
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    pub out: Option<PathBuf>,

    #[command(flatten)]
    pub lm: LmArgs,

    /// Number of epochs [default: 1; fastai's WikiText-103 run: 12].
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,

    /// Peak learning rate of the one-cycle schedule [default: 0.01, as fastai].
    #[arg(long, value_name = "X")]
    pub lr: Option<f64>,

    /// Also write a checkpoint every N optimizer steps (one is always written at each
    /// epoch end).
    #[arg(long, value_name = "N")]
    pub save_every: Option<usize>,

    /// Continue the run in this output folder with its saved settings. Options given
    /// again must have their saved values.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,

    /// Append one JSON object per epoch to this file. The run folder records it, so
    /// `--resume` without this option keeps appending to the same file.
    #[arg(long, value_name = "FILE")]
    pub log_json: Option<PathBuf>,

    /// Format of the matrix products of the LSTM layers and the decoder: f32, or bf16
    /// (inputs rounded to bfloat16, f32 sums, parameters kept in f32). bf16 needs a CPU
    /// with AVX512-BF16, and without it the command fails. Saved with the run, so a
    /// resumed run keeps it [default: f32].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub precision: Option<TrainPrecision>,
}

/// Arguments of `ulmfit lr-find`.
#[derive(Debug, Args)]
pub struct LrFindArgs {
    /// Working folder for the vocabulary and token files (the same as `pretrain --out`
    /// reuses them).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    #[command(flatten)]
    pub lm: LmArgs,

    /// Learning rate of the first step.
    #[arg(long, default_value_t = 1e-7, value_name = "X")]
    pub start_lr: f64,

    /// Learning rate reached after `--iterations` steps.
    #[arg(long, default_value_t = 10.0, value_name = "X")]
    pub end_lr: f64,

    /// Number of steps of the sweep (at least 6).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub iterations: usize,

    /// Write the loss against the learning rate to this SVG or PNG file.
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    pub plot: Option<PathBuf>,
}

/// Runs `ulmfit pretrain`.
pub fn run_pretrain(args: PretrainArgs, progress: bool) -> anyhow::Result<()> {
    let device = select_device(args.lm.device)?;
    let dir = match (&args.resume, &args.out) {
        (Some(resume), Some(out)) if resume != out => bail!(
            "--resume {} and --out {} name different folders; drop --out when resuming",
            resume.display(),
            out.display()
        ),
        (Some(dir), _) | (None, Some(dir)) => dir.clone(),
        (None, None) => bail!("--out is required unless --resume is given"),
    };
    let checkpoint_dir = dir.join(CHECKPOINT_DIR);
    let resuming = args.resume.is_some();
    if !resuming && checkpoint_dir.exists() {
        bail!(
            "{} already contains a training run; pass --resume {} to continue it, or choose another --out",
            dir.display(),
            dir.display()
        );
    }
    fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;

    let precision = args.precision.map(TrainPrecision::checked).transpose()?;
    let prepared = prepare_vocab(&args.lm, &dir, progress)?;
    let spec = if resuming {
        let saved = PretrainSpec::load(&dir)?;
        check_spec(&args.lm, precision, &saved)?;
        saved
    } else {
        let spec = new_spec(
            &args.lm,
            prepared.vocab.len(),
            Some(precision.unwrap_or_default()),
        );
        spec.save(&dir)?;
        spec
    };
    let data = prepare_data(&args.lm, &dir, &prepared, resuming, progress)?;

    let settings = pretrain::wt103_settings(
        args.epochs.unwrap_or(DEFAULT_EPOCHS),
        args.lr.unwrap_or(WT103_LR),
        args.lm.seed.unwrap_or(0),
        args.save_every,
    );
    let given = given_settings(&args)?;
    let precision = run_precision(spec.precision, precision)?;
    precision.check_cpu()?;
    let mut task = pretrain::build_task(&spec, &data, settings.seed, &device)?;
    task.set_precision(precision);
    tracing::info!(
        "training on {} windows of {} x {} tokens per epoch",
        task.layout().n_batches,
        spec.batch_size,
        spec.bptt
    );
    let options = RunOptions {
        checkpoint_dir: Some(checkpoint_dir),
        config: serde_json::to_value(&spec)?,
        json_log: log_file_of_run(&dir, args.log_json.as_deref(), resuming)?,
        progress,
        item_unit: "tokens",
        ..RunOptions::default()
    };
    let outcome = pretrain::train(task, settings, resuming.then_some(&given), options)?;

    let folder_config = ModelFolderConfig {
        kind: ModelKind::LanguageModel,
        model: spec.model.clone(),
        backwards: spec.backwards,
    };
    model_folder::save(
        &dir,
        &folder_config,
        &outcome.model,
        &prepared.vocab,
        &prepared.rules,
        prepared.subword.as_ref(),
    )
    .with_context(|| format!("failed to write the model folder {}", dir.display()))?;

    let mut summary = serde_json::json!({ "model": dir.display().to_string(), "epochs_run": outcome.records.len() });
    if let Some(last) = outcome.records.last() {
        summary["epoch"] = last.epoch.into();
        summary["train_loss"] = last.train_loss.into();
        summary["valid_loss"] = last.valid_loss.into();
        summary["tokens_per_second"] = last.items_per_second.into();
        for (name, value) in &last.metrics {
            summary[name] = (*value).into();
        }
    }
    println!("{summary}");
    Ok(())
}

/// Runs `ulmfit lr-find`.
pub fn run_lr_find(args: LrFindArgs, progress: bool) -> anyhow::Result<()> {
    let device = select_device(args.lm.device)?;
    if let Some(plot) = &args.plot {
        let extension = plot.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !extension.eq_ignore_ascii_case("svg") && !extension.eq_ignore_ascii_case("png") {
            bail!(
                "--plot {}: unsupported plot format; use a .svg or .png file name",
                plot.display()
            );
        }
    }
    if !(args.start_lr > 0.0 && args.end_lr > args.start_lr) {
        bail!(
            "--start-lr {} and --end-lr {} must satisfy 0 < start < end",
            args.start_lr,
            args.end_lr
        );
    }
    fs::create_dir_all(&args.out)
        .with_context(|| format!("failed to create {}", args.out.display()))?;
    let prepared = prepare_vocab(&args.lm, &args.out, progress)?;
    let spec = new_spec(&args.lm, prepared.vocab.len(), None);
    let data = prepare_data(&args.lm, &args.out, &prepared, false, progress)?;
    let seed = args.lm.seed.unwrap_or(0);
    let settings = pretrain::wt103_settings(1, WT103_LR, seed, None);
    let mut task = pretrain::build_task(&spec, &data, seed, &device)?;
    let finder = LrFinder {
        start_lr: args.start_lr,
        end_lr: args.end_lr,
        num_it: args.iterations,
        stop_div: true,
    };
    let result = pretrain::find_lr(&mut task, &finder, &settings)?;
    if let Some(plot) = &args.plot {
        result.plot(plot)?;
        tracing::info!("wrote {}", plot.display());
    }
    let suggestion = result.valley();
    println!(
        "{}",
        serde_json::json!({
            "suggested_lr": suggestion,
            "steps": result.lrs.len(),
            "lrs": result.lrs,
            "losses": result.losses,
        })
    );
    match suggestion {
        Some(lr) => tracing::info!("suggested learning rate (valley): {lr:.3e}"),
        None => tracing::warn!("no suggestion: the sweep stopped before the loss had a valley; lower --start-lr or raise --iterations"),
    }
    Ok(())
}

/// A vocabulary loaded from the output folder, with its tokenizer.
struct PreparedVocab {
    tokenizer: Tokenizer,
    vocab: Vocab,
    rules: String,
    subword: Option<SubwordModel>,
}

/// Returns the output folder's vocabulary, first copying it from `--vocab` or building
/// it from the corpus when the folder has none.
fn prepare_vocab(lm: &LmArgs, dir: &Path, progress: bool) -> anyhow::Result<PreparedVocab> {
    let has_vocab = dir.join(VOCAB_JSON).exists();
    match (&lm.vocab, has_vocab) {
        (Some(source), true) => {
            let (_, given) = load_tokenizer(source)?;
            let (_, existing) = load_tokenizer(dir)?;
            if given.content_hash() != existing.content_hash() {
                bail!(
                    "--vocab {} differs from the vocabulary already in {}; choose another output folder",
                    source.display(),
                    dir.display()
                );
            }
        }
        (Some(source), false) => {
            load_tokenizer(source)?;
            for name in [VOCAB_TXT, VOCAB_JSON, TOKENIZER_JSON] {
                let from = source.join(name);
                if from.exists() {
                    let to = dir.join(name);
                    fs::copy(&from, &to).with_context(|| {
                        format!("failed to copy {} to {}", from.display(), to.display())
                    })?;
                }
            }
        }
        (None, true) => tracing::info!("reusing the vocabulary in {}", dir.display()),
        (None, false) => build_vocab(lm, dir, progress)?,
    }
    let (tokenizer, vocab) = load_tokenizer(dir)?;
    let (_, header) = Vocab::load_with_header(dir)?;
    let subword = match header.kind {
        VocabKind::Word => None,
        VocabKind::Unigram | VocabKind::Bpe => Some(SubwordModel::load(dir)?),
    };
    Ok(PreparedVocab {
        tokenizer,
        vocab,
        rules: header.rules,
        subword,
    })
}

/// Counts the corpus tokens with fastai's rules and saves the vocabulary in `dir`.
fn build_vocab(lm: &LmArgs, dir: &Path, progress: bool) -> anyhow::Result<()> {
    if lm.corpus.is_empty() {
        bail!("--corpus is required to build the vocabulary (or pass --vocab DIR)");
    }
    let tokenizer = Tokenizer::word(RuleSet::by_name("fastai")?);
    let options = lm.data.read_options(LabelRequirement::Ignored);
    let spinner = document_spinner("counting tokens", progress);
    let mut counter = TokenCounter::new();
    for_each_chunk(&lm.corpus, &options, &spinner, true, |documents| {
        let (chunk_counter, _) = count_tokens(&tokenizer, &documents)?;
        counter.merge(chunk_counter);
        Ok(())
    })?;
    spinner.finish_and_clear();
    let vocab = counter.build(DEFAULT_MIN_FREQ, DEFAULT_MAX_VOCAB);
    vocab
        .save(dir, &tokenizer.rules().name, VocabKind::Word)
        .with_context(|| format!("failed to save the vocabulary in {}", dir.display()))?;
    tracing::info!(
        "built a vocabulary of {} tokens from {} distinct ones",
        vocab.len(),
        counter.len()
    );
    Ok(())
}

/// Sources of a token file, stored beside it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Sources {
    /// Each input path with its size in bytes (0 for folders).
    paths: Vec<(PathBuf, u64)>,
    /// The reader options, as their debug text.
    read_options: String,
    /// SHA-256 of the vocabulary.
    vocab_sha256: String,
}

fn sources_path(token_file: &Path) -> PathBuf {
    token_file.with_extension("sources.json")
}

/// Numericalizes `paths` into `out`, unless `out` already contains the same inputs
/// numericalized with the same vocabulary.
fn ensure_token_file(
    paths: &[PathBuf],
    options: &ReadOptions,
    prepared: &PreparedVocab,
    out: &Path,
    progress: bool,
) -> anyhow::Result<()> {
    let vocab_hash = prepared.vocab.content_hash();
    let mut sized = Vec::with_capacity(paths.len());
    for path in paths {
        let metadata =
            fs::metadata(path).with_context(|| format!("corpus {} not found", path.display()))?;
        let absolute = fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        // NOTE: a folder's size is recorded as 0, so edits inside a folder corpus are
        // not detected; delete the token file to rebuild it.
        let bytes = if metadata.is_file() {
            metadata.len()
        } else {
            0
        };
        sized.push((absolute, bytes));
    }
    let sources = Sources {
        paths: sized,
        read_options: format!("{options:?}"),
        vocab_sha256: vocab_hash.clone(),
    };
    let record = sources_path(out);
    let recorded: Option<Sources> = fs::read_to_string(&record)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    if recorded.as_ref() == Some(&sources) && TokenFile::open(out, Some(&vocab_hash)).is_ok() {
        tracing::info!("reusing {}", out.display());
        return Ok(());
    }

    let mut writer = TokenFileWriter::create(out, prepared.vocab.len() as u64, &vocab_hash, None)
        .with_context(|| format!("failed to create token file {}", out.display()))?;
    let spinner = document_spinner("numericalizing", progress);
    for_each_chunk(paths, options, &spinner, true, |documents| {
        let encoded = encode_documents(&prepared.tokenizer, &prepared.vocab, None, &documents)?;
        for (ids, _) in encoded {
            writer.push_document(&ids, None)?;
        }
        Ok(())
    })?;
    spinner.finish_and_clear();
    let (documents, tokens) = (writer.n_documents(), writer.n_tokens());
    writer
        .finish()
        .with_context(|| format!("failed to write token file {}", out.display()))?;
    fs::write(&record, serde_json::to_string_pretty(&sources)? + "\n")
        .with_context(|| format!("failed to write {}", record.display()))?;
    tracing::info!(
        "wrote {documents} documents, {tokens} tokens to {}",
        out.display()
    );
    Ok(())
}

/// Prepares `train.tok` and, with `--valid` (or an existing `valid.tok` when resuming),
/// `valid.tok` in `dir`.
fn prepare_data(
    lm: &LmArgs,
    dir: &Path,
    prepared: &PreparedVocab,
    resuming: bool,
    progress: bool,
) -> anyhow::Result<PretrainData> {
    let options = lm.data.read_options(LabelRequirement::Ignored);
    let train = dir.join(TRAIN_TOKENS);
    if !lm.corpus.is_empty() {
        ensure_token_file(&lm.corpus, &options, prepared, &train, progress)?;
    } else if !train.exists() {
        bail!(
            "--corpus is required: {} has no {TRAIN_TOKENS} yet",
            dir.display()
        );
    }
    let valid_path = dir.join(VALID_TOKENS);
    let valid = if !lm.valid.is_empty() {
        ensure_token_file(&lm.valid, &options, prepared, &valid_path, progress)?;
        Some(valid_path)
    } else if resuming && valid_path.exists() {
        Some(valid_path)
    } else {
        None
    };
    Ok(PretrainData {
        train,
        valid,
        vocab_hash: prepared.vocab.content_hash(),
    })
}

/// Returns the spec of a new run from the options and fastai's defaults.
fn new_spec(lm: &LmArgs, vocab_size: usize, precision: Option<Precision>) -> PretrainSpec {
    let mut model = AwdLstmConfig::language_model(vocab_size);
    model.embedding_size = lm.embedding_size.unwrap_or(DEFAULT_EMBEDDING_SIZE);
    model.hidden_size = lm.hidden_size.unwrap_or(DEFAULT_HIDDEN_SIZE);
    model.layers = lm.layers.unwrap_or(DEFAULT_LAYERS);
    model.dropout_multiplier = WT103_DROPOUT_MULTIPLIER;
    PretrainSpec {
        model,
        batch_size: lm.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
        bptt: lm.bptt.unwrap_or(WT103_BPTT),
        backwards: lm.backwards,
        ar_alpha: DEFAULT_AR_ALPHA,
        tar_beta: DEFAULT_TAR_BETA,
        precision,
    }
}

/// Returns the precision of a run from the saved one (`None` for a new run or a spec
/// written before it was saved) and `--precision`: the saved one, else the given one,
/// else f32. Giving another value than the saved one is an error that names it.
fn run_precision(
    saved: Option<Precision>,
    given: Option<Precision>,
) -> Result<Precision, TrainError> {
    match (saved, given) {
        (Some(saved), Some(given)) if saved != given => Err(TrainError::ResumeMismatch {
            setting: "precision".into(),
            saved: saved.name().into(),
            given: given.name().into(),
        }),
        _ => Ok(saved.or(given).unwrap_or_default()),
    }
}

/// Checks the data, model and precision options given again when resuming against the
/// saved spec.
fn check_spec(
    lm: &LmArgs,
    precision: Option<Precision>,
    saved: &PretrainSpec,
) -> Result<(), TrainError> {
    run_precision(saved.precision, precision)?;
    let pairs = [
        ("batch_size", lm.batch_size, saved.batch_size),
        ("bptt", lm.bptt, saved.bptt),
        (
            "embedding_size",
            lm.embedding_size,
            saved.model.embedding_size,
        ),
        ("hidden_size", lm.hidden_size, saved.model.hidden_size),
        ("layers", lm.layers, saved.model.layers),
    ];
    for (setting, given, saved_value) in pairs {
        if let Some(given) = given.filter(|&given| given != saved_value) {
            return Err(TrainError::ResumeMismatch {
                setting: setting.into(),
                saved: saved_value.to_string(),
                given: given.to_string(),
            });
        }
    }
    if lm.backwards && !saved.backwards {
        return Err(TrainError::ResumeMismatch {
            setting: "backwards".into(),
            saved: "false".into(),
            given: "true".into(),
        });
    }
    Ok(())
}

/// Returns the trainer settings given on the command line, serialized as the checkpoint
/// stores them, for [`crate::train::TrainSettings::check_given`].
fn given_settings(
    args: &PretrainArgs,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut given = serde_json::Map::new();
    if let Some(epochs) = args.epochs {
        given.insert("epochs".into(), epochs.into());
    }
    if let Some(lr) = args.lr {
        given.insert(
            "lr".into(),
            serde_json::to_value(crate::train::LrSpec::Value(lr))?,
        );
    }
    if let Some(seed) = args.lm.seed {
        given.insert("seed".into(), seed.into());
    }
    if let Some(save_every) = args.save_every {
        given.insert("save_every".into(), save_every.into());
    }
    Ok(given)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_precision_prefers_saved_then_given() {
        use Precision::{Bf16, F32};
        assert_eq!(run_precision(None, None).unwrap(), F32);
        // A spec written before the precision was saved takes the given one.
        assert_eq!(run_precision(None, Some(Bf16)).unwrap(), Bf16);
        assert_eq!(run_precision(Some(Bf16), None).unwrap(), Bf16);
        assert_eq!(run_precision(Some(Bf16), Some(Bf16)).unwrap(), Bf16);
        let error = run_precision(Some(F32), Some(Bf16)).unwrap_err();
        assert!(error.to_string().contains("`precision`"), "{error}");
    }

    #[test]
    fn spec_without_precision_loads_as_unsaved() {
        let mut spec = new_spec_for_test();
        spec.precision = None;
        let json = serde_json::to_string(&spec).unwrap();
        assert!(!json.contains("precision"), "{json}");
        let loaded: PretrainSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(loaded.precision, None);
    }

    fn new_spec_for_test() -> PretrainSpec {
        PretrainSpec {
            model: AwdLstmConfig::language_model(10),
            batch_size: 2,
            bptt: 3,
            backwards: false,
            ar_alpha: DEFAULT_AR_ALPHA,
            tar_beta: DEFAULT_TAR_BETA,
            precision: Some(Precision::Bf16),
        }
    }
}
