//! What a plugin may see and change.
//!
//! By default no plugin sees or changes credentials (`authorization`, `proxy-authorization`,
//! `cookie`, `set-cookie`) nor the client's address (`x-forwarded-for`, `x-real-ip`,
//! `forwarded` and the `source.*` properties). The operator adds names to the hidden list
//! (`sanitize.extra_headers`) and grants a plugin what it needs (`expose:`).

/// Credential headers hidden by default.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];
/// Headers that carry the client's address, hidden unless `client_address` is exposed.
pub const ADDRESS_HEADERS: &[&str] = &["x-forwarded-for", "x-real-ip", "forwarded"];
/// The `expose:` entry that grants the client's address.
pub const CLIENT_ADDRESS: &str = "client_address";

/// One plugin's view.
#[derive(Debug, Clone, Default)]
pub struct Sanitizer {
    hidden: Vec<Vec<u8>>,
    client_address: bool,
}

impl Sanitizer {
    /// The view for a plugin with these grants, given the operator's extra hidden names.
    /// Names are compared case-insensitively; `_` in an `expose` entry stands for `-`.
    pub fn new(expose: &[String], extra_hidden: &[String]) -> Sanitizer {
        let exposed: Vec<String> = expose.iter().map(|e| normalize(e)).collect();
        let client_address = exposed.iter().any(|e| e == CLIENT_ADDRESS);
        let mut hidden: Vec<Vec<u8>> = Vec::new();
        let candidates = CREDENTIAL_HEADERS
            .iter()
            .map(|s| s.to_string())
            .chain(
                ADDRESS_HEADERS
                    .iter()
                    .filter(|_| !client_address)
                    .map(|s| s.to_string()),
            )
            .chain(extra_hidden.iter().map(|s| normalize(s)));
        for name in candidates {
            if !exposed.contains(&name) && !hidden.iter().any(|h| h == name.as_bytes()) {
                hidden.push(name.into_bytes());
            }
        }
        Sanitizer {
            hidden,
            client_address,
        }
    }

    /// A view that hides nothing (as on a host without sanitizing; for the test kit).
    pub fn seeing_everything() -> Sanitizer {
        Sanitizer {
            hidden: Vec::new(),
            client_address: true,
        }
    }

    /// Whether the header `name` is hidden from this plugin.
    pub fn hides(&self, name: &[u8]) -> bool {
        self.hidden.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Whether this plugin may see the client's address.
    pub fn sees_client_address(&self) -> bool {
        self.client_address
    }

    /// The hidden names, lower case.
    pub fn hidden(&self) -> impl Iterator<Item = &str> {
        self.hidden
            .iter()
            .map(|h| std::str::from_utf8(h).unwrap_or(""))
    }
}

/// Lower case, `_` → `-` (except for `client_address`).
pub fn normalize(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower == CLIENT_ADDRESS {
        lower
    } else {
        lower.replace('_', "-")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_credentials_and_address_by_default() {
        let s = Sanitizer::new(&[], &[]);
        for h in [
            "Authorization",
            "PROXY-AUTHORIZATION",
            "cookie",
            "Set-Cookie",
            "X-Forwarded-For",
            "x-real-ip",
            "Forwarded",
        ] {
            assert!(s.hides(h.as_bytes()), "{h}");
        }
        assert!(!s.hides(b"x-request-id"));
        assert!(!s.hides(b"host"));
        assert!(!s.sees_client_address());
    }

    #[test]
    fn grants_and_extra_names() {
        let s = Sanitizer::new(
            &[
                "authorization".into(),
                "client_address".into(),
                "X_Secret".into(),
            ],
            &["x-secret".into(), "x-internal".into()],
        );
        assert!(!s.hides(b"authorization"));
        assert!(s.hides(b"cookie"));
        assert!(!s.hides(b"x-forwarded-for"));
        assert!(s.sees_client_address());
        assert!(!s.hides(b"x-secret"), "granted");
        assert!(s.hides(b"X-Internal"));
        assert_eq!(normalize("set_cookie"), "set-cookie");
    }
}
