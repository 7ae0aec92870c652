use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_callouts_pause_the_request_until_the_answer() {
    let proxy = start(
        &[("c", "/c", "callout"), ("nc", "/nc", "notallowed")],
        "  callout: { path: sdk.wasm, config: { mode: callout, upstream: backend }, allowed_upstreams: [backend] }\n\
         \x20 notallowed: { path: sdk.wasm, config: { mode: callout, upstream: backend } }\n",
    )
    .await;
    let c = client();
    let e = echo(c.get(proxy.url("/c")).send().await.unwrap()).await;
    assert_eq!(echo_header(&e, "x-callout-status"), Some("200"));
    let len: usize = echo_header(&e, "x-callout-body-len")
        .unwrap()
        .parse()
        .unwrap();
    assert!(len > 10, "the callout's body was delivered");
    let r = c
        .get(proxy.url("/c"))
        .header("x-callout-want", "500")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-callout-status"], "500");
    let e = echo(c.get(proxy.url("/nc")).send().await.unwrap()).await;
    assert_eq!(echo_header(&e, "x-callout-error"), Some("BadArgument"));
}

/// How a [`counting_server`] treats a connection after its first answer.
#[derive(Clone, Copy, PartialEq)]
enum KeepAlive {
    /// Serves every request on it.
    Yes,
    /// Reads the next request and closes without answering (as a server that timed the
    /// connection out at that moment would).
    ClosesOnTheNext,
}

/// An HTTP/1.1 server on 127.0.0.1 that answers every GET `200` with body `ok` and counts the
/// connections it accepts.
async fn counting_server(
    keep: KeepAlive,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = 0;
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if answered > 0 && keep == KeepAlive::ClosesOnTheNext {
                            return;
                        }
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if conn.write_all(reply).await.is_err() {
                            return;
                        }
                        answered += 1;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Starts sluice with route `/c` through a `callout` plugin calling upstream `counted` at
/// `addr`.
async fn start_calling(addr: std::net::SocketAddr, tag: &str) -> Sluice {
    let up = upstream("backend").await;
    let cfg = config(
        up,
        &[("c", "/c", "callout")],
        "  callout: { path: sdk.wasm, config: { mode: callout, upstream: counted }, allowed_upstreams: [counted] }\n",
    )
    .replace(
        "routes:\n",
        &format!("  counted: {{ endpoints: ['{addr}'] }}\nroutes:\n"),
    );
    Sluice::start_in(&cfg, plugin_dir(tag)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callouts_reuse_kept_alive_connections() {
    let (addr, accepted) = counting_server(KeepAlive::Yes).await;
    let proxy = start_calling(addr, "callout-keepalive").await;
    let c = client();
    for i in 0..8 {
        let e = echo(c.get(proxy.url(&format!("/c/{i}"))).send().await.unwrap()).await;
        assert_eq!(
            echo_header(&e, "x-callout-status"),
            Some("200"),
            "request {i}"
        );
        assert_eq!(echo_header(&e, "x-callout-body-len"), Some("2"));
    }
    // Requests on the two worker threads each may open one before the other's is back.
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&n),
        "8 sequential callouts opened {n} connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callout_on_a_connection_the_server_closed_is_sent_again() {
    let (addr, accepted) = counting_server(KeepAlive::ClosesOnTheNext).await;
    let proxy = start_calling(addr, "callout-closed").await;
    let c = client();
    for i in 0..5 {
        let e = echo(c.get(proxy.url(&format!("/c/{i}"))).send().await.unwrap()).await;
        assert_eq!(
            echo_header(&e, "x-callout-status"),
            Some("200"),
            "request {i}: a GET refused by a closing connection goes again on a new one"
        );
    }
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(n, 5, "one new connection per callout after the first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callouts_reach_tls_upstreams_with_their_verification() {
    // A TLS server: a sluice with a TLS listener (self-signed for `localhost`) in front of an
    // echo upstream.
    let front_dir = temp_dir("callout-tls-front");
    let pem = write_self_signed(&front_dir, "localhost");
    let front = Sluice::start_in(&tls_listener_config(upstream("tls-echo").await), front_dir).await;
    let dir = plugin_dir("callout-tls");
    std::fs::write(dir.join("ca.pem"), &pem).unwrap();
    let at = front.addr;
    let cases = [
        // (route and plugin, tls settings, what the callout gets)
        ("trusted", "{ sni: localhost, ca: ca.pem }", "200"),
        ("unverified", "{ verify: false }", "200"),
        ("untrusted", "{ sni: localhost }", "failed"),
        ("wrongname", "{ sni: other.test, ca: ca.pem }", "failed"),
    ];
    let routes: Vec<(String, String, String)> = cases
        .iter()
        .map(|(n, _, _)| (n.to_string(), format!("/{n}"), n.to_string()))
        .collect();
    let routes: Vec<(&str, &str, &str)> = routes
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    let mut plugins = String::new();
    let mut upstreams = String::new();
    for (name, tls, _) in &cases {
        plugins.push_str(&format!(
            "  {name}: {{ path: sdk.wasm, config: {{ mode: callout, upstream: up_{name} }}, allowed_upstreams: [up_{name}] }}\n"
        ));
        upstreams.push_str(&format!(
            "  up_{name}: {{ endpoints: ['{at}'], tls: {tls} }}\n"
        ));
    }
    let cfg = config(upstream("backend").await, &routes, &plugins)
        .replace("routes:\n", &format!("{upstreams}routes:\n"));
    let proxy = Sluice::start_in(&cfg, dir).await;
    let c = client();
    for (name, _, want) in &cases {
        let r = c.get(proxy.url(&format!("/{name}"))).send().await.unwrap();
        if *want == "200" {
            let e = echo(r).await;
            assert_eq!(echo_header(&e, "x-callout-status"), Some("200"), "{name}");
        } else {
            assert_eq!(r.status(), 503, "{name}");
            assert_eq!(r.headers()["x-callout-status"], "failed", "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tls_ca_file_is_named() {
    let dir = plugin_dir("callout-bad-ca");
    std::fs::write(dir.join("ca.pem"), "not a certificate\n").unwrap();
    let cfg = config(upstream("backend").await, &[], "")
        .replace(
            "routes:\n",
            "  idp: { endpoints: ['127.0.0.1:1'], tls: { ca: ca.pem } }\n  idq: { endpoints: ['127.0.0.1:1'], tls: { ca: missing.pem } }\nroutes:\n",
        )
        .replace("plugins:\n", "");
    let (text, _, _) = with_ports(&cfg);
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(sluice_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("upstreams.idp.tls.ca") && err.contains("holds no PEM certificate"),
        "{err}"
    );
    assert!(
        err.contains("upstreams.idq.tls.ca") && err.contains("cannot read"),
        "{err}"
    );
}
