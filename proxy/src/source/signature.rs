//! Ed25519 detached signatures over a plugin's `.wasm` bytes.
//!
//! A signature is 64 bytes; its file holds them raw or as base64 text (both are accepted;
//! `sluice plugin sign` writes base64). A public key is 32 bytes, written in the config as
//! base64. A private key file holds a PKCS#8 document as base64 text (what
//! `sluice plugin keygen` writes).
//!
//! Where a plugin's signature lives depends on its source: `<path>.sig` beside a local file,
//! `<url>.sig` for a URL, and a layer of media type [`SIGNATURE_MEDIA_TYPE`] in the same
//! manifest for an OCI image.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};

/// Media type of the OCI layer holding a plugin's signature (base64 text of the 64 bytes).
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.sluice.wasm.signature.v1";

/// Length of an ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// The signature check configured for a plugin: the public key its signature must verify with.
#[derive(Clone, PartialEq, Eq)]
pub struct SignatureCheck {
    /// The ed25519 public key.
    pub public_key: [u8; PUBLIC_KEY_LEN],
}

impl std::fmt::Debug for SignatureCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureCheck")
            .field("public_key", &STANDARD.encode(self.public_key))
            .finish()
    }
}

impl SignatureCheck {
    /// Parses the base64 text of a 32-byte public key (surrounding white space is ignored).
    pub fn from_base64(text: &str) -> Result<SignatureCheck, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| format!("is not base64: {e}"))?;
        let public_key: [u8; PUBLIC_KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "decodes to {} bytes; an ed25519 public key has {PUBLIC_KEY_LEN}",
                bytes.len()
            )
        })?;
        Ok(SignatureCheck { public_key })
    }

    /// The public key as base64.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.public_key)
    }

    /// Checks `signature` (a signature file's content, raw or base64) over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        let signature = decode_signature(signature)?;
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(message, &signature)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// There is no signature where it should be.
    #[error("no signature: {0}")]
    Missing(String),
    /// The signature file is neither 64 raw bytes nor base64 of 64 bytes.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// The signature does not verify with the configured public key.
    #[error("the signature does not verify with the configured public key (signed by another key, or the binary was changed after signing)")]
    Mismatch,
}

/// Decodes a signature file: 64 raw bytes, or base64 text of 64 bytes (white space around
/// it is ignored).
pub fn decode_signature(content: &[u8]) -> Result<[u8; SIGNATURE_LEN], SignatureError> {
    if let Ok(raw) = <[u8; SIGNATURE_LEN]>::try_from(content) {
        return Ok(raw);
    }
    let text = std::str::from_utf8(content).map_err(|_| {
        SignatureError::Malformed(format!(
            "{} bytes that are neither a raw {SIGNATURE_LEN}-byte signature nor base64 text",
            content.len()
        ))
    })?;
    let bytes = STANDARD.decode(text.trim()).map_err(|e| {
        SignatureError::Malformed(format!(
            "{} bytes that are neither a raw {SIGNATURE_LEN}-byte signature nor base64 ({e})",
            content.len()
        ))
    })?;
    <[u8; SIGNATURE_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
        SignatureError::Malformed(format!(
            "base64 of {} bytes; an ed25519 signature has {SIGNATURE_LEN}",
            bytes.len()
        ))
    })
}

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("{path}: {message}")]
    Io {
        /// The key file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The key file is not base64 of a PKCS#8 ed25519 key.
    #[error("{path}: not an ed25519 private key (base64 of PKCS#8, as `sluice plugin keygen` writes): {message}")]
    Invalid {
        /// The key file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The system random generator failed.
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

/// A new ed25519 key pair: its PKCS#8 document and its public key.
pub fn generate() -> Result<(Vec<u8>, SignatureCheck), KeyError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| KeyError::Generate(e.to_string()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let public_key = public_key_of(&pair);
    Ok((pkcs8.as_ref().to_vec(), public_key))
}

/// The public half of a key pair.
pub fn public_key_of(pair: &Ed25519KeyPair) -> SignatureCheck {
    let mut public_key = [0u8; PUBLIC_KEY_LEN];
    public_key.copy_from_slice(pair.public_key().as_ref());
    SignatureCheck { public_key }
}

/// Writes a new private key to `path` (base64 of PKCS#8, mode 0600; refuses to overwrite a
/// file) and returns its public key.
pub fn keygen(path: &Path) -> Result<SignatureCheck, KeyError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let (pkcs8, public_key) = generate()?;
    let io = |e: std::io::Error| KeyError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Io {
                    path: path.display().to_string(),
                    message: "already exists; a new key is only written to a new file".into(),
                }
            } else {
                io(e)
            }
        })?;
    file.write_all(format!("{}\n", STANDARD.encode(&pkcs8)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    Ok(public_key)
}

/// Reads a private key file written by [`keygen`].
pub fn load_private_key(path: &Path) -> Result<Ed25519KeyPair, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeyError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let invalid = |message: String| KeyError::Invalid {
        path: path.display().to_string(),
        message,
    };
    let der = STANDARD
        .decode(text.trim())
        .map_err(|e| invalid(format!("not base64: {e}")))?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| invalid(e.to_string()))
}

/// Signs `message`: the 64-byte signature.
pub fn sign(key: &Ed25519KeyPair, message: &[u8]) -> [u8; SIGNATURE_LEN] {
    let mut out = [0u8; SIGNATURE_LEN];
    out.copy_from_slice(key.sign(message).as_ref());
    out
}

/// A signature as the text of a signature file (base64 and a new line).
pub fn signature_text(signature: &[u8; SIGNATURE_LEN]) -> String {
    format!("{}\n", STANDARD.encode(signature))
}

/// Signs the file `path` with the key in `key_file` and writes `<path>.sig` (base64);
/// returns the signature file's path.
pub fn sign_file(path: &Path, key_file: &Path) -> Result<std::path::PathBuf, KeyError> {
    let key = load_private_key(key_file)?;
    let bytes = std::fs::read(path).map_err(|e| KeyError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let out = sig_path(path);
    std::fs::write(&out, signature_text(&sign(&key, &bytes))).map_err(|e| KeyError::Io {
        path: out.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(out)
}

/// `<path>.sig`: where the signature of a local plugin file is.
pub fn sig_path(path: &Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sig");
    s.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Ed25519KeyPair, SignatureCheck) {
        let (pkcs8, public) = generate().unwrap();
        (Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap(), public)
    }

    #[test]
    fn raw_and_base64_signatures_are_both_accepted() {
        let (key, public) = pair();
        let sig = sign(&key, b"module bytes");
        public.verify(b"module bytes", &sig).unwrap();
        public
            .verify(b"module bytes", signature_text(&sig).as_bytes())
            .unwrap();
        // White space and CRLF around the base64 text are ignored.
        let padded = format!("  {}\r\n\n", STANDARD.encode(sig));
        public.verify(b"module bytes", padded.as_bytes()).unwrap();
        assert_eq!(decode_signature(&sig).unwrap(), sig);
    }

    #[test]
    fn malformed_signature_files_are_refused() {
        for (content, why) in [
            (&b""[..], "base64 of 0 bytes"),
            (&b"not base64 at all!"[..], "neither"),
            (&[0xff, 0xfe, 0x00][..], "neither"),
            (&[0u8; 63][..], "neither"),
            (STANDARD.encode([1u8; 32]).as_bytes(), "base64 of 32 bytes"),
        ] {
            match decode_signature(content) {
                Err(SignatureError::Malformed(m)) => {
                    assert!(m.contains(why), "{m:?} should say {why:?}")
                }
                other => panic!("{content:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_changed_message_or_another_key_does_not_verify() {
        let (key, public) = pair();
        let (_, other) = pair();
        let sig = sign(&key, b"module bytes");
        assert_eq!(
            public.verify(b"module bytez", &sig),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            other.verify(b"module bytes", &sig),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn public_keys_parse_from_base64_of_32_bytes() {
        let (_, public) = pair();
        let text = public.public_key_base64();
        assert_eq!(SignatureCheck::from_base64(&text).unwrap(), public);
        assert_eq!(
            SignatureCheck::from_base64(&format!(" {text}\n")).unwrap(),
            public
        );
        let e = SignatureCheck::from_base64("AAAA").unwrap_err();
        assert!(e.contains("decodes to 3 bytes"), "{e}");
        let e = SignatureCheck::from_base64("%%%").unwrap_err();
        assert!(e.contains("not base64"), "{e}");
    }

    #[test]
    fn keygen_writes_a_private_file_and_sign_file_a_verifiable_signature() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("sluice-sig-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        let _ = std::fs::remove_file(&key);
        let public = keygen(&key).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(keygen(&key)
            .unwrap_err()
            .to_string()
            .contains("already exists"));
        let wasm = dir.join("p.wasm");
        std::fs::write(&wasm, b"\0asm\x01\0\0\0").unwrap();
        let sig = sign_file(&wasm, &key).unwrap();
        assert_eq!(sig, dir.join("p.wasm.sig"));
        public
            .verify(b"\0asm\x01\0\0\0", &std::fs::read(&sig).unwrap())
            .unwrap();
        std::fs::write(&key, "garbage").unwrap();
        assert!(matches!(
            load_private_key(&key),
            Err(KeyError::Invalid { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
