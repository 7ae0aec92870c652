// ---------------------------------------------------------------------------------------------
// url:

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_sources_are_checked_capped_and_cached() {
    let wasm = module("url");
    let mut server = FileServer::start(vec![
        ("/p.wasm", Body::Bytes(wasm.clone())),
        ("/huge.wasm", Body::Announce(100 << 20)),
        ("/stream.wasm", Body::Chunked(65 << 20)),
    ]);
    let dir = temp_dir("url");
    let cache = dir.join("cache");
    let digest = sha256_hex(&wasm);
    let url = server.url("/p.wasm");

    // The right digest loads, from the network.
    let good = spec(&format!("{{ url: '{url}', sha256: '{digest}' }}"), &dir);
    let f = fetch(&good, &cache).await.unwrap();
    assert_eq!(*f.bytes().unwrap(), wasm[..]);
    assert!(!f.from_cache);
    assert_eq!(f.origin, format!("url:{url}"));
    assert_eq!(server.hits(), 1);

    // A wrong digest is refused, naming the plugin, the URL and both digests; nothing cached.
    let wrong = "cd".repeat(32);
    let bad = spec(&format!("{{ url: '{url}', sha256: '{wrong}' }}"), &dir);
    let e = fetch(&bad, &cache).await.unwrap_err();
    assert!(matches!(e, SourceError::Digest { .. }), "{e:?}");
    assert_contains(
        &e.to_string(),
        &[
            "plugin \"p\"",
            &url,
            &format!("is {digest}"),
            &format!("expects {wrong}"),
        ],
    );
    assert!(!cache.join("sha256").join(&wrong).exists());

    // Bodies over the cap: announced, or streamed without a Content-Length (with an empty
    // cache: the cache is keyed by digest, and this one is cached now).
    let empty = dir.join("empty");
    let huge = spec(
        &format!(
            "{{ url: '{}', sha256: '{digest}' }}",
            server.url("/huge.wasm")
        ),
        &dir,
    );
    let e = fetch(&huge, &empty).await.unwrap_err().to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            &server.url("/huge.wasm"),
            "larger than the limit of 67108864 bytes (Content-Length: 104857600)",
        ],
    );
    let stream = spec(
        &format!(
            "{{ url: '{}', sha256: '{digest}' }}",
            server.url("/stream.wasm")
        ),
        &dir,
    );
    let e = fetch(&stream, &empty).await.unwrap_err().to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            &server.url("/stream.wasm"),
            "larger than the limit of 67108864 bytes",
        ],
    );
    // A 404.
    let missing = spec(
        &format!(
            "{{ url: '{}', sha256: '{digest}' }}",
            server.url("/nope.wasm")
        ),
        &dir,
    );
    let e = fetch(&missing, &empty).await.unwrap_err().to_string();
    assert_contains(&e, &["plugin \"p\"", "/nope.wasm", "404"]);

    // With the server gone, the cached binary still loads.
    server.stop();
    let f = fetch(&good, &cache).await.unwrap();
    assert_eq!(*f.bytes().unwrap(), wasm[..]);
    assert!(f.from_cache);
    // Without a cache, the fetch fails and names the plugin and the URL.
    let e = fetch(&good, &empty).await.unwrap_err().to_string();
    assert_contains(&e, &["plugin \"p\"", &format!("cannot fetch {url}")]);
    // Through fetch_all, which the runtime uses, with the same options.
    let all = source::fetch_all_with(std::slice::from_ref(&good), &options(&cache))
        .await
        .unwrap();
    assert!(all["p"].from_cache);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_answer_times_out() {
    let server = FileServer::start(vec![("/slow.wasm", Body::Stall(Duration::from_secs(3)))]);
    let dir = temp_dir("url-timeout");
    let url = server.url("/slow.wasm");
    let s = spec(
        &format!("{{ url: '{url}', sha256: '{}' }}", "ab".repeat(32)),
        &dir,
    );
    let opts = FetchOptions {
        timeout: Duration::from_secs(1),
        ..options(&dir.join("cache"))
    };
    let started = Instant::now();
    let e = source::fetch_with(&s, &opts).await.unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_contains(&e, &["plugin \"p\"", &url, "1 s"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_binary_that_changed_on_disk_is_fetched_again() {
    let wasm = module("url-corrupt");
    let mut server = FileServer::start(vec![("/p.wasm", Body::Bytes(wasm.clone()))]);
    let dir = temp_dir("url-corrupt");
    let cache = dir.join("cache");
    let digest = sha256_hex(&wasm);
    let s = spec(
        &format!("{{ url: '{}', sha256: '{digest}' }}", server.url("/p.wasm")),
        &dir,
    );
    assert!(!fetch(&s, &cache).await.unwrap().from_cache);
    let entry = cache.join("sha256").join(&digest);
    assert_eq!(std::fs::read(&entry).unwrap(), wasm);
    std::fs::write(&entry, b"corrupted").unwrap();
    let f = fetch(&s, &cache).await.unwrap();
    assert!(!f.from_cache, "a corrupt entry is not used");
    assert_eq!(*f.bytes().unwrap(), wasm[..]);
    assert_eq!(server.hits(), 2);
    assert_eq!(std::fs::read(&entry).unwrap(), wasm, "and is replaced");
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
