//! The hello plugin's .wasm in the real host, through the test kit.

use sluice_testkit::{build_plugin, json, Kit, Options, TestRequest, TestResponse};

fn kit(config: serde_json::Value) -> Kit {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).expect("the plugin builds");
    Kit::load(&wasm, Options::default().config_json(&config)).expect("the plugin loads")
}

#[test]
fn adds_the_configured_greeting_to_every_response() {
    let kit = kit(json!({ "greeting": "hi there" }));
    let out = kit.run(&TestRequest::get("/x"), &TestResponse::ok("body"));
    assert!(!out.local);
    assert_eq!(out.response.header("x-hello"), Some("hi there"));
    assert_eq!(out.response.text(), "body");
    assert!(out.forwarded.is_some());
    assert!(kit.logged("hello: configured, greeting \"hi there\""));
}

#[test]
fn an_empty_greeting_falls_back_to_the_default() {
    let kit = kit(json!({ "greeting": "  " }));
    let out = kit.run(&TestRequest::get("/"), &TestResponse::new(204));
    assert_eq!(
        out.response.header("x-hello"),
        Some("hello from a Sluice plugin")
    );
}

#[test]
fn an_unknown_field_refuses_the_configuration() {
    let wasm = build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap();
    let err = Kit::load(
        &wasm,
        Options::default().config_json(&json!({ "greting": "x" })),
    )
    .err()
    .expect("refused");
    assert!(
        err.to_string()
            .contains("proxy_on_configure returned false"),
        "{err}"
    );
}
