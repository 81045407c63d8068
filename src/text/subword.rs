//! Unigram and BPE subword models for text already rewritten by fastai's rules, trained
//! with the `tokenizers` crate, as MultiFiT does with SentencePiece.
//!
//! Words are separated by single ASCII spaces, as fastai joins its tokens. Each word
//! is split into pieces on its own, with SentencePiece's `▁` (U+2581) marking the start
//! of a word, so no piece crosses a space. A word equal to a special token (`xxmaj`,
//! `xxbos`, ...) is kept whole as that token, which takes ids 0 to 8 in both the model
//! and its [`Vocab`]. Unlike SentencePiece's default `nmt_nfkc` rule, no Unicode
//! normalization is applied.
//!
//! A folder saved by [`SubwordModel::save`] contains `tokenizer.json` next to
//! `vocab.txt` and `vocab.json` (see [`crate::text::vocab`]).

use std::path::{Path, PathBuf};

use rustc_hash::FxHashSet;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, Model, ModelWrapper, Tokenizer};

use super::vocab::{Vocab, VocabError, VocabKind};
use super::UNK;

/// Word-start marker used by SentencePiece and the `Metaspace` pre-tokenizer.
pub const WORD_START: char = '\u{2581}';
/// File name of the serialized `tokenizers` model inside a subword model folder.
pub const TOKENIZER_JSON: &str = "tokenizer.json";

/// Subword segmentation algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubwordKind {
    /// SentencePiece-style Unigram language model.
    Unigram,
    /// Byte-pair encoding over characters.
    Bpe,
}

impl SubwordKind {
    /// Returns the matching vocabulary kind recorded in `vocab.json`.
    pub fn vocab_kind(self) -> VocabKind {
        match self {
            SubwordKind::Unigram => VocabKind::Unigram,
            SubwordKind::Bpe => VocabKind::Bpe,
        }
    }
}

/// Errors from training, saving, loading and applying subword models.
#[derive(Debug, thiserror::Error)]
pub enum SubwordError {
    /// The special token list is invalid.
    #[error("invalid special tokens {tokens:?}: {reason}")]
    InvalidSpecialTokens {
        /// The special tokens passed in.
        tokens: Vec<String>,
        /// Description of the problem.
        reason: String,
    },
    /// The requested vocabulary size leaves no room for pieces.
    #[error("vocab_size {vocab_size} is invalid: it must exceed the {specials} special tokens and fit in u32")]
    InvalidVocabSize {
        /// The requested size.
        vocab_size: usize,
        /// Number of special tokens.
        specials: usize,
    },
    /// The `tokenizers` crate failed.
    #[error("failed to {action}: {source}")]
    Tokenizers {
        /// The failed operation, naming the file where there is one.
        action: String,
        /// The underlying error.
        source: tokenizers::Error,
    },
    /// Creating the model folder failed.
    #[error("failed to create {path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `tokenizer.json` contains a model other than Unigram or BPE.
    #[error("{path}: model type {found} is not supported, expected Unigram or BPE")]
    UnsupportedModel {
        /// The tokenizer file.
        path: PathBuf,
        /// The model type found.
        found: &'static str,
    },
    /// The trained model's ids are not the contiguous range 0..size.
    #[error("model vocabulary has no token for id {id} although it has {size} tokens")]
    NonContiguousIds {
        /// The first missing id.
        id: u32,
        /// Number of tokens.
        size: usize,
    },
    /// `tokenizer.json` and `vocab.txt`/`vocab.json` disagree.
    #[error("{path}: {detail}; the files in this folder do not belong together")]
    VocabMismatch {
        /// The tokenizer file.
        path: PathBuf,
        /// The first difference.
        detail: String,
    },
    /// Building, saving or loading the vocabulary failed.
    #[error(transparent)]
    Vocab(#[from] VocabError),
}

/// A trained Unigram or BPE model together with its [`Vocab`].
#[derive(Debug, Clone)]
pub struct SubwordModel {
    tokenizer: Tokenizer,
    kind: SubwordKind,
    vocab: Vocab,
    special_tokens: FxHashSet<String>,
}

/// Trains a subword model of `vocab_size` pieces, special tokens included, on `texts`.
///
/// `special_tokens` take ids 0 to n-1 in the given order and must start with `xxunk`,
/// which unknown characters map to; pass [`crate::text::SPECIAL_TOKENS`] for fastai's 9.
/// Words equal to a special token are left out of training. Fewer than `vocab_size`
/// pieces result when the texts do not support that many.
pub fn train_subword<I, S>(
    texts: I,
    kind: SubwordKind,
    vocab_size: usize,
    special_tokens: &[&str],
) -> Result<SubwordModel, SubwordError>
where
    I: IntoIterator<Item = S>,
    I::IntoIter: Send,
    S: AsRef<str> + Send,
{
    let specials = check_special_tokens(special_tokens)?;
    let vocab_size_u32 = u32::try_from(vocab_size)
        .ok()
        .filter(|&size| size as usize > specials.len());
    let Some(vocab_size_u32) = vocab_size_u32 else {
        return Err(SubwordError::InvalidVocabSize {
            vocab_size,
            specials: specials.len(),
        });
    };

    let added: Vec<AddedToken> = special_tokens
        .iter()
        .map(|token| AddedToken::from(token.to_string(), true))
        .collect();
    let (model, mut trainer): (ModelWrapper, TrainerWrapper) = match kind {
        SubwordKind::Unigram => {
            let trainer = UnigramTrainer::builder()
                .vocab_size(vocab_size_u32)
                .special_tokens(added)
                .unk_token(Some(UNK.to_owned()))
                .show_progress(false)
                .build()
                .map_err(|error| SubwordError::Tokenizers {
                    action: "configure the Unigram trainer".to_owned(),
                    source: Box::new(error),
                })?;
            (Unigram::default().into(), trainer.into())
        }
        SubwordKind::Bpe => {
            let trainer = BpeTrainer::builder()
                .vocab_size(vocab_size)
                .special_tokens(added)
                .show_progress(false)
                .build();
            let model = BPE::builder()
                .unk_token(UNK.to_owned())
                .build()
                .map_err(|source| SubwordError::Tokenizers {
                    action: "create the BPE model".to_owned(),
                    source,
                })?;
            (model.into(), trainer.into())
        }
    };

    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new(
        WORD_START,
        PrependScheme::Always,
        true,
    )));
    tokenizer.with_decoder(Some(MetaspaceDecoder::new(
        WORD_START,
        PrependScheme::Always,
        true,
    )));

    let training_specials = specials.clone();
    let sentences = texts
        .into_iter()
        .map(move |text| remove_special_words(text.as_ref(), &training_specials));
    tokenizer
        .train(&mut trainer, sentences)
        .map_err(|source| SubwordError::Tokenizers {
            action: format!("train the {kind:?} model"),
            source,
        })?;

    let tokens = tokenizer_tokens(&tokenizer)?;
    for (id, expected) in special_tokens.iter().enumerate() {
        if tokens.get(id).map(String::as_str) != Some(expected) {
            return Err(SubwordError::InvalidSpecialTokens {
                tokens: special_tokens.iter().map(|t| t.to_string()).collect(),
                reason: format!("the trained model does not have {expected:?} at id {id}"),
            });
        }
    }
    let vocab = Vocab::from_tokens(tokens)?.with_limits(0, vocab_size);
    Ok(SubwordModel {
        tokenizer,
        kind,
        vocab,
        special_tokens: specials,
    })
}

impl SubwordModel {
    /// Writes `tokenizer.json`, `vocab.txt` and `vocab.json` into `dir`, creating it if
    /// needed. `rules` names the tokenizer rules the text went through, such as "fastai".
    pub fn save(&self, dir: &Path, rules: &str) -> Result<(), SubwordError> {
        std::fs::create_dir_all(dir).map_err(|source| SubwordError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(TOKENIZER_JSON);
        self.tokenizer
            .save(&path, true)
            .map_err(|source| SubwordError::Tokenizers {
                action: format!("write {}", path.display()),
                source,
            })?;
        self.vocab.save(dir, rules, self.kind.vocab_kind())?;
        Ok(())
    }

    /// Loads a model saved by [`SubwordModel::save`], checking that `tokenizer.json`
    /// and the vocabulary files agree on the kind and on every token.
    pub fn load(dir: &Path) -> Result<Self, SubwordError> {
        let path = dir.join(TOKENIZER_JSON);
        let tokenizer = Tokenizer::from_file(&path).map_err(|source| SubwordError::Tokenizers {
            action: format!("read {}", path.display()),
            source,
        })?;
        let kind = match tokenizer.get_model() {
            ModelWrapper::Unigram(_) => SubwordKind::Unigram,
            ModelWrapper::BPE(_) => SubwordKind::Bpe,
            ModelWrapper::WordPiece(_) => return Err(unsupported(path, "WordPiece")),
            ModelWrapper::WordLevel(_) => return Err(unsupported(path, "WordLevel")),
        };

        let (vocab, header) = Vocab::load_with_header(dir)?;
        if header.kind != kind.vocab_kind() {
            return Err(SubwordError::VocabMismatch {
                path,
                detail: format!(
                    "the model is {} but vocab.json records kind {}",
                    kind.vocab_kind(),
                    header.kind
                ),
            });
        }
        let tokens = tokenizer_tokens(&tokenizer)?;
        if tokens.len() != vocab.len() {
            return Err(SubwordError::VocabMismatch {
                path,
                detail: format!(
                    "the model has {} tokens but vocab.txt has {}",
                    tokens.len(),
                    vocab.len()
                ),
            });
        }
        let first_difference = tokens
            .iter()
            .zip(vocab.tokens())
            .position(|(model_token, vocab_token)| model_token != vocab_token);
        if let Some(id) = first_difference {
            return Err(SubwordError::VocabMismatch {
                path,
                detail: format!(
                    "id {id} is {:?} in the model but {:?} in vocab.txt",
                    tokens[id],
                    vocab.tokens()[id]
                ),
            });
        }

        let special_tokens = tokenizer
            .get_added_tokens_decoder()
            .into_values()
            .filter(|token| token.special)
            .map(|token| token.content)
            .collect();
        Ok(Self {
            tokenizer,
            kind,
            vocab,
            special_tokens,
        })
    }

    /// Splits `text` into pieces: special tokens whole, other words into pieces whose
    /// first one starts with `▁`.
    ///
    /// A character missing from the vocabulary becomes the piece `xxunk` in a BPE model
    /// but stays as is in a Unigram model; both get id 0.
    pub fn encode(&self, text: &str) -> Result<Vec<String>, SubwordError> {
        let mut pieces = Vec::new();
        self.for_each_piece(text, |token, _| pieces.push(token.to_owned()))?;
        Ok(pieces)
    }

    /// Splits `text` like [`SubwordModel::encode`] and returns the piece ids.
    pub fn encode_ids(&self, text: &str) -> Result<Vec<u32>, SubwordError> {
        let mut ids = Vec::new();
        self.for_each_piece(text, |_, id| ids.push(id))?;
        Ok(ids)
    }

    /// Joins pieces back into text, the inverse of [`SubwordModel::encode`] for text
    /// whose characters are all in the vocabulary.
    pub fn decode<S: AsRef<str>>(&self, pieces: &[S]) -> String {
        let mut text = String::new();
        for piece in pieces {
            let piece = piece.as_ref();
            if self.special_tokens.contains(piece) {
                text.push(' ');
                text.push_str(piece);
            } else {
                text.extend(piece.chars().map(|c| if c == WORD_START { ' ' } else { c }));
            }
        }
        match text.strip_prefix(' ') {
            Some(rest) => rest.to_owned(),
            None => text,
        }
    }

    /// Returns the vocabulary, with the model's pieces in id order.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Returns the segmentation algorithm.
    pub fn kind(&self) -> SubwordKind {
        self.kind
    }

    /// Returns the underlying `tokenizers` tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Calls `emit` with each piece of `text` and its id.
    ///
    /// This applies the model to each space-separated word prefixed with `▁`, which is
    /// what the `Metaspace` pre-tokenizer does for text without special tokens, and
    /// passes special-token words through whole.
    // NOTE: `tokenizer.json` used directly through the `tokenizers` library matches
    // special tokens inside words too and turns the space after one into a lone `▁`.
    fn for_each_piece(
        &self,
        text: &str,
        mut emit: impl FnMut(&str, u32),
    ) -> Result<(), SubwordError> {
        let model = self.tokenizer.get_model();
        let mut word_buffer = String::new();
        for word in text.split(' ') {
            if self.special_tokens.contains(word) {
                emit(word, self.vocab.id(word));
                continue;
            }
            word_buffer.clear();
            word_buffer.push(WORD_START);
            word_buffer.push_str(word);
            let tokens =
                model
                    .tokenize(&word_buffer)
                    .map_err(|source| SubwordError::Tokenizers {
                        action: format!("split the word {word:?} into pieces"),
                        source,
                    })?;
            for token in &tokens {
                emit(&token.value, token.id);
            }
        }
        Ok(())
    }
}

/// Checks that `special_tokens` are distinct, non-empty, contain no space and start
/// with `xxunk`, and returns them as a set.
fn check_special_tokens(special_tokens: &[&str]) -> Result<FxHashSet<String>, SubwordError> {
    let invalid = |reason: String| SubwordError::InvalidSpecialTokens {
        tokens: special_tokens.iter().map(|t| t.to_string()).collect(),
        reason,
    };
    if special_tokens.first() != Some(&UNK) {
        return Err(invalid(format!(
            "the first one must be {UNK:?}, the unknown token"
        )));
    }
    let mut set = FxHashSet::default();
    for token in special_tokens {
        if token.is_empty() || token.contains(' ') {
            return Err(invalid(format!("{token:?} is empty or contains a space")));
        }
        if !set.insert(token.to_string()) {
            return Err(invalid(format!("{token:?} occurs twice")));
        }
    }
    Ok(set)
}

/// Returns `text` without the words that are special tokens, for training.
fn remove_special_words(text: &str, specials: &FxHashSet<String>) -> String {
    let mut without_specials = String::with_capacity(text.len());
    for (index, word) in text
        .split(' ')
        .filter(|word| !specials.contains(*word))
        .enumerate()
    {
        if index > 0 {
            without_specials.push(' ');
        }
        without_specials.push_str(word);
    }
    without_specials
}

/// Returns the tokenizer's tokens, added tokens included, in id order.
fn tokenizer_tokens(tokenizer: &Tokenizer) -> Result<Vec<String>, SubwordError> {
    let vocab = tokenizer.get_vocab(true);
    let size = vocab.len();
    let mut tokens: Vec<Option<String>> = vec![None; size];
    for (token, id) in vocab {
        // An id out of range leaves a lower id without a token, which is reported below.
        if let Some(slot) = tokens.get_mut(id as usize) {
            *slot = Some(token);
        }
    }
    tokens
        .into_iter()
        .enumerate()
        .map(|(id, token)| {
            token.ok_or(SubwordError::NonContiguousIds {
                id: id as u32,
                size,
            })
        })
        .collect()
}

fn unsupported(path: PathBuf, found: &'static str) -> SubwordError {
    SubwordError::UnsupportedModel { path, found }
}
