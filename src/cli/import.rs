//! `ulmfit import-fastai`: convert a fastai AWD-LSTM `.pth` file and its `itos.pkl` into a
//! model folder.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::import::FastaiLayout;
use crate::pipeline::fastai_import::import_fastai_lm;
use crate::pipeline::model_folder::{self, ModelFolderConfig, ModelKind};
use crate::text::rules::RuleSet;

/// Arguments of `ulmfit import-fastai`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// fastai language model or encoder weights (`Learner.save`, `save_encoder`, or a
    /// fastai 1.x file such as the WikiText-103 model).
    #[arg(long, value_name = "FILE.pth")]
    pub weights: PathBuf,

    /// The vocabulary saved with the weights: a pickled list of tokens (`itos.pkl`).
    #[arg(long, value_name = "FILE.pkl")]
    pub itos: PathBuf,

    /// Model folder to write (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Tokenizer rules the model was trained with: `fastai2` (or `fastai`) or `fastai1`.
    /// Default: `fastai1` for files in fastai 1.x layout, else `fastai2`.
    #[arg(long, value_name = "NAME")]
    pub rules: Option<String>,

    /// Mark the model as reading text backwards (the backward half of a ULMFiT pair).
    #[arg(long)]
    pub backwards: bool,
}

/// Runs `ulmfit import-fastai`.
pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let imported = import_fastai_lm(&args.weights, &args.itos)?;
    let rules_name = match (&args.rules, imported.layout) {
        (Some(name), _) => name.as_str(),
        (None, FastaiLayout::Fastai1) => "fastai1",
        (None, _) => "fastai2",
    };
    let rules = RuleSet::by_name(rules_name).context("invalid --rules value")?;
    if imported.had_optimizer {
        tracing::info!(
            "{} also contains optimizer state, which is not imported",
            args.weights.display()
        );
    }
    if imported.dropped_fillers > 0 {
        tracing::info!(
            "dropped {} trailing xxfake tokens and their embedding rows",
            imported.dropped_fillers
        );
    }

    let config = ModelFolderConfig {
        kind: imported.kind,
        model: imported.model.config().clone(),
        backwards: args.backwards,
    };
    model_folder::save(
        &args.out,
        &config,
        &imported.model,
        &imported.vocab,
        &rules.name,
        None,
    )
    .with_context(|| format!("failed to write model folder {}", args.out.display()))?;

    let model = &config.model;
    let kind = match imported.kind {
        ModelKind::LanguageModel => "language model",
        ModelKind::Encoder => "encoder",
    };
    println!(
        "imported {kind} ({:?} layout): {} tokens, embedding {}, hidden {}, {} layers, {} decoder, rules {} -> {}",
        imported.layout,
        model.vocab_size,
        model.embedding_size,
        model.hidden_size,
        model.layers,
        match (imported.kind, model.tie_weights) {
            (ModelKind::Encoder, _) => "no",
            (_, true) => "tied",
            (_, false) => "untied",
        },
        rules.name,
        args.out.display()
    );
    Ok(())
}
