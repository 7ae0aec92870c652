//! Basic authentication through the real host.

mod common;

use common::*;
use serde_json::{json, Value};
use sluice_testkit::{Kit, Outcome, TestRequest, TestResponse};

fn config() -> Value {
    json!({
        "realm": "api",
        "basic": {"users": [
            {"user": "alice", "sha256": sha256_hex("correct horse battery staple")},
            {"user": "bob", "sha256": sha256_hex("hunter2-but-longer")}
        ]}
    })
}

fn run(kit: &Kit, authorization: &str) -> Outcome {
    kit.run(
        &TestRequest::get("/admin").header("authorization", authorization),
        &TestResponse::ok("admin"),
    )
}

#[test]
fn a_valid_user_passes_named_and_stripped() {
    let kit = kit(config());
    let out = run(&kit, &basic("alice", "correct horse battery staple"));
    assert_eq!(out.response.status, 200);
    let up = out.forwarded.expect("forwarded");
    assert_eq!(up.header("x-auth-user"), Some("alice"));
    assert_eq!(up.header("authorization"), None);
    let out = run(&kit, &basic("bob", "hunter2-but-longer"));
    assert_eq!(out.forwarded.unwrap().header("x-auth-user"), Some("bob"));
}

#[test]
fn wrong_credentials_get_401_with_the_basic_challenge() {
    let kit = kit(config());
    for value in [
        basic("alice", "wrong"),
        basic("alice", "hunter2-but-longer"),
        basic("carol", "correct horse battery staple"),
        basic("", ""),
        "Basic !!!not-base64".to_string(),
        "Basic ".to_string(),
    ] {
        let out = run(&kit, &value);
        assert_eq!(out.response.status, 401, "{value}");
        assert!(out.forwarded.is_none());
        assert_eq!(
            out.response.header("www-authenticate"),
            Some("Basic realm=\"api\", charset=\"UTF-8\"")
        );
    }
    assert!(kit.logged("bad basic credential"));
    assert!(kit.logs().iter().all(|l| !l.message.contains("wrong")));
}

#[test]
fn the_user_header_is_configurable() {
    let mut c = config();
    c["basic"]["user_header"] = json!("x-remote-user");
    let kit = kit(c);
    let up = run(&kit, &basic("alice", "correct horse battery staple"))
        .forwarded
        .expect("forwarded");
    assert_eq!(up.header("x-remote-user"), Some("alice"));
}
