//! The proxy end to end: the real `sluice` binary between a real HTTP client and real upstream
//! servers, all on 127.0.0.1.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use support::*;

fn one_upstream(endpoints: &str, extra: &str) -> String {
    format!(
        "server: {{ threads: 1, grace_period_seconds: 5 }}\n\
         listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n  backend:\n    endpoints: [{endpoints}]\n{extra}\
         routes:\n  - {{ name: all, upstream: backend }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_and_404s_otherwise() {
    let api = upstream("api").await;
    let web = upstream("web").await;
    let admin_ep = upstream("admin-ui").await;
    let proxy = Sluice::start(&format!(
        "listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n  api: {{ endpoints: ['{api}'] }}\n  web: {{ endpoints: ['{web}'] }}\n  adm: {{ endpoints: ['{admin_ep}'] }}\n\
         routes:\n\
         \x20 - {{ name: api, match: {{ host: api.example.com, path_prefix: /v1 }}, upstream: api }}\n\
         \x20 - {{ name: admin, match: {{ host: '*.internal', methods: [GET] }}, upstream: adm }}\n\
         \x20 - {{ name: web, match: {{ path_prefix: /site }}, upstream: web }}\n"
    ))
    .await;
    let c = client();
    let get = |host: &'static str, path: &str| c.get(proxy.url(path)).header("host", host).send();
    let r = get("api.example.com", "/v1/users").await.unwrap();
    assert_eq!(r.status(), 200);
    let e = echo(r).await;
    assert_eq!(e["upstream"], "api");
    assert_eq!(e["path"], "/v1/users");
    assert_eq!(
        echo_header(&e, "host"),
        Some("api.example.com"),
        "Host is preserved"
    );

    // Host matching ignores case and the port.
    let r = get("API.Example.com:8080", "/v1").await.unwrap();
    assert_eq!(echo(r).await["upstream"], "api");

    let r = get("tools.internal", "/anything").await.unwrap();
    assert_eq!(echo(r).await["upstream"], "admin-ui");
    // Method condition: POST does not match the admin route and nothing else matches.
    let r = c
        .post(proxy.url("/anything"))
        .header("host", "tools.internal")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = get("whatever.com", "/site/index.html").await.unwrap();
    assert_eq!(echo(r).await["upstream"], "web");

    // Path condition fails for api.example.com/v2 → no route.
    let r = get("api.example.com", "/v2").await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("x-request-id"));
    let body = r.text().await.unwrap();
    assert!(body.contains("no route matches"), "{body}");
    proxy
        .wait_metric(
            "sluice_requests_total{code=\"404\",route=\"(unmatched)\"}",
            2.0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_alternates_between_endpoints() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let proxy = Sluice::start(&one_upstream(&format!("'{a}', '{b}'"), "")).await;
    let c = client();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let e = echo(c.get(proxy.url("/")).send().await.unwrap()).await;
        seen.push(e["upstream"].as_str().unwrap().to_string());
    }
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin must alternate: {seen:?}");
    }
    assert_eq!(seen.iter().filter(|s| *s == "a").count(), 5, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_hash_balancing() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c3 = upstream("c").await;
    let eps = format!("'{a}', '{b}', '{c3}'");
    let proxy = Sluice::start(&format!(
        "listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n\
         \x20 rnd: {{ endpoints: [{eps}], load_balancing: random }}\n\
         \x20 hsh: {{ endpoints: [{eps}], load_balancing: hash, hash_on: 'header:x-user' }}\n\
         routes:\n\
         \x20 - {{ name: rnd, match: {{ path_prefix: /rnd }}, upstream: rnd }}\n\
         \x20 - {{ name: hsh, match: {{ path_prefix: /hsh }}, upstream: hsh }}\n"
    ))
    .await;
    let c = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let e = echo(c.get(proxy.url("/rnd")).send().await.unwrap()).await;
        *counts
            .entry(e["upstream"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "random reaches every endpoint: {counts:?}");

    let mut by_user: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for user in 0..20 {
            let e = echo(
                c.get(proxy.url("/hsh"))
                    .header("x-user", format!("user-{user}"))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            let ep = e["upstream"].as_str().unwrap().to_string();
            if round == 0 {
                by_user.insert(format!("user-{user}"), ep);
            } else {
                assert_eq!(by_user[&format!("user-{user}")], ep, "hash must be sticky");
            }
        }
    }
    let distinct: std::collections::HashSet<_> = by_user.values().collect();
    assert!(distinct.len() >= 2, "20 keys should spread: {by_user:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_on_another_endpoint() {
    let live = upstream("live").await;
    let dead = format!("127.0.0.1:{}", free_port()); // nothing listens here
                                                     // No health check: only the retry keeps these requests from failing.
    let proxy = Sluice::start(&one_upstream(&format!("'{live}', '{dead}'"), "")).await;
    let c = client();
    for _ in 0..10 {
        let r = c.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(echo(r).await["upstream"], "live");
    }
    let refused = format!(
        "sluice_upstream_requests_total{{endpoint=\"{dead}\",result=\"connect_error\",upstream=\"backend\"}}"
    );
    // Round robin sends every other request to the dead endpoint first.
    proxy.wait_metric(&refused, 5.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_failing_endpoint_out_and_bring_it_back() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let proxy = Sluice::start(&one_upstream(
        &format!("'{a}', '{b}'"),
        "    health_check: { path: /health, interval_ms: 100, timeout_ms: 50 }\n",
    ))
    .await;
    let c = client();
    let served_by = |n: usize| {
        let c = c.clone();
        let url = proxy.url("/");
        async move {
            let mut seen = Vec::new();
            for _ in 0..n {
                let r = c.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                seen.push(echo(r).await["upstream"].as_str().unwrap().to_string());
            }
            seen
        }
    };
    assert!(served_by(6).await.contains(&"b".to_string()));

    // b starts failing its health checks (it still answers requests): it is taken out.
    let r = c
        .put(format!("http://{b}/health?status=503"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b_healthy = format!("sluice_upstream_healthy{{endpoint=\"{b}\",upstream=\"backend\"}}");
    proxy.wait_metric(&b_healthy, 0.0).await;
    let seen = served_by(10).await;
    assert!(
        seen.iter().all(|s| s == "a"),
        "an unhealthy endpoint got traffic: {seen:?}"
    );

    // It recovers: it is put back.
    c.put(format!("http://{b}/health?status=200"))
        .send()
        .await
        .unwrap();
    proxy.wait_metric(&b_healthy, 1.0).await;
    assert!(served_by(6).await.contains(&"b".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_timeout_is_504_with_bodies_that_say_so() {
    let slow = upstream("slow").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let proxy = Sluice::start(&format!(
        "listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n\
         \x20 down: {{ endpoints: ['{dead}'] }}\n\
         \x20 slow: {{ endpoints: ['{slow}'], read_timeout_ms: 300 }}\n\
         routes:\n\
         \x20 - {{ name: down, match: {{ path_prefix: /down }}, upstream: down }}\n\
         \x20 - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: slow }}\n"
    ))
    .await;
    let c = client();
    let r = c.get(proxy.url("/down")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers().contains_key("x-request-id"));
    let body = r.text().await.unwrap();
    assert!(body.contains("upstream \"down\" is unavailable"), "{body}");

    let started = std::time::Instant::now();
    let r = c
        .get(proxy.url("/slow?delay_ms=3000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("upstream \"slow\" did not answer in time"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "timed out late"
    );

    // Within the timeout it is served.
    let r = c.get(proxy.url("/slow?delay_ms=50")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    proxy.wait_metric(&format!(
                "sluice_upstream_requests_total{{endpoint=\"{slow}\",result=\"timeout\",upstream=\"slow\"}}"
            ), 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_request_ids() {
    let up = upstream("up").await;
    let proxy = Sluice::start(&one_upstream(&format!("'{up}'"), "")).await;
    let c = client();

    let r = c.get(proxy.url("/")).send().await.unwrap();
    // Proxied responses are the upstream's own: Sluice adds no x-request-id to them.
    assert!(!r.headers().contains_key("x-request-id"));
    let e = echo(r).await;
    assert_eq!(echo_header(&e, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(echo_header(&e, "x-forwarded-proto"), Some("http"));
    let id = echo_header(&e, "x-request-id").unwrap().to_string();
    assert_eq!(id.len(), 32, "generated id: {id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    // Each request gets its own id, and the access log carries it.
    let e2 = echo(c.get(proxy.url("/")).send().await.unwrap()).await;
    assert_ne!(echo_header(&e2, "x-request-id"), Some(id.as_str()));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !proxy.logs().contains(&format!("request_id=\"{id}\"")) {
        assert!(
            std::time::Instant::now() < deadline,
            "id not in the access log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A valid client id is kept; the client address is appended to an existing chain.
    let r = c
        .get(proxy.url("/"))
        .header("x-request-id", "client-id-123")
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    let e = echo(r).await;
    assert_eq!(echo_header(&e, "x-request-id"), Some("client-id-123"));
    assert_eq!(
        echo_header(&e, "x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );

    // An invalid one is replaced.
    let r = c
        .get(proxy.url("/"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let e = echo(r).await;
    let forwarded = echo_header(&e, "x-request-id").unwrap();
    assert_ne!(forwarded, "bad id with spaces");
    assert_eq!(forwarded.len(), 32);
    assert_eq!(e["headers"]["x-request-id"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_policy_per_upstream() {
    let up = upstream("up").await;
    let proxy = Sluice::start(&format!(
        "listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n\
         \x20 keep: {{ endpoints: ['{up}'] }}\n\
         \x20 ep: {{ endpoints: ['{up}'], host_header: endpoint }}\n\
         \x20 fixed: {{ endpoints: ['{up}'], host_header: internal.svc }}\n\
         routes:\n\
         \x20 - {{ name: ep, match: {{ path_prefix: /ep }}, upstream: ep }}\n\
         \x20 - {{ name: fixed, match: {{ path_prefix: /fixed }}, upstream: fixed }}\n\
         \x20 - {{ name: keep, upstream: keep }}\n"
    ))
    .await;
    let c = client();
    let host_seen = |path: &'static str| {
        let req = c
            .get(proxy.url(path))
            .header("host", "public.example")
            .send();
        async move { echo_header(&echo(req.await.unwrap()).await, "host").map(str::to_string) }
    };
    assert_eq!(host_seen("/keep").await.as_deref(), Some("public.example"));
    assert_eq!(host_seen("/ep").await, Some(up.to_string()));
    assert_eq!(host_seen("/fixed").await.as_deref(), Some("internal.svc"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_pass_through_unchanged() {
    let up = upstream("up").await;
    let proxy = Sluice::start(&one_upstream(&format!("'{up}'"), "")).await;
    let c = client();

    // 5 MiB with Content-Length.
    let big: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let e = echo(
        c.post(proxy.url("/upload"))
            .body(big.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e["body_len"], big.len());
    assert_eq!(
        e["body_fnv1a64"],
        format!("{:016x}", sluice::hash::fnv1a64(&big))
    );

    // Chunked, in uneven pieces.
    let pieces: Vec<Vec<u8>> = (0..50)
        .map(|i| vec![b'a' + (i % 26) as u8; 1000 + i * 37])
        .collect();
    let all: Vec<u8> = pieces.concat();
    let stream = futures_util::stream::iter(pieces.into_iter().map(Ok::<_, std::io::Error>));
    let r = c
        .post(proxy.url("/chunked"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let e = echo(r).await;
    assert_eq!(e["body_len"], all.len());
    assert_eq!(
        e["body_fnv1a64"],
        format!("{:016x}", sluice::hash::fnv1a64(&all))
    );
    assert_eq!(echo_header(&e, "transfer-encoding"), Some("chunked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_pass_through_unchanged() {
    let up = upstream("up").await;
    let proxy = Sluice::start(&one_upstream(&format!("'{up}'"), "")).await;
    let c = client();

    let r = c.get(proxy.url("/?bytes=16384")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), 16384);
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == sluice::demo::upstream::pattern_byte(i)));

    // 10 MiB, streamed: checked chunk by chunk as it arrives.
    let n = 10 * 1024 * 1024;
    let r = c
        .get(proxy.url(&format!("/?bytes={n}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let (mut got, mut chunks) = (0usize, 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for (k, b) in chunk.iter().enumerate() {
            assert_eq!(
                *b,
                sluice::demo::upstream::pattern_byte(got + k),
                "byte {}",
                got + k
            );
        }
        got += chunk.len();
        chunks += 1;
    }
    assert_eq!(got, n);
    assert!(chunks > 1, "the body arrived in one piece: not streamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cleartext_to_the_proxy() {
    let up = upstream("up").await;
    let proxy = Sluice::start(&one_upstream(&format!("'{up}'"), "")).await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = c
        .post(proxy.url("/h2?x=1"))
        .body("over h2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let e = echo(r).await;
    assert_eq!(e["body"], "over h2");
    assert_eq!(e["path"], "/h2");
    assert!(
        echo_header(&e, "host").is_some(),
        "h2 :authority becomes Host upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_speaks_http1_and_http2() {
    let up = upstream("up").await;
    let dir = temp_dir("tls");
    let pem = write_self_signed(&dir, "localhost");
    let proxy = Sluice::start_in(&tls_listener_config(up), dir).await;
    let root = reqwest::Certificate::from_pem(pem.as_bytes()).unwrap();
    let url = format!("https://localhost:{}/secure", proxy.addr.port());
    for (h2, version) in [
        (false, reqwest::Version::HTTP_11),
        (true, reqwest::Version::HTTP_2),
    ] {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(root.clone())
            .resolve("localhost", proxy.addr);
        if !h2 {
            b = b.http1_only();
        }
        let r = b.build().unwrap().get(&url).send().await.unwrap();
        assert_eq!(r.version(), version);
        let e = echo(r).await;
        assert_eq!(echo_header(&e, "x-forwarded-proto"), Some("https"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_with_and_without_certificate_verification() {
    // The TLS upstream is a second sluice terminating TLS in front of a demo upstream.
    let up = upstream("behind-tls").await;
    let dir = temp_dir("tls-upstream");
    let pem = write_self_signed(&dir, "backend.test");
    let ca = temp_dir("tls-upstream-ca").join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let ca = ca.display();
    let tls_front = Sluice::start_in(&tls_listener_config(up), dir).await;
    let tls_addr = tls_front.addr;
    let proxy = Sluice::start(&format!(
        "listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n\
         \x20 unverified: {{ endpoints: ['{tls_addr}'], tls: {{ sni: backend.test, verify: false }} }}\n\
         \x20 verified: {{ endpoints: ['{tls_addr}'], tls: {{ sni: backend.test }} }}\n\
         \x20 trusted: {{ endpoints: ['{tls_addr}'], tls: {{ sni: backend.test, ca: '{ca}' }} }}\n\
         routes:\n\
         \x20 - {{ name: unverified, match: {{ path_prefix: /unverified }}, upstream: unverified }}\n\
         \x20 - {{ name: trusted, match: {{ path_prefix: /trusted }}, upstream: trusted }}\n\
         \x20 - {{ name: verified, upstream: verified }}\n"
    ))
    .await;
    let c = client();
    let r = c.get(proxy.url("/unverified")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let e = echo(r).await;
    assert_eq!(e["upstream"], "behind-tls");
    // The second hop saw the first proxy's client address and https.
    assert_eq!(echo_header(&e, "x-forwarded-proto"), Some("https"));
    assert_eq!(
        echo_header(&e, "x-forwarded-for"),
        Some("127.0.0.1, 127.0.0.1")
    );

    // A self-signed certificate fails verification: 502, never a silent downgrade.
    let r = c.get(proxy.url("/verified")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    // Trusted through `tls.ca`, it passes (and the connection verified with that CA is not
    // the one the system-trusting pool tries again).
    let r = c.get(proxy.url("/trusted")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo(r).await["upstream"], "behind-tls");
    let r = c.get(proxy.url("/verified")).send().await.unwrap();
    assert_eq!(
        r.status(),
        502,
        "a pool without the CA reused a connection verified with it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let up = upstream("up").await;
    let proxy = Sluice::start(&one_upstream(&format!("'{up}'"), "")).await;
    let c = client();
    let mut conns = std::collections::HashSet::new();
    for _ in 0..8 {
        let e = echo(c.get(proxy.url("/")).send().await.unwrap()).await;
        conns.insert(e["connection"].as_u64().unwrap());
    }
    assert_eq!(
        conns.len(),
        1,
        "8 sequential requests should share one upstream connection: {conns:?}"
    );
}
