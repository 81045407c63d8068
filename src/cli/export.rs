//! `ulmfit export`: copy a model folder with its weights stored as f16, bf16 or f32.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::pipeline::export::{export_model_folder, WeightDtype};

/// Arguments of `ulmfit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Language-model, encoder or classifier folder to copy.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Folder to write (created if missing; files of the same names are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Storage dtype of the weights. Loading turns f16 and bf16 back into f32.
    #[arg(long, value_enum, default_value = "f16", value_name = "DTYPE")]
    pub dtype: WeightDtype,
}

/// Runs `ulmfit export`.
pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let summary = export_model_folder(&args.model, &args.out, args.dtype).with_context(|| {
        format!(
            "failed to export {} to {}",
            args.model.display(),
            args.out.display()
        )
    })?;
    if !summary.skipped.is_empty() {
        tracing::info!(
            "left out {} (training files, not needed to use the model)",
            summary.skipped.join(", ")
        );
    }
    println!(
        "exported {} {} -> {}: {} of {} tensors cast to {:?}, weights {} -> {} bytes, copied {}",
        summary.kind.replace('_', " "),
        args.model.display(),
        args.out.display(),
        summary.cast,
        summary.tensors,
        args.dtype,
        summary.bytes_before,
        summary.bytes_after,
        summary.copied.join(", ")
    );
    Ok(())
}
