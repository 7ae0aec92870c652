use super::*;

/// h2 0.4.20 counts empty DATA frames without END_STREAM over the connection's life: 100 are
/// allowed, the 101st ends the connection with GOAWAY ENHANCE_YOUR_CALM
/// ("too_many_data_frames"). The request they belonged to does not stay in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_data_frame_flood_ends_the_connection_after_100_frames() {
    let proxy = start().await;
    let what = "empty DATA flood";
    let mut a = Attacker::connect(proxy.addr, true).await;
    let (f, cost) = under_attack(&proxy, async {
        // A POST whose body never comes: it is proxied (in flight) meanwhile.
        a.send(&frame(HEADERS, END_HEADERS, 1, &request_head(true, "/d")))
            .await;
        let empty = frame(DATA, 0, 1, &[]);
        a.send(&empty.repeat(100)).await;
        a.expect_alive("100 empty DATA frames").await;
        proxy.wait_metric("sluice_requests_in_flight", 1.0).await;
        a.last_straw(what, &empty, &empty.repeat(1000), 1000).await
    })
    .await;
    let (g, f) = f;
    eprintln!("{what}: 100 empty DATA frames were taken, the 101st ended it with {g}");
    report(&format!("{what} after the GOAWAY"), &f);
    cost.check(what);
    assert_calmed(what, &g, &f, "too_many_data_frames", 1);
    served_after(&proxy).await;
}

/// A WINDOW_UPDATE flood (increment 1 on the connection) is not limited by count: each frame
/// only adds to the send window, nothing is answered or kept, and the connection stays open
/// until the window passes 2^31 - 1, which ends it with GOAWAY FLOW_CONTROL_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_update_flood_costs_nothing_and_an_overflow_ends_the_connection() {
    let proxy = start().await;
    let what = "WINDOW_UPDATE flood";
    let mut a = Attacker::connect(proxy.addr, true).await;
    let many = frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()).repeat(1000);
    let (f, cost) = under_attack(&proxy, async {
        let started = Instant::now();
        let f = a
            .flood(FLOOD_FRAMES, FLOOD_TIME, |b| {
                b.extend_from_slice(&many);
                1000
            })
            .await;
        // The PING after the flood is answered once all of it has been processed.
        a.expect_alive(what).await;
        (f, started.elapsed())
    })
    .await;
    let (f, processed) = f;
    report(what, &f);
    eprintln!("{what}: processed (PING answered) after {processed:?}");
    cost.check(what);
    assert_eq!(f.end, End::Bounds, "{what}: {f:?}");
    let answered: u64 = (0..10).map(|k| a.seen.count(k)).sum();
    eprintln!("{what}: {answered} frames came back in all (SETTINGS and PING ACKs included)");

    // The window overflows: 65 535 + the flood's increments + 2^31 - 1 > 2^31 - 1.
    a.send(&frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()))
        .await;
    let g = a.expect_goaway_and_close("window overflow").await;
    eprintln!("{what}: the overflowing WINDOW_UPDATE ended it with {g}");
    assert_eq!(g.code, FLOW_CONTROL_ERROR, "{g:?}");
    served_after(&proxy).await;
}
