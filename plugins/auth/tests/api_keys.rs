//! API keys through the real host: from a header or a query parameter, the key's id
//! forwarded, the key stripped (also from the forwarded path), wrong keys refused.

mod common;

use common::*;
use serde_json::{json, Value};
use sluice_testkit::{Kit, Options, TestRequest, TestResponse};

const CI_KEY: &str = "ci-key-0123456789abcdef";
const OPS_KEY: &str = "ops-key-fedcba9876543210";

fn config() -> Value {
    json!({
        "realm": "api",
        "api_keys": {
            "header": "x-api-key",
            "query": "api_key",
            "keys": [
                {"id": "ci", "sha256": sha256_hex(CI_KEY)},
                {"id": "ops", "sha256": sha256_hex(OPS_KEY).to_uppercase()}
            ]
        }
    })
}

fn ok() -> TestResponse {
    TestResponse::ok("data")
}

#[test]
fn a_valid_header_key_passes_with_its_id_and_is_stripped() {
    let kit = kit(config());
    let out = kit.run(
        &TestRequest::get("/data").header("x-api-key", CI_KEY),
        &ok(),
    );
    assert_eq!(out.response.status, 200);
    assert!(!out.local);
    let up = out.forwarded.expect("forwarded");
    assert_eq!(up.header("x-auth-key-id"), Some("ci"));
    assert_eq!(up.header("x-api-key"), None, "stripped");
    let out = kit.run(
        &TestRequest::get("/data").header("x-api-key", OPS_KEY),
        &ok(),
    );
    assert_eq!(
        out.forwarded.unwrap().header("x-auth-key-id"),
        Some("ops"),
        "digests in upper case work too"
    );
    assert_eq!(kit.metric("auth_allowed"), Some(2));
}

#[test]
fn a_wrong_header_key_gets_401() {
    let kit = kit(config());
    for key in ["nope", "", "ci-key-0123456789abcdeF", &format!("{CI_KEY} ")] {
        let out = kit.run(&TestRequest::get("/data").header("x-api-key", key), &ok());
        assert_eq!(out.response.status, 401, "{key:?}");
        assert!(out.forwarded.is_none());
        assert_eq!(
            out.response.header("www-authenticate"),
            Some("ApiKey realm=\"api\", header=\"x-api-key\", query=\"api_key\"")
        );
    }
    assert!(kit.logged("auth: 401 for /data: unknown API key"));
    assert!(kit.logs().iter().all(|l| !l.message.contains("ci-key")));
}

#[test]
fn a_valid_query_key_passes_and_leaves_the_forwarded_path() {
    let kit = kit(config());
    let out = kit.run(
        &TestRequest::get(&format!("/data?page=2&api_key={CI_KEY}&sort=asc")),
        &ok(),
    );
    assert_eq!(out.response.status, 200);
    let up = out.forwarded.expect("forwarded");
    assert_eq!(up.path, "/data?page=2&sort=asc");
    assert_eq!(up.header("x-auth-key-id"), Some("ci"));

    let out = kit.run(&TestRequest::get(&format!("/data?api_key={CI_KEY}")), &ok());
    assert_eq!(out.forwarded.unwrap().path, "/data", "no empty query left");
}

#[test]
fn a_percent_encoded_query_key_is_decoded() {
    let key = "key with/odd+chars";
    let config =
        json!({"api_keys": {"query": "k", "keys": [{"id": "odd", "sha256": sha256_hex(key)}]}});
    let kit = kit(config);
    let out = kit.run(&TestRequest::get("/x?k=key%20with%2Fodd%2Bchars"), &ok());
    assert_eq!(out.response.status, 200);
    assert_eq!(out.forwarded.unwrap().path, "/x");
}

#[test]
fn a_wrong_query_key_gets_401() {
    let kit = kit(config());
    let out = kit.run(&TestRequest::get("/data?api_key=guess"), &ok());
    assert_eq!(out.response.status, 401);
    assert!(out.forwarded.is_none());
}

#[test]
fn the_key_stays_when_stripping_is_off() {
    let mut c = config();
    c["strip_credential"] = json!(false);
    let kit = kit(c);
    let up = kit
        .run(
            &TestRequest::get("/data").header("x-api-key", CI_KEY),
            &ok(),
        )
        .forwarded
        .expect("forwarded");
    assert_eq!(up.header("x-api-key"), Some(CI_KEY));
    let up = kit
        .run(&TestRequest::get(&format!("/data?api_key={CI_KEY}")), &ok())
        .forwarded
        .expect("forwarded");
    assert_eq!(up.path, format!("/data?api_key={CI_KEY}"));
}

#[test]
fn the_id_header_is_configurable() {
    let mut c = config();
    c["api_keys"]["id_header"] = json!("X-Client");
    let kit = kit(c);
    let up = kit
        .run(
            &TestRequest::get("/data").header("x-api-key", CI_KEY),
            &ok(),
        )
        .forwarded
        .expect("forwarded");
    assert_eq!(up.header("x-client"), Some("ci"));
    assert_eq!(up.header("x-auth-key-id"), None);
}

#[test]
fn api_keys_need_no_grant() {
    let kit: Kit = try_kit(Options::default().config_json(&config())).expect("loads");
    let out = kit.run(
        &TestRequest::get("/data").header("x-api-key", CI_KEY),
        &ok(),
    );
    assert_eq!(out.response.status, 200);
}
