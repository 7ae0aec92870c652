//! Basic authentication (RFC 7617): a user name and a password in `Authorization: Basic`.
//! Passwords are configured as SHA-256 digests; names and passwords are compared in constant
//! time against every configured user.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::secret::Digest;

/// One configured user.
#[derive(Debug)]
pub struct User {
    /// The name, forwarded upstream.
    pub name: String,
    /// SHA-256 of the name (compared in constant time).
    pub name_digest: Digest,
    /// SHA-256 of the password.
    pub password: Digest,
}

/// The configured users.
#[derive(Debug)]
pub struct Users {
    /// The users.
    pub users: Vec<User>,
    /// The header the user's name is forwarded in.
    pub user_header: String,
}

impl Users {
    /// The name of the user `user` if `password` is theirs. Every user is compared.
    pub fn check(&self, user: &str, password: &str) -> Option<&str> {
        let name = Digest::of(user.as_bytes());
        let pass = Digest::of(password.as_bytes());
        let mut found = None;
        for u in &self.users {
            // Both comparisons always run.
            let name_ok = u.name_digest.matches(&name);
            let pass_ok = u.password.matches(&pass);
            if name_ok & pass_ok && found.is_none() {
                found = Some(u.name.as_str());
            }
        }
        found
    }
}

/// The user name and password of Basic `credentials` (the part after the scheme): base64
/// of UTF-8 `user:password`. `None` if it is not that.
pub fn decode(credentials: &str) -> Option<(String, String)> {
    let bytes = STANDARD.decode(credentials.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        let user = |name: &str, password: &str| User {
            name: name.into(),
            name_digest: Digest::of(name.as_bytes()),
            password: Digest::of(password.as_bytes()),
        };
        Users {
            users: vec![user("alice", "wonderland"), user("bob", "builder")],
            user_header: "x-auth-user".into(),
        }
    }

    #[test]
    fn credentials_decode() {
        // RFC 7617 §2's example.
        assert_eq!(
            decode("QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Some(("Aladdin".into(), "open sesame".into()))
        );
        assert_eq!(
            decode(&STANDARD.encode("u:p:with:colons")),
            Some(("u".into(), "p:with:colons".into()))
        );
        assert_eq!(decode(&STANDARD.encode("nocolon")), None);
        assert_eq!(decode("!!!"), None);
        assert_eq!(
            decode(&STANDARD.encode([0xff, b':', b'x'])),
            None,
            "not UTF-8"
        );
    }

    #[test]
    fn users_and_passwords() {
        let u = users();
        assert_eq!(u.check("alice", "wonderland"), Some("alice"));
        assert_eq!(u.check("bob", "builder"), Some("bob"));
        assert_eq!(u.check("alice", "builder"), None, "another user's password");
        assert_eq!(u.check("carol", "wonderland"), None);
        assert_eq!(u.check("Alice", "wonderland"), None);
        assert_eq!(u.check("", ""), None);
    }
}
