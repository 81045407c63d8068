//! Conversion of a fastai AWD-LSTM `.pth` file and its `itos.pkl` into a
//! [`LanguageModel`] and [`Vocab`] that a model folder can store.
//!
//! fastai 2.8's `make_vocab` appends 1 to 8 `xxfake` tokens so that the vocabulary size
//! is a multiple of 8. Those fillers are dropped from the vocabulary, and the embedding rows, untied decoder rows
//! and decoder bias entries that belong to them are dropped too, so the model and its
//! vocabulary always have the same size. A filler can never be the next token of real
//! text, so dropping its logit leaves the softmax over real tokens unchanged except for
//! the probability mass the fillers held.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use super::model_folder::ModelKind;
use crate::import::fastai::{load_fastai_lm, read_itos, FastaiLayout, FastaiWeights};
use crate::import::ImportError;
use crate::model::{AwdLstmConfig, LanguageModel, ModelError};
use crate::text::vocab::{Vocab, VocabError};
use crate::text::PAD;

/// Errors of [`import_fastai_lm`]; each names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum FastaiImportError {
    /// The weights or the vocabulary file could not be read.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The vocabulary and the embedding differ in size.
    #[error("{} has {itos_len} tokens but the embedding in {} has {rows} rows; use the itos file saved with these weights", .itos.display(), .weights.display())]
    ItosLength {
        /// The vocabulary file.
        itos: PathBuf,
        /// Number of tokens in it.
        itos_len: usize,
        /// The weights file.
        weights: PathBuf,
        /// Rows of its embedding.
        rows: usize,
    },
    /// The vocabulary is not usable (duplicate tokens, `xxunk` not first).
    #[error("invalid vocabulary in {}: {source}", .path.display())]
    Vocab {
        /// The vocabulary file.
        path: PathBuf,
        /// The vocabulary error.
        source: Box<VocabError>,
    },
    /// The tensors do not form a model.
    #[error("failed to build the model from {}: {source}", .path.display())]
    Model {
        /// The weights file.
        path: PathBuf,
        /// The model error.
        source: Box<ModelError>,
    },
}

/// A fastai model converted to the crate's types.
#[derive(Debug)]
pub struct ImportedLm {
    /// The network, on the CPU.
    pub model: LanguageModel,
    /// The vocabulary without `xxfake` fillers.
    pub vocab: Vocab,
    /// A language model, or an encoder when the file has no decoder.
    pub kind: ModelKind,
    /// Key layout the weights file was recognised as.
    pub layout: FastaiLayout,
    /// Number of trailing `xxfake` tokens (and embedding rows) dropped.
    pub dropped_fillers: usize,
    /// Whether the file also held optimizer state, which is not imported.
    pub had_optimizer: bool,
}

/// Loads fastai weights and their vocabulary and builds the model. The configuration is
/// inferred from the tensor shapes, with fastai's language-model dropout defaults and
/// `pad_id` set to the id of `xxpad` (1 when the vocabulary lacks it).
pub fn import_fastai_lm(weights: &Path, itos: &Path) -> Result<ImportedLm, FastaiImportError> {
    let loaded = load_fastai_lm(weights)?;
    let tokens = read_itos(itos)?;
    if tokens.len() != loaded.shape.vocab_size {
        return Err(FastaiImportError::ItosLength {
            itos: itos.to_path_buf(),
            itos_len: tokens.len(),
            weights: weights.to_path_buf(),
            rows: loaded.shape.vocab_size,
        });
    }
    let (vocab, dropped_fillers) =
        Vocab::from_fastai_itos(tokens).map_err(|source| FastaiImportError::Vocab {
            path: itos.to_path_buf(),
            source: Box::new(source),
        })?;

    let model_error = |source: ModelError| FastaiImportError::Model {
        path: weights.to_path_buf(),
        source: Box::new(source),
    };
    let config = infer_config(&loaded, vocab.len(), vocab.get(PAD).unwrap_or(1));
    let tensors = drop_filler_rows(&loaded, vocab.len())
        .map_err(|source| model_error(ModelError::Candle(source)))?;
    let model = LanguageModel::from_tensors(config, &tensors).map_err(model_error)?;
    Ok(ImportedLm {
        model,
        vocab,
        kind: if loaded.shape.has_decoder {
            ModelKind::LanguageModel
        } else {
            ModelKind::Encoder
        },
        layout: loaded.layout,
        dropped_fillers,
        had_optimizer: loaded.had_optimizer,
    })
}

/// Returns the AWD-LSTM configuration that the imported shapes describe.
fn infer_config(weights: &FastaiWeights, vocab_size: usize, pad_id: u32) -> AwdLstmConfig {
    let shape = &weights.shape;
    AwdLstmConfig {
        embedding_size: shape.embedding_size,
        hidden_size: shape.hidden_size,
        layers: shape.layers,
        pad_id,
        // An encoder has no decoder: it is stored as tied without bias, so that only the
        // embedding and the LSTM weights are expected.
        tie_weights: shape.tied || !shape.has_decoder,
        output_bias: shape.has_decoder,
        ..AwdLstmConfig::language_model(vocab_size)
    }
}

/// Keeps the first `rows` rows of the vocabulary-sized tensors, dropping filler rows.
fn drop_filler_rows(
    weights: &FastaiWeights,
    rows: usize,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::with_capacity(weights.tensors.len());
    for (name, tensor) in &weights.tensors {
        let per_token = matches!(
            name.as_str(),
            "encoder.weight" | "decoder.weight" | "decoder.bias"
        );
        let truncated = if per_token && tensor.dims()[0] > rows {
            tensor.narrow(0, 0, rows)?.contiguous()?
        } else {
            tensor.clone()
        };
        tensors.insert(name.clone(), truncated);
    }
    Ok(tensors)
}
