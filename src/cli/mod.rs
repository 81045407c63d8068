//! Command-line interface: argument definitions and the code that runs each command.
//! Results go to stdout; logs, progress bars and errors go to stderr.

mod bench;
mod corpus;
mod data;
mod json;
mod numericalize;
mod tokenize;
mod vocab;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

pub use data::DataArgs;

/// ULMFiT text classification: tokenize text as fastai does, build vocabularies and
/// numericalized corpora.
#[derive(Debug, Parser)]
#[command(name = "ulmfit", version, about, max_term_width = 100)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace). `RUST_LOG` overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Print only errors on stderr, and no progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Worker threads for parallel work; 0 uses one per CPU core.
    #[arg(long, global = true, default_value_t = 0, value_name = "N")]
    pub threads: usize,

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
    /// Measure throughput.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Sets up `tracing` on stderr: warnings by default, more with `-v`, errors only with
/// `--quiet`; the `RUST_LOG` environment variable takes precedence.
pub fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(cli.threads)
            .build_global()
            .map_err(|e| anyhow::anyhow!("failed to start {} worker threads: {e}", cli.threads))?;
    }
    let progress = !cli.quiet;
    match cli.command {
        Command::Tokenize(args) => tokenize::run(args),
        Command::Vocab(command) => vocab::run(command, progress),
        Command::Numericalize(args) => numericalize::run(args, progress),
        Command::Bench(command) => bench::run(command),
    }
}
