//! `ulmfit generate`: continue a prompt with a language model folder, as fastai's
//! `LMLearner.predict` does.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use super::perplexity::load_language_model;
use super::training::{DeviceSpec, DEVICE_HELP};
use crate::pipeline::generate::{detokenize, generate_tokens, SamplingOptions};
use crate::pipeline::model_folder::LoadedModel;
use crate::rng::Rng;
use crate::text::UNK;

/// Arguments of `ulmfit generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model folder written by `ulmfit import-fastai` or by training.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Text to continue; it is tokenized with the model's tokenizer.
    #[arg(long, value_name = "TEXT")]
    pub prompt: String,

    /// Number of tokens to generate (fastai's `n_words`; markers such as `xxmaj` count).
    #[arg(long, default_value_t = 40, value_name = "N")]
    pub words: usize,

    /// Softmax temperature: below 1 picks likely tokens more often, above 1 less; 0 always
    /// picks the most likely token.
    #[arg(long, default_value_t = 1.0, value_name = "T")]
    pub temperature: f64,

    /// Seed of the sampling; without it, a seed is taken from the clock.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,

    /// Allow sampling `xxunk`, which is excluded by default as in fastai (`no_unk=True`).
    #[arg(long)]
    pub allow_unk: bool,

    #[arg(long, default_value = "cpu", value_name = "DEVICE", help = DEVICE_HELP)]
    pub device: DeviceSpec,
}

/// Runs `ulmfit generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.temperature.is_nan() || args.temperature < 0.0 {
        bail!(
            "invalid --temperature {}: it must be 0 (greedy) or positive",
            args.temperature
        );
    }
    let LoadedModel {
        mut model,
        vocab,
        tokenizer,
        config,
    } = load_language_model(&args.model, args.device)?;
    if config.backwards {
        bail!(
            "{} is a backward model, which generates text from the end; generate needs a forward model",
            args.model.display()
        );
    }
    let prompt_tokens = tokenizer
        .tokenize(&args.prompt)
        .context("failed to tokenize the prompt")?;
    let prompt: Vec<u32> = vocab.encode(&prompt_tokens);
    if prompt.is_empty() {
        bail!("the prompt has no tokens; pass a non-empty --prompt");
    }

    let seed = args.seed.unwrap_or_else(clock_seed);
    tracing::info!("sampling with seed {seed}");
    let options = SamplingOptions {
        tokens: args.words,
        temperature: args.temperature,
        banned: if args.allow_unk { None } else { vocab.get(UNK) },
    };
    let generated = generate_tokens(&mut model, &prompt, &options, &mut Rng::seed(seed))
        .with_context(|| format!("failed to generate with {}", args.model.display()))?;

    // Like fastai, the prompt is printed from its ids, so unknown words show as `xxunk`.
    let tokens: Vec<&str> = prompt
        .iter()
        .chain(&generated)
        .map(|&id| vocab.token(id).unwrap_or(UNK))
        .collect();
    println!("{}", detokenize(&tokens));
    Ok(())
}

/// Returns a seed from the system clock, for runs without `--seed`.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}
