// ---------------------------------------------------------------------------------------------
// Registry authentication: the bearer token flow

use super::*;

/// A token issuer the registry trusts: signs ES256 JWTs with a self-signed certificate (in
/// their `x5c` header) that is the registry's `rootcertbundle`. Anonymous clients get `pull`;
/// `pusher:s3cret` (basic auth), or the refresh token `refresh-s3cret` POSTed as an OAuth2
/// form, gets `pull,push`; wrong credentials get a 401.
struct TokenServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const TOKEN_SERVICE: &str = "sluice-test-registry";
const TOKEN_ISSUER: &str = "sluice-test-issuer";

impl TokenServer {
    /// Starts it; writes the certificate to `root_pem`.
    fn start(root_pem: &Path) -> TokenServer {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["sluice-test-token".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(root_pem, cert.pem()).unwrap();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let x5c = b64(cert.der().as_ref());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, st) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let _ = answer_token(&mut conn, &signer, &x5c);
            }
        });
        TokenServer {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    /// The registry's `auth:` section for this issuer.
    fn registry_config(&self, root_pem: &Path) -> String {
        format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    \
             issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            self.addr,
            root_pem.display()
        )
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
            let _ = t.join();
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn answer_token(
    conn: &mut TcpStream,
    signer: &ring::signature::EcdsaKeyPair,
    x5c: &str,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head.split(' ').nth(1).unwrap_or("/");
    let mut url = reqwest::Url::parse(&format!("http://token{target}")).unwrap();
    // The OAuth2 form (an identity token as refresh token): POSTed, same parameters.
    let mut refresh = None;
    if head.starts_with("POST ") {
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        conn.read_exact(&mut body)?;
        url.set_query(Some(&String::from_utf8_lossy(&body)));
        let grant = |k: &str| {
            url.query_pairs()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.into_owned())
        };
        assert_eq!(grant("grant_type").as_deref(), Some("refresh_token"));
        refresh = grant("refresh_token");
    }
    let authorization = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let allowed: &[&str] = if let Some(refresh) = &refresh {
        if refresh != "refresh-s3cret" {
            return conn.write_all(
                b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 14\r\nconnection: close\r\n\r\nbad refresh!\r\n",
            );
        }
        &["pull", "push"]
    } else if authorization.is_empty() {
        &["pull"]
    } else if authorization == format!("Basic {}", b64(b"pusher:s3cret")) {
        &["pull", "push"]
    } else {
        return conn.write_all(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 14\r\nconnection: close\r\n\r\nbad password\r\n",
        );
    };
    let service = url
        .query_pairs()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.into_owned());
    assert_eq!(service.as_deref(), Some(TOKEN_SERVICE), "{target}");
    let access: Vec<serde_json::Value> = url
        .query_pairs()
        .filter(|(k, _)| k == "scope")
        .filter_map(|(_, scope)| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let granted: Vec<&str> = actions.split(',').filter(|a| allowed.contains(a)).collect();
            Some(serde_json::json!({ "type": kind, "name": name, "actions": granted }))
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [x5c] });
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": "test", "aud": TOKEN_SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", fastrand::u64(..)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = signer
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .unwrap();
    let token = format!("{signing_input}.{}", b64url(sig.as_ref()));
    let body = if refresh.is_some() {
        serde_json::json!({ "access_token": token, "expires_in": 300 }).to_string()
    } else {
        serde_json::json!({ "token": token, "expires_in": 300 }).to_string()
    };
    conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registries_that_want_tokens_get_them_anonymously_or_with_credentials() {
    let dir = temp_dir("oci-auth");
    let cache = dir.join("cache");
    let root = dir.join("token-root.pem");
    let tokens = TokenServer::start(&root);
    let registry = Registry::start_with(&tokens.registry_config(&root)).await;
    let wasm = module("oci-auth");
    let file = dir.join("p.wasm");
    std::fs::write(&file, &wasm).unwrap();
    let target = format!("{}/plugins/auth:v1", registry.addr);
    let target_arg = format!("oci://{target}");
    let push_args = ["plugin", "push", file.to_str().unwrap(), &target_arg];

    // Anonymous: a token for pull only, so the upload is refused.
    let out = sluice(&push_args, &cache);
    assert!(!out.status.success());
    assert_contains(
        &String::from_utf8_lossy(&out.stderr),
        &[
            "authentication failed",
            "still unauthorized after authenticating anonymously",
            "SLUICE_OCI_USERNAME",
        ],
    );
    // Wrong password: the token request itself fails.
    let out = sluice_env(
        &push_args,
        &cache,
        &[
            ("SLUICE_OCI_USERNAME", "pusher"),
            ("SLUICE_OCI_PASSWORD", "nope"),
        ],
    );
    assert!(!out.status.success());
    assert_contains(
        &String::from_utf8_lossy(&out.stderr),
        &["token request to", "401"],
    );
    // With credentials: pushed.
    let out = sluice_env(
        &push_args,
        &cache,
        &[
            ("SLUICE_OCI_USERNAME", "pusher"),
            ("SLUICE_OCI_PASSWORD", "s3cret"),
        ],
    );
    let pushed = stdout_ok(&out, "sluice plugin push with credentials");
    assert!(pushed.starts_with(&format!("{target}@sha256:")), "{pushed}");

    // Pulled anonymously through the token flow, by tag and by digest.
    let hits = tokens.hits.load(Ordering::SeqCst);
    for reference in [&target, &pushed] {
        let s = spec(&format!("{{ oci: '{reference}' }}"), &dir);
        let f = fetch(&s, &dir.join(format!("cache-{}", reference.len())))
            .await
            .unwrap();
        assert_eq!(*f.bytes().unwrap(), wasm[..]);
    }
    assert!(
        tokens.hits.load(Ordering::SeqCst) > hits,
        "tokens were asked for"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_tokens_of_a_docker_config_json_are_exchanged_at_the_realm() {
    let dir = temp_dir("oci-identity");
    let cache = dir.join("cache");
    let root = dir.join("token-root.pem");
    let tokens = TokenServer::start(&root);
    let registry = Registry::start_with(&tokens.registry_config(&root)).await;
    let file = dir.join("p.wasm");
    std::fs::write(&file, module("oci-identity")).unwrap();
    let target = format!("{}/plugins/identity:v1", registry.addr);
    let target_arg = format!("oci://{target}");
    let push_args = ["plugin", "push", file.to_str().unwrap(), &target_arg];
    let write = |token: &str| {
        let docker = dir.join(format!("docker-{token}"));
        std::fs::create_dir_all(&docker).unwrap();
        std::fs::write(
            docker.join("config.json"),
            serde_json::json!({ "auths": { registry.addr.as_str(): { "identitytoken": token } } })
                .to_string(),
        )
        .unwrap();
        docker
    };

    let good = write("refresh-s3cret");
    let out = sluice_env(
        &push_args,
        &cache,
        &[("DOCKER_CONFIG", good.to_str().unwrap())],
    );
    let pushed = stdout_ok(&out, "sluice plugin push with an identity token");
    assert!(pushed.starts_with(&format!("{target}@sha256:")), "{pushed}");

    let bad = write("stale");
    let out = sluice_env(
        &push_args,
        &cache,
        &[("DOCKER_CONFIG", bad.to_str().unwrap())],
    );
    assert!(!out.status.success());
    assert_contains(
        &String::from_utf8_lossy(&out.stderr),
        &["with the identity token of the", "config.json", "401"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
