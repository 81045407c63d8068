//! A model folder: everything needed to use a trained language model elsewhere.
//!
//! | file | contents |
//! | --- | --- |
//! | `model.safetensors` | the weights, under the canonical parameter names |
//! | `config.json` | [`ModelFolderConfig`]: the kind of model and its [`AwdLstmConfig`] |
//! | `vocab.txt`, `vocab.json` | the vocabulary and its header, which names the tokenizer rules |
//! | `tokenizer.json` | the subword model, for subword vocabularies only |
//!
//! A folder is self-contained, so it can be copied elsewhere and still work.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::model::{AwdLstmConfig, LanguageModel, ModelError};
use crate::text::rules::RuleSet;
use crate::text::subword::{SubwordError, SubwordModel};
use crate::text::tokenizer::Tokenizer;
use crate::text::vocab::{Vocab, VocabError, VocabKind};

/// File name of the weights in a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the configuration in a model folder.
pub const CONFIG_FILE: &str = "config.json";

/// Kind of model a folder contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// An AWD-LSTM language model with its decoder.
    LanguageModel,
    /// An AWD-LSTM encoder without a decoder (fastai's `save_encoder` output).
    Encoder,
}

/// Contents of `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFolderConfig {
    /// Kind of model in the folder.
    pub kind: ModelKind,
    /// The architecture.
    pub model: AwdLstmConfig,
    /// Whether the model reads text backwards (the backward half of a ULMFiT ensemble).
    #[serde(default)]
    pub backwards: bool,
}

/// Errors of reading and writing model folders.
#[derive(Debug, thiserror::Error)]
pub enum ModelFolderError {
    /// A file could not be read or written.
    #[error("failed to {action} {}: {source}", .path.display())]
    Io {
        /// Operation that failed.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `config.json` is not valid.
    #[error("invalid model config {}: {source}", .path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The vocabulary does not fit the weights.
    #[error("vocabulary in {} has {vocab} tokens but the model's embedding has {rows} rows", .dir.display())]
    VocabSize {
        /// The folder.
        dir: PathBuf,
        /// Tokens in the vocabulary.
        vocab: usize,
        /// Rows of the embedding.
        rows: usize,
    },
    /// The vocabulary names an unknown rule set.
    #[error("vocabulary in {} names an unknown rule set: {source}", .dir.display())]
    Rules {
        /// The folder.
        dir: PathBuf,
        /// The lookup error.
        source: crate::text::rules::UnknownRuleSetError,
    },
    /// The vocabulary could not be read or written.
    #[error(transparent)]
    Vocab(#[from] VocabError),
    /// The subword model could not be read or written.
    #[error(transparent)]
    Subword(#[from] SubwordError),
    /// The weights do not fit the configuration, or a tensor operation failed.
    #[error("model in {}: {source}", .dir.display())]
    Model {
        /// The folder.
        dir: PathBuf,
        /// The model error, boxed because it is large.
        source: Box<ModelError>,
    },
}

/// A loaded model folder.
pub struct LoadedModel {
    /// The folder's configuration.
    pub config: ModelFolderConfig,
    /// The network.
    pub model: LanguageModel,
    /// The vocabulary.
    pub vocab: Vocab,
    /// The tokenizer the vocabulary was built with.
    pub tokenizer: Tokenizer,
}

/// Writes `model`, its configuration and `vocab` into `dir` (created if missing).
/// `rules` names the tokenizer rule set the vocabulary was built with. For a subword
/// vocabulary pass its model, whose `tokenizer.json` is written too.
pub fn save(
    dir: &Path,
    config: &ModelFolderConfig,
    model: &LanguageModel,
    vocab: &Vocab,
    rules: &str,
    subword: Option<&SubwordModel>,
) -> Result<(), ModelFolderError> {
    fs::create_dir_all(dir).map_err(|source| ModelFolderError::Io {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let rows = model.config().vocab_size;
    if rows != vocab.len() {
        return Err(ModelFolderError::VocabSize {
            dir: dir.to_path_buf(),
            vocab: vocab.len(),
            rows,
        });
    }
    model
        .save(dir.join(WEIGHTS_FILE))
        .map_err(|source| ModelFolderError::Model {
            dir: dir.to_path_buf(),
            source: Box::new(source),
        })?;
    let config_path = dir.join(CONFIG_FILE);
    let json = serde_json::to_string_pretty(config).map_err(|source| ModelFolderError::Config {
        path: config_path.clone(),
        source,
    })?;
    fs::write(&config_path, json + "\n").map_err(|source| ModelFolderError::Io {
        action: "write",
        path: config_path,
        source,
    })?;
    match subword {
        Some(subword) => subword.save(dir, rules)?,
        None => {
            vocab.save(dir, rules, VocabKind::Word)?;
        }
    }
    Ok(())
}

/// Reads the configuration of a model folder.
pub fn read_config(dir: &Path) -> Result<ModelFolderConfig, ModelFolderError> {
    let path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&path).map_err(|source| ModelFolderError::Io {
        action: "read",
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ModelFolderError::Config { path, source })
}

/// Loads a model folder onto `device`: configuration, weights, vocabulary and tokenizer.
pub fn load(dir: &Path, device: &Device) -> Result<LoadedModel, ModelFolderError> {
    let config = read_config(dir)?;
    let (vocab, header) = Vocab::load_with_header(dir)?;
    if vocab.len() != config.model.vocab_size {
        return Err(ModelFolderError::VocabSize {
            dir: dir.to_path_buf(),
            vocab: vocab.len(),
            rows: config.model.vocab_size,
        });
    }
    let rules = RuleSet::by_name(&header.rules).map_err(|source| ModelFolderError::Rules {
        dir: dir.to_path_buf(),
        source,
    })?;
    let tokenizer = match header.kind {
        VocabKind::Word => Tokenizer::word(rules),
        VocabKind::Unigram | VocabKind::Bpe => Tokenizer::subword(rules, SubwordModel::load(dir)?),
    };
    let model = LanguageModel::load(config.model.clone(), dir.join(WEIGHTS_FILE), device).map_err(
        |source| ModelFolderError::Model {
            dir: dir.to_path_buf(),
            source: Box::new(source),
        },
    )?;
    Ok(LoadedModel {
        config,
        model,
        vocab,
        tokenizer,
    })
}
