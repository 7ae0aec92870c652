//! The auth plugin's fetched keys (`jwt.jwks_uri`) through the real binary: a real HTTPS
//! identity provider on 127.0.0.1 (a plain HTTP server that counts fetches and can rotate or
//! break its key set, behind a sluice TLS listener with an rcgen certificate), a proxy that
//! fetches the set through an upstream with `tls: { ca }`, and HS256 tokens signed here.
//!
//! The auth plugin is built from `plugins/auth` (`$SLUICE_PLUGIN_PROFILE`, else `release`).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http_body_util::Full;
use serde_json::json;
use support::*;

/// The path the identity provider serves its key set on.
const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The auth plugin's `.wasm`, built once per test binary.
fn auth_wasm() -> &'static PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        sluice::testkit::build_plugin(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/auth"))
            .expect("the auth plugin builds")
    })
}

/// What the identity provider answers, and how often it was asked.
struct Idp {
    /// Requests for the key set.
    fetches: AtomicUsize,
    /// Status and body of the next answers.
    answer: Mutex<(u16, String)>,
}

impl Idp {
    fn serve(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// Starts the identity provider's plain HTTP server; returns it and its address.
async fn idp(status: u16, body: String) -> (Arc<Idp>, SocketAddr) {
    let idp = Arc::new(Idp {
        fetches: AtomicUsize::new(0),
        answer: Mutex::new((status, body)),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = idp.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let (status, body) = if req.uri().path() == JWKS_PATH {
                                state.fetches.fetch_add(1, Ordering::SeqCst);
                                state.answer.lock().unwrap().clone()
                            } else {
                                (404, "not here\n".to_string())
                            };
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(bytes::Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (idp, addr)
}

/// An HS256 secret (32 bytes) made from `seed`.
fn secret(seed: u8) -> [u8; 32] {
    [seed; 32]
}

/// A key set of HS256 keys `(kid, secret seed)`, with two keys the plugin skips: an Ed25519
/// key (unsupported) and, when `noisy`, a key with members the plugin does not know.
fn jwks(keys: &[(&str, u8)]) -> String {
    let mut list: Vec<serde_json::Value> = keys
        .iter()
        .map(|(kid, seed)| {
            json!({
                "kty": "oct", "kid": kid, "alg": "HS256", "use": "sig",
                "k": URL_SAFE_NO_PAD.encode(secret(*seed)),
                "x-vendor-member": "ignored"
            })
        })
        .collect();
    list.push(json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}));
    json!({ "keys": list }).to_string()
}

/// An HS256 token with `kid`, signed with `secret(seed)`, for subject `sub`, valid 10 min.
fn token(kid: &str, seed: u8, sub: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid}).to_string();
    let claims = json!({"sub": sub, "iat": now, "exp": now + 600}).to_string();
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret(seed));
    let sig = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// The identity provider over HTTPS: a sluice with a TLS listener (certificate for
/// `localhost`) in front of `idp`. Returns it and the certificate's PEM.
async fn https_front(idp: SocketAddr) -> (Sluice, String) {
    let dir = temp_dir("jwks-idp-front");
    let pem = write_self_signed(&dir, "localhost");
    (Sluice::start_in(&tls_listener_config(idp), dir).await, pem)
}

/// A proxy whose only route needs a JWT whose keys come from `front` (trusting `ca_pem`),
/// with `vms` VMs of the auth plugin, all started at load.
async fn proxy(front: SocketAddr, ca_pem: &str, vms: u32, jwt_extra: &str) -> Sluice {
    let dir = temp_dir("jwks-proxy");
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    std::fs::copy(auth_wasm(), dir.join("sluice_plugin_auth.wasm")).unwrap();
    let backend = upstream("backend").await;
    let config = format!(
        "server: {{ threads: 2, grace_period_seconds: 2 }}\n\
         engine: {{ vm_start: on_load }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n\
         \x20 backend: {{ endpoints: ['{backend}'] }}\n\
         \x20 idp: {{ endpoints: ['{front}'], tls: {{ sni: localhost, ca: ca.pem }} }}\n\
         routes:\n\
         \x20 - {{ name: api, match: {{ path_prefix: '/' }}, upstream: backend, plugins: [auth] }}\n\
         plugins:\n\
         \x20 auth:\n\
         \x20   path: sluice_plugin_auth.wasm\n\
         \x20   expose: [authorization]\n\
         \x20   allowed_upstreams: [idp]\n\
         \x20   vms: {vms}\n\
         \x20   config:\n\
         \x20     realm: api\n\
         \x20     jwt: {{ jwks_uri: 'https://localhost{JWKS_PATH}', jwks_upstream: idp, \
         forward_claims: {{ sub: x-auth-subject }}{jwt_extra} }}\n"
    );
    Sluice::start_in(&config, dir).await
}

/// GET / with `Authorization: Bearer token`, on a new connection (so that requests spread
/// over the worker threads, and with them over the VMs). Returns the status and the subject
/// the upstream was told.
async fn get(proxy: &Sluice, token: &str) -> (u16, Option<String>) {
    let r = client_without_pool()
        .get(proxy.url("/orders"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status != 200 {
        return (status, None);
    }
    let e = echo(r).await;
    (
        status,
        echo_header(&e, "x-auth-subject").map(str::to_string),
    )
}

fn client_without_pool() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Waits (10 s at most) until `token` gets `want`.
async fn wait_status(proxy: &Sluice, token: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = get(proxy, token).await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {status}, not {want}:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (10 s at most) until the proxy's log has `n` lines containing `text`.
async fn wait_log_lines(proxy: &Sluice, text: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let have = proxy.logs().lines().filter(|l| l.contains(text)).count();
        if have == n {
            return;
        }
        assert!(
            have < n && Instant::now() < deadline,
            "{have} lines with {text:?}, not {n}:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seconds between fetches for unknown kids in these tests.
const MIN_REFETCH: u64 = 3;

/// Sleeps past the refetch rate limit.
async fn past_rate_limit() {
    tokio::time::sleep(Duration::from_millis(MIN_REFETCH * 1000 + 300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_keys_verify_tokens_rotate_on_demand_and_outlive_fetch_failures() {
    let (idp, idp_addr) = idp(200, jwks(&[("a1", 1)])).await;
    let (front, ca) = https_front(idp_addr).await;
    let proxy = proxy(
        front.addr,
        &ca,
        2,
        &format!(
            ", jwks_refresh_seconds: 3600, jwks_fetch_timeout_ms: 3000, \
             jwks_min_refetch_seconds: {MIN_REFETCH}"
        ),
    )
    .await;

    // Fetched at start: a token signed with the fetched key passes, on both VMs.
    let a1 = token("a1", 1, "alice");
    wait_status(&proxy, &a1, 200).await;
    wait_log_lines(&proxy, "keys in use (kid a1)", 2).await;
    for _ in 0..6 {
        assert_eq!(get(&proxy, &a1).await, (200, Some("alice".to_string())));
    }
    let logs = proxy.logs();
    assert!(
        logs.contains("skipped keys[1] (kid \"ed1\"): unsupported \"kty\" \"OKP\""),
        "the unsupported key is skipped and logged:\n{logs}"
    );
    assert!(
        !logs.contains("x-vendor-member"),
        "members the plugin does not know are ignored"
    );
    // One fetch for both VMs (they share it), plus at most one for a request that came before
    // the first tick.
    let start = idp.fetches();
    assert!((1..=2).contains(&start), "{start} fetches at start");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(idp.fetches(), start, "no fetch without a reason");

    // A token with an unknown kid: one refetch, then 401; a flood of random kids within
    // the rate limit fetches nothing more.
    past_rate_limit().await;
    let before = idp.fetches();
    assert_eq!(get(&proxy, &token("zz", 9, "mallory")).await, (401, None));
    assert_eq!(idp.fetches(), before + 1, "one refetch for the unknown kid");
    for i in 0..20u8 {
        let (status, _) = get(&proxy, &token(&format!("random-{i}"), i, "mallory")).await;
        assert_eq!(status, 401);
    }
    assert_eq!(idp.fetches(), before + 1, "rate limited");

    // Rotation: the provider replaces a1 with b1. A token with the new kid passes after one
    // on-demand refetch; both VMs take the new set (the second one from shared data).
    idp.serve(200, jwks(&[("b1", 2)]));
    past_rate_limit().await;
    let b1 = token("b1", 2, "bob");
    let before = idp.fetches();
    assert_eq!(get(&proxy, &b1).await, (200, Some("bob".to_string())));
    assert_eq!(idp.fetches(), before + 1, "one on-demand refetch");
    wait_log_lines(&proxy, "keys in use (kid b1)", 2).await;
    for _ in 0..10 {
        assert_eq!(get(&proxy, &b1).await.0, 200);
    }
    assert_eq!(idp.fetches(), before + 1, "the other VM fetched nothing");
    for _ in 0..6 {
        assert_eq!(get(&proxy, &a1).await.0, 401, "a1 left the set");
    }

    // The provider fails (500): the last good keys stay in use; the failure is logged once
    // per streak (for every VM), not per request.
    idp.serve(500, "{\"error\": \"down\"}".into());
    for round in 0..2 {
        past_rate_limit().await;
        let before = idp.fetches();
        let (status, _) = get(&proxy, &token("c1", 3, "carol")).await;
        assert_eq!(status, 401, "round {round}");
        assert_eq!(idp.fetches(), before + 1, "round {round}: tried");
        for _ in 0..4 {
            assert_eq!(get(&proxy, &b1).await.0, 200, "round {round}: kept");
        }
    }
    assert!(proxy.logs().contains("answered 500"));

    // A set that is not JSON fails the same way.
    idp.serve(200, "<html>".into());
    past_rate_limit().await;
    assert_eq!(get(&proxy, &token("c1", 3, "carol")).await.0, 401);
    assert_eq!(get(&proxy, &b1).await.0, 200);

    // The provider goes away altogether: still the last good keys.
    let gone = idp.fetches();
    drop(front);
    past_rate_limit().await;
    assert_eq!(get(&proxy, &token("c1", 3, "carol")).await.0, 401);
    for _ in 0..4 {
        assert_eq!(get(&proxy, &b1).await, (200, Some("bob".to_string())));
    }
    assert_eq!(idp.fetches(), gone);
    assert_eq!(
        proxy.logs().matches("cannot fetch the JWKS").count(),
        1,
        "one line for the whole streak of failures:\n{}",
        proxy.logs()
    );
    let failures = proxy
        .metric("sluice_plugin_auth_jwks_fetch_failures{plugin=\"auth\",version=\"stable\"}")
        .await
        .unwrap_or(0.0);
    assert!(failures >= 4.0, "{failures} failures counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_keys_yet_bearer_tokens_get_503_until_a_fetch_works() {
    let (idp, idp_addr) = idp(500, "{}".into()).await;
    let (front, ca) = https_front(idp_addr).await;
    let proxy = proxy(
        front.addr,
        &ca,
        1,
        ", jwks_refresh_seconds: 3600, jwks_min_refetch_seconds: 1",
    )
    .await;
    let a1 = token("a1", 1, "alice");
    let r = client_without_pool()
        .get(proxy.url("/orders"))
        .bearer_auth(&a1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("www-authenticate").is_none());
    assert_eq!(r.text().await.unwrap(), "503 Service Unavailable\n");
    // Without a credential it is still 401 with the challenge.
    let r = client().get(proxy.url("/orders")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"api\"");

    // Failed fetches are retried (1 s apart here) and logged once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while idp.fetches() < 3 {
        assert!(Instant::now() < deadline, "{} fetches", idp.fetches());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = proxy.logs();
    assert_eq!(logs.matches("cannot fetch the JWKS").count(), 1, "{logs}");
    assert!(
        logs.contains("no keys yet: bearer tokens are answered 503"),
        "{logs}"
    );

    // The provider recovers: the next try brings the keys.
    idp.serve(200, jwks(&[("a1", 1)]));
    wait_status(&proxy, &a1, 200).await;
    assert_eq!(
        get(&proxy, &token("a1", 7, "x")).await.0,
        401,
        "wrong secret"
    );
    assert!(proxy.logs().contains("fetched again after"));
    assert!(
        proxy
            .metric("sluice_plugin_auth_unavailable{plugin=\"auth\",version=\"stable\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn sluice_check_names_the_missing_jwks_field() {
    let dir = temp_dir("jwks-check");
    std::fs::copy(auth_wasm(), dir.join("sluice_plugin_auth.wasm")).unwrap();
    let config = "listeners: [{ name: public, address: '{LISTEN}' }]\n\
                  admin: { address: '{ADMIN}' }\n\
                  upstreams: { backend: { endpoints: ['127.0.0.1:1'] } }\n\
                  routes: [{ name: api, upstream: backend, plugins: [auth] }]\n\
                  plugins:\n\
                  \x20 auth: { path: sluice_plugin_auth.wasm, config: { jwt: { jwks_uri: /keys } } }\n";
    let (text, _, _) = with_ports(config);
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(sluice_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("jwt.jwks_upstream: required with jwt.jwks_uri"),
        "{all}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
