use super::*;

fn errors(yaml: &str) -> Vec<String> {
    match Config::from_yaml(yaml, Path::new("/nonexistent-base")) {
        Ok(_) => panic!("config should be invalid:\n{yaml}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn has(errs: &[String], needle: &str) {
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "no error contains {needle:?}; got:\n{}",
        errs.join("\n")
    );
}

const OK: &str = r#"
listeners:
  - name: public
    address: 127.0.0.1:18080
admin:
  address: 127.0.0.1:19901
upstreams:
  backend:
    endpoints: ["127.0.0.1:3000", "localhost:3001"]
    load_balancing: hash
    hash_on: "header:X-User"
    health_check: { path: /health, interval_ms: 500, timeout_ms: 200 }
routes:
  - name: api
    match: { host: "*.example.com", path_prefix: /api, methods: [get, POST] }
    upstream: backend
  - name: rest
    upstream: backend
"#;

#[test]
fn valid_config_is_resolved() {
    let c = Config::from_yaml(OK, Path::new(".")).expect("valid");
    assert_eq!(c.listeners[0].address, "127.0.0.1:18080".parse().unwrap());
    assert!(c.listeners[0].h2c);
    let up = &c.upstreams[0];
    assert_eq!(up.endpoints.len(), 2);
    assert_eq!(
        up.balancing,
        Balancing::Hash(HashKey::Header("x-user".into()))
    );
    assert_eq!(up.connect_timeout, std::time::Duration::from_secs(5));
    assert_eq!(
        c.routes[0].host,
        Some(HostMatch::Suffix(".example.com".into()))
    );
    assert_eq!(
        c.routes[0].methods,
        vec![http::Method::GET, http::Method::POST]
    );
    assert_eq!(c.routes[1].path_prefix, "/");
    assert_eq!(c.admin.address, "127.0.0.1:19901".parse().unwrap());
}

#[test]
fn unknown_field_names_its_path() {
    let errs = errors(&OK.replace("path_prefix: /api", "path_prefx: /api"));
    has(&errs, "routes[0].match");
    has(&errs, "unknown field `path_prefx`");
}

#[test]
fn wrong_type_names_its_path() {
    let errs = errors(&OK.replace("interval_ms: 500", "interval_ms: soon"));
    has(&errs, "upstreams.backend.health_check.interval_ms");
}

#[test]
fn unknown_upstream_in_route() {
    let errs = errors(&OK.replace(
        "upstream: backend\n  - name: rest",
        "upstream: api\n  - name: rest",
    ));
    has(&errs, r#"routes[0].upstream: no upstream named "api""#);
}

#[test]
fn duplicate_names() {
    let errs = errors(&OK.replace("name: rest", "name: api"));
    has(&errs, r#"routes[1].name: duplicate route name "api""#);
    let two = OK.replace(
        "listeners:\n",
        "listeners:\n  - name: public\n    address: 127.0.0.1:18081\n",
    );
    has(
        &errors(&two),
        r#"listeners[1].name: duplicate listener name "public""#,
    );
}

#[test]
fn bad_addresses() {
    has(
        &errors(&OK.replace("127.0.0.1:18080", "nonsense")),
        "listeners[0].address",
    );
    has(
        &errors(&OK.replace("\"127.0.0.1:3000\"", "\"127.0.0.1:99999\"")),
        "upstreams.backend.endpoints[0]: \"127.0.0.1:99999\" has an invalid port",
    );
    has(
        &errors(&OK.replace("127.0.0.1:19901", "127.0.0.1:18080")),
        "admin.address: 127.0.0.1:18080 is also used by listeners[0]",
    );
}

#[test]
fn empty_endpoints() {
    let errs = errors(&OK.replace(r#"["127.0.0.1:3000", "localhost:3001"]"#, "[]"));
    has(
        &errs,
        "upstreams.backend.endpoints: must list at least one endpoint",
    );
}

#[test]
fn hash_needs_a_key() {
    let errs = errors(&OK.replace("    hash_on: \"header:X-User\"\n", ""));
    has(&errs, "upstreams.backend.hash_on");
    let errs = errors(&OK.replace("header:X-User", "cookie:x"));
    has(&errs, "must be \"client_address\" or \"header:NAME\"");
}

#[test]
fn health_check_ranges() {
    let errs = errors(&OK.replace("timeout_ms: 200", "timeout_ms: 900"));
    has(
        &errs,
        "upstreams.backend.health_check.timeout_ms: 900 is longer than interval_ms (500)",
    );
    has(
        &errors(&OK.replace("path: /health", "path: health")),
        "health_check.path",
    );
}

#[test]
fn route_match_values() {
    has(
        &errors(&OK.replace("path_prefix: /api", "path_prefix: api")),
        "routes[0].match.path_prefix",
    );
    has(
        &errors(&OK.replace("*.example.com", "bad host!")),
        "routes[0].match.host",
    );
    has(
        &errors(&OK.replace("[get, POST]", "[\"GE T\"]")),
        "routes[0].match.methods[0]",
    );
}

#[test]
fn tls_files_must_exist() {
    let errs = errors(&OK.replace(
        "    address: 127.0.0.1:18080\n",
        "    address: 127.0.0.1:18080\n    tls: { cert: missing.pem, key: missing.key }\n",
    ));
    has(&errs, "listeners[0].tls.cert: cannot read");
    has(&errs, "listeners[0].tls.key: cannot read");
}

#[test]
fn unknown_plugin_and_bad_plugin_fields() {
    let errs = errors(&OK.replace(
        "upstream: backend\n  - name: rest",
        "upstream: backend\n    plugins: [auth]\n  - name: rest",
    ));
    has(&errs, r#"routes[0].plugins[0]: no plugin named "auth""#);
    let with_plugin = format!(
        "{OK}plugins:\n  auth:\n    path: auth.wasm\n    on_error: maybe\n    expose: [host]\n    \
         limits: {{ timeout_ms: 0, memory_mb: 99999 }}\n    vms: 0\n    allowed_upstreams: [nope]\n"
    );
    let errs = errors(&with_plugin);
    has(&errs, "plugins.auth.path: cannot read");
    has(&errs, "plugins.auth.on_error");
    has(&errs, "plugins.auth.expose[0]: \"host\" is not hidden");
    has(
        &errs,
        "plugins.auth.limits.timeout_ms: 0 is outside 1..=60000",
    );
    has(&errs, "plugins.auth.limits.memory_mb: 99999 is outside");
    has(&errs, "plugins.auth.vms: must be between 1 and 256");
    has(
        &errs,
        "plugins.auth.allowed_upstreams[0]: no upstream named \"nope\"",
    );
    let extra = format!("{OK}sanitize: {{ extra_headers: [x-secret, 'bad name'] }}\n");
    has(
        &errors(&extra),
        "sanitize.extra_headers[1]: \"bad name\" is not a header name",
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let yaml = OK
        .replace("127.0.0.1:18080", "nonsense")
        .replace(
            "upstream: backend\n  - name: rest",
            "upstream: nope\n  - name: rest",
        )
        .replace("path_prefix: /api", "path_prefix: api");
    assert!(errors(&yaml).len() >= 3);
}

#[test]
fn empty_and_listenerless_configs() {
    has(&errors(""), "the config file is empty");
    has(
        &errors("routes: []\n"),
        "listeners: at least one listener is required",
    );
    has(&errors("listeners: {}\n"), "listeners");
}

/// `OK` with the given `plugins:` entries.
fn with_plugins(entries: &str) -> String {
    format!("{OK}plugins:\n{entries}")
}

const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// base64 of 32 bytes (an ed25519 public key).
const PUBLIC_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[test]
fn url_and_oci_sources_and_signatures_resolve() {
    use crate::source::PluginSource;
    let dir = std::env::temp_dir().join(format!("sluice-config-sig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key.pub"), format!("{PUBLIC_KEY}\n")).unwrap();
    let yaml = with_plugins(&format!(
        "  a: {{ url: 'https://plugins.example.com/a.wasm', sha256: '{}' }}\n\
         \x20 b: {{ oci: '127.0.0.1:5000/plugins/b:v1', signature: {{ public_key: '{PUBLIC_KEY}' }} }}\n\
         \x20 c: {{ oci: 'ghcr.io/org/c@sha256:{DIGEST}', sha256: '{DIGEST}', signature: {{ public_key_file: key.pub }} }}\n",
        DIGEST.to_uppercase()
    ));
    let c = Config::from_yaml(&yaml, &dir).expect("valid");
    let _ = std::fs::remove_dir_all(&dir);
    let a = &c.plugins[0];
    assert_eq!(
        a.source,
        PluginSource::Url("https://plugins.example.com/a.wasm".into())
    );
    assert_eq!(a.sha256.as_deref(), Some(DIGEST), "lower-cased");
    assert!(a.signature.is_none());
    let b = &c.plugins[1];
    match &b.source {
        PluginSource::Oci(r) => {
            assert_eq!(r.registry, "127.0.0.1:5000");
            assert_eq!(r.repository, "plugins/b");
            assert_eq!(r.tag.as_deref(), Some("v1"));
            assert_eq!(r.digest, None);
        }
        other => panic!("{other:?}"),
    }
    let key = b.signature.as_ref().expect("signature");
    assert_eq!(key.public_key_base64(), PUBLIC_KEY);
    let c_ = &c.plugins[2];
    assert_eq!(
        c_.source.to_string(),
        format!("oci:ghcr.io/org/c@sha256:{DIGEST}")
    );
    assert_eq!(c_.signature.as_ref(), Some(key), "same key from the file");
}

#[test]
fn exactly_one_source_per_plugin() {
    let errs = errors(&with_plugins("  p: { sha256: '00' }\n"));
    has(&errs, "plugins.p: one of path, url or oci is required");
    let errs = errors(&with_plugins(
        "  p: { path: p.wasm, url: 'https://x/p.wasm', sha256: '00' }\n",
    ));
    has(
        &errs,
        "plugins.p: path and url are given; exactly one of path, url or oci",
    );
    let errs = errors(&with_plugins(
        "  p: { path: p.wasm, url: 'https://x/p.wasm', oci: 'r.io/p' }\n",
    ));
    has(&errs, "plugins.p: path and url and oci are given");
    let errs = errors(&with_plugins("  p: { uri: 'https://x/p.wasm' }\n"));
    has(&errs, "unknown field `uri`");
}

#[test]
fn url_sources_are_http_and_need_a_digest() {
    let errs = errors(&with_plugins(&format!(
        "  p: {{ url: 'ftp://x/p.wasm', sha256: '{DIGEST}' }}\n"
    )));
    has(
        &errs,
        "plugins.p.url: \"ftp://x/p.wasm\" must be an http:// or https:// URL",
    );
    let errs = errors(&with_plugins(&format!(
        "  p: {{ url: 'not a url', sha256: '{DIGEST}' }}\n"
    )));
    has(&errs, "plugins.p.url: \"not a url\" is not a URL");
    let errs = errors(&with_plugins("  p: { url: 'https://x/p.wasm' }\n"));
    has(&errs, "plugins.p.sha256: is required with url:");
    let errs = errors(&with_plugins(
        "  p: { url: 'https://x/p.wasm', sha256: 'abc' }\n",
    ));
    has(&errs, "plugins.p.sha256: must be 64 hexadecimal digits");
}

#[test]
fn malformed_oci_references_are_refused() {
    for (reference, message) in [
        ("hello", "plugins.p.oci: \"hello\" names no registry"),
        (
            "r.io/Hello",
            "plugins.p.oci: repository \"Hello\" has an invalid component",
        ),
        (
            "r.io:99999/a",
            "plugins.p.oci: registry \"r.io:99999\" has an invalid port",
        ),
        ("r.io/a:b:c", "plugins.p.oci: tag \"b:c\""),
        (
            "r.io/a@sha256:1234",
            "plugins.p.oci: digest \"sha256:1234\"",
        ),
        ("", "plugins.p.oci: is empty"),
    ] {
        let errs = errors(&with_plugins(&format!("  p: {{ oci: '{reference}' }}\n")));
        has(&errs, message);
    }
}

#[test]
fn signature_keys_are_checked() {
    let errs = errors(&with_plugins(&format!(
        "  p: {{ oci: r.io/p, signature: {{ public_key: '{PUBLIC_KEY}', public_key_file: k }} }}\n"
    )));
    has(
        &errs,
        "plugins.p.signature: public_key and public_key_file are both given",
    );
    let errs = errors(&with_plugins("  p: { oci: r.io/p, signature: {} }\n"));
    has(&errs, "plugins.p.signature: public_key (base64 of the ed25519 public key) or public_key_file is required");
    let errs = errors(&with_plugins(
        "  p: { oci: r.io/p, signature: { public_key: 'not base64!' } }\n",
    ));
    has(&errs, "plugins.p.signature.public_key: is not base64");
    let errs = errors(&with_plugins(
        "  p: { oci: r.io/p, signature: { public_key: 'AAAA' } }\n",
    ));
    has(
        &errs,
        "plugins.p.signature.public_key: decodes to 3 bytes; an ed25519 public key has 32",
    );
    let errs = errors(&with_plugins(
        "  p: { oci: r.io/p, signature: { public_key_file: missing.pub } }\n",
    ));
    has(&errs, "plugins.p.signature.public_key_file: cannot read");
    let errs = errors(&with_plugins(
        "  p: { oci: r.io/p, signature: { public_key: 'AAAA', key: x } }\n",
    ));
    has(&errs, "unknown field `key`");
}

#[test]
fn admin_off_loopback_needs_a_token_or_allow_insecure() {
    let dir = std::env::temp_dir().join(format!("sluice-config-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "  0123456789abcdef-long-enough\n").unwrap();
    std::fs::write(dir.join("short"), "abc\n").unwrap();
    let open = OK.replace("address: 127.0.0.1:19901", "address: 0.0.0.0:19901");
    let errs = match Config::from_yaml(&open, &dir) {
        Ok(_) => panic!("a non-loopback admin without a token was accepted"),
        Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    has(
        &errs,
        "admin.address: 0.0.0.0:19901 is not a loopback address",
    );
    has(&errs, "admin.token_file");
    let insecure = open.replace(
        "address: 0.0.0.0:19901",
        "address: 0.0.0.0:19901\n  allow_insecure: true",
    );
    let c = Config::from_yaml(&insecure, &dir).expect("allow_insecure");
    assert_eq!(c.admin.token, None);
    let with_token = open.replace(
        "address: 0.0.0.0:19901",
        "address: 0.0.0.0:19901\n  token_file: token",
    );
    let c = Config::from_yaml(&with_token, &dir).expect("token");
    let token = c.admin.token.expect("token read");
    assert!(token.matches(b"0123456789abcdef-long-enough"));
    assert!(!token.matches(b"0123456789abcdef-long-enougH"));
    assert!(!token.matches(b"0123456789abcdef"));
    assert_eq!(
        format!("{token:?}"),
        "AdminToken(…)",
        "the token is never printed"
    );
    let short = open.replace(
        "address: 0.0.0.0:19901",
        "address: 0.0.0.0:19901\n  token_file: short",
    );
    match Config::from_yaml(&short, &dir) {
        Ok(_) => panic!("a 3-character token was accepted"),
        Err(e) => has(
            &e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "admin.token_file: ",
        ),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Callouts go through the upstream's own TLS settings: a plugin may list an upstream with
/// `tls:` in `allowed_upstreams`.
#[test]
fn callouts_to_tls_upstreams_are_allowed() {
    let yaml = OK.replace(
        "routes:\n",
        "  idp:\n    endpoints: [\"127.0.0.1:8443\"]\n    tls: { sni: idp.internal }\nroutes:\n",
    )
        + "plugins:\n  auth:\n    path: auth.wasm\n    allowed_upstreams: [backend, idp]\n";
    let errs = errors(&yaml);
    assert!(
        !errs.iter().any(|e| e.contains("allowed_upstreams")),
        "an upstream was refused:\n{}",
        errs.join("\n")
    );
    // A name that is no upstream still is.
    let errs = errors(&yaml.replace("[backend, idp]", "[backend, nowhere]"));
    assert!(
        errs.iter()
            .any(|e| e.contains("allowed_upstreams[1]") && e.contains("no upstream named")),
        "{}",
        errs.join("\n")
    );
}

/// `protocol:` is http1 by default; h2 on plain and TLS endpoints; auto only with TLS; other
/// values are refused by name.
#[test]
fn upstream_protocols() {
    let c = Config::from_yaml(OK, Path::new(".")).expect("valid");
    assert_eq!(c.upstreams[0].protocol, crate::config::Protocol::Http1);
    let with = |extra: &str| {
        OK.replace(
            "routes:\n",
            &format!("  grpc:\n    endpoints: [\"127.0.0.1:50051\"]\n{extra}routes:\n"),
        )
    };
    for (extra, want) in [
        ("    protocol: h2\n", crate::config::Protocol::H2),
        (
            "    protocol: h2\n    tls: { sni: grpc.internal }\n",
            crate::config::Protocol::H2,
        ),
        (
            "    protocol: auto\n    tls: { sni: grpc.internal }\n",
            crate::config::Protocol::Auto,
        ),
        ("    protocol: http1\n", crate::config::Protocol::Http1),
    ] {
        let c = Config::from_yaml(&with(extra), Path::new(".")).expect(extra);
        let up = c.upstreams.iter().find(|u| u.name == "grpc").unwrap();
        assert_eq!(up.protocol, want, "{extra}");
    }
    has(
        &errors(&with("    protocol: auto\n")),
        "upstreams.grpc.protocol: auto needs tls:",
    );
    has(&errors(&with("    protocol: http3\n")), "protocol");
}

#[test]
fn a_candidate_takes_what_it_leaves_out_from_stable() {
    let yaml = with_plugins(
        "  auth:\n\
         \x20   url: 'https://p.example.com/v1.wasm'\n\
         \x20   sha256: '0000000000000000000000000000000000000000000000000000000000000001'\n\
         \x20   config: { realm: x }\n\
         \x20   expose: [authorization]\n\
         \x20   on_error: fail_open\n\
         \x20   limits: { timeout_ms: 50 }\n\
         \x20   rollout:\n\
         \x20     candidate: { url: 'https://p.example.com/v2.wasm', sha256: '0000000000000000000000000000000000000000000000000000000000000002', limits: { timeout_ms: 80 } }\n\
         \x20     weight_percent: 2.5\n\
         \x20     sticky_on: header:X-User\n\
         \x20     rollback: { max_error_rate: 0.01 }\n",
    );
    let c = Config::from_yaml(&yaml, Path::new(".")).expect("valid");
    let stable = &c.plugins[0];
    let r = stable.rollout.as_ref().expect("rollout");
    let cand = &r.candidate;
    assert_eq!(cand.name, "auth");
    assert_eq!(cand.fetch_key, "auth (candidate)");
    assert_eq!(cand.version, crate::wasm::settings::Version::Candidate);
    assert_eq!(cand.vm_id, "auth/candidate", "its own VMs and shared data");
    assert_eq!(cand.config, stable.config, "config inherited");
    assert_eq!(cand.expose, stable.expose);
    assert_eq!(cand.on_error, stable.on_error);
    assert_eq!(cand.limits.timeout.as_millis(), 80, "its own limits");
    assert_ne!(cand.sha256, stable.sha256);
    assert_eq!(
        r.settings.mode,
        crate::rollout::Mode::Canary { per_mille: 25 }
    );
    assert_eq!(
        r.settings.sticky,
        crate::rollout::Sticky::Header("x-user".into())
    );
    let rule = r.settings.rollback.expect("rollback");
    assert_eq!(
        (rule.min_requests, rule.window.as_secs()),
        (100, 60),
        "defaults"
    );
    assert_eq!(c.all_plugins().len(), 2);
}

#[test]
fn a_shadow_candidate_has_no_callout_upstream_unless_allowed() {
    let yaml = |extra: &str| {
        with_plugins(&format!(
            "  auth:\n\
             \x20   url: 'https://p.example.com/v1.wasm'\n\
             \x20   sha256: '0000000000000000000000000000000000000000000000000000000000000001'\n\
             \x20   allowed_upstreams: [backend]\n\
             \x20   rollout: {{ mode: shadow, candidate: {{ url: 'https://p.example.com/v2.wasm', sha256: '0000000000000000000000000000000000000000000000000000000000000002' }}{extra} }}\n"
        ))
    };
    let c = Config::from_yaml(&yaml(""), Path::new(".")).expect("valid");
    let r = c.plugins[0].rollout.as_ref().unwrap();
    assert!(r.candidate.allowed_upstreams.is_empty(), "callouts refused");
    assert_eq!(
        r.settings.mode,
        crate::rollout::Mode::Shadow {
            per_mille: 1000,
            concurrency: 4
        },
        "shadow replays every request by default"
    );
    let c = Config::from_yaml(&yaml(", shadow_callouts: true"), Path::new(".")).expect("valid");
    let r = c.plugins[0].rollout.as_ref().unwrap();
    assert_eq!(r.candidate.allowed_upstreams, vec!["backend".to_string()]);
    has(
        &errors(&yaml(", sticky_on: client_address")),
        "plugins.auth.rollout.sticky_on",
    );
}

#[test]
fn secret_references_reach_the_spec_and_the_file_keeps_them() {
    let dir = std::env::temp_dir().join(format!("sluice-config-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key"), "k1\n").unwrap();
    let yaml = with_plugins(
        "  auth:\n    url: 'https://p.example.com/a.wasm'\n    sha256: '0000000000000000000000000000000000000000000000000000000000000001'\n    \
         config: { keys: ['${file:key}', 'x-$${file:key}'] }\n    vm_config: '${file:key}'\n    \
         rollout: { candidate: { url: 'https://p.example.com/b.wasm', sha256: '0000000000000000000000000000000000000000000000000000000000000002' } }\n",
    );
    let c = Config::from_yaml(&yaml, &dir).expect("valid");
    let p = &c.plugins[0];
    assert_eq!(p.config, br#"{"keys":["k1","x-${file:key}"]}"#);
    assert_eq!(p.vm_config, b"k1");
    assert_eq!(p.secrets.references, ["file:key"]);
    assert_eq!(p.secrets.files, [dir.join("key")]);
    let cand = &p.rollout.as_ref().unwrap().candidate;
    assert_eq!(
        cand.config, p.config,
        "the candidate inherits the resolved config"
    );
    let shown = serde_json::to_string(&c.file).unwrap();
    assert!(
        shown.contains("${file:key}") && !shown.contains("k1"),
        "{shown}"
    );
    assert_eq!(
        crate::file_mark::plugin_files(&c),
        [dir.join("key"), dir.join("key")]
    );

    let errs = errors(&with_plugins(
        "  auth:\n    path: auth.wasm\n    config: { a: { b: ['${env:SLUICE_CONFIG_TEST_UNSET_VAR}'] } }\n",
    ));
    has(
        &errs,
        "plugins.auth.config.a.b[0]: ${env:SLUICE_CONFIG_TEST_UNSET_VAR}: the environment \
         variable SLUICE_CONFIG_TEST_UNSET_VAR is not set",
    );
}
