//! `ulmfit vocab build`: count tokens over corpora and save a vocabulary folder.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use rayon::prelude::*;

use super::corpus::{document_spinner, for_each_chunk};
use super::data::DataArgs;
use crate::text::readers::LabelRequirement;
use crate::text::rules::RuleSet;
use crate::text::subword::{train_subword, SubwordKind};
use crate::text::tokenizer::{Scratch, Tokenizer};
use crate::text::vocab::{TokenCounter, VocabKind};
use crate::text::SPECIAL_TOKENS;

/// Subcommands of `ulmfit vocab`.
#[derive(Debug, Subcommand)]
pub enum VocabCommand {
    /// Tokenize corpora and save their vocabulary (`vocab.txt`, `vocab.json`) in a folder.
    Build(VocabBuildArgs),
}

/// Subword algorithms accepted by `--subword`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubwordName {
    /// SentencePiece-style Unigram language model.
    Unigram,
    /// Byte-pair encoding.
    Bpe,
}

/// Arguments of `ulmfit vocab build`.
#[derive(Debug, Args)]
pub struct VocabBuildArgs {
    /// Corpora to read (`--corpus A B` or `--corpus A --corpus B`): files or folders, see
    /// `--format`. Labels are ignored.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub corpus: Vec<PathBuf>,

    /// Folder to write the vocabulary into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Keep words seen at least this many times (word vocabularies).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub min_freq: u64,

    /// Maximum vocabulary size, the 9 special tokens included (word vocabularies).
    #[arg(long, default_value_t = 60_000, value_name = "N")]
    pub max_vocab: usize,

    /// Tokenizer rule set: `fastai`, `fastai1` or `none`.
    #[arg(long, default_value = "fastai", value_name = "NAME")]
    pub rules: String,

    /// Train a subword model of this kind instead of counting words. Its
    /// `tokenizer.json` is saved beside the vocabulary.
    #[arg(long, value_enum, value_name = "KIND", requires = "vocab_size")]
    pub subword: Option<SubwordName>,

    /// Number of subword pieces, the 9 special tokens included (with `--subword`).
    #[arg(long, value_name = "N")]
    pub vocab_size: Option<usize>,

    #[command(flatten)]
    pub data: DataArgs,
}

/// Runs `ulmfit vocab ...`.
pub fn run(command: VocabCommand, progress: bool) -> anyhow::Result<()> {
    match command {
        VocabCommand::Build(args) => build(args, progress),
    }
}

fn build(args: VocabBuildArgs, progress: bool) -> anyhow::Result<()> {
    let rules = RuleSet::by_name(&args.rules)?;
    let options = args.data.read_options(LabelRequirement::Ignored);
    let spinner = document_spinner("reading", progress);
    match args.subword {
        Some(kind) => {
            let Some(vocab_size) = args.vocab_size else {
                bail!("--subword needs --vocab-size");
            };
            if vocab_size <= SPECIAL_TOKENS.len() {
                bail!(
                    "--vocab-size {vocab_size} leaves no room for pieces beside the {} special tokens",
                    SPECIAL_TOKENS.len()
                );
            }
            let mut texts = Vec::new();
            for_each_chunk(&args.corpus, &options, &spinner, true, |documents| {
                texts.par_extend(documents.par_iter().map(|d| rules.apply(&d.text)));
                Ok(())
            })?;
            spinner.finish_and_clear();
            let kind = match kind {
                SubwordName::Unigram => SubwordKind::Unigram,
                SubwordName::Bpe => SubwordKind::Bpe,
            };
            tracing::info!("training a {kind:?} model on {} documents", texts.len());
            let model = train_subword(texts, kind, vocab_size, &SPECIAL_TOKENS)
                .context("failed to train the subword model")?;
            model.save(&args.out, &rules.name).with_context(|| {
                format!("failed to save the subword model in {}", args.out.display())
            })?;
            tracing::info!(
                "saved a {} vocabulary of {} pieces in {}",
                model.kind().vocab_kind(),
                model.vocab().len(),
                args.out.display()
            );
        }
        None => {
            if args.max_vocab <= SPECIAL_TOKENS.len() {
                bail!(
                    "--max-vocab {} leaves no room for words beside the {} special tokens",
                    args.max_vocab,
                    SPECIAL_TOKENS.len()
                );
            }
            if args.vocab_size.is_some() {
                bail!("--vocab-size applies to subword vocabularies: add --subword unigram|bpe, or use --max-vocab");
            }
            let tokenizer = Tokenizer::word(rules);
            let mut counter = TokenCounter::new();
            let mut tokens = 0u64;
            let documents = for_each_chunk(&args.corpus, &options, &spinner, true, |documents| {
                let (chunk_counter, chunk_tokens) = count_tokens(&tokenizer, &documents)?;
                counter.merge(chunk_counter);
                tokens += chunk_tokens;
                Ok(())
            })?;
            spinner.finish_and_clear();
            let vocab = counter.build(args.min_freq, args.max_vocab);
            vocab
                .save(&args.out, &tokenizer.rules().name, VocabKind::Word)
                .with_context(|| {
                    format!("failed to save the vocabulary in {}", args.out.display())
                })?;
            tracing::info!(
                "{documents} documents, {tokens} tokens, {} distinct; saved {} tokens in {}",
                counter.len(),
                vocab.len(),
                args.out.display()
            );
        }
    }
    Ok(())
}

/// Tokenizes `documents` in parallel and returns their token counts and token total.
pub(crate) fn count_tokens(
    tokenizer: &Tokenizer,
    documents: &[crate::text::readers::Document],
) -> anyhow::Result<(TokenCounter, u64)> {
    documents
        .par_iter()
        .try_fold(
            || (TokenCounter::new(), 0u64, Scratch::default()),
            |(mut counter, mut tokens, mut scratch), document| {
                tokenizer.for_each_token(&document.text, &mut scratch, |token| {
                    counter.add_count(token, 1);
                    tokens += 1;
                })?;
                Ok::<_, anyhow::Error>((counter, tokens, scratch))
            },
        )
        .map(|partial| partial.map(|(counter, tokens, _)| (counter, tokens)))
        .try_reduce(
            || (TokenCounter::new(), 0),
            |(mut left, left_tokens), (right, right_tokens)| {
                left.merge(right);
                Ok((left, left_tokens + right_tokens))
            },
        )
}
