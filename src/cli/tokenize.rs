//! `ulmfit tokenize`: documents in, one JSON token list per document out, in order.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use rayon::prelude::*;

use super::data::{decode_line, progress_bar, EncodingArg, InputName};
use super::json::TokensLine;
use crate::text::encoding::UTF8_BOM;
use crate::text::readers;
use crate::text::rules::RuleSet;
use crate::text::subword::SubwordModel;
use crate::text::tokenizer::{Scratch, Tokenizer};

/// Documents handed to the worker threads at a time.
const CHUNK_DOCUMENTS: usize = 4096;

/// Arguments of `ulmfit tokenize`.
#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// Input file with one document per line, or standard input when absent or `-`.
    pub file: Option<PathBuf>,

    /// Read one JSON object per line and tokenize its `text` field (other fields are
    /// ignored). Blank lines are skipped and produce no output line.
    #[arg(long)]
    pub jsonl: bool,

    /// Rule set applied before splitting: `fastai` (fastai 2.x defaults), `fastai1`
    /// (fastai 1.x defaults) or `none` (no special tokens, no lowercasing).
    #[arg(long, default_value = "fastai", value_name = "NAME")]
    pub rules: String,

    /// Split with the subword model saved in this folder (`tokenizer.json`, written by
    /// `ulmfit vocab build --subword`) instead of the English word splitter.
    #[arg(long, value_name = "DIR")]
    pub subword_model: Option<PathBuf>,

    #[command(flatten)]
    pub encoding: EncodingArg,
}

/// Runs `ulmfit tokenize`.
pub fn run(args: TokenizeArgs) -> anyhow::Result<()> {
    let rules = RuleSet::by_name(&args.rules)?;
    let tokenizer = match &args.subword_model {
        Some(dir) => Tokenizer::subword(
            rules,
            SubwordModel::load(dir).with_context(|| {
                format!("failed to load the subword model in {}", dir.display())
            })?,
        ),
        None => Tokenizer::word(rules),
    };
    let file = args.file.as_ref().filter(|path| path.as_os_str() != "-");
    let (input, name, size): (Box<dyn Read + Send>, InputName, Option<u64>) = match file {
        Some(path) => {
            readers::detect_format(path)?;
            let file = File::open(path)
                .with_context(|| format!("failed to open input file {}", path.display()))?;
            let size = file.metadata().ok().map(|m| m.len());
            (Box::new(file), InputName::File(path.clone()), size)
        }
        None => (Box::new(io::stdin()), InputName::Stdin, None),
    };
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let bar = progress_bar(size, "tokenizing");

    let mut first_line = 1u64;
    let mut chunk = read_chunk(&mut reader, &name)?;
    if let Some(first) = chunk.first_mut() {
        if first.starts_with(UTF8_BOM) {
            first.drain(..UTF8_BOM.len());
        }
    }
    while !chunk.is_empty() {
        let lines = std::mem::take(&mut chunk);
        let bytes: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        let (encoded, next) = rayon::join(
            || encode_chunk(&tokenizer, &lines, first_line, &args, &name),
            || read_chunk(&mut reader, &name),
        );
        for line in encoded?.iter().flatten() {
            if let Err(error) = out.write_all(line) {
                return stdout_result(error);
            }
        }
        first_line += lines.len() as u64;
        bar.inc(bytes);
        chunk = next?;
    }
    if let Err(error) = out.flush() {
        return stdout_result(error);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Treats a closed standard output (`ulmfit tokenize | head`) as the end of the run,
/// and any other write failure as an error.
fn stdout_result(error: io::Error) -> anyhow::Result<()> {
    if error.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(anyhow::Error::new(error).context("failed to write to standard output"))
    }
}

/// Reads up to [`CHUNK_DOCUMENTS`] lines, without their `\n` (and `\r\n`) endings.
fn read_chunk(reader: &mut impl BufRead, name: &InputName) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut lines = Vec::with_capacity(CHUNK_DOCUMENTS);
    while lines.len() < CHUNK_DOCUMENTS {
        let mut line = Vec::new();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("failed to read {name}"))?;
        if read == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        lines.push(line);
    }
    Ok(lines)
}

/// Tokenizes one chunk in parallel and returns one JSON line per document, in order:
/// `None` for a blank line of JSON lines input, which is not a document.
fn encode_chunk(
    tokenizer: &Tokenizer,
    lines: &[Vec<u8>],
    first_line: u64,
    args: &TokenizeArgs,
    name: &InputName,
) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
    lines
        .par_iter()
        .enumerate()
        .map_init(Scratch::default, |scratch, (index, raw)| {
            let line_number = first_line + index as u64;
            let decoded = decode_line(raw, args.encoding.get(), name, line_number)?;
            let text = if args.jsonl {
                if decoded.trim().is_empty() {
                    return Ok(None);
                }
                jsonl_text(&decoded, name, line_number)?
            } else {
                decoded.into_owned()
            };
            let mut line = TokensLine::start(Vec::with_capacity(text.len() * 2 + 16));
            tokenizer
                .for_each_token(&text, scratch, |token| line.push(token))
                .with_context(|| format!("failed to tokenize {name}:{line_number}"))?;
            Ok(Some(line.finish()))
        })
        .collect()
}

/// Returns the `text` field of one JSON line.
fn jsonl_text(line: &str, name: &InputName, line_number: u64) -> anyhow::Result<String> {
    let value: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("{name}:{line_number}: invalid JSON"))?;
    match value.get("text") {
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        Some(other) => {
            bail!("{name}:{line_number}: the \"text\" field must be a string, found {other}")
        }
        None => bail!("{name}:{line_number}: missing \"text\" field"),
    }
}
