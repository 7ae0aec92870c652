//! Plugin authoring from the command line: `sluice plugin new` makes a crate that builds and
//! passes its cases as generated, and `sluice plugin test` reports failing cases and bad
//! input clearly.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::*;

fn sluice(args: &[&str], dir: &Path) -> Output {
    Command::new(sluice_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_new_plugin_builds_and_passes_its_cases_and_a_broken_case_fails() {
    let dir = temp_dir("authoring");
    let out = sluice(&["plugin", "new", "tagger-x"], &dir);
    assert!(out.status.success(), "{}", text(&out));
    let krate = dir.join("tagger-x");
    // A target dir of its own, kept between runs so that only the first build is slow.
    let target = target_dir().join("scaffold");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip1"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&krate)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", text(&build));
    let wasm = target.join("wasm32-wasip1/release/tagger_x.wasm");
    let wasm = wasm.to_str().unwrap();
    let out = sluice(
        &[
            "plugin",
            "test",
            wasm,
            "--config",
            "plugin.yaml",
            "--case",
            "cases.yaml",
        ],
        &krate,
    );
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("2 cases: 2 passed, 0 failed"), "{report}");

    // A case that cannot pass: exit 1, with what differed.
    std::fs::write(
        krate.join("bad.yaml"),
        "cases:\n  - name: wrong status\n    request: { path: /x, headers: { x-block: '1' } }\n    expect: { status: 401, upstream_headers: { x-tagged: 'yes' } }\n",
    )
    .unwrap();
    let out = sluice(
        &[
            "plugin",
            "test",
            wasm,
            "--config",
            "plugin.yaml",
            "--case",
            "bad.yaml",
        ],
        &krate,
    );
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("FAIL  wrong status"), "{report}");
    assert!(report.contains("status: want 401, got 403"), "{report}");
    assert!(
        report.contains("the request did not reach the upstream"),
        "{report}"
    );
    assert!(report.contains("1 case: 0 passed, 1 failed"), "{report}");

    // Bad input is named.
    std::fs::write(
        krate.join("typo.yaml"),
        "cases:\n  - name: x\n    expct: {}\n",
    )
    .unwrap();
    let out = sluice(
        &[
            "plugin",
            "test",
            wasm,
            "--config",
            "plugin.yaml",
            "--case",
            "typo.yaml",
        ],
        &krate,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("typo.yaml: cases[0]: unknown field `expct`"),
        "{}",
        text(&out)
    );
    std::fs::write(krate.join("badopts.yaml"), "config: { header: '' }\n").unwrap();
    let out = sluice(
        &[
            "plugin",
            "test",
            wasm,
            "--config",
            "badopts.yaml",
            "--case",
            "cases.yaml",
        ],
        &krate,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("proxy_on_configure returned false"),
        "{}",
        text(&out)
    );
    let out = sluice(&["plugin", "new", "tagger-x"], &dir);
    assert!(!out.status.success());
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    let out = sluice(&["plugin", "new", "9lives"], &dir);
    assert!(text(&out).contains("is not a crate name"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
