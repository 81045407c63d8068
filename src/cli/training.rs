//! Options shared by the training commands: the device, and the run settings saved in
//! the output folder so that `--resume` continues with the same ones.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Device;
use clap::ValueEnum;
use serde::{de::DeserializeOwned, Serialize};

use crate::train::TrainError;

/// Devices accepted by `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceName {
    /// The CPU.
    Cpu,
    /// The first CUDA GPU.
    Cuda,
}

/// Returns the device named by `--device`.
pub fn select_device(name: DeviceName) -> anyhow::Result<Device> {
    match name {
        DeviceName::Cpu => Ok(Device::Cpu),
        // NOTE: the fused LSTM kernel has a CPU implementation only, so even a Candle
        // built with CUDA could not train this model on a GPU yet.
        DeviceName::Cuda => bail!(
            "--device cuda is not supported: this build of ulmfit has no CUDA support and its LSTM kernel runs on the CPU only; use --device cpu"
        ),
    }
}

/// Returns the run folder from `--out` and `--resume`, failing when they name different
/// folders, when neither is given, or when a new run would overwrite one that has
/// stage checkpoints (names starting with `checkpoint_prefix`).
pub fn run_folder(
    out: Option<&PathBuf>,
    resume: Option<&PathBuf>,
    checkpoint_prefix: &str,
) -> anyhow::Result<PathBuf> {
    let dir = match (resume, out) {
        (Some(resume), Some(out)) if resume != out => bail!(
            "--resume {} and --out {} name different folders; drop --out when resuming",
            resume.display(),
            out.display()
        ),
        (Some(dir), _) | (None, Some(dir)) => dir.clone(),
        (None, None) => bail!("--out is required unless --resume is given"),
    };
    if resume.is_none() && has_checkpoints(&dir, checkpoint_prefix) {
        bail!(
            "{} already contains a training run; pass --resume {} to continue it, or choose another --out",
            dir.display(),
            dir.display()
        );
    }
    fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    Ok(dir)
}

fn has_checkpoints(dir: &Path, prefix: &str) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
    })
}

/// Returns the settings of the run. A new run gets `given` with its defaults filled in
/// (`resolved`), saved as `dir/file`. A resumed run gets the saved settings, after a
/// check that every option given again (not null, false or empty) has its saved value.
pub fn settings_of_run<S: Serialize + DeserializeOwned>(
    dir: &Path,
    file: &str,
    given: &S,
    resolved: impl FnOnce(&S) -> S,
    resuming: bool,
) -> anyhow::Result<S> {
    let path = dir.join(file);
    if !resuming {
        let settings = resolved(given);
        let json = serde_json::to_string_pretty(&settings)?;
        fs::write(&path, json + "\n")
            .with_context(|| format!("failed to write {}", path.display()))?;
        return Ok(settings);
    }
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "failed to read {}; is {} the output folder of an earlier run of this command?",
            path.display(),
            dir.display()
        )
    })?;
    let saved: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
    let serde_json::Value::Object(given) = serde_json::to_value(given)? else {
        bail!("the settings of this command are not a JSON object");
    };
    for (key, value) in given {
        let unset = match &value {
            serde_json::Value::Null | serde_json::Value::Bool(false) => true,
            serde_json::Value::Array(items) => items.is_empty(),
            _ => false,
        };
        let saved_value = saved.get(&key).unwrap_or(&serde_json::Value::Null);
        if !unset && saved_value != &value {
            return Err(TrainError::ResumeMismatch {
                setting: key,
                saved: saved_value.to_string(),
                given: value.to_string(),
            }
            .into());
        }
    }
    serde_json::from_value(saved).with_context(|| format!("invalid {}", path.display()))
}
