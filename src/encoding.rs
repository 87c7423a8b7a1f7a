//! Text encodings of the wire, on the `percent-encoding` crate: URL path segments
//! (`percent_encode_segment`, `percent_decode`), the character set of file names
//! (`FILE_NAME_KEEPS`), and hex digits (`encode_hex`, `decode_hex`).
//!
//! Pure functions on strings and bytes; they know nothing about what the text means.

use std::borrow::Cow;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What a URL path segment keeps as it is: RFC 3986 unreserved (`A-Z a-z 0-9 - . _ ~`).
const PATH_SEGMENT_KEEPS: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a file name keeps as it is: `A-Z a-z 0-9 . _ -` (everything else is escaped).
pub const FILE_NAME_KEEPS: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'_').remove(b'-');

/// Percent-encodes `s` with upper-case hex, keeping only what `keeps` leaves out.
pub fn percent_encode<'a>(s: &'a str, keeps: &'static AsciiSet) -> Cow<'a, str> {
    utf8_percent_encode(s, keeps).into()
}

/// Percent-encodes a key for use as one URL path segment (RFC 3986 unreserved kept).
pub fn percent_encode_segment(s: &str) -> String {
    percent_encode(s, PATH_SEGMENT_KEEPS).into_owned()
}

/// Decodes `%XX` escapes (any case) in a URL path segment. Returns `None` for a broken
/// escape (`%`, `%4`, `%zz`) or a result that is not UTF-8; `+` is kept as is (paths,
/// not forms).
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let whole_escapes = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !whole_escapes {
        return None;
    }
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

/// Lowercase hex digits of `bytes`, in one allocation of the final size.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Decodes hex digits (either case) into `out`, which must be exactly half as long as
/// `hex`. `false` (with `out` partly written) for any other length or a non-hex byte.
pub fn decode_hex(hex: &[u8], out: &mut [u8]) -> bool {
    if hex.len() != 2 * out.len() {
        return false;
    }
    let digit = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => *byte = hi << 4 | lo,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("db%2Fpassword").as_deref(),
            Some("db/password")
        );
        assert_eq!(percent_decode("a%2fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("plain+key").as_deref(), Some("plain+key"));
        assert_eq!(percent_decode("%C3%BC").as_deref(), Some("ü"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("a%"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
        assert_eq!(percent_encode_segment("db/pass word"), "db%2Fpass%20word");
        assert_eq!(percent_encode_segment("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(percent_encode_segment("ü"), "%C3%BC");
    }

    #[test]
    fn hex_digits() {
        assert_eq!(encode_hex(&[0x0a, 0xff, 0x00]), "0aff00");
        assert_eq!(encode_hex(&[]), "");
        let mut out = [0u8; 2];
        assert!(decode_hex(b"0aFf", &mut out));
        assert_eq!(out, [0x0a, 0xff]);
        assert!(!decode_hex(b"0g00", &mut out));
        assert!(!decode_hex(b"000", &mut out));
    }
}
