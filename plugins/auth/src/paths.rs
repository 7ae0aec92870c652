//! The allow-list: path prefixes that skip authentication.
//!
//! A prefix matches on whole segments: `/health` matches `/health` and `/health/live` but not
//! `/healthz`; a prefix ending in `/` (`/public/`) matches everything below it. A path that
//! could mean something else once an upstream normalizes it (a `.` or `..` segment, also
//! percent-encoded, an encoded `/` or `\`, or a `\`) never matches, so that
//! `/public/../admin` still needs a credential.

use crate::encoding::percent_decode;

/// Whether `path` (without query) is covered by one of `prefixes`.
pub fn is_allowed(prefixes: &[String], path: &str) -> bool {
    !prefixes.is_empty() && is_plain(path) && prefixes.iter().any(|p| covers(p, path))
}

fn covers(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// No dot segments, no backslashes, no encoded separators.
fn is_plain(path: &str) -> bool {
    if path.contains('\\') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return false;
    }
    path.split('/').all(|segment| {
        let decoded = percent_decode(segment);
        decoded != "." && decoded != ".."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> Vec<String> {
        vec!["/health".into(), "/public/".into()]
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let a = allow();
        assert!(is_allowed(&a, "/health"));
        assert!(is_allowed(&a, "/health/live"));
        assert!(!is_allowed(&a, "/healthz"));
        assert!(is_allowed(&a, "/public/"));
        assert!(is_allowed(&a, "/public/css/site.css"));
        assert!(!is_allowed(&a, "/public"), "the prefix includes its '/'");
        assert!(!is_allowed(&a, "/api/health"));
        assert!(!is_allowed(&a, "/HEALTH"), "case-sensitive");
        assert!(!is_allowed(&[], "/health"));
    }

    #[test]
    fn ambiguous_paths_never_match() {
        let a = allow();
        for p in [
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/%2E./admin",
            "/public/./x",
            "/public/..",
            "/public/a%2fb",
            "/public/a%5Cb",
            "/public\\..\\admin",
            "/health/..",
        ] {
            assert!(!is_allowed(&a, p), "{p}");
        }
        assert!(
            is_allowed(&a, "/public/a..b/c.d"),
            "dots inside names are fine"
        );
    }
}
