//! The headers plugin's .wasm in the real host, through the test kit.

use sluice_testkit::{build_plugin, json, Kit, Options, TestRequest, TestResponse};

fn kit(config: serde_json::Value) -> Kit {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).expect("the plugin builds");
    Kit::load(&wasm, Options::default().config_json(&config)).expect("the plugin loads")
}

#[test]
fn request_and_response_changes_with_placeholders() {
    let kit = kit(json!({ "rules": [{
        "request": {
            "remove": ["x-internal"],
            "set": { "x-route": "{route}", "x-copy": "user={request.header.x-user}" },
            "add": { "x-multi": "two" }
        },
        "response": {
            "remove": ["server"],
            "set": { "x-request-id-echo": "{request.id}", "x-method": "{request.method} {request.path}" },
            "add": { "x-multi": "b" }
        }
    }]}));
    let out = kit.run(
        &TestRequest::get("/a?q=1")
            .header("x-request-id", "rid-7")
            .header("x-internal", "secret")
            .header("x-user", "ann")
            .header("x-multi", "one"),
        &TestResponse::ok("hi")
            .header("server", "upstream/1.0")
            .header("x-multi", "a"),
    );
    let up = out.forwarded.expect("forwarded");
    assert_eq!(up.header("x-internal"), None);
    assert_eq!(up.header("x-route"), Some("test"));
    assert_eq!(up.header("x-copy"), Some("user=ann"));
    assert_eq!(up.header_all("x-multi"), ["one", "two"]);
    let r = &out.response;
    assert_eq!(r.header("server"), None);
    assert_eq!(r.header("x-request-id-echo"), Some("rid-7"));
    assert_eq!(r.header("x-method"), Some("GET /a?q=1"));
    assert_eq!(r.header_all("x-multi"), ["a", "b"]);
    assert_eq!(r.text(), "hi");
}

#[test]
fn rules_apply_by_path_prefix_and_missing_values_skip_the_header() {
    let kit = kit(json!({ "rules": [
        { "path_prefixes": ["/api/", "/v2"], "response": { "set": { "x-api": "yes" } } },
        { "request": { "set": { "x-from": "{request.header.x-missing}", "x-lit": "{{literal}}" } } }
    ]}));
    let api = kit.run(&TestRequest::get("/api/users"), &TestResponse::ok(""));
    assert_eq!(api.response.header("x-api"), Some("yes"));
    let v2 = kit.run(&TestRequest::get("/v2?x=/api/"), &TestResponse::ok(""));
    assert_eq!(v2.response.header("x-api"), Some("yes"));
    let other = kit.run(&TestRequest::get("/other/api/"), &TestResponse::ok(""));
    assert_eq!(other.response.header("x-api"), None);
    let up = other.forwarded.unwrap();
    assert_eq!(up.header("x-from"), None, "no value: not set");
    assert_eq!(up.header("x-lit"), Some("{literal}"));
}

#[test]
fn hidden_headers_cannot_be_changed_without_a_grant() {
    // The host refuses writes to `authorization` unless granted: the rule fails the request.
    let kit = kit(json!({ "rules": [{ "request": { "remove": ["authorization"] } }] }));
    let out = kit.run(
        &TestRequest::get("/").header("authorization", "Bearer x"),
        &TestResponse::ok(""),
    );
    assert_eq!(out.response.status, 500);
    assert!(out.local && out.forwarded.is_none());
    assert!(kit.logged("remove a header: the host answered BadArgument"));
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap();
    let granted = Kit::load(
        &wasm,
        Options::default()
            .config_json(&json!({ "rules": [{ "request": { "remove": ["authorization"] } }] }))
            .expose(&["authorization"]),
    )
    .unwrap();
    let out = granted.run(
        &TestRequest::get("/").header("authorization", "Bearer x"),
        &TestResponse::ok(""),
    );
    assert_eq!(out.forwarded.unwrap().header("authorization"), None);
}

#[test]
fn bad_configurations_are_refused() {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap();
    for bad in [
        json!({ "rules": [] }),
        json!({ "rules": [{ "request": { "set": { "x": "{nope}" } } }] }),
        json!({ "rules": [{ "request": { "remove": ["bad name"] } }] }),
        json!({ "rules": [{ "path_prefixes": ["api"], "request": { "remove": ["x"] } }] }),
        json!({ "rules": [{ "requests": {} }] }),
    ] {
        let r = Kit::load(&wasm, Options::default().config_json(&bad));
        assert!(r.is_err(), "accepted {bad}");
    }
}

/// The plugin needs nothing Sluice-specific: on a plain ABI v0.2.1 host (nothing hidden, no
/// Sluice-only properties) `{route}` has no value and is skipped; the rest works.
#[test]
fn runs_on_a_plain_proxy_wasm_host() {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap();
    let kit = Kit::load(
        &wasm,
        Options::default()
            .config_json(&json!({ "rules": [{ "request": {
                "set": { "x-route": "{route}", "x-id": "{request.id}" },
                "remove": ["authorization"]
            } }] }))
            .portable(),
    )
    .unwrap();
    let out = kit.run(
        &TestRequest::get("/")
            .header("x-request-id", "r1")
            .header("authorization", "Bearer x"),
        &TestResponse::ok(""),
    );
    let up = out.forwarded.unwrap();
    assert_eq!(up.header("x-route"), None);
    assert_eq!(up.header("x-id"), Some("r1"));
    assert_eq!(
        up.header("authorization"),
        None,
        "nothing hidden: removable"
    );
}
