//! String rules of fastai 2.8 (`fastai/text/core.py`), each a single pass that reproduces
//! what Python's `re.sub` does with the rule's pattern.
//!
//! Each rule writes its result into `out` and returns `true`, or returns `false` without
//! touching `out` when the text would come out unchanged.

use std::fmt::Write;

use super::pychar::{
    char_at, is_space, push_lower, skip_non_space, skip_space, skip_word, space_at, strip,
    utf8_len, word_at,
};
use crate::text::{BOS, MAJ, REP, UP, WREP};

/// Replaces each run of at least `min_run` copies of one non-whitespace character by
/// ` xxrep N c `: the pattern `(\S)(\1{2,})` for `min_run = 3` (fastai 2.x) and
/// `(\S)(\1{3,})` for `min_run = 4` (fastai 1.0).
pub(super) fn replace_rep(s: &str, min_run: usize, out: &mut String) -> bool {
    let bytes = s.as_bytes();
    let mut changed = false;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let len = utf8_len(bytes[i]);
        let unit = &bytes[i..i + len];
        let mut end = i + len;
        let mut count = 1;
        if len == 1 {
            let b = bytes[i];
            while end < bytes.len() && bytes[end] == b {
                end += 1;
                count += 1;
            }
        } else {
            while end + len <= bytes.len() && &bytes[end..end + len] == unit {
                end += len;
                count += 1;
            }
        }
        if count >= min_run && !is_space(char_at(s, i)) {
            if !changed {
                out.clear();
                changed = true;
            }
            out.push_str(&s[copied..i]);
            // Writing into a String cannot fail.
            let _ = write!(out, " {REP} {count} {} ", &s[i..i + len]);
            copied = end;
        }
        i = end;
    }
    if changed {
        out.push_str(&s[copied..]);
    }
    changed
}

/// One match of fastai 2.x's word-repetition pattern.
struct WordRepeat {
    /// Byte range of the whole match.
    start: usize,
    end: usize,
    /// Byte range of the repeated word.
    word: (usize, usize),
    /// Number of copies of the word that the match covers.
    count: usize,
    /// Byte range of the character after the last copy (empty at the end of the text).
    after: (usize, usize),
}

/// Matches `(?:\s|^)(\w+)\s+((?:\1\s+)+)\1(\s|\W|$)` at byte `start`, where `start` is 0
/// or the index of a whitespace character that precedes a word character.
///
/// The word must be the whole run of word characters (a shorter one would be followed by
/// a word character where `\s+` needs whitespace), and every `\s+` takes the whole run
/// of whitespace. So the only backtracking left is over the number of repetitions: with
/// the maximum `k`, the last copy must be followed by a non-word character or the end,
/// and if it is not, `k - 1` repetitions succeed because copy `k` is followed by
/// whitespace.
fn match_word_repeat(s: &str, start: usize, word_start: usize) -> Option<WordRepeat> {
    let word_end = skip_word(s, word_start);
    let word = &s.as_bytes()[word_start..word_end];
    let first_gap_end = skip_space(s, word_end);
    if first_gap_end == word_end {
        return None;
    }
    let bytes = s.as_bytes();
    let mut repeats = 0;
    let mut position = first_gap_end;
    let mut previous = position;
    while bytes[position..].starts_with(word) {
        let copy_end = position + word.len();
        let gap_end = skip_space(s, copy_end);
        if gap_end == copy_end {
            break;
        }
        previous = position;
        position = gap_end;
        repeats += 1;
    }
    if repeats == 0 {
        return None;
    }
    let last_copy_ends_word = |copy: usize| -> Option<(usize, usize)> {
        if !bytes[copy..].starts_with(word) {
            return None;
        }
        let after = copy + word.len();
        if after == bytes.len() {
            return Some((after, after));
        }
        let (is_word_char, len) = word_at(s, after);
        (!is_word_char).then_some((after, after + len))
    };
    let (copies, after) = match last_copy_ends_word(position) {
        Some(after) => (repeats + 2, after),
        None if repeats >= 2 => {
            // Copy number `repeats + 1` becomes the last one; whitespace follows it.
            let after = previous + word.len();
            let (_, len) = space_at(s, after);
            (repeats + 1, (after, after + len))
        }
        None => return None,
    };
    Some(WordRepeat {
        start,
        end: after.1,
        word: (word_start, word_end),
        count: copies,
        after,
    })
}

/// Replaces a word repeated at least three times by ` xxwrep N word ` (fastai 2.x).
pub(super) fn replace_wrep(s: &str, out: &mut String) -> bool {
    let bytes = s.as_bytes();
    let mut changed = false;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Find the next candidate: position 0 before a word character, or a whitespace
        // character followed by a word character.
        let (start, word_start) = if i == 0 && word_at(s, 0).0 {
            (0, 0)
        } else {
            let (space, len) = space_at(s, i);
            if !space {
                i += len;
                continue;
            }
            let next = i + len;
            if next >= bytes.len() || !word_at(s, next).0 {
                i = next;
                continue;
            }
            (i, next)
        };
        match match_word_repeat(s, start, word_start) {
            Some(found) => {
                if !changed {
                    out.clear();
                    changed = true;
                }
                out.push_str(&s[copied..found.start]);
                let word = &s[found.word.0..found.word.1];
                let after = &s[found.after.0..found.after.1];
                let _ = write!(out, " {WREP} {} {word} {after}", found.count);
                copied = found.end;
                i = found.end;
            }
            None => i = skip_word(s, word_start),
        }
    }
    if changed {
        out.push_str(&s[copied..]);
    }
    changed
}

/// Puts a space on each side of every byte in `targets` (all ASCII): `([/#\\])` in fastai
/// 2.x, `([/#\n])` in fastai 1.0.
pub(super) fn spec_add_spaces(s: &str, targets: [u8; 3], out: &mut String) -> bool {
    let bytes = s.as_bytes();
    let [a, b, c] = targets;
    let Some(first) = memchr::memchr3(a, b, c, bytes) else {
        return false;
    };
    out.clear();
    out.reserve(s.len() + 16);
    let mut copied = 0;
    for at in memchr::memchr3_iter(a, b, c, &bytes[first..]).map(|offset| first + offset) {
        out.push_str(&s[copied..at]);
        out.push(' ');
        out.push(bytes[at] as char);
        out.push(' ');
        copied = at + 1;
    }
    out.push_str(&s[copied..]);
    true
}

/// Collapses runs of two or more ASCII spaces into one (` {2,}`).
pub(crate) fn rm_useless_spaces(s: &str, out: &mut String) -> bool {
    let bytes = s.as_bytes();
    let Some(first) = memchr::memmem::find(bytes, b"  ") else {
        return false;
    };
    out.clear();
    out.reserve(s.len());
    out.push_str(&s[..first + 1]);
    let mut i = first + 1;
    let mut copied = i;
    while i < bytes.len() {
        if bytes[i] == b' ' && bytes[i - 1] == b' ' {
            out.push_str(&s[copied..i]);
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
            copied = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&s[copied..]);
    true
}

/// Lowercases capitalised tokens, where a token is a maximal run of non-whitespace
/// characters and its first character is ASCII `A`-`Z`:
/// - with `all_caps`, a token without ASCII `a`-`z` gets `xxup ` in front when it has
///   more than one character (`(\s|^)([A-Z]+[^a-z\s]*)(?=(\s|$))`);
/// - with `maj`, a token without another ASCII `A`-`Z` gets `xxmaj ` in front when it has
///   more than one character (`(\s|^)([A-Z][^A-Z\s]*)(?=(\s|$))`).
///
/// With both, the result equals `replace_all_caps` followed by `replace_maj`, because a
/// token that the first one lowers has no uppercase ASCII left for the second.
pub(super) fn replace_caps(s: &str, all_caps: bool, maj: bool, out: &mut String) -> bool {
    let bytes = s.as_bytes();
    let mut changed = false;
    let mut copied = 0;
    let mut i = skip_space(s, 0);
    while i < bytes.len() {
        let token_end = skip_non_space(s, i);
        if bytes[i].is_ascii_uppercase() {
            let token = &s[i..token_end];
            let rest = &token.as_bytes()[1..];
            let marker = if all_caps && !rest.iter().any(u8::is_ascii_lowercase) {
                Some(UP)
            } else if maj && !rest.iter().any(u8::is_ascii_uppercase) {
                Some(MAJ)
            } else {
                None
            };
            if let Some(marker) = marker {
                if !changed {
                    out.clear();
                    out.reserve(s.len() + 64);
                    changed = true;
                }
                out.push_str(&s[copied..i]);
                if token.chars().nth(1).is_some() {
                    out.push_str(marker);
                    out.push(' ');
                }
                push_lower(token, out);
                copied = token_end;
            }
        }
        i = skip_space(s, token_end);
    }
    if changed {
        out.push_str(&s[copied..]);
    }
    changed
}

/// fastai 2.x's `lowercase`: `xxbos `, then the text lowercased and stripped of Python
/// whitespace at both ends.
pub(super) fn lowercase(s: &str, out: &mut String) {
    out.clear();
    out.reserve(s.len() + BOS.len() + 1);
    out.push_str(BOS);
    out.push(' ');
    // Python lowercases before stripping. Stripping first gives the same text because
    // whitespace lowercases to itself and stops the final-sigma context.
    push_lower(strip(s), out);
}
