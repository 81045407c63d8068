//! JSON lines reader: one JSON object per line with text and label fields.

use std::path::Path;

use serde_json::Value;

use super::plain::LineSource;
use super::{
    check_label, clean_label, is_blank, join_fields, text_column_names, Document, LabelRequirement,
    Origin, ReadError, ReadOptions, DEFAULT_LABEL_COLUMN,
};

/// Documents from a JSON lines file.
///
/// The text fields (default `text`) must be strings, and the label field (default
/// `label`) may be a string or a number, kept in its string form. Other fields are
/// ignored, and blank lines between records are allowed.
pub(super) struct JsonlDocuments {
    lines: LineSource,
    text_fields: Vec<String>,
    label_field: String,
    labels: LabelRequirement,
    pub(super) skipped_empty: u64,
}

impl JsonlDocuments {
    pub(super) fn open(path: &Path, options: &ReadOptions) -> Result<Self, ReadError> {
        Ok(JsonlDocuments {
            lines: LineSource::open(path, options.encoding)?,
            text_fields: text_column_names(options),
            label_field: options
                .label_column
                .clone()
                .unwrap_or_else(|| DEFAULT_LABEL_COLUMN.to_owned()),
            labels: options.labels,
            skipped_empty: 0,
        })
    }

    pub(super) fn next_document(&mut self) -> Option<Result<Document, ReadError>> {
        loop {
            let (line, text) = match self.lines.next_line()? {
                Ok(item) => item,
                Err(error) => return Some(Err(error)),
            };
            if is_blank(&text) {
                continue;
            }
            match self.parse_record(line, &text) {
                Ok(Some(document)) => return Some(Ok(document)),
                Ok(None) => self.skipped_empty += 1,
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// Parses one line, or returns `None` when its text is empty or whitespace only.
    fn parse_record(&self, line: u64, json: &str) -> Result<Option<Document>, ReadError> {
        let path = self.lines.path();
        let value: Value = serde_json::from_str(json).map_err(|source| ReadError::InvalidJson {
            path: path.to_path_buf(),
            line,
            source,
        })?;
        let Value::Object(record) = value else {
            return Err(invalid_field(path, line, "(record)", "an object", &value));
        };

        let mut fields = Vec::with_capacity(self.text_fields.len());
        for name in &self.text_fields {
            match record.get(name) {
                Some(Value::String(text)) => fields.push(text.clone()),
                None | Some(Value::Null) => {
                    return Err(ReadError::MissingField {
                        path: path.to_path_buf(),
                        line,
                        field: name.clone(),
                    })
                }
                Some(other) => return Err(invalid_field(path, line, name, "a string", other)),
            }
        }
        if fields.iter().all(|field| is_blank(field)) {
            return Ok(None);
        }

        let label = match self.labels {
            LabelRequirement::Ignored => None,
            _ => self.label_of(&record, line)?,
        };
        let label = check_label(label, self.labels, path, line)?;
        Ok(Some(Document {
            text: join_fields(&fields),
            label,
            origin: Origin {
                path: path.to_path_buf(),
                line,
            },
        }))
    }

    fn label_of(
        &self,
        record: &serde_json::Map<String, Value>,
        line: u64,
    ) -> Result<Option<String>, ReadError> {
        match record.get(&self.label_field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(label)) => Ok(clean_label(label)),
            Some(Value::Number(number)) => Ok(Some(number.to_string())),
            Some(other) => Err(invalid_field(
                self.lines.path(),
                line,
                &self.label_field,
                "a string or a number",
                other,
            )),
        }
    }
}

fn invalid_field(
    path: &Path,
    line: u64,
    field: &str,
    expected: &'static str,
    found: &Value,
) -> ReadError {
    let found = match found {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ReadError::InvalidField {
        path: path.to_path_buf(),
        line,
        field: field.to_owned(),
        expected,
        found,
    }
}
