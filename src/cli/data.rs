//! Options shared by the commands that read data, and small input helpers.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::text::encoding::Encoding;
use crate::text::readers::{DocumentSplit, Format, LabelRequirement, ReadOptions};

/// `--encoding`, for commands that read text.
#[derive(Debug, Args)]
pub struct EncodingArg {
    /// Encoding of the input files: `utf8` or `latin1` (every byte is the code point of
    /// the same value).
    #[arg(
        long = "encoding",
        value_enum,
        default_value = "utf8",
        value_name = "NAME"
    )]
    pub encoding: Encoding,
}

impl EncodingArg {
    /// Returns the encoding chosen on the command line.
    pub fn get(&self) -> Encoding {
        self.encoding
    }
}

/// Options for reading corpora, shared by every command that reads data.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// Input format. By default it follows the path: a folder, `.csv`, `.jsonl`, else text.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,

    /// CSV column with the text (repeatable: several columns are joined with `xxfld`
    /// markers). Default `text`. With `--no-header`, a 0-based column number.
    #[arg(long = "text-column", value_name = "NAME")]
    pub text_columns: Vec<String>,

    /// CSV column with the label. Default `label`. With `--no-header`, a 0-based column
    /// number.
    #[arg(long, value_name = "NAME")]
    pub label_column: Option<String>,

    /// The CSV file has no header row: columns are chosen by 0-based number.
    #[arg(long)]
    pub no_header: bool,

    /// Rule that cuts plain-text files into documents.
    #[arg(long, value_enum, default_value = "line", value_name = "MODE")]
    pub documents: DocumentSplit,

    /// Class folders to read, comma-separated (default: every subfolder but `unsup`).
    #[arg(long, value_delimiter = ',', value_name = "A,B,...")]
    pub classes: Option<Vec<String>>,

    #[command(flatten)]
    pub encoding: EncodingArg,
}

impl DataArgs {
    /// Converts the options into the readers' options.
    pub fn read_options(&self, labels: LabelRequirement) -> ReadOptions {
        let mut options = ReadOptions {
            format: self.format,
            encoding: self.encoding.get(),
            no_header: self.no_header,
            documents: self.documents,
            classes: self
                .classes
                .as_ref()
                .map(|classes| classes.iter().map(|c| c.trim().to_string()).collect()),
            labels,
            ..ReadOptions::default()
        };
        if !self.text_columns.is_empty() {
            options.text_columns = self.text_columns.clone();
        }
        if let Some(label) = &self.label_column {
            options.label_column = Some(label.clone());
        }
        options
    }
}

/// The name of an input in messages: a file path or standard input.
#[derive(Debug, Clone)]
pub enum InputName {
    /// A file.
    File(PathBuf),
    /// Standard input.
    Stdin,
}

impl fmt::Display for InputName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputName::File(path) => write!(f, "{}", path.display()),
            InputName::Stdin => f.write_str("standard input"),
        }
    }
}

/// Decodes one input line, or fails naming the input and line.
pub fn decode_line<'a>(
    raw: &'a [u8],
    encoding: Encoding,
    name: &InputName,
    line: u64,
) -> anyhow::Result<Cow<'a, str>> {
    match encoding {
        Encoding::Latin1 => Ok(Cow::Owned(raw.iter().map(|&b| char::from(b)).collect())),
        Encoding::Utf8 => match std::str::from_utf8(raw) {
            Ok(text) => Ok(Cow::Borrowed(text)),
            Err(error) => anyhow::bail!(
                "{name}:{line}: invalid UTF-8 at byte {} of the line; \
                 if the file is Latin-1, pass --encoding latin1",
                error.valid_up_to() + 1
            ),
        },
    }
}

/// Returns a progress bar on stderr over `total` bytes, or a spinner when the total is
/// unknown. It draws nothing when stderr is not a terminal.
pub fn progress_bar(total: Option<u64>, message: &'static str) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.with_message(message)
}
