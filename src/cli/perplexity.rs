//! `ulmfit perplexity`: cross-entropy, perplexity and next-token accuracy of a language
//! model folder on a corpus.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::corpus::{document_spinner, for_each_chunk};
use super::data::DataArgs;
use super::training::{select_device, DeviceSpec, DEVICE_HELP};
use crate::pipeline::evaluate::evaluate_language_model;
use crate::pipeline::model_folder::{self, LoadedModel, ModelKind};
use crate::text::readers::{Document, LabelRequirement};
use crate::text::tokenizer::Tokenizer;
use crate::text::vocab::Vocab;

/// Arguments of `ulmfit perplexity`.
#[derive(Debug, Args)]
pub struct PerplexityArgs {
    /// Model folder written by `ulmfit import-fastai` or by training.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Corpus to evaluate on; for a text file each non-blank line is a document. The
    /// documents are tokenized with the model's tokenizer and concatenated in order.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Rows the token stream is cut into (each row is read from start to end).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub batch_size: usize,

    /// Tokens per forward pass of each row (backpropagation-through-time length).
    #[arg(long, default_value_t = 72, value_name = "N")]
    pub bptt: usize,

    /// Print one JSON object `{"loss", "perplexity", "accuracy", "tokens"}`.
    #[arg(long)]
    pub json: bool,

    #[arg(long, default_value = "cpu", value_name = "DEVICE", help = DEVICE_HELP)]
    pub device: DeviceSpec,

    #[command(flatten)]
    pub data: DataArgs,
}

/// Loads a model folder that contains a language model (with its decoder) onto the
/// device named by `--device`.
pub fn load_language_model(dir: &Path, device: DeviceSpec) -> anyhow::Result<LoadedModel> {
    if !dir.is_dir() {
        bail!(
            "model folder {} not found; create one with `ulmfit import-fastai`",
            dir.display()
        );
    }
    let device = select_device(device)?;
    let loaded = model_folder::load(dir, &device)
        .with_context(|| format!("failed to load model folder {}", dir.display()))?;
    if loaded.config.kind == ModelKind::Encoder {
        bail!(
            "{} contains an encoder without decoder, which cannot predict tokens; use a language model folder",
            dir.display()
        );
    }
    Ok(loaded)
}

/// Runs `ulmfit perplexity`.
pub fn run(args: PerplexityArgs, progress: bool) -> anyhow::Result<()> {
    let LoadedModel {
        mut model,
        vocab,
        tokenizer,
        config,
    } = load_language_model(&args.model, args.device)?;
    let mut documents = read_documents(&args, &tokenizer, &vocab, progress)?;
    if config.backwards {
        // fastai's `backwards=True` reverses each document and keeps their order.
        documents.iter_mut().for_each(|ids| ids.reverse());
    }

    let bar = window_bar(progress);
    let result = evaluate_language_model(
        &mut model,
        &documents,
        args.batch_size,
        args.bptt,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )
    .with_context(|| {
        format!(
            "failed to evaluate {} on {}",
            args.model.display(),
            args.file.display()
        )
    })?;
    bar.finish_and_clear();

    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "loss {:.4} nats, perplexity {:.2}, accuracy {:.4}, {} tokens",
            result.loss, result.perplexity, result.accuracy, result.tokens
        );
    }
    Ok(())
}

/// Reads and numericalizes every document of the corpus, in order.
fn read_documents(
    args: &PerplexityArgs,
    tokenizer: &Tokenizer,
    vocab: &Vocab,
    progress: bool,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let options = args.data.read_options(LabelRequirement::Ignored);
    let spinner = document_spinner("tokenizing", progress);
    let mut documents = Vec::new();
    let paths = [args.file.clone()];
    for_each_chunk(&paths, &options, &spinner, true, |chunk| {
        documents.extend(numericalize(tokenizer, vocab, &chunk)?);
        Ok(())
    })?;
    spinner.finish_and_clear();
    Ok(documents)
}

/// Tokenizes and numericalizes `documents` in parallel, in order.
pub fn numericalize(
    tokenizer: &Tokenizer,
    vocab: &Vocab,
    documents: &[Document],
) -> anyhow::Result<Vec<Vec<u32>>> {
    let encoded = super::numericalize::encode_documents(tokenizer, vocab, None, documents)?;
    Ok(encoded.into_iter().map(|(ids, _)| ids).collect())
}

/// Returns a progress bar over windows on stderr, hidden with `--quiet`.
fn window_bar(visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    ProgressBar::new(0)
        .with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} windows, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
        .with_message("evaluating")
}
