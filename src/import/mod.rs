//! Import of PyTorch checkpoints and fastai AWD-LSTM weights without Python.
//!
//! - [`pickle`]: a pickle reader that resolves only an allow-list of globals.
//! - [`torch`]: both `torch.save` formats (zip and the pre-1.6 stream) into f32 tensors.
//! - [`fastai`]: fastai language model layouts mapped to canonical parameter names,
//!   vocabularies (`itos.pkl`) and embedding matching for a new vocabulary.

pub mod fastai;
pub mod pickle;
pub mod torch;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use fastai::{
    load_fastai_lm, match_embeddings, read_itos, FastaiLayout, FastaiWeights, ImportedShape,
};
pub use pickle::{PickleError, StorageDtype, TensorRef, Value};
pub use torch::{load_torch, TorchFile, TorchFormat};

/// Errors of the importers; each names the file it concerns.
#[derive(Debug, Error)]
pub enum ImportError {
    #[error("failed to read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is a Git LFS pointer, not the weights: fetch the real file with `git lfs pull` (or download it directly) and try again")]
    GitLfsPointer { path: PathBuf },
    #[error("{path} is an HTML page, not a PyTorch file: the download saved a web page (login, error or redirect page); download the file itself and try again")]
    HtmlPage { path: PathBuf },
    #[error("{path} is not a PyTorch checkpoint or pickle: {detail}")]
    UnknownFormat { path: PathBuf, detail: String },
    #[error(
        "{path} is cut off: {detail}; the download or copy is incomplete, fetch the file again"
    )]
    Truncated { path: PathBuf, detail: String },
    #[error("{path} references the global `{module}.{name}`, which is not on the allow-list of safe names; refusing to load it because Python would import and run it")]
    ForbiddenGlobal {
        path: PathBuf,
        module: String,
        name: String,
    },
    #[error("invalid pickle data in {path} ({part}): {source}")]
    Pickle {
        path: PathBuf,
        part: String,
        source: PickleError,
    },
    #[error("invalid zip archive {path}: {source}")]
    Zip {
        path: PathBuf,
        source: zip::result::ZipError,
    },
    #[error("invalid PyTorch checkpoint {path}: {detail}")]
    Checkpoint { path: PathBuf, detail: String },
    #[error("{path} does not match a known fastai language model layout; missing keys: [{}]; unexpected keys: [{}]", .missing.join(", "), .unexpected.join(", "))]
    KeyMismatch {
        path: PathBuf,
        missing: Vec<String>,
        unexpected: Vec<String>,
    },
    #[error("tensor `{key}` in {path} has shape {actual:?}, expected {expected}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        actual: Vec<usize>,
        expected: String,
    },
    #[error("the vocabulary has {itos_len} tokens but the embedding has {rows} rows; use the itos file saved with these weights")]
    ItosLength { itos_len: usize, rows: usize },
    #[error("{path} does not contain a list of strings: {detail}")]
    NotItos { path: PathBuf, detail: String },
    #[error("tensor operation failed for {context}: {source}")]
    Tensor {
        context: String,
        source: candle_core::Error,
    },
}

impl ImportError {
    /// Wraps a pickle error, lifting a rejected global into [`ImportError::ForbiddenGlobal`].
    pub(crate) fn from_pickle(path: &Path, part: &str, source: PickleError) -> Self {
        match source {
            PickleError::ForbiddenGlobal { module, name, .. } => Self::ForbiddenGlobal {
                path: path.to_path_buf(),
                module,
                name,
            },
            PickleError::Truncated { offset, needed } => Self::Truncated {
                path: path.to_path_buf(),
                detail: format!(
                    "the pickle in {part} ends at byte {offset} with {needed} more bytes expected"
                ),
            },
            source => Self::Pickle {
                path: path.to_path_buf(),
                part: part.to_owned(),
                source,
            },
        }
    }
}

/// Reads a whole file, rejecting Git LFS pointers and saved HTML pages by their first bytes.
pub(crate) fn read_checked(path: &Path) -> Result<Vec<u8>, ImportError> {
    let data = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if data.starts_with(b"version https://git-lfs") {
        return Err(ImportError::GitLfsPointer {
            path: path.to_path_buf(),
        });
    }
    if looks_like_html(&data) {
        return Err(ImportError::HtmlPage {
            path: path.to_path_buf(),
        });
    }
    Ok(data)
}

fn looks_like_html(data: &[u8]) -> bool {
    let head = &data[..data.len().min(512)];
    let text = String::from_utf8_lossy(head);
    let trimmed = text
        .trim_start_matches('\u{feff}')
        .trim_start()
        .to_ascii_lowercase();
    trimmed.starts_with("<!doctype html")
        || trimmed.starts_with("<html")
        || trimmed.starts_with("<head")
}
