// ---------------------------------------------------------------------------------------------
// OCI

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_push_then_pull_by_tag_and_by_digest_then_from_the_cache_without_network() {
    let mut registry = Registry::start().await;
    let dir = temp_dir("oci-pull");
    let cache = dir.join("cache");
    let wasm = module("oci-pull");
    std::fs::write(dir.join("p.wasm"), &wasm).unwrap();
    let target = format!("{}/plugins/hello:v1", registry.addr);
    let pushed = push(&dir.join("p.wasm"), &target, &[], &cache);
    let digest = pushed.split_once('@').unwrap().1.to_string();

    // The wasm layout: a layer holding the module itself.
    let m = registry.manifest("plugins/hello", "v1").await;
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.module.wasm.config.v1+json"
    );
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.module.wasm.content.layer.v1+wasm"
    );
    assert_eq!(
        m["layers"][0]["digest"],
        format!("sha256:{}", sha256_hex(&wasm))
    );

    // By tag: from the registry, then the blob from the cache (the manifest is asked again).
    let by_tag = spec(&format!("{{ oci: '{target}' }}"), &dir);
    let f = fetch(&by_tag, &cache).await.unwrap();
    assert_eq!(*f.bytes().unwrap(), wasm[..]);
    assert_eq!(f.sha256, sha256_hex(&wasm));
    assert!(!f.from_cache);
    assert_eq!(f.origin, format!("oci:{pushed}"));
    let f = fetch(&by_tag, &cache).await.unwrap();
    assert_eq!(*f.bytes().unwrap(), wasm[..]);
    assert!(f.from_cache, "the blob is not downloaded again");

    // By digest, with an empty cache: from the registry.
    let pinned = format!("{}/plugins/hello@{digest}", registry.addr);
    let by_digest = spec(&format!("{{ oci: '{pinned}' }}"), &dir);
    let other_cache = dir.join("other-cache");
    let f = fetch(&by_digest, &other_cache).await.unwrap();
    assert_eq!(*f.bytes().unwrap(), wasm[..]);
    assert!(!f.from_cache);
    assert_eq!(f.origin, format!("oci:{pinned}"));
    // The plugin's sha256 (of the wasm bytes) may be given too.
    let both = spec(
        &format!("{{ oci: '{pinned}', sha256: '{}' }}", sha256_hex(&wasm)),
        &dir,
    );
    assert!(fetch(&both, &cache).await.is_ok());

    // Without the registry: a digest-pinned reference whose blobs are cached needs no network.
    registry.stop();
    for c in [&cache, &other_cache] {
        let f = fetch(&by_digest, c).await.unwrap();
        assert_eq!(*f.bytes().unwrap(), wasm[..]);
        assert!(f.from_cache);
    }
    // A tag must still be resolved by the registry, which is gone.
    let e = fetch(&by_tag, &cache).await.unwrap_err().to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            &format!("oci:{target}"),
            &format!("GET http://{}/v2/plugins/hello/manifests/v1", registry.addr),
        ],
    );
    // So must a digest that was never cached.
    let e = fetch(&by_digest, &dir.join("empty-cache"))
        .await
        .unwrap_err()
        .to_string();
    assert_contains(&e, &["plugin \"p\"", &pinned]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_tar_layout_yields_the_same_bytes() {
    let registry = Registry::start().await;
    let dir = temp_dir("oci-tar");
    let cache = dir.join("cache");
    let wasm = module("oci-tar");
    std::fs::write(dir.join("p.wasm"), &wasm).unwrap();
    let target = format!("{}/plugins/tarred:1.0", registry.addr);
    let pushed = push(&dir.join("p.wasm"), &target, &["--layout", "tar"], &cache);

    let m = registry.manifest("plugins/tarred", "1.0").await;
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );

    for (reference, cached) in [(target.as_str(), false), (pushed.as_str(), true)] {
        let s = spec(&format!("{{ oci: '{reference}' }}"), &dir);
        let f = fetch(&s, &cache).await.unwrap();
        assert_eq!(
            *f.bytes().unwrap(),
            wasm[..],
            "plugin.wasm extracted from the tar layer"
        );
        assert_eq!(f.sha256, sha256_hex(&wasm));
        assert_eq!(f.from_cache, cached);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_wrong_digests_are_refused() {
    let registry = Registry::start().await;
    let dir = temp_dir("oci-digests");
    let cache = dir.join("cache");
    let wasm = module("oci-digests");
    std::fs::write(dir.join("p.wasm"), &wasm).unwrap();
    let target = format!("{}/plugins/pinned:v1", registry.addr);
    let pushed = push(&dir.join("p.wasm"), &target, &[], &cache);
    let digest = pushed.split_once('@').unwrap().1.to_string();

    // The plugin's sha256 does not match the module.
    let wrong = "ab".repeat(32);
    let s = spec(&format!("{{ oci: '{target}', sha256: '{wrong}' }}"), &dir);
    let e = fetch(&s, &cache).await.unwrap_err();
    assert!(matches!(e, SourceError::Digest { .. }), "{e:?}");
    assert_contains(
        &e.to_string(),
        &["plugin \"p\"", &pushed, &sha256_hex(&wasm), &wrong],
    );

    // A manifest digest the registry does not have.
    let unknown = format!("{}/plugins/pinned@sha256:{}", registry.addr, "0".repeat(64));
    let s = spec(&format!("{{ oci: '{unknown}' }}"), &dir);
    let e = fetch(&s, &cache).await.unwrap_err().to_string();
    assert_contains(&e, &["plugin \"p\"", &unknown, "404", "MANIFEST_UNKNOWN"]);

    // The registry serves a manifest that is not the pinned one (its stored copy changed).
    let manifest_file = registry.blob_file(&digest);
    let mut m = std::fs::read(&manifest_file).unwrap();
    m.push(b'\n');
    std::fs::write(&manifest_file, &m).unwrap();
    let pinned = format!("{}/plugins/pinned@{digest}", registry.addr);
    let s = spec(&format!("{{ oci: '{pinned}' }}"), &dir);
    let e = fetch(&s, &dir.join("fresh-cache"))
        .await
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            &pinned,
            &format!("the manifest's sha256 is sha256:{}", sha256_hex(&m)),
            &format!("the reference pins {digest}"),
        ],
    );

    // The registry serves a layer that is not the one its descriptor names.
    let layer = format!("sha256:{}", sha256_hex(&wasm));
    let layer_file = registry.blob_file(&layer);
    let mut bad = wasm.clone();
    *bad.last_mut().unwrap() ^= 1;
    std::fs::write(&layer_file, &bad).unwrap();
    let s = spec(&format!("{{ oci: '{target}' }}"), &dir);
    let e = fetch(&s, &dir.join("fresh-cache-2"))
        .await
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            &format!("blob {layer}"),
            &format!("the downloaded bytes' sha256 is {}", sha256_hex(&bad)),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sluice plugin push` says what it uploads (size and time) and what the registry already
/// has; on a terminal (a pseudo-terminal made by `script`), it shows the bytes sent so far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_says_what_it_uploads_and_shows_progress_on_a_terminal() {
    let registry = Registry::start().await;
    let dir = temp_dir("push-progress");
    let cache = dir.join("cache");
    let big = module(&"x".repeat(300 * 1024));
    let file = dir.join("big.wasm");
    std::fs::write(&file, &big).unwrap();
    let layer = format!("layer sha256:{}", sha256_hex(&big));

    let target = format!("oci://{}/plugins/big:v1", registry.addr);
    let out = sluice(&["plugin", "push", file.to_str().unwrap(), &target], &cache);
    stdout_ok(&out, "sluice plugin push");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{layer}: {} bytes uploaded in ", big.len())),
        "{stderr}"
    );
    assert!(stderr.contains("config sha256:"), "{stderr}");
    assert!(
        !stderr.contains('\r'),
        "no progress off a terminal: {stderr:?}"
    );

    let on_terminal = |tag: &str| {
        let cmd = format!(
            "SLUICE_PLUGIN_CACHE={} DOCKER_CONFIG={} {} plugin push {} oci://{}/plugins/big:{tag}",
            cache.display(),
            cache.join("no-docker-config").display(),
            sluice_bin(),
            file.display(),
            registry.addr
        );
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .expect("script (util-linux) runs a command on a pseudo-terminal");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The same blobs under another tag: nothing to upload.
    let tty = on_terminal("v2");
    assert!(
        tty.contains(&format!("{layer}: already in the registry")),
        "{tty:?}"
    );
    assert!(!tty.contains("uploading"), "{tty:?}");

    // A new module: its bytes counted as they go, to the end.
    let bigger = module(&"y".repeat(300 * 1024));
    std::fs::write(&file, &bigger).unwrap();
    let tty = on_terminal("v3");
    let uploading = format!("uploading layer sha256:{}", sha256_hex(&bigger));
    let n = bigger.len();
    assert!(
        tty.contains(&format!("{uploading}: 65536/{n} bytes (")),
        "{tty:?}"
    );
    assert!(
        tty.contains(&format!("{uploading}: {n}/{n} bytes (100 %)")),
        "{tty:?}"
    );
    assert!(tty.contains(&format!("{n} bytes uploaded in ")), "{tty:?}");
}
