use super::*;

/// The control-frame floods (SETTINGS, PING) are not limited by count in h2 0.4.20: each
/// frame is answered with one ACK and the connection stays open. What bounds them: h2 keeps at
/// most one ACK pending and writes it before it reads the next frame, so an attacker that
/// reads gets one small frame back per frame it sends (no amplification, no buffering), and
/// an attacker that does not read is stopped by TCP: the server stops reading once its ACKs
/// fill the socket buffers (after some 10 MB on loopback here). What ends such connections is
/// the listener's `h2_idle_timeout_ms` (60 s by default, longer than these floods; see
/// `connections_without_requests_are_closed_after_the_h2_idle_timeout`).
async fn control_frame_flood(name: &str, batch: &[u8], per_batch: u64, acks: fn(&Seen) -> u64) {
    let proxy = start().await;

    // An attacker that reads every ACK.
    let mut a = Attacker::connect(proxy.addr, true).await;
    let acks_before = acks(&a.seen);
    let (f, cost) = under_attack(&proxy, async {
        let started = Instant::now();
        let f = a
            .flood(FLOOD_FRAMES, FLOOD_TIME, |b| {
                b.extend_from_slice(batch);
                per_batch
            })
            .await;
        // All the ACKs arrive (the server keeps up).
        let seen = a.seen.clone();
        let all = wait_for(Duration::from_secs(10), || {
            acks(&seen) - acks_before >= f.frames
        })
        .await;
        (f, all, started.elapsed())
    })
    .await;
    let (f, all_acked, processed) = f;
    let what = format!("{name} flood, reading the ACKs");
    report(&what, &f);
    eprintln!(
        "{what}: {} ACKs for {} frames, the last after {processed:?} ({:.0} frames/s); \
         GOAWAY {:?}, closed {:?}",
        acks(&a.seen) - acks_before,
        f.frames,
        f.frames as f64 / processed.as_secs_f64(),
        a.seen.goaway(),
        a.seen.closed()
    );
    cost.check(&what);
    assert_eq!(f.end, End::Bounds, "{what}");
    assert!(f.frames >= 1000, "{what}: only {} frames sent", f.frames);
    assert!(all_acked, "{what}: frames were not ACKed");
    assert_eq!(acks(&a.seen) - acks_before, f.frames, "{what}: ACKs");
    a.expect_alive(&what).await;
    drop(a);

    // An attacker that never reads: the server stops reading when its ACKs can't be written,
    // so the attacker's writes stall long before the count or time bound (4 000 000 frames,
    // 10 s); the server's memory stays flat.
    let mut b = Attacker::connect(proxy.addr, false).await;
    let unread_frames = 40 * FLOOD_FRAMES;
    let (f, cost) = under_attack(
        &proxy,
        b.flood(unread_frames, Duration::from_secs(10), |b| {
            b.extend_from_slice(batch);
            per_batch
        }),
    )
    .await;
    let what = format!("{name} flood, never reading");
    report(&what, &f);
    cost.check(&what);
    assert_eq!(
        f.end,
        End::Stalled,
        "{what}: the server read {} bytes without its ACKs being read",
        f.bytes
    );
    drop(b);

    served_after(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_is_acked_one_for_one_and_stalls_when_acks_are_not_read() {
    // Each SETTINGS frame changes the initial stream window and the HPACK table size, so the
    // server has something to apply every time.
    let mut batch = Vec::new();
    for i in 0..100u32 {
        let mut p = Vec::new();
        push_setting(
            &mut p,
            SETTINGS_INITIAL_WINDOW_SIZE,
            65_535 + (i % 2) * 1000,
        );
        push_setting(&mut p, SETTINGS_HEADER_TABLE_SIZE, 4096 - (i % 2) * 1024);
        push_frame(&mut batch, SETTINGS, 0, 0, &p);
    }
    control_frame_flood("SETTINGS", &batch, 100, |s| {
        s.settings_acks.load(Ordering::Relaxed)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_acked_one_for_one_and_stalls_when_acks_are_not_read() {
    let mut batch = Vec::new();
    for i in 0..1000u64 {
        push_frame(&mut batch, PING, 0, 0, &i.to_be_bytes());
    }
    control_frame_flood("PING", &batch, 1000, |s| {
        s.ping_acks.load(Ordering::Relaxed)
    })
    .await;
}
