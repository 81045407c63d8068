//! fastai's `fix_html` rules and Python's `html.unescape`.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::entities::ENTITIES;
use crate::text::UNK;

/// Literal replacements of fastai 2.8's `fix_html`, applied one after the other like its
/// chain of `str.replace` calls, so a replacement may create a match for a later one.
const FIX_HTML_V2: [(&str, &str); 13] = [
    ("#39;", "'"),
    ("amp;", "&"),
    ("#146;", "'"),
    ("nbsp;", " "),
    ("#36;", "$"),
    ("\\n", "\n"),
    ("quot;", "'"),
    ("<br />", "\n"),
    ("\\\"", "\""),
    ("<unk>", UNK),
    (" @.@ ", "."),
    (" @-@ ", "-"),
    ("...", " \u{2026}"),
];

/// Literal replacements of fastai 1.0's `fix_html`: no ellipsis rule, but `@,@` and
/// spaces around every backslash.
const FIX_HTML_V1: [(&str, &str); 14] = [
    ("#39;", "'"),
    ("amp;", "&"),
    ("#146;", "'"),
    ("nbsp;", " "),
    ("#36;", "$"),
    ("\\n", "\n"),
    ("quot;", "'"),
    ("<br />", "\n"),
    ("\\\"", "\""),
    ("<unk>", UNK),
    (" @.@ ", "."),
    (" @-@ ", "-"),
    (" @,@ ", ","),
    ("\\", " \\ "),
];

struct Replacement {
    finder: Finder<'static>,
    with: &'static str,
}

fn build_replacements(table: &[(&'static str, &'static str)]) -> Vec<Replacement> {
    table
        .iter()
        .map(|&(pattern, with)| Replacement {
            finder: Finder::new(pattern.as_bytes()),
            with,
        })
        .collect()
}

static REPLACEMENTS_V2: LazyLock<Vec<Replacement>> =
    LazyLock::new(|| build_replacements(&FIX_HTML_V2));
static REPLACEMENTS_V1: LazyLock<Vec<Replacement>> =
    LazyLock::new(|| build_replacements(&FIX_HTML_V1));

/// Replaces every non-overlapping occurrence, left to right, like Python's `str.replace`.
/// Writes into `out` and returns `true` only when `s` contains the pattern.
fn replace_all(s: &str, replacement: &Replacement, out: &mut String) -> bool {
    let bytes = s.as_bytes();
    let Some(first) = replacement.finder.find(bytes) else {
        return false;
    };
    let pattern_len = replacement.finder.needle().len();
    out.clear();
    out.push_str(&s[..first]);
    out.push_str(replacement.with);
    let mut copied = first + pattern_len;
    while let Some(offset) = replacement.finder.find(&bytes[copied..]) {
        let at = copied + offset;
        out.push_str(&s[copied..at]);
        out.push_str(replacement.with);
        copied = at + pattern_len;
    }
    out.push_str(&s[copied..]);
    true
}

/// Applies the replacement chain to `text` in place, using `scratch` as the second buffer.
fn replace_chain(text: &mut String, scratch: &mut String, chain: &[Replacement]) {
    for replacement in chain {
        if replace_all(text, replacement, scratch) {
            std::mem::swap(text, scratch);
        }
    }
}

/// fastai 2.8's `fix_html`: the literal replacements, then `html.unescape`.
pub(super) fn fix_html_v2(text: &mut String, scratch: &mut String) {
    let bytes = text.as_bytes();
    // Every pattern contains `;`, `\`, `<`, `@` or `...`, so one scan usually proves
    // that no replacement applies.
    let may_match = memchr::memchr3(b';', b'\\', b'<', bytes).is_some()
        || memchr::memchr(b'@', bytes).is_some()
        || memchr::memmem::find(bytes, b"...").is_some();
    if may_match {
        replace_chain(text, scratch, &REPLACEMENTS_V2);
    }
    if unescape(text, scratch) {
        std::mem::swap(text, scratch);
    }
}

/// fastai 1.0's `fix_html`: the literal replacements, `html.unescape`, then runs of two or
/// more spaces collapsed into one.
pub(super) fn fix_html_v1(text: &mut String, scratch: &mut String) {
    let bytes = text.as_bytes();
    let may_match = memchr::memchr3(b';', b'\\', b'<', bytes).is_some()
        || memchr::memchr(b'@', bytes).is_some();
    if may_match {
        replace_chain(text, scratch, &REPLACEMENTS_V1);
    }
    if unescape(text, scratch) {
        std::mem::swap(text, scratch);
    }
    if super::fastai2::rm_useless_spaces(text, scratch) {
        std::mem::swap(text, scratch);
    }
}

/// Python's `html.unescape`. Writes the result into `out` and returns `true` when `s`
/// contains a character reference that it replaced.
pub(crate) fn unescape(s: &str, out: &mut String) -> bool {
    let bytes = s.as_bytes();
    let mut copied = 0;
    let mut search = 0;
    let mut changed = false;
    while let Some(offset) = memchr::memchr(b'&', &bytes[search..]) {
        let amp = search + offset;
        let Some((end, replaced)) = match_reference(s, amp) else {
            search = amp + 1;
            continue;
        };
        if !changed {
            out.clear();
            changed = true;
        }
        out.push_str(&s[copied..amp]);
        match replaced {
            Reference::Text(text) => out.push_str(text),
            Reference::Char(c) => out.push(c),
            Reference::Prefix(text, rest) => {
                out.push_str(text);
                out.push_str(&s[rest..end]);
            }
            Reference::Unchanged => out.push_str(&s[amp..end]),
            Reference::Nothing => {}
        }
        copied = end;
        search = end;
    }
    if changed {
        out.push_str(&s[copied..]);
    }
    changed
}

/// The text that a matched character reference stands for.
enum Reference {
    Text(&'static str),
    Char(char),
    /// A legacy entity name followed by the unmatched rest of the reference, from this
    /// byte index to the end of the match.
    Prefix(&'static str, usize),
    /// A name that matches no entity: the reference stays as it is.
    Unchanged,
    /// A numeric reference to a code point that Python drops.
    Nothing,
}

/// Matches the pattern `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)` of
/// Python's `html` module at byte `amp`, returning the end of the match and its value.
fn match_reference(s: &str, amp: usize) -> Option<(usize, Reference)> {
    let bytes = s.as_bytes();
    let start = amp + 1;
    if start >= bytes.len() {
        return None;
    }
    if bytes[start] == b'#' {
        return match_numeric(bytes, start + 1);
    }
    // Named reference: 1 to 32 characters outside the excluded set, then an optional `;`.
    let mut end = start;
    let mut count = 0;
    while end < bytes.len() && count < 32 {
        let b = bytes[end];
        if matches!(b, b'\t' | b'\n' | 0x0c | b' ' | b'<' | b'&' | b'#' | b';') {
            break;
        }
        end += super::pychar::utf8_len(b);
        count += 1;
    }
    if count == 0 {
        return None;
    }
    if end < bytes.len() && bytes[end] == b';' {
        end += 1;
    }
    let name = &s[start..end];
    if let Some(value) = lookup_entity(name) {
        return Some((end, Reference::Text(value)));
    }
    // The longest prefix of at least two characters, shorter than the name, that is an
    // entity. Only the legacy names without `;` can match, and they have at most 6
    // ASCII characters.
    let ascii_prefix = name.bytes().take_while(u8::is_ascii).count();
    let longest = ascii_prefix.min(name.len() - 1).min(6);
    for length in (2..=longest).rev() {
        if let Some(value) = lookup_entity(&name[..length]) {
            return Some((end, Reference::Prefix(value, start + length)));
        }
    }
    Some((end, Reference::Unchanged))
}

fn lookup_entity(name: &str) -> Option<&'static str> {
    ENTITIES
        .binary_search_by(|&(key, _)| key.as_bytes().cmp(name.as_bytes()))
        .ok()
        .map(|index| ENTITIES[index].1)
}

/// Matches a numeric reference whose digits start at byte `start` (after `&#`).
fn match_numeric(bytes: &[u8], start: usize) -> Option<(usize, Reference)> {
    let first = *bytes.get(start)?;
    let (digits_start, radix) = if first == b'x' || first == b'X' {
        (start + 1, 16)
    } else {
        (start, 10)
    };
    let mut end = digits_start;
    // Values above 0x10FFFF all map to U+FFFD, so the parse saturates just past it.
    let mut value: u32 = 0;
    while end < bytes.len() {
        let Some(digit) = (bytes[end] as char).to_digit(radix) else {
            break;
        };
        value = value
            .saturating_mul(radix)
            .saturating_add(digit)
            .min(0x0011_0000);
        end += 1;
    }
    if end == digits_start {
        return None;
    }
    if end < bytes.len() && bytes[end] == b';' {
        end += 1;
    }
    Some((end, numeric_reference(value)))
}

/// Maps a numeric character reference the way Python 3.11's `html._replace_charref` does.
fn numeric_reference(value: u32) -> Reference {
    if let Some(c) = windows_1252_replacement(value) {
        return Reference::Char(c);
    }
    if (0xd800..=0xdfff).contains(&value) || value > 0x10ffff {
        return Reference::Char('\u{fffd}');
    }
    let dropped = matches!(value, 0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f..=0x9f | 0xfdd0..=0xfdef)
        || (value & 0xfffe) == 0xfffe;
    if dropped {
        return Reference::Nothing;
    }
    char::from_u32(value).map_or(Reference::Char('\u{fffd}'), Reference::Char)
}

/// The HTML5 replacements for invalid references: NUL, CR and the C1 range, which most
/// map to their Windows-1252 characters.
fn windows_1252_replacement(value: u32) -> Option<char> {
    let c = match value {
        0x00 => '\u{fffd}',
        0x0d => '\r',
        0x80 => '\u{20ac}',
        0x81 => '\u{81}',
        0x82 => '\u{201a}',
        0x83 => '\u{192}',
        0x84 => '\u{201e}',
        0x85 => '\u{2026}',
        0x86 => '\u{2020}',
        0x87 => '\u{2021}',
        0x88 => '\u{2c6}',
        0x89 => '\u{2030}',
        0x8a => '\u{160}',
        0x8b => '\u{2039}',
        0x8c => '\u{152}',
        0x8d => '\u{8d}',
        0x8e => '\u{17d}',
        0x8f => '\u{8f}',
        0x90 => '\u{90}',
        0x91 => '\u{2018}',
        0x92 => '\u{2019}',
        0x93 => '\u{201c}',
        0x94 => '\u{201d}',
        0x95 => '\u{2022}',
        0x96 => '\u{2013}',
        0x97 => '\u{2014}',
        0x98 => '\u{2dc}',
        0x99 => '\u{2122}',
        0x9a => '\u{161}',
        0x9b => '\u{203a}',
        0x9c => '\u{153}',
        0x9d => '\u{9d}',
        0x9e => '\u{17e}',
        0x9f => '\u{178}',
        _ => return None,
    };
    Some(c)
}
