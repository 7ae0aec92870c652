// ---------------------------------------------------------------------------------------------
// Header maps.

use super::*;

#[test]
fn header_values() {
    let mut w = Wat::new();
    let (fp, fl) = w.str("x-foo");
    let (up, ul) = w.str("X-FOO");
    let (pp, pl) = w.str(":path");
    let (mp, ml) = w.str("x-missing");
    let (xp, xl) = w.str("x-multi");
    let foo = w.case(c("get_value", &[0, fp, fl, RP, RL]));
    let upper = w.case(c("get_value", &[0, up, ul, RP, RL]));
    let path = w.case(c("get_value", &[0, pp, pl, RP, RL]));
    let missing = w.case(c("get_value", &[0, mp, ml, RP, RL]));
    let multi = w.case(c("get_value", &[0, xp, xl, RP, RL]));
    let map99 = w.case(c("get_value", &[99, fp, fl, RP, RL]));
    let grpc = w.case(c("get_value", &[4, fp, fl, RP, RL]));
    let response = w.case(c("get_value", &[2, fp, fl, RP, RL]));
    let trailers = w.case(c("get_value", &[1, fp, fl, RP, RL]));
    let callout = w.case(c("get_value", &[6, fp, fl, RP, RL]));
    let mut t = start(&w, settings("hc-hvalue"));
    assert_eq!(t.case(foo), OK);
    assert_eq!(t.returned_str(), "bar");
    assert_eq!(t.case(upper), OK, "names are case-insensitive");
    assert_eq!(t.returned_str(), "bar");
    assert_eq!(t.case(path), OK);
    assert_eq!(t.returned_str(), "/a/b?x=1");
    assert_eq!(t.case(multi), OK);
    assert_eq!(t.returned_str(), "1", "the first value");
    assert_eq!(t.case(missing), NOT_FOUND);
    assert_eq!((t.u32_at(RP), t.u32_at(RL)), (u32::MAX, u32::MAX));
    assert_eq!(t.case(map99), BAD_ARGUMENT);
    assert_eq!(t.case(grpc), BAD_ARGUMENT);
    assert_eq!(t.case(response), BAD_ARGUMENT, "no response yet");
    assert_eq!(t.case(trailers), NOT_FOUND);
    assert_eq!(t.case(callout), NOT_FOUND, "no callout response");
    t.s().response_headers = header_list(&[(":status", "200"), ("x-foo", "resp")]);
    assert_eq!(t.case(response), OK);
    assert_eq!(t.returned_str(), "resp");
    t.assert_healthy();
}

#[test]
fn header_value_memory_and_caps() {
    let mut w = Wat::new();
    let (fp, fl) = w.str("x-foo");
    let key_past_end = w.case(c("get_value", &[0, OOB, 0x20, RP, RL]));
    let key_wraps = w.case(c("get_value", &[0, 0xFFFF_FFFF, 2, RP, RL]));
    let key_huge = w.case(c("get_value", &[0, fp, HUGE, RP, RL]));
    let key_over_cap = w.case(c("get_value", &[0, 0, 8 * 1024 + 1, RP, RL]));
    let ret_ptr_bad = w.case(c("get_value", &[0, fp, fl, OOB, RL]));
    let ret_len_edge = w.case(c("get_value", &[0, fp, fl, RP, 2 * PAGE - 3]));
    let ret_len_last = w.case(c("get_value", &[0, fp, fl, RP, 2 * PAGE - 4]));
    let mut t = start(&w, settings("hc-hmem"));
    assert_eq!(t.case(key_past_end), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(key_wraps), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(key_huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(key_over_cap), BAD_ARGUMENT);
    assert_eq!(t.case(ret_ptr_bad), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(ret_len_edge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.u32_at(RP), u32::MAX, "nothing written on a bad slot");
    assert_eq!(
        t.case(ret_len_last),
        OK,
        "the last 4 bytes of memory are a valid slot"
    );
    assert_eq!(t.u32_at(2 * PAGE - 4), 3);
    t.assert_healthy();
}

#[test]
fn header_pairs_and_size() {
    let mut w = Wat::new();
    let pairs = w.case(c("get_pairs", &[0, RP, RL]));
    let size = w.case(c("get_size", &[0, R3]));
    let pairs99 = w.case(c("get_pairs", &[99, RP, RL]));
    let size99 = w.case(c("get_size", &[99, R3]));
    let pairs_bad_ret = w.case(c("get_pairs", &[0, RP, OOB]));
    let size_bad_ret = w.case(c("get_size", &[0, 0xFFFF_FFFE]));
    let trailers = w.case(c("get_pairs", &[1, RP, RL]));
    let mut t = start(&w, settings("hc-hpairs"));
    assert_eq!(t.case(pairs), OK);
    let bytes = t.returned();
    assert_eq!(decode(&bytes), owned(VISIBLE));
    assert_eq!(t.case(size), OK);
    assert_eq!(t.u32_at(R3) as usize, bytes.len());
    assert_eq!(t.case(pairs99), BAD_ARGUMENT);
    assert_eq!(t.case(size99), BAD_ARGUMENT);
    assert_eq!(t.case(pairs_bad_ret), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(size_bad_ret), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(trailers), OK);
    assert_eq!(decode(&t.returned()), vec![]);
    t.assert_healthy();
}

#[test]
fn header_add_replace_remove() {
    let mut w = Wat::new();
    let (kp, kl) = w.str("X-New");
    let (v1p, v1l) = w.str("v1");
    let (v2p, v2l) = w.str("v2");
    let (v3p, v3l) = w.str("v3");
    let (mp, ml) = w.str("x-multi");
    let add1 = w.case(c("add_value", &[0, kp, kl, v1p, v1l]));
    let add2 = w.case(c("add_value", &[0, kp, kl, v2p, v2l]));
    let get = w.case(c("get_value", &[0, kp, kl, RP, RL]));
    let replace = w.case(c("replace_value", &[0, kp, kl, v3p, v3l]));
    let remove = w.case(c("remove_value", &[0, kp, kl]));
    let remove_multi = w.case(c("remove_value", &[0, mp, ml]));
    let add99 = w.case(c("add_value", &[99, kp, kl, v1p, v1l]));
    let add_key_oob = w.case(c("add_value", &[0, OOB, 0x20, v1p, v1l]));
    let add_value_huge = w.case(c("add_value", &[0, kp, kl, v1p, HUGE]));
    let replace_value_oob = w.case(c("replace_value", &[0, kp, kl, 0xFFFF_FFFF, 2]));
    let remove_key_oob = w.case(c("remove_value", &[0, kp, HUGE]));
    let value_over_cap = w.case(c("add_value", &[0, kp, kl, 0, 64 * 1024 + 1]));
    let mut t = start(&w, settings("hc-hwrite"));
    let x_new = |t: &mut T| {
        t.s()
            .request_headers
            .iter()
            .filter(|(k, _)| k == b"x-new")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(t.case(add1), OK);
    assert_eq!(x_new(&mut t), ["v1"], "added under its lower-case name");
    assert_eq!(t.s().request_changed.names, vec![b"x-new".to_vec()]);
    assert_eq!(t.case(add2), OK);
    assert_eq!(x_new(&mut t), ["v1", "v2"]);
    assert_eq!(t.case(get), OK);
    assert_eq!(t.returned_str(), "v1");
    assert_eq!(t.case(replace), OK);
    assert_eq!(x_new(&mut t), ["v3"]);
    assert_eq!(t.case(remove), OK);
    assert!(x_new(&mut t).is_empty());
    assert_eq!(t.case(get), NOT_FOUND);
    assert_eq!(t.case(remove), OK, "removing an absent header is fine");
    assert_eq!(t.case(remove_multi), OK);
    assert!(!t.s().request_headers.iter().any(|(k, _)| k == b"x-multi"));
    let before = t.s().request_headers.clone();
    assert_eq!(t.case(add99), BAD_ARGUMENT);
    assert_eq!(t.case(add_key_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(add_value_huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(replace_value_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(remove_key_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(value_over_cap), BAD_ARGUMENT);
    assert_eq!(
        t.s().request_headers,
        before,
        "refused writes change nothing"
    );
    t.assert_healthy();
}

#[test]
fn header_writes_validate_names_and_values() {
    let mut w = Wat::new();
    let (okp, okl) = w.str("x-ok");
    let (badp, badl) = w.str("bad name");
    let (vp, vl) = w.str("fine");
    let (crlfp, crlfl) = w.str("a\r\nx-evil: 1");
    let (nulp, null) = w.bytes(b"a\0b");
    let (pathp, pathl) = w.str(":path");
    let (newp, newl) = w.str("/new?q");
    let (relp, rell) = w.str("relative");
    let (bogusp, bogusl) = w.str(":bogus");
    let (upperp, upperl) = w.str(":PATH");
    let bad_name = w.case(c("add_value", &[0, badp, badl, vp, vl]));
    let empty_name = w.case(c("add_value", &[0, okp, 0, vp, vl]));
    let crlf = w.case(c("add_value", &[0, okp, okl, crlfp, crlfl]));
    let nul = w.case(c("replace_value", &[0, okp, okl, nulp, null]));
    let path_ok = w.case(c("replace_value", &[0, pathp, pathl, newp, newl]));
    let path_bad = w.case(c("replace_value", &[0, pathp, pathl, relp, rell]));
    let path_remove = w.case(c("remove_value", &[0, pathp, pathl]));
    let bogus = w.case(c("replace_value", &[0, bogusp, bogusl, vp, vl]));
    let upper = w.case(c("replace_value", &[0, upperp, upperl, newp, newl]));
    let path_add = w.case(c("add_value", &[0, pathp, pathl, vp, vl]));
    let mut t = start(&w, settings("hc-hvalid"));
    let before = t.s().request_headers.clone();
    assert_eq!(t.case(bad_name), BAD_ARGUMENT);
    assert_eq!(t.case(empty_name), BAD_ARGUMENT);
    assert_eq!(t.case(crlf), BAD_ARGUMENT);
    assert_eq!(t.case(nul), BAD_ARGUMENT);
    assert_eq!(t.case(path_bad), BAD_ARGUMENT);
    assert_eq!(t.case(path_remove), BAD_ARGUMENT);
    assert_eq!(t.case(bogus), BAD_ARGUMENT);
    assert_eq!(t.case(upper), BAD_ARGUMENT);
    assert_eq!(t.case(path_add), BAD_ARGUMENT, "\"fine\" is not a path");
    assert_eq!(t.s().request_headers, before);
    assert_eq!(t.case(path_ok), OK);
    let paths: Vec<_> = t
        .s()
        .request_headers
        .iter()
        .filter(|(k, _)| k == b":path")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(paths, vec![b"/new?q".to_vec()]);
    assert_eq!(t.s().request_headers[1].0, b":path", "kept in place");
    t.assert_healthy();
}

#[test]
fn hidden_headers_are_invisible_and_read_only() {
    let name = "hc-hidden";
    let mut w = Wat::new();
    let (ap, al) = w.str("authorization");
    let (cap, cal) = w.str("Authorization");
    let (xp, xl) = w.str("x-forwarded-for");
    let (vp, vl) = w.str("Bearer mine");
    let with_auth = encode(&[("x-foo", "new"), ("authorization", "Bearer mine")]);
    let (sp, sl) = w.bytes(&with_auth);
    let without = encode(&[("x-foo", "new")]);
    let (np, nl) = w.bytes(&without);
    let get = w.case(c("get_value", &[0, ap, al, RP, RL]));
    let get_xff = w.case(c("get_value", &[0, xp, xl, RP, RL]));
    let add = w.case(c("add_value", &[0, ap, al, vp, vl]));
    let replace = w.case(c("replace_value", &[0, cap, cal, vp, vl]));
    let remove = w.case(c("remove_value", &[0, ap, al]));
    let set = w.case(c("set_pairs", &[0, sp, sl]));
    let set_visible = w.case(c("set_pairs", &[0, np, nl]));
    let local = encode(&[("authorization", "x")]);
    let (lp, ll) = w.bytes(&local);
    let local_response = w.case(c("local_response", &[403, 0, 0, 0, 0, lp, ll, 0]));
    let mut t = start(&w, settings(name));
    let refused = || {
        crate::metrics::metrics()
            .plugin_refused_writes
            .with_label_values(&[name, "stable"])
            .get()
    };
    assert_eq!(t.case(get), NOT_FOUND);
    assert_eq!((t.u32_at(RP), t.u32_at(RL)), (u32::MAX, u32::MAX));
    assert_eq!(
        t.case(get_xff),
        NOT_FOUND,
        "the client address is hidden too"
    );
    let before = t.s().request_headers.clone();
    assert_eq!(t.case(add), BAD_ARGUMENT);
    assert_eq!(t.case(replace), BAD_ARGUMENT);
    assert_eq!(t.case(remove), BAD_ARGUMENT);
    assert_eq!(t.case(set), BAD_ARGUMENT);
    assert_eq!(t.s().request_headers, before);
    assert!(!t.s().request_changed.any());
    assert_eq!(t.case(local_response), BAD_ARGUMENT);
    assert!(t.s().effects.local_response.is_none());
    assert_eq!(refused(), 5, "every refused write is counted");
    // Replacing the visible map keeps what the plugin cannot see.
    assert_eq!(t.case(set_visible), OK);
    assert_eq!(
        lossy(&t.s().request_headers),
        owned(&[
            (":method", "GET"),
            (":path", "/a/b?x=1"),
            (":authority", "example.com"),
            (":scheme", "http"),
            ("x-foo", "new"),
            ("authorization", "Bearer secret"),
            ("x-forwarded-for", "10.1.2.3"),
        ])
    );
    t.assert_healthy();
}

#[test]
fn exposed_header_is_visible_and_writable() {
    let mut w = Wat::new();
    let (ap, al) = w.str("authorization");
    let (vp, vl) = w.str("Bearer mine");
    let get = w.case(c("get_value", &[0, ap, al, RP, RL]));
    let pairs = w.case(c("get_pairs", &[0, RP, RL]));
    let replace = w.case(c("replace_value", &[0, ap, al, vp, vl]));
    let mut s = settings("hc-exposed");
    s.sanitizer = Sanitizer::new(&["authorization".into()], &[]);
    let mut t = start(&w, s);
    assert_eq!(t.case(get), OK);
    assert_eq!(t.returned_str(), "Bearer secret");
    assert_eq!(t.case(pairs), OK);
    let seen = decode(&t.returned());
    assert!(seen.contains(&("authorization".into(), "Bearer secret".into())));
    assert!(
        !seen.iter().any(|(k, _)| k == "x-forwarded-for"),
        "only what was exposed"
    );
    assert_eq!(t.case(replace), OK);
    assert_eq!(
        crate::wasm::stream::list_get(&t.s().request_headers, b"authorization"),
        Some(&b"Bearer mine"[..])
    );
    assert_eq!(t.s().request_changed.names, vec![b"authorization".to_vec()]);
    t.assert_healthy();
}

#[test]
fn set_pairs_replaces_the_map() {
    let mut w = Wat::new();
    let new = encode(&[("x-new", "1"), ("X-Up", "2"), (":path", "/z")]);
    let (np, nl) = w.bytes(&new);
    let set = w.case(c("set_pairs", &[0, np, nl]));
    let set_empty = w.case(c("set_pairs", &[0, np, 0]));
    let mut t = start(&w, settings("hc-setpairs"));
    assert_eq!(t.case(set), OK);
    assert_eq!(
        lossy(&t.s().request_headers),
        owned(&[
            (":path", "/z"),
            (":method", "GET"),
            (":authority", "example.com"),
            (":scheme", "http"),
            ("x-new", "1"),
            ("x-up", "2"),
            ("authorization", "Bearer secret"),
            ("x-forwarded-for", "10.1.2.3"),
        ])
    );
    assert!(t.s().request_changed.all);
    assert_eq!(t.case(set_empty), OK);
    assert_eq!(
        lossy(&t.s().request_headers),
        owned(&[
            (":path", "/z"),
            (":method", "GET"),
            (":authority", "example.com"),
            (":scheme", "http"),
            ("authorization", "Bearer secret"),
            ("x-forwarded-for", "10.1.2.3"),
        ]),
        "an empty map keeps pseudo-headers and hidden headers"
    );
    t.assert_healthy();
}

#[test]
fn set_pairs_rejects_malformed_maps() {
    let mut w = Wat::new();
    w.pages = 6;
    let good = encode(&[("x-a", "1")]);
    let mut bad_count = good.clone();
    bad_count[0] = 3;
    let mut no_nul = good.clone();
    let nul_at = 4 + 8 + 3;
    assert_eq!(no_nul[nul_at], 0);
    no_nul[nul_at] = b'X';
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"zz");
    let bad_name = encode(&[("x a", "1")]);
    let bad_value = encode(&[("x-a", "1\r\n")]);
    let cases: Vec<u32> = [
        bad_count,
        no_nul,
        trailing,
        vec![1, 0, 0],
        bad_name,
        bad_value,
    ]
    .iter()
    .map(|m| {
        let (p, l) = w.bytes(m);
        w.case(c("set_pairs", &[0, p, l]))
    })
    .collect();
    let (gp, gl) = w.bytes(&good);
    let map99 = w.case(c("set_pairs", &[99, gp, gl]));
    let grpc = w.case(c("set_pairs", &[5, gp, gl]));
    let past_end = w.case(c("set_pairs", &[0, OOB, 0x20]));
    let huge = w.case(c("set_pairs", &[0, gp, HUGE]));
    let over_cap = w.case(c("set_pairs", &[0, 0, 320 * 1024 + 1]));
    let mut t = start(&w, settings("hc-setbad"));
    let before = t.s().request_headers.clone();
    for case in cases {
        assert_eq!(t.case(case), BAD_ARGUMENT, "case {case}");
    }
    assert_eq!(t.case(map99), BAD_ARGUMENT);
    assert_eq!(t.case(grpc), BAD_ARGUMENT);
    assert_eq!(t.case(past_end), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(over_cap), BAD_ARGUMENT);
    assert_eq!(t.s().request_headers, before);
    assert!(!t.s().request_changed.any());
    t.assert_healthy();
}

#[test]
fn writes_after_the_headers_went_out_are_ignored() {
    let mut w = Wat::new();
    let (kp, kl) = w.str("x-late");
    let (vp, vl) = w.str("1");
    let add = w.case(c("add_value", &[0, kp, kl, vp, vl]));
    let set = encode(&[("x-late", "1")]);
    let (sp, sl) = w.bytes(&set);
    let set = w.case(c("set_pairs", &[0, sp, sl]));
    let trailer = w.case(c("add_value", &[1, kp, kl, vp, vl]));
    let mut t = start(&w, settings("hc-late"));
    t.s().request_headers_writable = false;
    let before = t.s().request_headers.clone();
    assert_eq!(t.case(add), OK);
    assert_eq!(t.case(set), OK);
    assert_eq!(t.case(trailer), OK);
    assert_eq!(t.s().request_headers, before);
    assert!(t.s().request_trailers.is_empty());
    assert!(!t.s().request_changed.any());
    t.assert_healthy();
}
