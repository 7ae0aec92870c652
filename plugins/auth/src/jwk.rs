//! JSON Web Keys (RFC 7517) as written in the configuration, checked and turned into
//! verification keys, and the JWS algorithms the plugin knows (RFC 7518): HS256, RS256 and
//! ES256. `none` is never accepted.

use std::fmt;

use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier as _;
use rsa::{BigUint, RsaPublicKey};
use serde::Deserialize;
use sha2::Sha256;

use crate::encoding::base64url;

/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// The shortest HMAC key accepted, in bytes (RFC 7518 §3.2: at least the hash's size).
pub const MIN_HMAC_BYTES: usize = 32;

/// A JWS algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Alg {
    /// HMAC with SHA-256, a shared secret (`kty: oct`).
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`kty: RSA`).
    RS256,
    /// ECDSA on P-256 with SHA-256 (`kty: EC`, `crv: P-256`).
    ES256,
}

impl Alg {
    /// Every algorithm, the default list of accepted ones.
    pub const ALL: [Alg; 3] = [Alg::HS256, Alg::RS256, Alg::ES256];

    /// The algorithm named `name` (exact case, as in a JOSE header).
    pub fn from_name(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::HS256),
            "RS256" => Some(Alg::RS256),
            "ES256" => Some(Alg::ES256),
            _ => None,
        }
    }

    /// Its JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::RS256 => "RS256",
            Alg::ES256 => "ES256",
        }
    }
}

impl TryFrom<String> for Alg {
    type Error = String;

    fn try_from(name: String) -> Result<Alg, String> {
        if name.eq_ignore_ascii_case("none") {
            return Err("algorithm \"none\" is never accepted".into());
        }
        Alg::from_name(&name).ok_or_else(|| {
            format!("unsupported algorithm {name:?} (supported: HS256, RS256, ES256)")
        })
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A key set as written: `{"keys": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwkSet {
    /// The keys.
    pub keys: Vec<Jwk>,
}

/// One JWK as written. The members a public key set usually carries are accepted (and the
/// informational ones ignored); private-key members are named only to be refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jwk {
    /// `oct`, `RSA` or `EC`.
    pub kty: String,
    /// Key id, matched against a token's `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// Intended use: if present, `sig`.
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    /// If present, the only algorithm this key verifies.
    #[serde(default)]
    pub alg: Option<String>,
    /// If present, must include `verify`.
    #[serde(default)]
    pub key_ops: Option<Vec<String>>,
    /// `oct`: the secret, base64url.
    #[serde(default)]
    pub k: Option<String>,
    /// `RSA`: the modulus, base64url big-endian.
    #[serde(default)]
    pub n: Option<String>,
    /// `RSA`: the public exponent, base64url big-endian.
    #[serde(default)]
    pub e: Option<String>,
    /// `EC`: the curve, `P-256`.
    #[serde(default)]
    pub crv: Option<String>,
    /// `EC`: the x coordinate, base64url (32 bytes).
    #[serde(default)]
    pub x: Option<String>,
    /// `EC`: the y coordinate, base64url (32 bytes).
    #[serde(default)]
    pub y: Option<String>,
    /// Informational, ignored.
    #[serde(default)]
    pub x5c: Option<serde_json::Value>,
    /// Informational, ignored.
    #[serde(default)]
    pub x5t: Option<serde_json::Value>,
    /// Informational, ignored.
    #[serde(default, rename = "x5t#S256")]
    pub x5t_s256: Option<serde_json::Value>,
    /// Informational, ignored (never fetched).
    #[serde(default)]
    pub x5u: Option<serde_json::Value>,
    /// Informational, ignored.
    #[serde(default)]
    pub ext: Option<serde_json::Value>,
    /// Private member: refused.
    #[serde(default)]
    pub d: Option<serde_json::Value>,
    /// Private member: refused.
    #[serde(default)]
    pub p: Option<serde_json::Value>,
    /// Private member: refused.
    #[serde(default)]
    pub q: Option<serde_json::Value>,
    /// Private member: refused.
    #[serde(default)]
    pub dp: Option<serde_json::Value>,
    /// Private member: refused.
    #[serde(default)]
    pub dq: Option<serde_json::Value>,
    /// Private member: refused.
    #[serde(default)]
    pub qi: Option<serde_json::Value>,
    /// Private member: refused.
    #[serde(default)]
    pub oth: Option<serde_json::Value>,
}

/// Every member [`Jwk`] reads (or names to refuse). RFC 7517 §4: members a reader does not
/// know are to be ignored; the configuration refuses them (a typo there is a mistake), while
/// [`Jwk::from_fetched`] drops them from a key set fetched from an identity provider.
pub const MEMBERS: &[&str] = &[
    "kty", "kid", "use", "alg", "key_ops", "k", "n", "e", "crv", "x", "y", "x5c", "x5t",
    "x5t#S256", "x5u", "ext", "d", "p", "q", "dp", "dq", "qi", "oth",
];

impl Jwk {
    /// Reads one key of a fetched key set: members outside [`MEMBERS`] are ignored. The
    /// error never shows a member's value.
    pub fn from_fetched(value: &serde_json::Value) -> Result<Jwk, String> {
        let serde_json::Value::Object(members) = value else {
            return Err("not a JSON object".into());
        };
        let known: serde_json::Map<String, serde_json::Value> = members
            .iter()
            .filter(|(name, _)| MEMBERS.contains(&name.as_str()))
            .map(|(name, v)| (name.clone(), v.clone()))
            .collect();
        if !known.contains_key("kty") {
            return Err("\"kty\" is missing".into());
        }
        // Through text: the same deserializer as the configuration's (a smaller plugin).
        let text = serde_json::to_vec(&known).map_err(|_| "not a JWK".to_string())?;
        serde_json::from_slice(&text)
            .map_err(|_| "a member has the wrong type for a JWK".to_string())
    }
}

/// A verification key.
pub struct Key {
    kid: Option<String>,
    /// The key's own `alg`, if it has one.
    alg: Option<Alg>,
    material: Material,
}

enum Material {
    Hmac(Vec<u8>),
    Rsa(rsa::pkcs1v15::VerifyingKey<Sha256>),
    Ec(p256::ecdsa::VerifyingKey),
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.material {
            Material::Hmac(_) => "oct",
            Material::Rsa(_) => "RSA",
            Material::Ec(_) => "EC",
        };
        // The secret of an `oct` key is never printed.
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("kty", &kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Checks `jwk` and makes its key. The error says what is wrong, without the key.
    pub fn from_jwk(jwk: &Jwk) -> Result<Key, String> {
        let private = [&jwk.d, &jwk.p, &jwk.q, &jwk.dp, &jwk.dq, &jwk.qi, &jwk.oth];
        if private.iter().any(|m| m.is_some()) {
            return Err("holds private-key members (d, p, q, …): give the public key only".into());
        }
        if let Some(u) = &jwk.use_ {
            if u != "sig" {
                return Err(format!("\"use\" is {u:?}: only signature keys (\"sig\")"));
            }
        }
        if let Some(ops) = &jwk.key_ops {
            if !ops.iter().any(|o| o == "verify") {
                return Err("\"key_ops\" does not include \"verify\"".into());
            }
        }
        let alg = jwk
            .alg
            .as_deref()
            .map(|a| Alg::try_from(a.to_string()))
            .transpose()?;
        let material = match jwk.kty.as_str() {
            "oct" => hmac_key(jwk)?,
            "RSA" => rsa_key(jwk)?,
            "EC" => ec_key(jwk)?,
            other => {
                return Err(format!(
                    "unsupported \"kty\" {other:?} (supported: oct, RSA, EC)"
                ))
            }
        };
        let key = Key {
            kid: jwk.kid.clone(),
            alg: None,
            material,
        };
        if let Some(a) = alg {
            if !key.kind_fits(a) {
                return Err(format!("\"alg\" {a} does not fit \"kty\" {:?}", jwk.kty));
            }
        }
        Ok(Key { alg, ..key })
    }

    /// The key id.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Whether this key may verify a signature made with `alg`.
    pub fn supports(&self, alg: Alg) -> bool {
        self.kind_fits(alg) && self.alg.is_none_or(|own| own == alg)
    }

    fn kind_fits(&self, alg: Alg) -> bool {
        matches!(
            (&self.material, alg),
            (Material::Hmac(_), Alg::HS256)
                | (Material::Rsa(_), Alg::RS256)
                | (Material::Ec(_), Alg::ES256)
        )
    }

    /// Whether `signature` is a valid `alg` signature of `input` under this key.
    pub fn verify(&self, alg: Alg, input: &[u8], signature: &[u8]) -> bool {
        if !self.supports(alg) {
            return false;
        }
        match &self.material {
            Material::Hmac(secret) => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                    return false;
                };
                mac.update(input);
                // Constant time.
                mac.verify_slice(signature).is_ok()
            }
            Material::Rsa(key) => rsa::pkcs1v15::Signature::try_from(signature)
                .is_ok_and(|sig| key.verify(input, &sig).is_ok()),
            Material::Ec(key) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(input, &sig).is_ok()),
        }
    }
}

/// Member `name` of `jwk`, base64url-decoded; an error if missing or not base64url.
fn member(value: &Option<String>, name: &str) -> Result<Vec<u8>, String> {
    let text = value
        .as_deref()
        .ok_or_else(|| format!("\"{name}\" is missing"))?;
    base64url(text).ok_or_else(|| format!("\"{name}\" is not unpadded base64url"))
}

fn hmac_key(jwk: &Jwk) -> Result<Material, String> {
    let secret = member(&jwk.k, "k")?;
    if secret.len() < MIN_HMAC_BYTES {
        return Err(format!(
            "\"k\" is {} bytes; HS256 needs at least {MIN_HMAC_BYTES}",
            secret.len()
        ));
    }
    Ok(Material::Hmac(secret))
}

fn rsa_key(jwk: &Jwk) -> Result<Material, String> {
    let n = BigUint::from_bytes_be(&member(&jwk.n, "n")?);
    let e = BigUint::from_bytes_be(&member(&jwk.e, "e")?);
    let bits = n.bits();
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA modulus of {bits} bits; at least {MIN_RSA_BITS} are needed"
        ));
    }
    let public = RsaPublicKey::new(n, e).map_err(|e| format!("not a valid RSA key: {e}"))?;
    Ok(Material::Rsa(rsa::pkcs1v15::VerifyingKey::new(public)))
}

fn ec_key(jwk: &Jwk) -> Result<Material, String> {
    match jwk.crv.as_deref() {
        Some("P-256") => {}
        Some(other) => return Err(format!("unsupported \"crv\" {other:?} (supported: P-256)")),
        None => return Err("\"crv\" is missing".into()),
    }
    let x = member(&jwk.x, "x")?;
    let y = member(&jwk.y, "y")?;
    if x.len() != 32 || y.len() != 32 {
        return Err("\"x\" and \"y\" must be 32 bytes each".into());
    }
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
        .map_err(|_| "\"x\" and \"y\" are not a point of P-256".to_string())?;
    Ok(Material::Ec(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    fn jwk(json: serde_json::Value) -> Result<Key, String> {
        let jwk: Jwk = serde_json::from_value(json).map_err(|e| e.to_string())?;
        Key::from_jwk(&jwk)
    }

    fn secret(len: usize) -> String {
        URL_SAFE_NO_PAD.encode(vec![7u8; len])
    }

    // The public key of RFC 7515 appendix A.3 (ES256).
    const EC_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const EC_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    #[test]
    fn algorithms_by_name() {
        assert_eq!(Alg::from_name("RS256"), Some(Alg::RS256));
        assert_eq!(Alg::from_name("rs256"), None, "exact case");
        assert_eq!(Alg::from_name("none"), None);
        let none = Alg::try_from("none".to_string()).unwrap_err();
        assert!(none.contains("never accepted"), "{none}");
        let ps = Alg::try_from("PS256".to_string()).unwrap_err();
        assert!(ps.contains("unsupported algorithm \"PS256\""), "{ps}");
    }

    #[test]
    fn hmac_keys() {
        let key = jwk(serde_json::json!({"kty": "oct", "kid": "h", "k": secret(32)})).unwrap();
        assert_eq!(key.kid(), Some("h"));
        assert!(key.supports(Alg::HS256));
        assert!(!key.supports(Alg::RS256));
        let mut mac = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
        mac.update(b"a.b");
        let sig = mac.finalize().into_bytes();
        assert!(key.verify(Alg::HS256, b"a.b", &sig));
        assert!(!key.verify(Alg::HS256, b"a.c", &sig));
        assert!(!key.verify(Alg::HS256, b"a.b", &sig[..31]));
        assert!(
            !format!("{key:?}").contains(&secret(32)),
            "secret not printed"
        );
        let short = jwk(serde_json::json!({"kty": "oct", "k": secret(31)})).unwrap_err();
        assert!(short.contains("at least 32"), "{short}");
    }

    #[test]
    fn ec_keys() {
        let key =
            jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y})).unwrap();
        assert!(key.supports(Alg::ES256));
        assert!(!key.supports(Alg::HS256));
        // RFC 7515 appendix A.3's token verifies.
        let input = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let sig = base64url("DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q").unwrap();
        assert!(key.verify(Alg::ES256, input.as_bytes(), &sig));
        assert!(!key.verify(Alg::ES256, b"other", &sig));
        assert!(!key.verify(Alg::HS256, input.as_bytes(), &sig));

        let off_curve = jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_X}))
            .unwrap_err();
        assert!(off_curve.contains("not a point"), "{off_curve}");
        let curve = jwk(serde_json::json!({"kty": "EC", "crv": "P-384", "x": EC_X, "y": EC_Y}))
            .unwrap_err();
        assert!(curve.contains("P-384"), "{curve}");
    }

    #[test]
    fn rsa_keys_need_2048_bits() {
        let n = URL_SAFE_NO_PAD.encode([0xc5u8; 128]); // 1024 bits
        let small = jwk(serde_json::json!({"kty": "RSA", "n": n, "e": "AQAB"})).unwrap_err();
        assert!(small.contains("1024 bits"), "{small}");
        let missing = jwk(serde_json::json!({"kty": "RSA", "e": "AQAB"})).unwrap_err();
        assert!(missing.contains("\"n\" is missing"), "{missing}");
    }

    #[test]
    fn refusals() {
        let private =
            jwk(serde_json::json!({"kty": "oct", "k": secret(32), "d": "x"})).unwrap_err();
        assert!(private.contains("private"), "{private}");
        let enc =
            jwk(serde_json::json!({"kty": "oct", "k": secret(32), "use": "enc"})).unwrap_err();
        assert!(enc.contains("\"enc\""), "{enc}");
        let ops = jwk(serde_json::json!({"kty": "oct", "k": secret(32), "key_ops": ["sign"]}))
            .unwrap_err();
        assert!(ops.contains("verify"), "{ops}");
        let kty = jwk(serde_json::json!({"kty": "OKP"})).unwrap_err();
        assert!(kty.contains("\"OKP\""), "{kty}");
        let mismatch =
            jwk(serde_json::json!({"kty": "oct", "k": secret(32), "alg": "RS256"})).unwrap_err();
        assert!(mismatch.contains("does not fit"), "{mismatch}");
        let unknown =
            jwk(serde_json::json!({"kty": "oct", "k": secret(32), "foo": 1})).unwrap_err();
        assert!(unknown.contains("unknown field `foo`"), "{unknown}");
        let padded = jwk(serde_json::json!({"kty": "oct", "k": secret(32) + "="})).unwrap_err();
        assert!(padded.contains("base64url"), "{padded}");
    }

    #[test]
    fn fetched_keys_ignore_members_they_do_not_know() {
        let value = serde_json::json!({
            "kty": "oct", "kid": "h", "k": secret(32), "issuer": "https://idp", "nbf": 1
        });
        let key = Key::from_jwk(&Jwk::from_fetched(&value).unwrap()).unwrap();
        assert_eq!(key.kid(), Some("h"));
        // The configuration still refuses them.
        assert!(jwk(value).unwrap_err().contains("unknown field `issuer`"));
        let wrong = Jwk::from_fetched(&serde_json::json!({"kty": "oct", "k": 12345})).unwrap_err();
        assert!(!wrong.contains("12345"), "{wrong}");
        assert!(Jwk::from_fetched(&serde_json::json!([1])).is_err());
        assert!(Jwk::from_fetched(&serde_json::json!({"kid": "a"}))
            .unwrap_err()
            .contains("kty"));
        // MEMBERS is the struct's own list: each one deserializes.
        for m in MEMBERS.iter().filter(|m| **m != "kty") {
            let v = serde_json::json!({"kty": "oct", *m: null});
            let parsed: Result<Jwk, _> = serde_json::from_value(v);
            assert!(parsed.is_ok(), "{m}: {parsed:?}");
        }
    }

    #[test]
    fn a_key_alg_restricts_it() {
        let key = jwk(serde_json::json!({"kty": "oct", "k": secret(32), "alg": "HS256"})).unwrap();
        assert!(key.supports(Alg::HS256));
    }
}
