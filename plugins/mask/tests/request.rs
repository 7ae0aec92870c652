//! Masking request bodies, and the count header that goes upstream, through the real host.

mod common;

use common::{kit, CARD, EMAIL, IBAN};
use sluice_testkit::{json, TestRequest, TestResponse};

fn post_json(body: &str) -> TestRequest {
    TestRequest::post("/submit", body).header("content-type", "application/json")
}

#[test]
fn request_bodies_are_left_alone_by_default() {
    let kit = kit(json!({}));
    let body = format!(r#"{{"email":"{EMAIL}"}}"#);
    let out = kit.run(&post_json(&body), &TestResponse::ok("ok"));
    let fwd = out.forwarded.expect("forwarded");
    assert_eq!(fwd.text(), body);
    assert_eq!(fwd.header("x-masked-fields"), None);
    let expected_length = body.len().to_string();
    assert_eq!(fwd.header("content-length"), Some(expected_length.as_str()));
}

#[test]
fn masked_requests_tell_the_upstream_the_count() {
    let kit = kit(json!({ "request": true }));
    let body = format!(r#"{{"email":"{EMAIL}","card":"{CARD}","iban":"{IBAN}","cc":"{EMAIL}"}}"#);
    let out = kit.run(&post_json(&body).in_chunks(7), &TestResponse::ok("ok"));
    assert!(!out.local);
    let fwd = out.forwarded.expect("forwarded");
    let masked =
        r#"{"email":"[REDACTED]","card":"[REDACTED]","iban":"[REDACTED]","cc":"[REDACTED]"}"#;
    assert_eq!(fwd.text(), masked);
    assert_eq!(fwd.header("x-masked-fields"), Some("4"));
    // The host declares the new length.
    let expected_length = masked.len().to_string();
    assert_eq!(fwd.header("content-length"), Some(expected_length.as_str()));
    assert_eq!(kit.metric("mask_fields_total"), Some(4));
    assert_eq!(out.response.text(), "ok");
}

#[test]
fn the_count_header_says_zero_when_nothing_was_found() {
    let kit = kit(json!({ "request": true, "count_header": "X-PII-Masked" }));
    let out = kit.run(&post_json(r#"{"n":1}"#), &TestResponse::ok("ok"));
    let fwd = out.forwarded.expect("forwarded");
    assert_eq!(fwd.text(), r#"{"n":1}"#);
    assert_eq!(fwd.header("x-pii-masked"), Some("0"));
    assert_eq!(fwd.header("x-masked-fields"), None);
}

#[test]
fn without_a_count_header_the_body_is_masked_as_it_streams() {
    let kit = kit(json!({ "request": true, "count_header": null }));
    let body = format!("to={EMAIL}&card={CARD}");
    let req = TestRequest::post("/form", body.as_str())
        .header("content-type", "text/plain")
        .in_chunks(5);
    let out = kit.run(&req, &TestResponse::ok("ok"));
    assert!(!out.local);
    let fwd = out.forwarded.expect("forwarded");
    assert_eq!(fwd.text(), "to=[REDACTED]&card=[REDACTED]");
    assert_eq!(fwd.header("x-masked-fields"), None);
    assert_eq!(
        fwd.header("content-length"),
        None,
        "removed: the length changed"
    );
    assert_eq!(kit.metric("mask_fields_total"), Some(2));
}

#[test]
fn a_request_too_long_to_hold_is_masked_without_the_header() {
    // Sluice holds at most 64 KiB of a request before forwarding it: a longer declared body
    // is masked as it streams, and no count header can be added.
    let kit = kit(json!({ "request": true }));
    let body = format!("{EMAIL} {}", "x".repeat(70 * 1024));
    let out = kit.run(
        &TestRequest::post("/big", body.as_str())
            .header("content-type", "text/plain")
            .in_chunks(8 * 1024),
        &TestResponse::ok("ok"),
    );
    assert!(!out.local);
    let fwd = out.forwarded.expect("forwarded");
    assert!(fwd.text().starts_with("[REDACTED] xxx"));
    assert_eq!(
        fwd.body.len(),
        body.len() - EMAIL.len() + "[REDACTED]".len()
    );
    assert_eq!(fwd.header("x-masked-fields"), None);
    assert_eq!(kit.metric("mask_fields_total"), Some(1));
}

#[test]
fn oversize_requests_are_refused_with_413() {
    let kit = kit(json!({ "request": true, "max_body_bytes": 32 }));
    let body = format!(r#"{{"email":"{EMAIL}","pad":"{}"}}"#, "x".repeat(40));
    let out = kit.run(&post_json(&body), &TestResponse::ok("ok"));
    assert!(out.local);
    assert!(out.forwarded.is_none(), "nothing reached the upstream");
    assert_eq!(out.response.status, 413);
    assert_eq!(kit.metric("mask_oversize_total"), Some(1));
}

#[test]
fn oversize_requests_pass_unmasked_when_configured() {
    let kit = kit(json!({ "request": true, "max_body_bytes": 32, "oversize": "pass" }));
    let body = format!(r#"{{"email":"{EMAIL}","pad":"{}"}}"#, "x".repeat(40));
    let out = kit.run(&post_json(&body).in_chunks(8), &TestResponse::ok("ok"));
    assert!(!out.local);
    let fwd = out.forwarded.expect("forwarded");
    assert_eq!(fwd.text(), body);
    assert_eq!(fwd.header("x-masked-fields"), None);
    assert_eq!(kit.metric("mask_oversize_total"), Some(1));
    assert!(kit.logged("mask: request body not masked"));
}

#[test]
fn compressed_requests_are_refused_with_415() {
    let kit = kit(json!({ "request": true }));
    let req = post_json(EMAIL).header("content-encoding", "gzip");
    let out = kit.run(&req, &TestResponse::ok("ok"));
    assert_eq!(out.response.status, 415);
    assert!(out.forwarded.is_none());
    assert_eq!(kit.metric("mask_encoded_total"), Some(1));
}

#[test]
fn requests_of_other_types_pass_untouched() {
    let kit = kit(json!({ "request": true }));
    let req =
        TestRequest::post("/upload", EMAIL).header("content-type", "application/octet-stream");
    let out = kit.run(&req, &TestResponse::ok("ok"));
    let fwd = out.forwarded.expect("forwarded");
    assert_eq!(fwd.text(), EMAIL);
    assert_eq!(fwd.header("x-masked-fields"), None);
    let expected_length = EMAIL.len().to_string();
    assert_eq!(fwd.header("content-length"), Some(expected_length.as_str()));
}

#[test]
fn requests_without_a_body_are_left_alone() {
    let kit = kit(json!({ "request": true, "response": false }));
    let out = kit.run(
        &TestRequest::get("/x").header("content-type", "application/json"),
        &TestResponse::ok("ok"),
    );
    let fwd = out.forwarded.expect("forwarded");
    assert_eq!(fwd.header("x-masked-fields"), None);
    assert_eq!(kit.metric("mask_bodies_total"), Some(0));
}
