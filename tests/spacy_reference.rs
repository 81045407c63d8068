//! Compares `EnglishTokenizer` with token lists produced by spaCy 3.8.
//!
//! The reference is a JSON-lines file of `{"input": text, "tokens": [token, ...]}` records
//! written by `spacy.blank("en").tokenizer`; set `SPACY_REFERENCE` to its path (several
//! paths may be separated by ':'). Without it the tests print a skip line and pass.

use std::ops::Range;
use std::time::Instant;

use ulmfit::text::spacy::EnglishTokenizer;

#[derive(serde::Deserialize)]
struct Record {
    input: String,
    tokens: Vec<String>,
}

fn load_reference() -> Option<Vec<Record>> {
    let Ok(paths) = std::env::var("SPACY_REFERENCE") else {
        println!("skipping: SPACY_REFERENCE is not set");
        return None;
    };
    let mut records = Vec::new();
    for path in paths.split(':') {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("failed to read the reference file {path}: {e}; set SPACY_REFERENCE to existing JSON-lines files"));
        for (number, line) in text.lines().enumerate() {
            let record: Record = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{path}, line {}: invalid record: {e}", number + 1));
            records.push(record);
        }
    }
    Some(records)
}

/// Counts the tokens that two token lists share at the same position after aligning
/// them by byte offset.
fn aligned_matches(expected: &[String], actual: &[&str]) -> usize {
    let positions = |tokens: &mut dyn Iterator<Item = usize>| -> Vec<(usize, usize)> {
        let mut start = 0;
        tokens
            .map(|len| {
                let span = (start, start + len);
                start += len;
                span
            })
            .collect()
    };
    let expected = positions(&mut expected.iter().map(|t| t.len()));
    let actual: std::collections::HashSet<(usize, usize)> =
        positions(&mut actual.iter().map(|t| t.len()))
            .into_iter()
            .collect();
    expected.iter().filter(|span| actual.contains(span)).count()
}

#[test]
fn reference_documents_match() {
    let Some(records) = load_reference() else {
        return;
    };
    let tokenizer = EnglishTokenizer::new();
    let mut spans: Vec<Range<usize>> = Vec::new();
    let mut matching_documents = 0;
    let mut expected_tokens = 0;
    let mut matching_tokens = 0;
    let mut shown = 0;
    for record in &records {
        spans.clear();
        tokenizer.split(&record.input, &mut spans);
        let actual: Vec<&str> = spans.iter().map(|s| &record.input[s.clone()]).collect();
        expected_tokens += record.tokens.len();
        if actual == record.tokens {
            matching_documents += 1;
            matching_tokens += record.tokens.len();
            continue;
        }
        matching_tokens += aligned_matches(&record.tokens, &actual);
        if shown < 20 {
            shown += 1;
            let first_difference = actual
                .iter()
                .zip(&record.tokens)
                .position(|(a, e)| a != e)
                .unwrap_or(actual.len().min(record.tokens.len()));
            let low = first_difference.saturating_sub(3);
            println!(
                "mismatch in {:?}\n  expected {:?}\n  actual   {:?}",
                record.input.chars().take(80).collect::<String>(),
                &record.tokens[low..(first_difference + 4).min(record.tokens.len())],
                &actual[low..(first_difference + 4).min(actual.len())],
            );
        }
    }
    println!(
        "documents: {matching_documents} of {} match ({:.4}%); tokens: {matching_tokens} of \
         {expected_tokens} aligned ({:.5}%)",
        records.len(),
        100.0 * matching_documents as f64 / records.len() as f64,
        100.0 * matching_tokens as f64 / expected_tokens as f64,
    );
    assert_eq!(matching_documents, records.len());
}

/// Prints the single-thread throughput of `split`; run with `--release --ignored`.
#[test]
#[ignore]
fn reference_throughput() {
    let Some(records) = load_reference() else {
        return;
    };
    let tokenizer = EnglishTokenizer::new();
    let mut spans: Vec<Range<usize>> = Vec::with_capacity(4096);
    let mut best = f64::INFINITY;
    let mut tokens = 0;
    for _ in 0..3 {
        tokens = 0;
        let started = Instant::now();
        for record in &records {
            spans.clear();
            tokenizer.split(&record.input, &mut spans);
            tokens += spans.len();
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    println!(
        "{tokens} tokens in {best:.3} s: {:.2} M tokens/s, {:.1} ns per token",
        tokens as f64 / best / 1e6,
        best * 1e9 / tokens as f64
    );
}
