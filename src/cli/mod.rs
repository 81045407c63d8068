//! Command-line interface: argument definitions and the code that runs each command.
//! Results go to stdout. Logs, progress bars and errors go to stderr.

mod bench;
mod classify;
mod corpus;
mod data;
mod evaluate;
mod export;
mod generate;
mod import;
mod json;
mod lm_finetune;
mod numericalize;
mod perplexity;
mod precision;
mod predict;
mod pretrain;
mod tokenize;
mod training;
mod vision;
mod vocab;

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

pub use data::DataArgs;

/// Help heading of the options that every command accepts.
const GLOBAL_OPTIONS: &str = "Global options";

/// ULMFiT text classification: pretrain and fine-tune AWD-LSTM language models, train
/// text and image classifiers, and score text with them.
#[derive(Debug, Parser)]
#[command(name = "ulmfit", version, about, max_term_width = 100)]
pub struct Cli {
    /// More log output on stderr (-v debug, -vv trace). `RUST_LOG` overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "quiet",
          help_heading = GLOBAL_OPTIONS)]
    pub verbose: u8,

    /// Print only errors on stderr: no summaries, warnings or progress bars.
    #[arg(short, long, global = true, help_heading = GLOBAL_OPTIONS)]
    pub quiet: bool,

    /// Worker threads for parallel work, at most 1024 (0 uses one per CPU core).
    #[arg(long, global = true, default_value_t = 0, value_name = "N", help_heading = GLOBAL_OPTIONS,
          value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub threads: u16,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Tokenize documents and print one JSON line `{"tokens": [...]}` per document.
    Tokenize(tokenize::TokenizeArgs),
    /// Build vocabularies.
    #[command(subcommand)]
    Vocab(vocab::VocabCommand),
    /// Tokenize a corpus and write its token ids to a memory-mappable token file.
    Numericalize(numericalize::NumericalizeArgs),
    /// Train an AWD-LSTM language model from scratch and write a model folder.
    Pretrain(pretrain::PretrainArgs),
    /// Sweep learning rates for a language model and print the suggested rate.
    LrFind(pretrain::LrFindArgs),
    /// Convert fastai AWD-LSTM weights and their itos.pkl into a model folder.
    ImportFastai(import::ImportArgs),
    /// Report a language model's loss, perplexity and next-token accuracy on a corpus.
    Perplexity(perplexity::PerplexityArgs),
    /// Continue a prompt with a language model and print the text.
    Generate(generate::GenerateArgs),
    /// Fine-tune a pretrained language model on target texts and write a model folder.
    LmFinetune(lm_finetune::LmFinetuneArgs),
    /// Train a text classifier on a fine-tuned language model and write a classifier folder.
    Classify(classify::ClassifyArgs),
    /// Score texts with classifier folders and print labels and class probabilities.
    Predict(predict::PredictArgs),
    /// Score labelled data with classifier folders: accuracy, per-class precision,
    /// recall and F1, and the confusion matrix, optionally beside a TF-IDF baseline.
    Evaluate(evaluate::EvaluateArgs),
    /// Copy a model folder with its weights stored as f16, bf16 or f32.
    Export(export::ExportArgs),
    /// Train, apply and evaluate image classifiers on pretrained MobileNets or ResNets.
    #[command(subcommand)]
    Vision(vision::VisionCommand),
    /// Measure throughput.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Sets up `tracing` on stderr: summaries and warnings by default, more with `-v`,
/// errors only with `--quiet`. The `RUST_LOG` environment variable takes precedence.
/// Colours are used only when stderr is a terminal.
pub fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
}

/// Formats an error and its causes on one line each, leaving out a cause whose text the
/// message before it already contains (typed errors often embed their source).
pub fn describe_error(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    let mut previous = text.clone();
    for cause in error.chain().skip(1) {
        let message = cause.to_string();
        if !previous.contains(&message) {
            text.push_str("\n  caused by: ");
            text.push_str(&message);
        }
        previous = message;
    }
    text
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(usize::from(cli.threads))
            .build_global()
            .map_err(|e| anyhow::anyhow!("failed to start {} worker threads: {e}", cli.threads))?;
    }
    let progress = !cli.quiet;
    match cli.command {
        Command::Tokenize(args) => tokenize::run(args),
        Command::Vocab(command) => vocab::run(command, progress),
        Command::Numericalize(args) => numericalize::run(args, progress),
        Command::Pretrain(args) => pretrain::run_pretrain(args, progress),
        Command::LrFind(args) => pretrain::run_lr_find(args, progress),
        Command::ImportFastai(args) => import::run(args),
        Command::Perplexity(args) => perplexity::run(args, progress),
        Command::Generate(args) => generate::run(args),
        Command::LmFinetune(args) => lm_finetune::run(args, progress),
        Command::Classify(args) => classify::run(args, progress),
        Command::Predict(args) => predict::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Export(args) => export::run(args),
        Command::Vision(command) => vision::run(command, progress),
        Command::Bench(command) => bench::run(command),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_error_drops_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(io).context("failed to read a.txt: no such file");
        assert_eq!(describe_error(&error), "failed to read a.txt: no such file");
    }

    #[test]
    fn describe_error_keeps_new_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(io).context("failed to read a.txt");
        assert_eq!(
            describe_error(&error),
            "failed to read a.txt\n  caused by: no such file"
        );
    }

    #[test]
    fn threads_above_limit_rejected() {
        let parsed = Cli::try_parse_from(["ulmfit", "--threads", "2000", "tokenize"]);
        assert!(parsed.is_err());
    }
}
