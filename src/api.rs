//! A small library API for scoring texts with a trained classifier folder.

use std::collections::BTreeMap;
use std::path::Path;

use crate::kernels::precision::Precision;
use crate::pipeline::predict::{LoadedClassifier, DEFAULT_PREDICT_BATCH};

/// Errors of [`SentimentModel`].
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Loading the classifier folder failed.
    #[error("failed to load the classifier in {dir}: {message}")]
    Load {
        /// The folder.
        dir: String,
        /// The cause, with its chain.
        message: String,
    },
    /// Scoring failed.
    #[error("failed to score the texts: {0}")]
    Score(String),
}

/// The label and class probabilities of one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The class with the highest probability.
    pub label: String,
    /// The probability of every class, by class name.
    pub probabilities: BTreeMap<String, f32>,
}

/// A classifier loaded from a folder written by `ulmfit classify`.
///
/// Scoring keeps no state between calls, so one model can be shared by several threads
/// (`SentimentModel` is `Send + Sync`).
pub struct SentimentModel {
    inner: LoadedClassifier,
}

impl SentimentModel {
    /// Loads the classifier folder `dir` onto the CPU.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, ApiError> {
        let dir = dir.as_ref();
        let inner = LoadedClassifier::load(dir).map_err(|error| ApiError::Load {
            dir: dir.display().to_string(),
            message: format!("{error:#}"),
        })?;
        Ok(Self { inner })
    }

    /// Loads the classifier folder `dir` onto the CPU with the encoder's matrix
    /// products in `precision` (see [`LoadedClassifier::set_precision`]).
    pub fn load_with_precision(
        dir: impl AsRef<Path>,
        precision: Precision,
    ) -> Result<Self, ApiError> {
        let mut model = Self::load(dir.as_ref())?;
        model
            .inner
            .set_precision(precision)
            .map_err(|error| ApiError::Load {
                dir: dir.as_ref().display().to_string(),
                message: format!("{error:#}"),
            })?;
        Ok(model)
    }

    /// Returns the class names in output order.
    pub fn classes(&self) -> &[String] {
        &self.inner.config.classes
    }

    /// Scores `texts` and returns one prediction per text, in input order. An empty
    /// text is scored as the lone token `xxbos`.
    pub fn score(&self, texts: &[&str]) -> Result<Vec<Prediction>, ApiError> {
        let probabilities = self
            .inner
            .probabilities(texts, DEFAULT_PREDICT_BATCH)
            .map_err(|error| ApiError::Score(format!("{error:#}")))?;
        Ok(probabilities
            .iter()
            .map(|row| to_prediction(self.classes(), row))
            .collect())
    }
}

/// Builds a [`Prediction`] from one row of class probabilities.
pub fn to_prediction(classes: &[String], row: &[f32]) -> Prediction {
    let best = crate::model::classifier::argmax(row);
    Prediction {
        label: classes[best].clone(),
        probabilities: classes.iter().cloned().zip(row.iter().copied()).collect(),
    }
}
