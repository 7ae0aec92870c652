// ---------------------------------------------------------------------------------------------
// The proxy

use super::*;

/// A `sluice run` child with its own plugin cache; killed when dropped.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("sluice.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_run_serves_through_a_plugin_pulled_from_a_registry() {
    let hello = target_dir().join("wasm32-wasip1/plugin/sluice_plugin_hello.wasm");
    assert!(
        hello.is_file(),
        "{} is missing: build it with `make wasm` first",
        hello.display()
    );
    let registry = Registry::start().await;
    let dir = temp_dir("oci-run");
    let cache = dir.join("cache");
    let target = format!("{}/plugins/hello:v1", registry.addr);
    let pushed = push(&hello, &target, &[], &cache);
    let up = upstream("backend").await;
    let (text, addr, admin) = with_ports(&format!(
        "listeners: [{{ name: public, address: '{{LISTEN}}' }}]\n\
         admin: {{ address: '{{ADMIN}}' }}\n\
         upstreams: {{ backend: {{ endpoints: ['{up}'] }} }}\n\
         routes: [{{ name: all, upstream: backend, plugins: [hello] }}]\n\
         plugins:\n  hello: {{ oci: '{target}', config: {{ greeting: 'pulled from a registry' }} }}\n"
    ));
    let config = dir.join("sluice.yaml");
    std::fs::write(&config, text).unwrap();

    // `sluice check` pulls and loads it too.
    let out = sluice(&["check", "--config", config.to_str().unwrap()], &cache);
    assert_contains(&stdout_ok(&out, "sluice check"), &["OK", "1 plugin)"]);

    let child = spawn_logged(
        Command::new(sluice_bin())
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--log-level", "info"])
            .env("SLUICE_PLUGIN_CACHE", &cache),
        &dir.join("sluice.log"),
    );
    let mut proxy = Proxy {
        child,
        addr,
        dir: dir.clone(),
    };
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            panic!("sluice exited ({status}):\n{}", proxy.logs());
        }
        if let Ok(r) = c.get(format!("http://{admin}/ready")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "not ready:\n{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let r = c
        .get(format!("http://{}/hello", proxy.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-hello"], "pulled from a registry");
    assert_eq!(echo(r).await["upstream"], "backend");
    // The module is in the cache under the layer's digest.
    let digest = pushed.split_once("@sha256:").unwrap().1;
    assert!(
        cache.join("sha256").join(digest).is_file(),
        "manifest cached"
    );
    let wasm = std::fs::read(&hello).unwrap();
    assert!(cache.join("sha256").join(sha256_hex(&wasm)).is_file());
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
