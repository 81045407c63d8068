//! Copies of model folders with their weights stored at another precision.
//!
//! A language-model, encoder or classifier folder is copied file by file, and every
//! floating-point tensor of `model.safetensors` is cast to the chosen dtype. Loading
//! widens f16 and bf16 weights back to f32, so an exported folder works wherever the
//! original does, at about half the size. The safetensors header records each tensor's
//! dtype, so `config.json` is copied unchanged.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::DType;
use serde::Serialize;

use crate::model::ModelError;

/// File name of the weights in every model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the configuration in every model folder.
pub const CONFIG_FILE: &str = "config.json";

/// Storage dtype of exported weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// IEEE half precision: 10-bit mantissa, range up to 65504.
    F16,
    /// bfloat16: 7-bit mantissa, the range of f32.
    Bf16,
    /// Single precision (no loss).
    F32,
}

impl WeightDtype {
    /// Returns the Candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
            Self::F32 => DType::F32,
        }
    }
}

/// Errors of [`export_model_folder`].
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file or folder could not be read or written.
    #[error("failed to {action} {}: {source}", .path.display())]
    Io {
        /// Operation that failed.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The input is not a model folder.
    #[error("{} is not a model folder: {reason}; pass a folder written by `ulmfit pretrain`, `lm-finetune`, `import-fastai` or `classify`", .dir.display())]
    NotAModelFolder {
        /// The folder.
        dir: PathBuf,
        /// The problem found.
        reason: String,
    },
    /// The output folder is the input folder.
    #[error("--out {} is the input folder; choose another folder", .dir.display())]
    SameFolder {
        /// The folder.
        dir: PathBuf,
    },
    /// Reading, casting or writing the weights failed.
    #[error("weights of {}: {source}", .dir.display())]
    Weights {
        /// The input folder.
        dir: PathBuf,
        /// The model error, boxed because it is large.
        source: Box<ModelError>,
    },
}

/// Summary of one [`export_model_folder`] run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportSummary {
    /// `kind` from the folder's configuration: `language_model`, `encoder` or `classifier`.
    pub kind: String,
    /// Tensors in the weight file.
    pub tensors: usize,
    /// Tensors whose dtype changed.
    pub cast: usize,
    /// Size of the input weight file in bytes.
    pub bytes_before: u64,
    /// Size of the output weight file in bytes.
    pub bytes_after: u64,
    /// Other files copied unchanged, by name.
    pub copied: Vec<String>,
    /// Entries not copied: subfolders (training checkpoints) and token files (`.tok`).
    pub skipped: Vec<String>,
}

/// Copies the model folder `from` into `to` (created if missing), casting every
/// floating-point tensor of its weights to `dtype`. Other top-level files are copied as
/// they are, except numericalized corpora (`*.tok`). Subfolders are left out.
pub fn export_model_folder(
    from: &Path,
    to: &Path,
    dtype: WeightDtype,
) -> Result<ExportSummary, ExportError> {
    let kind = folder_kind(from)?;
    let weights = from.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(ExportError::NotAModelFolder {
            dir: from.to_path_buf(),
            reason: format!("{WEIGHTS_FILE} is missing"),
        });
    }
    fs::create_dir_all(to).map_err(|source| ExportError::Io {
        action: "create",
        path: to.to_path_buf(),
        source,
    })?;
    if fs::canonicalize(from).ok() == fs::canonicalize(to).ok() {
        return Err(ExportError::SameFolder {
            dir: to.to_path_buf(),
        });
    }

    let weights_error = |source| ExportError::Weights {
        dir: from.to_path_buf(),
        source: Box::new(source),
    };
    let tensors =
        candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).map_err(|source| {
            weights_error(ModelError::File {
                action: "read",
                path: weights.clone(),
                source,
            })
        })?;
    let total = tensors.len();
    let mut cast = 0;
    let mut converted = Vec::with_capacity(total);
    for (name, tensor) in tensors {
        let target = dtype.dtype();
        if tensor.dtype().is_float() && tensor.dtype() != target {
            cast += 1;
            let narrowed = tensor
                .to_dtype(target)
                .map_err(|source| weights_error(ModelError::Candle(source)))?;
            converted.push((name, narrowed));
        } else {
            converted.push((name, tensor));
        }
    }
    let out_weights = to.join(WEIGHTS_FILE);
    crate::model::save_tensors(converted, &out_weights).map_err(weights_error)?;

    let mut copied = Vec::new();
    let mut skipped = Vec::new();
    let entries = fs::read_dir(from).map_err(|source| ExportError::Io {
        action: "list",
        path: from.to_path_buf(),
        source,
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ExportError::Io {
            action: "list",
            path: from.to_path_buf(),
            source,
        })?;
        paths.push(entry.path());
    }
    paths.sort();
    for path in paths {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == WEIGHTS_FILE {
            continue;
        }
        let is_token_file = path.extension().is_some_and(|ext| ext == "tok");
        let is_run_record = name == crate::train::LOG_PATH_FILE
            || name == crate::pipeline::classify::RUN_INPUTS_FILE;
        if !path.is_file() || is_token_file || is_run_record {
            skipped.push(name);
            continue;
        }
        let target = to.join(&name);
        fs::copy(&path, &target).map_err(|source| ExportError::Io {
            action: "copy",
            path: path.clone(),
            source,
        })?;
        copied.push(name);
    }
    Ok(ExportSummary {
        kind,
        tensors: total,
        cast,
        bytes_before: file_size(&weights)?,
        bytes_after: file_size(&out_weights)?,
        copied,
        skipped,
    })
}

/// Returns the `kind` recorded in the folder's `config.json`, checking that it is a
/// model kind this crate writes.
fn folder_kind(dir: &Path) -> Result<String, ExportError> {
    let path = dir.join(CONFIG_FILE);
    let not_model = |reason: String| ExportError::NotAModelFolder {
        dir: dir.to_path_buf(),
        reason,
    };
    let text = fs::read_to_string(&path)
        .map_err(|error| not_model(format!("cannot read {}: {error}", path.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| not_model(format!("{} is not valid JSON: {error}", path.display())))?;
    let kind = value
        .get("kind")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    match kind {
        "language_model" | "encoder" | crate::pipeline::predict::CLASSIFIER_KIND => {
            Ok(kind.to_string())
        }
        other => Err(not_model(format!(
            "{} has kind `{other}`, expected language_model, encoder or classifier",
            path.display()
        ))),
    }
}

fn file_size(path: &Path) -> Result<u64, ExportError> {
    fs::metadata(path)
        .map(|meta| meta.len())
        .map_err(|source| ExportError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })
}
