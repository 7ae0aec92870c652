//! Secrets stored as SHA-256 digests (API keys, basic-auth passwords) and the constant-time
//! comparison used to check what a client presents against them.

use std::fmt;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::encoding::hex32;

/// A SHA-256 digest. Its `Debug` form hides the bytes, so that it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// A digest written as 64 hex digits (either case), as in the configuration.
    pub fn from_hex(text: &str) -> Option<Digest> {
        hex32(text).map(Digest)
    }

    /// Whether both digests are equal, in time that does not depend on where they differ.
    pub fn matches(&self, other: &Digest) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Digest(…)")
    }
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_known_input() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let abc =
            Digest::from_hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
                .unwrap();
        assert!(Digest::of(b"abc").matches(&abc));
        assert!(!Digest::of(b"abd").matches(&abc));
        let upper =
            Digest::from_hex("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD")
                .unwrap();
        assert!(upper.matches(&abc), "hex in either case");
        assert_eq!(format!("{abc:?}"), "Digest(…)", "bytes never printed");
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret!"));
        assert!(!ct_eq(b"", b"x"));
        assert!(ct_eq(b"", b""));
    }
}
