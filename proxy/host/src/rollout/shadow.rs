//! Shadow runs: the candidate on the request as the stable version saw it, after the request
//! ended, with its effects discarded (it runs on copies: nothing it does reaches the client or
//! the upstream), and its decisions compared with stable's.

use std::sync::Arc;

use bytes::Bytes;

use crate::chain::{Chain, HeadersDone};
use crate::tap::{BodySeen, Served, Tapped};
use crate::wasm::header_list::HeaderList;
use crate::wasm::plugin::Plugin;

/// What the candidate decided on a replayed request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Failure, local reply, reset, guest time.
    pub served: Served,
    /// The request header as it left the candidate (`None`: it never got there).
    pub request_out: Option<HeaderList>,
    /// The request body as it left the candidate.
    pub request_body_out: BodySeen,
    /// The response header as it left the candidate.
    pub response_out: Option<HeaderList>,
    /// The response body as it left the candidate.
    pub response_body_out: BodySeen,
}

/// Kinds of difference, as counted in `sluice_plugin_rollout_diff_total{kind}`.
pub const KINDS: [&str; 6] = [
    "failure",
    "reply",
    "request_headers",
    "request_body",
    "response_headers",
    "response_body",
];

/// Runs `candidate` alone on what `seen` recorded of the stable version's request: its
/// request header and body (the body as far as it was kept), then, if the stable request
/// reached the upstream, the response as stable got it.
pub async fn run(candidate: &Arc<Plugin>, seen: &Tapped) -> Decision {
    let cap = candidate.settings.limits.max_body_bytes;
    let mut d = Decision {
        served: Served::default(),
        request_out: None,
        request_body_out: BodySeen::new(cap),
        response_out: None,
        response_body_out: BodySeen::new(cap),
    };
    let Some(request) = seen.request_in.clone() else {
        return d;
    };
    let mut info = seen.info.clone();
    info.start = Some(std::time::Instant::now());
    let mut chain = match Chain::new(std::slice::from_ref(candidate), info) {
        Ok(c) => c,
        Err(_) => {
            d.served.failed = true;
            return d;
        }
    };
    let status = drive(&mut chain, seen, &mut d, request).await;
    chain.log(status);
    d.served = chain.served(0);
    d
}

/// The phases; returns the status the candidate's client would have got (0 if unknown).
async fn drive(chain: &mut Chain, seen: &Tapped, d: &mut Decision, request: HeaderList) -> u16 {
    chain.load_request_list(request);
    let body = &seen.request_body_in.bytes;
    let end = !seen.request_has_body;
    match chain.request_headers(end).await {
        Err(reply) => return reply.status,
        Ok(HeadersDone::NeedBody) => match chain.request_body_complete(body.clone()).await {
            Ok(out) => d.request_body_out.add(&out),
            Err(reply) => return reply.status,
        },
        Ok(HeadersDone::Continue) if !end => {
            let mut part = Some(Bytes::copy_from_slice(body));
            if let Err(reply) = chain.request_body(&mut part, true).await {
                return reply.status;
            }
            d.request_body_out.add(part.as_deref().unwrap_or_default());
        }
        Ok(HeadersDone::Continue) => {}
    }
    d.request_out = Some(chain.stream().request_headers.clone());
    let Some(response) = seen.response_in.clone() else {
        return 0;
    };
    let status = crate::wasm::stream::list_get(&response, b":status")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0);
    chain.load_response_list(response);
    let body = &seen.response_body_in.bytes;
    let end = seen.response_body_in.len == 0;
    if let Err(reply) = chain.response_headers(end).await {
        return reply.status;
    }
    d.response_out = Some(chain.stream().response_headers.clone());
    if !end {
        let mut part = Some(Bytes::copy_from_slice(body));
        if let Err(reply) = chain.response_body(&mut part, true) {
            return reply.status;
        }
        d.response_body_out.add(part.as_deref().unwrap_or_default());
    }
    status
}

/// The kinds in which the candidate's decision differs from stable's. Headers and bodies are
/// compared only when both let the request (or response) through, and bodies only when the
/// stable version's was kept whole.
pub fn compare(stable: &Served, seen: &Tapped, cand: &Decision) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    if stable.failed != cand.served.failed {
        kinds.push("failure");
    }
    if stable.replied != cand.served.replied || stable.reset != cand.served.reset {
        kinds.push("reply");
    }
    let stopped = |s: &Served| s.replied.is_some() || s.reset;
    if stopped(stable) || stopped(&cand.served) {
        return kinds;
    }
    if differ(&seen.request_out, &cand.request_out) {
        kinds.push("request_headers");
    }
    if seen.request_body_in.complete() && !seen.request_body_out.same(&cand.request_body_out) {
        kinds.push("request_body");
    }
    if seen.response_in.is_some() {
        if differ(&seen.response_out, &cand.response_out) {
            kinds.push("response_headers");
        }
        if seen.response_body_in.complete() && !seen.response_body_out.same(&cand.response_body_out)
        {
            kinds.push("response_body");
        }
    }
    kinds
}

/// Whether two header lists differ, in any order (names compared without case).
fn differ(a: &Option<HeaderList>, b: &Option<HeaderList>) -> bool {
    fn norm(l: &Option<HeaderList>) -> Option<Vec<(Vec<u8>, &[u8])>> {
        l.as_ref().map(|l| {
            let mut v: Vec<(Vec<u8>, &[u8])> = l
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_slice()))
                .collect();
            v.sort();
            v
        })
    }
    match (a, b) {
        (Some(_), Some(_)) => norm(a) != norm(b),
        // One of them never got there: a reply or failure says so.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Option<HeaderList> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn decisions_compare_by_kind() {
        let mut seen = Tapped::new(100);
        seen.request_in = h(&[("a", "1")]);
        seen.request_out = h(&[("a", "1"), ("B", "2")]);
        seen.request_body_in.add(b"x");
        seen.request_body_out.add(b"x");
        let mut cand = Decision {
            served: Served::default(),
            request_out: h(&[("b", "2"), ("a", "1")]),
            request_body_out: BodySeen::new(100),
            response_out: None,
            response_body_out: BodySeen::new(100),
        };
        cand.request_body_out.add(b"x");
        let stable = Served::default();
        assert!(
            compare(&stable, &seen, &cand).is_empty(),
            "same, in another order"
        );
        cand.request_out = h(&[("a", "1")]);
        cand.request_body_out.add(b"y");
        assert_eq!(
            compare(&stable, &seen, &cand),
            vec!["request_headers", "request_body"]
        );
        cand.served.replied = Some(403);
        assert_eq!(
            compare(&stable, &seen, &cand),
            vec!["reply"],
            "a reply says it all"
        );
        cand.served = Served {
            failed: true,
            ..Served::default()
        };
        cand.request_out = seen.request_out.clone();
        cand.request_body_out = seen.request_body_out.clone();
        assert_eq!(compare(&stable, &seen, &cand), vec!["failure"]);
    }
}
