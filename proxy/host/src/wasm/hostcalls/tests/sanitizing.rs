use super::*;

/// Property: for random requests carrying the sensitive headers (random casings, repeated
/// values) and random grants, a plugin never reads a header it was not granted — through the
/// pairs, a lookup in any casing, or the `request.headers` property — and never changes one;
/// with the grant it sees exactly what the client sent, in order.
#[test]
fn sanitizing_holds_for_random_requests_and_grants() {
    use crate::wasm::sanitize::{ADDRESS_HEADERS, CREDENTIAL_HEADERS};
    let sensitive: Vec<&str> = CREDENTIAL_HEADERS
        .iter()
        .chain(ADDRESS_HEADERS)
        .copied()
        .collect();
    let mut rng = fastrand::Rng::with_seed(0x5a1c_e5a1);
    let casing = |rng: &mut fastrand::Rng, s: &str| -> String {
        s.chars()
            .map(|c| {
                if rng.bool() {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    };
    for round in 0..40 {
        // The client's request.
        let mut headers: Vec<(String, String)> = vec![
            (":method".into(), "GET".into()),
            (":path".into(), "/p".into()),
            (":authority".into(), "example.com".into()),
            (":scheme".into(), "http".into()),
        ];
        for i in 0..rng.usize(0..4) {
            headers.push((format!("x-plain-{i}"), format!("v{}", rng.u32(..))));
        }
        for s in &sensitive {
            if rng.bool() {
                for _ in 0..rng.usize(1..4) {
                    headers.push((casing(&mut rng, s), format!("secret-{}", rng.u32(..))));
                }
            }
        }
        rng.shuffle(&mut headers[4..]);
        let granted: Vec<&str> = sensitive
            .iter()
            .filter(|_| rng.u8(..4) == 0)
            .copied()
            .collect();
        let sent = |name: &str| -> Vec<String> {
            headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .collect()
        };

        // The plugin: read everything every way, then try every write, on every name.
        let mut w = Wat::new();
        let pairs = w.case(c("get_pairs", &[0, RP, RL]));
        let (pp, pl) = w.bytes(b"request\0headers");
        let property = w.case(c("get_property", &[pp, pl, RP, RL]));
        let (fp, fl) = w.str("forged");
        let mut per_name = Vec::new();
        for s in &sensitive {
            let (np, nl) = w.str(&casing(&mut rng, s));
            per_name.push((
                *s,
                w.case(c("get_value", &[0, np, nl, RP, RL])),
                [
                    w.case(c("replace_value", &[0, np, nl, fp, fl])),
                    w.case(c("add_value", &[0, np, nl, fp, fl])),
                    w.case(c("remove_value", &[0, np, nl])),
                ],
            ));
        }
        let mut s = settings(&format!("hc-sanitize-{round}"));
        s.sanitizer = Sanitizer::new(
            &granted.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
            &[],
        );
        let mut t = start(&w, s);
        let stream = t.s();
        stream.request_headers = headers
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        let ctx = format!("round {round}: sent {headers:?}, granted {granted:?}");

        for (how, case) in [("pairs", pairs), ("request.headers", property)] {
            assert_eq!(t.case(case), OK, "{how}: {ctx}");
            let seen = decode(&t.returned());
            for name in &sensitive {
                let values: Vec<String> = seen
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
                    .collect();
                if granted.contains(name) {
                    assert_eq!(values, sent(name), "{how} of granted {name}: {ctx}");
                } else {
                    assert!(values.is_empty(), "{how} showed {name}: {ctx}");
                }
            }
        }
        for (name, get, _) in &per_name {
            let status = t.case(*get);
            match (granted.contains(name), sent(name).first()) {
                (true, Some(first)) => {
                    assert_eq!(status, OK, "get {name}: {ctx}");
                    assert_eq!(&t.returned_str(), first, "get {name}: {ctx}");
                }
                _ => assert_eq!(status, NOT_FOUND, "get {name}: {ctx}"),
            }
        }
        let hidden = |t: &mut T| -> Vec<(String, String)> {
            lossy(&t.s().request_headers)
                .into_iter()
                .filter(|(k, _)| {
                    sensitive
                        .iter()
                        .any(|s| k.eq_ignore_ascii_case(s) && !granted.contains(s))
                })
                .collect()
        };
        let hidden_before = hidden(&mut t);
        for (name, _, writes) in &per_name {
            for w in writes {
                let status = t.case(*w);
                if granted.contains(name) {
                    assert_eq!(status, OK, "write to granted {name}: {ctx}");
                } else {
                    assert_eq!(status, BAD_ARGUMENT, "write to hidden {name}: {ctx}");
                }
            }
        }
        let hidden_after = hidden(&mut t);
        assert_eq!(
            hidden_after, hidden_before,
            "a hidden header changed: {ctx}"
        );
        t.assert_healthy();
    }
}
