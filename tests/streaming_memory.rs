//! Tokenizing and numericalizing stream: a corpus of about 100 MB goes through
//! `ulmfit vocab build` and `ulmfit numericalize` with a peak RSS far below its size.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

/// Size of the generated corpus.
const CORPUS_BYTES: u64 = 100 * 1024 * 1024;
/// Peak resident memory allowed for each command.
const PEAK_RSS_LIMIT_MB: f64 = 100.0;

/// Writes about `bytes` of English-like lines made of a few thousand distinct words, with
/// capitals, punctuation and repetitions that exercise every fastai rule.
fn write_corpus(path: &Path, bytes: u64) {
    let mut out = BufWriter::new(File::create(path).expect("create corpus"));
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "qu"];
    let mut written = 0u64;
    let mut line = String::new();
    while written < bytes {
        line.clear();
        for word in 0..(40 + next() % 200) {
            let r = next();
            let mut w: String = (0..1 + r % 3)
                .map(|i| syllables[((r >> (8 * i + 4)) % 10) as usize])
                .collect();
            match r % 23 {
                0 => w = w.to_uppercase(),
                1 | 2 => w[..1].make_ascii_uppercase(),
                3 => w.push_str(". "),
                4 => w.push_str("!!!! "),
                5 => w.push_str("n't"),
                _ => {}
            }
            if word > 0 {
                line.push(' ');
            }
            line.push_str(&w);
        }
        line.push('\n');
        out.write_all(line.as_bytes()).expect("write corpus");
        written += line.len() as u64;
    }
    out.flush().expect("flush corpus");
}

/// Runs the binary with `args` and returns its peak resident set size in MB.
// The child is reaped by `wait4`, which also returns its resource usage.
#[allow(clippy::zombie_processes)]
fn run_measuring_rss(args: &[&str]) -> f64 {
    let child = Command::new(env!("CARGO_BIN_EXE_ulmfit"))
        .args(args)
        .spawn()
        .expect("the binary starts");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: `rusage` is plain data, and wait4 fills it for the child we started.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    let exit = std::process::ExitStatus::from_raw(status);
    assert!(exit.success(), "ulmfit {args:?} failed: {exit}");
    // Linux reports ru_maxrss in kilobytes.
    usage.ru_maxrss as f64 / 1024.0
}

#[test]
fn hundred_mb_corpus_streams() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let corpus = dir.path().join("corpus.txt");
    write_corpus(&corpus, CORPUS_BYTES);
    let corpus = corpus.to_str().expect("UTF-8 path");
    let vocab = dir.path().join("vocab");
    let vocab = vocab.to_str().expect("UTF-8 path");
    let tokens = dir.path().join("corpus.tok");
    let tokens_path = tokens.to_str().expect("UTF-8 path");

    let vocab_rss =
        run_measuring_rss(&["-q", "vocab", "build", "--corpus", corpus, "--out", vocab]);
    let numericalize_rss = run_measuring_rss(&[
        "-q",
        "numericalize",
        "--vocab",
        vocab,
        "--corpus",
        corpus,
        "--out",
        tokens_path,
    ]);
    eprintln!("peak RSS: vocab build {vocab_rss:.1} MB, numericalize {numericalize_rss:.1} MB");
    assert!(
        vocab_rss < PEAK_RSS_LIMIT_MB,
        "vocab build peak RSS {vocab_rss:.1} MB"
    );
    assert!(
        numericalize_rss < PEAK_RSS_LIMIT_MB,
        "numericalize peak RSS {numericalize_rss:.1} MB"
    );

    let file = ulmfit::text::token_file::TokenFile::open(&tokens, None).expect("token file");
    assert!(file.n_tokens() > 10_000_000, "tokens {}", file.n_tokens());
}
