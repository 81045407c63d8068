//! The whole tokenizer on hard Unicode input: no panic, never a split inside a
//! character, and the tokens fastai 2.8.12 produces. `data/unicode-cases.json` holds
//! strings written for this test and the tokens fastai's `TokenizeWithRules` gave for
//! them (spaCy 3.8.18, fastai's default rules).

use std::collections::BTreeMap;

use serde::Deserialize;
use ulmfit::text::tokenizer::Tokenizer;

#[derive(Deserialize)]
struct Case {
    text: String,
    tokens: Vec<String>,
}

fn cases() -> BTreeMap<String, Case> {
    serde_json::from_str(include_str!("data/unicode-cases.json")).expect("valid case file")
}

#[test]
fn unicode_cases_match_fastai() {
    let tokenizer = Tokenizer::fastai();
    let cases = cases();
    assert_eq!(cases.len(), 10);
    for (name, case) in &cases {
        let tokens = tokenizer.tokenize(&case.text).expect("word tokenizer");
        assert_eq!(tokens, case.tokens, "case {name}");
    }
}

#[test]
fn tokens_are_whole_characters_of_input() {
    let tokenizer = Tokenizer::word(ulmfit::text::rules::RuleSet::none());
    for (name, case) in &cases() {
        let tokens = tokenizer.tokenize(&case.text).expect("word tokenizer");
        // Without rules every token is a slice of the input, so together they are the
        // input without its whitespace.
        let joined: String = tokens
            .concat()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let expected: String = case.text.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(joined, expected, "case {name}");
    }
}

#[test]
fn random_bytes_never_panic() {
    let tokenizer = Tokenizer::fastai();
    let mut rng = ulmfit::rng::Rng::seed(11);
    let pieces = [
        "a", "A", "É", "é", "\u{301}", "😀", "\u{200d}", "🇫", "日", "ภ", "\u{a0}", " ", "\n", "\t",
        "\u{0}", "\u{1f}", "!", "...", "&amp;", "<br />", "'", "n't", "http://", "@", "#", "/",
        "\\", "Ã", "\u{fffd}", "xxbos", "10", ".", "-",
    ];
    for _ in 0..2000 {
        let length = rng.below(40) as usize;
        let text: String = (0..length)
            .map(|_| pieces[rng.below(pieces.len() as u64) as usize])
            .collect();
        let tokens = tokenizer.tokenize(&text).expect("word tokenizer");
        assert_eq!(
            tokens.first().map(String::as_str),
            Some("xxbos"),
            "{text:?}"
        );
        assert!(tokens.iter().all(|t| !t.is_empty()), "{text:?}");
    }
}
