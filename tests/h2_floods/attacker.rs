// ---------------------------------------------------------------------------------------------
// The attacking connection.

use super::*;

#[derive(Debug, Clone)]
pub(super) struct GoAway {
    pub(super) last_stream: u32,
    pub(super) code: u32,
    pub(super) debug: String,
}

impl std::fmt::Display for GoAway {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "GOAWAY code {:#x}, last stream {}, debug data {:?}",
            self.code, self.last_stream, self.debug
        )
    }
}

/// What the server sent on the attacking connection.
#[derive(Default)]
pub(super) struct Seen {
    /// Frames received, by type.
    pub(super) frames: [AtomicU64; 10],
    pub(super) settings_acks: AtomicU64,
    pub(super) ping_acks: AtomicU64,
    pub(super) goaway: Mutex<Option<GoAway>>,
    /// The header block of the first HEADERS frame.
    pub(super) first_headers: Mutex<Option<Vec<u8>>>,
    /// RST_STREAM frames received, by error code.
    pub(super) resets: Mutex<BTreeMap<u32, u64>>,
    /// How the connection ended, once it did.
    pub(super) closed: Mutex<Option<String>>,
}

impl Seen {
    fn record(&self, kind: u8, flags: u8, payload: &[u8]) {
        if let Some(n) = self.frames.get(kind as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        match kind {
            SETTINGS if flags & ACK != 0 => {
                self.settings_acks.fetch_add(1, Ordering::Relaxed);
            }
            PING if flags & ACK != 0 => {
                self.ping_acks.fetch_add(1, Ordering::Relaxed);
            }
            HEADERS => {
                self.first_headers
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| payload.to_vec());
            }
            RST_STREAM if payload.len() == 4 => {
                let code = u32::from_be_bytes(payload.try_into().unwrap());
                *self.resets.lock().unwrap().entry(code).or_default() += 1;
            }
            GOAWAY if payload.len() >= 8 => {
                let word = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().unwrap());
                let mut g = self.goaway.lock().unwrap();
                if g.is_none() {
                    *g = Some(GoAway {
                        last_stream: word(0) & 0x7fff_ffff,
                        code: word(4),
                        debug: String::from_utf8_lossy(&payload[8..]).into_owned(),
                    });
                }
            }
            _ => {}
        }
    }

    pub(super) fn count(&self, kind: u8) -> u64 {
        self.frames[kind as usize].load(Ordering::Relaxed)
    }

    pub(super) fn goaway(&self) -> Option<GoAway> {
        self.goaway.lock().unwrap().clone()
    }

    pub(super) fn closed(&self) -> Option<String> {
        self.closed.lock().unwrap().clone()
    }

    /// Why the connection is over, if it is.
    pub(super) fn ended(&self) -> Option<String> {
        match (self.goaway(), self.closed()) {
            (Some(g), _) => Some(g.to_string()),
            (None, Some(c)) => Some(format!("closed: {c}")),
            (None, None) => None,
        }
    }
}

/// Reads frames from the server until the connection ends, recording them in `seen`.
async fn read_frames(mut r: OwnedReadHalf, seen: Arc<Seen>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) => {
                *seen.closed.lock().unwrap() = Some("end of stream".into());
                return;
            }
            Ok(n) => n,
            Err(e) => {
                *seen.closed.lock().unwrap() = Some(e.to_string());
                return;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while buf.len() - at >= 9 {
            let h = &buf[at..at + 9];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            if buf.len() - at < 9 + len {
                break;
            }
            seen.record(h[3], h[4], &buf[at + 9..at + 9 + len]);
            at += 9 + len;
        }
        buf.drain(..at);
    }
}

/// How a flood stopped.
#[derive(Debug, PartialEq)]
pub(super) enum End {
    /// It reached its frame count or its time.
    Bounds,
    /// The server ended the connection (GOAWAY, close, or a failed write).
    Ended(String),
    /// The server stopped reading: a write was blocked for `STALL`.
    Stalled,
}

#[derive(Debug)]
pub(super) struct Flood {
    pub(super) frames: u64,
    pub(super) bytes: u64,
    pub(super) took: Duration,
    pub(super) end: End,
}

impl Flood {
    pub(super) fn rate(&self) -> f64 {
        self.frames as f64 / self.took.as_secs_f64().max(1e-3)
    }
}

pub(super) struct Attacker {
    w: OwnedWriteHalf,
    pub(super) seen: Arc<Seen>,
    /// The read half when the attacker never reads (the server's frames pile up).
    pub(super) _unread: Option<OwnedReadHalf>,
}

impl Attacker {
    /// Opens an h2c connection: the client preface, an empty SETTINGS frame and the ACK of the
    /// server's SETTINGS. With `read`, a task reads and records everything the server sends
    /// (and this waits for the server's SETTINGS); without, nothing is ever read.
    pub(super) async fn connect(addr: std::net::SocketAddr, read: bool) -> Attacker {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (r, mut w) = s.into_split();
        let mut hello = PREFACE.to_vec();
        push_frame(&mut hello, SETTINGS, 0, 0, &[]);
        push_frame(&mut hello, SETTINGS, ACK, 0, &[]);
        w.write_all(&hello).await.unwrap();
        let seen = Arc::new(Seen::default());
        let mut a = Attacker {
            w,
            seen: seen.clone(),
            _unread: None,
        };
        if read {
            tokio::spawn(read_frames(r, seen));
            // The handshake is over once the server sent its SETTINGS and acknowledged ours:
            // a flood that counts ACKs starts after that one, never racing it.
            let s = a.seen.clone();
            assert!(
                wait_for(Duration::from_secs(5), || {
                    let acks = s.settings_acks.load(Ordering::Relaxed);
                    s.count(SETTINGS) > acks && acks >= 1
                })
                .await,
                "no SETTINGS or no ACK of ours from the server"
            );
        } else {
            a._unread = Some(r);
        }
        a
    }

    pub(super) async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STALL, self.w.write_all(bytes))
            .await
            .expect("write stalled")
            .expect("write failed");
    }

    /// Writes batches made by `next` (which fills the buffer and returns how many frames it
    /// holds) until the server ends the connection, stops reading, or `max_frames` or
    /// `max_time` are reached.
    pub(super) async fn flood(
        &mut self,
        max_frames: u64,
        max_time: Duration,
        mut next: impl FnMut(&mut Vec<u8>) -> u64,
    ) -> Flood {
        let started = Instant::now();
        let (mut frames, mut bytes) = (0u64, 0u64);
        let mut batch = Vec::new();
        let end = loop {
            if let Some(why) = self.seen.ended() {
                break End::Ended(why);
            }
            if frames >= max_frames || started.elapsed() >= max_time {
                break End::Bounds;
            }
            batch.clear();
            let n = next(&mut batch);
            match tokio::time::timeout(STALL, self.w.write_all(&batch)).await {
                Ok(Ok(())) => {
                    frames += n;
                    bytes += batch.len() as u64;
                }
                Ok(Err(e)) => break End::Ended(format!("write failed: {e}")),
                Err(_) => break End::Stalled,
            }
        };
        Flood {
            frames,
            bytes,
            took: started.elapsed(),
            end,
        }
    }

    /// Sends a PING and waits for its ACK: the server has processed everything sent before
    /// and the connection is alive.
    async fn ping_pong(&mut self) -> bool {
        let before = self.seen.ping_acks.load(Ordering::Relaxed);
        self.send(&frame(PING, 0, 0, b"pingpong")).await;
        let seen = self.seen.clone();
        wait_for(Duration::from_secs(5), || {
            seen.ping_acks.load(Ordering::Relaxed) > before
        })
        .await
    }

    /// The GOAWAY the server sends within 5 s, followed by its close.
    pub(super) async fn expect_goaway_and_close(&self, what: &str) -> GoAway {
        let seen = self.seen.clone();
        wait_for(Duration::from_secs(5), || {
            seen.goaway().is_some() && seen.closed().is_some()
        })
        .await;
        let g = self
            .seen
            .goaway()
            .unwrap_or_else(|| panic!("{what}: no GOAWAY (closed: {:?})", self.seen.closed()));
        assert!(
            self.seen.closed().is_some(),
            "{what}: the server sent {g:?} but kept the connection open"
        );
        g
    }

    /// Asserts that the connection is still open, no GOAWAY came, and a PING is answered.
    pub(super) async fn expect_alive(&mut self, what: &str) {
        assert_eq!(self.seen.ended(), None, "{what}: the connection was ended");
        assert!(self.ping_pong().await, "{what}: a PING got no ACK");
    }

    /// Sends `last`, the frame the server is expected to end the connection for, waits for
    /// the GOAWAY and the close, then floods `batch` (`per_batch` frames) on: the flood must
    /// end at once.
    pub(super) async fn last_straw(
        &mut self,
        what: &str,
        last: &[u8],
        batch: &[u8],
        per_batch: u64,
    ) -> (GoAway, Flood) {
        self.send(last).await;
        let g = self.expect_goaway_and_close(what).await;
        let f = self
            .flood(FLOOD_FRAMES, FLOOD_TIME, |b| {
                b.extend_from_slice(batch);
                per_batch
            })
            .await;
        (g, f)
    }

    /// Asserts that nothing comes back for `wait` (for states where a PING would be a
    /// protocol error, e.g. in the middle of a header block).
    pub(super) async fn expect_quiet(&self, what: &str, wait: Duration) {
        tokio::time::sleep(wait).await;
        assert_eq!(self.seen.ended(), None, "{what}: the connection was ended");
    }
}

pub(super) async fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
