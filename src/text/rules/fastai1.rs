//! Rules of fastai 1.0 (`fastai/text/transform.py` in its late 1.0.x form, with `xxeos`
//! and the `<unk>` replacement) that differ from fastai 2.x.
//!
//! NOTE: these follow the late 1.0.x sources of `transform.py` and `data.py` in the
//! fastai repository history. The exact release is not pinned, and earlier 1.0.x
//! releases lack the `<unk>` and ` @,@ ` replacements of `fix_html`.

use std::fmt::Write;

use super::pychar::{is_upper, push_lower, skip_word, str_is_lower, str_is_upper};
use crate::text::{MAJ, UP, WREP};

/// Replaces a word with its trailing non-word characters repeated at least four times by
/// ` xxwrep N word... `: the pattern `(\b\w+\W+)(\1{3,})` of fastai 1.0.
///
/// The repeated unit is the whole word plus the whole run of non-word characters after
/// it: a shorter `\W+` would leave the next copy starting on a non-word character. `N`
/// is fastai's `len(cc.split()) + 1`, which counts whitespace-separated pieces of the
/// repeats, so it undercounts units that contain no whitespace (`a,a,a,a,` gives 2).
pub(super) fn replace_wrep(s: &str, out: &mut String) -> bool {
    let bytes = s.as_bytes();
    let mut changed = false;
    let mut copied = 0;
    let mut i = 0;
    // Whether the character before `i` is a word character, for `\b`.
    let mut after_word = false;
    while i < bytes.len() {
        let (is_word_char, len) = super::pychar::word_at(s, i);
        if !is_word_char {
            after_word = false;
            i += len;
            continue;
        }
        if after_word {
            i += len;
            continue;
        }
        let word_end = skip_word(s, i);
        let unit_end = skip_non_word(s, word_end);
        if unit_end == word_end || unit_end == bytes.len() {
            i = word_end;
            after_word = true;
            continue;
        }
        let unit = &bytes[i..unit_end];
        let mut end = unit_end;
        let mut repeats = 0;
        while bytes[end..].starts_with(unit) {
            end += unit.len();
            repeats += 1;
        }
        if repeats < 3 {
            i = word_end;
            after_word = true;
            continue;
        }
        if !changed {
            out.clear();
            changed = true;
        }
        out.push_str(&s[copied..i]);
        let pieces = s[unit_end..end]
            .split(super::pychar::is_space)
            .filter(|piece| !piece.is_empty())
            .count();
        let _ = write!(out, " {WREP} {} {} ", pieces + 1, &s[i..unit_end]);
        copied = end;
        i = end;
        // The match ends with the unit's non-word characters.
        after_word = false;
    }
    if changed {
        out.push_str(&s[copied..]);
    }
    changed
}

/// Returns the byte index after the run of non-word characters that starts at `i`.
fn skip_non_word(s: &str, mut i: usize) -> usize {
    while i < s.len() {
        let (is_word_char, len) = super::pychar::word_at(s, i);
        if is_word_char {
            break;
        }
        i += len;
    }
    i
}

/// fastai 1.0's `replace_all_caps` on tokens: a token of more than one character for
/// which Python's `str.isupper()` holds becomes `xxup` and the lowercased token.
pub(super) fn replace_all_caps_tokens(tokens: &mut Vec<String>) {
    if !tokens.iter().any(|token| is_all_caps(token)) {
        return;
    }
    let mut result = Vec::with_capacity(tokens.len() + 16);
    for token in tokens.drain(..) {
        if is_all_caps(&token) {
            result.push(UP.to_string());
            let mut lowered = String::with_capacity(token.len());
            push_lower(&token, &mut lowered);
            result.push(lowered);
        } else {
            result.push(token);
        }
    }
    *tokens = result;
}

fn is_all_caps(token: &str) -> bool {
    token.chars().nth(1).is_some() && str_is_upper(token)
}

/// fastai 1.0's `deal_caps`: drops empty tokens, puts `xxmaj` before a token of more than
/// one character whose first character is uppercase and whose rest is lowercase
/// (Python's `isupper`/`islower`), and lowercases every token.
pub(super) fn deal_caps(tokens: &mut Vec<String>) {
    let mut result = Vec::with_capacity(tokens.len() + tokens.len() / 8);
    for token in tokens.drain(..) {
        let mut chars = token.chars();
        let Some(first) = chars.next() else {
            continue;
        };
        let rest = chars.as_str();
        if is_upper(first) && !rest.is_empty() && str_is_lower(rest) {
            result.push(MAJ.to_string());
        }
        if token.bytes().any(|b| b.is_ascii_uppercase()) || !token.is_ascii() {
            let mut lowered = String::with_capacity(token.len());
            push_lower(&token, &mut lowered);
            result.push(lowered);
        } else {
            result.push(token);
        }
    }
    *tokens = result;
}
