//! Shared by the auth plugin's tests: the built plugin, kits, fixture keys and token signing.
//! Keys are made once by `fixtures/generate.sh` and checked in; nothing here generates one.

#![allow(dead_code)] // Each test file uses a part.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use p256::pkcs8::DecodePrivateKey as _;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use sluice_testkit::{build_plugin, Kit, KitError, Options};

/// The HS256 secret of the tests (32 bytes).
pub const HMAC_SECRET: &[u8; 32] = b"an HS256 secret of 32 bytes, ok!";
/// The kid of the HS256 key.
pub const HMAC_KID: &str = "h1";

/// The plugin's .wasm, built once per test binary.
pub fn wasm() -> &'static PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| build_plugin(env!("CARGO_MANIFEST_DIR")).expect("the plugin builds"))
}

/// Loads the plugin with `config`, granted `authorization`.
pub fn kit(config: Value) -> Kit {
    try_kit(
        Options::default()
            .config_json(&config)
            .expose(&["authorization"]),
    )
    .expect("the plugin loads")
}

/// Loads the plugin with `options`.
pub fn try_kit(options: Options) -> Result<Kit, KitError> {
    Kit::load(wasm(), options)
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// SHA-256 of `text`, as the 64 hex digits the configuration wants.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The public JWK of fixture key `name` (`rsa-a`, `rsa-b`, `rsa-weak`, `ec-a`, `ec-b`).
pub fn public_jwk(name: &str) -> Value {
    serde_json::from_str(&fixture(&format!("{name}.jwk.json"))).expect("a JSON JWK")
}

/// The HS256 key as a JWK.
pub fn hmac_jwk() -> Value {
    json!({"kty": "oct", "kid": HMAC_KID, "k": URL_SAFE_NO_PAD.encode(HMAC_SECRET)})
}

/// The DER bytes of the PEM private key of fixture `name`.
pub fn private_der(name: &str) -> Vec<u8> {
    let pem = fixture(&format!("{name}.pem"));
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).expect("PEM base64")
}

/// How a test token is signed.
#[derive(Debug, Clone, Copy)]
pub enum Signer<'a> {
    /// HS256 with this secret.
    Hs256(&'a [u8]),
    /// RS256 with this fixture key.
    Rs256(&'a str),
    /// ES256 with this fixture key.
    Es256(&'a str),
}

/// Encodes `header` and `claims` and signs them.
pub fn token(signer: Signer<'_>, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig: Vec<u8> = match signer {
        Signer::Hs256(secret) => {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Signer::Rs256(name) => {
            let key = rsa::RsaPrivateKey::from_pkcs8_der(&private_der(name)).expect("RSA key");
            let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(key);
            signer.sign(input.as_bytes()).to_vec()
        }
        Signer::Es256(name) => {
            let key =
                p256::ecdsa::SigningKey::from_pkcs8_der(&private_der(name)).expect("P-256 key");
            let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
            sig.to_bytes().to_vec()
        }
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// The claims of a good token for [`jwt_config`], valid for ten minutes.
pub fn claims() -> Value {
    json!({
        "iss": "https://issuer.example",
        "aud": "api",
        "sub": "user-1",
        "email": "user-1@example.com",
        "exp": now() + 600,
        "iat": now(),
    })
}

/// `claims()` with `changes` merged in (a `null` removes the claim).
pub fn claims_with(changes: Value) -> Value {
    let mut c = claims();
    let map = c.as_object_mut().expect("an object");
    for (k, v) in changes.as_object().expect("an object") {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    c
}

/// A JWT configuration with every fixture key, issuer and audience checked, and `sub` and
/// `email` forwarded.
pub fn jwt_config() -> Value {
    json!({
        "realm": "api",
        "jwt": {
            "issuer": "https://issuer.example",
            "audiences": ["api"],
            "jwks": {"keys": [hmac_jwk(), public_jwk("rsa-a"), public_jwk("rsa-b"), public_jwk("ec-a")]},
            "forward_claims": {"sub": "x-auth-subject", "email": "x-auth-email"}
        }
    })
}

/// `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}
