//! Numericalized token files: a tokenized corpus stored as token ids and read back
//! through a read-only memory map.
//!
//! [`TokenFileWriter`] streams documents to disk and [`TokenFile`] maps the finished
//! file, so that a corpus larger than memory can be trained on without loading it.
//!
//! # Layout
//!
//! All integers are little-endian. `W` is the element width: 2 bytes (`u16` ids) when
//! the vocabulary size is at most 65,536, else 4 bytes (`u32` ids). `D` is the number
//! of documents and `T` the number of tokens.
//!
//! | Offset | Size | Field |
//! |---|---|---|
//! | 0 | 8 | magic bytes `ULMFTOK\0` |
//! | 8 | 4 | format version, `u32` (currently 1) |
//! | 12 | 4 | element width `W` in bytes, `u32` (2 or 4) |
//! | 16 | 8 | vocabulary size, `u64` (every id is below it) |
//! | 24 | 8 | number of documents `D`, `u64` |
//! | 32 | 8 | number of tokens `T`, `u64` |
//! | 40 | 4 | flags, `u32`: bit 0 set when the file stores labels, other bits zero |
//! | 44 | 4 | reserved, zero |
//! | 48 | 64 | vocabulary hash: SHA-256 as 64 lowercase hex ASCII characters |
//! | 112 | 16 | reserved, zero |
//! | 128 | `T * W` | token ids of all documents, concatenated in document order |
//! | | 0 to 7 | zero padding, so that the next section starts at a multiple of 8 |
//! | | `(D + 1) * 8` | document offset table, `u64`: document `i` is tokens `[off[i], off[i+1])`, `off[0] = 0`, `off[D] = T` |
//! | | `D * 4` | labels (only when flag bit 0 is set): class index per document, `u32` |
//! | | 4 | number of classes `C`, `u32` (only with labels) |
//! | | `C` times | class names (only with labels): byte length `u32`, then that many UTF-8 bytes |
//!
//! The file ends right after the last section, and [`TokenFile::open`] rejects a file
//! whose length differs from the length that the header implies.

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// Magic bytes at the start of every token file.
pub const MAGIC: [u8; 8] = *b"ULMFTOK\0";
/// Format version written by [`TokenFileWriter`] and accepted by [`TokenFile::open`].
pub const FORMAT_VERSION: u32 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 128;
/// Largest vocabulary size whose ids are stored as `u16`.
pub const MAX_U16_VOCAB: u64 = 65_536;

const FLAG_LABELS: u32 = 1;
const HASH_LEN: usize = 64;

/// Errors raised while writing or reading a token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// An I/O operation on the file failed.
    #[error("{action} token file {path} failed: {source}")]
    Io {
        /// The operation that failed, such as "creating" or "writing".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The vocabulary hash is not 64 lowercase hexadecimal characters.
    #[error("invalid vocabulary hash {hash:?}: expected a SHA-256 digest as 64 lowercase hex characters")]
    InvalidVocabHash {
        /// The rejected hash.
        hash: String,
    },
    /// The vocabulary size is zero or does not fit in `u32` ids.
    #[error("invalid vocabulary size {vocab_size}: expected 1 to {max}", max = u64::from(u32::MAX) + 1)]
    InvalidVocabSize {
        /// The rejected size.
        vocab_size: u64,
    },
    /// A token id is not below the vocabulary size.
    #[error("token id {id} at position {position} of document {document} is out of range for a vocabulary of size {vocab_size}")]
    IdOutOfRange {
        /// The rejected id.
        id: u32,
        /// Index of the document being written.
        document: u64,
        /// Position of the id inside the document.
        position: usize,
        /// The vocabulary size given to the writer.
        vocab_size: u64,
    },
    /// A document has no label although the file was created with classes.
    #[error("document {document} has no label, but the token file was created with classes; pass a class index for every document")]
    MissingLabel {
        /// Index of the document being written.
        document: u64,
    },
    /// A document has a label although the file was created without classes.
    #[error("document {document} has label {label}, but the token file was created without classes; pass classes to TokenFileWriter::create")]
    UnexpectedLabel {
        /// Index of the document being written.
        document: u64,
        /// The rejected label.
        label: u32,
    },
    /// A label is not below the number of classes.
    #[error("label {label} of document {document} is out of range for {n_classes} classes")]
    LabelOutOfRange {
        /// Index of the document being written.
        document: u64,
        /// The rejected label.
        label: u32,
        /// Number of classes given to the writer.
        n_classes: usize,
    },
    /// The file does not start with the token file magic bytes.
    #[error("{path} is not a token file: the magic bytes are missing")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// The file was written in a format version this code does not read.
    #[error("token file {path} has format version {version}, but only version {FORMAT_VERSION} is supported; rebuild the file")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found in the header.
        version: u32,
    },
    /// The header or a table is inconsistent.
    #[error("token file {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Description of the inconsistency.
        reason: String,
    },
    /// The file length differs from the length the header implies.
    #[error("token file {path} is {actual} bytes long, but its header implies {expected} bytes; the file is truncated or corrupt, rebuild it")]
    LengthMismatch {
        /// The file.
        path: PathBuf,
        /// Length implied by the header, in bytes.
        expected: u64,
        /// Actual length, in bytes.
        actual: u64,
    },
    /// The file was built with a different vocabulary than expected.
    #[error("token file {path} was built with vocabulary hash {found}, but vocabulary hash {expected} was expected; rebuild the token file with the current vocabulary")]
    VocabMismatch {
        /// The file.
        path: PathBuf,
        /// The hash the caller expected.
        expected: String,
        /// The hash stored in the file.
        found: String,
    },
}

/// Returns the element width in bytes (2 or 4) used for a vocabulary size.
pub fn element_width(vocab_size: u64) -> usize {
    if vocab_size <= MAX_U16_VOCAB {
        2
    } else {
        4
    }
}

fn validate_hash(hash: &str) -> Result<(), TokenFileError> {
    let valid = hash.len() == HASH_LEN
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if valid {
        Ok(())
    } else {
        Err(TokenFileError::InvalidVocabHash {
            hash: hash.to_string(),
        })
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".tmp");
    PathBuf::from(name)
}

fn padding_to_8(len: u64) -> u64 {
    (8 - len % 8) % 8
}

/// Streaming writer of a token file.
///
/// Token ids go straight to disk through a [`BufWriter`]; memory grows only by the
/// offset table and the labels (12 bytes per document). The data is written to
/// `<path>.tmp`, which [`finish`](Self::finish) renames to `path`, so an interrupted
/// run never leaves a partial file under the final name. Dropping the writer without
/// calling `finish` removes the temporary file.
pub struct TokenFileWriter {
    path: PathBuf,
    tmp_path: PathBuf,
    out: Option<BufWriter<File>>,
    vocab_size: u64,
    vocab_hash: String,
    width: usize,
    classes: Option<Vec<String>>,
    offsets: Vec<u64>,
    labels: Vec<u32>,
    finished: bool,
}

impl TokenFileWriter {
    /// Creates `<path>.tmp` and writes a placeholder header.
    ///
    /// `vocab_hash` is the SHA-256 of the vocabulary as 64 lowercase hex characters.
    /// With `classes`, every document needs a label below `classes.len()`; without,
    /// no document may have one.
    pub fn create(
        path: impl AsRef<Path>,
        vocab_size: u64,
        vocab_hash: &str,
        classes: Option<Vec<String>>,
    ) -> Result<Self, TokenFileError> {
        let path = path.as_ref().to_path_buf();
        if vocab_size == 0 || vocab_size > u64::from(u32::MAX) + 1 {
            return Err(TokenFileError::InvalidVocabSize { vocab_size });
        }
        validate_hash(vocab_hash)?;
        let tmp_path = tmp_path(&path);
        let file = File::create(&tmp_path).map_err(|source| TokenFileError::Io {
            action: "creating",
            path: tmp_path.clone(),
            source,
        })?;
        let mut writer = Self {
            path,
            tmp_path,
            out: Some(BufWriter::new(file)),
            vocab_size,
            vocab_hash: vocab_hash.to_string(),
            width: element_width(vocab_size),
            classes,
            offsets: vec![0],
            labels: Vec::new(),
            finished: false,
        };
        writer.write_bytes(&[0u8; HEADER_LEN])?;
        Ok(writer)
    }

    /// Returns the number of documents written so far.
    pub fn n_documents(&self) -> u64 {
        (self.offsets.len() - 1) as u64
    }

    /// Returns the number of tokens written so far.
    pub fn n_tokens(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(0)
    }

    /// Appends one document.
    ///
    /// Every id must be below the vocabulary size. `label` must be `Some` exactly when
    /// the writer was created with classes. A rejected document leaves the file as it
    /// was before the call.
    pub fn push_document(&mut self, ids: &[u32], label: Option<u32>) -> Result<(), TokenFileError> {
        let document = self.n_documents();
        if let Some((position, &id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| u64::from(id) >= self.vocab_size)
        {
            return Err(TokenFileError::IdOutOfRange {
                id,
                document,
                position,
                vocab_size: self.vocab_size,
            });
        }
        match (&self.classes, label) {
            (Some(_), None) => return Err(TokenFileError::MissingLabel { document }),
            (None, Some(label)) => return Err(TokenFileError::UnexpectedLabel { document, label }),
            (Some(classes), Some(label)) if label as usize >= classes.len() => {
                return Err(TokenFileError::LabelOutOfRange {
                    document,
                    label,
                    n_classes: classes.len(),
                })
            }
            _ => {}
        }

        if self.width == 2 {
            for &id in ids {
                // The range check above guarantees that the id fits in u16.
                self.write_bytes(&(id as u16).to_le_bytes())?;
            }
        } else {
            for &id in ids {
                self.write_bytes(&id.to_le_bytes())?;
            }
        }
        self.offsets.push(self.n_tokens() + ids.len() as u64);
        if let Some(label) = label {
            self.labels.push(label);
        }
        Ok(())
    }

    /// Writes the offset table and labels, fills in the header, syncs the file to
    /// disk and renames `<path>.tmp` to the final path.
    pub fn finish(mut self) -> Result<PathBuf, TokenFileError> {
        let token_bytes = self.n_tokens() * self.width as u64;
        let padding = padding_to_8(HEADER_LEN as u64 + token_bytes) as usize;
        self.write_bytes(&[0u8; 8][..padding])?;

        let mut table = Vec::with_capacity(self.offsets.len() * 8);
        for offset in &self.offsets {
            table.extend_from_slice(&offset.to_le_bytes());
        }
        self.write_bytes(&table)?;

        if let Some(classes) = self.classes.take() {
            let mut section = Vec::with_capacity(self.labels.len() * 4 + 4);
            for label in &self.labels {
                section.extend_from_slice(&label.to_le_bytes());
            }
            section.extend_from_slice(&(classes.len() as u32).to_le_bytes());
            for class in &classes {
                section.extend_from_slice(&(class.len() as u32).to_le_bytes());
                section.extend_from_slice(class.as_bytes());
            }
            self.write_bytes(&section)?;
            self.classes = Some(classes);
        }

        let header = self.header();
        let tmp_path = self.tmp_path.clone();
        let io_error = |action, source| TokenFileError::Io {
            action,
            path: tmp_path.clone(),
            source,
        };
        let mut file = match self.out.take() {
            Some(out) => out
                .into_inner()
                .map_err(|error| io_error("writing", error.into_error()))?,
            None => {
                return Err(io_error(
                    "writing",
                    io::Error::other("writer already closed"),
                ))
            }
        };
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&header))
            .map_err(|source| io_error("writing", source))?;
        file.sync_all()
            .map_err(|source| io_error("syncing", source))?;
        drop(file);

        fs::rename(&self.tmp_path, &self.path).map_err(|source| TokenFileError::Io {
            action: "renaming the temporary file to",
            path: self.path.clone(),
            source,
        })?;
        self.finished = true;
        Ok(self.path.clone())
    }

    fn header(&self) -> [u8; HEADER_LEN] {
        let mut header = [0u8; HEADER_LEN];
        header[0..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(self.width as u32).to_le_bytes());
        header[16..24].copy_from_slice(&self.vocab_size.to_le_bytes());
        header[24..32].copy_from_slice(&self.n_documents().to_le_bytes());
        header[32..40].copy_from_slice(&self.n_tokens().to_le_bytes());
        let flags = if self.classes.is_some() {
            FLAG_LABELS
        } else {
            0
        };
        header[40..44].copy_from_slice(&flags.to_le_bytes());
        header[48..48 + HASH_LEN].copy_from_slice(self.vocab_hash.as_bytes());
        header
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), TokenFileError> {
        let result = match self.out.as_mut() {
            Some(out) => out.write_all(bytes),
            None => Err(io::Error::other("writer already closed")),
        };
        result.map_err(|source| TokenFileError::Io {
            action: "writing",
            path: self.tmp_path.clone(),
            source,
        })
    }
}

impl Drop for TokenFileWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Close the file before removing it.
            drop(self.out.take());
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// Borrowed view of consecutive token ids inside a token file, yielding `u32` ids
/// whatever the stored element width. It does not copy the ids.
#[derive(Clone, Copy, Debug)]
pub struct TokenSlice<'a> {
    bytes: &'a [u8],
    width: usize,
}

impl<'a> TokenSlice<'a> {
    /// Returns the number of ids.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.width
    }

    /// Returns true when the view contains no id.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Returns id `i`, or `None` when `i >= len()`.
    pub fn get(&self, i: usize) -> Option<u32> {
        if i >= self.len() {
            return None;
        }
        Some(self.read(i))
    }

    /// Returns the sub-view of ids `[start, end)`, or `None` when the range is out of
    /// bounds or reversed.
    pub fn slice(&self, start: usize, end: usize) -> Option<TokenSlice<'a>> {
        if start > end || end > self.len() {
            return None;
        }
        Some(TokenSlice {
            bytes: &self.bytes[start * self.width..end * self.width],
            width: self.width,
        })
    }

    /// Returns an iterator over the ids.
    pub fn iter(&self) -> TokenIter<'a> {
        TokenIter {
            chunks: self.bytes.chunks_exact(self.width),
        }
    }

    /// Copies the ids into `out`, which must have exactly `len()` elements.
    pub fn copy_to(&self, out: &mut [u32]) {
        for (slot, id) in out.iter_mut().zip(self.iter()) {
            *slot = id;
        }
    }

    /// Copies the ids into a new vector.
    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }

    fn read(&self, i: usize) -> u32 {
        let at = i * self.width;
        decode_id(&self.bytes[at..at + self.width])
    }
}

fn decode_id(bytes: &[u8]) -> u32 {
    match *bytes {
        [a, b] => u32::from(u16::from_le_bytes([a, b])),
        [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
        // A TokenSlice is built only with width 2 or 4.
        _ => 0,
    }
}

impl<'a> IntoIterator for TokenSlice<'a> {
    type Item = u32;
    type IntoIter = TokenIter<'a>;

    fn into_iter(self) -> TokenIter<'a> {
        self.iter()
    }
}

/// Iterator over the ids of a [`TokenSlice`].
#[derive(Clone, Debug)]
pub struct TokenIter<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
}

impl Iterator for TokenIter<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        self.chunks.next().map(decode_id)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for TokenIter<'_> {}

/// A token file opened through a read-only memory map.
///
/// [`open`](Self::open) validates the header, the offset table and the labels, so the
/// accessors never read outside the map.
pub struct TokenFile {
    path: PathBuf,
    map: Mmap,
    width: usize,
    vocab_size: u64,
    vocab_hash: String,
    n_documents: usize,
    n_tokens: usize,
    offsets_start: usize,
    labels_start: Option<usize>,
    classes: Vec<String>,
}

struct Header {
    width: usize,
    vocab_size: u64,
    n_documents: u64,
    n_tokens: u64,
    has_labels: bool,
    vocab_hash: String,
}

impl TokenFile {
    /// Maps a token file and validates it.
    ///
    /// With `expected_vocab_hash`, a file built with another vocabulary is rejected
    /// with [`TokenFileError::VocabMismatch`].
    pub fn open(
        path: impl AsRef<Path>,
        expected_vocab_hash: Option<&str>,
    ) -> Result<Self, TokenFileError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| TokenFileError::Io {
            action: "opening",
            path: path.clone(),
            source,
        })?;
        // SAFETY: the map is read-only, and this crate replaces token files by renaming
        // a new file over the old one instead of modifying them in place. Another
        // process truncating the file while it is mapped is undefined behaviour, as
        // with any memory-mapped file.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| TokenFileError::Io {
            action: "memory-mapping",
            path: path.clone(),
            source,
        })?;

        let header = parse_header(&path, &map)?;
        if let Some(expected) = expected_vocab_hash {
            if expected != header.vocab_hash {
                return Err(TokenFileError::VocabMismatch {
                    path,
                    expected: expected.to_string(),
                    found: header.vocab_hash,
                });
            }
        }
        Self::from_parts(path, map, header)
    }

    fn from_parts(path: PathBuf, map: Mmap, header: Header) -> Result<Self, TokenFileError> {
        let actual = map.len() as u64;
        let mismatch = |expected: u64| TokenFileError::LengthMismatch {
            path: path.clone(),
            expected,
            actual,
        };
        // Checked arithmetic: a corrupt header must not overflow the size computation.
        let token_end = header
            .n_tokens
            .checked_mul(header.width as u64)
            .and_then(|bytes| bytes.checked_add(HEADER_LEN as u64))
            .ok_or_else(|| mismatch(u64::MAX))?;
        let offsets_start = token_end + padding_to_8(token_end);
        let offsets_end = header
            .n_documents
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|bytes| bytes.checked_add(offsets_start))
            .ok_or_else(|| mismatch(u64::MAX))?;
        let fixed_end = if header.has_labels {
            header
                .n_documents
                .checked_mul(4)
                .and_then(|bytes| bytes.checked_add(offsets_end))
                .and_then(|end| end.checked_add(4))
                .ok_or_else(|| mismatch(u64::MAX))?
        } else {
            offsets_end
        };
        if actual < fixed_end {
            return Err(mismatch(fixed_end));
        }
        let (classes, end) = if header.has_labels {
            parse_classes(&path, &map, fixed_end as usize - 4)?
        } else {
            (Vec::new(), fixed_end as usize)
        };
        if actual != end as u64 {
            return Err(mismatch(end as u64));
        }

        let token_file = Self {
            path,
            width: header.width,
            vocab_size: header.vocab_size,
            vocab_hash: header.vocab_hash,
            n_documents: header.n_documents as usize,
            n_tokens: header.n_tokens as usize,
            offsets_start: offsets_start as usize,
            labels_start: header.has_labels.then_some(offsets_end as usize),
            classes,
            map,
        };
        token_file.validate_tables()?;
        Ok(token_file)
    }

    fn validate_tables(&self) -> Result<(), TokenFileError> {
        let invalid = |reason: String| TokenFileError::Invalid {
            path: self.path.clone(),
            reason,
        };
        if self.offset(0) != 0 {
            return Err(invalid(format!(
                "the offset table starts at {} instead of 0",
                self.offset(0)
            )));
        }
        for i in 0..self.n_documents {
            if self.offset(i + 1) < self.offset(i) {
                return Err(invalid(format!(
                    "document {i} ends at token {} before it starts at token {}",
                    self.offset(i + 1),
                    self.offset(i)
                )));
            }
        }
        if self.offset(self.n_documents) != self.n_tokens as u64 {
            return Err(invalid(format!(
                "the offset table ends at token {} but the header counts {} tokens",
                self.offset(self.n_documents),
                self.n_tokens
            )));
        }
        // One pass over the ids (about 0.1 s per 100 million on one core) so that a
        // corrupted file fails here, not later as an out-of-range embedding lookup.
        let vocab_size = self.vocab_size;
        if let Some((position, id)) = self
            .tokens()
            .iter()
            .enumerate()
            .find(|&(_, id)| u64::from(id) >= vocab_size)
        {
            return Err(invalid(format!(
                "token {position} has id {id}, out of range for a vocabulary of {vocab_size}"
            )));
        }
        if self.labels_start.is_some() {
            for i in 0..self.n_documents {
                let label = self.read_label(i);
                if label as usize >= self.classes.len() {
                    return Err(invalid(format!(
                        "label {label} of document {i} is out of range for {} classes",
                        self.classes.len()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Returns the path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the number of documents.
    pub fn n_documents(&self) -> usize {
        self.n_documents
    }

    /// Returns the number of tokens of all documents together.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Returns the vocabulary size stored in the header.
    pub fn vocab_size(&self) -> u64 {
        self.vocab_size
    }

    /// Returns the vocabulary hash stored in the header.
    pub fn vocab_hash(&self) -> &str {
        &self.vocab_hash
    }

    /// Returns the element width in bytes (2 or 4).
    pub fn element_width(&self) -> usize {
        self.width
    }

    /// Returns the ids of document `i`, or `None` when `i >= n_documents()`.
    pub fn document(&self, i: usize) -> Option<TokenSlice<'_>> {
        if i >= self.n_documents {
            return None;
        }
        let start = self.offset(i) as usize;
        let end = self.offset(i + 1) as usize;
        self.tokens().slice(start, end)
    }

    /// Returns the number of tokens of document `i`, or `None` when out of range.
    pub fn document_len(&self, i: usize) -> Option<usize> {
        if i >= self.n_documents {
            return None;
        }
        Some((self.offset(i + 1) - self.offset(i)) as usize)
    }

    /// Returns the class index of document `i`, or `None` when the file has no labels
    /// or `i >= n_documents()`.
    pub fn label(&self, i: usize) -> Option<u32> {
        if i >= self.n_documents {
            return None;
        }
        self.labels_start.map(|_| self.read_label(i))
    }

    /// Returns the class names, empty when the file has no labels.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Returns the number of tokens of every document.
    pub fn lengths(&self) -> Vec<usize> {
        (0..self.n_documents)
            .map(|i| (self.offset(i + 1) - self.offset(i)) as usize)
            .collect()
    }

    /// Returns the start offset of every document plus the total token count
    /// (`n_documents() + 1` entries).
    pub fn offsets(&self) -> Vec<u64> {
        (0..=self.n_documents).map(|i| self.offset(i)).collect()
    }

    /// Returns all token ids of all documents as one stream, in document order.
    pub fn tokens(&self) -> TokenSlice<'_> {
        TokenSlice {
            bytes: &self.map[HEADER_LEN..HEADER_LEN + self.n_tokens * self.width],
            width: self.width,
        }
    }

    /// Returns an iterator over the documents in order.
    pub fn documents(&self) -> impl ExactSizeIterator<Item = TokenSlice<'_>> + '_ {
        let tokens = self.tokens();
        (0..self.n_documents).map(move |i| TokenSlice {
            bytes: &tokens.bytes
                [self.offset(i) as usize * self.width..self.offset(i + 1) as usize * self.width],
            width: self.width,
        })
    }

    fn offset(&self, i: usize) -> u64 {
        read_u64(&self.map, self.offsets_start + i * 8)
    }

    fn read_label(&self, i: usize) -> u32 {
        let start = self.labels_start.unwrap_or(0);
        read_u32(&self.map, start + i * 4)
    }
}

/// Reads a little-endian `u64`; the caller has checked that the bytes exist.
fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buffer = [0u8; 8];
    buffer.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buffer)
}

/// Reads a little-endian `u32`; the caller has checked that the bytes exist.
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut buffer = [0u8; 4];
    buffer.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(buffer)
}

fn parse_header(path: &Path, map: &[u8]) -> Result<Header, TokenFileError> {
    if map.len() < MAGIC.len() || map[..MAGIC.len()] != MAGIC {
        return Err(TokenFileError::BadMagic {
            path: path.to_path_buf(),
        });
    }
    if map.len() < HEADER_LEN {
        return Err(TokenFileError::LengthMismatch {
            path: path.to_path_buf(),
            expected: HEADER_LEN as u64,
            actual: map.len() as u64,
        });
    }

    let invalid = |reason: String| TokenFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let version = read_u32(map, 8);
    if version != FORMAT_VERSION {
        return Err(TokenFileError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }

    let width = read_u32(map, 12) as usize;
    let vocab_size = read_u64(map, 16);
    if vocab_size == 0 || vocab_size > u64::from(u32::MAX) + 1 {
        return Err(invalid(format!(
            "vocabulary size {vocab_size} is out of range"
        )));
    }
    if width != element_width(vocab_size) {
        return Err(invalid(format!(
            "element width {width} does not match vocabulary size {vocab_size} (expected {})",
            element_width(vocab_size)
        )));
    }

    let flags = read_u32(map, 40);
    if flags & !FLAG_LABELS != 0 {
        return Err(invalid(format!("unknown flags {flags:#x}")));
    }

    let vocab_hash = std::str::from_utf8(&map[48..48 + HASH_LEN])
        .ok()
        .filter(|hash| validate_hash(hash).is_ok())
        .ok_or_else(|| invalid("the vocabulary hash is not 64 lowercase hex characters".into()))?
        .to_string();
    Ok(Header {
        width,
        vocab_size,
        n_documents: read_u64(map, 24),
        n_tokens: read_u64(map, 32),
        has_labels: flags & FLAG_LABELS != 0,
        vocab_hash,
    })
}

/// Parses the class-name list starting at `start` (its `u32` count) and returns the
/// names and the offset just past the list.
fn parse_classes(
    path: &Path,
    map: &[u8],
    start: usize,
) -> Result<(Vec<String>, usize), TokenFileError> {
    let truncated = |expected: usize| TokenFileError::LengthMismatch {
        path: path.to_path_buf(),
        expected: expected as u64,
        actual: map.len() as u64,
    };
    let n_classes = read_u32(map, start) as usize;
    let mut at = start + 4;
    let mut classes = Vec::new();
    for i in 0..n_classes {
        if at + 4 > map.len() {
            return Err(truncated(at + 4));
        }
        let len = read_u32(map, at) as usize;
        at += 4;
        if at + len > map.len() {
            return Err(truncated(at + len));
        }
        let name =
            std::str::from_utf8(&map[at..at + len]).map_err(|_| TokenFileError::Invalid {
                path: path.to_path_buf(),
                reason: format!("class name {i} is not valid UTF-8"),
            })?;
        classes.push(name.to_string());
        at += len;
    }
    Ok((classes, at))
}
