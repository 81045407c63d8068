//! Language-model evaluation: cross-entropy, perplexity and next-token accuracy over a
//! token stream, laid out in rows and windows as fastai's `LMDataLoader` does.

use candle_core::{DType, Tensor, D};
use serde::Serialize;

use crate::model::{LanguageModel, ModelError};
use crate::rng::Rng;
use crate::text::batches::{BatchError, LmBatches, LmOrder};

/// Errors of [`evaluate_language_model`].
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// The documents cannot be laid out in batches (too few tokens, zero sizes).
    #[error(transparent)]
    Batches(#[from] BatchError),
    /// The forward pass failed.
    #[error(transparent)]
    Model(Box<ModelError>),
}

impl From<ModelError> for EvaluateError {
    fn from(source: ModelError) -> Self {
        Self::Model(Box::new(source))
    }
}

impl From<candle_core::Error> for EvaluateError {
    fn from(source: candle_core::Error) -> Self {
        Self::Model(Box::new(ModelError::Candle(source)))
    }
}

/// Result of evaluating a language model on a token stream.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Perplexity {
    /// Mean cross-entropy per predicted token, in nats.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Fraction of predicted tokens whose highest-scoring prediction was right.
    pub accuracy: f64,
    /// Number of predicted tokens.
    pub tokens: u64,
}

/// Evaluates `model` on `documents` (token ids, each document starting with `xxbos` when
/// the tokenizer adds it), concatenated in order into one stream.
///
/// The stream is cut into `batch_size` contiguous rows, and each row is read in windows
/// of `bptt` tokens, with the hidden state carried from one window to the next. Every
/// token of a row but the first is predicted once. As in fastai, the tail of up to
/// `batch_size - 1` tokens that does not fill a column is dropped. Dropout is off.
/// `on_window` is called after each window with `(done, total)`.
pub fn evaluate_language_model(
    model: &mut LanguageModel,
    documents: &[Vec<u32>],
    batch_size: usize,
    bptt: usize,
    mut on_window: impl FnMut(usize, usize),
) -> Result<Perplexity, EvaluateError> {
    let batches = LmBatches::new(documents, batch_size, bptt, LmOrder::Sequential)?;
    let total = batches.n_batches();
    let device = model.encoder().device().clone();
    let mut rng = Rng::seed(0);
    model.reset();
    model.set_track_gradients(false);

    let mut loss_sum = 0.0f64;
    let mut correct = 0u64;
    let mut tokens = 0u64;
    for (index, batch) in batches.iter().enumerate() {
        let shape = (batch.batch_size, batch.seq_len);
        let input = Tensor::from_vec(batch.x, shape, &device)?;
        let targets = Tensor::from_vec(batch.y, shape, &device)?;
        let output = model.forward(&input, false, &mut rng)?;
        let (window_loss, window_correct) = score_window(&output.logits, &targets)?;
        loss_sum += window_loss;
        correct += window_correct;
        tokens += (shape.0 * shape.1) as u64;
        on_window(index + 1, total);
    }
    model.reset();

    let loss = loss_sum / tokens as f64;
    Ok(Perplexity {
        loss,
        perplexity: loss.exp(),
        accuracy: correct as f64 / tokens as f64,
        tokens,
    })
}

/// Returns the summed negative log-likelihood of `targets` `[B, T]` under `logits`
/// `[B, T, V]`, and how many targets are the argmax of their logits.
fn score_window(logits: &Tensor, targets: &Tensor) -> candle_core::Result<(f64, u64)> {
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = log_probs.gather(&targets.unsqueeze(2)?.contiguous()?, 2)?;
    let nll: f64 = picked
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?
        .iter()
        .map(|value| -value)
        .sum();
    let predicted = logits.argmax(D::Minus1)?;
    let correct = predicted
        .eq(targets)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()?;
    Ok((nll, u64::from(correct)))
}
