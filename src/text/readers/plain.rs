//! Plain-text reader and the buffered line source shared with the JSON lines reader.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{is_blank, Document, DocumentSplit, LabelRequirement, Origin, ReadError, ReadOptions};
use crate::text::encoding::Encoding;

/// Reads a file one decoded line at a time with a reused buffer.
///
/// Lines end at `\n` only: a `\r` or a 0x85 (NEL) byte inside a line stays in it, and
/// one trailing `\r` of a CRLF ending is removed. A UTF-8 byte order mark at the start
/// of the file is removed.
pub(super) struct LineSource {
    path: PathBuf,
    reader: BufReader<File>,
    encoding: Encoding,
    buffer: Vec<u8>,
    line: u64,
}

impl LineSource {
    pub(super) fn open(path: &Path, encoding: Encoding) -> Result<Self, ReadError> {
        let file = File::open(path).map_err(|source| ReadError::io(path, source))?;
        Ok(LineSource {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 16, file),
            encoding,
            buffer: Vec::new(),
            line: 0,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the next line with its 1-based number, or `None` at the end of the file.
    pub(super) fn next_line(&mut self) -> Option<Result<(u64, String), ReadError>> {
        self.buffer.clear();
        match self.reader.read_until(b'\n', &mut self.buffer) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(source) => return Some(Err(ReadError::io(&self.path, source))),
        }
        self.line += 1;
        let mut bytes = self.buffer.as_slice();
        if self.line == 1 {
            bytes = self.encoding.strip_bom(bytes);
        }
        bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        match self.encoding.decode(bytes) {
            Ok(text) => Some(Ok((self.line, text))),
            Err(_) => Some(Err(ReadError::InvalidUtf8 {
                path: self.path.clone(),
                line: self.line,
            })),
        }
    }
}

/// Plain-text documents: one per non-blank line, or one per block of lines between
/// blank lines.
///
/// Blank (empty or whitespace-only) lines separate documents and are never counted as
/// skipped documents.
pub(super) struct TextDocuments {
    lines: LineSource,
    split: DocumentSplit,
}

impl TextDocuments {
    pub(super) fn open(path: &Path, options: &ReadOptions) -> Result<Self, ReadError> {
        if options.labels == LabelRequirement::Required {
            return Err(ReadError::LabelsUnavailable {
                path: path.to_path_buf(),
                reason: "plain-text files carry no labels; use a CSV, JSON lines or \
                         folder-per-class corpus",
            });
        }
        Ok(TextDocuments {
            lines: LineSource::open(path, options.encoding)?,
            split: options.documents,
        })
    }

    pub(super) fn next_document(&mut self) -> Option<Result<Document, ReadError>> {
        match self.split {
            DocumentSplit::Line => self.next_line_document(),
            DocumentSplit::BlankLine => self.next_block_document(),
        }
    }

    fn next_line_document(&mut self) -> Option<Result<Document, ReadError>> {
        loop {
            let (line, text) = match self.lines.next_line()? {
                Ok(item) => item,
                Err(error) => return Some(Err(error)),
            };
            if !is_blank(&text) {
                return Some(Ok(self.document(text, line)));
            }
        }
    }

    fn next_block_document(&mut self) -> Option<Result<Document, ReadError>> {
        let mut block: Option<(u64, String)> = None;
        loop {
            let (line, text) = match self.lines.next_line() {
                None => break,
                Some(Ok(item)) => item,
                Some(Err(error)) => return Some(Err(error)),
            };
            if is_blank(&text) {
                if block.is_some() {
                    break;
                }
                continue;
            }
            match &mut block {
                None => block = Some((line, text)),
                Some((_, joined)) => {
                    joined.push('\n');
                    joined.push_str(&text);
                }
            }
        }
        let (line, text) = block?;
        Some(Ok(self.document(text, line)))
    }

    fn document(&self, text: String, line: u64) -> Document {
        Document {
            text,
            label: None,
            origin: Origin {
                path: self.lines.path().to_path_buf(),
                line,
            },
        }
    }
}
