//! Token vocabularies built like fastai 2.x's `make_vocab`, with streaming, mergeable
//! counting and a plain-text on-disk format.
//!
//! Differences from fastai 2.8:
//! - Ties between words with the same count are ordered by the token's UTF-8 bytes
//!   (ascending). fastai keeps the `Counter`'s insertion order, which depends on the
//!   order the documents were read in.
//! - The vocabulary is not padded with `xxfake` filler tokens to a multiple of 8.
//!   [`Vocab::from_fastai_itos`] drops that padding when importing a fastai `itos`.
//!
//! On disk a vocabulary is a folder with `vocab.txt` (one escaped token a line, see
//! [`escape_token`]) and `vocab.json` (a [`VocabHeader`]).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{SPECIAL_TOKENS, UNK};

/// fastai 2.x's default minimum count for a word to enter the vocabulary.
pub const DEFAULT_MIN_FREQ: u64 = 3;
/// fastai 2.x's default maximum vocabulary size, special tokens included.
pub const DEFAULT_MAX_VOCAB: usize = 60_000;
/// Filler token fastai appends to pad its vocabulary to a multiple of 8.
pub const FASTAI_FILLER: &str = "xxfake";
/// File name of the token list inside a vocabulary folder.
pub const VOCAB_TXT: &str = "vocab.txt";
/// File name of the header inside a vocabulary folder.
pub const VOCAB_JSON: &str = "vocab.json";

/// Errors from building, importing, saving and loading vocabularies.
#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    /// A token occurs twice in a token list.
    #[error("duplicate token {token:?} at ids {first} and {second}: every token must be unique")]
    DuplicateToken {
        /// The repeated token.
        token: String,
        /// Id of its first occurrence.
        first: usize,
        /// Id of its second occurrence.
        second: usize,
    },
    /// The token list does not start with `xxunk`, so unknown words could not map to id 0.
    #[error("token 0 is {found:?} but must be \"xxunk\", the id unknown words map to")]
    UnknownNotFirst {
        /// The token found at id 0, or an empty string for an empty list.
        found: String,
    },
    /// The vocabulary has more tokens than a `u32` id can address.
    #[error("vocabulary has {size} tokens, more than u32 ids can address")]
    TooLarge {
        /// Number of tokens.
        size: usize,
    },
    /// An id passed to [`Vocab::decode`] is not in the vocabulary.
    #[error("token id {id} is out of range for a vocabulary of {size} tokens")]
    IdOutOfRange {
        /// The invalid id.
        id: u32,
        /// Vocabulary size.
        size: usize,
    },
    /// Reading or writing a file failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// The failed operation: "read", "write" or "create".
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `vocab.txt` contains an invalid escape sequence.
    #[error("{path}:{line}: invalid escape {sequence:?}: only \\n, \\r and \\\\ are allowed")]
    BadEscape {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending sequence.
        sequence: String,
    },
    /// `vocab.txt` is not valid UTF-8 or does not end with a newline.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Description of the problem.
        reason: String,
    },
    /// `vocab.json` is not a valid header.
    #[error("{path}: invalid vocabulary header: {source}")]
    Header {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// `vocab.txt` and `vocab.json` disagree.
    #[error("{path}: {field} is {found} but {header} records {expected}; the files do not belong together or one was edited")]
    Mismatch {
        /// The token file.
        path: PathBuf,
        /// The header file.
        header: PathBuf,
        /// "size" or "sha256".
        field: &'static str,
        /// Value computed from the token file.
        found: String,
        /// Value recorded in the header.
        expected: String,
    },
}

/// Streaming, mergeable token counts from which a [`Vocab`] is built.
///
/// Each rayon worker can count its own share of documents and the partial counters are
/// combined with [`TokenCounter::merge`]. The result does not depend on the order of
/// `add` and `merge` calls.
#[derive(Debug, Clone, Default)]
pub struct TokenCounter {
    counts: FxHashMap<String, u64>,
}

impl TokenCounter {
    /// Creates an empty counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one occurrence of each token in `tokens`.
    pub fn add<S: AsRef<str>>(&mut self, tokens: &[S]) {
        for token in tokens {
            self.add_count(token.as_ref(), 1);
        }
    }

    /// Adds `count` occurrences of `token`.
    pub fn add_count(&mut self, token: &str, count: u64) {
        // Looking up by `&str` first avoids allocating a `String` for known tokens.
        if let Some(existing) = self.counts.get_mut(token) {
            *existing += count;
        } else {
            self.counts.insert(token.to_owned(), count);
        }
    }

    /// Adds all counts of `other` to `self`.
    pub fn merge(&mut self, other: TokenCounter) {
        if other.counts.len() > self.counts.len() {
            let smaller = std::mem::replace(&mut self.counts, other.counts);
            for (token, count) in smaller {
                *self.counts.entry(token).or_insert(0) += count;
            }
        } else {
            for (token, count) in other.counts {
                *self.counts.entry(token).or_insert(0) += count;
            }
        }
    }

    /// Returns how often `token` was counted.
    pub fn count(&self, token: &str) -> u64 {
        self.counts.get(token).copied().unwrap_or(0)
    }

    /// Returns the number of distinct tokens counted.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Returns true when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Builds the vocabulary: the 9 special tokens (ids 0 to 8), then every other token
    /// counted at least `min_freq` times, by descending count and ascending bytes on ties,
    /// until the vocabulary contains `max_vocab` tokens.
    ///
    /// The special tokens are always kept, so a `max_vocab` below 9 yields just them.
    /// Special tokens that were counted are not repeated.
    pub fn build(&self, min_freq: u64, max_vocab: usize) -> Vocab {
        let mut words: Vec<(&str, u64)> = self
            .counts
            .iter()
            .filter(|(token, &count)| {
                count >= min_freq && !SPECIAL_TOKENS.contains(&token.as_str())
            })
            .map(|(token, &count)| (token.as_str(), count))
            .collect();
        words.sort_unstable_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
        });
        words.truncate(max_vocab.saturating_sub(SPECIAL_TOKENS.len()));

        let tokens: Vec<String> = SPECIAL_TOKENS
            .iter()
            .copied()
            .chain(words.into_iter().map(|(token, _)| token))
            .map(str::to_owned)
            .collect();
        // The tokens are distinct by construction and start with xxunk.
        let index = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id as u32))
            .collect();
        Vocab {
            tokens,
            index,
            min_freq,
            max_vocab,
        }
    }
}

/// Kind of model a vocabulary belongs to, as recorded in `vocab.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VocabKind {
    /// Whole words from a word tokenizer.
    Word,
    /// Pieces of a Unigram (SentencePiece-style) subword model.
    Unigram,
    /// Pieces of a byte-pair-encoding subword model.
    Bpe,
}

impl fmt::Display for VocabKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            VocabKind::Word => "word",
            VocabKind::Unigram => "unigram",
            VocabKind::Bpe => "bpe",
        };
        f.write_str(name)
    }
}

/// Contents of `vocab.json`, the header saved next to `vocab.txt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VocabHeader {
    /// Number of tokens in `vocab.txt`.
    pub size: usize,
    /// Minimum count used to build the vocabulary (0 when unknown).
    pub min_freq: u64,
    /// Maximum size used to build the vocabulary, special tokens included.
    pub max_vocab: usize,
    /// Name of the tokenizer rules the text went through, given by the caller.
    pub rules: String,
    /// Kind of model the tokens come from.
    pub kind: VocabKind,
    /// Lowercase hex SHA-256 of the token list, see [`Vocab::content_hash`].
    pub sha256: String,
}

/// Bidirectional mapping between tokens and `u32` ids, with `xxunk` at id 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    tokens: Vec<String>,
    index: FxHashMap<String, u32>,
    min_freq: u64,
    max_vocab: usize,
}

impl Vocab {
    /// Creates a vocabulary from tokens in id order, for example fastai's `itos`.
    ///
    /// Rejects duplicate tokens and a list whose token 0 is not `xxunk`. The
    /// vocabulary records `min_freq` 0 (unknown) and `max_vocab` equal to its size.
    pub fn from_tokens(tokens: Vec<String>) -> Result<Self, VocabError> {
        if tokens.first().map(String::as_str) != Some(UNK) {
            return Err(VocabError::UnknownNotFirst {
                found: tokens.first().cloned().unwrap_or_default(),
            });
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(VocabError::TooLarge { size: tokens.len() });
        }
        let mut index = FxHashMap::with_capacity_and_hasher(tokens.len(), Default::default());
        for (id, token) in tokens.iter().enumerate() {
            if let Some(first) = index.insert(token.clone(), id as u32) {
                return Err(VocabError::DuplicateToken {
                    token: token.clone(),
                    first: first as usize,
                    second: id,
                });
            }
        }
        let max_vocab = tokens.len();
        Ok(Self {
            tokens,
            index,
            min_freq: 0,
            max_vocab,
        })
    }

    /// Creates a vocabulary from a fastai 2.x `itos`, dropping the trailing `xxfake`
    /// filler tokens; returns the vocabulary and the number of fillers dropped.
    ///
    /// An embedding matrix trained by fastai has one row per `itos` entry, so the
    /// caller must drop that many trailing rows as well.
    pub fn from_fastai_itos(mut itos: Vec<String>) -> Result<(Self, usize), VocabError> {
        let kept_len = itos
            .iter()
            .rposition(|token| token != FASTAI_FILLER)
            .map_or(0, |last| last + 1);
        let dropped = itos.len() - kept_len;
        itos.truncate(kept_len);
        Ok((Self::from_tokens(itos)?, dropped))
    }

    /// Sets the `min_freq` and `max_vocab` recorded with this vocabulary.
    pub fn with_limits(mut self, min_freq: u64, max_vocab: usize) -> Self {
        self.min_freq = min_freq;
        self.max_vocab = max_vocab;
        self
    }

    /// Returns the number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Returns true when the vocabulary has no tokens (never true for a built one).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Returns the id of `token`, or 0 (`xxunk`) for a token not in the vocabulary.
    pub fn id(&self, token: &str) -> u32 {
        self.index.get(token).copied().unwrap_or(0)
    }

    /// Returns the id of `token`, or `None` for a token not in the vocabulary.
    pub fn get(&self, token: &str) -> Option<u32> {
        self.index.get(token).copied()
    }

    /// Returns the token with id `id`, or `None` when out of range.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Maps tokens to ids, unknown tokens to 0 (`xxunk`).
    pub fn encode<S: AsRef<str>>(&self, tokens: &[S]) -> Vec<u32> {
        tokens.iter().map(|token| self.id(token.as_ref())).collect()
    }

    /// Maps ids back to tokens, failing on the first id out of range.
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<&str>, VocabError> {
        ids.iter()
            .map(|&id| {
                self.token(id).ok_or(VocabError::IdOutOfRange {
                    id,
                    size: self.tokens.len(),
                })
            })
            .collect()
    }

    /// Returns the tokens in id order.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// Returns the minimum count the vocabulary was built with (0 when unknown).
    pub fn min_freq(&self) -> u64 {
        self.min_freq
    }

    /// Returns the maximum size the vocabulary was built with, special tokens included.
    pub fn max_vocab(&self) -> usize {
        self.max_vocab
    }

    /// Returns the lowercase hex SHA-256 of the token list in id order, each token
    /// escaped with [`escape_token`] and followed by `\n`.
    ///
    /// The hashed bytes are exactly the contents of `vocab.txt`, so `sha256sum vocab.txt`
    /// prints the same value. For tokens without `\`, `\n` or `\r` this is the hash of
    /// the raw tokens each followed by `\n`.
    pub fn content_hash(&self) -> String {
        let mut hasher = Sha256::new();
        for token in &self.tokens {
            hasher.update(escape_token(token).as_bytes());
            hasher.update(b"\n");
        }
        hex(&hasher.finalize())
    }

    /// Writes `vocab.txt` and `vocab.json` into `dir`, creating it if needed, and returns
    /// the header written. `rules` names the tokenizer rules the text went through.
    pub fn save(
        &self,
        dir: &Path,
        rules: &str,
        kind: VocabKind,
    ) -> Result<VocabHeader, VocabError> {
        fs::create_dir_all(dir).map_err(|source| VocabError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;

        let mut text = String::with_capacity(self.tokens.iter().map(|t| t.len() + 1).sum());
        for token in &self.tokens {
            text.push_str(&escape_token(token));
            text.push('\n');
        }
        write_file(&dir.join(VOCAB_TXT), text.as_bytes())?;

        let header = VocabHeader {
            size: self.tokens.len(),
            min_freq: self.min_freq,
            max_vocab: self.max_vocab,
            rules: rules.to_owned(),
            kind,
            sha256: self.content_hash(),
        };
        let header_path = dir.join(VOCAB_JSON);
        let json = serde_json::to_string_pretty(&header).map_err(|source| VocabError::Header {
            path: header_path.clone(),
            source,
        })?;
        write_file(&header_path, format!("{json}\n").as_bytes())?;
        Ok(header)
    }

    /// Loads a vocabulary saved by [`Vocab::save`], checking its size and hash.
    pub fn load(dir: &Path) -> Result<Self, VocabError> {
        Self::load_with_header(dir).map(|(vocab, _)| vocab)
    }

    /// Loads a vocabulary saved by [`Vocab::save`] together with its header.
    pub fn load_with_header(dir: &Path) -> Result<(Self, VocabHeader), VocabError> {
        let header_path = dir.join(VOCAB_JSON);
        let header_text = read_file(&header_path)?;
        let header_text = String::from_utf8(header_text).map_err(|_| VocabError::Malformed {
            path: header_path.clone(),
            reason: "file is not valid UTF-8".to_owned(),
        })?;
        let header: VocabHeader =
            serde_json::from_str(&header_text).map_err(|source| VocabError::Header {
                path: header_path.clone(),
                source,
            })?;

        let txt_path = dir.join(VOCAB_TXT);
        let tokens = parse_token_file(&txt_path, &read_file(&txt_path)?)?;
        if tokens.len() != header.size {
            return Err(VocabError::Mismatch {
                path: txt_path,
                header: header_path,
                field: "size",
                found: tokens.len().to_string(),
                expected: header.size.to_string(),
            });
        }

        let vocab = Self::from_tokens(tokens)?.with_limits(header.min_freq, header.max_vocab);
        let hash = vocab.content_hash();
        if hash != header.sha256 {
            return Err(VocabError::Mismatch {
                path: txt_path,
                header: header_path,
                field: "sha256",
                found: hash,
                expected: header.sha256.clone(),
            });
        }
        Ok((vocab, header))
    }
}

/// Escapes a token for one line of `vocab.txt`.
///
/// A backslash becomes `\\`, a newline becomes `\n` and a carriage return becomes `\r`
/// (two characters each). Every other character is kept as is.
pub fn escape_token(token: &str) -> String {
    let mut escaped = String::with_capacity(token.len());
    for c in token.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            _ => escaped.push(c),
        }
    }
    escaped
}

/// Reverses [`escape_token`]; returns the invalid escape sequence on failure.
pub fn unescape_token(line: &str) -> Result<String, String> {
    let mut token = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            token.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => token.push('\\'),
            Some('n') => token.push('\n'),
            Some('r') => token.push('\r'),
            Some(other) => return Err(format!("\\{other}")),
            None => return Err("\\".to_owned()),
        }
    }
    Ok(token)
}

/// Splits the bytes of `vocab.txt` into unescaped tokens, one per `\n`-terminated line.
fn parse_token_file(path: &Path, bytes: &[u8]) -> Result<Vec<String>, VocabError> {
    let text = std::str::from_utf8(bytes).map_err(|error| VocabError::Malformed {
        path: path.to_path_buf(),
        reason: format!("file is not valid UTF-8 ({error})"),
    })?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = text.strip_suffix('\n') else {
        return Err(VocabError::Malformed {
            path: path.to_path_buf(),
            reason: "last line does not end with a newline; the file may be truncated".to_owned(),
        });
    };
    body.split('\n')
        .enumerate()
        .map(|(index, line)| {
            unescape_token(line).map_err(|sequence| VocabError::BadEscape {
                path: path.to_path_buf(),
                line: index + 1,
                sequence,
            })
        })
        .collect()
}

fn read_file(path: &Path) -> Result<Vec<u8>, VocabError> {
    fs::read(path).map_err(|source| VocabError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), VocabError> {
    let io_error = |source| VocabError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::create(path).map_err(io_error)?;
    file.write_all(bytes).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}
