// Envoy's further properties (see `envoy_properties.rs`), all of them at once: read in
// `on_log` after a client left, and each one's status with and without what it needs.

use super::*;

/// Every one of Envoy's further properties (see `envoy_properties.rs`).
const NEW_PROPERTIES: &[&[&str]] = &[
    &["request", "referer"],
    &["request", "useragent"],
    &["request", "duration"],
    &["request", "size"],
    &["request", "total_size"],
    &["response", "code_details"],
    &["response", "flags"],
    &["response", "grpc_status"],
    &["response", "trailers"],
    &["response", "size"],
    &["response", "total_size"],
    &["connection", "requested_server_name"],
    &["connection", "tls_version"],
    &["connection", "mtls"],
    &["upstream", "port"],
    &["upstream", "tls_version"],
    &["node"],
    &["node", "id"],
    &["node", "user_agent_name"],
    &["node", "user_agent_version"],
    &["listener_direction"],
];

#[test]
fn in_on_log_after_a_client_disconnect_what_is_known_is_readable() {
    let mut w = Wat::new();
    // `proxy_on_log` reads every property into a table.
    let body = property_table(&mut w, NEW_PROPERTIES);
    w.extra = format!("  (func (export \"proxy_on_log\") (param $ctx i32){body})\n");
    let log = |t: &mut T| -> HashMap<String, Result<Vec<u8>, u32>> {
        t.vm.call_stream(t.ctx, StreamCall::Log, &mut t.stream, 0, &t.sink, None)
            .expect("on_log");
        let mut out = HashMap::new();
        for (i, p) in NEW_PROPERTIES.iter().enumerate() {
            let i = u32::try_from(i).unwrap();
            let v = match t.u32_at(0x200 + 4 * i) {
                OK => Ok(t.returned_at(0x280 + 8 * i, 0x284 + 8 * i)),
                s => Err(s),
            };
            out.insert(p.join("."), v);
        }
        out
    };
    let int = |v: u64| -> Result<Vec<u8>, u32> { Ok(v.to_le_bytes().to_vec()) };

    // The client sent its head and 3 body bytes, then left: no response.
    let mut t = start(&w, settings("hc-props-log"));
    add_header(&mut t.s().request_headers, "user-agent", "ua");
    let info = &mut t.s().info;
    info.start = Some(Instant::now());
    info.add_request_body(3);
    info.add_response_flag(RequestInfo::FLAG_DOWNSTREAM_CONNECTION_TERMINATION);
    info.set_code_details("downstream_remote_disconnect");
    info.complete();
    let got = log(&mut t);
    let duration = t.s().info.duration.unwrap().as_nanos() as u64;
    let head = VISIBLE_BYTES + ("user-agent".len() + 2) as u64;
    for (name, want) in [
        ("request.referer", Err(NOT_FOUND)),
        ("request.useragent", Ok(b"ua".to_vec())),
        ("request.duration", int(duration)),
        ("request.size", int(3)),
        ("request.total_size", int(3 + head)),
        (
            "response.code_details",
            Ok(b"downstream_remote_disconnect".to_vec()),
        ),
        ("response.flags", int(0x4000)),
        ("response.grpc_status", Err(NOT_FOUND)),
        ("response.trailers", Err(NOT_FOUND)),
        ("response.size", Err(NOT_FOUND)),
        ("response.total_size", Err(NOT_FOUND)),
        ("connection.requested_server_name", Err(NOT_FOUND)),
        ("connection.tls_version", Err(NOT_FOUND)),
        ("connection.mtls", Ok(vec![0])),
        ("upstream.port", Err(NOT_FOUND)),
        ("upstream.tls_version", Err(NOT_FOUND)),
        ("node.user_agent_name", Ok(b"sluice".to_vec())),
        ("listener_direction", int(1)),
    ] {
        assert_eq!(got[name], want, "{name}");
    }
    assert_eq!(got.len(), NEW_PROPERTIES.len());
    t.assert_healthy();

    // A complete exchange over TLS with a TLS upstream: every fact is there in on_log.
    let mut t = start(&w, settings("hc-props-log-full"));
    let s = t.s();
    add_header(&mut s.request_headers, "referer", "r");
    s.response_headers = header_list(&[(":status", "200"), ("grpc-status", "0")]);
    s.response_trailers = header_list(&[("x-t", "1")]);
    let info = &mut s.info;
    info.start = Some(Instant::now());
    info.tls = true;
    info.requested_server_name = Some("sni.test".into());
    info.tls_version = Some("TLSv1.3");
    info.upstream_address = Some("127.0.0.1:8443".into());
    info.set_upstream_tls_version("TLSv1_3");
    info.add_request_body(10);
    info.response_code = Some(200);
    info.set_code_details("via_upstream");
    info.add_response_body(20);
    info.complete();
    let got = log(&mut t);
    let duration = t.s().info.duration.unwrap().as_nanos() as u64;
    let head = VISIBLE_BYTES + ("referer".len() + 1) as u64;
    let response_head = (":status".len() + 3 + "grpc-status".len() + 1) as u64;
    for (name, want) in [
        ("request.referer", Ok(b"r".to_vec())),
        ("request.useragent", Err(NOT_FOUND)),
        ("request.duration", int(duration)),
        ("request.size", int(10)),
        ("request.total_size", int(10 + head)),
        ("response.code_details", Ok(b"via_upstream".to_vec())),
        ("response.flags", int(0)),
        ("response.grpc_status", int(0)),
        ("response.trailers", Ok(encode(&[("x-t", "1")]))),
        ("response.size", int(20)),
        ("response.total_size", int(20 + response_head + 4)),
        ("connection.requested_server_name", Ok(b"sni.test".to_vec())),
        ("connection.tls_version", Ok(b"TLSv1.3".to_vec())),
        ("upstream.port", int(8443)),
        ("upstream.tls_version", Ok(b"TLSv1.3".to_vec())),
    ] {
        assert_eq!(got[name], want, "{name}");
    }
    t.assert_healthy();
}

#[test]
fn new_properties_answer_ok_or_not_found_and_keep_hidden_things_hidden() {
    let mut w = Wat::new();
    let cases = property_cases(&mut w, NEW_PROPERTIES);
    let [ua, referer, grpc, trailers, req_total, resp_total, headers, resp_headers, address, port] =
        property_cases(
            &mut w,
            &[
                &["request", "useragent"],
                &["request", "referer"],
                &["response", "grpc_status"],
                &["response", "trailers"],
                &["request", "total_size"],
                &["response", "total_size"],
                &["request", "headers"],
                &["response", "headers"],
                &["source", "address"],
                &["source", "port"],
            ],
        )[..]
    else {
        unreachable!()
    };
    let fill = |t: &mut T| {
        let s = t.s();
        add_header(&mut s.request_headers, "user-agent", "ua");
        add_header(&mut s.request_headers, "referer", "r");
        s.response_headers = header_list(&[
            (":status", "200"),
            ("set-cookie", "sid=1"),
            ("grpc-status", "5"),
        ]);
        s.response_trailers = header_list(&[("grpc-status", "7"), ("set-cookie", "sid=2")]);
        s.info.response_code = Some(200);
    };

    // A bare request, and no request at all: never BAD_ARGUMENT.
    let mut t = start(&w, settings("hc-props-status"));
    for (p, &case) in NEW_PROPERTIES.iter().zip(&cases) {
        let status = t.case(case);
        assert!(status == OK || status == NOT_FOUND, "{p:?}: {status}");
        let outside = t.vm.call_stream(
            t.ctx,
            StreamCall::RequestHeaders(case, false),
            &mut None,
            0,
            &t.sink,
            None,
        );
        let outside = outside.unwrap();
        let process_wide = p[0] == "node" || p[0] == "listener_direction";
        assert_eq!(
            outside,
            if process_wide { OK } else { NOT_FOUND },
            "{p:?} outside a request"
        );
    }

    // The default view: credentials in maps stay hidden, and their bytes do not count.
    fill(&mut t);
    assert_eq!(t.prop(trailers), Ok(encode(&[("grpc-status", "7")])));
    assert_eq!(
        decode(&t.prop(resp_headers).unwrap()),
        owned(&[("grpc-status", "5")])
    );
    let req_head = VISIBLE_BYTES + ("user-agent".len() + 2 + "referer".len() + 1) as u64;
    assert_eq!(t.prop(req_total), Ok(req_head.to_le_bytes().to_vec()));
    let resp_head = (":status".len() + 3 + 2 * ("grpc-status".len() + 1)) as u64;
    assert_eq!(t.prop(resp_total), Ok(resp_head.to_le_bytes().to_vec()));
    assert_eq!(t.prop(address), Err(NOT_FOUND), "no client_address grant");
    assert_eq!(t.prop(port), Err(NOT_FOUND), "no client_address grant");
    let seen = decode(&t.prop(headers).unwrap());
    assert!(
        !seen
            .iter()
            .any(|(k, _)| k == "authorization" || k == "x-forwarded-for"),
        "{seen:?}"
    );
    t.assert_healthy();

    // Operator-hidden names hide the properties made of them.
    let mut s = settings("hc-props-hidden");
    s.sanitizer = Sanitizer::new(
        &[],
        &["user_agent".into(), "referer".into(), "grpc-status".into()],
    );
    let mut h = start(&w, s);
    fill(&mut h);
    assert_eq!(h.prop(ua), Err(NOT_FOUND));
    assert_eq!(h.prop(referer), Err(NOT_FOUND));
    assert_eq!(h.prop(grpc), Err(NOT_FOUND));
    assert_eq!(
        h.prop(trailers),
        Ok(encode(&[])),
        "an empty map, nothing hidden shown"
    );
    assert_eq!(h.prop(req_total), Ok(VISIBLE_BYTES.to_le_bytes().to_vec()));
    h.assert_healthy();

    // With the grants, the same properties show everything, in the client's order.
    let mut s = settings("hc-props-granted");
    s.sanitizer = Sanitizer::new(
        &[
            "client_address".into(),
            "authorization".into(),
            "set-cookie".into(),
        ],
        &[],
    );
    let mut g = start(&w, s);
    fill(&mut g);
    assert_eq!(
        g.prop(trailers),
        Ok(encode(&[("grpc-status", "7"), ("set-cookie", "sid=2")]))
    );
    let all: u64 = REQUEST
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum();
    assert_eq!(all, VISIBLE_BYTES + 26 + 23);
    assert_eq!(
        g.prop(req_total),
        Ok(
            (all + ("user-agent".len() + 2 + "referer".len() + 1) as u64)
                .to_le_bytes()
                .to_vec()
        )
    );
    assert_eq!(g.prop(address), Ok(b"10.1.2.3:4567".to_vec()));
    assert_eq!(g.prop(port), Ok(4567u64.to_le_bytes().to_vec()));
    g.assert_healthy();
}
