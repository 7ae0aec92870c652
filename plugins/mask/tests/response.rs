//! Masking response bodies, through the real host.

mod common;

use common::{json_response, kit, CARD, EMAIL, IBAN, TOKEN};
use sluice_testkit::{json, Limits, Options, TestRequest, TestResponse};

#[test]
fn every_preset_masks_its_field_and_counts_it() {
    let kit = kit(json!({}));
    let body =
        format!(r#"{{"email":"{EMAIL}","card":"{CARD}","iban":"{IBAN}","auth":"Bearer {TOKEN}"}}"#);
    let out = kit.run(&TestRequest::get("/users/1"), &json_response(&body));
    assert!(!out.local && !out.cut);
    assert_eq!(out.response.status, 200);
    assert_eq!(
        out.response.text(),
        r#"{"email":"[REDACTED]","card":"[REDACTED]","iban":"[REDACTED]","auth":"Bearer [REDACTED]"}"#
    );
    assert_eq!(kit.metric("mask_fields_total"), Some(4));
    assert_eq!(kit.metric("mask_bodies_total"), Some(1));
}

#[test]
fn values_failing_their_check_are_left_alone() {
    let kit = kit(json!({ "presets": ["card", "iban"] }));
    // Luhn fails (last digit changed); mod-97 fails (check digits changed); a 16-digit
    // number inside a longer one.
    let body = r#"{"card":"4111111111111112","iban":"DE88 3704 0044 0532 0130 00","id":"41111111111111110"}"#;
    let out = kit.run(&TestRequest::get("/"), &json_response(body));
    assert_eq!(out.response.text(), body);
    assert_eq!(kit.metric("mask_fields_total"), Some(0));
    assert_eq!(kit.metric("mask_bodies_total"), Some(1));
}

#[test]
fn only_the_configured_presets_apply() {
    let kit = kit(json!({ "presets": ["email"] }));
    let body = format!("{EMAIL} {CARD} {IBAN} Bearer {TOKEN}");
    let out = kit.run(
        &TestRequest::get("/"),
        &TestResponse::ok(body.as_str()).header("content-type", "text/plain"),
    );
    assert_eq!(
        out.response.text(),
        format!("[REDACTED] {CARD} {IBAN} Bearer {TOKEN}")
    );
    assert_eq!(kit.metric("mask_fields_total"), Some(1));
}

#[test]
fn custom_patterns_and_replacement_texts() {
    let kit = kit(json!({
        "presets": ["email"],
        "replacement": "<hidden>",
        "patterns": [
            { "name": "ssn", "regex": "\\b[0-9]{3}-[0-9]{2}-[0-9]{4}\\b", "replacement": "***-**-****" },
            { "name": "api-key", "regex": "\"api_key\":\\s*\"(?P<mask>[^\"]+)\"" }
        ]
    }));
    let body = format!(
        r#"{{"ssn":"123-45-6789","api_key": "k-123","mail":"{EMAIL}","n":"1234-56-7890"}}"#
    );
    let out = kit.run(&TestRequest::get("/"), &json_response(&body));
    assert_eq!(
        out.response.text(),
        r#"{"ssn":"***-**-****","api_key": "<hidden>","mail":"<hidden>","n":"1234-56-7890"}"#
    );
    assert_eq!(kit.metric("mask_fields_total"), Some(3));
}

#[test]
fn fields_split_across_many_small_chunks_are_found() {
    let kit = kit(json!({}));
    let body = format!(
        r#"{{"a":"{EMAIL}","b":"{CARD}","c":"{IBAN}","d":"Bearer {TOKEN}","e":"{EMAIL}"}}"#
    );
    // 3-byte chunks: every field spans several of them.
    let upstream = json_response(&body).chunked(3);
    let out = kit.run(&TestRequest::get("/"), &upstream);
    assert!(!out.cut);
    assert_eq!(
        out.response.text(),
        r#"{"a":"[REDACTED]","b":"[REDACTED]","c":"[REDACTED]","d":"Bearer [REDACTED]","e":"[REDACTED]"}"#
    );
    assert_eq!(kit.metric("mask_fields_total"), Some(5));
    assert_eq!(
        kit.metric("mask_bodies_total"),
        Some(1),
        "masked once, whole"
    );
}

#[test]
fn content_length_is_removed_when_masking_applies() {
    let kit = kit(json!({}));
    let body = format!(r#"{{"email":"{EMAIL}"}}"#);
    // A body with a content-length, arriving in parts of 4 bytes.
    let upstream = TestResponse {
        chunk: 4,
        ..json_response(&body)
    };
    let out = kit.run(&TestRequest::get("/"), &upstream);
    assert!(
        !out.local && !out.cut,
        "the host accepted the length change"
    );
    assert_eq!(out.response.header("content-length"), None);
    assert_eq!(out.response.text(), r#"{"email":"[REDACTED]"}"#);
    // Removed even when nothing is found: it is decided before the body arrives.
    let out = kit.run(&TestRequest::get("/"), &json_response(r#"{"ok":true}"#));
    assert_eq!(out.response.header("content-length"), None);
    assert_eq!(out.response.text(), r#"{"ok":true}"#);
}

#[test]
fn bodies_of_other_types_pass_untouched_with_their_length() {
    let kit = kit(json!({}));
    let body = format!("binary {EMAIL} {CARD}");
    let out = kit.run(
        &TestRequest::get("/"),
        &TestResponse::ok(body.as_str()).header("content-type", "image/png"),
    );
    assert_eq!(out.response.text(), body);
    let expected_length = body.len().to_string();
    assert_eq!(
        out.response.header("content-length"),
        Some(expected_length.as_str())
    );
    assert_eq!(kit.metric("mask_bodies_total"), Some(0));
    // `text/` is a prefix: any text type is masked, parameters do not matter.
    let out = kit.run(
        &TestRequest::get("/"),
        &TestResponse::ok(body.as_str()).header("content-type", "text/html; charset=utf-8"),
    );
    assert_eq!(out.response.text(), "binary [REDACTED] [REDACTED]");
    // No content-type at all: masked.
    let out = kit.run(&TestRequest::get("/"), &TestResponse::ok(body.as_str()));
    assert_eq!(out.response.text(), "binary [REDACTED] [REDACTED]");
}

#[test]
fn configured_content_types_replace_the_defaults() {
    let kit = kit(json!({ "content_types": ["application/xml"] }));
    let body = format!("<a>{EMAIL}</a>");
    let xml = TestResponse::ok(body.as_str()).header("content-type", "application/xml");
    assert_eq!(
        kit.run(&TestRequest::get("/"), &xml).response.text(),
        "<a>[REDACTED]</a>"
    );
    let out = kit.run(&TestRequest::get("/"), &json_response(&body));
    assert_eq!(out.response.text(), body, "JSON is no longer masked");
    // An empty list masks every type.
    let kit = common::kit(json!({ "content_types": [] }));
    let png = TestResponse::ok(body.as_str()).header("content-type", "image/png");
    assert_eq!(
        kit.run(&TestRequest::get("/"), &png).response.text(),
        "<a>[REDACTED]</a>"
    );
}

#[test]
fn the_count_cannot_go_in_a_response_header() {
    // On Sluice the response header is sent before the body is complete: the count is a
    // metric (and a debug log line), never a response header.
    let kit = kit(json!({}));
    let body = format!("{EMAIL} {EMAIL}");
    let out = kit.run(&TestRequest::get("/"), &json_response(&body));
    assert_eq!(out.response.text(), "[REDACTED] [REDACTED]");
    assert_eq!(out.response.header("x-masked-fields"), None);
    assert_eq!(kit.metric("mask_fields_total"), Some(2));
    assert!(kit.logged("mask: response body: 2 fields masked (email 2)"));
}

#[test]
fn oversize_bodies_are_blocked_by_default() {
    let kit = kit(json!({ "max_body_bytes": 64 }));
    let body = format!("{{\"email\":\"{EMAIL}\",\"pad\":\"{}\"}}", "x".repeat(80));
    // Declared too large: refused before anything is sent.
    let out = kit.run(&TestRequest::get("/"), &json_response(&body));
    assert!(out.local);
    assert_eq!(out.response.status, 502);
    assert!(!out.response.text().contains(EMAIL));
    // Streamed without a length: refused when the buffer passes the cap (nothing was sent
    // yet, so it is still a whole 502).
    let out = kit.run(&TestRequest::get("/"), &json_response(&body).chunked(10));
    assert_eq!(out.response.status, 502);
    assert!(out.local || out.cut);
    assert!(!out.response.text().contains(EMAIL));
    assert_eq!(kit.metric("mask_oversize_total"), Some(2));
    assert!(kit.logged("mask: response body not masked"));
    // Within the cap: masked.
    let out = kit.run(&TestRequest::get("/"), &json_response(EMAIL));
    assert_eq!(out.response.text(), "[REDACTED]");
}

#[test]
fn oversize_bodies_pass_unmasked_when_configured() {
    let kit = kit(json!({ "max_body_bytes": 64, "oversize": "pass" }));
    let body = format!("{{\"email\":\"{EMAIL}\",\"pad\":\"{}\"}}", "x".repeat(80));
    let out = kit.run(&TestRequest::get("/"), &json_response(&body));
    assert!(!out.local);
    assert_eq!(out.response.status, 200);
    assert_eq!(out.response.text(), body);
    let expected_length = body.len().to_string();
    assert_eq!(
        out.response.header("content-length"),
        Some(expected_length.as_str()),
        "a body that is not masked keeps its length"
    );
    let out = kit.run(&TestRequest::get("/"), &json_response(&body).chunked(10));
    assert_eq!(out.response.status, 200);
    assert!(!out.cut);
    assert_eq!(out.response.text(), body);
    assert_eq!(kit.metric("mask_oversize_total"), Some(2));
    assert_eq!(kit.metric("mask_fields_total"), Some(0));
    assert!(kit.logged("passed unmasked"));
}

#[test]
fn compressed_bodies_follow_the_oversize_policy() {
    let gz = json_response(EMAIL).header("content-encoding", "gzip");
    let kit = kit(json!({}));
    let out = kit.run(&TestRequest::get("/"), &gz);
    assert_eq!(out.response.status, 502);
    assert!(out.local);
    assert_eq!(kit.metric("mask_encoded_total"), Some(1));
    let kit = common::kit(json!({ "oversize": "pass" }));
    let out = kit.run(&TestRequest::get("/"), &gz);
    assert_eq!(out.response.status, 200);
    assert_eq!(out.response.text(), EMAIL);
}

#[test]
fn the_upstream_is_asked_for_an_uncompressed_response() {
    let kit = kit(json!({}));
    let req = TestRequest::get("/").header("accept-encoding", "gzip, br");
    let out = kit.run(&req, &json_response("{}"));
    assert_eq!(out.forwarded.unwrap().header("accept-encoding"), None);
    // Response masking off: left as it is.
    let kit = common::kit(json!({ "response": false, "request": true }));
    let out = kit.run(&req, &json_response("{}"));
    assert_eq!(
        out.forwarded.unwrap().header("accept-encoding"),
        Some("gzip, br")
    );
}

#[test]
fn response_masking_can_be_turned_off() {
    let kit = kit(json!({ "response": false, "request": true }));
    let out = kit.run(&TestRequest::get("/"), &json_response(EMAIL));
    assert_eq!(out.response.text(), EMAIL);
    assert_eq!(kit.metric("mask_bodies_total"), Some(0));
}

#[test]
fn bodiless_responses_are_left_alone() {
    let kit = kit(json!({}));
    let out = kit.run(
        &TestRequest::get("/"),
        &TestResponse::new(204).header("content-type", "application/json"),
    );
    assert_eq!(out.response.status, 204);
    assert!(!out.local);
    let out = kit.run(
        &TestRequest::new("HEAD", "/"),
        &TestResponse::new(200)
            .header("content-type", "application/json")
            .header("content-length", "120"),
    );
    assert_eq!(out.response.header("content-length"), Some("120"));
    assert_eq!(kit.metric("mask_bodies_total"), Some(0));
}

/// A JSON array of about `kib` KiB of records, each with one field of every preset, and how
/// many records it has.
fn dense_body(kib: usize) -> (String, usize) {
    let record = format!(
        r#"{{"email":"{EMAIL}","card":"{CARD}","iban":"{IBAN}","auth":"Bearer {TOKEN}","note":"nothing to see here, 2024-01-01, order 12345"}},"#
    );
    let n = (kib * 1024) / record.len();
    (format!("[{}{{}}]", record.repeat(n)), n)
}

#[test]
fn a_dense_body_of_256_kib_is_masked_within_the_default_limits() {
    let kit = kit(json!({}));
    let (body, n) = dense_body(256);
    let out = kit.run(
        &TestRequest::get("/"),
        &json_response(&body).chunked(16 * 1024),
    );
    assert!(!out.local && !out.cut, "status {}", out.response.status);
    let text = out.response.text();
    assert!(!text.contains(EMAIL) && !text.contains(TOKEN));
    assert_eq!(kit.metric("mask_fields_total"), Some(4 * n as i64));
    assert_eq!(kit.failures(), 0);
}

#[test]
fn a_dense_body_near_the_cap_is_masked_with_more_fuel() {
    // About 200 fuel per byte of such data: the README's advice for bodies near 1 MiB.
    let mut options = Options::default().config_json(&json!({}));
    options.limits = Limits {
        fuel: 500_000_000,
        ..options.limits
    };
    let kit = common::try_load(options).expect("loads");
    let (body, n) = dense_body(1000);
    assert!(body.len() <= 1 << 20);
    let out = kit.run(
        &TestRequest::get("/"),
        &json_response(&body).chunked(64 * 1024),
    );
    assert!(!out.local && !out.cut, "status {}", out.response.status);
    assert!(!out.response.text().contains(EMAIL));
    assert_eq!(kit.metric("mask_fields_total"), Some(4 * n as i64));
    assert_eq!(kit.failures(), 0);
}

#[test]
fn the_readme_example() {
    let kit = kit(json!({
        "request": true,
        "presets": ["email", "card", "iban", "bearer"],
        "patterns": [
            { "name": "ssn", "regex": "\\b[0-9]{3}-[0-9]{2}-[0-9]{4}\\b", "replacement": "***-**-****" }
        ],
        "max_body_bytes": 524288,
        "oversize": "block"
    }));
    let body =
        r#"{"user":"jane.doe@example.com","card":"4111 1111 1111 1111","ssn":"123-45-6789"}"#;
    let out = kit.run(&TestRequest::get("/api/users/1"), &json_response(body));
    assert_eq!(
        out.response.text(),
        r#"{"user":"[REDACTED]","card":"[REDACTED]","ssn":"***-**-****"}"#
    );
    assert_eq!(kit.metric("mask_fields_total"), Some(3));
}
