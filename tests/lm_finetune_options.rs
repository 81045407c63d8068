//! Tests of `ulmfit lm-finetune`'s vocabulary and sampling options.

use std::path::Path;
use std::process::Output;

use ulmfit::text::token_file::TokenFile;

fn run(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ulmfit"))
        .args(args)
        .arg("-q")
        .output()
        .unwrap()
}

fn ulmfit(args: &[&str]) -> Output {
    let output = run(args);
    assert!(
        output.status.success(),
        "ulmfit {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Writes `count` one-line documents with a vocabulary of about 60 words.
fn write_corpus(path: &Path, count: usize) {
    let mut text = String::new();
    for doc in 0..count {
        for word in 0..12 {
            text.push_str(&format!("w{} ", (doc * 7 + word * 3) % 60));
        }
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn tiny_language_model(dir: &Path) -> String {
    let corpus = dir.join("corpus.txt");
    write_corpus(&corpus, 200);
    let lm = dir.join("lm").to_str().unwrap().to_string();
    ulmfit(&[
        "pretrain",
        "--out",
        &lm,
        "--corpus",
        corpus.to_str().unwrap(),
        "--embedding-size",
        "8",
        "--hidden-size",
        "12",
        "--batch-size",
        "4",
        "--bptt",
        "8",
    ]);
    lm
}

#[test]
fn cap_and_sample_documents() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny_language_model(dir.path());
    let target = dir.path().join("target.txt");
    write_corpus(&target, 100);

    let tuned = dir.path().join("tuned");
    ulmfit(&[
        "lm-finetune",
        "--model",
        &lm,
        "--data",
        target.to_str().unwrap(),
        "--out",
        tuned.to_str().unwrap(),
        "--batch-size",
        "2",
        "--bptt",
        "8",
        "--max-vocab",
        "20",
        "--max-documents",
        "30",
        "--valid-fraction",
        "0.1",
    ]);

    let vocab = std::fs::read_to_string(tuned.join("vocab.txt")).unwrap();
    assert_eq!(vocab.lines().count(), 20);

    // 30 sampled documents: 3 held out for validation, 27 trained on.
    let train = TokenFile::open(tuned.join("train.tok"), None).unwrap();
    let valid = TokenFile::open(tuned.join("valid.tok"), None).unwrap();
    assert_eq!(train.n_documents(), 27);
    assert_eq!(valid.n_documents(), 3);
    assert_eq!(train.vocab_size(), 20);
}

#[test]
fn cap_below_specials_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.txt");
    write_corpus(&target, 10);
    let output = run(&[
        "lm-finetune",
        "--model",
        "missing",
        "--data",
        target.to_str().unwrap(),
        "--out",
        dir.path().join("out").to_str().unwrap(),
        "--max-vocab",
        "9",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--max-vocab 9"), "{stderr}");
}
