//! Python 3.11 character classes and case mapping, as used by `re` and `str` methods.
//!
//! Python's `\s` (and `str.isspace`/`str.strip`) and `\w` differ from Rust's
//! `char::is_whitespace` and `char::is_alphanumeric`: Python counts U+001C..U+001F as
//! whitespace but not U+180E, and its `\w` excludes combining marks that Rust's
//! `Alphabetic` property includes. The tables come from CPython 3.11.7 (Unicode 14.0.0).

use super::unicode_tables::{
    CASE_IGNORABLE_RANGES, LOWER_MAP, LOWER_RANGES, TITLE_RANGES, UPPER_RANGES, WORD_RANGES,
};

/// Bit flags for ASCII bytes: whitespace, word character, ASCII uppercase, ASCII lowercase.
const SPACE: u8 = 1;
const WORD: u8 = 2;
const UPPER: u8 = 4;
const LOWER: u8 = 8;

static ASCII_CLASS: [u8; 128] = build_ascii_classes();

const fn build_ascii_classes() -> [u8; 128] {
    let mut table = [0u8; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        let mut flags = 0;
        if matches!(c, 0x09..=0x0d | 0x1c..=0x20) {
            flags |= SPACE;
        }
        if c.is_ascii_alphanumeric() || c == b'_' {
            flags |= WORD;
        }
        if c.is_ascii_uppercase() {
            flags |= UPPER;
        }
        if c.is_ascii_lowercase() {
            flags |= LOWER;
        }
        table[b] = flags;
        b += 1;
    }
    table
}

fn in_ranges(table: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Returns whether Python's `\s` (equivalently `str.isspace`) matches `c`.
#[inline]
pub(crate) fn is_space(c: char) -> bool {
    match c as u32 {
        0..=0x7f => ASCII_CLASS[c as usize] & SPACE != 0,
        0x85 | 0xa0 | 0x1680 | 0x2000..=0x200a | 0x2028 | 0x2029 | 0x202f | 0x205f | 0x3000 => true,
        _ => false,
    }
}

/// Returns whether Python's `\w` matches `c` (`str.isalnum()` or `_`).
#[inline]
pub(crate) fn is_word(c: char) -> bool {
    if c.is_ascii() {
        ASCII_CLASS[c as usize] & WORD != 0
    } else {
        in_ranges(&WORD_RANGES, c)
    }
}

/// Returns whether `c` has Python's uppercase flag (`c.isupper()` for one character).
pub(crate) fn is_upper(c: char) -> bool {
    if c.is_ascii() {
        ASCII_CLASS[c as usize] & UPPER != 0
    } else {
        in_ranges(&UPPER_RANGES, c)
    }
}

/// Returns whether `c` has Python's lowercase flag (`c.islower()` for one character).
pub(crate) fn is_lower(c: char) -> bool {
    if c.is_ascii() {
        ASCII_CLASS[c as usize] & LOWER != 0
    } else {
        in_ranges(&LOWER_RANGES, c)
    }
}

fn is_title(c: char) -> bool {
    !c.is_ascii() && in_ranges(&TITLE_RANGES, c)
}

/// Python's `str.isupper()`: at least one cased character and no lowercase or titlecase one.
pub(crate) fn str_is_upper(s: &str) -> bool {
    let mut cased = false;
    for c in s.chars() {
        if is_lower(c) || is_title(c) {
            return false;
        }
        cased |= is_upper(c);
    }
    cased
}

/// Python's `str.islower()`: at least one cased character and no uppercase or titlecase one.
pub(crate) fn str_is_lower(s: &str) -> bool {
    let mut cased = false;
    for c in s.chars() {
        if is_upper(c) || is_title(c) {
            return false;
        }
        cased |= is_lower(c);
    }
    cased
}

/// Decodes the character that starts at byte `i` of `s`, which must be a char boundary.
#[inline]
pub(crate) fn char_at(s: &str, i: usize) -> char {
    let b = s.as_bytes()[i];
    if b < 0x80 {
        b as char
    } else {
        s[i..].chars().next().unwrap_or('\u{fffd}')
    }
}

/// Returns the byte length of the UTF-8 sequence whose first byte is `b`.
#[inline]
pub(crate) fn utf8_len(b: u8) -> usize {
    match b {
        0..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Returns whether the character starting at byte `i` is Python whitespace, and its length.
#[inline]
pub(crate) fn space_at(s: &str, i: usize) -> (bool, usize) {
    let b = s.as_bytes()[i];
    if b < 0x80 {
        (ASCII_CLASS[b as usize] & SPACE != 0, 1)
    } else {
        let c = char_at(s, i);
        (is_space(c), c.len_utf8())
    }
}

/// Returns whether the character starting at byte `i` is a Python word character, and its length.
#[inline]
pub(crate) fn word_at(s: &str, i: usize) -> (bool, usize) {
    let b = s.as_bytes()[i];
    if b < 0x80 {
        (ASCII_CLASS[b as usize] & WORD != 0, 1)
    } else {
        let c = char_at(s, i);
        (is_word(c), c.len_utf8())
    }
}

/// Returns the byte index after the run of Python whitespace that starts at `i`.
#[inline]
pub(crate) fn skip_space(s: &str, mut i: usize) -> usize {
    while i < s.len() {
        let (space, len) = space_at(s, i);
        if !space {
            break;
        }
        i += len;
    }
    i
}

/// Returns the byte index after the run of non-whitespace characters that starts at `i`.
#[inline]
pub(crate) fn skip_non_space(s: &str, mut i: usize) -> usize {
    let bytes = s.as_bytes();
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            if ASCII_CLASS[b as usize] & SPACE != 0 {
                break;
            }
            i += 1;
        } else {
            let c = char_at(s, i);
            if is_space(c) {
                break;
            }
            i += c.len_utf8();
        }
    }
    i
}

/// Returns the byte index after the run of Python word characters that starts at `i`.
#[inline]
pub(crate) fn skip_word(s: &str, mut i: usize) -> usize {
    while i < s.len() {
        let (word, len) = word_at(s, i);
        if !word {
            break;
        }
        i += len;
    }
    i
}

/// Appends Python's `s.lower()` to `out`, final sigma included.
pub(crate) fn push_lower(s: &str, out: &mut String) {
    if s.is_ascii() {
        let start = out.len();
        out.push_str(s);
        out[start..].make_ascii_lowercase();
        return;
    }
    out.reserve(s.len());
    for (i, c) in s.char_indices() {
        match c {
            'A'..='Z' => out.push(c.to_ascii_lowercase()),
            '\0'..='\u{7f}' => out.push(c),
            '\u{130}' => out.push_str("i\u{307}"),
            '\u{3a3}' => out.push(if is_final_sigma(s, i) { 'ς' } else { 'σ' }),
            _ => out.push(lower_char(c)),
        }
    }
}

fn lower_char(c: char) -> char {
    let code = c as u32;
    LOWER_MAP
        .binary_search_by_key(&code, |&(from, _)| from)
        .ok()
        .and_then(|index| char::from_u32(LOWER_MAP[index].1))
        .unwrap_or(c)
}

fn is_cased(c: char) -> bool {
    is_lower(c) || is_upper(c) || is_title(c)
}

fn is_case_ignorable(c: char) -> bool {
    match c {
        '\'' | '.' | ':' | '^' | '`' => true,
        '\0'..='\u{7f}' => false,
        _ => in_ranges(&CASE_IGNORABLE_RANGES, c),
    }
}

/// Returns whether the capital sigma at byte `i` of `s` lowercases to the final form:
/// after case-ignorable characters are skipped, a cased character precedes it and none
/// follows it (CPython's `handle_capital_sigma`).
fn is_final_sigma(s: &str, i: usize) -> bool {
    let before = s[..i].chars().rev().find(|&c| !is_case_ignorable(c));
    if !before.is_some_and(is_cased) {
        return false;
    }
    let after = s[i + 'Σ'.len_utf8()..]
        .chars()
        .find(|&c| !is_case_ignorable(c));
    !after.is_some_and(is_cased)
}

/// Returns the slice of `s` without leading and trailing Python whitespace (`str.strip()`).
pub(crate) fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}
