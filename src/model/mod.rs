//! The AWD-LSTM language model (Merity et al., 2017) as fastai 2.x builds it: embedding
//! with embedding dropout, stacked single-layer LSTMs with weight dropout and locked
//! dropout, and a decoder tied to the embedding.

pub mod awd_lstm;
pub mod classifier;
pub mod config;
pub mod dropout;
pub mod lstm;

pub use awd_lstm::{LanguageModel, LmLoss, LmOutput, DEFAULT_AR_ALPHA, DEFAULT_TAR_BETA};
pub use classifier::{Classifier, ClassifierConfig, ClassifierOutput};
pub use config::{AwdLstmConfig, DropoutConfig};
pub use lstm::LstmLayer;

use std::path::PathBuf;

/// Errors of model construction, loading and forward passes.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The configuration is invalid.
    #[error("invalid AWD-LSTM config: {0}")]
    InvalidConfig(String),
    /// Named parameters do not match the configuration.
    #[error("parameters do not match the AWD-LSTM config: {}", describe_mismatch(.missing, .unexpected, .wrong_shapes))]
    ParameterMismatch {
        /// Canonical names the config needs but the input lacks.
        missing: Vec<String>,
        /// Names in the input that the config does not use.
        unexpected: Vec<String>,
        /// `name: got [..], expected [..]` for each wrongly shaped tensor.
        wrong_shapes: Vec<String>,
    },
    /// The input batch has the wrong rank, dtype or token ids.
    #[error("invalid input batch: {0}")]
    InvalidInput(String),
    /// Reading or writing a safetensors file failed.
    #[error("failed to {action} safetensors file {}: {source}", .path.display())]
    File {
        /// `read`, `write` or `set the permissions of`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: candle_core::Error,
    },
}

/// Writes named tensors to a safetensors file.
pub(crate) fn save_tensors(
    tensors: Vec<(String, candle_core::Tensor)>,
    path: &std::path::Path,
) -> Result<()> {
    let map: std::collections::HashMap<String, candle_core::Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, path).map_err(|source| ModelError::File {
        action: "write",
        path: path.to_path_buf(),
        source,
    })?;
    apply_umask(path).map_err(|source| ModelError::File {
        action: "set the permissions of",
        path: path.to_path_buf(),
        source: source.into(),
    })
}

/// Gives the file at `path` the permissions that creating it with `std::fs` would: read
/// and write as the process umask allows. The safetensors writer creates its file through
/// a private temporary file (mode 0600), so other users could not read saved models.
/// Where the umask cannot be read, the file keeps mode 0600.
pub fn apply_umask(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(umask) = process_umask() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666 & !umask))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Returns the process umask from `/proc/self/status` (Linux 4.7 and later), or `None`
/// where that is not available.
#[cfg(unix)]
fn process_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Umask:"))
        .and_then(|value| u32::from_str_radix(value.trim(), 8).ok())
}

/// Reads every tensor of a safetensors file onto `device`. Half-precision tensors (f16,
/// bf16) are widened to f32, so weights stored at half size load as full models.
pub(crate) fn load_tensors(
    path: &std::path::Path,
    device: &candle_core::Device,
) -> Result<std::collections::HashMap<String, candle_core::Tensor>> {
    let file_error = |source| ModelError::File {
        action: "read",
        path: path.to_path_buf(),
        source,
    };
    let tensors = candle_core::safetensors::load(path, device).map_err(file_error)?;
    tensors
        .into_iter()
        .map(|(name, tensor)| match tensor.dtype() {
            candle_core::DType::F16 | candle_core::DType::BF16 => tensor
                .to_dtype(candle_core::DType::F32)
                .map(|wide| (name, wide))
                .map_err(file_error),
            _ => Ok((name, tensor)),
        })
        .collect()
}

/// Checks named tensors against the expected names and shapes, returning one error that
/// lists every missing, unexpected and wrongly shaped tensor.
pub(crate) fn check_parameters(
    expected: &[(String, Vec<usize>)],
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    let mut missing = Vec::new();
    let mut wrong_shapes = Vec::new();
    for (name, shape) in expected {
        match tensors.get(name) {
            None => missing.push(name.clone()),
            Some(tensor) if tensor.dims() != shape.as_slice() => wrong_shapes.push(format!(
                "{name}: got {:?}, expected {shape:?}",
                tensor.dims()
            )),
            Some(_) => {}
        }
    }
    let mut unexpected: Vec<String> = tensors
        .keys()
        .filter(|name| !expected.iter().any(|(known, _)| known == *name))
        .cloned()
        .collect();
    unexpected.sort();
    if missing.is_empty() && unexpected.is_empty() && wrong_shapes.is_empty() {
        return Ok(());
    }
    Err(ModelError::ParameterMismatch {
        missing,
        unexpected,
        wrong_shapes,
    })
}

fn describe_mismatch(missing: &[String], unexpected: &[String], wrong_shapes: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {}", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected {}", unexpected.join(", ")));
    }
    if !wrong_shapes.is_empty() {
        parts.push(format!("wrong shapes {}", wrong_shapes.join("; ")));
    }
    parts.push("check that the config's sizes and tie_weights/output_bias match the file".into());
    parts.join("; ")
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, ModelError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn saved_weights_follow_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let tensor =
            candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu)
                .unwrap();
        save_tensors(vec![("weight".to_string(), tensor)], &path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let expected = process_umask().map_or(0o600, |umask| 0o666 & !umask);
        assert_eq!(mode, expected);
    }
}
