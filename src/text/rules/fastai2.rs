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
/// On failure, returns the end of the word so the search can resume there.
fn match_word_repeat(s: &str, start: usize, word_start: usize) -> Result<WordRepeat, usize> {
    let word_end = skip_word(s, word_start);
    let word = &s.as_bytes()[word_start..word_end];
    let first_gap_end = skip_space(s, word_end);
    if first_gap_end == word_end {
        return Err(word_end);
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
        return Err(word_end);
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
            // Copy number `repeats + 1` becomes the last one, and whitespace follows it.
            let after = previous + word.len();
            let (_, len) = space_at(s, after);
            (repeats + 1, (after, after + len))
        }
        None => return Err(word_end),
    };
    Ok(WordRepeat {
        start,
        end: after.1,
        word: (word_start, word_end),
        count: copies,
        after,
    })
}

/// Returns the next position from `i` on where the word-repetition pattern can start: a
/// whitespace character followed by a word character, as `(whitespace, word start)`.
fn next_word_candidate(s: &str, mut i: usize) -> Option<(usize, usize)> {
    let bytes = s.as_bytes();
    while i < bytes.len() {
        let (space, len) = space_at(s, i);
        if space {
            let next = i + len;
            if next < bytes.len() && word_at(s, next).0 {
                return Some((i, next));
            }
        }
        i += len;
    }
    None
}

/// Replaces a word repeated at least three times by ` xxwrep N word ` (fastai 2.x).
pub(super) fn replace_wrep(s: &str, out: &mut String) -> bool {
    let bytes = s.as_bytes();
    let mut changed = false;
    let mut copied = 0;
    // `^` lets a match start at position 0 without whitespace.
    let mut candidate = if !s.is_empty() && word_at(s, 0).0 {
        Some((0, 0))
    } else {
        next_word_candidate(s, 0)
    };
    while let Some((start, word_start)) = candidate {
        // Most words differ from the next one: test that before the full match.
        let word_end = skip_word(s, word_start);
        let gap_end = skip_space(s, word_end);
        let word = &bytes[word_start..word_end];
        let resume = if gap_end > word_end && bytes[gap_end..].starts_with(word) {
            match match_word_repeat(s, start, word_start) {
                Ok(found) => {
                    if !changed {
                        out.clear();
                        changed = true;
                    }
                    out.push_str(&s[copied..found.start]);
                    let word = &s[found.word.0..found.word.1];
                    let after = &s[found.after.0..found.after.1];
                    // Writing into a String cannot fail.
                    let _ = write!(out, " {WREP} {} {word} {after}", found.count);
                    copied = found.end;
                    candidate = next_word_candidate(s, found.end);
                    continue;
                }
                Err(word_end) => word_end,
            }
        } else {
            word_end
        };
        // The whitespace run after the word is already scanned: when a word follows it,
        // the next candidate starts at the run's last character.
        candidate = if gap_end > resume && gap_end < bytes.len() && word_at(s, gap_end).0 {
            let mut last_space = gap_end - 1;
            while (bytes[last_space] & 0xc0) == 0x80 {
                last_space -= 1;
            }
            Some((last_space, gap_end))
        } else {
            next_word_candidate(s, resume)
        };
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
    let mut i = 0;
    // Only tokens that start with A-Z change, so jump from one such byte to the next and
    // check that it starts a token.
    while let Some(offset) = bytes[i..].iter().position(u8::is_ascii_uppercase) {
        let at = i + offset;
        if at > 0 && !space_before(s, at) {
            i = at + 1;
            continue;
        }
        let token_end = skip_non_space(s, at);
        let token = &s[at..token_end];
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
            out.push_str(&s[copied..at]);
            if token.chars().nth(1).is_some() {
                out.push_str(marker);
                out.push(' ');
            }
            push_lower(token, out);
            copied = token_end;
        }
        i = token_end;
    }
    if changed {
        out.push_str(&s[copied..]);
    }
    changed
}

/// Returns whether the character that ends right before byte `at` is Python whitespace.
fn space_before(s: &str, at: usize) -> bool {
    let bytes = s.as_bytes();
    let mut start = at - 1;
    while start > 0 && (bytes[start] & 0xc0) == 0x80 {
        start -= 1;
    }
    space_at(s, start).0
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
