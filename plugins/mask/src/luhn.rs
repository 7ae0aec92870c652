//! The Luhn (mod-10) checksum of payment card numbers.

/// Fewest digits of a card number.
pub const MIN_DIGITS: usize = 13;
/// Most digits of a card number.
pub const MAX_DIGITS: usize = 19;

/// Whether the digits of `number` pass the Luhn check. Spaces and dashes between digits are
/// ignored; any other byte, or fewer than two digits, fails.
pub fn check(number: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut digits = 0usize;
    for &b in number.iter().rev() {
        match b {
            b'0'..=b'9' => {
                let mut d = u32::from(b - b'0');
                // Every second digit from the right is doubled; 10..=18 fold to 1..=9.
                if digits % 2 == 1 {
                    d *= 2;
                    if d > 9 {
                        d -= 9;
                    }
                }
                sum += d;
                digits += 1;
            }
            b' ' | b'-' => {}
            _ => return false,
        }
    }
    digits >= 2 && sum % 10 == 0
}

/// Whether `text` is a card number: 13–19 digits (spaces and dashes between them allowed)
/// that pass the Luhn check.
pub fn is_card_number(text: &[u8]) -> bool {
    let digits = text.iter().filter(|b| b.is_ascii_digit()).count();
    (MIN_DIGITS..=MAX_DIGITS).contains(&digits) && check(text)
}

/// Finds the first card number in `run`, a run of digits with single spaces or dashes between
/// them. A card number starts at the start of a group (the run's first digit, or a digit after
/// a separator) and ends at the end of a group; from each start the longest card number is
/// taken. `can_start`: the run's first digit may start one (no letter or digit is glued before
/// the run); `can_end`: the run's last digit may end one. Returns the card's start and end in
/// `run`.
///
/// So in `555 4111 1111 1111 1111 123` the card is `4111 1111 1111 1111`, though the run as a
/// whole, and its first 19 digits, fail the check.
pub fn find_card(run: &[u8], can_start: bool, can_end: bool) -> Option<(usize, usize)> {
    let is_sep = |b: &u8| matches!(b, b' ' | b'-');
    let starts = (can_start && !run.is_empty())
        .then_some(0)
        .into_iter()
        .chain(
            run.iter()
                .enumerate()
                .filter(|(_, b)| is_sep(b))
                .map(|(i, _)| i + 1),
        );
    for start in starts {
        // Walk the groups from `start`: each group's end (before a separator, or the run's
        // end if that may end a card) with 13–19 digits so far is a candidate; the last one
        // passing the check is the longest card from `start`.
        let mut digits = 0;
        let mut longest = None;
        for (i, b) in run[start..].iter().enumerate() {
            let end = start + i;
            if is_sep(b) {
                if digits >= MIN_DIGITS && check(&run[start..end]) {
                    longest = Some(end);
                }
            } else {
                digits += 1;
                if digits > MAX_DIGITS {
                    break;
                }
            }
        }
        let at_end = can_end && (MIN_DIGITS..=MAX_DIGITS).contains(&digits);
        if at_end && check(&run[start..]) {
            longest = Some(run.len());
        }
        if let Some(end) = longest {
            return Some((start, end));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_test_numbers_pass() {
        for n in [
            "4111111111111111",    // Visa
            "5555555555554444",    // Mastercard
            "378282246310005",     // American Express (15 digits)
            "6011111111111117",    // Discover
            "4222222222222",       // Visa, 13 digits
            "6304000000000000018", // Maestro? any 19-digit number passing the check
        ] {
            assert!(check(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn a_changed_digit_fails() {
        assert!(!check(b"4111111111111112"));
        assert!(!check(b"5555555555554445"));
        assert!(!check(b"378282246310006"));
    }

    #[test]
    fn separators_are_ignored_and_other_bytes_fail() {
        assert!(check(b"4111 1111 1111 1111"));
        assert!(check(b"4111-1111-1111-1111"));
        assert!(!check(b"4111.1111.1111.1111"));
        assert!(!check(b"4111x111111111111"));
    }

    #[test]
    fn too_few_digits_fail() {
        assert!(!check(b""));
        assert!(!check(b"0"));
        assert!(!check(b" - "));
        assert!(check(b"00"), "two digits are enough for the bare checksum");
    }

    #[test]
    fn card_numbers_need_13_to_19_digits() {
        // 12 digits passing Luhn: too short for a card.
        assert!(check(b"000000000000"));
        assert!(!is_card_number(b"000000000000"));
        // 20 digits passing Luhn: too long.
        assert!(check(b"00000000000000000000"));
        assert!(!is_card_number(b"00000000000000000000"));
        assert!(is_card_number(b"4222222222222"));
        assert!(is_card_number(b"4111 1111 1111 1111"));
        assert!(!is_card_number(b"4111 1111 1111 1112"));
    }

    #[test]
    fn cards_are_found_group_by_group_in_a_run() {
        assert_eq!(find_card(b"4111111111111111", true, true), Some((0, 16)));
        assert_eq!(find_card(b"4111 1111 1111 1111", true, true), Some((0, 19)));
        // Trailing groups that make the whole run fail are left out.
        assert_eq!(
            find_card(b"4111 1111 1111 1111 123", true, true),
            Some((0, 19))
        );
        assert_eq!(
            find_card(b"4111-1111-1111-1111-9", true, true),
            Some((0, 19))
        );
        // Leading groups too.
        let run = b"555 4111 1111 1111 1111 123";
        assert_eq!(find_card(run, true, true), Some((4, 23)));
        // Glued to a word: the first group cannot start a card, the last cannot end one.
        assert_eq!(find_card(b"4111111111111111", false, true), None);
        assert_eq!(find_card(b"4111111111111111", true, false), None);
        assert_eq!(find_card(b"4111111111111111 1", true, false), Some((0, 16)));
        // No card.
        assert_eq!(find_card(b"4111 1111 1111 1112 123", true, true), None);
        assert_eq!(find_card(b"411111111111111", true, true), None);
        assert_eq!(find_card(b"41111111111111110000", true, true), None);
        assert_eq!(find_card(b"", true, true), None);
    }
}
