//! What to do with a body, decided from its message's headers before any of it arrives:
//! leave it alone, mask it, or handle it as a body that cannot be masked.

use crate::config::Settings;

/// The headers of a message that decide what happens to its body.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyHeaders<'a> {
    /// `content-type`.
    pub content_type: Option<&'a str>,
    /// `content-encoding`.
    pub content_encoding: Option<&'a str>,
    /// `content-length`.
    pub content_length: Option<&'a str>,
}

impl BodyHeaders<'_> {
    /// The declared length, if there is a valid one.
    pub fn length(&self) -> Option<u64> {
        self.content_length?.trim().parse().ok()
    }
}

/// Why a body cannot be masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmaskable {
    /// It is larger than `max_body_bytes` (at least this many bytes).
    TooLarge(u64),
    /// It is compressed (this `content-encoding`).
    Encoded(String),
}

impl std::fmt::Display for Unmaskable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unmaskable::TooLarge(n) => write!(f, "it is over max_body_bytes ({n} bytes or more)"),
            Unmaskable::Encoded(e) => write!(f, "it is compressed (content-encoding: {e})"),
        }
    }
}

/// What happens to a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Not masked: there is none, masking of its direction is off, or its type is not masked.
    Skip,
    /// Masked once complete.
    Mask,
    /// It should be masked but cannot be.
    Unmaskable(Unmaskable),
}

/// The plan for a body of a message with `headers`, when masking of its direction is
/// `enabled` and `end_of_stream` says whether the headers end the message.
pub fn plan(
    settings: &Settings,
    enabled: bool,
    end_of_stream: bool,
    headers: &BodyHeaders,
) -> Plan {
    if !enabled || end_of_stream || !settings.masks_type(headers.content_type) {
        return Plan::Skip;
    }
    if let Some(encoding) = headers.content_encoding {
        let encoding = encoding.trim().to_ascii_lowercase();
        if !encoding.is_empty() && encoding != "identity" {
            return Plan::Unmaskable(Unmaskable::Encoded(encoding));
        }
    }
    match headers.length() {
        Some(n) if n > settings.max_body_bytes as u64 => Plan::Unmaskable(Unmaskable::TooLarge(n)),
        _ => Plan::Mask,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;

    fn settings(json: &str) -> Settings {
        let file: ConfigFile = serde_json::from_str(json).unwrap();
        Settings::from_file(file).unwrap()
    }

    fn json(len: &str) -> BodyHeaders<'_> {
        BodyHeaders {
            content_type: Some("application/json"),
            content_encoding: None,
            content_length: Some(len),
        }
    }

    #[test]
    fn masks_bodies_of_matching_types_within_the_cap() {
        let s = settings(r#"{"max_body_bytes": 100}"#);
        assert_eq!(plan(&s, true, false, &json("100")), Plan::Mask);
        assert_eq!(plan(&s, true, false, &BodyHeaders::default()), Plan::Mask);
        let chunked = BodyHeaders {
            content_type: Some("text/plain"),
            ..BodyHeaders::default()
        };
        assert_eq!(plan(&s, true, false, &chunked), Plan::Mask);
    }

    #[test]
    fn skips_when_off_bodiless_or_of_another_type() {
        let s = settings("{}");
        assert_eq!(plan(&s, false, false, &json("10")), Plan::Skip);
        assert_eq!(plan(&s, true, true, &json("0")), Plan::Skip);
        let png = BodyHeaders {
            content_type: Some("image/png"),
            ..json("10")
        };
        assert_eq!(plan(&s, true, false, &png), Plan::Skip);
    }

    #[test]
    fn large_or_compressed_bodies_cannot_be_masked() {
        let s = settings(r#"{"max_body_bytes": 100}"#);
        assert_eq!(
            plan(&s, true, false, &json("101")),
            Plan::Unmaskable(Unmaskable::TooLarge(101))
        );
        let gz = BodyHeaders {
            content_encoding: Some(" GZIP"),
            ..json("10")
        };
        assert_eq!(
            plan(&s, true, false, &gz),
            Plan::Unmaskable(Unmaskable::Encoded("gzip".into()))
        );
        let identity = BodyHeaders {
            content_encoding: Some("identity"),
            ..json("10")
        };
        assert_eq!(plan(&s, true, false, &identity), Plan::Mask);
        // A length that does not parse is no length: the cap is checked as the body arrives.
        assert_eq!(plan(&s, true, false, &json("lots")), Plan::Mask);
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            Unmaskable::TooLarge(7).to_string(),
            "it is over max_body_bytes (7 bytes or more)"
        );
        assert_eq!(
            Unmaskable::Encoded("br".into()).to_string(),
            "it is compressed (content-encoding: br)"
        );
    }
}
