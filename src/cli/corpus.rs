//! Streaming over the documents of several corpus files in chunks, for the commands that
//! tokenize whole corpora.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::text::readers::{self, Document, ReadOptions};

/// Documents tokenized in parallel at a time.
pub const CHUNK_DOCUMENTS: usize = 4096;

/// Reads every document of `paths` in order and hands them to `each_chunk` in chunks of
/// [`CHUNK_DOCUMENTS`]. Returns the number of documents read, and fails when there are
/// none. Empty texts are skipped, with one warning per file that counts them when
/// `warn_empty` is set.
pub fn for_each_chunk(
    paths: &[PathBuf],
    options: &ReadOptions,
    progress: &ProgressBar,
    warn_empty: bool,
    mut each_chunk: impl FnMut(Vec<Document>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for path in paths {
        let mut reader = readers::open(path, options)
            .with_context(|| format!("failed to open corpus {}", path.display()))?;
        let mut chunk = Vec::with_capacity(CHUNK_DOCUMENTS);
        for document in reader.by_ref() {
            chunk.push(document?);
            if chunk.len() == CHUNK_DOCUMENTS {
                total += chunk.len() as u64;
                progress.inc(chunk.len() as u64);
                each_chunk(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(CHUNK_DOCUMENTS),
                ))?;
            }
        }
        if !chunk.is_empty() {
            total += chunk.len() as u64;
            progress.inc(chunk.len() as u64);
            each_chunk(chunk)?;
        }
        let skipped = reader.skipped_empty();
        if skipped > 0 && warn_empty {
            tracing::warn!(
                "skipped {skipped} empty or whitespace-only texts in {}",
                path.display()
            );
        }
    }
    if total == 0 {
        anyhow::bail!(
            "no documents found in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(total)
}

/// Fails when `out` is one of the input `paths`, which writing would destroy.
pub fn check_output_is_not_input(out: &std::path::Path, paths: &[PathBuf]) -> anyhow::Result<()> {
    let Ok(out) = out.canonicalize() else {
        return Ok(());
    };
    for path in paths {
        if path.canonicalize().is_ok_and(|input| input == out) {
            anyhow::bail!(
                "output {} is also an input corpus; choose another --out",
                path.display()
            );
        }
    }
    Ok(())
}

/// Returns a spinner on stderr that counts documents, hidden with `--quiet`.
pub fn document_spinner(message: &'static str, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    ProgressBar::new_spinner()
        .with_style(
            ProgressStyle::with_template("{spinner} {msg}: {human_pos} documents, {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        )
        .with_message(message)
}
