//! `ulmfit vision`: train, apply and evaluate image classifiers.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::training::{select_device, DeviceSpec, DEVICE_HELP};
use crate::rng::Rng;
use crate::train::RunOptions;
use crate::vision::folder::ImageItem;
use crate::vision::folder::{
    evaluation_items, read_image_folder, FolderOptions, DEFAULT_VALID_FRACTION,
};
use crate::vision::image_data::read_rgb;
use crate::vision::model::{Backbone, ImageClassifier};
use crate::vision::train::{
    batch_tensor, checkpoint_dir, evaluate, fine_tune_stages, run_stages, ImageTask,
    DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_SIZE,
};

/// The `vision` subcommands.
#[derive(Debug, Subcommand)]
pub enum VisionCommand {
    /// Fine-tune a pretrained backbone with a new head on an image folder (fastai's
    /// `fine_tune`: frozen epochs at --lr, then unfrozen epochs at slice(lr/200, lr/2)).
    Train(TrainArgs),
    /// Classify images with a model folder and print one result per image, in input order.
    Predict(PredictArgs),
    /// Report accuracy, per-class precision, recall and F1 and the confusion matrix.
    Evaluate(EvaluateArgs),
}

/// Arguments of `ulmfit vision train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Image folder: `train/` and `val/` (or `valid/`) subfolders with one subfolder per
    /// class, or class subfolders directly (split by --valid-fraction). `test/` is ignored.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,

    /// Pretrained backbone: a TensorFlow Lite MobileNet (`.tflite`, such as
    /// mobilenet_v1_1.0_224_quant_embedding_extractor.tflite) or a torchvision
    /// ResNet-18/34 state dict (`.pth`).
    #[arg(long, value_name = "FILE")]
    pub backbone: PathBuf,

    /// Output model folder (config.json, the backbone file, weights.safetensors and
    /// checkpoint/).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Epochs with the whole network unfrozen.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub epochs: usize,

    /// Epochs with the backbone frozen (only the head trains), run first.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub frozen_epochs: usize,

    /// Base learning rate: the frozen stage peaks at it, the unfrozen stage at half of it
    /// for the head and 1/200 of it for the first backbone group.
    #[arg(long, default_value_t = DEFAULT_LR, value_name = "X")]
    pub lr: f64,

    /// Images per batch (at least 2); the last incomplete training batch is dropped.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_name = "N")]
    pub batch_size: usize,

    /// Side of the square model input in pixels.
    #[arg(long, default_value_t = DEFAULT_SIZE, value_name = "PIXELS")]
    pub size: usize,

    /// Share of the images held out for validation when the folder has no val/.
    #[arg(long, default_value_t = DEFAULT_VALID_FRACTION, value_name = "F")]
    pub valid_fraction: f64,

    /// Seed of the split, the head's initial weights, the data order, augmentation and
    /// dropout.
    #[arg(long, default_value_t = 42, value_name = "S")]
    pub seed: u64,

    /// Append one JSON object per epoch to this file.
    #[arg(long, value_name = "FILE")]
    pub log_json: Option<PathBuf>,

    #[arg(long, default_value = "cpu", value_name = "DEVICE", help = DEVICE_HELP)]
    pub device: DeviceSpec,
}

/// Arguments of `ulmfit vision predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Model folder written by `ulmfit vision train`.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Image files (BMP, JPEG, PNG, GIF or WebP).
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<PathBuf>,

    /// Print one JSON object per image: `{"image", "label", "probabilities"}` with the
    /// probabilities keyed by class.
    #[arg(long)]
    pub json: bool,

    /// Images scored together.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub batch_size: usize,

    #[arg(long, default_value = "cpu", value_name = "DEVICE", help = DEVICE_HELP)]
    pub device: DeviceSpec,
}

/// Arguments of `ulmfit vision evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Model folder written by `ulmfit vision train`.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Labelled image folder: its `val/` (or `valid/`) subfolder when it has `train/`
    /// and `val/`, else every class subfolder (`test/` is ignored).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,

    /// Print one JSON object: `accuracy` (fraction), `classes`, `per_class` (precision,
    /// recall, f1, support by class) and `confusion_matrix` (rows true, columns
    /// predicted, in `classes` order).
    #[arg(long)]
    pub json: bool,

    /// Images scored together.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub batch_size: usize,

    #[arg(long, default_value = "cpu", value_name = "DEVICE", help = DEVICE_HELP)]
    pub device: DeviceSpec,
}

/// Runs a `vision` subcommand.
pub fn run(command: VisionCommand, progress: bool) -> anyhow::Result<()> {
    match command {
        VisionCommand::Train(args) => train(args, progress),
        VisionCommand::Predict(args) => predict(args),
        VisionCommand::Evaluate(args) => evaluate_folder(args),
    }
}

/// Logs the files that failed to decode, by name, and their count.
fn warn_skipped(skipped: &[(PathBuf, String)]) {
    if skipped.is_empty() {
        return;
    }
    for (path, reason) in skipped {
        tracing::warn!("skipped {}: {reason}", path.display());
    }
    tracing::warn!("skipped {} files that could not be decoded", skipped.len());
}

fn train(args: TrainArgs, progress: bool) -> anyhow::Result<()> {
    if args.size < 32 {
        bail!("--size {} is too small; use at least 32 pixels", args.size);
    }
    let device = select_device(args.device)?;
    let options = FolderOptions {
        valid_fraction: args.valid_fraction,
        seed: args.seed,
        // Random crops of 35% of the area still see enough pixels at 1.5 x size.
        cache_side: Some((args.size as u32).saturating_mul(3) / 2),
        ..FolderOptions::default()
    };
    let dataset = read_image_folder(&args.data, &options)?;
    warn_skipped(&dataset.skipped);
    tracing::info!(
        "{} classes ({}), {} training and {} validation images",
        dataset.classes.len(),
        dataset.classes.join(", "),
        dataset.train.len(),
        dataset.valid.len()
    );
    let backbone = Backbone::load(&args.backbone, &device)?;
    let mut rng = Rng::seed(args.seed);
    let model = ImageClassifier::new(
        backbone,
        dataset.classes.clone(),
        args.size,
        &mut rng,
        &device,
    )?;
    let mut task = ImageTask::new(model, dataset.train, dataset.valid, args.batch_size, device)?;
    let run_options = RunOptions {
        checkpoint_dir: Some(checkpoint_dir(&args.out)),
        config: serde_json::to_value(&task.model().config)?,
        json_log: args.log_json.clone(),
        progress,
        item_unit: "images",
        ..RunOptions::default()
    };
    let stages = fine_tune_stages(args.lr, args.frozen_epochs, args.epochs, args.seed);
    if stages.is_empty() {
        bail!("--epochs and --frozen-epochs are both 0; nothing to train");
    }
    let records = run_stages(&mut task, stages, run_options)?;
    let model = task.into_model();
    model.save(&args.out, &args.backbone)?;
    if let Some(last) = records.last() {
        let accuracy = last.metrics.get("accuracy").copied().unwrap_or(f64::NAN);
        tracing::info!(
            "wrote {}: validation loss {:.4}, accuracy {:.4}",
            args.out.display(),
            last.valid_loss,
            accuracy
        );
    }
    Ok(())
}

fn predict(args: PredictArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = select_device(args.device)?;
    let mut model = ImageClassifier::load(&args.model, &device)?;
    let classes = model.config.classes.clone();
    let mut stdout = std::io::stdout().lock();
    for chunk in args.images.chunks(args.batch_size) {
        // Decode first so an unreadable image is reported by name before any output of
        // its batch.
        let items = chunk
            .iter()
            .map(|path| {
                let image = read_rgb(path)?;
                Ok(ImageItem {
                    path: path.clone(),
                    label: 0,
                    cached: Some(std::sync::Arc::new(image)),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let refs: Vec<&ImageItem> = items.iter().collect();
        let images = batch_tensor(&refs, model.config.size, None, &device)?;
        let probabilities = model.predict(&images)?.to_vec2::<f32>()?;
        for (path, row) in chunk.iter().zip(&probabilities) {
            let best = crate::model::classifier::argmax(row);
            if args.json {
                let scores: serde_json::Map<String, serde_json::Value> = classes
                    .iter()
                    .zip(row)
                    .map(|(class, &p)| (class.clone(), serde_json::json!(p)))
                    .collect();
                let line = serde_json::json!({
                    "image": path.display().to_string(),
                    "label": classes[best],
                    "probabilities": scores,
                });
                writeln!(stdout, "{line}")?;
            } else {
                let scores: Vec<String> = classes
                    .iter()
                    .zip(row)
                    .map(|(class, p)| format!("{class}={p:.4}"))
                    .collect();
                writeln!(
                    stdout,
                    "{}\t{}\t{}",
                    path.display(),
                    classes[best],
                    scores.join(" ")
                )?;
            }
        }
    }
    Ok(())
}

fn evaluate_folder(args: EvaluateArgs) -> anyhow::Result<()> {
    let device = select_device(args.device)?;
    let mut model = ImageClassifier::load(&args.model, &device)?;
    let cache_side = (model.config.size as u32).saturating_mul(3) / 2;
    let (items, skipped) = evaluation_items(&args.data, &model.config.classes, Some(cache_side))?;
    warn_skipped(&skipped);
    if items.is_empty() {
        bail!(
            "{} has no decodable images in class subfolders",
            args.data.display()
        );
    }
    let report = evaluate(&mut model, &items, args.batch_size, &device)
        .with_context(|| format!("failed to evaluate on {}", args.data.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
