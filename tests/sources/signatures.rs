// ---------------------------------------------------------------------------------------------
// Signatures

use super::*;

/// `sluice plugin keygen --out DIR/NAME`: the public key it printed.
fn keygen(dir: &Path, name: &str, cache: &Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let key = dir.join(name);
    let public = stdout_ok(
        &sluice(&["plugin", "keygen", "--out", key.to_str().unwrap()], cache),
        "sluice plugin keygen",
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is private");
    assert_eq!(public.len(), 44, "base64 of 32 bytes: {public}");
    public
}

fn sign(file: &Path, key: &Path, cache: &Path) {
    let printed = stdout_ok(
        &sluice(
            &[
                "plugin",
                "sign",
                file.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
            cache,
        ),
        "sluice plugin sign",
    );
    assert_eq!(printed, format!("{}.sig", file.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_path_plugins_load_and_unsigned_or_tampered_ones_are_refused() {
    let dir = temp_dir("sig-path");
    let cache = dir.join("cache");
    let public = keygen(&dir, "release.key", &cache);
    let other_public = keygen(&dir, "other.key", &cache);
    std::fs::write(dir.join("release.pub"), format!("{public}\n")).unwrap();

    // Signed with the release key: loads, with the key inline or from a file.
    std::fs::write(dir.join("signed.wasm"), module("signed")).unwrap();
    sign(&dir.join("signed.wasm"), &dir.join("release.key"), &cache);
    let sig_text = std::fs::read_to_string(dir.join("signed.wasm.sig")).unwrap();
    assert_eq!(sig_text.trim().len(), 88, "base64 of 64 bytes: {sig_text}");
    for key in [
        format!("public_key: '{public}'"),
        "public_key_file: release.pub".to_string(),
    ] {
        let s = spec(
            &format!("{{ path: signed.wasm, signature: {{ {key} }} }}"),
            &dir,
        );
        let f = fetch(&s, &cache).await.unwrap();
        assert_eq!(*f.bytes().unwrap(), module("signed")[..]);
    }
    // A raw 64-byte signature file is accepted too.
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sig_text.trim())
        .unwrap();
    std::fs::write(dir.join("raw.wasm"), module("signed")).unwrap();
    std::fs::write(dir.join("raw.wasm.sig"), &raw).unwrap();
    let s = spec(
        &format!("{{ path: raw.wasm, signature: {{ public_key: '{public}' }} }}"),
        &dir,
    );
    fetch(&s, &cache).await.unwrap();

    let refused = |file: &str, key: &str| {
        spec(
            &format!("{{ path: {file}, signature: {{ public_key: '{key}' }} }}"),
            &dir,
        )
    };
    // No signature file.
    std::fs::write(dir.join("unsigned.wasm"), module("unsigned")).unwrap();
    let e = fetch(&refused("unsigned.wasm", &public), &cache)
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::Signature { .. }), "{e:?}");
    assert_contains(
        &e.to_string(),
        &[
            "plugin \"p\"",
            "refused",
            &format!(
                "no signature: {} does not exist",
                dir.join("unsigned.wasm.sig").display()
            ),
        ],
    );
    // Changed after signing.
    std::fs::write(dir.join("tampered.wasm"), module("tampered")).unwrap();
    sign(&dir.join("tampered.wasm"), &dir.join("release.key"), &cache);
    std::fs::write(dir.join("tampered.wasm"), module("tampereD")).unwrap();
    let e = fetch(&refused("tampered.wasm", &public), &cache)
        .await
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            "refused",
            "does not verify with the configured public key",
        ],
    );
    // Signed by another key.
    let e = fetch(&refused("signed.wasm", &other_public), &cache)
        .await
        .unwrap_err()
        .to_string();
    assert_contains(&e, &["plugin \"p\"", "does not verify"]);
    // A malformed signature file.
    std::fs::write(dir.join("unsigned.wasm.sig"), "this is not a signature").unwrap();
    let e = fetch(&refused("unsigned.wasm", &public), &cache)
        .await
        .unwrap_err()
        .to_string();
    assert_contains(&e, &["plugin \"p\"", "malformed signature"]);
    // Without `signature:` in the config, no signature is looked for.
    let s = spec("{ path: unsigned.wasm }", &dir);
    fetch(&s, &cache).await.unwrap();

    // The CLI refuses what it cannot do.
    let out = sluice(
        &[
            "plugin",
            "keygen",
            "--out",
            dir.join("release.key").to_str().unwrap(),
        ],
        &cache,
    );
    assert!(!out.status.success());
    assert_contains(&String::from_utf8_lossy(&out.stderr), &["already exists"]);
    let out = sluice(
        &[
            "plugin",
            "sign",
            dir.join("signed.wasm").to_str().unwrap(),
            "--key",
            dir.join("release.pub").to_str().unwrap(),
        ],
        &cache,
    );
    assert!(!out.status.success());
    assert_contains(
        &String::from_utf8_lossy(&out.stderr),
        &["release.pub", "not an ed25519 private key"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_url_plugins_verify_and_are_cached_with_their_signature() {
    let dir = temp_dir("sig-url");
    let cache = dir.join("cache");
    let public = keygen(&dir, "k", &cache);
    let wasm = module("signed-url");
    std::fs::write(dir.join("p.wasm"), &wasm).unwrap();
    sign(&dir.join("p.wasm"), &dir.join("k"), &cache);
    let sig = std::fs::read(dir.join("p.wasm.sig")).unwrap();
    let mut server = FileServer::start(vec![
        ("/p.wasm", Body::Bytes(wasm.clone())),
        ("/p.wasm.sig", Body::Bytes(sig)),
        ("/unsigned.wasm", Body::Bytes(wasm.clone())),
    ]);
    let digest = sha256_hex(&wasm);
    let entry = |path: &str| {
        format!(
            "{{ url: '{}', sha256: '{digest}', signature: {{ public_key: '{public}' }} }}",
            server.url(path)
        )
    };
    let s = spec(&entry("/p.wasm"), &dir);
    assert!(!fetch(&s, &cache).await.unwrap().from_cache);
    let e = fetch(&spec(&entry("/unsigned.wasm"), &dir), &dir.join("c2"))
        .await
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            "refused",
            &format!(
                "no signature: cannot fetch {}",
                server.url("/unsigned.wasm.sig")
            ),
            "404",
        ],
    );
    server.stop();
    let f = fetch(&s, &cache).await.unwrap();
    assert!(f.from_cache, "binary and signature both from the cache");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_oci_pushes_verify_on_pull() {
    let registry = Registry::start().await;
    let dir = temp_dir("sig-oci");
    let cache = dir.join("cache");
    let public = keygen(&dir, "k", &cache);
    let other = keygen(&dir, "other", &cache);
    let wasm = module("signed-oci");
    std::fs::write(dir.join("p.wasm"), &wasm).unwrap();
    let key = dir.join("k");
    let signed = format!("{}/plugins/signed:v1", registry.addr);
    let signed_tar = format!("{}/plugins/signed:tar", registry.addr);
    let unsigned = format!("{}/plugins/signed:unsigned", registry.addr);
    push(
        &dir.join("p.wasm"),
        &signed,
        &["--sign", key.to_str().unwrap()],
        &cache,
    );
    push(
        &dir.join("p.wasm"),
        &signed_tar,
        &["--layout", "tar", "--sign", key.to_str().unwrap()],
        &cache,
    );
    push(&dir.join("p.wasm"), &unsigned, &[], &cache);

    let m = registry.manifest("plugins/signed", "v1").await;
    assert_eq!(
        m["layers"][1]["mediaType"],
        "application/vnd.sluice.wasm.signature.v1"
    );

    for reference in [&signed, &signed_tar] {
        let s = spec(
            &format!("{{ oci: '{reference}', signature: {{ public_key: '{public}' }} }}"),
            &dir,
        );
        let f = fetch(&s, &cache).await.unwrap();
        assert_eq!(*f.bytes().unwrap(), wasm[..]);
        let s = spec(
            &format!("{{ oci: '{reference}', signature: {{ public_key: '{other}' }} }}"),
            &dir,
        );
        let e = fetch(&s, &cache).await.unwrap_err().to_string();
        assert_contains(
            &e,
            &["plugin \"p\"", "refused", reference, "does not verify"],
        );
    }
    let s = spec(
        &format!("{{ oci: '{unsigned}', signature: {{ public_key: '{public}' }} }}"),
        &dir,
    );
    let e = fetch(&s, &cache).await.unwrap_err().to_string();
    assert_contains(
        &e,
        &[
            "plugin \"p\"",
            "refused",
            "no layer of media type application/vnd.sluice.wasm.signature.v1",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
