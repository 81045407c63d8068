//! `ulmfit predict`: score texts with one or more classifier folders.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use super::data::{decode_line, DataArgs, InputName};
use super::precision::ScorePrecision;
use super::training::{select_device, DeviceSpec, DEVICE_HELP};
use crate::api::to_prediction;
use crate::pipeline::predict::{load_ensemble, LoadedClassifier, DEFAULT_PREDICT_BATCH};
use crate::text::encoding::Encoding;
use crate::text::readers::{detect_format, read_all, Format, LabelRequirement};

/// Arguments of `ulmfit predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub scoring: ScoringArgs,

    /// Texts to score. With neither texts nor `--input`, lines are read from stdin.
    #[arg(value_name = "TEXT")]
    pub texts: Vec<String>,

    /// Texts to score from a file. CSV, JSONL and folders of `.txt` files are read as
    /// `classify` reads `--data`, keeping only the text. Any other file contains one text
    /// per line (UTF-8), and `-` reads such lines from standard input.
    #[arg(long, value_name = "PATH")]
    pub input: Option<PathBuf>,

    /// Print one JSON object per text: `{"text", "label", "probabilities"}`, plus
    /// `"labels"` (every class at or above the threshold) for a multi-label classifier.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,

    /// Print CSV with a header: label, one probability column `p_CLASS` per class, then
    /// the text.
    #[arg(long)]
    pub csv: bool,

    #[command(flatten)]
    pub data_options: DataArgs,
}

/// Options of the commands that score texts with classifier folders (`predict`,
/// `evaluate`).
#[derive(Debug, Args)]
pub struct ScoringArgs {
    /// Classifier folder from `ulmfit classify` (repeatable: probabilities are averaged,
    /// as for a forward and backward ensemble). Default: `checkpoints/imdb-sentiment` in
    /// the crate folder.
    #[arg(long, value_name = "DIR")]
    pub model: Vec<PathBuf>,

    /// Texts scored together.
    #[arg(long, default_value_t = DEFAULT_PREDICT_BATCH, value_name = "N")]
    pub batch_size: usize,

    /// Format of the encoder's matrix products: f32; bf16 (weights rounded to
    /// bfloat16, f32 sums; needs AVX512-BF16); or int8 (weights quantised per row,
    /// activations per row, i32 sums; needs AVX512-VNNI). bf16 and int8 are faster on
    /// such CPUs and move probabilities slightly. Without the CPU feature the command
    /// fails.
    #[arg(long, value_enum, default_value = "f32", value_name = "FORMAT")]
    pub precision: ScorePrecision,

    #[arg(long, default_value = "cpu", value_name = "DEVICE", help = DEVICE_HELP)]
    pub device: DeviceSpec,
}

impl ScoringArgs {
    /// Checks the options and loads the `--model` folders (or the default model) as one
    /// ensemble on `--device`, with the products in `--precision`.
    pub fn load_models(&self) -> anyhow::Result<Vec<LoadedClassifier>> {
        if self.batch_size == 0 {
            bail!("invalid --batch-size 0: it must be at least 1");
        }
        let dirs = if self.model.is_empty() {
            let dir = default_model();
            if !dir.join("config.json").exists() {
                bail!(
                    "no --model given and the default model {} does not exist yet; train one with `ulmfit classify --out DIR` and pass --model DIR",
                    dir.display()
                );
            }
            vec![dir]
        } else {
            self.model.clone()
        };
        let precision = self.precision.checked()?;
        let device = select_device(self.device)?;
        let mut models = load_ensemble(&dirs, &device)?;
        for model in &mut models {
            model.set_precision(precision)?;
        }
        Ok(models)
    }
}

/// Returns the default classifier folder, `checkpoints/imdb-sentiment` in the crate.
pub(super) fn default_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints/imdb-sentiment")
}

/// Reads the texts of `--input`: the documents of a CSV, JSONL or folder input, or
/// every line of a plain-text file (empty lines included, so outputs match lines).
fn read_input(path: &Path, options: &DataArgs) -> anyhow::Result<Vec<String>> {
    let format = match options.format {
        Some(format) => format,
        None => detect_format(path)?,
    };
    if format != Format::Text {
        let read_options = options.read_options(LabelRequirement::Ignored);
        let report = read_all(&[path.to_path_buf()], &read_options)?;
        return Ok(report.documents.into_iter().map(|d| d.text).collect());
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    read_lines(
        std::io::BufReader::new(file),
        &InputName::File(path.to_path_buf()),
        options.encoding.get(),
    )
}

/// Reads every line of `reader` in `encoding` (a leading UTF-8 byte order mark and
/// `\r\n` line ends removed). Invalid UTF-8 is an error that names the input and line.
fn read_lines(
    mut reader: impl BufRead,
    name: &InputName,
    encoding: Encoding,
) -> anyhow::Result<Vec<String>> {
    let mut texts = Vec::new();
    let mut raw = Vec::new();
    for line in 1u64.. {
        raw.clear();
        if reader
            .read_until(b'\n', &mut raw)
            .with_context(|| format!("failed to read {name}"))?
            == 0
        {
            break;
        }
        let mut bytes = raw.strip_suffix(b"\n").unwrap_or(&raw);
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if line == 1 {
            bytes = encoding.strip_bom(bytes);
        }
        texts.push(decode_line(bytes, encoding, name, line)?.into_owned());
    }
    Ok(texts)
}

/// Runs `ulmfit predict`.
pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let models = args.scoring.load_models()?;
    let classes = models[0].config.classes.clone();
    let folder = &models[0].config;
    // A multi-label prediction is every class over the threshold, joined for text output.
    let label_text = |row: &[f32]| -> String {
        let predicted = folder.predicted_classes(row);
        match &folder.multi_label {
            Some(settings) => predicted.join(&settings.delimiter),
            None => predicted.concat(),
        }
    };

    let mut texts = args.texts.clone();
    let encoding = args.data_options.encoding.get();
    match &args.input {
        Some(path) if path == Path::new("-") => {
            texts.extend(read_lines(
                std::io::stdin().lock(),
                &InputName::Stdin,
                encoding,
            )?);
        }
        Some(path) => texts.extend(read_input(path, &args.data_options)?),
        None if texts.is_empty() => {
            texts = read_lines(std::io::stdin().lock(), &InputName::Stdin, encoding)?;
        }
        None => {}
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut average = vec![vec![0.0f32; classes.len()]; refs.len()];
    for model in &models {
        let probabilities = model.probabilities(&refs, args.scoring.batch_size)?;
        for (sum, row) in average.iter_mut().zip(probabilities) {
            for (s, p) in sum.iter_mut().zip(row) {
                *s += p / models.len() as f32;
            }
        }
    }

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.csv {
        let mut writer = csv::Writer::from_writer(out);
        let mut header = vec!["label".to_string()];
        header.extend(classes.iter().map(|class| format!("p_{class}")));
        header.push("text".to_string());
        writer.write_record(&header)?;
        for (text, row) in refs.iter().zip(&average) {
            let mut record = vec![label_text(row)];
            record.extend(row.iter().map(|p| p.to_string()));
            record.push(text.to_string());
            writer.write_record(&record)?;
        }
        writer.flush()?;
        return Ok(());
    }
    for (text, row) in refs.iter().zip(&average) {
        if args.json {
            let probabilities: serde_json::Map<String, serde_json::Value> = classes
                .iter()
                .zip(row)
                .map(|(class, p)| (class.clone(), (*p).into()))
                .collect();
            let mut object = serde_json::json!({
                "text": text,
                "label": to_prediction(&classes, row).label,
                "probabilities": probabilities,
            });
            if folder.multi_label.is_some() {
                // `label` stays the most probable class; `labels` is the prediction.
                object["labels"] = folder.predicted_classes(row).into();
            }
            writeln!(out, "{object}")?;
        } else {
            let listed: Vec<String> = classes
                .iter()
                .zip(row)
                .map(|(class, p)| format!("{class}={p:.4}"))
                .collect();
            writeln!(out, "{}\t{}", label_text(row), listed.join(" "))?;
        }
    }
    Ok(())
}
