//! Byte checks on the request path, eight bytes at a time: the release
//! profile's opt-level "s" does not vectorise a loop over bytes, and these
//! run over every log line's values and every API key; hex by table.
//!
//! A word `w` has a byte below `n` (`n` ≤ 0x80) exactly when
//! `(w - n×0x01…) & !w & 0x80…` is not zero, and a byte equal to `c` when
//! `w ^ c×0x01…` has a byte below 1.

use http::HeaderValue;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that is below `n`, and possibly of
/// bytes above one that is (test against 0 only).
fn below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w
}

/// Eight bytes as a word.
fn word(chunk: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(chunk);
    u64::from_le_bytes(bytes)
}

/// Whether `s` has a byte a JSON string must escape (a control character,
/// `"` or `\`).
pub fn needs_json_escape(s: &str) -> bool {
    let mut chunks = s.as_bytes().chunks_exact(8);
    for chunk in &mut chunks {
        let w = word(chunk);
        let hits = below(w, 0x20)
            | below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1);
        if hits & HIGH != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A header's value as text, under the rule of `HeaderValue::to_str`
/// (visible ASCII, space and tab), checked a word at a time.
pub fn header_text(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let w = word(chunk);
        // A byte of 0x7f or above, or a control character other than tab.
        let high_or_del = (w | w.wrapping_add(ONES)) & HIGH;
        if high_or_del != 0 || (below(w, 0x20) & HIGH != 0 && !chunk.iter().all(|&b| visible(b))) {
            return None;
        }
    }
    if !chunks.remainder().iter().all(|&b| visible(b)) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// `HeaderValue::to_str`'s rule for one byte.
fn visible(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b)
}

/// Writes `bytes` as lowercase hex into the first `2 × bytes.len()` bytes of
/// `out` (a table lookup per nibble; `hex`'s encoder checks and iterates
/// per character).
pub fn lower_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_at_a_time_escape_check_agrees_with_the_byte_rule() {
        let byte_rule = |s: &str| s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
        // Every ASCII byte and a multi-byte character, at each position of
        // strings long enough for whole words and a remainder.
        let specials = [
            '"', '\\', '\u{0}', '\u{1f}', ' ', '!', '#', '[', ']', '~', '\u{7f}', 'é',
        ];
        for len in [0, 1, 7, 8, 9, 16, 23] {
            for pos in 0..len {
                for c in (0u8..0x80).map(char::from).chain(specials) {
                    let s: String = (0..len).map(|i| if i == pos { c } else { 'a' }).collect();
                    assert_eq!(needs_json_escape(&s), byte_rule(&s), "{s:?}");
                }
            }
        }
        assert!(!needs_json_escape("request completed: caf\u{e9} \u{1f600}"));
    }

    #[test]
    fn lower_hex_is_hex_crates_encoding() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = vec![0u8; 512];
        lower_hex(&bytes, &mut out);
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(out, expected.as_bytes());
    }

    #[test]
    fn header_text_agrees_with_to_str() {
        let mut checked = 0;
        for len in [1, 7, 8, 9, 16, 23, 170] {
            for pos in 0..len {
                for b in 0u8..=255 {
                    let mut bytes = vec![b'a'; len];
                    bytes[pos] = b;
                    let Ok(value) = HeaderValue::from_bytes(&bytes) else {
                        continue;
                    };
                    assert_eq!(header_text(&value), value.to_str().ok(), "{bytes:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 50_000);
    }
}
