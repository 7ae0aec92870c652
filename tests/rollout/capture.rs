//! Capturing a plugin's traffic into a test-kit case file and replaying it to another
//! version: the round trip through the real binary.

use std::process::Command;

use super::*;

fn run(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(sluice_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// An upstream that answers every request `200 ok` with a JSON body of its own (the demo
/// upstream echoes the request's headers in its body, credentials included), one request per
/// connection.
async fn plain_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, length) = loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = "{\"ok\":true}";
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_replays_in_the_test_kit_without_hidden_headers() {
    let up = plain_upstream().await;
    let dir = plugin_dir("capture");
    let plugin_config =
        "{ rules: [{ request: { set: { x-tag: a } }, response: { set: { x-version: v1 } } }] }";
    let text = format!(
        "listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams:\n  backend: {{ endpoints: ['{up}'] }}\n\
         routes:\n  - {{ name: api, match: {{ path_prefix: '/' }}, upstream: backend, plugins: [tag] }}\n\
         plugins:\n  tag: {{ path: v1.wasm, config: {plugin_config} }}\n"
    );
    let proxy = Sluice::start_in(&text, dir.clone()).await;

    // Asking for 6 requests; the answer comes once they were served.
    let capture = tokio::spawn({
        let url = proxy.admin_url("/plugins/tag/capture?requests=6&timeout_seconds=30");
        async move {
            let r = client().post(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    });
    // A second capture of the same plugin is refused while the first runs.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let r = client()
        .post(proxy.admin_url("/plugins/tag/capture?requests=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let c = client();
    for i in 0..6 {
        let path = if i % 2 == 0 {
            format!("/new/{i}")
        } else {
            format!("/old/{i}")
        };
        let r = c
            .post(proxy.url(&path))
            .header("authorization", "Bearer top-secret-token")
            .header("cookie", "session=hidden-cookie")
            .header("x-user", format!("user-{i}"))
            .body(format!("payload {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (status, yaml) = capture.await.unwrap();
    assert_eq!(status, 200, "{yaml}");
    assert!(yaml.starts_with("# 6 of 6 requests"), "{yaml}");
    for hidden in [
        "top-secret-token",
        "hidden-cookie",
        "authorization",
        "cookie",
        "x-forwarded-for",
        "client:",
    ] {
        assert!(!yaml.contains(hidden), "{hidden:?} was captured:\n{yaml}");
    }
    assert!(
        yaml.contains("user-3") && yaml.contains("payload 5"),
        "{yaml}"
    );
    let capture_file = dir.join("capture.yaml");
    std::fs::write(&capture_file, &yaml).unwrap();

    // The same plugin passes its own capture (the expectations are what it decided).
    let options = dir.join("options.yaml");
    std::fs::write(&options, format!("config: {plugin_config}\n")).unwrap();
    let (ok, out) = run(&[
        "plugin".as_ref(),
        "test".as_ref(),
        dir.join("v1.wasm").as_os_str(),
        "--replay".as_ref(),
        capture_file.as_os_str(),
        "--config".as_ref(),
        options.as_os_str(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("6 cases: 6 passed, 0 failed"), "{out}");

    // A version that tags /new requests otherwise: exactly those differ.
    let other = dir.join("other.yaml");
    std::fs::write(
        &other,
        "config: { rules: [{ request: { set: { x-tag: a } }, response: { set: { x-version: v1 } } }, \
         { path_prefixes: [/new], request: { set: { x-tag: b } } }] }\n",
    )
    .unwrap();
    let (ok, out) = run(&[
        "plugin".as_ref(),
        "test".as_ref(),
        dir.join("v2.wasm").as_os_str(),
        "--replay".as_ref(),
        capture_file.as_os_str(),
        "--config".as_ref(),
        other.as_os_str(),
        "--against".as_ref(),
        dir.join("v1.wasm").as_os_str(),
        "--against-config".as_ref(),
        options.as_os_str(),
    ]);
    assert!(!ok, "differences exit 1: {out}");
    assert!(
        out.contains("6 cases: 3 decided the same, 3 differently"),
        "{out}"
    );
    assert_eq!(out.matches("DIFF  POST /new/").count(), 3, "{out}");
    assert!(out.contains("x-tag: b"), "{out}");
}
