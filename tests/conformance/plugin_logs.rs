// ---------------------------------------------------------------------------------------
// The plugins' log lines
// ---------------------------------------------------------------------------------------

use super::*;

/// One line a conformance plugin logged: `conf <tag> <callback> key=value…` or
/// `raw <callback> key=value…` (tag `raw`).
#[derive(Debug, Clone)]
pub(super) struct Line {
    pub(super) tag: String,
    pub(super) what: String,
    pub(super) fields: HashMap<String, String>,
    pub(super) text: String,
}

impl Line {
    pub(super) fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.text))
    }

    pub(super) fn num(&self, key: &str) -> u64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key}= is not a number in {:?}", self.text))
    }
}

/// The value of field `plugin` of a log line (quoted or not).
fn plugin_field(line: &str) -> Option<&str> {
    let at = line.rfind(" plugin=")?;
    let v = &line[at + " plugin=".len()..];
    let v = v.split(' ').next()?;
    Some(v.trim_matches('"'))
}

/// The plugins' lines in the proxy's log, in order. Besides the conformance plugins' own
/// lines: `panic` (the SDK's panic message, with its detail line) and `vm_failed` (Sluice
/// replaced the plugin's VM: every context in it is gone), tagged with the plugin's name.
pub(super) fn plugin_lines(logs: &str) -> Vec<Line> {
    let mut out = Vec::new();
    // The last line may still be being written.
    let complete = logs.rsplit_once('\n').map_or("", |(done, _)| done);
    let all: Vec<&str> = complete.lines().collect();
    for (i, l) in all.iter().enumerate() {
        let Some(at) = l.find("sluice::plugin: ") else {
            continue;
        };
        let msg = &l[at + "sluice::plugin: ".len()..];
        if msg.starts_with("panicked at") || msg.starts_with("plugin failed") {
            let detail = if msg.starts_with("panicked at") {
                all.get(i + 1).copied().unwrap_or("")
            } else {
                l
            };
            let Some(tag) = plugin_field(detail) else {
                continue;
            };
            let phase = detail
                .split(" phase=")
                .nth(1)
                .and_then(|p| p.split(' ').next())
                .unwrap_or("")
                .trim_matches('"');
            out.push(Line {
                tag: tag.to_string(),
                what: if msg.starts_with("panicked at") {
                    "panic"
                } else {
                    "vm_failed"
                }
                .to_string(),
                fields: HashMap::from([("phase".to_string(), phase.to_string())]),
                text: format!("{msg} {}", detail.split(" plugin=").next().unwrap_or("")),
            });
            continue;
        }
        let msg = msg.rsplit_once(" plugin=").map_or(msg, |(m, _)| m);
        let words: Vec<&str> = msg.split(' ').collect();
        let (tag, what, rest) = match words.first() {
            Some(&"conf") if words.len() >= 3 => (words[1], words[2], &words[3..]),
            Some(&"raw") if words.len() >= 2 => ("raw", words[1], &words[2..]),
            _ => continue,
        };
        let fields = rest
            .iter()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        out.push(Line {
            tag: tag.to_string(),
            what: what.to_string(),
            fields,
            text: msg.to_string(),
        });
    }
    out
}

/// What became of a request's context so far.
pub(super) enum Ended {
    /// Its `on_delete` came: every line from its `on_context_create` on.
    Yes(Vec<Line>),
    /// Not yet: its lines so far.
    No(Vec<Line>),
    /// The plugin's VM failed after the request's first line (its lines, and the failure's
    /// lines): the context will never end properly.
    VmFailed(Vec<Line>, Vec<Line>),
}

/// The lines of plugin `tag`'s context for the request whose `x-conf-id` is `req`, from its
/// `on_context_create` on. Each plugin has one VM, so a context id names one request, except
/// after a VM was replaced: only the lines between that context's creation and deletion (or
/// the VM's failure) count.
pub(super) fn lines_of(proxy: &Sluice, tag: &str, req: &str) -> Ended {
    let all: Vec<Line> = plugin_lines(&proxy.logs())
        .into_iter()
        .filter(|l| l.tag == tag)
        .collect();
    let mine = |l: &Line| l.fields.get("req").map(String::as_str) == Some(req);
    let mut lines = Vec::new();
    let Some(first) = all.iter().position(mine) else {
        return Ended::No(lines);
    };
    let ctx = all[first].get("ctx").to_string();
    let same = |l: &Line| {
        l.fields.get("ctx") == Some(&ctx)
            && !["on_tick", "on_vm_start", "on_configure"].contains(&l.what.as_str())
    };
    let start = all[..first]
        .iter()
        .rposition(|l| same(l) && l.what == "on_context_create")
        .unwrap_or(first);
    let mut failure = Vec::new();
    for l in &all[start..] {
        if l.what == "panic" {
            failure.push(l.clone());
        } else if l.what == "vm_failed" {
            failure.push(l.clone());
            return Ended::VmFailed(lines, failure);
        } else if same(l) {
            lines.push(l.clone());
            if l.what == "on_delete" {
                return Ended::Yes(lines);
            }
            failure.clear();
        }
    }
    Ended::No(lines)
}

/// Plugin `tag`'s lines for request `req` so far (for a failure message; no waiting).
pub(super) fn lines_now(proxy: &Sluice, tag: &str, req: &str) -> Vec<String> {
    match lines_of(proxy, tag, req) {
        Ended::Yes(l) | Ended::No(l) => texts(&l).iter().map(|t| t.to_string()).collect(),
        Ended::VmFailed(l, f) => texts(&l)
            .iter()
            .chain(texts(&f).iter())
            .map(|t| t.to_string())
            .collect(),
    }
}

/// Plugin `tag`'s lines for request `req`, once its context ended (`on_delete`); waits at
/// most [`WAIT`], and fails at once if the plugin's VM failed meanwhile.
pub(super) async fn request_lines(proxy: &Sluice, tag: &str, req: &str) -> Vec<Line> {
    let deadline = Instant::now() + WAIT;
    loop {
        let lines = match lines_of(proxy, tag, req) {
            Ended::Yes(lines) => return lines,
            Ended::VmFailed(lines, failure) => panic!(
                "plugin {tag}: its VM failed while request {req} was in it, so the context never ended (no on_log/on_done/on_delete after it): {:#?}\nthe failure: {:#?}",
                texts(&lines),
                texts(&failure)
            ),
            Ended::No(lines) => lines,
        };
        assert!(
            Instant::now() < deadline,
            "plugin {tag}: request {req} did not end (no on_delete) within {WAIT:?}; its lines: {:#?}\nwarnings and errors in the log:\n{}",
            texts(&lines),
            problems(&proxy.logs())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The WARN and ERROR lines of a log (cut to 300 characters each).
fn problems(logs: &str) -> String {
    logs.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(|l| l.chars().take(300).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until a line of plugin `tag` matches `pred`.
pub(super) async fn wait_line(
    proxy: &Sluice,
    tag: &str,
    what: &str,
    pred: impl Fn(&Line) -> bool,
) -> Line {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(l) = plugin_lines(&proxy.logs())
            .into_iter()
            .find(|l| l.tag == tag && l.what == what && pred(l))
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no {tag} {what} line as expected within {WAIT:?}; warnings and errors in the log:\n{}",
            problems(&proxy.logs())
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(super) fn texts(lines: &[Line]) -> Vec<&str> {
    lines.iter().map(|l| l.text.as_str()).collect()
}

/// The callbacks of `lines` (events such as `dispatch` or `rewrite` left out).
pub(super) fn callbacks(lines: &[Line]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l.what.as_str())
        .filter(|w| w.starts_with("on_"))
        .collect()
}

/// The request's context ended properly: `on_log`, `on_done` and `on_delete` exactly once
/// each, after every other callback, `on_delete` last. Returns the `on_log` line.
pub(super) fn assert_ended_once(lines: &[Line]) -> Line {
    let cbs = callbacks(lines);
    let count = |w: &str| cbs.iter().filter(|c| **c == w).count();
    for w in ["on_log", "on_done", "on_delete"] {
        assert_eq!(
            count(w),
            1,
            "{w} must run exactly once: {:#?}",
            texts(lines)
        );
    }
    let n = cbs.len();
    assert_eq!(
        cbs[n - 1],
        "on_delete",
        "on_delete last: {:#?}",
        texts(lines)
    );
    let mut tail = cbs[n - 3..n - 1].to_vec();
    tail.sort_unstable();
    // The spec has on_done before on_log; Envoy logs (on_log) before it destroys the filter
    // (on_done, on_delete). Either order, after every stream callback.
    assert_eq!(
        tail,
        ["on_done", "on_log"],
        "on_log and on_done after every other callback: {:#?}",
        texts(lines)
    );
    lines.iter().find(|l| l.what == "on_log").unwrap().clone()
}

/// The `len` and `eos` of each body callback `what` in `lines`.
pub(super) fn body_calls(lines: &[Line], what: &str) -> Vec<(usize, bool, String)> {
    lines
        .iter()
        .filter(|l| l.what == what)
        .map(|l| {
            (
                l.num("len") as usize,
                l.get("eos") == "true",
                l.get("action").to_string(),
            )
        })
        .collect()
}
