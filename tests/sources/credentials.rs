// ---------------------------------------------------------------------------------------------
// Registry credentials from a Docker config.json, and image indexes

use super::*;

/// bcrypt (cost 4) of `s3cret`, for the registry's htpasswd file.
const S3CRET_BCRYPT: &str = "$2b$04$Pu5VupvSG82VKiFfSN8NbuHxD/duhogC3x0ygYxN4tbqdJCnUVfka";

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A registry that wants `pusher:s3cret` as basic credentials (htpasswd).
async fn basic_auth_registry(dir: &Path) -> Registry {
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, format!("pusher:{S3CRET_BCRYPT}\n")).unwrap();
    Registry::start_with(&format!(
        "auth:\n  htpasswd:\n    realm: sluice-test\n    path: {}\n",
        htpasswd.display()
    ))
    .await
}

/// Writes `DIR/config.json` with these `auths` entries (key → entry JSON); returns `DIR`.
fn docker_config(dir: &Path, auths: &[(&str, serde_json::Value)]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let auths: serde_json::Map<String, serde_json::Value> = auths
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({ "auths": auths }).to_string(),
    )
    .unwrap();
    dir.to_path_buf()
}

/// A config whose only plugin pulls `reference`, with `extra` top-level YAML.
fn config_pulling(dir: &Path, reference: &str, extra: &str) -> PathBuf {
    let (text, _, _) = with_ports(&format!(
        "listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams: {{ backend: {{ endpoints: ['127.0.0.1:3000'] }} }}\n\
         routes: [{{ name: all, upstream: backend, plugins: [p] }}]\n\
         plugins:\n  p: {{ oci: '{reference}' }}\n{extra}"
    ));
    let path = dir.join(format!("sluice-{}.yaml", fastrand::u32(..)));
    std::fs::write(&path, text).unwrap();
    path
}

fn failed(out: &Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fake registry that answers every request `401` with a Basic challenge, recording the
/// `Authorization` header of each request ("" when absent).
struct Recorder {
    addr: SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let auth = head
                    .lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
                            .map(|(_, v)| v.trim().to_string())
                    })
                    .unwrap_or_default();
                s.lock().unwrap().push(auth);
                let _ = conn.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic realm=\"recorder\"\r\n\
                      content-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Recorder {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_check_use_the_registrys_entry_of_a_docker_config_json() {
    let dir = temp_dir("oci-creds");
    let cache = dir.join("cache");
    let registry = basic_auth_registry(&dir).await;
    // A real plugin: `sluice check` loads it.
    let file = target_dir().join("wasm32-wasip1/plugin/sluice_plugin_hello.wasm");
    assert!(
        file.is_file(),
        "{} is missing: build it with `make wasm` first",
        file.display()
    );
    let target = format!("{}/plugins/private:v1", registry.addr);
    let target_arg = format!("oci://{target}");
    let push_args = ["plugin", "push", file.to_str().unwrap(), &target_arg];

    // No credentials: refused, saying which registry has none.
    let empty = docker_config(&dir.join("empty"), &[]);
    let out = sluice_env(
        &push_args,
        &cache,
        &[("DOCKER_CONFIG", empty.to_str().unwrap())],
    );
    assert_contains(
        &failed(&out, "push without credentials"),
        &[&format!(
            "the registry asks for a user name and password and there are none for {}",
            registry.addr
        )],
    );

    // The right password, but filed under another registry (another port): not used.
    let other = docker_config(
        &dir.join("other"),
        &[(
            "127.0.0.1:1",
            serde_json::json!({ "auth": b64("pusher:s3cret") }),
        )],
    );
    let out = sluice_env(
        &push_args,
        &cache,
        &[("DOCKER_CONFIG", other.to_str().unwrap())],
    );
    assert_contains(
        &failed(&out, "push with another registry's credentials"),
        &["there are none for"],
    );

    // A wrong password under this registry (written as a URL, as `docker login` may): refused,
    // naming the entry.
    let wrong = docker_config(
        &dir.join("wrong"),
        &[(
            &format!("http://{}", registry.addr),
            serde_json::json!({ "username": "pusher", "password": "nope" }),
        )],
    );
    let out = sluice_env(
        &push_args,
        &cache,
        &[("DOCKER_CONFIG", wrong.to_str().unwrap())],
    );
    assert_contains(
        &failed(&out, "push with a wrong password"),
        &[&format!(
            "still unauthorized after authenticating with the \"http://{}\" entry of {}",
            registry.addr,
            wrong.join("config.json").display()
        )],
    );

    // The right one in DOCKER_CONFIG: pushed.
    let good = docker_config(
        &dir.join("good"),
        &[(
            registry.addr.as_str(),
            serde_json::json!({ "auth": b64("pusher:s3cret") }),
        )],
    );
    let out = sluice_env(
        &push_args,
        &cache,
        &[("DOCKER_CONFIG", good.to_str().unwrap())],
    );
    let pushed = stdout_ok(&out, "sluice plugin push with DOCKER_CONFIG");
    assert!(pushed.starts_with(&format!("{target}@sha256:")), "{pushed}");
    // And with --credentials-file (a Kubernetes Secret's key name).
    let secret = dir.join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::copy(good.join("config.json"), secret.join(".dockerconfigjson")).unwrap();
    let mut args = push_args.to_vec();
    let secret_file = secret.join(".dockerconfigjson");
    args.extend(["--credentials-file", secret_file.to_str().unwrap()]);
    let out = sluice_env(&args, &cache, &[("DOCKER_CONFIG", empty.to_str().unwrap())]);
    assert_eq!(
        stdout_ok(&out, "sluice plugin push --credentials-file"),
        pushed
    );
    // The environment wins over the file.
    let out = sluice_env(
        &push_args,
        &cache,
        &[
            ("DOCKER_CONFIG", good.to_str().unwrap()),
            ("SLUICE_OCI_USERNAME", "pusher"),
            ("SLUICE_OCI_PASSWORD", "wrong"),
        ],
    );
    assert_contains(
        &failed(&out, "push with wrong env credentials"),
        &["authenticating with SLUICE_OCI_USERNAME/SLUICE_OCI_PASSWORD"],
    );

    // `sluice check` with oci.credentials_file (relative to the config): pulled.
    let check = |config: &Path, env: &[(&str, &str)]| {
        let mut env = env.to_vec();
        if !env.iter().any(|(k, _)| *k == "DOCKER_CONFIG") {
            env.push(("DOCKER_CONFIG", empty.to_str().unwrap()));
        }
        sluice_env(
            &["check", "--config", config.to_str().unwrap()],
            &dir.join(format!("cache-{}", fastrand::u32(..))),
            &env,
        )
    };
    let config = config_pulling(
        &dir,
        &target,
        "oci: { credentials_file: secret/.dockerconfigjson }\n",
    );
    assert_contains(
        &stdout_ok(&check(&config, &[]), "sluice check"),
        &["OK", "1 plugin)"],
    );
    // Through DOCKER_CONFIG, without the section.
    let config = config_pulling(&dir, &pushed, "");
    stdout_ok(
        &check(&config, &[("DOCKER_CONFIG", good.to_str().unwrap())]),
        "sluice check with DOCKER_CONFIG",
    );
    // The section's file wins over DOCKER_CONFIG.
    let config = config_pulling(
        &dir,
        &target,
        "oci: { credentials_file: wrong/config.json }\n",
    );
    assert_contains(
        &failed(
            &check(&config, &[("DOCKER_CONFIG", good.to_str().unwrap())]),
            "check with a wrong credentials_file",
        ),
        &[
            "plugin \"p\"",
            "still unauthorized after authenticating with",
        ],
    );

    // A credentials_file that is missing or malformed is a config error naming the field.
    std::fs::write(
        dir.join("bad.json"),
        r#"{"auths": {"r.io": {"auth": "%%"}}}"#,
    )
    .unwrap();
    for (file, why) in [
        ("missing.json", "cannot read it"),
        ("bad.json", "auths.\"r.io\".auth is not base64"),
    ] {
        let config = config_pulling(
            &dir,
            &target,
            &format!("oci: {{ credentials_file: {file} }}\n"),
        );
        let err = failed(&check(&config, &[]), file);
        assert_contains(
            &err,
            &[
                &format!("oci.credentials_file: {}", dir.join(file).display()),
                why,
            ],
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_go_only_to_the_registry_they_are_filed_under() {
    let dir = temp_dir("oci-creds-scope");
    let cache = dir.join("cache");
    let recorder = Recorder::start();
    let other = format!("127.0.0.1:{}", free_port());
    let reference = format!("{}/plugins/x:v1", recorder.addr);
    let config = config_pulling(
        &dir,
        &reference,
        "oci: { credentials_file: docker/config.json }\n",
    );

    // Credentials for another registry only: the recorder is asked anonymously.
    docker_config(
        &dir.join("docker"),
        &[(
            other.as_str(),
            serde_json::json!({ "auth": b64("elsewhere:pw") }),
        )],
    );
    let out = sluice(&["check", "--config", config.to_str().unwrap()], &cache);
    assert_contains(
        &failed(&out, "check against the recorder"),
        &[&format!("there are none for {}", recorder.addr)],
    );
    assert_eq!(
        recorder.seen(),
        vec![String::new()],
        "one anonymous request"
    );

    // Its own entry: presented, exactly.
    docker_config(
        &dir.join("docker"),
        &[
            (
                other.as_str(),
                serde_json::json!({ "auth": b64("elsewhere:pw") }),
            ),
            (
                &recorder.addr.to_string(),
                serde_json::json!({ "username": "mine", "password": "pw" }),
            ),
        ],
    );
    let out = sluice(&["check", "--config", config.to_str().unwrap()], &cache);
    failed(&out, "check against the recorder");
    assert_eq!(
        recorder.seen(),
        vec![
            String::new(),
            String::new(),
            format!("Basic {}", b64("mine:pw"))
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// PUTs `index` as `repo:tag` of `registry`; its digest.
async fn put_index(
    registry: &Registry,
    repo: &str,
    tag: &str,
    index: &serde_json::Value,
) -> String {
    let bytes = serde_json::to_vec(index).unwrap();
    let r = client()
        .put(format!(
            "http://{}/v2/{repo}/manifests/{tag}",
            registry.addr
        ))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let digest = r
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(status, 201, "{}", r.text().await.unwrap_or_default());
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest:?}"
    );
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_indexes_resolve_to_their_wasm_entry() {
    let dir = temp_dir("oci-index");
    let registry = Registry::start().await;
    let wasm = module("oci-index");
    let file = dir.join("p.wasm");
    std::fs::write(&file, &wasm).unwrap();
    let single = format!("{}/plugins/multi:single", registry.addr);
    let pushed = push(&file, &single, &[], &dir.join("push-cache"));
    let plugin_digest = pushed.split_once('@').unwrap().1.to_string();
    // The entry's size is that of the manifest's bytes as stored.
    let raw = client()
        .get(format!(
            "http://{}/v2/plugins/multi/manifests/{plugin_digest}",
            registry.addr
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let entry = |os: &str, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": plugin_digest,
            "size": raw.len(),
            "platform": { "os": os, "architecture": arch },
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("linux", "amd64"), entry("wasi", "wasm")],
    });
    let index_digest = put_index(&registry, "plugins/multi", "v1", &index).await;

    // By tag and by the index's digest: the wasi/wasm entry's plugin, the index's digest.
    for reference in [
        format!("{}/plugins/multi:v1", registry.addr),
        format!("{}/plugins/multi@{index_digest}", registry.addr),
    ] {
        let s = spec(&format!("{{ oci: '{reference}' }}"), &dir);
        let cache = dir.join(format!("cache-{}", reference.len()));
        let f = fetch(&s, &cache).await.unwrap();
        assert_eq!(*f.bytes().unwrap(), wasm[..]);
        assert!(
            f.origin.ends_with(&format!("@{index_digest}")),
            "{}",
            f.origin
        );
        // Pinned, it loads again from the cache alone.
        if reference.contains('@') {
            let again = fetch(&s, &cache).await.unwrap();
            assert!(again.from_cache);
        }
    }

    // No Wasm entry: refused, naming the platforms (through `sluice check`).
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("linux", "amd64"), entry("wasip2", "wasm")],
    });
    put_index(&registry, "plugins/multi", "nowasm", &index).await;
    let config = config_pulling(&dir, &format!("{}/plugins/multi:nowasm", registry.addr), "");
    let out = sluice(
        &["check", "--config", config.to_str().unwrap()],
        &dir.join("cache-x"),
    );
    assert_contains(
        &failed(&out, "check of an index without a wasm entry"),
        &["the image index has no entry for platform wasi/wasm or wasip1/wasm; its platforms: linux/amd64, wasip2/wasm"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
