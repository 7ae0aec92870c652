//! International Bank Account Numbers (ISO 13616): the length of each country's IBAN and the
//! mod-97 check (ISO 7064).

/// Fewest characters of an IBAN (Norway).
pub const MIN_LEN: usize = 15;
/// Most characters of an IBAN.
pub const MAX_LEN: usize = 34;

/// IBAN lengths of the countries of the IBAN registry, by country code.
const LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// The IBAN length of `country` (two upper-case letters), if it is in the table.
pub fn country_length(country: &[u8]) -> Option<usize> {
    LENGTHS
        .iter()
        .find(|(code, _)| code.as_slice() == country)
        .map(|&(_, len)| len)
}

/// Whether `iban` (upper-case letters and digits, no spaces) passes the mod-97 check: check
/// digits 02–98, and the number made of the BBAN, the country code (letters as 10–35) and the
/// check digits is 1 modulo 97.
pub fn mod97(iban: &[u8]) -> bool {
    if iban.len() < 4 || !iban[2..4].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let check = u32::from(iban[2] - b'0') * 10 + u32::from(iban[3] - b'0');
    if !(2..=98).contains(&check) {
        return false;
    }
    let mut rem = 0u32;
    for &b in iban[4..].iter().chain(&iban[..4]) {
        rem = match b {
            b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(b - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

/// Finds an IBAN at the start of `text`: a country code, two check digits and the BBAN, in
/// upper case, with single spaces allowed between characters (two spaces end it). Returns the length in bytes of
/// the valid IBAN, or `None`.
///
/// For a country in the table the IBAN has exactly that country's length, and must end at
/// the end of `text` or before a space. For another country, the longest prefix of 15–34
/// characters that ends at the end of `text` or before a space and passes the mod-97 check
/// is taken.
pub fn valid_prefix(text: &[u8]) -> Option<usize> {
    // The IBAN's characters without spaces, and where each ends in `text`.
    let mut chars = Vec::with_capacity(MAX_LEN);
    let mut ends = Vec::with_capacity(MAX_LEN);
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'A'..=b'Z' | b'0'..=b'9' => {
                if chars.len() == MAX_LEN {
                    break;
                }
                chars.push(b);
                ends.push(i + 1);
            }
            b' ' if i + 1 < text.len() && text[i + 1] == b' ' => break,
            b' ' => {}
            _ => break,
        }
    }
    // A prefix of `n` characters may end there if it is all of `text` or a space follows.
    let ends_well = |n: usize| {
        let end = ends[n - 1];
        end == text.len() || text[end] == b' '
    };
    if chars.len() < MIN_LEN || !chars[..2].iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    match country_length(&chars[..2]) {
        Some(len) => {
            (chars.len() >= len && ends_well(len) && mod97(&chars[..len])).then(|| ends[len - 1])
        }
        None => (MIN_LEN..=chars.len())
            .rev()
            .find(|&n| ends_well(n) && mod97(&chars[..n]))
            .map(|n| ends[n - 1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Example IBANs published by the national banks / the IBAN registry.
    const VALID: &[&str] = &[
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
        "BE68539007547034",
        "NO9386011117947",
        "CH9300762011623852957",
        "IT60X0542811101000000123456",
        "ES9121000418450200051332",
        "MT84MALT011000012345MTLCAST001S",
    ];

    #[test]
    fn published_examples_pass() {
        for iban in VALID {
            assert!(mod97(iban.as_bytes()), "{iban}");
            assert_eq!(valid_prefix(iban.as_bytes()), Some(iban.len()), "{iban}");
        }
    }

    #[test]
    fn a_changed_character_fails() {
        assert!(!mod97(b"DE89370400440532013001"));
        assert!(!mod97(b"DE88370400440532013000"));
        assert!(!mod97(b"GB82WEST12345698765433"));
        assert_eq!(valid_prefix(b"DE89370400440532013001"), None);
    }

    #[test]
    fn check_digits_outside_02_to_98_fail() {
        assert!(!mod97(b"DE00370400440532013000"));
        assert!(!mod97(b"DE99370400440532013000"));
        assert!(!mod97(b"DExx370400440532013000"));
        assert!(!mod97(b"DE8"));
    }

    #[test]
    fn spaces_between_groups_are_allowed() {
        let t = b"DE89 3704 0044 0532 0130 00";
        assert_eq!(valid_prefix(t), Some(t.len()));
        let t = b"GB82 WEST 1234 5698 7654 32";
        assert_eq!(valid_prefix(t), Some(t.len()));
        assert_eq!(valid_prefix(b"DE89 3704 0044  0532 0130 00"), None);
    }

    #[test]
    fn the_country_length_decides_where_it_ends() {
        // Followed by another group: the IBAN is the first 22 characters.
        let t = b"DE89 3704 0044 0532 0130 00 1234";
        assert_eq!(valid_prefix(t), Some(27));
        // One character too many, glued on: not an IBAN of Germany.
        assert_eq!(valid_prefix(b"DE893704004405320130001"), None);
        // Too short for its country.
        assert_eq!(valid_prefix(b"DE8937040044053201300"), None);
    }

    #[test]
    fn other_countries_use_the_longest_valid_prefix() {
        // "ZZ" is not in the table; this one passes mod-97 at 18 characters.
        let body = b"ZZ00123456789012345";
        let mut iban = body[..18].to_vec();
        // Find check digits making it valid.
        let check = (2..=98)
            .find(|c| {
                iban[2] = b'0' + (c / 10) as u8;
                iban[3] = b'0' + (c % 10) as u8;
                mod97(&iban)
            })
            .expect("some check digits are valid");
        assert!((2..=98).contains(&check));
        assert_eq!(valid_prefix(&iban), Some(18));
        let spaced = [&iban[..], b" ABCD"].concat();
        assert_eq!(valid_prefix(&spaced), Some(18));
    }

    #[test]
    fn lower_case_and_short_text_are_refused() {
        assert_eq!(valid_prefix(b"de89370400440532013000"), None);
        assert_eq!(valid_prefix(b"DE89"), None);
        assert_eq!(valid_prefix(b""), None);
        assert_eq!(country_length(b"DE"), Some(22));
        assert_eq!(country_length(b"ZZ"), None);
    }
}
