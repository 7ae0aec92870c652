use super::*;

/// h2 0.4.20 allows `max(5, 1.25 × max_header_list_size / max_frame_size)` CONTINUATION
/// frames without END_HEADERS after a HEADERS frame: with pingora's 64 KiB header list limit
/// and 16 KiB frames that is 5; the 6th ends the connection with GOAWAY ENHANCE_YOUR_CALM
/// ("too_many_continuations"). A block whose decoded size passes 4 × 64 KiB ends it at once
/// ("header_list_way_too_large"). A complete block over 64 KiB gets a 431 on its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_floods_end_the_connection_or_are_refused_per_stream() {
    let proxy = start().await;

    // 1. Tiny (empty) CONTINUATION frames after a HEADERS frame without END_HEADERS.
    let what = "empty CONTINUATION flood";
    let mut a = Attacker::connect(proxy.addr, true).await;
    let (f, cost) = under_attack(&proxy, async {
        a.send(&frame(HEADERS, END_STREAM, 1, &request_head(false, "/c")))
            .await;
        let cont = frame(CONTINUATION, 0, 1, &[]);
        for _ in 0..5 {
            a.send(&cont).await;
        }
        a.expect_quiet("5 empty CONTINUATION frames", Duration::from_millis(300))
            .await;
        a.last_straw(what, &cont, &cont.repeat(1000), 1000).await
    })
    .await;
    let (g, f) = f;
    eprintln!("{what}: 5 CONTINUATION frames were taken, the 6th ended it with {g}");
    report(&format!("{what} after the GOAWAY"), &f);
    cost.check(what);
    assert_calmed(what, &g, &f, "too_many_continuations", 0);

    // 2. A header block that keeps growing: one header whose value is declared 1 MiB long,
    //    sent in full-size CONTINUATION frames; h2 buffers the undecodable rest.
    let what = "growing CONTINUATION flood";
    let mut a = Attacker::connect(proxy.addr, true).await;
    let (f, cost) = under_attack(&proxy, async {
        let mut block = request_head(false, "/c");
        block.push(0x00);
        hpack_str(&mut block, b"x-grow");
        hpack_str_len(&mut block, 1 << 20);
        block.resize(MAX_FRAME, b'a');
        a.send(&frame(HEADERS, END_STREAM, 1, &block)).await;
        let cont = frame(CONTINUATION, 0, 1, &[b'a'; MAX_FRAME]);
        for _ in 0..5 {
            a.send(&cont).await;
        }
        a.expect_quiet("5 full CONTINUATION frames", Duration::from_millis(300))
            .await;
        a.last_straw(what, &cont, &cont, 1).await
    })
    .await;
    let (g, f) = f;
    eprintln!(
        "{what}: 5 CONTINUATION frames were taken (HEADERS + 5 CONTINUATION frames: at most \
         {} KiB of header block buffered), the 6th ended it with {g}",
        6 * MAX_FRAME / 1024
    );
    report(&format!("{what} after the GOAWAY"), &f);
    cost.check(what);
    assert_calmed(what, &g, &f, "too_many_continuations", 0);

    // 3. HPACK amplification: a 4000-byte header put in the dynamic table by the HEADERS
    //    frame, then referenced with one byte each, 16384 times per CONTINUATION frame (64 MiB
    //    of decoded headers per frame).
    let what = "HPACK-amplified CONTINUATION";
    let mut a = Attacker::connect(proxy.addr, true).await;
    let (f, cost) = under_attack(&proxy, async {
        let mut block = request_head(false, "/c");
        block.push(0x40); // literal with incremental indexing, new name: dynamic index 62
        hpack_str(&mut block, b"x-amp");
        hpack_str(&mut block, &[b'a'; 4000]);
        a.send(&frame(HEADERS, END_STREAM, 1, &block)).await;
        a.expect_quiet("the HEADERS frame", Duration::from_millis(300))
            .await;
        let cont = frame(CONTINUATION, 0, 1, &[0x80 | 62; MAX_FRAME]);
        a.last_straw(what, &cont, &cont, 1).await
    })
    .await;
    let (g, f) = f;
    eprintln!("{what}: the 1st CONTINUATION ended it with {g}");
    report(&format!("{what} after the GOAWAY"), &f);
    cost.check(what);
    assert_calmed(what, &g, &f, "header_list_way_too_large", 0);

    // 4. Complete header blocks over the 64 KiB limit (HEADERS + 5 full CONTINUATION frames,
    //    about 93 KiB decoded), one per new stream, as fast as possible.
    let what = "over-limit header blocks on new streams";
    let mut a = Attacker::connect(proxy.addr, true).await;
    let mut first = request_head(false, "/c");
    fill_with_fields(&mut first, MAX_FRAME);
    let mut rest = Vec::new();
    fill_with_fields(&mut rest, MAX_FRAME);
    let mut stream = 1u32;
    let (f, cost) = under_attack(
        &proxy,
        a.flood(FLOOD_FRAMES, FLOOD_TIME, |b| {
            push_frame(b, HEADERS, END_STREAM, stream, &first);
            for _ in 0..4 {
                push_frame(b, CONTINUATION, 0, stream, &rest);
            }
            push_frame(b, CONTINUATION, END_HEADERS, stream, &rest);
            stream += 2;
            6
        }),
    )
    .await;
    let streams = u64::from(stream / 2);
    let seen = a.seen.clone();
    let refused = move |s: &Seen| s.resets.lock().unwrap().get(&REFUSED_STREAM).copied();
    wait_for(Duration::from_secs(10), || {
        seen.count(HEADERS) + refused(&seen).unwrap_or(0) >= streams || seen.ended().is_some()
    })
    .await;
    report(what, &f);
    eprintln!(
        "{what}: {streams} streams, {} responses and RST_STREAM by code {:?} came back; \
         GOAWAY {:?}, closed {:?}; first response block {:02x?}",
        a.seen.count(HEADERS),
        a.seen.resets.lock().unwrap(),
        a.seen.goaway(),
        a.seen.closed(),
        a.seen.first_headers.lock().unwrap()
    );
    cost.check(what);
    assert_eq!(f.end, End::Bounds, "{what}: {f:?}");
    // Every stream is answered 431 (`:status 431` as h2 encodes it: literal with indexing
    // of static name 8, Huffman "431"), or, when 100 streams wait for their 431 to be
    // written, refused with RST_STREAM REFUSED_STREAM.
    let first = a
        .seen
        .first_headers
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_default();
    assert_eq!(first, [0x48, 0x83, 0x69, 0x90, 0xff], "{what}: not a 431");
    let resets = a.seen.resets.lock().unwrap().clone();
    let refused = resets.get(&REFUSED_STREAM).copied().unwrap_or(0);
    assert_eq!(
        resets.keys().copied().collect::<Vec<_>>(),
        if refused > 0 {
            vec![REFUSED_STREAM]
        } else {
            vec![]
        },
        "{what}: RST_STREAM codes"
    );
    assert_eq!(
        a.seen.count(HEADERS) + refused,
        streams,
        "{what}: one 431 or REFUSED_STREAM per stream"
    );

    a.expect_alive(what).await;
    drop(a);

    served_after(&proxy).await;
}
