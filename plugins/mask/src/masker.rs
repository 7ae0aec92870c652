//! Masking a whole body: every rule finds its matches in the original bytes, overlapping
//! matches are resolved (the earliest, then the longest, then the first rule wins), and each
//! chosen match is replaced once. Replaced text is never matched again, so every count is one
//! field of the original body.

use regex::bytes::{Regex, RegexBuilder};

use crate::{iban, luhn};

/// What a candidate (a match of the regular expression) must pass to be masked, and which
/// part of it is masked. A candidate glued to a letter, digit or `_` before it is part of a
/// longer word and fails every check but [`Check::None`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Nothing: the match (or its group named `mask`) is masked.
    None,
    /// The candidate is a run of digits and separators; the card numbers in it (13–19 digits
    /// passing the Luhn check, see [`luhn::find_card`]) are masked.
    Luhn,
    /// An IBAN passing the country length and mod-97 checks (it may end before the candidate
    /// does, see [`iban::valid_prefix`]), not followed by a letter or digit.
    Iban,
    /// `bearer <token>`: the token is masked.
    Bearer,
}

/// One masking rule: a regular expression, an optional check, and the replacement.
#[derive(Debug, Clone)]
pub struct Rule {
    name: String,
    regex: Regex,
    /// The index of the group named `mask`: only that group is replaced.
    group: Option<usize>,
    check: Check,
    replacement: Vec<u8>,
}

impl Rule {
    /// Compiles `pattern` over bytes, with Unicode classes off: `\d`, `\w`, `\s`, `\b` and
    /// case-insensitive matching are ASCII, and `.` matches any byte but `\n`. Literal
    /// non-ASCII characters still match their UTF-8 bytes. If the pattern has a group named
    /// `mask`, only that group is replaced.
    pub fn new(
        name: &str,
        pattern: &str,
        replacement: &str,
        check: Check,
    ) -> Result<Rule, regex::Error> {
        let regex = RegexBuilder::new(pattern).unicode(false).build()?;
        let group = regex.capture_names().position(|n| n == Some(MASK_GROUP));
        Ok(Rule {
            name: name.to_string(),
            regex,
            group,
            check,
            replacement: replacement.as_bytes().to_vec(),
        })
    }

    /// The rule's name (a preset's, or a pattern's from the configuration).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the regular expression matches the empty text (such a pattern would match
    /// between every two bytes).
    pub fn matches_empty(&self) -> bool {
        self.regex.is_match(b"")
    }

    /// Adds the spans of `hay` this rule masks to `out`, tagged with `index`.
    fn find(&self, hay: &[u8], index: usize, out: &mut Vec<Span>) {
        let mut push = |start: usize, end: usize| {
            if start < end {
                out.push(Span {
                    start,
                    end,
                    rule: index,
                });
            }
        };
        match (self.check, self.group) {
            (Check::None, None) => self
                .regex
                .find_iter(hay)
                .for_each(|m| push(m.start(), m.end())),
            (Check::None, Some(g)) => self
                .regex
                .captures_iter(hay)
                .filter_map(|c| c.get(g))
                .for_each(|m| push(m.start(), m.end())),
            (check, _) => {
                let mut at = 0;
                while let Some(m) = self.regex.find_at(hay, at) {
                    match validate(check, hay, m.start(), m.end()) {
                        Ok((start, end)) => {
                            push(start, end);
                            at = end;
                        }
                        Err(next) => at = next,
                    }
                    if at > hay.len() {
                        break;
                    }
                }
            }
        }
    }
}

/// Whether `b` is a character of a word (`\w` in ASCII).
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Checks the candidate `start..end` of `hay`: `Ok` with the span to mask, or `Err` with where
/// to search on.
fn validate(check: Check, hay: &[u8], start: usize, end: usize) -> Result<(usize, usize), usize> {
    let can_start = start == 0 || !is_word(hay[start - 1]);
    let can_end = hay.get(end).is_none_or(|&b| !is_word(b));
    let text = &hay[start..end];
    let span = match check {
        Check::None => Some((start, end)),
        // A run: every card in it was looked for.
        Check::Luhn => {
            return luhn::find_card(text, can_start, can_end)
                .map(|(s, e)| (start + s, start + e))
                .ok_or(end)
        }
        Check::Iban if can_start => iban::valid_prefix(text)
            .map(|len| (start, start + len))
            .filter(|&(_, e)| hay.get(e).is_none_or(|&b| !is_word(b))),
        Check::Bearer if can_start => {
            // Past the scheme (6 bytes) and the blanks after it.
            let blanks = text
                .get(6..)
                .unwrap_or(&[])
                .iter()
                .take_while(|b| matches!(b, b' ' | b'\t'));
            Some((start + 6 + blanks.count(), end))
        }
        Check::Iban | Check::Bearer => None,
    };
    span.filter(|(s, e)| s < e).ok_or(start + 1)
}

/// The name of the capture group that limits the replacement to part of a match.
pub const MASK_GROUP: &str = "mask";

/// A part of the body one rule masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
    rule: usize,
}

/// The result of masking one body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masked {
    /// The masked body; `None` if nothing was masked (the body is unchanged).
    pub body: Option<Vec<u8>>,
    /// Fields masked by each rule, in the order of the rules.
    pub counts: Vec<usize>,
}

impl Masked {
    /// Fields masked in all.
    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }
}

/// The rules of a configuration, applied together to a whole body.
#[derive(Debug, Clone)]
pub struct Masker {
    rules: Vec<Rule>,
}

impl Masker {
    /// A masker of these rules; on overlapping matches of the same length, the earlier rule
    /// wins.
    pub fn new(rules: Vec<Rule>) -> Masker {
        Masker { rules }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Masks `body`.
    pub fn mask(&self, body: &[u8]) -> Masked {
        let mut spans = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            rule.find(body, i, &mut spans);
        }
        let mut counts = vec![0; self.rules.len()];
        if spans.is_empty() {
            return Masked { body: None, counts };
        }
        // The earliest first; at the same start the longest, then the first rule.
        spans.sort_unstable_by_key(|s| (s.start, std::cmp::Reverse(s.end), s.rule));
        let mut out = Vec::with_capacity(body.len());
        let mut pos = 0;
        for s in spans {
            if s.start < pos {
                continue; // Overlaps a span already masked.
            }
            let rule = &self.rules[s.rule];
            out.extend_from_slice(&body[pos..s.start]);
            out.extend_from_slice(&rule.replacement);
            counts[s.rule] += 1;
            pos = s.end;
        }
        out.extend_from_slice(&body[pos..]);
        Masked {
            body: Some(out),
            counts,
        }
    }

    /// A short account of `counts` for logs: `email 2, card 1` (rules that masked nothing
    /// are left out).
    pub fn summary(&self, counts: &[usize]) -> String {
        self.rules
            .iter()
            .zip(counts)
            .filter(|(_, &n)| n > 0)
            .map(|(r, n)| format!("{} {n}", r.name))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, pattern: &str, replacement: &str) -> Rule {
        Rule::new(name, pattern, replacement, Check::None).unwrap()
    }

    fn text(m: &Masked, original: &str) -> String {
        String::from_utf8(
            m.body
                .clone()
                .unwrap_or_else(|| original.as_bytes().to_vec()),
        )
        .unwrap()
    }

    #[test]
    fn replaces_every_match_and_counts_it() {
        let m = Masker::new(vec![rule("ssn", r"\d{3}-\d{2}-\d{4}", "***-**-****")]);
        let body = "a 123-45-6789 b 987-65-4321 c";
        let out = m.mask(body.as_bytes());
        assert_eq!(text(&out, body), "a ***-**-**** b ***-**-**** c");
        assert_eq!(out.counts, vec![2]);
        assert_eq!(out.total(), 2);
    }

    #[test]
    fn nothing_found_leaves_the_body_alone() {
        let m = Masker::new(vec![rule("ssn", r"\d{3}-\d{2}-\d{4}", "x")]);
        let out = m.mask(b"no numbers here");
        assert_eq!(out.body, None);
        assert_eq!(out.total(), 0);
        assert_eq!(m.mask(b"").total(), 0);
    }

    #[test]
    fn only_the_mask_group_is_replaced() {
        let m = Masker::new(vec![rule(
            "key",
            r#""api_key":\s*"(?P<mask>[^"]*)""#,
            "***",
        )]);
        let body = r#"{"api_key": "s3cr3t", "other": "x"}"#;
        let out = m.mask(body.as_bytes());
        assert_eq!(text(&out, body), r#"{"api_key": "***", "other": "x"}"#);
        assert_eq!(out.total(), 1);
    }

    #[test]
    fn overlaps_go_to_the_earliest_then_longest_match() {
        let m = Masker::new(vec![
            rule("short", "bcd", "[S]"),
            rule("long", "abcdef", "[L]"),
        ]);
        let body = "xabcdefx bcd";
        let out = m.mask(body.as_bytes());
        assert_eq!(text(&out, body), "x[L]x [S]");
        assert_eq!(out.counts, vec![1, 1]);
        // Same span: the first rule wins, and the field is counted once.
        let m = Masker::new(vec![rule("a", "abc", "[A]"), rule("b", "abc", "[B]")]);
        let out = m.mask(b"abc");
        assert_eq!(text(&out, "abc"), "[A]");
        assert_eq!(out.counts, vec![1, 0]);
    }

    #[test]
    fn replacements_are_literal_and_never_matched_again() {
        let m = Masker::new(vec![
            rule("digits", "[0-9]+", "$1 NUM"),
            rule("word", "NUM", "no"),
        ]);
        let out = m.mask(b"42");
        assert_eq!(text(&out, "42"), "$1 NUM");
        assert_eq!(out.counts, vec![1, 0]);
    }

    #[test]
    fn classes_are_ascii_and_bytes_need_not_be_utf8() {
        let m = Masker::new(vec![rule("d", r"\d+", "#"), rule("u", "é", "e")]);
        // Arabic-Indic digits are not \d here; invalid UTF-8 is kept as is.
        let body = "١٢٣ 123 é"
            .as_bytes()
            .iter()
            .copied()
            .chain([0xff, b'7'])
            .collect::<Vec<_>>();
        let out = m.mask(&body);
        let mut expected = "١٢٣ # e".as_bytes().to_vec();
        expected.extend_from_slice(&[0xff, b'#']);
        assert_eq!(out.body, Some(expected));
        assert_eq!(out.counts, vec![2, 1]);
    }

    #[test]
    fn empty_matches_are_never_masked() {
        let r = rule("opt", "x?", "#");
        assert!(r.matches_empty());
        assert!(!rule("x", "x", "#").matches_empty());
        let out = Masker::new(vec![r]).mask(b"axbx");
        assert_eq!(text(&out, "axbx"), "a#b#");
        assert_eq!(out.total(), 2);
    }

    #[test]
    fn checks_filter_matches() {
        let card = Rule::new("card", r"\b[0-9]{16}\b", "#", Check::Luhn).unwrap();
        let out = Masker::new(vec![card]).mask(b"4111111111111111 4111111111111112");
        assert_eq!(text(&out, ""), "# 4111111111111112");
        assert_eq!(out.total(), 1);
    }

    #[test]
    fn summary_names_the_rules_that_masked() {
        let m = Masker::new(vec![
            rule("a", "a", "#"),
            rule("b", "b", "#"),
            rule("c", "c", "#"),
        ]);
        let out = m.mask(b"aab");
        assert_eq!(m.summary(&out.counts), "a 2, b 1");
        assert_eq!(m.rules().len(), 3);
        assert_eq!(m.rules()[2].name(), "c");
    }
}
