//! The shared trainer: parameter groups, AdamW, learning-rate schedules, the
//! learning-rate finder, metrics, checkpoints and the training loop.
//!
//! It does not depend on text or model code. A stage (language model, classifier, image
//! model) implements [`TrainTask`], which hands over named [`candle_core::Var`]s grouped
//! into [`ParamGroup`]s, yields batches and computes a scalar loss per batch.
//! The defaults follow fastai 2.x (`Adam` with decoupled weight decay, `fit_one_cycle`,
//! `lr_find` with the `valley` suggestion).

pub mod checkpoint;
pub mod groups;
pub mod lr_find;
pub mod metrics;
pub mod optimizer;
pub mod progress;
pub mod schedule;
pub mod trainer;

pub use checkpoint::{Checkpoint, TrainState};
pub use groups::{spread_lrs, LrSpec, Param, ParamGroup};
pub use lr_find::{LrFindResult, LrFinder, SmoothLoss};
pub use metrics::{accuracy, perplexity, ConfusionMatrix, Metrics};
pub use optimizer::{AdamConfig, AdamW};
pub use progress::EpochRecord;
pub use schedule::{one_cycle, sched_cos, stlr, OneCycle, Schedule, Stlr};
pub use trainer::{BatchIter, RunOptions, TrainSettings, TrainTask, Trainer, LOG_PATH_FILE};

use std::path::PathBuf;

/// Errors raised by the trainer.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint file is missing, truncated or corrupted.
    #[error("invalid checkpoint file {path}: {reason}")]
    Checkpoint {
        /// The offending file.
        path: PathBuf,
        /// Reason the file was rejected.
        reason: String,
    },
    /// The loss or a gradient became NaN or infinite.
    #[error("non-finite {what} ({value}) at epoch {epoch}, step {step} of that epoch; the last checkpoint was left unchanged")]
    NonFinite {
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// The offending value.
        value: f64,
        /// Zero-based epoch.
        epoch: usize,
        /// Zero-based batch index within the epoch.
        step: usize,
    },
    /// A setting given when resuming differs from the one stored in the checkpoint.
    #[error("setting `{setting}` is {given} but the checkpoint was trained with {saved}; drop the option or start a new run")]
    ResumeMismatch {
        /// The setting's name.
        setting: String,
        /// The value stored in the checkpoint.
        saved: String,
        /// The value given now.
        given: String,
    },
    /// An invalid argument or configuration.
    #[error("{0}")]
    Invalid(String),
    /// An error raised by the task (model code).
    #[error("task failed: {0}")]
    Task(#[from] anyhow::Error),
}

/// Result alias for the trainer.
pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
