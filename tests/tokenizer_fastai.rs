//! The tokenizer against fastai 2.8.12's own output (spaCy 3.8 blank English and
//! fastai's default rules), through the library and through `ulmfit tokenize --jsonl`.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde::Deserialize;
use ulmfit::text::tokenizer::Tokenizer;

#[derive(Deserialize)]
struct Review {
    id: String,
    text: String,
    tokens: Vec<String>,
}

fn load_reviews(test: &str) -> Option<Vec<Review>> {
    let shared = common::shared_dir(test)?;
    let path = shared.join("fixtures/fastai-tokenizer/imdb-train-500.jsonl");
    let text = std::fs::read_to_string(&path).expect("the IMDb fixture is readable");
    let reviews = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("each fixture line is a review"))
        .collect();
    Some(reviews)
}

/// Returns the share of documents that match exactly and of reference tokens matched
/// position by position.
fn agreement(reviews: &[Review], produced: &[Vec<String>]) -> (f64, f64, Vec<String>) {
    let mut exact = 0usize;
    let mut matched = 0usize;
    let mut total = 0usize;
    let mut mismatches = Vec::new();
    for (review, tokens) in reviews.iter().zip(produced) {
        if &review.tokens == tokens {
            exact += 1;
        } else {
            mismatches.push(review.id.clone());
        }
        total += review.tokens.len().max(tokens.len());
        matched += review
            .tokens
            .iter()
            .zip(tokens)
            .filter(|(expected, actual)| expected == actual)
            .count();
    }
    (
        exact as f64 / reviews.len() as f64,
        matched as f64 / total as f64,
        mismatches,
    )
}

#[test]
fn edge_cases_match_fastai() {
    let Some(shared) = common::shared_dir("edge_cases_match_fastai") else {
        return;
    };
    let path = shared.join("fixtures/fastai-tokenizer/edge-cases.json");
    let cases: BTreeMap<String, Vec<String>> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("readable"))
            .expect("edge cases are a JSON object");
    assert_eq!(cases.len(), 6);
    let tokenizer = Tokenizer::fastai();
    for (input, expected) in &cases {
        let tokens = tokenizer.tokenize(input).expect("word tokenizer");
        assert_eq!(&tokens, expected, "input {input:?}");
    }
}

#[test]
fn imdb_500_match_fastai() {
    let Some(reviews) = load_reviews("imdb_500_match_fastai") else {
        return;
    };
    assert_eq!(reviews.len(), 500);
    let texts: Vec<&str> = reviews.iter().map(|r| r.text.as_str()).collect();
    let produced = Tokenizer::fastai()
        .tokenize_all(&texts)
        .expect("word tokenizer");
    let (documents, tokens, mismatches) = agreement(&reviews, &produced);
    eprintln!(
        "documents identical: {:.2}%, tokens agreeing: {:.4}%, mismatched: {mismatches:?}",
        documents * 100.0,
        tokens * 100.0
    );
    assert!(documents >= 0.99, "document match rate {documents}");
    assert!(tokens >= 0.999, "token agreement {tokens}");
}

#[test]
fn cli_jsonl_matches_fastai() {
    let Some(reviews) = load_reviews("cli_jsonl_matches_fastai") else {
        return;
    };
    let mut input = Vec::new();
    for review in &reviews {
        let line = serde_json::json!({ "id": review.id, "text": review.text });
        writeln!(input, "{line}").expect("writing to memory");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_ulmfit"))
        .args(["tokenize", "--jsonl"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("the binary runs");
    writer
        .join()
        .expect("writer thread")
        .expect("stdin accepts the input");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let produced: Vec<Vec<String>> = String::from_utf8(output.stdout)
        .expect("output is UTF-8")
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            serde_json::from_value(value["tokens"].clone()).expect("a token list")
        })
        .collect();
    assert_eq!(produced.len(), reviews.len());
    let (documents, _, _) = agreement(&reviews, &produced);
    assert!(documents >= 0.99, "document match rate {documents}");
}
