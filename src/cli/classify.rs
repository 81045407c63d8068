//! `ulmfit classify`: train a ULMFiT text classifier on a fine-tuned language model with
//! fastai's gradual unfreezing, and write a classifier folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use super::data::DataArgs;
use super::precision::TrainPrecision;
use super::training::{
    absolute_path, log_file_of_run, run_folder, select_device, DeviceSpec, DEVICE_HELP,
};
use crate::model::classifier::{DEFAULT_BPTT, DEFAULT_HEAD_HIDDEN, DEFAULT_MAX_LEN};
use crate::model::{Classifier, ClassifierConfig, DropoutConfig};
use crate::pipeline::classify::{
    balanced_weights, check_classes, gradual_unfreezing, split_labels, stage_settings, BatchOrder,
    ClassifierTask, LabelledDocuments, DEFAULT_CLASSIFIER_LR, DEFAULT_FINAL_EPOCHS,
    DEFAULT_MULTI_LABEL_THRESHOLD, RUN_INPUTS_FILE,
};
use crate::pipeline::finetune::{run_stages, StageRun, STAGE_CHECKPOINT_PREFIX};
use crate::pipeline::model_folder;
use crate::pipeline::predict::{
    save_classifier, ClassifierFolderConfig, MultiLabel, CLASSIFIER_KIND,
};
use crate::rng::Rng;
use crate::text::readers::{read_all, Document, LabelRequirement};
use crate::text::BOS;
use crate::train::{RunOptions, TrainError, TrainTask};

/// Class weighting of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClassWeights {
    /// Weight class c by `n / (classes * count_c)`, as scikit-learn's `balanced`.
    Balanced,
}

/// Arguments of `ulmfit classify`.
#[derive(Debug, Args)]
#[command(after_help = "\
Defaults follow fastai 2.x's IMDb text classifier: drop_mult 0.5, bptt 72, max_len 1440, \
a head of 50 hidden units, one-cycle with momentum 0.8 -> 0.7 -> 0.8, and gradual \
unfreezing: the head for 1 epoch at lr; the last two groups 1 epoch at slice(lr/2/2.6^4, \
lr/2); the last three 1 epoch at slice(lr/4/2.6^4, lr/4); everything for --epochs epochs at \
slice(lr/20/2.6^4, lr/20).")]
pub struct ClassifyArgs {
    /// Language-model folder (from `ulmfit lm-finetune` or `pretrain`) whose encoder and
    /// vocabulary the classifier uses. Optional with `--resume`.
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    pub encoder: Option<PathBuf>,

    /// Labelled training data: class folders, CSV or JSONL (see `--format`). Optional
    /// with `--resume`.
    #[arg(long, num_args = 1.., required_unless_present = "resume", value_name = "PATH")]
    pub data: Vec<PathBuf>,

    /// Output classifier folder. It also contains the run's settings (`classify.json`)
    /// and a checkpoint folder per stage.
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    pub out: Option<PathBuf>,

    /// Continue the run whose output folder is DIR, with the settings, encoder and data
    /// saved there. An option given again with a different value than the saved one is
    /// an error. `--encoder`, `--data` and `--valid` may name moved copies, but the
    /// documents read must be the same, so give the data options of the first run again.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,

    /// Write a checkpoint every N optimizer steps, besides the end of each epoch.
    #[arg(long, value_name = "N")]
    pub save_every: Option<usize>,

    /// Stop after N optimizer steps over all stages, leaving checkpoints to resume from
    /// (for time-boxed runs).
    #[arg(long, value_name = "N", hide = true)]
    pub max_steps: Option<usize>,

    /// Labelled validation data. Default: a random `--valid-fraction` of `--data`.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub valid: Vec<PathBuf>,

    /// Share of `--data` held out for validation when `--valid` is not given.
    #[arg(long, default_value_t = 0.1, value_name = "F")]
    pub valid_fraction: f64,

    /// Read every document backwards (default: the encoder folder's direction).
    #[arg(long)]
    pub backwards: bool,

    /// Tokens per encoder chunk.
    #[arg(long, default_value_t = DEFAULT_BPTT, value_name = "N")]
    pub bptt: usize,

    /// Pool the outputs of the chunks within the last N tokens of each document.
    #[arg(long, default_value_t = DEFAULT_MAX_LEN, value_name = "N")]
    pub max_len: usize,

    /// Hidden units of the head.
    #[arg(long, default_value_t = DEFAULT_HEAD_HIDDEN, value_name = "N")]
    pub hidden: usize,

    /// Dropout multiplier of the classifier dropout set.
    #[arg(long, default_value_t = 0.5, value_name = "X")]
    pub drop_mult: f32,

    /// Weight the loss per class.
    #[arg(long, value_enum, value_name = "MODE")]
    pub class_weights: Option<ClassWeights>,

    /// Epochs of the last, fully unfrozen stage.
    #[arg(long, default_value_t = DEFAULT_FINAL_EPOCHS, value_name = "N")]
    pub epochs: usize,

    /// Peak learning rate of the first stage; later stages use lr/2, lr/4 and lr/20.
    #[arg(long, default_value_t = DEFAULT_CLASSIFIER_LR, value_name = "X")]
    pub lr: f64,

    /// Documents per batch (fastai's default 64; its IMDb example uses 128).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub batch_size: usize,

    /// Train a multi-label classifier: each label lists classes separated by
    /// `--label-delimiter`, the outputs are independent sigmoids trained with binary
    /// cross-entropy, and a prediction is every class at or above `--threshold`.
    #[arg(long)]
    pub multi_label: bool,

    /// Separator of the classes in a multi-label label.
    #[arg(
        long,
        default_value = "|",
        value_name = "TEXT",
        requires = "multi_label"
    )]
    pub label_delimiter: String,

    /// Probability at or above which a multi-label prediction includes a class.
    #[arg(long, default_value_t = DEFAULT_MULTI_LABEL_THRESHOLD, value_name = "P", requires = "multi_label")]
    pub threshold: f32,

    /// Order of the training documents: `sortish` (fastai) groups similar lengths;
    /// `shuffled` draws random batches, which keeps BatchNorm's statistics consistent
    /// between training and prediction when features depend on document length (short
    /// texts, a weakly trained encoder), at the cost of longer padded batches.
    #[arg(long, value_enum, default_value_t = BatchOrder::Sortish, value_name = "ORDER")]
    pub batch_order: BatchOrder,

    /// Seed of the head initialisation, validation split, data order and dropout.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,

    /// Append one JSON object per epoch to this file. The run folder records it, so
    /// `--resume` without this option keeps appending to the same file.
    #[arg(long, value_name = "FILE")]
    pub log_json: Option<PathBuf>,

    #[arg(long, default_value = "cpu", value_name = "DEVICE", help = DEVICE_HELP)]
    pub device: DeviceSpec,

    /// Format of the matrix products of the encoder's LSTM layers: f32, or bf16
    /// (inputs rounded to bfloat16, f32 sums, parameters kept in f32). bf16 needs a CPU
    /// with AVX512-BF16; without it the command fails.
    #[arg(long, value_enum, default_value = "f32", value_name = "FORMAT")]
    pub precision: TrainPrecision,

    #[command(flatten)]
    pub data_options: DataArgs,
}

/// File in the output folder with the settings of a run.
const SETTINGS_FILE: &str = "classify.json";

/// The options of a run that must stay the same when it is resumed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct RunSettings {
    valid_fraction: f64,
    backwards: bool,
    bptt: usize,
    max_len: usize,
    hidden: usize,
    drop_mult: f32,
    class_weights: bool,
    epochs: usize,
    lr: f64,
    batch_size: usize,
    multi_label: bool,
    label_delimiter: String,
    threshold: f32,
    batch_order: BatchOrder,
    seed: u64,
    save_every: Option<usize>,
    #[serde(default)]
    precision: TrainPrecision,
}

impl RunSettings {
    fn of(args: &ClassifyArgs) -> Self {
        Self {
            valid_fraction: args.valid_fraction,
            backwards: args.backwards,
            bptt: args.bptt,
            max_len: args.max_len,
            hidden: args.hidden,
            drop_mult: args.drop_mult,
            class_weights: args.class_weights.is_some(),
            epochs: args.epochs,
            lr: args.lr,
            batch_size: args.batch_size,
            multi_label: args.multi_label,
            label_delimiter: args.label_delimiter.clone(),
            threshold: args.threshold,
            batch_order: args.batch_order,
            seed: args.seed,
            save_every: args.save_every,
            precision: args.precision,
        }
    }

    fn apply(&self, args: &mut ClassifyArgs) {
        args.valid_fraction = self.valid_fraction;
        args.backwards = self.backwards;
        args.bptt = self.bptt;
        args.max_len = self.max_len;
        args.hidden = self.hidden;
        args.drop_mult = self.drop_mult;
        args.class_weights = self.class_weights.then_some(ClassWeights::Balanced);
        args.epochs = self.epochs;
        args.lr = self.lr;
        args.batch_size = self.batch_size;
        args.multi_label = self.multi_label;
        args.label_delimiter = self.label_delimiter.clone();
        args.threshold = self.threshold;
        args.batch_order = self.batch_order;
        args.seed = self.seed;
        args.save_every = self.save_every;
        args.precision = self.precision;
    }
}

/// The encoder and data of a run, as absolute paths, and a digest of the documents read.
/// A resumed run reads the paths not given again and checks the digest, so it cannot
/// silently train on other documents.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct RunInputs {
    encoder: PathBuf,
    data: Vec<PathBuf>,
    valid: Vec<PathBuf>,
    /// SHA-256 of the labels and token ids of the training, then validation, documents.
    documents_sha256: String,
}

impl RunInputs {
    /// Reads the inputs recorded in the run folder `dir`, or `None` for a run folder
    /// written before runs recorded them.
    fn read(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(RUN_INPUTS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(error).with_context(|| format!("failed to read {}", path.display()))
            }
        };
        let inputs = serde_json::from_str(&text)
            .with_context(|| format!("invalid run inputs {}", path.display()))?;
        Ok(Some(inputs))
    }

    fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(RUN_INPUTS_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("failed to write {}", path.display()))
    }
}

/// Returns the hex SHA-256 of each document's label and token ids, set after set.
fn documents_digest<'a>(
    sets: impl IntoIterator<Item = (&'a Vec<String>, &'a Vec<Vec<u32>>)>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (labels, documents) in sets {
        hasher.update((labels.len() as u64).to_le_bytes());
        for (label, ids) in labels.iter().zip(documents) {
            hasher.update((label.len() as u64).to_le_bytes());
            hasher.update(label.as_bytes());
            hasher.update((ids.len() as u64).to_le_bytes());
            for id in ids {
                hasher.update(id.to_le_bytes());
            }
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Parses an argument list of `classify` alone, to read the options' defaults.
#[derive(Parser)]
struct DefaultArgs {
    #[command(flatten)]
    args: ClassifyArgs,
}

/// Saves the settings of a new run in `dir`, or, when resuming, loads the saved ones into
/// `args`. An option whose value differs both from its default (so it was given) and from
/// the saved value is an error that names it.
fn settings_of_run(args: &mut ClassifyArgs, dir: &Path, resuming: bool) -> anyhow::Result<()> {
    let path = dir.join(SETTINGS_FILE);
    let given = RunSettings::of(args);
    if !resuming {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        std::fs::write(&path, serde_json::to_string_pretty(&given)? + "\n")
            .with_context(|| format!("failed to write {}", path.display()))?;
        return Ok(());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read the run settings {}", path.display()))?;
    let saved: RunSettings = serde_json::from_str(&text)
        .with_context(|| format!("invalid run settings {}", path.display()))?;
    let defaults =
        DefaultArgs::try_parse_from(["classify", "--encoder", "-", "--data", "-", "--resume", "-"])
            .map(|defaults| RunSettings::of(&defaults.args))
            .context("failed to build the default settings")?;
    let (given_map, saved_map, default_map) = (
        serde_json::to_value(&given)?,
        serde_json::to_value(&saved)?,
        serde_json::to_value(&defaults)?,
    );
    for (name, value) in given_map.as_object().into_iter().flatten() {
        let saved_value = &saved_map[name];
        if value != &default_map[name] && value != saved_value {
            return Err(TrainError::ResumeMismatch {
                setting: name.clone(),
                saved: saved_value.to_string(),
                given: value.to_string(),
            }
            .into());
        }
    }
    saved.apply(args);
    Ok(())
}

/// Runs `ulmfit classify`.
pub fn run(mut args: ClassifyArgs, progress: bool) -> anyhow::Result<()> {
    let out = run_folder(
        args.out.as_ref(),
        args.resume.as_ref(),
        STAGE_CHECKPOINT_PREFIX,
    )?;
    let resuming = args.resume.is_some();
    // Checked before the settings are saved and the data is read and tokenized, which
    // can take minutes.
    for (option, value) in [("--batch-size", args.batch_size), ("--bptt", args.bptt)] {
        if value == 0 {
            bail!("invalid {option} 0: it must be at least 1");
        }
    }
    if !(0.0..1.0).contains(&args.valid_fraction) {
        bail!(
            "--valid-fraction {} must lie in [0, 1)",
            args.valid_fraction
        );
    }
    settings_of_run(&mut args, &out, resuming)?;
    let saved_inputs = if resuming {
        RunInputs::read(&out)?
    } else {
        None
    };
    // A resumed run takes the inputs that are not given again from the record.
    if let Some(saved) = &saved_inputs {
        if args.encoder.is_none() {
            args.encoder = Some(saved.encoder.clone());
        }
        if args.data.is_empty() {
            args.data = saved.data.clone();
        }
        if args.valid.is_empty() {
            args.valid = saved.valid.clone();
        }
    }
    let missing: Vec<&str> = [
        ("--encoder", args.encoder.is_none()),
        ("--data", args.data.is_empty()),
    ]
    .into_iter()
    .filter_map(|(option, absent)| absent.then_some(option))
    .collect();
    let (Some(encoder_dir), true) = (args.encoder.clone(), missing.is_empty()) else {
        bail!(
            "give {} again: {} has no {RUN_INPUTS_FILE}, which runs record for --resume",
            missing.join(" and "),
            out.display()
        );
    };
    let device = select_device(args.device)?;
    let loaded = model_folder::load(&encoder_dir, &device).with_context(|| {
        format!(
            "failed to load the language model in {}",
            encoder_dir.display()
        )
    })?;
    let backwards = args.backwards || loaded.config.backwards;
    let options = args.data_options.read_options(LabelRequirement::Required);
    // Data options are not recorded, so a resumed run reads with the options given now.
    let data_hint = |what: &str| {
        let mut message = format!("failed to read the {what}");
        if resuming {
            message.push_str(
                "; the run folder does not record data options, so if the first run used \
                 --format, --text-column, --label-column, --no-header, --documents, --classes \
                 or --encoding, give them again",
            );
        }
        message
    };
    let train_docs = read_all(&args.data, &options)
        .with_context(|| data_hint("training data (--data)"))?
        .documents;
    let (train_docs, valid_docs) = if args.valid.is_empty() {
        split_validation(train_docs, args.valid_fraction, args.seed)
    } else {
        let valid_docs = read_all(&args.valid, &options)
            .with_context(|| data_hint("validation data (--valid)"))?;
        (train_docs, valid_docs.documents)
    };
    let labels = |docs: &[Document]| -> Vec<String> {
        docs.iter()
            .map(|d| d.label.clone().unwrap_or_default())
            .collect()
    };
    let (train_labels, valid_labels) = (labels(&train_docs), labels(&valid_docs));
    if args.multi_label {
        if args.label_delimiter.is_empty() {
            bail!("--label-delimiter must not be empty");
        }
        if !(args.threshold > 0.0 && args.threshold < 1.0) {
            bail!("--threshold {} must lie in (0, 1)", args.threshold);
        }
        if args.class_weights.is_some() {
            bail!(
                "--class-weights applies to single-label training only; drop it or --multi-label"
            );
        }
    }
    let delimiter = args.label_delimiter.as_str();
    // Every class named in a label counts once, so a multi-label document counts for each
    // of its classes.
    let flatten = |labels: &[String]| -> Vec<String> {
        match args.multi_label {
            true => labels
                .iter()
                .flat_map(|label| split_labels(label, delimiter))
                .map(str::to_string)
                .collect(),
            false => labels.to_vec(),
        }
    };
    let classes = check_classes(&flatten(&train_labels), &flatten(&valid_labels))?;
    let class_id = |label: &str| classes.iter().position(|c| c == label).unwrap_or(0) as u32;
    let label_ids = |labels: &[String]| -> (Vec<u32>, Vec<Vec<u32>>) {
        match args.multi_label {
            true => (
                Vec::new(),
                labels
                    .iter()
                    .map(|label| {
                        split_labels(label, delimiter)
                            .into_iter()
                            .map(class_id)
                            .collect()
                    })
                    .collect(),
            ),
            false => (labels.iter().map(|l| class_id(l)).collect(), Vec::new()),
        }
    };
    let encode = |docs: &[Document]| -> anyhow::Result<Vec<Vec<u32>>> {
        let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
        let tokens = loaded.tokenizer.tokenize_all(&texts)?;
        Ok(tokens
            .iter()
            .map(|tokens| {
                let mut ids = loaded.vocab.encode(tokens);
                if ids.is_empty() {
                    ids.push(loaded.vocab.id(BOS));
                }
                if backwards {
                    ids.reverse();
                }
                ids
            })
            .collect())
    };
    let (train_ids, valid_ids) = (encode(&train_docs)?, encode(&valid_docs)?);
    let inputs = RunInputs {
        encoder: absolute_path(&encoder_dir)?,
        data: args
            .data
            .iter()
            .map(|path| absolute_path(path))
            .collect::<anyhow::Result<_>>()?,
        valid: args
            .valid
            .iter()
            .map(|path| absolute_path(path))
            .collect::<anyhow::Result<_>>()?,
        documents_sha256: documents_digest([
            (&train_labels, &train_ids),
            (&valid_labels, &valid_ids),
        ]),
    };
    if let Some(saved) = &saved_inputs {
        if saved.documents_sha256 != inputs.documents_sha256 {
            bail!(
                "the documents read now differ from those of the run in {} (their labels or \
                 token ids changed); give the --data, --valid (or --valid-fraction split), \
                 --encoder and data options of the first run",
                out.display()
            );
        }
    }
    inputs.write(&out)?;
    let (labels, label_sets) = label_ids(&train_labels);
    let train = LabelledDocuments {
        ids: train_ids,
        labels,
        label_sets,
    };
    let (labels, label_sets) = label_ids(&valid_labels);
    let valid = LabelledDocuments {
        ids: valid_ids,
        labels,
        label_sets,
    };
    tracing::info!(
        "{} training and {} validation documents, {} classes: {}",
        train.ids.len(),
        valid.ids.len(),
        classes.len(),
        classes.join(", ")
    );

    let mut encoder = loaded.model.config().clone();
    encoder.dropout = DropoutConfig::CLASSIFIER;
    encoder.dropout_multiplier = args.drop_mult;
    let config = ClassifierConfig {
        encoder,
        n_classes: classes.len(),
        head_hidden: vec![args.hidden],
        bptt: args.bptt,
        max_len: args.max_len,
    };
    let mut rng = Rng::seed(args.seed);
    let mut model = Classifier::from_language_model(&loaded.model, config.clone(), &mut rng)?;
    model.set_precision(args.precision.checked()?);
    let weights = args
        .class_weights
        .map(|ClassWeights::Balanced| balanced_weights(&train.labels, classes.len()));
    let mut task = ClassifierTask::new(model, train, valid, args.batch_size, weights)?
        .with_batch_order(args.batch_order);
    if args.multi_label {
        task = task.with_multi_label(args.threshold)?;
    }

    let stages: Vec<_> = gradual_unfreezing(args.lr, args.epochs)
        .iter()
        .enumerate()
        .filter(|(_, stage)| stage.epochs > 0)
        .map(|(index, stage)| {
            (
                index,
                stage_settings(stage, index, args.seed, args.save_every),
            )
        })
        .collect();
    let run_options = RunOptions {
        json_log: log_file_of_run(&out, args.log_json.as_deref(), resuming)?,
        progress,
        item_unit: "documents",
        ..RunOptions::default()
    };
    let stage_run = StageRun {
        dir: Some(out.clone()),
        resume: resuming,
        max_steps: args.max_steps,
    };
    let outcome = run_stages(&mut task, &stages, &stage_run, &run_options)?;
    if !outcome.finished {
        println!(
            "{}",
            serde_json::json!({ "stopped": true, "resume": out.display().to_string() })
        );
        return Ok(());
    }
    let records = outcome.records;
    // The moving averages reflect the last few batches, which under sortish order
    // contain documents of one length range. The saved model uses the whole set's.
    let bar = statistics_bar(progress, task.train_documents());
    task.set_population_statistics(&mut |documents| bar.inc(documents as u64))?;
    bar.finish_and_clear();
    let final_metrics = task.validate()?;
    tracing::info!(
        "replaced the BatchNorm moving averages with the training set's statistics: \
         valid loss {:.4}{} (the last epoch's figures used the moving averages)",
        final_metrics.valid_loss,
        final_metrics
            .values
            .get("accuracy")
            .map(|accuracy| format!(", accuracy {accuracy:.4}"))
            .unwrap_or_default()
    );

    let folder = ClassifierFolderConfig {
        kind: CLASSIFIER_KIND.into(),
        model: config,
        classes: classes.clone(),
        backwards,
        multi_label: args.multi_label.then(|| MultiLabel {
            threshold: args.threshold,
            delimiter: args.label_delimiter.clone(),
        }),
    };
    save_classifier(&out, &folder, task.model(), &encoder_dir)?;
    let mut summary = serde_json::json!({ "model": out.display().to_string(), "classes": classes });
    if let Some(last) = records.last() {
        summary["train_loss"] = last.train_loss.into();
    }
    // Validation of the saved model, with the population statistics.
    summary["valid_loss"] = final_metrics.valid_loss.into();
    let mut per_class = serde_json::Map::new();
    for (name, value) in &final_metrics.values {
        let renamed = rename_class_metric(name, &classes);
        per_class.insert(renamed, (*value).into());
    }
    summary["metrics"] = per_class.into();
    println!("{summary}");
    Ok(())
}

/// Returns a progress bar over the training documents of the BatchNorm statistics
/// pass on stderr, hidden with `--quiet`.
fn statistics_bar(visible: bool, documents: usize) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    ProgressBar::new(documents as u64)
        .with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} documents, eta {eta}")
                .map(|style| style.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
        .with_message("BatchNorm statistics")
}

/// Renames `precision_3` to `precision_<class 3>`; other names stay.
fn rename_class_metric(name: &str, classes: &[String]) -> String {
    if let Some((metric, index)) = name.rsplit_once('_') {
        if let Ok(index) = index.parse::<usize>() {
            if let Some(class) = classes.get(index) {
                return format!("{metric}_{class}");
            }
        }
    }
    name.to_string()
}

/// Moves a seeded random `fraction` of `documents` into a validation set.
fn split_validation(
    mut documents: Vec<Document>,
    fraction: f64,
    seed: u64,
) -> (Vec<Document>, Vec<Document>) {
    let n_valid = (documents.len() as f64 * fraction).round() as usize;
    let mut rng = Rng::seed(seed ^ 0x0005_917e_d0c5);
    rng.shuffle(&mut documents);
    let valid = documents.split_off(documents.len() - n_valid);
    (documents, valid)
}
