//! CSV reader (RFC 4180) built on the `csv` crate.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use csv::{ByteRecord, ReaderBuilder, Terminator};

use super::{
    check_label, clean_label, is_blank, join_fields, text_column_names, Document, LabelRequirement,
    Origin, ReadError, ReadOptions, DEFAULT_LABEL_COLUMN,
};
use crate::text::encoding::{newlines_before, Encoding};

/// Documents from a CSV file, one per row.
///
/// Quoted fields may contain commas, doubled quotes and line breaks. Records end at
/// `\n` only, and one `\r` at the end of a row's last field (a CRLF ending) is removed.
/// A UTF-8 byte order mark is removed by the `csv` crate. Blank lines are skipped.
pub(super) struct CsvDocuments {
    path: PathBuf,
    reader: csv::Reader<BufReader<File>>,
    record: ByteRecord,
    /// Row read while opening a file without header to learn the field count.
    pending: Option<ByteRecord>,
    field_count: usize,
    text_indices: Vec<usize>,
    label_index: Option<usize>,
    encoding: Encoding,
    labels: LabelRequirement,
    pub(super) skipped_empty: u64,
}

impl CsvDocuments {
    pub(super) fn open(path: &Path, options: &ReadOptions) -> Result<Self, ReadError> {
        let file = File::open(path).map_err(|source| ReadError::io(path, source))?;
        let mut reader = ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .terminator(Terminator::Any(b'\n'))
            .from_reader(BufReader::with_capacity(1 << 16, file));

        let first = read_row(&mut reader, path)?;
        let (text_indices, label_index, field_count, pending) = if options.no_header {
            let count = first.as_ref().map_or(0, |row| row.len());
            let (text, label) = columns_by_number(path, options, count)?;
            (text, label, count, first)
        } else {
            let Some(header) = first else {
                return Err(ReadError::MissingHeader {
                    path: path.to_path_buf(),
                });
            };
            let names = decode_header(path, &header, options.encoding)?;
            let (text, label) = columns_by_name(path, options, &names)?;
            (text, label, names.len(), None)
        };

        Ok(CsvDocuments {
            path: path.to_path_buf(),
            reader,
            record: ByteRecord::new(),
            pending,
            field_count,
            text_indices,
            label_index,
            encoding: options.encoding,
            labels: options.labels,
            skipped_empty: 0,
        })
    }

    pub(super) fn next_document(&mut self) -> Option<Result<Document, ReadError>> {
        loop {
            let row = match self.pending.take() {
                Some(row) => row,
                None => match read_row(&mut self.reader, &self.path) {
                    Ok(Some(row)) => row,
                    Ok(None) => return None,
                    Err(error) => return Some(Err(error)),
                },
            };
            self.record = row;
            match self.parse_row() {
                Ok(Some(document)) => return Some(Ok(document)),
                Ok(None) => self.skipped_empty += 1,
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// Converts the current row, or returns `None` when all its text fields are blank.
    fn parse_row(&self) -> Result<Option<Document>, ReadError> {
        let line = row_line(&self.record);
        let found = self.record.len();
        if found != self.field_count {
            return Err(ReadError::RaggedRow {
                path: self.path.clone(),
                line,
                expected: self.field_count,
                found,
            });
        }

        let mut fields = Vec::with_capacity(self.text_indices.len());
        for &index in &self.text_indices {
            fields.push(self.decode_field(index)?);
        }
        if fields.iter().all(|field| is_blank(field)) {
            return Ok(None);
        }

        let label = match self.label_index {
            Some(index) if self.labels != LabelRequirement::Ignored => {
                clean_label(&self.decode_field(index)?)
            }
            _ => None,
        };
        let label = check_label(label, self.labels, &self.path, line)?;
        Ok(Some(Document {
            // NOTE: fastai reads CSV files with pandas, which turns an empty field into
            // "nan" before joining. Here an empty field stays empty.
            text: join_fields(&fields),
            label,
            origin: Origin {
                path: self.path.clone(),
                line,
            },
        }))
    }

    fn decode_field(&self, index: usize) -> Result<String, ReadError> {
        let bytes = field_bytes(&self.record, index);
        self.encoding.decode(bytes).map_err(|error| {
            // Quoted fields may span lines, so count the line breaks before the error.
            let earlier: u64 = (0..index)
                .map(|earlier| newlines_before(&self.record[earlier], usize::MAX))
                .sum();
            ReadError::InvalidUtf8 {
                path: self.path.clone(),
                line: row_line(&self.record) + earlier + newlines_before(bytes, error.valid_up_to),
            }
        })
    }
}

/// Reads the next row, skipping blank lines (which appear as one field holding `\r` or
/// nothing under a `\n` terminator).
fn read_row(
    reader: &mut csv::Reader<BufReader<File>>,
    path: &Path,
) -> Result<Option<ByteRecord>, ReadError> {
    let mut row = ByteRecord::new();
    loop {
        let more = reader.read_byte_record(&mut row).map_err(|source| {
            let line = source
                .position()
                .map_or_else(|| reader.position().line(), |position| position.line());
            ReadError::Csv {
                path: path.to_path_buf(),
                line,
                source,
            }
        })?;
        if !more {
            return Ok(None);
        }
        let blank = row.len() == 1 && matches!(&row[0], b"" | b"\r");
        if !blank {
            return Ok(Some(row));
        }
    }
}

/// 1-based line where the row starts.
fn row_line(row: &ByteRecord) -> u64 {
    row.position().map_or(0, |position| position.line())
}

/// Bytes of field `index`, without the `\r` of a CRLF ending on the last field.
fn field_bytes(row: &ByteRecord, index: usize) -> &[u8] {
    let bytes = &row[index];
    if index + 1 == row.len() {
        bytes.strip_suffix(b"\r").unwrap_or(bytes)
    } else {
        bytes
    }
}

fn decode_header(
    path: &Path,
    header: &ByteRecord,
    encoding: Encoding,
) -> Result<Vec<String>, ReadError> {
    (0..header.len())
        .map(|index| {
            encoding
                .decode(field_bytes(header, index))
                .map(|name| name.trim().to_owned())
                .map_err(|_| ReadError::InvalidUtf8 {
                    path: path.to_path_buf(),
                    line: row_line(header),
                })
        })
        .collect()
}

/// Resolves text and label columns by header name.
fn columns_by_name(
    path: &Path,
    options: &ReadOptions,
    names: &[String],
) -> Result<(Vec<usize>, Option<usize>), ReadError> {
    let find = |column: &str| names.iter().position(|name| name == column);
    let unknown = |column: &str| ReadError::UnknownColumn {
        path: path.to_path_buf(),
        column: column.to_owned(),
        available: names.to_vec(),
    };

    let mut text = Vec::new();
    for column in text_column_names(options) {
        text.push(find(&column).ok_or_else(|| unknown(&column))?);
    }

    let label = match (&options.label_column, options.labels) {
        (_, LabelRequirement::Ignored) => None,
        (Some(column), _) => Some(find(column).ok_or_else(|| unknown(column))?),
        (None, LabelRequirement::Required) => {
            Some(find(DEFAULT_LABEL_COLUMN).ok_or_else(|| unknown(DEFAULT_LABEL_COLUMN))?)
        }
        (None, LabelRequirement::Optional) => find(DEFAULT_LABEL_COLUMN),
    };
    Ok((text, label))
}

/// Resolves text and label columns given as 0-based numbers for a file without header.
fn columns_by_number(
    path: &Path,
    options: &ReadOptions,
    count: usize,
) -> Result<(Vec<usize>, Option<usize>), ReadError> {
    if options.text_columns.is_empty() {
        return Err(ReadError::MissingTextColumns {
            path: path.to_path_buf(),
        });
    }
    let parse = |column: &String| match column.trim().parse::<usize>() {
        // An empty file has no rows to check the number against.
        Ok(index) if index < count || count == 0 => Ok(index),
        _ => Err(ReadError::InvalidColumnNumber {
            path: path.to_path_buf(),
            column: column.clone(),
            count,
        }),
    };
    let text = options
        .text_columns
        .iter()
        .map(parse)
        .collect::<Result<Vec<_>, _>>()?;
    let label = match (&options.label_column, options.labels) {
        (_, LabelRequirement::Ignored) => None,
        (Some(column), _) => Some(parse(column)?),
        (None, LabelRequirement::Required) => {
            return Err(ReadError::LabelsUnavailable {
                path: path.to_path_buf(),
                reason: "the CSV file has no header and no label column number was given \
                         (for example --label-column 0)",
            })
        }
        (None, LabelRequirement::Optional) => None,
    };
    Ok((text, label))
}
