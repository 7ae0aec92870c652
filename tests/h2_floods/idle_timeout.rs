use super::*;

/// The floods that no count limits (PING, SETTINGS, WINDOW_UPDATE) and connections that stopped
/// reading are ended by the listener's `h2_idle_timeout_ms`: a connection with no request in
/// flight for that long is closed, whatever control frames it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_requests_are_closed_after_the_h2_idle_timeout() {
    let proxy = start_with(", h2_idle_timeout_ms: 1000").await;

    // A PING every 5 ms, ACKs read: closed after about 1 s instead of running to its 8 s.
    let mut a = Attacker::connect(proxy.addr, true).await;
    let mut i = 0u64;
    let f = a
        .flood(u64::MAX, Duration::from_secs(8), |b| {
            i += 1;
            push_frame(b, PING, 0, 0, &i.to_be_bytes());
            std::thread::sleep(Duration::from_millis(5));
            1
        })
        .await;
    eprintln!("paced PING flood with a 1 s idle timeout: {f:?}");
    assert!(matches!(f.end, End::Ended(_)), "{f:?}");
    assert!(f.took < Duration::from_secs(5), "closed after {:?}", f.took);

    // A PING flood that never reads the ACKs: the server closes it at the idle timeout,
    // while it is still being written (a failed write) or after it stalled (reading it then
    // drains the queued ACKs and reaches the end).
    let mut b = Attacker::connect(proxy.addr, false).await;
    let f = b
        .flood(40 * FLOOD_FRAMES, Duration::from_secs(10), |batch| {
            for j in 0..1000u64 {
                push_frame(batch, PING, 0, 0, &j.to_be_bytes());
            }
            1000
        })
        .await;
    eprintln!("unread PING flood with a 1 s idle timeout: {f:?}");
    match f.end {
        End::Ended(_) => assert!(f.took < Duration::from_secs(5), "{f:?}"),
        End::Stalled => {
            let mut r = b._unread.take().expect("the unread half");
            let mut buf = vec![0u8; 1 << 16];
            let eof = tokio::time::timeout(Duration::from_secs(10), async {
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            assert!(eof.is_ok(), "the stalled connection was not closed");
        }
        End::Bounds => panic!("the unread flood ran to its bounds: {f:?}"),
    }

    // A connection with a request in flight is not idle: a slow request outlives the timeout.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://t/slow?delay_ms=1500")
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(req, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    served_after(&proxy).await;
}
