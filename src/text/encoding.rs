//! Byte-to-text decoding for corpus files: UTF-8 or Latin-1 (ISO-8859-1).

/// UTF-8 byte order mark, which some editors write at the start of a file.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Character encoding of a corpus file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Encoding {
    /// UTF-8, where invalid byte sequences are an error.
    #[default]
    #[value(alias = "utf-8")]
    Utf8,
    /// Latin-1 (ISO-8859-1): every byte maps to the code point of the same value, so
    /// decoding never fails.
    #[value(alias = "latin-1", alias = "iso-8859-1")]
    Latin1,
}

/// Invalid UTF-8 in a byte string: the bytes before `valid_up_to` decode cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8 {
    /// Byte offset of the first invalid sequence.
    pub valid_up_to: usize,
}

impl Encoding {
    /// Decodes `bytes` into a `String`.
    ///
    /// With `Utf8` this fails on the first invalid sequence. With `Latin1` each byte
    /// becomes the `char` of the same value (0x85 becomes U+0085, not a line break).
    pub fn decode(self, bytes: &[u8]) -> Result<String, InvalidUtf8> {
        match self {
            Encoding::Utf8 => match std::str::from_utf8(bytes) {
                Ok(text) => Ok(text.to_owned()),
                Err(error) => Err(InvalidUtf8 {
                    valid_up_to: error.valid_up_to(),
                }),
            },
            Encoding::Latin1 => Ok(bytes.iter().map(|&byte| char::from(byte)).collect()),
        }
    }

    /// Removes a leading UTF-8 byte order mark when the encoding is UTF-8.
    ///
    /// Under Latin-1 the same three bytes are the text "ï»¿" and stay in place.
    pub fn strip_bom(self, bytes: &[u8]) -> &[u8] {
        match self {
            Encoding::Utf8 => bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes),
            Encoding::Latin1 => bytes,
        }
    }
}

/// Counts the `\n` bytes before `offset` in `bytes`, which is the 0-based line index of
/// that offset.
pub fn newlines_before(bytes: &[u8], offset: usize) -> u64 {
    let end = offset.min(bytes.len());
    bytes[..end].iter().filter(|&&byte| byte == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_maps_bytes_to_code_points() {
        let decoded = Encoding::Latin1.decode(b"caf\xe9 \x85 x").unwrap();
        assert_eq!(decoded, "caf\u{e9} \u{85} x");
    }

    #[test]
    fn utf8_reports_first_invalid_offset() {
        let error = Encoding::Utf8.decode(b"ok\n\xe9t\xe9").unwrap_err();
        assert_eq!(error.valid_up_to, 3);
    }

    #[test]
    fn bom_stripped_only_for_utf8() {
        assert_eq!(Encoding::Utf8.strip_bom(b"\xEF\xBB\xBFhi"), b"hi");
        assert_eq!(
            Encoding::Latin1.strip_bom(b"\xEF\xBB\xBFhi"),
            b"\xEF\xBB\xBFhi"
        );
    }

    #[test]
    fn newlines_before_counts_lines() {
        assert_eq!(newlines_before(b"a\nb\nc", 4), 2);
        assert_eq!(newlines_before(b"a\nb\nc", 99), 2);
    }
}
