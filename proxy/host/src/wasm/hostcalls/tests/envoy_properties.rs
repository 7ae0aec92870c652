// =============================================================================================
// Envoy's further properties (issue 13, item 7): request sizes, duration, referer and user
// agent; response details, flags, gRPC status, trailers and sizes; SNI and TLS versions;
// upstream port and TLS; node and listener direction. Values are asserted byte for byte.
// =============================================================================================

use super::*;

#[test]
fn request_referer_useragent_sizes_and_duration() {
    let visible: usize = VISIBLE.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert_eq!(visible as u64, VISIBLE_BYTES);
    let mut w = Wat::new();
    let [referer, useragent, size, total, duration] = property_cases(
        &mut w,
        &[
            &["request", "referer"],
            &["request", "useragent"],
            &["request", "size"],
            &["request", "total_size"],
            &["request", "duration"],
        ],
    )[..] else {
        unreachable!()
    };
    let mut t = start(&w, settings("hc-props-request"));
    // Nothing known yet: no such headers, no body, not complete.
    assert_eq!(t.prop(referer), Err(NOT_FOUND));
    assert_eq!(t.prop(useragent), Err(NOT_FOUND));
    assert_eq!(t.prop(size), Ok(0u64.to_le_bytes().to_vec()));
    assert_eq!(t.prop(total), Ok(VISIBLE_BYTES.to_le_bytes().to_vec()));
    assert_eq!(t.prop(duration), Err(NOT_FOUND), "the request is not over");

    // From the headers; repeated ones joined by `,` as on Envoy.
    let h = &mut t.s().request_headers;
    add_header(h, "Referer", "https://example.org/from");
    add_header(h, "user-agent", "curl/8.5.0");
    add_header(h, "User-Agent", "second");
    assert_eq!(t.prop(referer), Ok(b"https://example.org/from".to_vec()));
    assert_eq!(t.prop(useragent), Ok(b"curl/8.5.0,second".to_vec()));

    // The body so far, counted chunk by chunk; total = body + visible header bytes.
    t.s().info.add_request_body(5);
    t.s().info.add_request_body(7);
    assert_eq!(t.prop(size), Ok(12u64.to_le_bytes().to_vec()));
    let added = ("Referer".len()
        + "https://example.org/from".len()
        + 2 * "user-agent".len()
        + "curl/8.5.0".len()
        + "second".len()) as u64;
    assert_eq!(
        t.prop(total),
        Ok((12 + VISIBLE_BYTES + added).to_le_bytes().to_vec())
    );
    // A content-length wins (Envoy's rule); one that is not a number is no size.
    add_header(&mut t.s().request_headers, "content-length", " 100 ");
    assert_eq!(t.prop(size), Ok(100u64.to_le_bytes().to_vec()));
    crate::wasm::stream::list_replace(&mut t.s().request_headers, b"content-length", b"1e3");
    assert_eq!(t.prop(size), Err(NOT_FOUND));
    crate::wasm::stream::list_remove(&mut t.s().request_headers, b"content-length");
    assert_eq!(t.prop(size), Ok(12u64.to_le_bytes().to_vec()));

    // The duration: int64 nanoseconds, once the request is complete; the first end counts.
    t.s().info.duration = Some(Duration::from_nanos(1_234_567_890));
    assert_eq!(
        t.prop(duration),
        Ok(vec![0xd2, 0x02, 0x96, 0x49, 0, 0, 0, 0]),
        "1234567890 ns, 8 bytes little-endian"
    );
    let info = &mut t.s().info;
    info.duration = None;
    info.start = Instant::now().checked_sub(Duration::from_millis(50));
    info.complete();
    let took = info.duration.expect("complete() sets the duration");
    assert!(took >= Duration::from_millis(50), "{took:?}");
    info.complete();
    assert_eq!(info.duration, Some(took), "only the first end counts");
    let want = i64::try_from(took.as_nanos()).unwrap();
    assert_eq!(t.prop(duration), Ok(want.to_le_bytes().to_vec()));
    // Without a start there is no duration.
    let info = &mut t.s().info;
    info.duration = None;
    info.start = None;
    info.complete();
    assert_eq!(t.prop(duration), Err(NOT_FOUND));
    t.assert_healthy();
}

#[test]
fn response_details_flags_grpc_status_trailers_and_sizes() {
    let mut w = Wat::new();
    let [details, flags, grpc, trailers, size, total, code] = property_cases(
        &mut w,
        &[
            &["response", "code_details"],
            &["response", "flags"],
            &["response", "grpc_status"],
            &["response", "trailers"],
            &["response", "size"],
            &["response", "total_size"],
            &["response", "code"],
        ],
    )[..] else {
        unreachable!()
    };
    let mut t = start(&w, settings("hc-props-response"));
    // No response yet: only the flags exist (none set).
    assert_eq!(t.prop(details), Err(NOT_FOUND));
    assert_eq!(t.prop(flags), Ok(vec![0; 8]));
    assert_eq!(t.prop(grpc), Err(NOT_FOUND));
    assert_eq!(t.prop(trailers), Err(NOT_FOUND));
    assert_eq!(t.prop(size), Err(NOT_FOUND));
    assert_eq!(t.prop(total), Err(NOT_FOUND));
    assert_eq!(t.prop(code), Err(NOT_FOUND));

    let info = &mut t.s().info;
    info.add_response_flag(RequestInfo::FLAG_UPSTREAM_CONNECTION_FAILURE);
    info.add_response_flag(RequestInfo::FLAG_NO_HEALTHY_UPSTREAM);
    info.add_response_flag(RequestInfo::FLAG_UPSTREAM_CONNECTION_FAILURE);
    info.set_code_details("upstream_reset_before_response_started");
    info.set_code_details("via_upstream");
    assert_eq!(t.prop(flags), Ok(vec![0x22, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(
        t.prop(details),
        Ok(b"via_upstream".to_vec()),
        "the last one wins"
    );

    // The response header phase: no trailers (yet) is an empty map, 4 zero bytes.
    t.s().response_headers = header_list(&[
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "3"),
    ]);
    assert_eq!(t.prop(trailers), Ok(vec![0, 0, 0, 0]));
    assert_eq!(
        t.prop(grpc),
        Ok(3i64.to_le_bytes().to_vec()),
        "from the headers"
    );
    let head = (":status".len() + 3 + "content-type".len() + 16 + "grpc-status".len() + 1) as u64;
    assert_eq!(t.prop(size), Ok(vec![0; 8]));
    assert_eq!(t.prop(total), Ok(head.to_le_bytes().to_vec()));
    t.s().info.add_response_body(1000);
    t.s().info.add_response_body(24);
    assert_eq!(t.prop(size), Ok(1024u64.to_le_bytes().to_vec()));
    assert_eq!(t.prop(total), Ok((1024 + head).to_le_bytes().to_vec()));

    // Trailers: their grpc-status wins over the headers'; they count in the total size.
    t.s().response_trailers = header_list(&[("grpc-status", "14"), ("grpc-message", "down")]);
    assert_eq!(t.prop(grpc), Ok(14i64.to_le_bytes().to_vec()));
    assert_eq!(
        t.prop(trailers),
        Ok(encode(&[("grpc-status", "14"), ("grpc-message", "down")]))
    );
    let tail = ("grpc-status".len() + 2 + "grpc-message".len() + 4) as u64;
    assert_eq!(
        t.prop(total),
        Ok((1024 + head + tail).to_le_bytes().to_vec())
    );
    // What Envoy cannot read as a status is -1 (InvalidCode); an empty value is no status.
    for (bad, want) in [("17", -1i64), ("x", -1), ("-2", -1), ("16", 16), ("0", 0)] {
        t.s().response_trailers = header_list(&[("grpc-status", bad)]);
        assert_eq!(t.prop(grpc), Ok(want.to_le_bytes().to_vec()), "{bad:?}");
    }
    assert_eq!((-1i64).to_le_bytes(), [0xff; 8]);
    t.s().response_trailers = header_list(&[("grpc-status", "")]);
    assert_eq!(
        t.prop(grpc),
        Ok(3i64.to_le_bytes().to_vec()),
        "falls back to the headers"
    );
    t.s().response_headers = header_list(&[(":status", "200")]);
    assert_eq!(t.prop(grpc), Err(NOT_FOUND), "not a gRPC response");

    // A response known only by its status (a local answer) has sizes but no header bytes.
    t.s().response_headers.clear();
    t.s().response_trailers.clear();
    assert_eq!(t.prop(size), Err(NOT_FOUND));
    t.s().info.response_code = Some(503);
    assert_eq!(t.prop(size), Ok(1024u64.to_le_bytes().to_vec()));
    assert_eq!(t.prop(total), Ok(1024u64.to_le_bytes().to_vec()));
    assert_eq!(t.prop(trailers), Ok(vec![0, 0, 0, 0]));
    t.assert_healthy();
}

#[test]
fn connection_and_upstream_tls_sni_and_port() {
    let paths: &[&[&str]] = &[
        &["connection", "requested_server_name"],
        &["connection", "tls_version"],
        &["connection", "mtls"],
        &["connection", "tls"],
        &["upstream", "port"],
        &["upstream", "tls_version"],
        &["upstream", "address"],
    ];
    let mut w = Wat::new();
    let [sni, tls_version, mtls, tls, port, up_tls, up_addr] = property_cases(&mut w, paths)[..]
    else {
        unreachable!()
    };
    let mut t = start(&w, settings("hc-props-conn"));
    // Plain HTTP, no upstream chosen yet.
    assert_eq!(t.prop(sni), Err(NOT_FOUND));
    assert_eq!(t.prop(tls_version), Err(NOT_FOUND));
    assert_eq!(t.prop(mtls), Ok(vec![0]));
    assert_eq!(t.prop(tls), Ok(vec![0]));
    assert_eq!(t.prop(port), Err(NOT_FOUND));
    assert_eq!(t.prop(up_tls), Err(NOT_FOUND));

    let info = &mut t.s().info;
    info.tls = true;
    info.requested_server_name = Some("api.example.com".into());
    info.tls_version = RequestInfo::tls_version_name("TLSv1_3");
    assert_eq!(t.prop(sni), Ok(b"api.example.com".to_vec()));
    assert_eq!(t.prop(tls_version), Ok(b"TLSv1.3".to_vec()));
    assert_eq!(t.prop(tls), Ok(vec![1]));
    assert_eq!(t.prop(mtls), Ok(vec![0]), "no client certificates yet");

    t.s().info.upstream_address = Some("10.0.0.7:8443".into());
    assert_eq!(t.prop(port), Ok(8443u64.to_le_bytes().to_vec()));
    t.s().info.upstream_address = Some("[::1]:9000".into());
    assert_eq!(t.prop(port), Ok(9000u64.to_le_bytes().to_vec()));
    assert_eq!(
        t.prop(up_tls),
        Err(NOT_FOUND),
        "a plain upstream connection"
    );
    t.s().info.set_upstream_tls_version("TLSv1_2");
    assert_eq!(t.prop(up_tls), Ok(b"TLSv1.2".to_vec()));

    // rustls' names, as OpenSSL (and so Envoy) spells them.
    for (rustls, want) in [
        ("TLSv1_0", Some("TLSv1")),
        ("TLSv1_1", Some("TLSv1.1")),
        ("TLSv1_2", Some("TLSv1.2")),
        ("TLSv1_3", Some("TLSv1.3")),
        ("", None),
        ("TLSv9_9", None),
    ] {
        assert_eq!(RequestInfo::tls_version_name(rustls), want, "{rustls:?}");
    }
    t.assert_healthy();

    // Without Sluice-only properties every `upstream.*` is absent, like `upstream.address`.
    let mut s = settings("hc-props-conn-portable");
    s.sluice_properties = false;
    let mut p = start(&w, s);
    let info = &mut p.s().info;
    info.upstream_address = Some("10.0.0.7:8443".into());
    info.set_upstream_tls_version("TLSv1_3");
    for case in [port, up_tls, up_addr] {
        assert_eq!(p.prop(case), Err(NOT_FOUND), "case {case}");
    }
    p.assert_healthy();
}

/// The host name as `node.id` should give it, read here on its own.
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".into())
}

#[test]
fn node_and_listener_direction_also_in_the_root_context() {
    let id = host_name();
    let version = env!("CARGO_PKG_VERSION");
    // `node` as Envoy serializes its Node message: id (1), user_agent_name (6),
    // user_agent_version (7), each tag, length, bytes.
    let mut node = vec![0x0a, u8::try_from(id.len()).unwrap()];
    node.extend_from_slice(id.as_bytes());
    node.extend_from_slice(&[0x32, 6]);
    node.extend_from_slice(b"sluice");
    node.extend_from_slice(&[0x3a, u8::try_from(version.len()).unwrap()]);
    node.extend_from_slice(version.as_bytes());

    let mut w = Wat::new();
    let paths: &[&[&str]] = &[
        &["node", "id"],
        &["node", "user_agent_name"],
        &["node", "user_agent_version"],
        &["node"],
        &["listener_direction"],
        &["node", "cluster"],
        &["node", "metadata", "NAME"],
        &["request", "path"],
    ];
    let cases = property_cases(&mut w, paths);
    // In the root context: `proxy_on_configure` reads every path into a table.
    let body = property_table(&mut w, paths);
    w.extra = format!(
        "  (func (export \"proxy_on_configure\") (param $root i32) (param $len i32) \
         (result i32){body}\n    (i32.const 1))\n"
    );
    let (xp, xl) = w.bytes(&path(&["node", "x"]));
    let (vp, vl) = w.str("v");
    let set_node = w.case(c("set_property", &[xp, xl, vp, vl]));
    let (dp, dl) = w.bytes(&path(&["listener_direction"]));
    let set_direction = w.case(c("set_property", &[dp, dl, vp, vl]));
    let mut t = start(&w, settings("hc-props-node"));

    let want: Vec<Result<Vec<u8>, u32>> = vec![
        Ok(id.clone().into_bytes()),
        Ok(b"sluice".to_vec()),
        Ok(version.as_bytes().to_vec()),
        Ok(node.clone()),
        Ok(1u64.to_le_bytes().to_vec()),
        Err(NOT_FOUND),
        Err(NOT_FOUND),
    ];
    for (i, expected) in want.iter().enumerate() {
        let slot = u32::try_from(i).unwrap();
        let got = match t.u32_at(0x200 + 4 * slot) {
            OK => Ok(t.returned_at(0x280 + 8 * slot, 0x284 + 8 * slot)),
            s => Err(s),
        };
        assert_eq!(&got, expected, "root context: {:?}", paths[i]);
        assert_eq!(
            &t.prop(cases[i]),
            expected,
            "stream context: {:?}",
            paths[i]
        );
    }
    assert_eq!(
        t.u32_at(0x200 + 4 * 7),
        NOT_FOUND,
        "no request in the root context"
    );
    assert_eq!(t.prop(cases[7]), Ok(b"/a/b?x=1".to_vec()));
    // Outside a request, too.
    let r = t.vm.call_stream(
        t.ctx,
        StreamCall::RequestHeaders(cases[4], false),
        &mut None,
        0,
        &t.sink,
        None,
    );
    assert_eq!(r.unwrap(), OK);
    // Read-only, like every well-known root.
    assert_eq!(t.case(set_node), BAD_ARGUMENT);
    assert_eq!(t.case(set_direction), BAD_ARGUMENT);
    t.assert_healthy();
}
