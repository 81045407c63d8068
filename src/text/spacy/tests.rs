//! Expected token lists recorded from spaCy 3.8.18's `spacy.blank("en").tokenizer`.

use std::ops::Range;

use super::EnglishTokenizer;

fn tokens(text: &str) -> Vec<String> {
    let mut spans = Vec::new();
    EnglishTokenizer::new().split(text, &mut spans);
    spans.iter().map(|s| text[s.clone()].to_string()).collect()
}

fn check(text: &str, expected: &[&str]) {
    assert_eq!(tokens(text), expected, "tokens of {text:?}");
}

#[test]
fn contractions_and_markers() {
    check(
        "xxbos xxmaj i don't like it.",
        &["xxbos", "xxmaj", "i", "do", "n't", "like", "it", "."],
    );
    check(
        "xxrep 3 . xxrep 4 !",
        &["xxrep", "3", ".", "xxrep", "4", "!"],
    );
    check(
        "(don't) \"quoted\" [x]",
        &["(", "do", "n't", ")", "\"", "quoted", "\"", "[", "x", "]"],
    );
}

#[test]
fn abbreviations() {
    check(
        "it's U.S.A. at 5 a.m.",
        &["it", "'s", "U.S.A.", "at", "5", "a.m."],
    );
    check(
        "C++ e.g. vs. Mr. Smith",
        &["C++", "e.g.", "vs.", "Mr.", "Smith"],
    );
    check(
        "A.B. ABC. abc. 20°C. 100%.",
        &[
            "A.B.", "ABC", ".", "abc", ".", "20", "°", "C", ".", "100", "%", ".",
        ],
    );
}

#[test]
fn urls_and_emails() {
    check(
        "visit http://www.example.com/a?b=c. now",
        &["visit", "http://www.example.com/a?b=c", ".", "now"],
    );
    check("mail me@example.org!", &["mail", "me@example.org", "!"]);
    check(
        "8.8.8.8 10.0.0.1 ftp://x.net:21/y",
        &["8.8.8.8", "10.0.0.1", "ftp://x.net:21/y"],
    );
}

#[test]
fn numbers_units_and_currency() {
    check(
        "rated 10/10 for $5.00 and 5km",
        &["rated", "10/10", "for", "$", "5.00", "and", "5", "km"],
    );
    check(
        "3.5GB £3 US$5 2^3",
        &["3.5", "GB", "£", "3", "US$", "5", "2", "^", "3"],
    );
    check(
        "'90s o'clock rock'n'roll",
        &["'", "90s", "o'clock", "rock'n'roll"],
    );
}

#[test]
fn infixes() {
    check(
        "well-known a--b 1-2 x—y",
        &[
            "well", "-", "known", "a", "--", "b", "1", "-", "2", "x", "—", "y",
        ],
    );
    check(
        "a,b a.B a:b 5:b a/b",
        &[
            "a", ",", "b", "a.", "B", "a", ":", "b", "5", ":", "b", "a", "/", "b",
        ],
    );
    check("wait... what?! …", &["wait", "...", "what", "?", "!", "…"]);
}

#[test]
fn emoticons_and_matcher_pass() {
    check("hi:) x'' :))", &["hi", ":)", "x", "''", ":))"]);
    // The match of "' '" across the space blocks the "''" inside the second chunk.
    check("back'' ''return", &["back", "''", "'", "'", "return"]);
}

#[test]
fn whitespace_runs() {
    check(
        "a\n\n b\tc \n d  e ",
        &["a", "\n\n ", "b", "\t", "c", "\n ", "d", " ", "e"],
    );
    check(
        "a\u{a0}b a\u{3000}b",
        &["a", "\u{a0}", "b", "a", "\u{3000}", "b"],
    );
    check("  a", &["  ", "a"]);
    check("", &[]);
}

#[test]
fn cjk_and_thai() {
    check("日本語。中文，标点！", &["日本語。中文，标点", "！"]);
    check("สวัสดีครับ ไทย", &["สวัสดีครับ", "ไทย"]);
}

#[test]
fn emoji_sequences() {
    check(
        "👨\u{200d}👩\u{200d}👧 👍🏽 🇺🇸 ❤️",
        &[
            "👨", "\u{200d}", "👩", "\u{200d}", "👧", "👍", "🏽", "🇺", "🇸", "❤", "\u{fe0f}",
        ],
    );
}

#[test]
fn combining_marks_and_mojibake() {
    check("e\u{301} \u{301} café", &["e\u{301}", "\u{301}", "café"]);
    check(
        "Ã©tÃ© â€œhiâ€\u{9d}",
        &["Ã", "©", "tÃ", "©", "â€œhiâ€\u{9d}"],
    );
}

#[test]
fn control_characters() {
    check(
        "\u{0}\u{1}a\u{7f} \u{1b}[0m",
        &["\u{0}\u{1}a\u{7f}", "\u{1b}[0", "m"],
    );
}

/// Checks that spans are ordered, disjoint, on character boundaries, and leave out only
/// whitespace.
fn assert_valid_spans(text: &str, spans: &[Range<usize>]) {
    let mut previous_end = 0;
    for span in spans {
        assert!(span.start < span.end, "empty span {span:?} in {text:?}");
        assert!(
            span.start >= previous_end,
            "overlap at {span:?} in {text:?}"
        );
        assert!(text.is_char_boundary(span.start), "{span:?} in {text:?}");
        assert!(text.is_char_boundary(span.end), "{span:?} in {text:?}");
        assert!(
            text[previous_end..span.start]
                .chars()
                .all(char::is_whitespace),
            "non-space text dropped before {span:?} in {text:?}"
        );
        previous_end = span.end;
    }
    assert!(text[previous_end..].chars().all(char::is_whitespace));
}

#[test]
fn spans_valid_on_mixed_strings() {
    let pieces = [
        "a", "Z", "1", ".", "..", "'", "’", "-", "—", "…", ":", ")", "(", "@", "/", "#", "$", "%",
        "+", "^", "é", "\u{301}", "日", "ไ", "😀", "\u{200d}", "🏽", "\u{a0}", " ", "\n",
        "\u{3000}", "\u{0}", "\u{85}", "°", "²", "www.", "com", "://", "n't", "'s",
    ];
    let tokenizer = EnglishTokenizer::new();
    let mut spans = Vec::new();
    // A linear congruential generator gives a fixed, varied sequence of strings.
    let mut state: u64 = 12345;
    for _ in 0..20_000 {
        let mut text = String::new();
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let length = (state >> 59) as usize;
        for _ in 0..length {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(pieces[(state >> 33) as usize % pieces.len()]);
        }
        spans.clear();
        tokenizer.split(&text, &mut spans);
        assert_valid_spans(&text, &spans);
    }
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<EnglishTokenizer>();
}
