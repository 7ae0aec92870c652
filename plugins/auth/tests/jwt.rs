//! JWT bearer tokens through the real host: HS256, RS256 and ES256 tokens, every reason a
//! token is refused, leeway, scopes and claims, forwarded claims and stripping.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use p256::pkcs8::DecodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Value};
use sluice_testkit::{Kit, Outcome, TestRequest, TestResponse};

fn run(kit: &Kit, authorization: &str) -> Outcome {
    kit.run(
        &TestRequest::get("/orders?page=2").header("authorization", authorization),
        &TestResponse::ok("orders"),
    )
}

/// Asserts a 401 for an invalid token, and returns the outcome.
fn assert_invalid_token(out: &Outcome) {
    assert_eq!(out.response.status, 401, "{:?}", out.response);
    assert!(out.local);
    assert!(out.forwarded.is_none(), "stopped before the upstream");
    assert_eq!(
        out.response.header("www-authenticate"),
        Some("Bearer realm=\"api\", error=\"invalid_token\"")
    );
    assert_eq!(out.response.text(), "401 Unauthorized\n");
}

fn hs256(claims: &Value) -> String {
    token(
        Signer::Hs256(HMAC_SECRET),
        &json!({"alg": "HS256", "typ": "JWT", "kid": HMAC_KID}),
        claims,
    )
}

#[test]
fn fixture_jwks_are_the_public_halves_of_the_private_keys() {
    for name in ["rsa-a", "rsa-b"] {
        let key = rsa::RsaPrivateKey::from_pkcs8_der(&private_der(name)).unwrap();
        let jwk = public_jwk(name);
        assert_eq!(
            jwk["n"],
            URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
            "{name}"
        );
        assert_eq!(
            jwk["e"],
            URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
            "{name}"
        );
    }
    for name in ["ec-a", "ec-b"] {
        let key = p256::ecdsa::SigningKey::from_pkcs8_der(&private_der(name)).unwrap();
        let point = key.verifying_key().to_encoded_point(false);
        let jwk = public_jwk(name);
        assert_eq!(
            jwk["x"],
            URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "{name}"
        );
        assert_eq!(
            jwk["y"],
            URL_SAFE_NO_PAD.encode(point.y().unwrap()),
            "{name}"
        );
    }
}

#[test]
fn a_valid_hs256_token_passes_with_its_claims_forwarded_and_the_token_stripped() {
    let kit = kit(jwt_config());
    let out = run(&kit, &bearer(&hs256(&claims())));
    assert_eq!(out.response.status, 200);
    assert!(!out.local);
    assert_eq!(out.response.text(), "orders");
    let up = out.forwarded.expect("forwarded");
    assert_eq!(up.path, "/orders?page=2");
    assert_eq!(up.header("x-auth-subject"), Some("user-1"));
    assert_eq!(up.header("x-auth-email"), Some("user-1@example.com"));
    assert_eq!(up.header("authorization"), None, "stripped by default");
    assert_eq!(kit.metric("auth_allowed"), Some(1));
    assert_eq!(kit.metric("auth_denied"), Some(0));
}

#[test]
fn a_valid_rs256_token_passes() {
    let kit = kit(jwt_config());
    let t = token(
        Signer::Rs256("rsa-a"),
        &json!({"alg": "RS256", "kid": "rsa-a"}),
        &claims(),
    );
    let out = run(&kit, &bearer(&t));
    assert_eq!(out.response.status, 200);
    assert_eq!(
        out.forwarded.unwrap().header("x-auth-subject"),
        Some("user-1")
    );
}

#[test]
fn a_valid_es256_token_passes() {
    let kit = kit(jwt_config());
    let t = token(
        Signer::Es256("ec-a"),
        &json!({"alg": "ES256", "kid": "ec-a"}),
        &claims(),
    );
    let out = run(&kit, &bearer(&t));
    assert_eq!(out.response.status, 200);
    assert_eq!(
        out.forwarded.unwrap().header("x-auth-subject"),
        Some("user-1")
    );
}

#[test]
fn without_kid_every_key_of_the_algorithm_is_tried() {
    let kit = kit(jwt_config());
    // rsa-b is the second RSA key of the set.
    let t = token(Signer::Rs256("rsa-b"), &json!({"alg": "RS256"}), &claims());
    assert_eq!(run(&kit, &bearer(&t)).response.status, 200);
    // ec-b is not in the set at all.
    let t = token(Signer::Es256("ec-b"), &json!({"alg": "ES256"}), &claims());
    assert_invalid_token(&run(&kit, &bearer(&t)));
}

#[test]
fn an_expired_token_is_refused() {
    let kit = kit(jwt_config());
    let out = run(
        &kit,
        &bearer(&hs256(&claims_with(json!({"exp": now() - 3600})))),
    );
    assert_invalid_token(&out);
    assert!(kit.logged("auth: 401 for /orders: token expired"));
    assert_eq!(kit.metric("auth_denied"), Some(1));
}

#[test]
fn a_token_not_yet_valid_is_refused() {
    let kit = kit(jwt_config());
    let out = run(
        &kit,
        &bearer(&hs256(&claims_with(json!({"nbf": now() + 3600})))),
    );
    assert_invalid_token(&out);
    assert!(kit.logged("token not yet valid"));
}

#[test]
fn the_leeway_covers_a_little_clock_skew() {
    let recent = claims_with(json!({"exp": now() - 30, "nbf": now() + 30}));
    let lenient = kit(jwt_config());
    assert_eq!(
        run(&lenient, &bearer(&hs256(&recent))).response.status,
        200,
        "within the default 60 s"
    );
    let mut config = jwt_config();
    config["jwt"]["leeway_seconds"] = json!(0);
    let strict = kit(config);
    assert_invalid_token(&run(&strict, &bearer(&hs256(&recent))));
    let beyond = claims_with(json!({"exp": now() - 600}));
    assert_invalid_token(&run(&lenient, &bearer(&hs256(&beyond))));
}

#[test]
fn a_missing_exp_is_accepted_unless_required() {
    let no_exp = claims_with(json!({"exp": null}));
    assert_eq!(
        run(&kit(jwt_config()), &bearer(&hs256(&no_exp)))
            .response
            .status,
        200
    );
    let mut config = jwt_config();
    config["jwt"]["require_exp"] = json!(true);
    assert_invalid_token(&run(&kit(config), &bearer(&hs256(&no_exp))));
}

#[test]
fn the_wrong_issuer_is_refused() {
    let kit = kit(jwt_config());
    let out = run(
        &kit,
        &bearer(&hs256(&claims_with(json!({"iss": "https://evil.example"})))),
    );
    assert_invalid_token(&out);
    assert!(kit.logged("wrong issuer"));
}

#[test]
fn the_wrong_audience_is_refused_and_an_audience_list_is_searched() {
    let kit = kit(jwt_config());
    assert_invalid_token(&run(
        &kit,
        &bearer(&hs256(&claims_with(json!({"aud": "web"})))),
    ));
    assert_invalid_token(&run(
        &kit,
        &bearer(&hs256(&claims_with(json!({"aud": null})))),
    ));
    let listed = claims_with(json!({"aud": ["web", "api"]}));
    assert_eq!(run(&kit, &bearer(&hs256(&listed))).response.status, 200);
}

#[test]
fn a_bad_signature_is_refused() {
    let kit = kit(jwt_config());
    // Claims changed after signing.
    let good = hs256(&claims());
    let (rest, sig) = good.rsplit_once('.').unwrap();
    let (header, _) = rest.split_once('.').unwrap();
    let forged_claims = URL_SAFE_NO_PAD.encode(claims_with(json!({"sub": "admin"})).to_string());
    assert_invalid_token(&run(
        &kit,
        &bearer(&format!("{header}.{forged_claims}.{sig}")),
    ));
    // Signed by another key under a known kid.
    let other = token(
        Signer::Rs256("rsa-b"),
        &json!({"alg": "RS256", "kid": "rsa-a"}),
        &claims(),
    );
    assert_invalid_token(&run(&kit, &bearer(&other)));
    // The wrong HMAC secret.
    let wrong = token(
        Signer::Hs256(b"another secret of thirty-two byt"),
        &json!({"alg": "HS256", "kid": HMAC_KID}),
        &claims(),
    );
    assert_invalid_token(&run(&kit, &bearer(&wrong)));
    assert!(kit.logged("bad signature"));
}

#[test]
fn alg_none_is_refused() {
    let kit = kit(jwt_config());
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    assert_invalid_token(&run(&kit, &bearer(&unsigned)));
    assert!(kit.logged("algorithm not accepted"));
}

#[test]
fn an_rsa_public_key_is_never_an_hmac_secret() {
    // The classic confusion: HS256 "signed" with the public key's bytes, under the RSA kid.
    let kit = kit(jwt_config());
    let public = public_jwk("rsa-a").to_string();
    let t = token(
        Signer::Hs256(public.as_bytes()),
        &json!({"alg": "HS256", "kid": "rsa-a"}),
        &claims(),
    );
    assert_invalid_token(&run(&kit, &bearer(&t)));
}

#[test]
fn an_unknown_kid_is_refused() {
    let kit = kit(jwt_config());
    let t = token(
        Signer::Hs256(HMAC_SECRET),
        &json!({"alg": "HS256", "kid": "retired"}),
        &claims(),
    );
    assert_invalid_token(&run(&kit, &bearer(&t)));
    assert!(kit.logged("no key for the token"));
}

#[test]
fn only_the_configured_algorithms_are_accepted() {
    let mut config = jwt_config();
    config["jwt"]["algorithms"] = json!(["RS256", "ES256"]);
    let kit = kit(config);
    assert_invalid_token(&run(&kit, &bearer(&hs256(&claims()))));
    let t = token(
        Signer::Es256("ec-a"),
        &json!({"alg": "ES256", "kid": "ec-a"}),
        &claims(),
    );
    assert_eq!(run(&kit, &bearer(&t)).response.status, 200);
}

#[test]
fn garbage_is_an_invalid_token() {
    let kit = kit(jwt_config());
    for value in ["Bearer", "Bearer not-a-jwt", "bearer a.b.c", "Bearer  ..."] {
        assert_invalid_token(&run(&kit, value));
    }
}

fn scoped_config() -> Value {
    let mut config = jwt_config();
    config["jwt"]["require"] = json!({"scopes": ["orders:read"], "claims": {"role": "admin"}});
    config
}

#[test]
fn a_valid_token_without_a_required_scope_gets_403() {
    let kit = kit(scoped_config());
    let out = run(
        &kit,
        &bearer(&hs256(&claims_with(
            json!({"scope": "profile", "role": "admin"}),
        ))),
    );
    assert_eq!(out.response.status, 403);
    assert!(out.forwarded.is_none());
    assert_eq!(
        out.response.header("www-authenticate"),
        Some("Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"orders:read\"")
    );
    assert_eq!(out.response.text(), "403 Forbidden\n");
    assert_eq!(kit.metric("auth_forbidden"), Some(1));
    assert_eq!(kit.metric("auth_denied"), Some(1));
    assert!(kit.logged("auth: 403 for /orders: missing scope"));
}

#[test]
fn a_valid_token_without_a_required_claim_gets_403() {
    let kit = kit(scoped_config());
    let out = run(
        &kit,
        &bearer(&hs256(&claims_with(
            json!({"scope": "orders:read", "role": "user"}),
        ))),
    );
    assert_eq!(out.response.status, 403);
    assert!(kit.logged("missing claim"));
}

#[test]
fn scopes_from_scope_or_scp_and_claims_from_arrays_satisfy_the_requirements() {
    let kit = kit(scoped_config());
    for extra in [
        json!({"scope": "profile orders:read", "role": "admin"}),
        json!({"scp": ["orders:read"], "role": ["user", "admin"]}),
    ] {
        let out = run(&kit, &bearer(&hs256(&claims_with(extra.clone()))));
        assert_eq!(out.response.status, 200, "{extra}");
    }
}

#[test]
fn an_invalid_token_is_401_even_when_it_would_lack_a_scope() {
    let kit = kit(scoped_config());
    let expired = claims_with(json!({"exp": now() - 3600}));
    assert_invalid_token(&run(&kit, &bearer(&hs256(&expired))));
}

#[test]
fn the_token_is_kept_when_stripping_is_off() {
    let mut config = jwt_config();
    config["strip_credential"] = json!(false);
    let kit = kit(config);
    let auth = bearer(&hs256(&claims()));
    let up = run(&kit, &auth).forwarded.expect("forwarded");
    assert_eq!(up.header("authorization"), Some(auth.as_str()));
}

#[test]
fn claims_that_cannot_be_headers_are_not_forwarded() {
    let mut config = jwt_config();
    config["jwt"]["forward_claims"] =
        json!({"sub": "x-auth-subject", "groups": "x-auth-groups", "profile": "x-auth-profile"});
    let kit = kit(config);
    let c = claims_with(json!({"groups": ["a", "b"], "profile": {"nested": true}}));
    let up = run(&kit, &bearer(&hs256(&c))).forwarded.expect("forwarded");
    assert_eq!(up.header("x-auth-groups"), Some("a,b"));
    assert_eq!(up.header("x-auth-profile"), None);
}

#[test]
fn no_token_ever_reaches_the_log() {
    let kit = kit(jwt_config());
    let t = hs256(&claims_with(json!({"exp": now() - 3600})));
    run(&kit, &bearer(&t));
    let sig = t.rsplit_once('.').unwrap().1;
    assert!(kit.logs().iter().all(|l| !l.message.contains(sig)));
    assert!(kit.logged("token expired"));
}
