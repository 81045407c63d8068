//! Tokenizer throughput on real IMDb reviews, in tokens per second.
//!
//! Reads the reviews from `$ULMFIT_IMDB_DIR` (an unpacked `aclImdb` folder), or unpacks
//! `../shared/data/imdb/aclImdb-labelled.tar.gz` into a temporary folder with `tar`.
//! Skips with a message when neither is available.

use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rayon::prelude::*;
use ulmfit::text::tokenizer::{Scratch, Tokenizer};

/// Returns the texts of `aclImdb/train/{pos,neg}`, sorted by file name.
fn load_reviews(root: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = ["pos", "neg"]
        .iter()
        .flat_map(|class| {
            std::fs::read_dir(root.join("train").join(class))
                .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_else(|_| Vec::new())
        })
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .collect()
}

fn imdb_root(scratch: &Path) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ULMFIT_IMDB_DIR") {
        return Some(PathBuf::from(dir));
    }
    let shared = std::env::var_os("ULMFIT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let archive = shared.join("data/imdb/aclImdb-labelled.tar.gz");
    if !archive.is_file() {
        return None;
    }
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(scratch)
        .status()
        .ok()?;
    status.success().then(|| scratch.join("aclImdb"))
}

/// Tokenizes every review on the rayon pool, visiting tokens without collecting them
/// (the path `ulmfit tokenize` takes), and returns the token count.
fn count_tokens(tokenizer: &Tokenizer, reviews: &[String]) -> usize {
    reviews
        .par_iter()
        .map_init(Scratch::default, |scratch, review| {
            let mut count = 0;
            let visited = tokenizer.for_each_token(review, scratch, |_| count += 1);
            visited.map(|()| count).unwrap_or(0)
        })
        .sum()
}

fn tokenizer_throughput(c: &mut Criterion) {
    let Ok(scratch) = tempfile::tempdir() else {
        eprintln!("skipped: no temporary folder");
        return;
    };
    let Some(root) = imdb_root(scratch.path()) else {
        eprintln!("skipped: IMDb not found (set ULMFIT_IMDB_DIR or provide ../shared)");
        return;
    };
    let reviews = load_reviews(&root);
    if reviews.is_empty() {
        eprintln!("skipped: no reviews under {}", root.display());
        return;
    }
    let tokenizer = Tokenizer::fastai();
    let tokens: usize = match tokenizer.tokenize_all(&reviews) {
        Ok(all) => all.iter().map(Vec::len).sum(),
        Err(error) => {
            eprintln!("skipped: tokenizer failed: {error}");
            return;
        }
    };
    eprintln!("{} reviews, {tokens} tokens", reviews.len());

    let mut group = c.benchmark_group("tokenizer");
    group.sample_size(10);
    group.throughput(Throughput::Elements(tokens as u64));
    group.bench_function("imdb_train_25k_parallel", |b| {
        b.iter(|| count_tokens(&tokenizer, &reviews))
    });
    group.finish();
}

criterion_group!(benches, tokenizer_throughput);
criterion_main!(benches);
