// ---------------------------------------------------------------------------------------------
// Properties.

use super::*;

#[test]
fn well_known_properties() {
    let mut w = Wat::new();
    let get = |w: &mut Wat, p: &[u8]| {
        let (pp, pl) = w.bytes(p);
        w.case(c("get_property", &[pp, pl, RP, RL]))
    };
    let expect: Vec<(u32, &str)> = vec![
        (get(&mut w, &path(&["plugin_name"])), "hc-props"),
        (get(&mut w, b"plugin_name\0"), "hc-props"),
        (get(&mut w, &path(&["plugin_root_id"])), "hc-props.root"),
        (get(&mut w, &path(&["plugin_vm_id"])), "hc-props.vm"),
        (get(&mut w, &path(&["request", "path"])), "/a/b?x=1"),
        (get(&mut w, &path(&["request", "url_path"])), "/a/b"),
        (get(&mut w, &path(&["request", "query"])), "x=1"),
        (get(&mut w, &path(&["request", "method"])), "GET"),
        (get(&mut w, &path(&["request", "host"])), "example.com"),
        (get(&mut w, &path(&["request", "scheme"])), "http"),
        (get(&mut w, &path(&["request", "id"])), "req-1"),
        (get(&mut w, &path(&["request", "protocol"])), "HTTP/1.1"),
        (get(&mut w, &path(&["route_name"])), "route-1"),
    ];
    let headers = get(&mut w, &path(&["request", "headers"]));
    let code = get(&mut w, &path(&["response", "code"]));
    let upstream = get(&mut w, &path(&["upstream", "address"]));
    let mut t = start(&w, settings("hc-props"));
    for (case, want) in expect {
        assert_eq!(t.case(case), OK, "case {case}");
        assert_eq!(t.returned_str(), want, "case {case}");
    }
    assert_eq!(t.case(headers), OK);
    assert_eq!(
        decode(&t.returned()),
        owned(&[("x-foo", "bar"), ("x-multi", "1"), ("x-multi", "2")]),
        "no pseudo-headers, nothing hidden"
    );
    assert_eq!(t.case(code), NOT_FOUND, "no response yet");
    t.s().info.response_code = Some(404);
    assert_eq!(t.case(code), OK);
    assert_eq!(t.returned(), 404u64.to_le_bytes());
    assert_eq!(t.case(upstream), NOT_FOUND);
    t.assert_healthy();
}

#[test]
fn unknown_and_malformed_property_paths() {
    let mut w = Wat::new();
    let get = |w: &mut Wat, p: &[u8]| {
        let (pp, pl) = w.bytes(p);
        w.case(c("get_property", &[pp, pl, RP, RL]))
    };
    let unknown = get(&mut w, &path(&["foo", "bar"]));
    let unknown_sub = get(&mut w, &path(&["request", "nothing"]));
    let empty = get(&mut w, b"");
    let empty_segment = get(&mut w, b"request\0\0path");
    let segs: Vec<&str> = vec!["a"; 17];
    let too_deep = get(&mut w, &path(&segs));
    let sixteen = get(&mut w, &path(&segs[..16]));
    let long = vec![b'a'; 1025];
    let too_long = get(&mut w, &long);
    let (np, nl) = w.bytes(&path(&["plugin_name"]));
    let past_end = w.case(c("get_property", &[OOB, 0x20, RP, RL]));
    let huge = w.case(c("get_property", &[np, HUGE, RP, RL]));
    let ret_bad = w.case(c("get_property", &[np, nl, OOB, RL]));
    let mut t = start(&w, settings("hc-propbad"));
    assert_eq!(t.case(unknown), NOT_FOUND);
    assert_eq!(t.case(unknown_sub), NOT_FOUND);
    assert_eq!(t.case(sixteen), NOT_FOUND);
    assert_eq!(t.case(empty), BAD_ARGUMENT);
    assert_eq!(t.case(empty_segment), BAD_ARGUMENT);
    assert_eq!(t.case(too_deep), BAD_ARGUMENT);
    assert_eq!(t.case(too_long), BAD_ARGUMENT);
    assert_eq!(t.case(past_end), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(ret_bad), INVALID_MEMORY_ACCESS);
    t.assert_healthy();
}

#[test]
fn custom_properties() {
    let mut w = Wat::new();
    let (kp, kl) = w.bytes(&path(&["my", "prop"]));
    let (v1p, v1l) = w.str("v1");
    let (v2p, v2l) = w.str("v2");
    let set1 = w.case(c("set_property", &[kp, kl, v1p, v1l]));
    let set2 = w.case(c("set_property", &[kp, kl, v2p, v2l]));
    let get = w.case(c("get_property", &[kp, kl, RP, RL]));
    let set_path = |w: &mut Wat, p: &[u8]| {
        let (pp, pl) = w.bytes(p);
        w.case(c("set_property", &[pp, pl, v1p, v1l]))
    };
    let request_path = set_path(&mut w, &path(&["request", "path"]));
    let plugin_name = set_path(&mut w, &path(&["plugin_name"]));
    let source = set_path(&mut w, &path(&["source", "address"]));
    let request_new = set_path(&mut w, &path(&["request", "new_thing"]));
    let empty_path = set_path(&mut w, b"");
    let value_huge = w.case(c("set_property", &[kp, kl, v1p, HUGE]));
    let value_over_cap = w.case(c("set_property", &[kp, kl, 0, 64 * 1024 + 1]));
    let path_oob = w.case(c("set_property", &[OOB, 0x20, v1p, v1l]));
    let mut t = start(&w, settings("hc-custom"));
    assert_eq!(t.case(get), NOT_FOUND);
    assert_eq!(t.case(set1), OK);
    assert_eq!(t.case(get), OK);
    assert_eq!(t.returned_str(), "v1");
    assert_eq!(t.case(set2), OK);
    assert_eq!(t.case(get), OK);
    assert_eq!(t.returned_str(), "v2");
    assert_eq!(
        t.s().custom_properties,
        vec![(b"my\0prop".to_vec(), b"v2".to_vec())]
    );
    assert_eq!(t.case(request_path), BAD_ARGUMENT);
    assert_eq!(t.case(plugin_name), BAD_ARGUMENT);
    assert_eq!(t.case(source), BAD_ARGUMENT);
    assert_eq!(
        t.case(request_new),
        BAD_ARGUMENT,
        "well-known roots are reserved"
    );
    assert_eq!(t.case(empty_path), BAD_ARGUMENT);
    assert_eq!(t.case(value_huge), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(value_over_cap), BAD_ARGUMENT);
    assert_eq!(t.case(path_oob), INVALID_MEMORY_ACCESS);
    assert_eq!(t.s().custom_properties.len(), 1);
    // The property belongs to the request: a new request does not see it.
    let mut other = Some(request());
    let r = t.vm.call_stream(
        t.ctx,
        StreamCall::RequestHeaders(get, false),
        &mut other,
        0,
        &t.sink,
        None,
    );
    assert_eq!(r.unwrap(), NOT_FOUND);
    t.assert_healthy();
}

#[test]
fn source_address_needs_the_grant() {
    let mut w = Wat::new();
    let (ap, al) = w.bytes(&path(&["source", "address"]));
    let (pp, pl) = w.bytes(&path(&["source", "port"]));
    let (xp, xl) = w.str("x-forwarded-for");
    let address = w.case(c("get_property", &[ap, al, RP, RL]));
    let port = w.case(c("get_property", &[pp, pl, RP, RL]));
    let xff = w.case(c("get_value", &[0, xp, xl, RP, RL]));
    let mut hidden = start(&w, settings("hc-source-hidden"));
    assert_eq!(hidden.case(address), NOT_FOUND);
    assert_eq!(hidden.case(port), NOT_FOUND);
    assert_eq!(hidden.case(xff), NOT_FOUND);
    hidden.assert_healthy();

    let mut s = settings("hc-source-exposed");
    s.sanitizer = Sanitizer::new(&["client_address".into()], &[]);
    let mut t = start(&w, s);
    assert_eq!(t.case(address), OK);
    assert_eq!(t.returned_str(), "10.1.2.3:4567");
    assert_eq!(t.case(port), OK);
    assert_eq!(t.returned(), 4567u64.to_le_bytes());
    assert_eq!(t.case(xff), OK);
    assert_eq!(t.returned_str(), "10.1.2.3");
    t.assert_healthy();
}
