//! A backtracking-free equivalent of spaCy 3.8's `URL_MATCH` regex
//! (`spacy/lang/tokenizer_exceptions.py`), applied to strings without whitespace.
//!
//! The regex is `^scheme? userinfo? (ip | domain) port? path?$`. Python's `re` backtracks
//! through every way to split the string into these parts, so this module accepts a
//! string when any split works.

use super::affixes::flags;
use super::tables::{DIGIT, LOWER, WORD};

fn char_at(s: &str, i: usize) -> Option<char> {
    s[i..].chars().next()
}

fn is_digit(c: char) -> bool {
    flags(c) & DIGIT != 0
}

/// `[A-Za-z0-9\u00a1-\uffff]`: the characters allowed at both ends of a host label.
fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || ('\u{a1}'..='\u{ffff}').contains(&c)
}

/// Returns whether `s` is a URL or e-mail address by spaCy's `URL_MATCH`.
pub(super) fn url_match(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    if let Some(colon) = s.find("://") {
        let scheme = &s[..colon];
        let valid = scheme.chars().count() >= 2
            && scheme
                .chars()
                .all(|c| flags(c) & WORD != 0 || matches!(c, '+' | '-' | '.'));
        if valid && matches_after_scheme(s, colon + 3) {
            return true;
        }
    }
    matches_after_scheme(s, 0)
}

/// Tries the host with no user info, then after each '@' that has text before it.
fn matches_after_scheme(s: &str, start: usize) -> bool {
    if matches_host(s, start) {
        return true;
    }
    s[start..]
        .match_indices('@')
        .any(|(at, _)| at > 0 && matches_host(s, start + at + 1))
}

fn matches_host(s: &str, h: usize) -> bool {
    matches_ip(s, h) || matches_domain(s, h)
}

/// Checks `(?::\d{2,5})?(?:[/?#]\S*)?$` from byte `e`.
fn matches_tail(s: &str, e: usize) -> bool {
    match char_at(s, e) {
        None => true,
        Some('/' | '?' | '#') => true,
        Some(':') => {
            let mut end = e + 1;
            let mut digits = 0;
            while let Some(c) = char_at(s, end) {
                if !is_digit(c) {
                    break;
                }
                digits += 1;
                end += c.len_utf8();
            }
            (2..=5).contains(&digits) && matches!(char_at(s, end), None | Some('/' | '?' | '#'))
        }
        Some(_) => false,
    }
}

/// Checks `(?:(?:X[X_-]{0,62})?X\.)+[ALPHA_LOWER]{2,63}` followed by the tail.
fn matches_domain(s: &str, h: usize) -> bool {
    let mut pos = h;
    loop {
        let Some(dot) = s[pos..].find('.').map(|d| pos + d) else {
            return false;
        };
        if !is_label(&s[pos..dot]) {
            return false;
        }
        let tld_start = dot + 1;
        let mut end = tld_start;
        let mut count = 0;
        while let Some(c) = char_at(s, end) {
            if flags(c) & LOWER == 0 {
                break;
            }
            count += 1;
            end += c.len_utf8();
        }
        if (2..=63).contains(&count) && matches_tail(s, end) {
            return true;
        }
        pos = tld_start;
    }
}

fn is_label(label: &str) -> bool {
    let mut chars = label.chars();
    let (Some(first), Some(last)) = (chars.next(), label.chars().next_back()) else {
        return false;
    };
    let count = label.chars().count();
    count <= 64
        && is_host_char(first)
        && is_host_char(last)
        && label
            .chars()
            .all(|c| is_host_char(c) || c == '_' || c == '-')
}

/// Matches `pattern` at `pos` and returns the end. In `pattern`, 'd' is `\d` (any Unicode
/// decimal digit), 'n' is `[1-9]` and any other byte is itself.
fn match_seq(s: &str, pos: usize, pattern: &[u8]) -> Option<usize> {
    let mut i = pos;
    for &p in pattern {
        let c = char_at(s, i)?;
        let ok = match p {
            b'd' => is_digit(c),
            b'n' => ('1'..='9').contains(&c),
            lit => c == lit as char,
        };
        if !ok {
            return None;
        }
        i += c.len_utf8();
    }
    Some(i)
}

// Octet alternatives in `match_seq` notation, with "[01]", "[0-3]", "[0-4]" and "[0-5]"
// expanded into literal alternatives.
const FIRST_OCTET: &[&[u8]] = &[
    b"n", b"nd", b"1dd", b"20d", b"21d", b"220", b"221", b"222", b"223",
];
const MIDDLE_OCTET: &[&[u8]] = &[
    b"d", b"dd", b"1d", b"1dd", b"20d", b"21d", b"22d", b"23d", b"24d", b"250", b"251", b"252",
    b"253", b"254", b"255",
];
const LAST_OCTET: &[&[u8]] = &[
    b"n", b"nd", b"1dd", b"20d", b"21d", b"22d", b"23d", b"24d", b"250", b"251", b"252", b"253",
    b"254",
];

/// Checks the dotted-quad branch of the host, with its private-network exclusions.
fn matches_ip(s: &str, h: usize) -> bool {
    if excluded_ip(&s[h..]) {
        return false;
    }
    FIRST_OCTET.iter().any(|first| {
        match_seq(s, h, first).is_some_and(|a| {
            dotted_octets(s, a, 2, &|s: &str, e: usize| {
                LAST_OCTET.iter().any(|last| {
                    s[e..].starts_with('.')
                        && match_seq(s, e + 1, last).is_some_and(|end| matches_tail(s, end))
                })
            })
        })
    })
}

/// Matches `count` groups of `\.(?:1?\d{1,2}|2[0-4]\d|25[0-5])` from `pos`, then `rest`.
fn dotted_octets(s: &str, pos: usize, count: usize, rest: &dyn Fn(&str, usize) -> bool) -> bool {
    if count == 0 {
        return rest(s, pos);
    }
    if !s[pos..].starts_with('.') {
        return false;
    }
    MIDDLE_OCTET.iter().any(|octet| {
        match_seq(s, pos + 1, octet).is_some_and(|e| dotted_octets(s, e, count - 1, rest))
    })
}

/// Returns whether `(\.\d{1,3}){count}` matches a prefix of `s`.
fn short_groups(s: &str, count: usize) -> bool {
    if count == 0 {
        return true;
    }
    let Some(rest) = s.strip_prefix('.') else {
        return false;
    };
    let mut offset = 0;
    for _ in 0..3 {
        let Some(c) = char_at(rest, offset) else {
            return false;
        };
        if !is_digit(c) {
            return false;
        }
        offset += c.len_utf8();
        if short_groups(&rest[offset..], count - 1) {
            return true;
        }
    }
    false
}

/// Applies the negative lookaheads for the 10/8, 127/8, 169.254/16, 192.168/16 and
/// 172.16/12 networks.
fn excluded_ip(s: &str) -> bool {
    for head in ["10", "127"] {
        if s.strip_prefix(head).is_some_and(|r| short_groups(r, 3)) {
            return true;
        }
    }
    for head in ["169.254", "192.168"] {
        if s.strip_prefix(head).is_some_and(|r| short_groups(r, 2)) {
            return true;
        }
    }
    if let Some(r) = s.strip_prefix("172.") {
        let second = [("1", b"6789".as_slice()), ("2", b"d"), ("3", b"01")];
        for (lead, options) in second {
            let Some(r2) = r.strip_prefix(lead) else {
                continue;
            };
            let Some(c) = r2.chars().next() else {
                continue;
            };
            let ok = if options == b"d" {
                is_digit(c)
            } else {
                c.is_ascii() && options.contains(&(c as u8))
            };
            if ok && short_groups(&r2[c.len_utf8()..], 2) {
                return true;
            }
        }
    }
    false
}
