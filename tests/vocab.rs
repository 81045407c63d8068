//! Tests of fastai-compatible vocabulary building, lookup and the on-disk format.

use std::fs;

use ulmfit::text::vocab::{
    escape_token, unescape_token, TokenCounter, Vocab, VocabError, VocabKind, VOCAB_JSON, VOCAB_TXT,
};
use ulmfit::text::SPECIAL_TOKENS;

/// Counts: the 5, bird/cat/dog 3 each (a tie), emu 2, zebra 1, and the special xxmaj 4.
fn sample_counter() -> TokenCounter {
    let mut counter = TokenCounter::new();
    counter.add(&["dog", "the", "cat", "xxmaj", "zebra"]);
    counter.add(&["the", "dog", "bird", "xxmaj", "emu"]);
    counter.add(&["cat", "the", "bird", "the", "dog"]);
    counter.add(&["emu", "xxmaj", "cat", "bird", "the", "xxmaj"]);
    counter
}

fn strings(tokens: &[&str]) -> Vec<String> {
    tokens.iter().map(|t| t.to_string()).collect()
}

fn specials_then(words: &[&str]) -> Vec<String> {
    SPECIAL_TOKENS
        .iter()
        .chain(words)
        .map(|t| t.to_string())
        .collect()
}

#[test]
fn counter_counts_tokens() {
    let counter = sample_counter();
    assert_eq!(counter.count("the"), 5);
    assert_eq!(counter.count("bird"), 3);
    assert_eq!(counter.count("xxmaj"), 4);
    assert_eq!(counter.count("absent"), 0);
    assert_eq!(counter.len(), 7);
}

#[test]
fn build_orders_by_count_then_bytes() {
    let vocab = sample_counter().build(3, 60_000);
    assert_eq!(
        vocab.tokens(),
        specials_then(&["the", "bird", "cat", "dog"]).as_slice()
    );
}

#[test]
fn build_does_not_duplicate_specials() {
    let vocab = sample_counter().build(1, 60_000);
    let maj_count = vocab.tokens().iter().filter(|t| *t == "xxmaj").count();
    assert_eq!(maj_count, 1);
    assert_eq!(vocab.id("xxmaj"), 8);
}

#[test]
fn build_applies_min_freq() {
    let vocab = sample_counter().build(2, 60_000);
    assert_eq!(
        vocab.tokens(),
        specials_then(&["the", "bird", "cat", "dog", "emu"]).as_slice()
    );
    let all = sample_counter().build(1, 60_000);
    assert_eq!(
        all.tokens(),
        specials_then(&["the", "bird", "cat", "dog", "emu", "zebra"]).as_slice()
    );
}

#[test]
fn build_max_vocab_counts_specials() {
    let vocab = sample_counter().build(1, 11);
    assert_eq!(vocab.len(), 11);
    assert_eq!(vocab.tokens(), specials_then(&["the", "bird"]).as_slice());
    assert_eq!(vocab.max_vocab(), 11);
    assert_eq!(vocab.min_freq(), 1);
}

#[test]
fn build_keeps_specials_below_nine() {
    let vocab = sample_counter().build(1, 4);
    assert_eq!(vocab.tokens(), specials_then(&[]).as_slice());
}

#[test]
fn build_ignores_insertion_and_merge_order() {
    let forward = sample_counter().build(1, 60_000);

    // The same tokens counted in reverse order, split over two merged counters.
    let mut all_tokens: Vec<&str> = Vec::new();
    for doc in [
        vec!["dog", "the", "cat", "xxmaj", "zebra"],
        vec!["the", "dog", "bird", "xxmaj", "emu"],
        vec!["cat", "the", "bird", "the", "dog"],
        vec!["emu", "xxmaj", "cat", "bird", "the", "xxmaj"],
    ] {
        all_tokens.extend(doc);
    }
    all_tokens.reverse();
    let (left, right) = all_tokens.split_at(7);
    let mut first = TokenCounter::new();
    first.add(right);
    let mut second = TokenCounter::new();
    second.add(left);
    first.merge(second);
    let reversed = first.build(1, 60_000);

    assert_eq!(forward, reversed);
    assert_eq!(forward.content_hash(), reversed.content_hash());
}

#[test]
fn merge_sums_counts() {
    let mut first = TokenCounter::new();
    first.add(&["a", "b"]);
    let mut second = TokenCounter::new();
    second.add(&["b", "c", "c", "d"]);
    first.merge(second);
    assert_eq!(first.count("a"), 1);
    assert_eq!(first.count("b"), 2);
    assert_eq!(first.count("c"), 2);
    assert_eq!(first.len(), 4);
}

#[test]
fn unknown_maps_to_xxunk() {
    let vocab = sample_counter().build(3, 60_000);
    assert_eq!(vocab.id("never-seen"), 0);
    assert_eq!(vocab.get("never-seen"), None);
    assert_eq!(vocab.token(0), Some("xxunk"));
    assert_eq!(vocab.encode(&["the", "emu", "dog"]), vec![9, 0, 12]);
}

#[test]
fn decode_maps_ids_to_tokens() {
    let vocab = sample_counter().build(3, 60_000);
    assert_eq!(
        vocab.decode(&[2, 9, 10]).unwrap(),
        vec!["xxbos", "the", "bird"]
    );
    assert_eq!(vocab.token(13), None);
    let error = vocab.decode(&[9, 13]).unwrap_err();
    assert!(matches!(
        error,
        VocabError::IdOutOfRange { id: 13, size: 13 }
    ));
}

#[test]
fn content_hash_is_stable() {
    let vocab = sample_counter().build(3, 60_000);
    // printf 'xxunk\nxxpad\nxxbos\nxxeos\nxxfld\nxxrep\nxxwrep\nxxup\nxxmaj\nthe\nbird\ncat\ndog\n' | sha256sum
    assert_eq!(
        vocab.content_hash(),
        "b7285b9718f0687ef601cf81886fa25560003c5b29d338f3b9c67286831b7648"
    );
}

#[test]
fn content_hash_covers_escaped_tokens() {
    let vocab = Vocab::from_tokens(specials_then(&["\n\n", "\\", "a\\b"])).unwrap();
    // printf 'xxunk\n...\nxxmaj\n\\n\\n\n\\\\\na\\\\b\n' | sha256sum
    assert_eq!(
        vocab.content_hash(),
        "1519543f7f8790672fd229906a2b8ab4d14d5ea07b7f5ca57cf9a18e85354a4d"
    );
}

#[test]
fn from_tokens_rejects_duplicates() {
    let error = Vocab::from_tokens(specials_then(&["a", "b", "a"])).unwrap_err();
    let message = error.to_string();
    assert!(matches!(
        error,
        VocabError::DuplicateToken { ref token, first: 9, second: 11 } if token == "a"
    ));
    assert!(message.contains("\"a\""), "{message}");
    assert!(message.contains("9 and 11"), "{message}");
}

#[test]
fn from_tokens_requires_xxunk_first() {
    let error = Vocab::from_tokens(strings(&["xxpad", "xxunk"])).unwrap_err();
    assert!(matches!(error, VocabError::UnknownNotFirst { ref found } if found == "xxpad"));
    let empty = Vocab::from_tokens(Vec::new()).unwrap_err();
    assert!(matches!(empty, VocabError::UnknownNotFirst { .. }));
}

#[test]
fn fastai_itos_drops_filler() {
    let mut itos = specials_then(&["the", "a"]);
    itos.extend(strings(&["xxfake", "xxfake", "xxfake", "xxfake", "xxfake"]));
    let (vocab, dropped) = Vocab::from_fastai_itos(itos).unwrap();
    assert_eq!(dropped, 5);
    assert_eq!(vocab.len(), 11);
    assert_eq!(vocab.id("a"), 10);
}

#[test]
fn escape_round_trips() {
    for token in ["plain", "\n\n", "\r\n", "\\", "\\n", "a\\b\nc", "", " \t "] {
        let escaped = escape_token(token);
        assert!(!escaped.contains('\n'), "{escaped:?}");
        assert!(!escaped.contains('\r'), "{escaped:?}");
        assert_eq!(unescape_token(&escaped).unwrap(), token);
    }
    assert_eq!(escape_token("a\\b\n"), "a\\\\b\\n");
    assert_eq!(unescape_token("x\\t").unwrap_err(), "\\t");
    assert_eq!(unescape_token("x\\").unwrap_err(), "\\");
}

#[test]
fn save_load_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = specials_then(&[
        "the", "\n\n", "\n", " ", "\\", "\\n", "a\r\nb", "ünï", "日本",
    ]);
    let vocab = Vocab::from_tokens(tokens).unwrap().with_limits(3, 60_000);
    let header = vocab.save(dir.path(), "fastai", VocabKind::Word).unwrap();

    assert_eq!(header.size, 18);
    assert_eq!(header.sha256, vocab.content_hash());

    let (loaded, loaded_header) = Vocab::load_with_header(dir.path()).unwrap();
    assert_eq!(loaded, vocab);
    assert_eq!(loaded_header, header);
    assert_eq!(loaded_header.rules, "fastai");
    assert_eq!(loaded_header.kind, VocabKind::Word);
    assert_eq!(loaded.min_freq(), 3);
    assert_eq!(loaded.max_vocab(), 60_000);
    assert_eq!(loaded.id("\n\n"), 10);
    assert_eq!(loaded.id("\\"), 13);

    let text = fs::read_to_string(dir.path().join(VOCAB_TXT)).unwrap();
    assert_eq!(text.lines().count(), 18);
    assert!(text.contains("\n\\\\\n\\\\n\n"), "{text:?}");
}

#[test]
fn header_json_has_fields() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = sample_counter().build(3, 60_000);
    vocab
        .save(dir.path(), "fastai", VocabKind::Unigram)
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join(VOCAB_JSON)).unwrap()).unwrap();
    assert_eq!(json["size"], 13);
    assert_eq!(json["min_freq"], 3);
    assert_eq!(json["max_vocab"], 60_000);
    assert_eq!(json["rules"], "fastai");
    assert_eq!(json["kind"], "unigram");
    assert_eq!(
        json["sha256"],
        "b7285b9718f0687ef601cf81886fa25560003c5b29d338f3b9c67286831b7648"
    );
}

#[test]
fn load_rejects_bad_escape() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = sample_counter().build(3, 60_000);
    vocab.save(dir.path(), "fastai", VocabKind::Word).unwrap();
    let path = dir.path().join(VOCAB_TXT);
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("cat\n", "c\\at\n");
    fs::write(&path, text).unwrap();

    let error = Vocab::load(dir.path()).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, VocabError::BadEscape { line: 12, .. }),
        "{message}"
    );
    assert!(
        message.contains(&format!("{}:12", path.display())),
        "{message}"
    );
}

#[test]
fn load_rejects_edited_token() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = sample_counter().build(3, 60_000);
    vocab.save(dir.path(), "fastai", VocabKind::Word).unwrap();
    let path = dir.path().join(VOCAB_TXT);
    let text = fs::read_to_string(&path).unwrap().replace("cat\n", "cow\n");
    fs::write(&path, text).unwrap();

    let error = Vocab::load(dir.path()).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(
            error,
            VocabError::Mismatch {
                field: "sha256",
                ..
            }
        ),
        "{message}"
    );
    assert!(message.contains(VOCAB_TXT), "{message}");
    assert!(message.contains(VOCAB_JSON), "{message}");
}

#[test]
fn load_rejects_missing_line() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = sample_counter().build(3, 60_000);
    vocab.save(dir.path(), "fastai", VocabKind::Word).unwrap();
    let path = dir.path().join(VOCAB_TXT);
    let text = fs::read_to_string(&path).unwrap().replace("dog\n", "");
    fs::write(&path, text).unwrap();

    let error = Vocab::load(dir.path()).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, VocabError::Mismatch { field: "size", ref found, ref expected, .. } if found == "12" && expected == "13"),
        "{message}"
    );
}

#[test]
fn load_rejects_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = sample_counter().build(3, 60_000);
    vocab.save(dir.path(), "fastai", VocabKind::Word).unwrap();
    let path = dir.path().join(VOCAB_TXT);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, &text[..text.len() - 2]).unwrap();

    let error = Vocab::load(dir.path()).unwrap_err();
    assert!(matches!(error, VocabError::Malformed { .. }), "{error}");
    assert!(error.to_string().contains(VOCAB_TXT), "{error}");
}

#[test]
fn load_rejects_bad_header() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = sample_counter().build(3, 60_000);
    vocab.save(dir.path(), "fastai", VocabKind::Word).unwrap();
    let path = dir.path().join(VOCAB_JSON);
    let json = fs::read_to_string(&path)
        .unwrap()
        .replace("\"word\"", "\"words\"");
    fs::write(&path, json).unwrap();

    let error = Vocab::load(dir.path()).unwrap_err();
    assert!(matches!(error, VocabError::Header { .. }), "{error}");
    assert!(error.to_string().contains(VOCAB_JSON), "{error}");
}

#[test]
fn load_reports_missing_folder() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent");
    let error = Vocab::load(&missing).unwrap_err();
    assert!(
        matches!(error, VocabError::Io { action: "read", .. }),
        "{error}"
    );
    assert!(error.to_string().contains("absent"), "{error}");
}
