//! Checkpoint folders: weights, the caller's model config and the training state.
//!
//! A checkpoint is a folder with four files:
//! - `weights.safetensors`: the parameters, keyed by [`super::Param::name`];
//! - `optimizer.safetensors`: Adam moments, keyed `{name}.grad_avg` and `{name}.sqr_avg`;
//! - `config.json`: a JSON value supplied by the caller (the model's configuration);
//! - `state.json`: [`TrainState`], including the SHA-256 of the other three files.
//!
//! [`save`] writes everything into a temporary sibling folder and renames it into
//! place, so a crash leaves either the previous checkpoint or the new one. The old
//! folder is first renamed to `.{name}.old`; [`load`] falls back to it when a crash
//! came between the two renames.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Result, TrainError};

/// File name of the weights.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// File name of the optimizer moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File name of the caller's config.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the training state.
pub const STATE_FILE: &str = "state.json";

/// Training position and everything else needed to continue a run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Zero-based epoch in progress (equal to the epoch count once training is done).
    pub epoch: usize,
    /// Batches of `epoch` already consumed (data-order position).
    pub batch_in_epoch: usize,
    /// Optimizer steps taken in this stage (schedule position).
    pub opt_step: usize,
    /// Optimizer steps the schedule spans.
    pub total_steps: usize,
    /// Sum and count of the batch losses of `epoch` so far.
    pub epoch_loss_sum: f64,
    /// Number of batch losses in `epoch_loss_sum`.
    pub epoch_loss_count: usize,
    /// State of the random generator passed to training steps.
    pub rng: [u64; 4],
    /// Number of leading frozen parameter groups.
    pub frozen_groups: usize,
    /// Adam step count of each parameter that has one.
    pub adam_steps: BTreeMap<String, u64>,
    /// The run settings, as serialized [`super::TrainSettings`].
    pub settings: serde_json::Value,
    /// SHA-256 (hex) of each other file in the folder, keyed by file name.
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// The folder it was read from.
    pub dir: PathBuf,
    /// Training state.
    pub state: TrainState,
    /// The caller's config.
    pub config: serde_json::Value,
    /// Parameters by name.
    pub weights: HashMap<String, Tensor>,
    /// Optimizer moments by key.
    pub optimizer: HashMap<String, Tensor>,
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".to_string());
    dir.with_file_name(format!(".{name}.{suffix}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<String> {
    fs::write(path, bytes).map_err(|e| TrainError::io(path, e))?;
    Ok(sha256_hex(bytes))
}

fn write_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<String> {
    candle_core::safetensors::save(tensors, path).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("failed to write tensors: {e}"),
    })?;
    crate::model::apply_umask(path).map_err(|e| TrainError::io(path, e))?;
    let bytes = fs::read(path).map_err(|e| TrainError::io(path, e))?;
    Ok(sha256_hex(&bytes))
}

/// Writes a checkpoint to `dir`, replacing any previous one there.
pub fn save(
    dir: &Path,
    config: &serde_json::Value,
    weights: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    state: &TrainState,
) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;

    let mut state = state.clone();
    state.sha256.clear();
    let path = tmp.join(WEIGHTS_FILE);
    let hash = write_tensors(&path, weights)?;
    state.sha256.insert(WEIGHTS_FILE.to_string(), hash);
    let path = tmp.join(OPTIMIZER_FILE);
    let hash = write_tensors(&path, optimizer)?;
    state.sha256.insert(OPTIMIZER_FILE.to_string(), hash);
    let path = tmp.join(CONFIG_FILE);
    let config_text = serde_json::to_vec_pretty(config).map_err(|e| TrainError::Checkpoint {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let hash = write_file(&path, &config_text)?;
    state.sha256.insert(CONFIG_FILE.to_string(), hash);
    let path = tmp.join(STATE_FILE);
    let state_text = serde_json::to_vec_pretty(&state).map_err(|e| TrainError::Checkpoint {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_file(&path, &state_text)?;

    let old = sibling(dir, "old");
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    if dir.exists() {
        fs::rename(dir, &old).map_err(|e| TrainError::io(dir, e))?;
    }
    fs::rename(&tmp, dir).map_err(|e| TrainError::io(dir, e))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    Ok(())
}

/// Returns whether `dir` contains a checkpoint, or its `.old` sibling does after an
/// interrupted save.
pub fn exists(dir: &Path) -> bool {
    dir.join(STATE_FILE).exists() || sibling(dir, "old").join(STATE_FILE).exists()
}

/// Returns the folder to read: `dir`, or its `.old` sibling after an interrupted save.
fn resolve(dir: &Path) -> Result<PathBuf> {
    if dir.join(STATE_FILE).exists() {
        return Ok(dir.to_path_buf());
    }
    let old = sibling(dir, "old");
    if old.join(STATE_FILE).exists() {
        tracing::warn!(
            "checkpoint {} is missing; reading {} left by an interrupted save",
            dir.display(),
            old.display()
        );
        return Ok(old);
    }
    Err(TrainError::Checkpoint {
        path: dir.join(STATE_FILE),
        reason: "not found; pass the folder of a checkpoint written by the trainer".into(),
    })
}

fn read_verified(dir: &Path, name: &str, state: &TrainState) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let bytes = fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    if let Some(expected) = state.sha256.get(name) {
        let actual = sha256_hex(&bytes);
        if &actual != expected {
            return Err(TrainError::Checkpoint {
                path,
                reason: format!(
                    "SHA-256 {actual} differs from {expected} recorded in {STATE_FILE}; the file is truncated or corrupted, so resume from another checkpoint"
                ),
            });
        }
    }
    Ok(bytes)
}

fn read_tensors(
    dir: &Path,
    name: &str,
    state: &TrainState,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let bytes = read_verified(dir, name, state)?;
    candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| TrainError::Checkpoint {
        path: dir.join(name),
        reason: format!("not a valid safetensors file: {e}"),
    })
}

/// Reads the training state of the checkpoint in `dir`.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let dir = resolve(dir)?;
    let path = dir.join(STATE_FILE);
    let text = fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_slice(&text).map_err(|e| TrainError::Checkpoint {
        path,
        reason: format!("invalid JSON: {e}"),
    })
}

/// Reads the caller's config of the checkpoint in `dir` (to build the model first).
pub fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let state = read_state(dir)?;
    let dir = resolve(dir)?;
    let bytes = read_verified(&dir, CONFIG_FILE, &state)?;
    serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint {
        path: dir.join(CONFIG_FILE),
        reason: format!("invalid JSON: {e}"),
    })
}

/// Loads the checkpoint in `dir`, placing tensors on `device`.
pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let state = read_state(dir)?;
    let config = read_config(dir)?;
    let dir = resolve(dir)?;
    let weights = read_tensors(&dir, WEIGHTS_FILE, &state, device)?;
    let optimizer = read_tensors(&dir, OPTIMIZER_FILE, &state, device)?;
    Ok(Checkpoint {
        dir,
        state,
        config,
        weights,
        optimizer,
    })
}
