//! What every scheme shares, through the real host: the 401 without a credential, the
//! anti-spoofing of identity headers, the allow-list, the `authorization` grant, and the
//! configurations the plugin refuses.

mod common;

use common::*;
use serde_json::{json, Value};
use sluice_testkit::{Options, TestRequest, TestResponse};

const KEY: &str = "a-long-random-api-key";

/// Every scheme on, identity headers forwarded, two allow-listed prefixes.
fn all_schemes() -> Value {
    let mut c = jwt_config();
    c["allow_paths"] = json!(["/health", "/public/"]);
    c["api_keys"] =
        json!({"header": "x-api-key", "keys": [{"id": "ci", "sha256": sha256_hex(KEY)}]});
    c["basic"] = json!({"users": [{"user": "alice", "sha256": sha256_hex("pw-of-alice")}]});
    c
}

fn ok() -> TestResponse {
    TestResponse::ok("upstream")
}

#[test]
fn no_credential_gets_401_with_a_challenge_per_scheme() {
    let kit = kit(all_schemes());
    let out = kit.run(&TestRequest::get("/orders"), &ok());
    assert_eq!(out.response.status, 401);
    assert!(out.local);
    assert!(out.forwarded.is_none(), "the upstream never sees it");
    assert_eq!(
        out.response.header_all("www-authenticate"),
        vec![
            "Bearer realm=\"api\"",
            "Basic realm=\"api\", charset=\"UTF-8\"",
            "ApiKey realm=\"api\", header=\"x-api-key\"",
        ]
    );
    assert_eq!(
        out.response.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(out.response.header("cache-control"), Some("no-store"));
    assert_eq!(out.response.text(), "401 Unauthorized\n");
    assert!(kit.logged("auth: 401 for /orders: no credential"));
    assert_eq!(kit.metric("auth_denied"), Some(1));
    assert_eq!(kit.metric("auth_allowed"), Some(0));
}

#[test]
fn an_unknown_authorization_scheme_counts_as_no_credential() {
    let kit = kit(all_schemes());
    let out = kit.run(
        &TestRequest::get("/orders").header("authorization", "Digest username=\"a\""),
        &ok(),
    );
    assert_eq!(out.response.status, 401);
    assert_eq!(
        out.response.header("www-authenticate"),
        Some("Bearer realm=\"api\""),
        "no invalid_token: there was no bearer token"
    );
}

#[test]
fn each_scheme_works_alongside_the_others() {
    let kit = kit(all_schemes());
    let t = token(
        Signer::Hs256(HMAC_SECRET),
        &json!({"alg": "HS256", "kid": HMAC_KID}),
        &claims(),
    );
    let cases = [
        ("authorization", bearer(&t), "x-auth-subject", "user-1"),
        (
            "authorization",
            basic("alice", "pw-of-alice"),
            "x-auth-user",
            "alice",
        ),
        ("x-api-key", KEY.to_string(), "x-auth-key-id", "ci"),
    ];
    for (header, value, id_header, id) in cases {
        let out = kit.run(&TestRequest::get("/orders").header(header, &value), &ok());
        assert_eq!(out.response.status, 200, "{header}");
        assert_eq!(out.forwarded.unwrap().header(id_header), Some(id));
    }
}

#[test]
fn client_sent_identity_headers_never_reach_the_upstream() {
    let kit = kit(all_schemes());
    let spoofed = |path: &str| {
        TestRequest::get(path)
            .header("x-auth-subject", "admin")
            .header("x-auth-email", "ceo@example.com")
            .header("x-auth-user", "root")
            .header("x-auth-key-id", "master")
    };
    // Authenticated with an API key: only the plugin's header is there.
    let out = kit.run(&spoofed("/orders").header("x-api-key", KEY), &ok());
    let up = out.forwarded.expect("forwarded");
    assert_eq!(up.header_all("x-auth-key-id"), vec!["ci"]);
    assert_eq!(up.header("x-auth-subject"), None);
    assert_eq!(up.header("x-auth-email"), None);
    assert_eq!(up.header("x-auth-user"), None);
    // Authenticated with a token lacking `email`: no email header, not the client's.
    let t = token(
        Signer::Hs256(HMAC_SECRET),
        &json!({"alg": "HS256", "kid": HMAC_KID}),
        &claims_with(json!({"email": null})),
    );
    let out = kit.run(
        &spoofed("/orders").header("authorization", &bearer(&t)),
        &ok(),
    );
    let up = out.forwarded.expect("forwarded");
    assert_eq!(up.header_all("x-auth-subject"), vec!["user-1"]);
    assert_eq!(up.header("x-auth-email"), None);
    // On an allow-listed path: all removed.
    let up = kit
        .run(&spoofed("/health"), &ok())
        .forwarded
        .expect("forwarded");
    for h in [
        "x-auth-subject",
        "x-auth-email",
        "x-auth-user",
        "x-auth-key-id",
    ] {
        assert_eq!(up.header(h), None, "{h}");
    }
}

#[test]
fn allow_listed_paths_skip_authentication() {
    let kit = kit(all_schemes());
    for path in ["/health", "/health/live", "/public/", "/public/app.js?v=3"] {
        let out = kit.run(&TestRequest::get(path), &ok());
        assert_eq!(out.response.status, 200, "{path}");
        assert_eq!(out.forwarded.expect("forwarded").path, path);
    }
    assert_eq!(kit.metric("auth_skipped"), Some(4));
    for path in [
        "/healthz",
        "/public",
        "/private/health",
        "/public/../admin",
        "/public/%2e%2e/admin",
    ] {
        let out = kit.run(&TestRequest::get(path), &ok());
        assert_eq!(out.response.status, 401, "{path}");
    }
}

#[test]
fn allow_listed_paths_leave_credentials_alone() {
    let kit = kit(all_schemes());
    let up = kit
        .run(
            &TestRequest::get("/health").header("x-api-key", "whatever"),
            &ok(),
        )
        .forwarded
        .expect("forwarded");
    assert_eq!(up.header("x-api-key"), Some("whatever"));
    assert_eq!(up.header("x-auth-key-id"), None);
}

#[test]
fn without_the_authorization_grant_tokens_are_invisible() {
    let t = token(
        Signer::Hs256(HMAC_SECRET),
        &json!({"alg": "HS256", "kid": HMAC_KID}),
        &claims(),
    );
    let req = TestRequest::get("/orders").header("authorization", &bearer(&t));
    let hidden = try_kit(Options::default().config_json(&jwt_config())).expect("loads");
    let out = hidden.run(&req, &ok());
    assert_eq!(out.response.status, 401, "the host hid the token");
    assert_eq!(
        out.response.header("www-authenticate"),
        Some("Bearer realm=\"api\"")
    );
    assert!(hidden.logged("no credential"));
    assert_eq!(hidden.failures(), 0, "a clean 401, not a plugin failure");

    let basic_only = json!({"basic": {"users": [{"user": "alice", "sha256": sha256_hex("pw")}]}});
    let hidden = try_kit(Options::default().config_json(&basic_only)).expect("loads");
    let req = TestRequest::get("/").header("authorization", &basic("alice", "pw"));
    assert_eq!(hidden.run(&req, &ok()).response.status, 401);

    let granted = kit(jwt_config());
    let req = TestRequest::get("/orders").header("authorization", &bearer(&t));
    assert_eq!(granted.run(&req, &ok()).response.status, 200, "with expose");
}

#[test]
fn the_realm_defaults_to_sluice() {
    let kit = kit(json!({"basic": {"users": [{"user": "a", "sha256": sha256_hex("p")}]}}));
    let out = kit.run(&TestRequest::get("/"), &ok());
    assert_eq!(
        out.response.header("www-authenticate"),
        Some("Basic realm=\"sluice\", charset=\"UTF-8\"")
    );
}

#[test]
fn the_configuration_is_logged_without_secrets() {
    let kit = kit(all_schemes());
    assert!(kit.logged(
        "auth: configured: jwt (4 keys), api keys (1), basic (1 users); 2 allow-listed paths"
    ));
    let secret = sha256_hex(KEY);
    assert!(kit.logs().iter().all(|l| !l.message.contains(&secret)));
}

fn refused(config: Value) {
    let err = try_kit(
        Options::default()
            .config_json(&config)
            .expose(&["authorization"]),
    )
    .err()
    .unwrap_or_else(|| panic!("accepted: {config}"));
    assert!(
        err.to_string()
            .contains("proxy_on_configure returned false"),
        "{err}"
    );
}

#[test]
fn bad_configurations_are_refused() {
    let user = json!({"user": "a", "sha256": sha256_hex("p")});
    refused(json!({}));
    refused(json!({"realm": "api"}));
    refused(json!({"basic": {"users": [user]}, "unknown": true}));
    refused(json!({"basic": {"users": [{"user": "a", "sha256": "not-hex"}]}}));
    refused(json!({"api_keys": {"keys": [{"id": "a", "sha256": "abcd"}]}}));
    refused(json!({"api_keys": {"keys": []}}));
    refused(json!({"basic": {"users": [user]}, "allow_paths": ["no-slash"]}));
    let with_jwt = |jwt: Value| {
        let mut c = jwt_config();
        for (k, v) in jwt.as_object().unwrap() {
            c["jwt"][k] = v.clone();
        }
        c
    };
    refused(with_jwt(json!({"algorithms": ["none"]})));
    refused(with_jwt(json!({"algorithms": ["HS512"]})));
    refused(with_jwt(
        json!({"jwks": {"keys": [public_jwk("rsa-weak")]}}),
    ));
    refused(with_jwt(
        json!({"jwks": {"keys": [{"kty": "oct", "kid": "s", "k": "c2hvcnQ"}]}}),
    ));
    let mut off_curve = public_jwk("ec-a");
    off_curve["y"] = off_curve["x"].clone();
    refused(with_jwt(json!({"jwks": {"keys": [off_curve]}})));
    refused(with_jwt(json!({"jwks": {"keys": []}})));
    refused(with_jwt(json!({"leeway": 5})));
    refused(with_jwt(
        json!({"forward_claims": {"sub": "authorization"}}),
    ));
}

#[test]
fn the_example_configuration_loads_once_its_keys_are_filled_in() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/example.yaml");
    let text = std::fs::read_to_string(path).expect("example.yaml");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let example = serde_json::to_value(&yaml).expect("JSON-compatible");
    assert_eq!(
        example["plugins"]["auth"]["expose"],
        json!(["authorization"])
    );
    assert_eq!(example["routes"][0]["plugins"], json!(["auth"]));
    let mut config = example["plugins"]["auth"]["config"].clone();
    // The example's placeholders, replaced by the test keys.
    let keys = config["jwt"]["jwks"]["keys"].as_array_mut().expect("keys");
    assert_eq!(keys.len(), 2);
    keys[0] = public_jwk("rsa-a");
    keys[1] = public_jwk("ec-a");
    let kit = kit(config);
    // The example's API key is the one whose digest it lists ("foo").
    let out = kit.run(&TestRequest::get("/orders?api_key=foo"), &ok());
    assert_eq!(out.response.status, 200);
    assert_eq!(out.forwarded.unwrap().path, "/orders");
    let t = token(
        Signer::Es256("ec-a"),
        &json!({"alg": "ES256", "kid": "ec-a"}),
        &claims_with(json!({"scope": "read"})),
    );
    let out = kit.run(
        &TestRequest::get("/orders").header("authorization", &bearer(&t)),
        &ok(),
    );
    assert_eq!(out.response.status, 200);
    assert_eq!(
        out.forwarded.unwrap().header("x-auth-email"),
        Some("user-1@example.com")
    );
    assert_eq!(
        kit.run(&TestRequest::get("/health"), &ok()).response.status,
        200
    );
}
