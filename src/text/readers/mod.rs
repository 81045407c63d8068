//! Streaming corpus readers: CSV, JSON lines, plain text and folder-per-class trees.
//!
//! [`open`] returns a [`DocumentReader`], an iterator that keeps one record (or one
//! batch of folder files) in memory at a time, so memory use depends on the longest
//! record and not on the corpus size. [`read_all`] collects the documents of several paths.

mod csv;
mod folder;
mod jsonl;
mod plain;

use std::path::{Path, PathBuf};

pub use crate::text::encoding::Encoding;

/// Header name of the text column or JSON field when none is given.
pub const DEFAULT_TEXT_COLUMN: &str = "text";
/// Header name of the label column or JSON field when none is given.
pub const DEFAULT_LABEL_COLUMN: &str = "label";
/// Folder of unlabelled documents in a folder-per-class tree (as in IMDb's
/// `aclImdb/train/unsup`), which is never a class.
pub const UNLABELLED_FOLDER: &str = "unsup";

/// File name endings of archives, which must be unpacked before reading.
const ARCHIVE_SUFFIXES: [&str; 9] = [
    ".tar.gz", ".tgz", ".tar", ".gz", ".zip", ".bz2", ".xz", ".zst", ".7z",
];

/// One document of a corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Document text, with several CSV columns or JSON fields joined by `xxfld` markers.
    pub text: String,
    /// Class label in its string form (the integer 1 becomes "1").
    pub label: Option<String>,
    /// File and line the document comes from.
    pub origin: Origin,
}

/// Location of a document's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// File the document was read from.
    pub path: PathBuf,
    /// 1-based line where the record starts (1 for a document that is a whole file).
    pub line: u64,
}

/// Corpus file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values (RFC 4180) with text and label columns.
    Csv,
    /// JSON lines: one object per line with `text` and `label` fields.
    Jsonl,
    /// Plain text, one document per line or per blank-line-separated block.
    Text,
    /// A folder with one subfolder of `.txt` files per class, or a flat folder of
    /// `.txt` files.
    Folder,
}

/// Rule for cutting a plain-text file into documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DocumentSplit {
    /// Each non-blank line is a document.
    #[default]
    Line,
    /// Documents are separated by blank lines, and their lines are joined with `\n`.
    BlankLine,
}

/// Whether documents must, may or must not carry a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LabelRequirement {
    /// Every document needs a non-empty label (classifier training).
    Required,
    /// Labels are kept where present (`None` elsewhere).
    #[default]
    Optional,
    /// Labels are dropped (language modelling), so label columns need not exist.
    Ignored,
}

/// Options shared by all readers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// File format, or `None` to detect it from the path (see [`detect_format`]).
    pub format: Option<Format>,
    /// Character encoding of the files.
    pub encoding: Encoding,
    /// CSV columns or JSON fields that contain the text, joined in this order (`text`
    /// when empty). Without a CSV header these are 0-based column numbers such as "1".
    pub text_columns: Vec<String>,
    /// CSV column or JSON field that contains the label. `None` means `label`, which may
    /// then be absent unless labels are required.
    pub label_column: Option<String>,
    /// Whether the CSV file has no header row.
    pub no_header: bool,
    /// Rule for cutting plain-text files into documents.
    pub documents: DocumentSplit,
    /// Class subfolders to read from a folder tree, in this order. `None` reads every
    /// subfolder except `unsup`.
    pub classes: Option<Vec<String>>,
    /// Whether labels are required, optional or ignored.
    pub labels: LabelRequirement,
}

/// Documents read from one or more paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Documents in file order.
    pub documents: Vec<Document>,
    /// Number of records skipped because their text was empty or whitespace only.
    pub skipped_empty: u64,
}

/// Error while reading a corpus.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file or folder could not be opened or read.
    #[error("failed to read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The path is an archive.
    #[error(
        "{} is an archive, which is not read directly; unpack it first \
         (for example `tar -xzf` or `unzip`) and pass the unpacked file or folder",
        path.display()
    )]
    Archive { path: PathBuf },
    /// The requested format does not fit the path (a folder read as a file or the
    /// reverse).
    #[error("{} cannot be read as {format:?}: {reason}", path.display())]
    FormatMismatch {
        path: PathBuf,
        format: Format,
        reason: &'static str,
    },
    /// A line is not valid UTF-8.
    #[error(
        "{}:{line}: invalid UTF-8; if the file is Latin-1 (ISO-8859-1), \
         pass --encoding latin1",
        path.display()
    )]
    InvalidUtf8 { path: PathBuf, line: u64 },
    /// A named CSV column is missing from the header.
    #[error(
        "{}: column \"{column}\" not found; available columns: {} (name the columns to \
         read with --text-column and --label-column)",
        path.display(),
        available.join(", ")
    )]
    UnknownColumn {
        path: PathBuf,
        column: String,
        available: Vec<String>,
    },
    /// A column number (for a CSV file without header) is not a number or is too large.
    #[error(
        "{}: invalid column number \"{column}\": without a header, columns are 0-based \
         numbers below {count}",
        path.display()
    )]
    InvalidColumnNumber {
        path: PathBuf,
        column: String,
        count: usize,
    },
    /// A CSV file without header was opened without naming its text columns.
    #[error(
        "{}: the CSV file has no header, so the text columns must be given as 0-based \
         column numbers (for example --text-column 1)",
        path.display()
    )]
    MissingTextColumns { path: PathBuf },
    /// A CSV file with a header row is empty.
    #[error(
        "{}: the CSV file is empty but a header row was expected; pass --no-header \
         for a file without header",
        path.display()
    )]
    MissingHeader { path: PathBuf },
    /// A CSV row has a different number of fields than the header (or first row).
    #[error(
        "{}:{line}: row has {found} fields but {expected} were expected; quote fields \
         that contain commas or line breaks",
        path.display()
    )]
    RaggedRow {
        path: PathBuf,
        line: u64,
        expected: usize,
        found: usize,
    },
    /// The CSV parser failed.
    #[error("{}:{line}: invalid CSV: {source}", path.display())]
    Csv {
        path: PathBuf,
        line: u64,
        #[source]
        source: ::csv::Error,
    },
    /// A JSON line is not valid JSON.
    #[error("{}:{line}: invalid JSON: {source}", path.display())]
    InvalidJson {
        path: PathBuf,
        line: u64,
        #[source]
        source: serde_json::Error,
    },
    /// A JSON line lacks a text field.
    #[error("{}:{line}: missing field \"{field}\"", path.display())]
    MissingField {
        path: PathBuf,
        line: u64,
        field: String,
    },
    /// A JSON value has the wrong type.
    #[error("{}:{line}: field \"{field}\" must be {expected}, found {found}", path.display())]
    InvalidField {
        path: PathBuf,
        line: u64,
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A record has no label although labels are required.
    #[error(
        "{}:{line}: missing or empty label; every record needs a label when labels \
         are required",
        path.display()
    )]
    MissingLabel { path: PathBuf, line: u64 },
    /// Labels are required but the format or folder carries none.
    #[error("{}: labels are required but {reason}", path.display())]
    LabelsUnavailable { path: PathBuf, reason: &'static str },
    /// A class named in the options has no subfolder.
    #[error(
        "{}: class folder \"{class}\" not found; available subfolders: {}",
        path.display(),
        available.join(", ")
    )]
    MissingClassFolder {
        path: PathBuf,
        class: String,
        available: Vec<String>,
    },
    /// A class name that cannot be a class.
    #[error("{}: \"{class}\" cannot be a class: {reason}", path.display())]
    InvalidClass {
        path: PathBuf,
        class: String,
        reason: &'static str,
    },
    /// A folder (or class subfolder) contains no `.txt` files.
    #[error(
        "{} contains no .txt files; pass a folder with one subfolder of .txt files per \
         class (such as aclImdb/train) or a folder of .txt files",
        path.display()
    )]
    NoTextFiles { path: PathBuf },
}

impl ReadError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ReadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Returns whether `path` names an archive (`.tar.gz`, `.zip`, `.gz` and similar).
fn is_archive(path: &Path) -> bool {
    let Some(name) = path.file_name() else {
        return false;
    };
    let name = name.to_string_lossy().to_lowercase();
    ARCHIVE_SUFFIXES.iter().any(|suffix| name.ends_with(suffix))
}

/// Detects the format from the path: a directory is `Folder`, `.csv` is `Csv`,
/// `.jsonl` and `.ndjson` are `Jsonl`, and anything else (`.txt`, `.tokens`, no
/// extension) is `Text`.
///
/// Returns [`ReadError::Archive`] for archives such as `.tar.gz`, `.zip` and `.gz`.
pub fn detect_format(path: &Path) -> Result<Format, ReadError> {
    if path.is_dir() {
        return Ok(Format::Folder);
    }
    if is_archive(path) {
        return Err(ReadError::Archive {
            path: path.to_path_buf(),
        });
    }
    let extension = path
        .extension()
        .map(|extension| extension.to_string_lossy().to_lowercase());
    let format = match extension.as_deref() {
        Some("csv") => Format::Csv,
        Some("jsonl") | Some("ndjson") => Format::Jsonl,
        _ => Format::Text,
    };
    Ok(format)
}

/// Opens `path` for streaming, using `options.format` or else [`detect_format`].
///
/// Header, column and class checks happen here, and record errors come from the
/// iterator.
pub fn open(path: &Path, options: &ReadOptions) -> Result<DocumentReader, ReadError> {
    // Checked first, so that a mistyped path is not reported as a format problem.
    if !path.exists() {
        return Err(ReadError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        });
    }
    if is_archive(path) && !path.is_dir() {
        return Err(ReadError::Archive {
            path: path.to_path_buf(),
        });
    }
    let format = match options.format {
        Some(format) => format,
        None => detect_format(path)?,
    };
    check_path_kind(path, format)?;
    let inner = match format {
        Format::Csv => Inner::Csv(csv::CsvDocuments::open(path, options)?),
        Format::Jsonl => Inner::Jsonl(jsonl::JsonlDocuments::open(path, options)?),
        Format::Text => Inner::Text(plain::TextDocuments::open(path, options)?),
        Format::Folder => Inner::Folder(folder::FolderDocuments::open(path, options)?),
    };
    Ok(DocumentReader {
        path: path.to_path_buf(),
        format,
        inner,
        failed: false,
    })
}

fn check_path_kind(path: &Path, format: Format) -> Result<(), ReadError> {
    let is_dir = path.is_dir();
    let reason = match format {
        Format::Folder if !is_dir && path.exists() => "it is a file, not a folder",
        Format::Csv | Format::Jsonl | Format::Text if is_dir => {
            "it is a folder; use the folder format"
        }
        _ => return Ok(()),
    };
    Err(ReadError::FormatMismatch {
        path: path.to_path_buf(),
        format,
        reason,
    })
}

/// Reads every document of `paths` in order, stopping at the first error.
///
/// Logs one warning per path that had empty or whitespace-only texts, with their count.
pub fn read_all(paths: &[PathBuf], options: &ReadOptions) -> Result<ReadReport, ReadError> {
    let mut report = ReadReport::default();
    for path in paths {
        let mut reader = open(path, options)?;
        for document in reader.by_ref() {
            report.documents.push(document?);
        }
        let skipped = reader.skipped_empty();
        if skipped > 0 {
            tracing::warn!(
                path = %path.display(),
                skipped,
                "skipped {skipped} empty or whitespace-only documents in {}",
                path.display()
            );
        }
        report.skipped_empty += skipped;
    }
    Ok(report)
}

/// Streaming iterator over the documents of one file or folder.
///
/// It stops after the first error, because a reader past a parse or I/O error has no
/// reliable position.
pub struct DocumentReader {
    path: PathBuf,
    format: Format,
    inner: Inner,
    failed: bool,
}

enum Inner {
    Csv(csv::CsvDocuments),
    Jsonl(jsonl::JsonlDocuments),
    Text(plain::TextDocuments),
    Folder(folder::FolderDocuments),
}

impl DocumentReader {
    /// File or folder being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Format the reader was opened with.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Number of records skipped so far because their text was empty or whitespace only.
    pub fn skipped_empty(&self) -> u64 {
        match &self.inner {
            Inner::Csv(reader) => reader.skipped_empty,
            Inner::Jsonl(reader) => reader.skipped_empty,
            Inner::Text(_) => 0,
            Inner::Folder(reader) => reader.skipped_empty,
        }
    }
}

impl Iterator for DocumentReader {
    type Item = Result<Document, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = match &mut self.inner {
            Inner::Csv(reader) => reader.next_document(),
            Inner::Jsonl(reader) => reader.next_document(),
            Inner::Text(reader) => reader.next_document(),
            Inner::Folder(reader) => reader.next_document(),
        };
        if matches!(item, Some(Err(_))) {
            self.failed = true;
        }
        item
    }
}

/// Returns whether `text` has no characters other than whitespace.
fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

/// Joins the text fields of one record the way fastai 2.x `_join_texts` does
/// (fastai/text/core.py, 2.8): one field stays as it is, and several become
/// `xxfld 1 <first> xxfld 2 <second> ...`.
fn join_fields(fields: &[String]) -> String {
    if let [single] = fields {
        return single.clone();
    }
    let mut text = String::new();
    for (index, field) in fields.iter().enumerate() {
        if index > 0 {
            text.push(' ');
        }
        text.push_str(crate::text::FLD);
        text.push(' ');
        text.push_str(&(index + 1).to_string());
        text.push(' ');
        text.push_str(field);
    }
    text
}

/// Converts a raw label into `Some(label)` unless it is empty or whitespace only.
///
/// Surrounding whitespace is trimmed, so " pos" and "pos" are one class.
fn clean_label(raw: &str) -> Option<String> {
    let label = raw.trim();
    (!label.is_empty()).then(|| label.to_owned())
}

/// Applies the label requirement to a record's label.
fn check_label(
    label: Option<String>,
    labels: LabelRequirement,
    path: &Path,
    line: u64,
) -> Result<Option<String>, ReadError> {
    match (labels, label) {
        (LabelRequirement::Ignored, _) => Ok(None),
        (LabelRequirement::Required, None) => Err(ReadError::MissingLabel {
            path: path.to_path_buf(),
            line,
        }),
        (_, label) => Ok(label),
    }
}

/// Text columns from the options, or the default `text`.
fn text_column_names(options: &ReadOptions) -> Vec<String> {
    if options.text_columns.is_empty() {
        vec![DEFAULT_TEXT_COLUMN.to_owned()]
    } else {
        options.text_columns.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_single_field_unchanged() {
        assert_eq!(join_fields(&["a b".to_owned()]), "a b");
    }

    #[test]
    fn join_fields_marks_each_field() {
        let fields = ["title".to_owned(), "body text".to_owned()];
        assert_eq!(join_fields(&fields), "xxfld 1 title xxfld 2 body text");
    }

    #[test]
    fn archive_suffixes_detected() {
        assert!(is_archive(Path::new("data/aclImdb.tar.gz")));
        assert!(is_archive(Path::new("DATA.ZIP")));
        assert!(!is_archive(Path::new("train.csv")));
    }
}
