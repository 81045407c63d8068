//! Fast JSON output for token lists, byte-identical to `serde_json`'s compact form.

/// Appends `text` to `out` as a JSON string literal, quotes included, escaping as
/// `serde_json` does: `"`, `\` and control characters; other characters stay UTF-8.
pub fn push_json_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Builds one `{"tokens": [...]}` line.
#[derive(Default)]
pub struct TokensLine {
    buffer: Vec<u8>,
    count: usize,
}

impl TokensLine {
    /// Starts a line in `buffer`, which keeps its capacity.
    pub fn start(mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        buffer.extend_from_slice(b"{\"tokens\":[");
        Self { buffer, count: 0 }
    }

    /// Appends one token.
    pub fn push(&mut self, token: &str) {
        if self.count > 0 {
            self.buffer.push(b',');
        }
        push_json_string(&mut self.buffer, token);
        self.count += 1;
    }

    /// Closes the line (with its newline) and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buffer.extend_from_slice(b"]}\n");
        self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_serde_json() {
        let cases = [
            "",
            "plain",
            "quote \" and backslash \\",
            "\n\n",
            "tab\tcr\r",
            "\u{0}\u{1}\u{8}\u{b}\u{c}\u{1f}\u{7f}",
            "émoji 😀 and cjk 日本語",
            "\u{2028}\u{2029}",
        ];
        for case in cases {
            let mut out = Vec::new();
            push_json_string(&mut out, case);
            let expected = serde_json::to_string(case).expect("a string serializes");
            assert_eq!(String::from_utf8(out).expect("utf-8"), expected, "{case:?}");
        }
    }

    #[test]
    fn tokens_line_matches_serde_json() {
        let tokens = ["xxbos", "\"", "a\nb", "\\"];
        let mut line = TokensLine::start(Vec::new());
        for token in tokens {
            line.push(token);
        }
        let expected = serde_json::json!({ "tokens": tokens }).to_string() + "\n";
        assert_eq!(String::from_utf8(line.finish()).expect("utf-8"), expected);
    }

    #[test]
    fn empty_tokens_line() {
        let line = TokensLine::start(b"leftover".to_vec());
        assert_eq!(line.finish(), b"{\"tokens\":[]}\n".to_vec());
    }
}
