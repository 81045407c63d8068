//! `ulmfit bench`: throughput measurements.

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};

use super::precision::ScorePrecision;

use super::training::{select_device, DeviceSpec, DEVICE_HELP};
use crate::pipeline::bench::{run_lm_bench, LmBenchOptions, LmBenchReport, LmPreset};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time language-model training and inference on random token ids and print
    /// tokens/s, peak memory and the fraction of the f32 matrix-product peak reached.
    Lm(LmArgs),
}

/// Model sizes of `bench lm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PresetArg {
    /// Vocabulary 16,000, embedding 200, hidden 600, 3 layers, batch 32, bptt 70.
    Small,
    /// fastai's WikiText-103 sizes: vocabulary 60,000, embedding 400, hidden 1152,
    /// 3 layers, batch 64, bptt 70.
    Wt103,
}

/// Phases that `bench lm` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Training steps only.
    Train,
    /// Inference only.
    Infer,
    /// Training, then inference.
    Both,
}

/// Arguments of `ulmfit bench lm`.
#[derive(Debug, Args)]
pub struct LmArgs {
    /// Model and batch sizes.
    #[arg(long, value_enum, default_value = "small")]
    pub preset: PresetArg,

    /// Format of the matrix products of the LSTM layers and the decoder: f32, bf16 or
    /// int8. bf16 rounds inputs to bfloat16 with f32 sums and f32 parameters, and needs
    /// AVX512-BF16. int8 quantises weights and activations per row with i32 sums, needs
    /// AVX512-VNNI and serves inference only, so it needs `--mode infer`. Without the
    /// instructions the command fails.
    #[arg(long, value_enum, default_value = "f32", value_name = "FORMAT")]
    pub precision: ScorePrecision,

    /// Timed batches per phase.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub batches: usize,

    /// Untimed warm-up batches before each phase.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub warmup: usize,

    /// Phases to time.
    #[arg(long, value_enum, default_value = "both")]
    pub mode: ModeArg,

    /// Add fastai's AR and TAR terms (alpha 2, beta 1) to the training loss.
    #[arg(long)]
    pub rnn_reg: bool,

    /// Compute the training loss from full logits with stock operations instead of the
    /// fused decoder and cross-entropy kernel.
    #[arg(long)]
    pub unfused_loss: bool,

    /// Seed of the token ids, initialisation and dropout masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Print one JSON object instead of a summary.
    #[arg(long)]
    pub json: bool,

    #[arg(long, default_value = "cpu", value_name = "DEVICE", help = DEVICE_HELP)]
    pub device: DeviceSpec,
}

/// Runs `ulmfit bench`.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Lm(args) => run_lm(args),
    }
}

fn run_lm(args: LmArgs) -> anyhow::Result<()> {
    if args.batches == 0 {
        bail!("--batches must be at least 1");
    }

    // Candle sizes its matrix-product thread pool from RAYON_NUM_THREADS; keep it equal
    // to the rayon pool that `--threads` set up.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var(
            "RAYON_NUM_THREADS",
            rayon::current_num_threads().to_string(),
        );
    }

    let preset = match args.preset {
        PresetArg::Small => LmPreset::Small,
        PresetArg::Wt103 => LmPreset::Wt103,
    };
    let mut options = LmBenchOptions::new(preset);
    options.batches = args.batches;
    options.warmup = args.warmup;
    options.train = args.mode != ModeArg::Infer;
    options.infer = args.mode != ModeArg::Train;
    options.rnn_reg = args.rnn_reg;
    options.fused_loss = !args.unfused_loss;
    options.seed = args.seed;
    if args.precision == ScorePrecision::Int8 && args.mode != ModeArg::Infer {
        bail!("--precision int8 serves inference only; add --mode infer");
    }
    options.precision = args.precision.checked()?;
    options.device = select_device(args.device)?;

    let report = run_lm_bench(&options)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(())
}

fn print_summary(report: &LmBenchReport) {
    println!(
        "preset {:?}: {} parameters, batch {} x bptt {}, {} threads, {}{}",
        report.preset,
        report.parameters,
        report.batch,
        report.bptt,
        report.threads,
        report.precision,
        if report.fused_loss {
            ", fused loss"
        } else {
            ""
        }
    );
    if let Some(train) = &report.train {
        println!(
            "train: {:.0} tokens/s, median batch {:.3} s, {:.1}% of the f32 peak ({:.1} MFLOP/token)",
            train.tokens_per_s,
            train.batch_s_median,
            100.0 * train.roofline_fraction,
            report.flops_per_train_token / 1e6
        );
        if let Some([forward, backward, step]) = train.split_s_median {
            println!(
                "train split (median s): forward + loss {forward:.3}, backward {backward:.3}, optimizer {step:.3}"
            );
        }
    }
    if let Some(infer) = &report.infer {
        println!(
            "infer: {:.0} tokens/s, median batch {:.3} s, {:.1}% of the f32 peak ({:.1} MFLOP/token)",
            infer.tokens_per_s,
            infer.batch_s_median,
            100.0 * infer.roofline_fraction,
            report.flops_per_infer_token / 1e6
        );
    }
    if let Some(rss) = report.peak_rss_mb {
        println!("peak RSS: {rss:.0} MiB");
    }
}
