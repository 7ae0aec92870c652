//! Small codecs shared by the credential parsers: base64url (JWS), hex (configured digests),
//! percent-decoding (query parameters) and the checks on names and values that go into HTTP
//! headers.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Decodes unpadded base64url (RFC 7515 §2). Padding, other alphabets and non-canonical
/// trailing bits are refused.
pub fn base64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Decodes exactly 64 hex digits (either case) into 32 bytes.
pub fn hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `text` (`+` as a space, bad escapes kept as they are), as the SDK's
/// `query_param` does, so that a parameter is found and removed under the same name.
pub fn percent_decode(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex_digit(b[i + 1]), hex_digit(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h << 4) | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `name` is an HTTP token (RFC 9110 §5.6.2), so that it can name a header.
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` can be written as a header value: no control characters (tabs aside).
pub fn is_header_value(value: &str) -> bool {
    !value.chars().any(|c| c.is_control() && c != '\t')
}

/// Whether `value` can go inside a quoted string of a `WWW-Authenticate` parameter without
/// escaping: printable ASCII, spaces allowed, no `"` nor `\`.
pub fn is_quotable(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_is_strict() {
        assert_eq!(base64url("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64url("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(base64url("").as_deref(), Some(&b""[..]));
        assert_eq!(base64url("aGk="), None, "padding refused");
        assert_eq!(base64url("+/8"), None, "standard alphabet refused");
        assert_eq!(
            base64url("aGl"),
            None,
            "non-canonical trailing bits refused"
        );
        assert_eq!(base64url("a"), None, "impossible length");
        assert_eq!(base64url("aG k"), None);
    }

    #[test]
    fn hex_digests() {
        let text = "00ff10AbCdEf".to_string() + &"0".repeat(52);
        let bytes = hex32(&text).unwrap();
        assert_eq!(&bytes[..6], &[0x00, 0xff, 0x10, 0xab, 0xcd, 0xef]);
        assert_eq!(hex32(&"0".repeat(63)), None);
        assert_eq!(hex32(&"0".repeat(65)), None);
        assert_eq!(hex32(&("g".to_string() + &"0".repeat(63))), None);
    }

    #[test]
    fn percent_decoding_matches_the_sdk() {
        assert_eq!(percent_decode("api%5Fkey"), "api_key");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode("50%"), "50%");
    }

    #[test]
    fn names_and_values() {
        assert!(is_token("x-auth-subject"));
        assert!(!is_token(""));
        assert!(!is_token("x auth"));
        assert!(!is_token(":path"));
        assert!(is_header_value("alice@example.com"));
        assert!(!is_header_value("a\r\nx-admin: 1"));
        assert!(is_quotable("api v2"));
        assert!(!is_quotable("a\"b"));
        assert!(!is_quotable("a\\b"));
        assert!(!is_quotable("é"));
    }
}
