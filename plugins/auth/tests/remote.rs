//! Keys fetched from `jwt.jwks_uri` through the real host: the fetch a request makes when no
//! key fits its token (the request waits for the answer), the copy it leaves in shared data,
//! keys another VM left there, and 503 while there are none. The periodic fetches from the
//! root context's tick run in the proxy (see `tests/jwks.rs` at the workspace root).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use sluice_testkit::{Kit, Options, TestRequest, TestResponse};

/// A one-answer HTTP server on 127.0.0.1 serving `body` as JSON; counts the requests.
fn jwks_server(body: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(answer.as_bytes());
        }
    });
    (addr, hits)
}

/// A port nothing listens on (bound a moment ago, then closed).
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn config() -> Value {
    json!({
        "realm": "api",
        "jwt": {
            "jwks_uri": "/.well-known/jwks.json",
            "jwks_upstream": "idp",
            "jwks_min_refetch_seconds": 600,
            "forward_claims": {"sub": "x-auth-subject"}
        }
    })
}

fn kit_with_idp(idp: SocketAddr) -> Kit {
    let mut options = Options::default()
        .config_json(&config())
        .expose(&["authorization"]);
    options.upstreams = vec![("idp".to_string(), idp)];
    try_kit(options).expect("the plugin loads")
}

/// The shared-data key of the configuration's key set (see `Source::shared_key`).
fn shared_key() -> String {
    let mut h = Sha256::new();
    for part in ["idp", "", "/.well-known/jwks.json"] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let hex: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("auth.jwks.{hex}")
}

fn hs256(kid: &str) -> String {
    token(
        Signer::Hs256(HMAC_SECRET),
        &json!({"alg": "HS256", "kid": kid}),
        &claims(),
    )
}

fn run(kit: &Kit, token: &str) -> sluice_testkit::Outcome {
    kit.run(
        &TestRequest::get("/orders").header("authorization", &bearer(token)),
        &TestResponse::ok("orders"),
    )
}

#[test]
fn a_request_fetches_the_keys_it_lacks_and_shares_them() {
    let body = json!({"keys": [hmac_jwk()]}).to_string();
    let (idp, hits) = jwks_server(body.clone());
    let kit = kit_with_idp(idp);
    let out = run(&kit, &hs256(HMAC_KID));
    assert_eq!(out.response.status, 200, "{:?}", kit.logs());
    let forwarded = out.forwarded.expect("went upstream");
    assert_eq!(forwarded.header("x-auth-subject"), Some("user-1"));
    assert_eq!(forwarded.header("authorization"), None, "stripped");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // The set is in shared data for the other VMs: format 1, the fetch time, the JWKS text.
    let shared = kit.shared(&shared_key()).expect("shared");
    assert_eq!(shared[0], 1);
    assert_eq!(&shared[9..], body.as_bytes());

    // Known kid: no fetch. Unknown kid: 401, and no second fetch within the rate limit.
    assert_eq!(run(&kit, &hs256(HMAC_KID)).response.status, 200);
    let out = run(&kit, &hs256("other"));
    assert_eq!(out.response.status, 401);
    assert_eq!(
        out.response.header("www-authenticate"),
        Some("Bearer realm=\"api\", error=\"invalid_token\"")
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "rate limited");
    assert_eq!(kit.metric("auth_jwks_fetches"), Some(1));
}

#[test]
fn keys_another_vm_shared_are_used_without_a_fetch() {
    let kit = kit_with_idp(closed_port());
    let body = json!({"keys": [hmac_jwk()]}).to_string();
    let mut copy = vec![1u8];
    copy.extend_from_slice(&(now() * 1_000_000_000).to_le_bytes());
    copy.extend_from_slice(body.as_bytes());
    kit.set_shared(&shared_key(), &copy);
    let out = run(&kit, &hs256(HMAC_KID));
    assert_eq!(out.response.status, 200, "{:?}", kit.logs());
    assert_eq!(kit.metric("auth_jwks_fetches").unwrap_or(0), 0);
}

#[test]
fn without_any_key_bearer_tokens_get_503() {
    let kit = kit_with_idp(closed_port());
    let out = run(&kit, &hs256(HMAC_KID));
    assert_eq!(out.response.status, 503);
    assert_eq!(out.response.text(), "503 Service Unavailable\n");
    assert!(out.forwarded.is_none());
    assert!(kit.logged("cannot fetch the JWKS"), "{:?}", kit.logs());
    assert!(kit.logged("no keys yet"));
    // No credential at all: the usual 401.
    let out = kit.run(&TestRequest::get("/orders"), &TestResponse::ok("orders"));
    assert_eq!(out.response.status, 401);
    assert_eq!(kit.metric("auth_unavailable"), Some(1));
    assert_eq!(kit.metric("auth_jwks_fetch_failures"), Some(1));
}
