//! A layout rule of the workspace, checked on the sources: no import cycle between the modules
//! of `sluice-host`, nor between those of `sluice-proxy` (between the two crates the crate
//! boundary forbids one: the host cannot name the proxy).
//!
//! A module's imports are the `crate::…`, `super::…` and `self::…` paths in its code (comments
//! and `mod tests` left out; `{…}` groups expanded), resolved to the deepest module that exists.
//! Imports between a module and its own parent or child are not edges: a parent declares its
//! children and re-exports from them. The graph is checked at every depth (`a`, `a::b`, …), so a
//! cycle through two folders (`config` ↔ `source`) shows even when no two files import each
//! other directly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `a/b.rs` → `a::b`; `a/mod.rs` → `a`; `lib.rs` → `` (the crate root).
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).expect("a file under the root");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file as far as imports go: no comment lines, nothing from `mod tests` on.
fn code(src: &str) -> String {
    let mut end = src.len();
    let mut from = 0;
    while let Some(i) = src[from..].find("#[cfg(test)]") {
        let at = from + i;
        let rest = src[at + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod tests {") {
            end = at;
            break;
        }
        from = at + 1;
    }
    src[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands what follows `prefix::` at `s`: a path of identifiers, or a `{…}` group of them.
fn expand(prefix: &str, s: &str, out: &mut Vec<String>) {
    let s = s.trim_start();
    if let Some(group) = s.strip_prefix('{') {
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(prefix, &group[start..i], out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(prefix, &group[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let name: String = s.chars().take_while(|c| ident_char(*c)).collect();
    if name.is_empty() {
        out.push(prefix.to_string());
        return;
    }
    let path = format!("{prefix}::{name}");
    match s[name.len()..].strip_prefix("::") {
        Some(rest) => expand(&path, rest, out),
        None => out.push(path),
    }
}

/// Every `crate::`, `super::` and `self::` path in `code`.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for head in ["crate", "super", "self"] {
        let needle = format!("{head}::");
        let mut from = 0;
        while let Some(i) = code[from..].find(&needle) {
            let at = from + i;
            from = at + needle.len();
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| ident_char(c) || c == ':') {
                continue;
            }
            expand(head, &code[from..], &mut out);
        }
    }
    out
}

/// The module a path in `current` names: the deepest existing module along it.
fn resolve(current: &str, path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut segs = path.split("::").peekable();
    let mut base: Vec<&str> = match segs.next()? {
        "crate" => Vec::new(),
        "self" => current.split("::").filter(|s| !s.is_empty()).collect(),
        _ => {
            let mut b: Vec<&str> = current.split("::").filter(|s| !s.is_empty()).collect();
            b.pop();
            while segs.peek() == Some(&"super") {
                segs.next();
                b.pop();
            }
            b
        }
    };
    let mut found = None;
    for seg in segs {
        base.push(seg);
        let m = base.join("::");
        if modules.contains(&m) {
            found = Some(m);
        } else {
            break;
        }
    }
    found
}

fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

/// The import graph of the modules `(name, source)`.
fn graph(files: &[(String, String)]) -> Graph {
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut g = Graph::new();
    for (m, src) in files {
        for p in paths(&code(src)) {
            if let Some(t) = resolve(m, &p, &modules) {
                if !related(m, &t) {
                    g.entry(m.clone()).or_default().insert(t);
                }
            }
        }
    }
    g
}

/// `g` with each module cut to its first `depth` segments.
fn at_depth(g: &Graph, depth: usize) -> Graph {
    let cut = |m: &str| m.split("::").take(depth).collect::<Vec<_>>().join("::");
    let mut out = Graph::new();
    for (a, targets) in g {
        for b in targets {
            let (a, b) = (cut(a), cut(b));
            if !related(&a, &b) {
                out.entry(a).or_default().insert(b);
            }
        }
    }
    out
}

/// A cycle of `g`, if it has one, as the modules along it.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit<'a>(
        g: &'a Graph,
        m: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| *p == m) {
            let mut c: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m);
        for t in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, t, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m);
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| visit(g, m, &mut Vec::new(), &mut done))
}

/// The first cycle among the modules under `root`, at any depth.
fn cycle_under(root: &Path) -> Option<Vec<String>> {
    let mut list = Vec::new();
    rust_files(root, &mut list);
    let files: Vec<(String, String)> = list
        .iter()
        .map(|f| (module_of(root, f), f))
        // Test modules (`tests.rs`, `tests/…`) may reach anywhere.
        .filter(|(m, _)| !m.split("::").any(|s| s == "tests"))
        .map(|(m, f)| {
            let src = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            (m, src)
        })
        .collect();
    let g = graph(&files);
    let deepest = files
        .iter()
        .map(|(m, _)| m.split("::").count())
        .max()
        .unwrap_or(1);
    (1..=deepest).find_map(|d| cycle(&at_depth(&g, d)))
}

#[test]
fn the_host_has_no_module_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert_eq!(cycle_under(&root), None);
}

#[test]
fn the_proxy_has_no_module_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../src");
    assert_eq!(cycle_under(&root), None);
}

#[test]
fn cycles_are_found_through_groups_folders_and_super() {
    let files = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(m, s)| (m.to_string(), s.to_string()))
            .collect()
    };
    // Two files that import each other, one through a `{…}` group.
    let direct = files(&[
        ("a", "use crate::{b::Thing, c};\n"),
        ("b", "use super::a::Other;\n"),
        ("c", ""),
    ]);
    assert_eq!(
        cycle(&at_depth(&graph(&direct), 1)),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    // A cycle between folders that no two files have: `x::one` → `y`, `y::two` → `x`.
    let folders = files(&[
        ("x", "pub mod one;\n"),
        ("x::one", "fn f() { crate::y::two::g(); }\n"),
        ("y", "pub mod two;\n"),
        ("y::two", "use crate::x;\n"),
    ]);
    let g = graph(&folders);
    assert_eq!(cycle(&at_depth(&g, 2)), None);
    assert!(cycle(&at_depth(&g, 1)).is_some());
    // Comments, tests, parents and children are not edges.
    let fine = files(&[
        ("p", "pub mod q;\nuse self::q::T;\n// crate::r\n"),
        ("p::q", "use super::U;\n"),
        (
            "r",
            "use crate::p::q::T;\n#[cfg(test)]\nmod tests {\n use crate::p;\n}\n",
        ),
    ]);
    assert_eq!(cycle(&at_depth(&graph(&fine), 1)), None);
    assert_eq!(cycle(&at_depth(&graph(&fine), 2)), None);
}
