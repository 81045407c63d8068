//! An exact reimplementation of the tokenizer of spaCy 3.8's blank English pipeline
//! (`spacy.blank("en").tokenizer`), without regular expressions.
//!
//! The text is cut into chunks at whitespace, as spaCy does: a single ' ' after a chunk
//! is dropped and any other whitespace run becomes a token of its own. Each non-space
//! chunk is then split by spaCy's algorithm (`spacy/tokenizer.pyx`): tokenizer
//! exceptions, then repeated prefix and suffix stripping, then the URL match or infix
//! splitting of what remains, then the special-case matcher pass. Splits are cached per
//! thread, keyed by the chunk.

mod affixes;
mod chunk;
mod tables;
mod url;

use std::cell::RefCell;
use std::ops::Range;

use rustc_hash::FxHashMap;

use chunk::{Rules, JOINS_LEFT, JOINS_RIGHT};
use tables::SPACE;

/// Maximum number of distinct chunks kept in each thread's cache before it is cleared.
const MAX_CACHED_CHUNKS: usize = 200_000;
/// Maximum number of cached token end offsets in each thread before the cache is cleared.
const MAX_CACHED_ENDS: usize = 1 << 22;

/// spaCy 3.8's English tokenizer, returning tokens as byte ranges into the input.
#[derive(Debug)]
pub struct EnglishTokenizer {
    rules: Rules,
}

impl Default for EnglishTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

/// A thread's cache of chunk splits, stored as token end offsets relative to the chunk start.
#[derive(Default)]
struct ChunkCache {
    /// Chunk to (offset into `ends`, token count, edge flags).
    splits: FxHashMap<Box<str>, (u32, u32, u8)>,
    ends: Vec<u32>,
}

thread_local! {
    static CACHE: RefCell<ChunkCache> = RefCell::new(ChunkCache::default());
}

impl EnglishTokenizer {
    /// Builds the exception and matcher tables.
    pub fn new() -> Self {
        Self {
            rules: Rules::new(),
        }
    }

    /// Appends the byte ranges of the tokens of `text` to `spans`, in order.
    pub fn split(&self, text: &str, spans: &mut Vec<Range<usize>>) {
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            self.split_with(text, spans, &mut cache);
        });
    }

    fn split_with(&self, text: &str, spans: &mut Vec<Range<usize>>, cache: &mut ChunkCache) {
        let first_span = spans.len();
        let mut cross_chunk = false;
        let mut previous_end = usize::MAX;
        let mut previous_flags = 0;
        for_each_chunk(text, |start, end, in_space| {
            if in_space {
                spans.push(start..end);
                return;
            }
            let flags = self.push_chunk(text, start, end, spans, cache);
            if previous_end.checked_add(1) == Some(start)
                && previous_flags & JOINS_RIGHT != 0
                && flags & JOINS_LEFT != 0
            {
                cross_chunk = true;
            }
            previous_end = end;
            previous_flags = flags;
        });
        if cross_chunk {
            spans.truncate(first_span);
            self.split_whole_text(text, spans);
        }
    }

    /// Splits `text` with the matcher pass over the whole text, as spaCy does. Only
    /// needed when a matcher pattern can span two chunks separated by one space, because
    /// such a match can block a match inside a chunk.
    fn split_whole_text(&self, text: &str, spans: &mut Vec<Range<usize>>) {
        let mut tokens = Vec::new();
        let mut chunk_tokens = Vec::new();
        for_each_chunk(text, |start, end, in_space| {
            if in_space {
                tokens.push(start..end);
                return;
            }
            chunk_tokens.clear();
            self.rules
                .split_before_matcher(&text[start..end], &mut chunk_tokens);
            tokens.extend(
                chunk_tokens
                    .iter()
                    .map(|token| start + token.start..start + token.end),
            );
        });
        self.rules.apply_matcher(text, &mut tokens);
        spans.extend(tokens);
    }

    /// Appends the tokens of the non-space chunk `text[start..end]` and returns its edge
    /// flags.
    fn push_chunk(
        &self,
        text: &str,
        start: usize,
        end: usize,
        spans: &mut Vec<Range<usize>>,
        cache: &mut ChunkCache,
    ) -> u8 {
        let chunk = &text[start..end];
        if u32::try_from(chunk.len()).is_err() {
            // NOTE: a chunk of 4 GiB or more is returned as one token, unsplit.
            spans.push(start..end);
            return 0;
        }
        if let Some(&(offset, count, flags)) = cache.splits.get(chunk) {
            let mut token_start = start;
            for &token_end in &cache.ends[offset as usize..(offset + count) as usize] {
                let token_end = start + token_end as usize;
                spans.push(token_start..token_end);
                token_start = token_end;
            }
            return flags;
        }
        if cache.splits.len() >= MAX_CACHED_CHUNKS || cache.ends.len() >= MAX_CACHED_ENDS {
            cache.splits.clear();
            cache.ends.clear();
        }
        let offset = cache.ends.len();
        let flags = self.rules.split_chunk(chunk, &mut cache.ends);
        let mut token_start = start;
        for &token_end in &cache.ends[offset..] {
            let token_end = start + token_end as usize;
            spans.push(token_start..token_end);
            token_start = token_end;
        }
        // Both values fit in u32 because the arena is cleared at MAX_CACHED_ENDS entries and
        // a chunk has fewer than u32::MAX bytes, so the fallback is never taken.
        if let (Ok(offset32), Ok(count)) = (
            u32::try_from(offset),
            u32::try_from(cache.ends.len() - offset),
        ) {
            cache.splits.insert(chunk.into(), (offset32, count, flags));
        } else {
            cache.ends.truncate(offset);
        }
        flags
    }
}

/// Calls `visit(start, end, in_space)` for each chunk of `text`, as spaCy cuts them: runs
/// of whitespace (Python's `str.isspace`) and of other characters, where a single ' '
/// after a non-space run is dropped instead of starting a whitespace chunk.
fn for_each_chunk(text: &str, mut visit: impl FnMut(usize, usize, bool)) {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    let mut in_space = false;
    while i < bytes.len() {
        let b = bytes[i];
        let (is_space, width) = if b < 0x80 {
            (tables::ASCII_FLAGS[b as usize] & SPACE != 0, 1)
        } else {
            // `i` is on a character boundary because it only advances by whole characters.
            let c = text[i..].chars().next().unwrap_or('\u{FFFD}');
            (affixes::flags(c) & SPACE != 0, c.len_utf8())
        };
        if i == 0 {
            in_space = is_space;
        }
        if is_space != in_space {
            if start < i {
                visit(start, i, in_space);
            }
            start = if b == b' ' { i + 1 } else { i };
            in_space = is_space;
        }
        i += width;
    }
    if start < bytes.len() {
        visit(start, bytes.len(), in_space);
    }
}

#[cfg(test)]
mod tests;
