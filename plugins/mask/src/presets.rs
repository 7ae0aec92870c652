//! The named presets: a regular expression each, and for card numbers and IBANs the checksum
//! a match must pass before it is masked.
//!
//! Every pattern is compiled without Unicode classes (see [`crate::masker::Rule::new`]):
//! `\b`, `[0-9]` and `[A-Za-z]` are ASCII, which keeps the plugin small and the matching fast.

use crate::masker::{Check, Rule};

/// A named preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// E-mail addresses.
    Email,
    /// Payment card numbers: 13–19 digits, single spaces or dashes between digits, Luhn-valid.
    Card,
    /// IBANs: country code, check digits and BBAN, single spaces allowed, mod-97 valid.
    Iban,
    /// The token of `Bearer <token>` (the word `Bearer` is kept).
    Bearer,
}

impl Preset {
    /// Every preset, in the order of the default configuration.
    pub const ALL: [Preset; 4] = [Preset::Email, Preset::Card, Preset::Iban, Preset::Bearer];

    /// The preset named `name` (as in the configuration).
    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Email => "email",
            Preset::Card => "card",
            Preset::Iban => "iban",
            Preset::Bearer => "bearer",
        }
    }

    /// The regular expression that finds candidates; [`Preset::check`] decides which part of
    /// a candidate, if any, is masked, and whether it is glued to a word before it. Candidates
    /// are kept few (a card run needs 13 digits, an IBAN 15 characters): every candidate costs
    /// a search of its own.
    pub fn pattern(self) -> &'static str {
        match self {
            // local@domain.tld: a dot-separated domain ending in a TLD of letters.
            Preset::Email => r"[\w.%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b",
            // A run of digits with single spaces or dashes between them; the card numbers in
            // it are found by the check.
            Preset::Card => r"[0-9](?:[ -]?[0-9]){12,}",
            // Country code, check digits, then upper-case letters, digits and spaces; where
            // the IBAN ends is decided by the check (the country's length).
            Preset::Iban => r"\b[A-Z]{2}[0-9]{2}[A-Z0-9 ]{11,}",
            // The scheme in any case, blanks, then RFC 6750's token characters.
            Preset::Bearer => r"(?i)\bbearer[ \t]+[A-Za-z0-9._~+/-]+=*",
        }
    }

    /// The check a candidate must pass to be masked.
    pub fn check(self) -> Check {
        match self {
            Preset::Email => Check::None,
            Preset::Card => Check::Luhn,
            Preset::Iban => Check::Iban,
            Preset::Bearer => Check::Bearer,
        }
    }

    /// The rule of this preset, replacing what it finds with `replacement`. (The patterns
    /// are constants that the unit tests compile: an error here is a bug of the plugin.)
    pub fn rule(self, replacement: &str) -> Result<Rule, regex::Error> {
        Rule::new(self.name(), self.pattern(), replacement, self.check())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masker::Masker;

    fn mask(preset: Preset, text: &str) -> (String, usize) {
        let m = Masker::new(vec![preset.rule("#").unwrap()]).mask(text.as_bytes());
        let body = m.body.clone().unwrap_or_else(|| text.as_bytes().to_vec());
        (String::from_utf8(body).unwrap(), m.total())
    }

    #[test]
    fn names_round_trip() {
        for p in Preset::ALL {
            assert_eq!(Preset::from_name(p.name()), Some(p));
        }
        assert_eq!(Preset::from_name("Email"), None);
        assert_eq!(Preset::from_name("ssn"), None);
    }

    #[test]
    fn every_preset_compiles() {
        for p in Preset::ALL {
            assert!(p.rule("x").is_ok(), "{}", p.name());
        }
    }

    #[test]
    fn emails() {
        assert_eq!(
            mask(
                Preset::Email,
                r#"{"to":"jane.doe+news@mail.example.co.uk"}"#
            ),
            (r##"{"to":"#"}"##.to_string(), 1)
        );
        assert_eq!(
            mask(Preset::Email, "a@b.io, C_D@x-y.org."),
            ("#, #.".to_string(), 2)
        );
        assert_eq!(mask(Preset::Email, "not@mail, @x.com, a@.com").1, 0);
        assert_eq!(mask(Preset::Email, "user@host.c0m").1, 0);
    }

    #[test]
    fn cards_pass_luhn_or_stay() {
        assert_eq!(
            mask(Preset::Card, "card 4111111111111111 ok"),
            ("card # ok".to_string(), 1)
        );
        assert_eq!(
            mask(Preset::Card, "4111 1111 1111 1111/5555-5555-5555-4444"),
            ("#/#".to_string(), 2)
        );
        assert_eq!(mask(Preset::Card, "378282246310005").1, 1, "15-digit Amex");
        // Digits around the card that make the whole run fail: the card is still found.
        assert_eq!(
            mask(Preset::Card, "4111111111111111 123-45"),
            ("# 123-45".to_string(), 1)
        );
        assert_eq!(
            mask(Preset::Card, "call 555 4111 1111 1111 1111"),
            ("call 555 #".to_string(), 1)
        );
        assert_eq!(
            mask(Preset::Card, "2024-01-01 4111111111111111 5555555555554444"),
            ("2024-01-01 # #".to_string(), 2)
        );
        // Luhn fails.
        assert_eq!(mask(Preset::Card, "4111111111111112").1, 0);
        // Inside a longer number or a word.
        assert_eq!(mask(Preset::Card, "41111111111111110000000").1, 0);
        assert_eq!(mask(Preset::Card, "id4111111111111111").1, 0);
        // Too short, and two separators in a row.
        assert_eq!(mask(Preset::Card, "411111111111").1, 0);
        assert_eq!(mask(Preset::Card, "4111  1111 1111 1111").1, 0);
    }

    #[test]
    fn ibans_pass_mod97_or_stay() {
        assert_eq!(
            mask(Preset::Iban, "IBAN: DE89 3704 0044 0532 0130 00."),
            ("IBAN: #.".to_string(), 1)
        );
        assert_eq!(
            mask(Preset::Iban, r#"{"iban":"GB82WEST12345698765432"}"#),
            (r##"{"iban":"#"}"##.to_string(), 1)
        );
        // The group after the IBAN is not part of it.
        assert_eq!(
            mask(Preset::Iban, "DE89 3704 0044 0532 0130 00 1234"),
            ("# 1234".to_string(), 1)
        );
        // A wrong check digit, and an IBAN glued to more letters.
        assert_eq!(mask(Preset::Iban, "DE88 3704 0044 0532 0130 00").1, 0);
        assert_eq!(mask(Preset::Iban, "DE89370400440532013000x").1, 0);
    }

    #[test]
    fn bearer_tokens_keep_the_scheme() {
        assert_eq!(
            mask(
                Preset::Bearer,
                r#"{"authorization":"Bearer eyJhbGciOi.eyJzdWIi.sig-_x=="}"#
            ),
            (r##"{"authorization":"Bearer #"}"##.to_string(), 1)
        );
        assert_eq!(
            mask(Preset::Bearer, "BEARER abc123\nbearer\txyz"),
            ("BEARER #\nbearer\t#".to_string(), 2)
        );
        assert_eq!(mask(Preset::Bearer, "Bearer: abc").1, 0);
        assert_eq!(mask(Preset::Bearer, "xBearer abc").1, 0);
    }
}
