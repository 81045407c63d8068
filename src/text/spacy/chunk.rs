//! Splitting of one whitespace-free chunk, following `Tokenizer._split_affixes`,
//! `Tokenizer._attach_tokens` and `Tokenizer._apply_special_cases` of spaCy 3.8.

use std::ops::Range;

use rustc_hash::{FxHashMap, FxHashSet};

use super::affixes::{find_infixes, find_prefix, find_suffix};
use super::tables::{MATCHER_PATTERNS, SPECIAL_CASES};
use super::url::url_match;

/// Flag of a chunk whose first token can continue a matcher pattern begun before it.
pub(super) const JOINS_LEFT: u8 = 1;
/// Flag of a chunk whose last token can begin or continue a pattern ending after it.
pub(super) const JOINS_RIGHT: u8 = 2;

/// Tokenizer exceptions and the special-case matcher patterns.
#[derive(Debug)]
pub(super) struct Rules {
    specials: FxHashMap<&'static str, &'static [&'static str]>,
    /// Matcher patterns grouped by their first token.
    patterns: FxHashMap<&'static str, Vec<&'static [&'static str]>>,
    /// Tokens found after the first position of some pattern.
    continuations: FxHashSet<&'static str>,
    /// Tokens found before the last position of some pattern.
    openings: FxHashSet<&'static str>,
}

impl Rules {
    pub(super) fn new() -> Self {
        let specials = SPECIAL_CASES.iter().copied().collect();
        let mut patterns: FxHashMap<&'static str, Vec<&'static [&'static str]>> =
            FxHashMap::default();
        let mut continuations = FxHashSet::default();
        let mut openings = FxHashSet::default();
        for &(tokens, _) in MATCHER_PATTERNS {
            if let Some(first) = tokens.first() {
                patterns.entry(first).or_default().push(tokens);
            }
            if tokens.len() > 1 {
                continuations.extend(&tokens[1..]);
                openings.extend(&tokens[..tokens.len() - 1]);
            }
        }
        Self {
            specials,
            patterns,
            continuations,
            openings,
        }
    }

    fn special(&self, s: &str) -> Option<&'static [&'static str]> {
        self.specials.get(s).copied()
    }

    /// Appends the token end offsets of `chunk` (relative to its start) to `ends`, after
    /// the matcher pass within the chunk, and returns the chunk's edge flags. The caller
    /// passes chunks shorter than `u32::MAX` bytes.
    pub(super) fn split_chunk(&self, chunk: &str, ends: &mut Vec<u32>) -> u8 {
        let mut tokens = Vec::new();
        self.split_before_matcher(chunk, &mut tokens);
        let flags = self.edge_flags(chunk, &tokens);
        self.apply_matcher(chunk, &mut tokens);
        ends.extend(tokens.iter().map(|token| token.end as u32));
        flags
    }

    /// Appends the tokens of `chunk` before the matcher pass, as byte ranges into `chunk`.
    pub(super) fn split_before_matcher(&self, chunk: &str, tokens: &mut Vec<Range<usize>>) {
        let mut ends = Vec::new();
        self.split_affixes(chunk, &mut ends);
        let mut start = 0;
        for end in ends {
            tokens.push(start..end);
            start = end;
        }
    }

    /// Pushes the token ends of `chunk` before the special-case matcher pass.
    fn split_affixes(&self, chunk: &str, ends: &mut Vec<usize>) {
        if let Some(parts) = self.special(chunk) {
            push_parts(0, parts, ends);
            return;
        }
        let mut start = 0;
        let mut end = chunk.len();
        let mut prefixes: Vec<usize> = Vec::new();
        let mut suffixes: Vec<usize> = Vec::new();
        let mut last_size = usize::MAX;
        while start < end && end - start != last_size {
            let current = &chunk[start..end];
            if self.special(current).is_some() {
                break;
            }
            last_size = current.len();
            let prefix = find_prefix(current);
            if prefix != 0 {
                let rest = &current[prefix..];
                if !rest.is_empty() && self.special(rest).is_some() {
                    start += prefix;
                    prefixes.push(start);
                    break;
                }
            }
            let suffix = find_suffix(&current[prefix..]);
            if suffix != 0 {
                let rest = &current[..current.len() - suffix];
                if !rest.is_empty() && self.special(rest).is_some() {
                    suffixes.push(end);
                    end -= suffix;
                    break;
                }
            }
            if prefix != 0 {
                start += prefix;
                prefixes.push(start);
            }
            if suffix != 0 {
                suffixes.push(end);
                end -= suffix;
            }
        }

        ends.extend_from_slice(&prefixes);
        if start < end {
            let middle = &chunk[start..end];
            if let Some(parts) = self.special(middle) {
                push_parts(start, parts, ends);
            } else if url_match(middle) {
                ends.push(end);
            } else {
                push_infix_split(middle, start, ends);
            }
        }
        ends.extend(suffixes.iter().rev());
    }

    /// Returns the edge flags ([`JOINS_LEFT`], [`JOINS_RIGHT`]) of a chunk whose tokens,
    /// before the matcher pass, are `tokens`.
    pub(super) fn edge_flags(&self, chunk: &str, tokens: &[Range<usize>]) -> u8 {
        let mut flags = 0;
        if let Some(first) = tokens.first() {
            if self.continuations.contains(&chunk[first.clone()]) {
                flags |= JOINS_LEFT;
            }
        }
        if let Some(last) = tokens.last() {
            if self.openings.contains(&chunk[last.clone()]) {
                flags |= JOINS_RIGHT;
            }
        }
        flags
    }

    /// Replaces token runs that spell an exception with the exception's tokens, as spaCy's
    /// final `PhraseMatcher` pass does. `tokens` are byte ranges into `text`, in order.
    pub(super) fn apply_matcher(&self, text: &str, tokens: &mut Vec<Range<usize>>) {
        // (start token, end token) of every match.
        let mut matches: Vec<(usize, usize)> = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            let Some(patterns) = self.patterns.get(&text[token.clone()]) else {
                continue;
            };
            for pattern in patterns {
                let stop = i + pattern.len();
                if stop <= tokens.len()
                    && pattern
                        .iter()
                        .zip(&tokens[i..stop])
                        .all(|(part, token)| text[token.clone()] == **part)
                {
                    matches.push((i, stop));
                }
            }
        }
        if matches.is_empty() {
            return;
        }
        // Longest first, then leftmost. A match is kept unless its first or last token is
        // covered by a match seen before it, kept or not.
        matches.sort_by(|a, b| (b.1 - b.0).cmp(&(a.1 - a.0)).then(a.0.cmp(&b.0)));
        let mut seen = vec![false; tokens.len()];
        let mut kept: Vec<(usize, usize)> = Vec::new();
        for &(first, stop) in &matches {
            if !seen[first] && !seen[stop - 1] {
                kept.push((first, stop));
            }
            seen[first..stop].iter_mut().for_each(|s| *s = true);
        }
        kept.sort_unstable();

        let mut rebuilt = Vec::with_capacity(tokens.len());
        let mut i = 0;
        let mut next = kept.iter().peekable();
        while i < tokens.len() {
            match next.peek() {
                Some(&&(first, stop)) if first == i => {
                    next.next();
                    let start = tokens[first].start;
                    // A match across whitespace spells no exception, so it stays as is.
                    match self.special(&text[start..tokens[stop - 1].end]) {
                        Some(parts) => {
                            let mut end = start;
                            for part in parts {
                                rebuilt.push(end..end + part.len());
                                end += part.len();
                            }
                        }
                        None => rebuilt.extend_from_slice(&tokens[first..stop]),
                    }
                    i = stop;
                }
                _ => {
                    rebuilt.push(tokens[i].clone());
                    i += 1;
                }
            }
        }
        *tokens = rebuilt;
    }
}

fn push_parts(start: usize, parts: &[&str], ends: &mut Vec<usize>) {
    let mut end = start;
    for part in parts {
        end += part.len();
        ends.push(end);
    }
}

/// Pushes the token ends of `middle` (at byte `offset` in its chunk) split at infixes.
/// As in spaCy, an infix at the very start of `middle` does not split it.
fn push_infix_split(middle: &str, offset: usize, ends: &mut Vec<usize>) {
    let mut infixes = Vec::new();
    find_infixes(middle, &mut infixes);
    let mut start = 0;
    for (infix_start, infix_end) in infixes {
        if infix_start == 0 {
            continue;
        }
        if infix_start != start {
            ends.push(offset + infix_start);
        }
        if infix_start != infix_end {
            ends.push(offset + infix_end);
        }
        start = infix_end;
    }
    if start < middle.len() {
        ends.push(offset + middle.len());
    }
}
