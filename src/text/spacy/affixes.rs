//! Hand-written matchers equivalent to spaCy 3.8's English prefix, suffix and infix
//! regular expressions (`spacy/lang/punctuation.py`, `spacy/lang/en/punctuation.py`).
//!
//! All positions are byte offsets into the string passed in, and every returned offset
//! lies on a UTF-8 character boundary.

use super::tables::{
    ALPHA, ASCII_FLAGS, DIGIT_SUFFIXES, DOT_LB, FLAG_RUNS, ICON, LOWER, PREFIX1, QUOTE, SUFFIX1,
    UPPER,
};

/// Returns the character class flags (see `tables.rs`) of `c`.
#[inline]
pub(super) fn flags(c: char) -> u16 {
    let cp = c as u32;
    if cp < 128 {
        return ASCII_FLAGS[cp as usize];
    }
    let index = FLAG_RUNS.partition_point(|&(start, _)| start <= cp);
    // FLAG_RUNS starts at U+0080, so `index` is at least 1 here.
    FLAG_RUNS[index.saturating_sub(1)].1
}

#[inline]
fn has(c: Option<char>, flag: u16) -> bool {
    c.is_some_and(|c| flags(c) & flag != 0)
}

#[inline]
fn is_ascii_digit(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_digit())
}

#[inline]
fn char_before(s: &str, i: usize) -> Option<char> {
    s[..i].chars().next_back()
}

#[inline]
fn char_at(s: &str, i: usize) -> Option<char> {
    s[i..].chars().next()
}

/// Returns the byte length of the run of '.' starting at `i`.
fn dot_run(s: &str, i: usize) -> usize {
    s.as_bytes()[i..].iter().take_while(|&&b| b == b'.').count()
}

/// Returns the byte length of the prefix spaCy splits off the start of `s` (0 for none).
///
/// spaCy's prefix regex is an alternation of anchored pieces and Python's `re` takes the
/// first piece that matches, so "……" yields "…" and a dot run yields the whole run.
pub(super) fn find_prefix(s: &str) -> usize {
    let Some(c) = s.chars().next() else {
        return 0;
    };
    if flags(c) & PREFIX1 != 0 {
        return c.len_utf8();
    }
    match c {
        '+' if !is_ascii_digit(char_at(s, 1)) => 1,
        '.' => {
            let run = dot_run(s, 0);
            if run >= 2 {
                run
            } else {
                0
            }
        }
        'U' if s.starts_with("US$") => 3,
        'C' if s.starts_with("C$") => 2,
        'A' if s.starts_with("A$") => 2,
        _ => 0,
    }
}

/// Returns the byte length of the suffix spaCy splits off the end of `s` (0 for none).
///
/// Python's `re.search` returns the leftmost start from which some piece of the suffix
/// alternation matches to the end, so this takes the longest of the candidate suffixes.
pub(super) fn find_suffix(s: &str) -> usize {
    let n = s.len();
    let Some(last) = s.chars().next_back() else {
        return 0;
    };
    let last_start = n - last.len_utf8();
    let mut best = n;
    let mut consider = |start: usize| {
        if start < best {
            best = start;
        }
    };

    if flags(last) & SUFFIX1 != 0 {
        consider(last_start);
    }
    for two in ["……", "'s", "'S", "’s", "’S"] {
        if s.ends_with(two) {
            consider(n - two.len());
        }
    }
    let trailing_dots = s
        .as_bytes()
        .iter()
        .rev()
        .take_while(|&&b| b == b'.')
        .count();
    if trailing_dots >= 2 {
        consider(n - trailing_dots);
    }
    let before_last = char_before(s, last_start);
    if last == '+' && is_ascii_digit(before_last) {
        consider(last_start);
    }
    if last == '.' {
        if let Some(prev) = before_last {
            let prev_start = last_start - prev.len_utf8();
            let prev2 = char_before(s, prev_start);
            if matches!(prev, 'F' | 'f' | 'C' | 'c' | 'K' | 'k') && prev2 == Some('°') {
                consider(last_start);
            }
            if flags(prev) & DOT_LB != 0 {
                consider(last_start);
            }
            if flags(prev) & UPPER != 0 && has(prev2, UPPER) {
                consider(last_start);
            }
        }
    }
    // Currency and unit suffixes follow an ASCII digit and contain none, so the only
    // candidate is everything after the last ASCII digit.
    if let Some(digit) = s.bytes().rposition(|b| b.is_ascii_digit()) {
        let tail = &s[digit + 1..];
        if !tail.is_empty() && DIGIT_SUFFIXES.contains(&tail) {
            consider(digit + 1);
        }
    }
    n - best
}

/// Returns the end of the hyphen infix starting at `i`, when one of "-", "–", "—", "--",
/// "---", "——" or "~" (tried in that order) is followed by a letter.
fn hyphen_end(s: &str, i: usize) -> Option<usize> {
    for hyphen in ["-", "–", "—", "--", "---", "——", "~"] {
        if s[i..].starts_with(hyphen) && has(char_at(s, i + hyphen.len()), ALPHA) {
            return Some(i + hyphen.len());
        }
    }
    None
}

/// Returns the end of the infix match starting at byte `i`, trying spaCy's English
/// infix pieces in their order.
fn infix_at(s: &str, i: usize, c: char) -> Option<usize> {
    let width = c.len_utf8();
    if c == '.' {
        let run = dot_run(s, i);
        if run >= 2 {
            return Some(i + run);
        }
    }
    if c == '…' || flags(c) & ICON != 0 {
        return Some(i + width);
    }

    let prev = char_before(s, i);
    let next = char_at(s, i + width);
    if matches!(c, '+' | '-' | '*' | '^')
        && is_ascii_digit(prev)
        && (is_ascii_digit(next) || next == Some('-'))
    {
        return Some(i + width);
    }
    if c == '.' && has(prev, LOWER | QUOTE) && has(next, UPPER | QUOTE) {
        return Some(i + width);
    }
    if c == ',' && has(prev, ALPHA) && has(next, ALPHA) {
        return Some(i + width);
    }

    let after_word = has(prev, ALPHA) || is_ascii_digit(prev);
    if after_word {
        if let Some(end) = hyphen_end(s, i) {
            return Some(end);
        }
        if matches!(c, ':' | '<' | '>' | '=' | '/') && has(next, ALPHA) {
            return Some(i + width);
        }
    }
    None
}

/// Appends the non-overlapping infix matches of `s`, left to right, as byte ranges.
pub(super) fn find_infixes(s: &str, matches: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while let Some(c) = char_at(s, i) {
        match infix_at(s, i, c) {
            Some(end) => {
                matches.push((i, end));
                i = end;
            }
            None => i += c.len_utf8(),
        }
    }
}
