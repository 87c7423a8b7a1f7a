//! Text encodings of the wire: percent-encoding of URL path segments and hex digits.
//!
//! Pure functions on strings and bytes; they know nothing about what the text means.

/// Upper-case hex digits, as percent-encoding writes them.
pub const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Decodes `%XX` escapes (any case) in a URL path segment. Returns `None` for a broken
/// escape or a result that is not UTF-8; `+` is kept as is (paths, not forms).
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    if !bytes.contains(&b'%') {
        return Some(s.to_owned());
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_val(*bytes.get(i + 1)?)?;
            let lo = hex_val(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes a key for use as one URL path segment (RFC 3986 unreserved kept).
pub fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(HEX[(b >> 4) as usize]));
            out.push(char::from(HEX[(b & 0xf) as usize]));
        }
    }
    out
}

/// The value of one hexadecimal digit (either case).
pub fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
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
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
        assert_eq!(percent_encode_segment("db/pass word"), "db%2Fpass%20word");
    }
}
