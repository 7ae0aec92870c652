// ---------------------------------------------------------------------------------------------
// Stream control.

use super::*;

#[test]
fn continue_and_close_stream() {
    let mut w = Wat::new();
    let resume_request = w.case(c("continue_stream", &[0]));
    let resume_response = w.case(c("continue_stream", &[1]));
    let resume_tcp = w.case(c("continue_stream", &[2]));
    let resume99 = w.case(c("continue_stream", &[99]));
    let close = w.case(c("close_stream", &[1]));
    let close99 = w.case(c("close_stream", &[99]));
    let status = w.case(c("get_status", &[R3, RP, RL]));
    let mut t = start(&w, settings("hc-control"));
    assert_eq!(t.case(resume_tcp), BAD_ARGUMENT);
    assert_eq!(t.case(resume99), BAD_ARGUMENT);
    assert_eq!(t.case(close99), BAD_ARGUMENT);
    assert!(!t.s().effects.resume_request && !t.s().effects.resume_response);
    assert!(!t.s().effects.close);
    assert_eq!(t.case(resume_request), OK);
    assert!(t.s().effects.resume_request && !t.s().effects.resume_response);
    assert_eq!(t.case(resume_response), OK);
    assert!(t.s().effects.resume_response);
    assert_eq!(t.case(close), OK);
    assert!(t.s().effects.close);
    assert_eq!(t.case(status), NOT_FOUND, "no callout response");
    let r = t.vm.call_stream(
        t.ctx,
        StreamCall::RequestHeaders(resume_request, false),
        &mut None,
        0,
        &t.sink,
        None,
    );
    assert_eq!(r.unwrap(), NOT_FOUND, "no request");
    t.assert_healthy();
}

#[test]
fn send_local_response() {
    let mut w = Wat::new();
    let (dp, dl) = w.str("denied-by-test");
    let (bp, bl) = w.str("go away");
    let headers = encode(&[("X-Why", "test"), ("x-two", "2")]);
    let (hp, hl) = w.bytes(&headers);
    let pseudo = encode(&[(":status", "200")]);
    let (pp, pl) = w.bytes(&pseudo);
    let bad = encode(&[("x-a", "1")]);
    let (xp, xl) = w.bytes(&bad[..bad.len() - 1]);
    let (big, bigl) = w.str("0123456789abcdefg");
    let send = |status: u32, body: (u32, u32), headers: (u32, u32)| {
        c(
            "local_response",
            &[status, dp, dl, body.0, body.1, headers.0, headers.1, 0],
        )
    };
    let status99 = w.case(send(99, (bp, bl), (hp, hl)));
    let status600 = w.case(send(600, (bp, bl), (hp, hl)));
    let with_pseudo = w.case(send(403, (bp, bl), (pp, pl)));
    let truncated = w.case(send(403, (bp, bl), (xp, xl)));
    let body_oob = w.case(send(403, (OOB, 0x20), (hp, hl)));
    let headers_huge = w.case(send(403, (bp, bl), (hp, HUGE)));
    let body_over_cap = w.case(send(403, (big, bigl), (hp, hl)));
    let details_oob = w.case(c(
        "local_response",
        &[403, 0xFFFF_FFFF, 2, bp, bl, hp, hl, 0],
    ));
    let ok = w.case(send(403, (bp, bl), (hp, hl)));
    let no_headers = w.case(send(200, (bp, 0), (hp, 0)));
    let mut s = settings("hc-local");
    s.limits.max_body_bytes = 16;
    let mut t = start(&w, s);
    for case in [status99, status600, with_pseudo, truncated, body_over_cap] {
        assert_eq!(t.case(case), BAD_ARGUMENT, "case {case}");
    }
    for case in [body_oob, headers_huge, details_oob] {
        assert_eq!(t.case(case), INVALID_MEMORY_ACCESS, "case {case}");
    }
    assert!(t.s().effects.local_response.is_none());
    assert_eq!(t.case(ok), OK);
    let r = t
        .s()
        .effects
        .local_response
        .clone()
        .expect("a local response");
    assert_eq!(r.status, 403);
    assert_eq!(
        lossy(&r.headers),
        owned(&[("x-why", "test"), ("x-two", "2")])
    );
    assert_eq!(&r.body[..], b"go away");
    assert_eq!(r.details, "denied-by-test");
    assert_eq!(t.case(no_headers), OK, "the last call wins");
    let r = t.s().effects.local_response.clone().unwrap();
    assert_eq!((r.status, r.headers.len(), r.body.len()), (200, 0, 0));
    t.assert_healthy();
}

/// The whole `details` range is checked against memory, though only 1 KiB of it is kept.
#[test]
fn send_local_response_checks_the_details_range() {
    let mut w = Wat::new();
    let (bp, bl) = w.str("body");
    let huge = w.case(c("local_response", &[403, DATA, HUGE, bp, bl, 0, 0, 0]));
    let past_end = w.case(c(
        "local_response",
        &[403, 2 * PAGE - 16, 0x20, bp, bl, 0, 0, 0],
    ));
    let mut t = start(&w, settings("hc-local-details"));
    assert_eq!(t.case(past_end), INVALID_MEMORY_ACCESS);
    assert_eq!(t.case(huge), INVALID_MEMORY_ACCESS);
    assert!(t.s().effects.local_response.is_none());
}
