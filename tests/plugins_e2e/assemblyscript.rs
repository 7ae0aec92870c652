use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemblyscript_sdk_plugin_runs_unmodified() {
    let proxy = start(
        &[("as", "/", "asc")],
        "  asc: { path: as.wasm, root_id: sluice_as, config: hello-as }\n",
    )
    .await;
    let c = client();
    let r = c.get(proxy.url("/as/path")).send().await.unwrap();
    assert_eq!(r.headers()["x-as-plugin"], "sluice-as");
    let e = echo(r).await;
    assert_eq!(echo_header(&e, "x-as-config"), Some("hello-as"));
    assert_eq!(echo_header(&e, "x-as-path"), Some("/as/path"));
    let r = c
        .get(proxy.url("/as"))
        .header("x-as-deny", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-as-denied"], "yes");
    assert_eq!(r.text().await.unwrap(), "denied by assemblyscript");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        proxy.logs().contains("as-plugin saw /as/path"),
        "{}",
        proxy.logs()
    );
}
