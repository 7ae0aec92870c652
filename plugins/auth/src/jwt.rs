//! JWT bearer tokens (RFC 7519) signed as compact JWS (RFC 7515): decoding, signature
//! checking against the configured keys, the registered claims (`exp`, `nbf`, `iss`, `aud`)
//! and the plugin's own requirements (scopes and claim values).

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::jwk::{Alg, Key};

/// The longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A token's claims.
pub type Claims = Map<String, Value>;

/// Why a token is refused (answered with 401). The reasons go to logs, never to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not three base64url parts of JSON objects, or too long.
    Malformed,
    /// `alg` is `none`, unknown or not accepted.
    Algorithm,
    /// The header has `crit` (no extension is understood).
    Critical,
    /// No configured key has the token's `kid`, or none fits its `alg`.
    UnknownKey,
    /// No candidate key verifies the signature.
    Signature,
    /// `exp` is past (beyond the leeway).
    Expired,
    /// `nbf` is ahead (beyond the leeway).
    NotYetValid,
    /// `exp` is required and missing.
    MissingExp,
    /// `exp` or `nbf` is not a number.
    BadTime,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` names none of the configured audiences.
    Audience,
}

impl Invalid {
    /// A short reason for logs.
    pub fn reason(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed token",
            Invalid::Algorithm => "algorithm not accepted",
            Invalid::Critical => "unsupported critical header",
            Invalid::UnknownKey => "no key for the token",
            Invalid::Signature => "bad signature",
            Invalid::Expired => "token expired",
            Invalid::NotYetValid => "token not yet valid",
            Invalid::MissingExp => "token without exp",
            Invalid::BadTime => "exp or nbf not a number",
            Invalid::Issuer => "wrong issuer",
            Invalid::Audience => "wrong audience",
        }
    }
}

/// How tokens are checked.
#[derive(Debug)]
pub struct Validator {
    /// The keys of the configuration (`jwt.jwks`).
    pub keys: Vec<Key>,
    /// The keys last fetched from `jwt.jwks_uri` (replaced whole on each change).
    pub remote: RefCell<Vec<Key>>,
    /// Accepted algorithms.
    pub algorithms: Vec<Alg>,
    /// The required `iss`, if any.
    pub issuer: Option<String>,
    /// If set, `aud` must name one of these.
    pub audiences: Option<Vec<String>>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway: u64,
    /// Whether a token without `exp` is refused.
    pub require_exp: bool,
    /// Tokens whose signature verified, and their claims: clients send the same token many
    /// times, and an RS256 check costs far more than a lookup. The time claims, issuer and
    /// audience are checked again on every use.
    pub verified: RefCell<HashMap<String, Claims>>,
}

/// Most tokens [`Validator::verified`] keeps; past it the cache starts over.
pub const MAX_VERIFIED: usize = 1024;

/// A token split into its parts.
struct Parts<'a> {
    header: Map<String, Value>,
    claims: Claims,
    signing_input: &'a str,
    signature: Vec<u8>,
}

fn object(part: &str) -> Option<Map<String, Value>> {
    let bytes = crate::encoding::base64url(part)?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn split(token: &str) -> Result<Parts<'_>, Invalid> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Invalid::Malformed);
    }
    let (signing_input, sig) = token.rsplit_once('.').ok_or(Invalid::Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(Invalid::Malformed)?;
    if payload.contains('.') {
        return Err(Invalid::Malformed);
    }
    Ok(Parts {
        header: object(header).ok_or(Invalid::Malformed)?,
        claims: object(payload).ok_or(Invalid::Malformed)?,
        signing_input,
        signature: crate::encoding::base64url(sig).ok_or(Invalid::Malformed)?,
    })
}

impl Validator {
    /// Replaces the fetched keys. Tokens remembered as verified are forgotten: a key that left
    /// the set must stop accepting its tokens.
    pub fn set_remote(&self, keys: Vec<Key>) {
        *self.remote.borrow_mut() = keys;
        self.verified.borrow_mut().clear();
    }

    /// Whether there is any key to check a token with, configured or fetched.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty() || !self.remote.borrow().is_empty()
    }

    /// Checks `token` at `now` (seconds since the Unix epoch) and returns its claims.
    /// The signature is checked before any claim.
    pub fn validate(&self, token: &str, now: u64) -> Result<Claims, Invalid> {
        if let Some(claims) = self.verified.borrow().get(token) {
            self.check_claims(claims, now)?;
            return Ok(claims.clone());
        }
        let claims = self.verify(token)?;
        self.check_claims(&claims, now)?;
        let mut cache = self.verified.borrow_mut();
        if cache.len() >= MAX_VERIFIED {
            cache.clear();
        }
        cache.insert(token.to_string(), claims.clone());
        Ok(claims)
    }

    /// Checks the token's form and signature; returns its claims.
    fn verify(&self, token: &str) -> Result<Claims, Invalid> {
        let parts = split(token)?;
        let alg = parts
            .header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Alg::from_name)
            .filter(|a| self.algorithms.contains(a))
            .ok_or(Invalid::Algorithm)?;
        if parts.header.contains_key("crit") {
            return Err(Invalid::Critical);
        }
        let remote = self.remote.borrow();
        let all = self.keys.iter().chain(remote.iter());
        let candidates: Vec<&Key> = match parts.header.get("kid") {
            Some(Value::String(kid)) => all.filter(|k| k.kid() == Some(kid.as_str())).collect(),
            Some(_) => return Err(Invalid::Malformed),
            None => all.collect(),
        };
        let candidates: Vec<&Key> = candidates.into_iter().filter(|k| k.supports(alg)).collect();
        if candidates.is_empty() {
            return Err(Invalid::UnknownKey);
        }
        let input = parts.signing_input.as_bytes();
        if !candidates
            .iter()
            .any(|k| k.verify(alg, input, &parts.signature))
        {
            return Err(Invalid::Signature);
        }
        Ok(parts.claims)
    }

    /// Checks the registered claims of verified `claims` at `now`.
    fn check_claims(&self, claims: &Claims, now: u64) -> Result<(), Invalid> {
        let now = now as f64;
        let leeway = self.leeway as f64;
        match claims.get("exp") {
            None if self.require_exp => return Err(Invalid::MissingExp),
            None => {}
            Some(v) => {
                let exp = v.as_f64().ok_or(Invalid::BadTime)?;
                // Valid strictly before `exp` (RFC 7519 §4.1.4), plus the leeway.
                if now >= exp + leeway {
                    return Err(Invalid::Expired);
                }
            }
        }
        if let Some(v) = claims.get("nbf") {
            let nbf = v.as_f64().ok_or(Invalid::BadTime)?;
            if now + leeway < nbf {
                return Err(Invalid::NotYetValid);
            }
        }
        if let Some(issuer) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err(Invalid::Issuer);
            }
        }
        if let Some(audiences) = &self.audiences {
            let named = |a: &str| audiences.iter().any(|want| want == a);
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => named(a),
                Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(named),
                _ => false,
            };
            if !ok {
                return Err(Invalid::Audience);
            }
        }
        Ok(())
    }
}

/// What a valid token must also carry; lacking it is answered with 403.
#[derive(Debug, Default)]
pub struct Requirements {
    /// Scopes that must all be granted (`scope`, space-separated, and/or `scp`).
    pub scopes: Vec<String>,
    /// Claims that must have these values (or, for an array claim, contain them).
    pub claims: Vec<(String, Value)>,
}

/// What a token lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// A required scope.
    Scope,
    /// A required claim value.
    Claim,
}

impl Requirements {
    /// Whether there is nothing to require.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty() && self.claims.is_empty()
    }

    /// Checks `claims` against the requirements.
    pub fn check(&self, claims: &Claims) -> Result<(), Missing> {
        if !self.scopes.is_empty() {
            let granted = granted_scopes(claims);
            if !self.scopes.iter().all(|s| granted.contains(&s.as_str())) {
                return Err(Missing::Scope);
            }
        }
        for (name, want) in &self.claims {
            let ok = match claims.get(name) {
                Some(Value::Array(list)) => list.contains(want),
                Some(v) => v == want,
                None => false,
            };
            if !ok {
                return Err(Missing::Claim);
            }
        }
        Ok(())
    }
}

/// The scopes a token grants: `scope` (space-separated, RFC 8693 §4.2) and `scp` (an array of
/// strings, or a space-separated string).
pub fn granted_scopes(claims: &Claims) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split(' ').filter(|s| !s.is_empty())),
            Some(Value::Array(list)) => out.extend(list.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// The header value a claim is forwarded as: strings as they are, numbers and booleans as
/// text, arrays of those joined with `,`. Anything else (objects, nested arrays, null), or a
/// value a header cannot carry, gives `None`.
pub fn claim_header_value(value: &Value) -> Option<String> {
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    let text = match value {
        Value::Array(list) => list
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()?
            .join(","),
        v => scalar(v)?,
    };
    (text.len() <= 8192 && crate::encoding::is_header_value(&text)).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use serde_json::json;
    use sha2::Sha256;

    use crate::jwk::Jwk;

    const SECRET: [u8; 32] = [42; 32];
    const NOW: u64 = 1_700_000_000;

    fn key(kid: &str, secret: &[u8]) -> Key {
        let jwk: Jwk = serde_json::from_value(json!({
            "kty": "oct", "kid": kid, "k": URL_SAFE_NO_PAD.encode(secret)
        }))
        .unwrap();
        Key::from_jwk(&jwk).unwrap()
    }

    fn validator() -> Validator {
        Validator {
            keys: vec![key("k1", &SECRET), key("k2", &[9; 32])],
            remote: Default::default(),
            algorithms: Alg::ALL.to_vec(),
            issuer: Some("https://issuer.example".into()),
            audiences: Some(vec!["api".into(), "other".into()]),
            leeway: 60,
            require_exp: false,
            verified: Default::default(),
        }
    }

    fn sign_raw(header: &str, payload: &str, secret: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{input}.{sig}")
    }

    fn sign(header: Value, claims: Value) -> String {
        sign_raw(&header.to_string(), &claims.to_string(), &SECRET)
    }

    fn good_claims() -> Value {
        json!({"iss": "https://issuer.example", "aud": "api", "exp": NOW + 600, "sub": "u1"})
    }

    #[test]
    fn a_good_token_passes() {
        let v = validator();
        let t = sign(json!({"alg": "HS256", "kid": "k1"}), good_claims());
        let claims = v.validate(&t, NOW).unwrap();
        assert_eq!(claims["sub"], "u1");
        // Without kid, every fitting key is tried.
        let t = sign(json!({"alg": "HS256", "typ": "JWT"}), good_claims());
        assert!(v.validate(&t, NOW).is_ok());
    }

    #[test]
    fn verified_tokens_are_remembered_but_their_claims_checked_on_every_use() {
        let v = validator();
        let t = sign(json!({"alg": "HS256", "kid": "k1"}), good_claims());
        assert!(v.validate(&t, NOW).is_ok());
        assert!(v.verified.borrow().contains_key(&t));
        assert_eq!(
            v.validate(&t, NOW + 600 + 61),
            Err(Invalid::Expired),
            "from the cache"
        );
        // A token that fails is not remembered; a tampered one is checked afresh.
        let bad = sign_raw(
            r#"{"alg":"HS256","kid":"k1"}"#,
            &good_claims().to_string(),
            &[7; 32],
        );
        assert_eq!(v.validate(&bad, NOW), Err(Invalid::Signature));
        assert!(!v.verified.borrow().contains_key(&bad));
        for i in 0..MAX_VERIFIED {
            let claims =
                json!({"iss": "https://issuer.example", "aud": "api", "exp": NOW + 600, "n": i});
            v.validate(&sign(json!({"alg": "HS256"}), claims), NOW)
                .unwrap();
        }
        assert!(v.verified.borrow().len() <= MAX_VERIFIED, "bounded");
    }

    #[test]
    fn structure() {
        let v = validator();
        for bad in ["", "a.b", "a.b.c.d", "...", "x.y.z"] {
            assert_eq!(v.validate(bad, NOW), Err(Invalid::Malformed), "{bad:?}");
        }
        let arr = sign_raw(r#"{"alg":"HS256"}"#, "[1]", &SECRET);
        assert_eq!(
            v.validate(&arr, NOW),
            Err(Invalid::Malformed),
            "claims not an object"
        );
        let long = format!("{}.{}.x", "a".repeat(MAX_TOKEN_BYTES), "b");
        assert_eq!(v.validate(&long, NOW), Err(Invalid::Malformed));
        let t = sign(json!({"alg": "HS256"}), good_claims());
        let padded = format!("{t}=");
        assert_eq!(v.validate(&padded, NOW), Err(Invalid::Malformed));
        let kid_number = sign(json!({"alg": "HS256", "kid": 1}), good_claims());
        assert_eq!(v.validate(&kid_number, NOW), Err(Invalid::Malformed));
    }

    #[test]
    fn algorithms_and_keys() {
        let mut v = validator();
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(good_claims().to_string())
        );
        assert_eq!(v.validate(&none, NOW), Err(Invalid::Algorithm));
        let rs = sign(json!({"alg": "RS256"}), good_claims());
        assert_eq!(v.validate(&rs, NOW), Err(Invalid::UnknownKey), "no RSA key");
        let unknown = sign(json!({"alg": "HS256", "kid": "nope"}), good_claims());
        assert_eq!(v.validate(&unknown, NOW), Err(Invalid::UnknownKey));
        let crit = sign(
            json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
            good_claims(),
        );
        assert_eq!(v.validate(&crit, NOW), Err(Invalid::Critical));
        // kid k2 holds another secret.
        let wrong = sign(json!({"alg": "HS256", "kid": "k2"}), good_claims());
        assert_eq!(v.validate(&wrong, NOW), Err(Invalid::Signature));
        v.algorithms = vec![Alg::ES256];
        let hs = sign(json!({"alg": "HS256"}), good_claims());
        assert_eq!(
            v.validate(&hs, NOW),
            Err(Invalid::Algorithm),
            "not accepted"
        );
    }

    #[test]
    fn fetched_keys_count_and_replacing_them_forgets_verified_tokens() {
        let v = validator();
        let t = sign_raw(
            r#"{"alg":"HS256","kid":"r1"}"#,
            &good_claims().to_string(),
            &[5; 32],
        );
        assert_eq!(v.validate(&t, NOW), Err(Invalid::UnknownKey));
        v.set_remote(vec![key("r1", &[5; 32])]);
        assert!(v.validate(&t, NOW).is_ok(), "a fetched key verifies");
        assert!(v.verified.borrow().contains_key(&t));
        v.set_remote(vec![key("r2", &[6; 32])]);
        assert!(v.verified.borrow().is_empty());
        assert_eq!(
            v.validate(&t, NOW),
            Err(Invalid::UnknownKey),
            "gone with its key"
        );
        // Without kid, configured and fetched keys are all tried.
        let no_kid = sign_raw(r#"{"alg":"HS256"}"#, &good_claims().to_string(), &[6; 32]);
        assert!(v.validate(&no_kid, NOW).is_ok());
        assert!(v.has_keys());
        let empty = Validator {
            keys: Vec::new(),
            ..validator()
        };
        assert!(!empty.has_keys());
        empty.set_remote(vec![key("r1", &[5; 32])]);
        assert!(empty.has_keys());
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let v = validator();
        let t = sign(json!({"alg": "HS256"}), good_claims());
        let (input, _) = t.rsplit_once('.').unwrap();
        let (header, _) = input.split_once('.').unwrap();
        let mut claims = good_claims();
        claims["sub"] = json!("admin");
        let forged = format!(
            "{header}.{}.{}",
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            t.rsplit_once('.').unwrap().1
        );
        assert_eq!(v.validate(&forged, NOW), Err(Invalid::Signature));
    }

    #[test]
    fn time_claims_with_leeway() {
        let mut v = validator();
        let at = |exp: Option<u64>, nbf: Option<u64>| {
            let mut c = good_claims();
            let m = c.as_object_mut().unwrap();
            m.remove("exp");
            if let Some(e) = exp {
                m.insert("exp".into(), json!(e));
            }
            if let Some(n) = nbf {
                m.insert("nbf".into(), json!(n));
            }
            sign(json!({"alg": "HS256"}), c)
        };
        assert!(
            v.validate(&at(Some(NOW - 59), None), NOW).is_ok(),
            "within leeway"
        );
        assert_eq!(
            v.validate(&at(Some(NOW - 60), None), NOW),
            Err(Invalid::Expired)
        );
        assert!(v.validate(&at(Some(NOW + 1), Some(NOW + 60)), NOW).is_ok());
        assert_eq!(
            v.validate(&at(Some(NOW + 600), Some(NOW + 61)), NOW),
            Err(Invalid::NotYetValid)
        );
        assert!(
            v.validate(&at(None, None), NOW).is_ok(),
            "exp optional by default"
        );
        v.require_exp = true;
        assert_eq!(v.validate(&at(None, None), NOW), Err(Invalid::MissingExp));
        v.leeway = 0;
        assert_eq!(v.validate(&at(Some(NOW), None), NOW), Err(Invalid::Expired));
        let float = sign(
            json!({"alg": "HS256"}),
            json!({
                "iss": "https://issuer.example", "aud": "api", "exp": NOW as f64 + 0.5
            }),
        );
        assert!(v.validate(&float, NOW).is_ok(), "fractional NumericDate");
        let text = sign(
            json!({"alg": "HS256"}),
            json!({
                "iss": "https://issuer.example", "aud": "api", "exp": "tomorrow"
            }),
        );
        assert_eq!(v.validate(&text, NOW), Err(Invalid::BadTime));
    }

    #[test]
    fn issuer_and_audience() {
        let mut v = validator();
        let with = |k: &str, val: Value| {
            let mut c = good_claims();
            c[k] = val;
            sign(json!({"alg": "HS256"}), c)
        };
        assert_eq!(
            v.validate(&with("iss", json!("https://evil")), NOW),
            Err(Invalid::Issuer)
        );
        assert_eq!(
            v.validate(&with("aud", json!("web")), NOW),
            Err(Invalid::Audience)
        );
        assert!(v
            .validate(&with("aud", json!(["web", "other"])), NOW)
            .is_ok());
        assert_eq!(
            v.validate(&with("aud", json!([])), NOW),
            Err(Invalid::Audience)
        );
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("aud");
        let no_aud = sign(json!({"alg": "HS256"}), c);
        assert_eq!(v.validate(&no_aud, NOW), Err(Invalid::Audience));
        v.audiences = None;
        v.issuer = None;
        assert!(
            v.validate(&no_aud, NOW).is_ok(),
            "unchecked when not configured"
        );
        assert!(v.validate(&with("iss", json!("https://evil")), NOW).is_ok());
    }

    #[test]
    fn requirements() {
        let r = Requirements {
            scopes: vec!["read".into(), "write".into()],
            claims: vec![("role".into(), json!("admin")), ("tier".into(), json!(2))],
        };
        let claims = |v: Value| v.as_object().unwrap().clone();
        let ok = claims(json!({"scope": "read  write x", "role": "admin", "tier": 2}));
        assert_eq!(r.check(&ok), Ok(()));
        let scp = claims(json!({"scp": ["write", "read"], "role": ["user", "admin"], "tier": 2}));
        assert_eq!(
            r.check(&scp),
            Ok(()),
            "scp array, array claim containing the value"
        );
        let split = claims(json!({"scope": "read", "scp": "write", "role": "admin", "tier": 2}));
        assert_eq!(r.check(&split), Ok(()), "both claims count");
        let partial = claims(json!({"scope": "read", "role": "admin", "tier": 2}));
        assert_eq!(r.check(&partial), Err(Missing::Scope));
        let prefix = claims(json!({"scope": "readwrite", "role": "admin", "tier": 2}));
        assert_eq!(r.check(&prefix), Err(Missing::Scope));
        let role = claims(json!({"scope": "read write", "role": "user", "tier": 2}));
        assert_eq!(r.check(&role), Err(Missing::Claim));
        let tier = claims(json!({"scope": "read write", "role": "admin", "tier": "2"}));
        assert_eq!(r.check(&tier), Err(Missing::Claim), "types must match");
        assert!(Requirements::default().check(&claims(json!({}))).is_ok());
    }

    #[test]
    fn forwarded_values() {
        assert_eq!(claim_header_value(&json!("u1")).as_deref(), Some("u1"));
        assert_eq!(claim_header_value(&json!(42)).as_deref(), Some("42"));
        assert_eq!(claim_header_value(&json!(true)).as_deref(), Some("true"));
        assert_eq!(claim_header_value(&json!(["a", 1])).as_deref(), Some("a,1"));
        assert_eq!(claim_header_value(&json!({"a": 1})), None);
        assert_eq!(claim_header_value(&json!([["a"]])), None);
        assert_eq!(claim_header_value(&json!(null)), None);
        assert_eq!(claim_header_value(&json!("a\r\nx-admin: 1")), None);
        assert_eq!(claim_header_value(&json!("x".repeat(9000))), None);
    }
}
