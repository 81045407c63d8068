//! `ulmfit numericalize`: tokenize corpora with a vocabulary's tokenizer and write their
//! token ids (and labels, when the corpus has them) to a token file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use rayon::prelude::*;

use super::corpus::{check_output_is_not_input, document_spinner, for_each_chunk};
use super::data::DataArgs;
use crate::text::readers::{Document, LabelRequirement};
use crate::text::rules::RuleSet;
use crate::text::subword::SubwordModel;
use crate::text::token_file::TokenFileWriter;
use crate::text::tokenizer::{Scratch, Tokenizer};
use crate::text::vocab::{Vocab, VocabKind};

/// Arguments of `ulmfit numericalize`.
#[derive(Debug, Args)]
pub struct NumericalizeArgs {
    /// Vocabulary folder written by `ulmfit vocab build` (its rules and, for subword
    /// vocabularies, its `tokenizer.json` are used).
    #[arg(long, value_name = "DIR")]
    pub vocab: PathBuf,

    /// Corpora to read, in order (`--corpus A B` or `--corpus A --corpus B`).
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub corpus: Vec<PathBuf>,

    /// Token file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Labels to store: `optional` stores them when every document has one, and none
    /// otherwise (for example when `unsup/` is read). `required` fails on a document
    /// without a label, and `ignored` stores none.
    #[arg(
        long,
        value_enum,
        default_value = "optional",
        value_name = "MODE",
        hide_possible_values = true
    )]
    pub labels: LabelRequirement,

    #[command(flatten)]
    pub data: DataArgs,
}

/// Loads the tokenizer and vocabulary stored in a vocabulary folder.
pub fn load_tokenizer(dir: &Path) -> anyhow::Result<(Tokenizer, Vocab)> {
    let (vocab, header) = Vocab::load_with_header(dir)
        .with_context(|| format!("failed to load the vocabulary in {}", dir.display()))?;
    let rules = RuleSet::by_name(&header.rules)
        .with_context(|| format!("invalid rule set in {}", dir.join("vocab.json").display()))?;
    let tokenizer = match header.kind {
        VocabKind::Word => Tokenizer::word(rules),
        VocabKind::Unigram | VocabKind::Bpe => {
            let model = SubwordModel::load(dir).with_context(|| {
                format!("failed to load the subword model in {}", dir.display())
            })?;
            Tokenizer::subword(rules, model)
        }
    };
    Ok((tokenizer, vocab))
}

/// Runs `ulmfit numericalize`.
pub fn run(args: NumericalizeArgs, progress: bool) -> anyhow::Result<()> {
    check_output_is_not_input(&args.out, &args.corpus)?;
    let (tokenizer, vocab) = load_tokenizer(&args.vocab)?;
    let options = args.data.read_options(args.labels);
    let classes = match args.labels {
        LabelRequirement::Ignored => None,
        _ => collect_classes(&args, &options, progress)?,
    };
    if args.labels == LabelRequirement::Required && classes.is_none() {
        bail!("--labels required, but the corpus has no labels");
    }

    let mut writer = TokenFileWriter::create(
        &args.out,
        vocab.len() as u64,
        &vocab.content_hash(),
        classes.clone(),
    )
    .with_context(|| format!("failed to create token file {}", args.out.display()))?;
    let spinner = document_spinner("numericalizing", progress);
    for_each_chunk(&args.corpus, &options, &spinner, true, |documents| {
        let encoded = encode_documents(&tokenizer, &vocab, classes.as_deref(), &documents)?;
        for (ids, label) in encoded {
            writer.push_document(&ids, label)?;
        }
        Ok(())
    })?;
    spinner.finish_and_clear();
    let (documents, tokens) = (writer.n_documents(), writer.n_tokens());
    let path = writer
        .finish()
        .with_context(|| format!("failed to write token file {}", args.out.display()))?;
    tracing::info!(
        "wrote {documents} documents, {tokens} tokens{} to {}",
        classes
            .map(|c| format!(", {} classes", c.len()))
            .unwrap_or_default(),
        path.display()
    );
    Ok(())
}

/// Reads the labels of the corpus: returns the sorted class names when every document
/// has a label, and `None` when none has or, with optional labels, when some lack one.
fn collect_classes(
    args: &NumericalizeArgs,
    options: &crate::text::readers::ReadOptions,
    progress: bool,
) -> anyhow::Result<Option<Vec<String>>> {
    let mut classes = BTreeSet::new();
    let mut unlabelled: Option<(PathBuf, u64)> = None;
    let mut labelled = 0u64;
    let spinner = document_spinner("reading labels", progress);
    for_each_chunk(&args.corpus, options, &spinner, false, |documents| {
        for document in documents {
            match document.label {
                Some(label) => {
                    labelled += 1;
                    classes.insert(label);
                }
                None if unlabelled.is_none() => {
                    unlabelled = Some((document.origin.path, document.origin.line));
                }
                None => {}
            }
        }
        Ok(())
    })?;
    spinner.finish_and_clear();
    match (labelled, unlabelled) {
        (0, _) => Ok(None),
        (_, None) => Ok(Some(classes.into_iter().collect())),
        (_, Some((path, line))) if args.labels == LabelRequirement::Optional => {
            tracing::warn!(
                "storing no labels: {}:{line} and other documents have none \
                 (pass --labels required to make this an error)",
                path.display()
            );
            Ok(None)
        }
        (_, Some((path, line))) => bail!("{}:{line}: document has no label", path.display()),
    }
}

/// Tokenizes and numericalizes `documents` in parallel, in order.
pub(crate) fn encode_documents(
    tokenizer: &Tokenizer,
    vocab: &Vocab,
    classes: Option<&[String]>,
    documents: &[Document],
) -> anyhow::Result<Vec<(Vec<u32>, Option<u32>)>> {
    documents
        .par_iter()
        .map_init(Scratch::default, |scratch, document| {
            let mut ids = Vec::new();
            tokenizer
                .for_each_token(&document.text, scratch, |token| ids.push(vocab.id(token)))
                .with_context(|| {
                    format!(
                        "failed to tokenize {}:{}",
                        document.origin.path.display(),
                        document.origin.line
                    )
                })?;
            let label = match (classes, &document.label) {
                (Some(classes), Some(label)) => {
                    classes.binary_search(label).ok().map(|index| index as u32)
                }
                _ => None,
            };
            Ok((ids, label))
        })
        .collect()
}
