// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

use super::*;

/// How the client frames a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Via {
    /// HTTP/1.1 with `content-length`.
    Length,
    /// HTTP/1.1, chunked.
    Chunked,
    /// HTTP/2 DATA frames (no `content-length`).
    H2,
}

impl Via {
    pub(super) fn name(self) -> &'static str {
        match self {
            Via::Length => "cl",
            Via::Chunked => "chunked",
            Via::H2 => "h2",
        }
    }
}

/// An HTTP/1.1 request head (with `host` and `connection: close`) for a body of `parts`.
pub(super) fn h1_head(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    via: Via,
    parts: &[&str],
) -> String {
    let mut h = format!("{method} {path} HTTP/1.1\r\nhost: conf.test\r\nconnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if !parts.is_empty() {
        match via {
            Via::Chunked => h.push_str("transfer-encoding: chunked\r\n"),
            _ => {
                let n: usize = parts.iter().map(|p| p.len()).sum();
                h.push_str(&format!("content-length: {n}\r\n"));
            }
        }
    }
    h.push_str("\r\n");
    h
}

/// The writes of a body of `parts` framed as `via` (the last chunk with the last part).
pub(super) fn h1_body(via: Via, parts: &[&str]) -> Vec<Vec<u8>> {
    let mut w: Vec<Vec<u8>> = parts
        .iter()
        .map(|p| match via {
            Via::Chunked => chunk(p.as_bytes()),
            _ => p.as_bytes().to_vec(),
        })
        .collect();
    if via == Via::Chunked {
        if let Some(last) = w.last_mut() {
            last.extend_from_slice(b"0\r\n\r\n");
        }
    }
    w
}

/// An HTTP/1.1 client connection.
pub(super) struct H1 {
    pub(super) s: TcpStream,
}

impl H1 {
    pub(super) async fn connect(addr: SocketAddr) -> H1 {
        H1 {
            s: TcpStream::connect(addr).await.unwrap(),
        }
    }

    /// Writes `bytes`; false if the proxy closed the connection already.
    pub(super) async fn send(&mut self, bytes: &[u8]) -> bool {
        self.s.write_all(bytes).await.is_ok()
    }

    /// Reads until the proxy closes the connection; fails after [`WAIT`].
    async fn read_to_end(mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let read = tokio::time::timeout(WAIT, self.s.read_to_end(&mut out)).await;
        match read {
            Ok(_) => out,
            Err(_) => panic!(
                "the proxy did not close the connection within {WAIT:?}; got so far:\n{}",
                String::from_utf8_lossy(&out)
            ),
        }
    }

    /// Reads until a response head arrived (and returns it with what followed).
    pub(super) async fn read_head(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + WAIT;
        while find(&out, b"\r\n\r\n").is_none() {
            match tokio::time::timeout_at(deadline, self.s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => panic!(
                    "closed before a response head: {}",
                    String::from_utf8_lossy(&out)
                ),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => panic!("no response head within {WAIT:?}"),
            }
        }
        out
    }
}

/// A body sent while a plugin buffers it: before each write after the first, the client
/// waits until plugin `a` reported (in `on_request_body`) every byte sent so far, so each
/// write is a read of its own and the plugin sees it; before the last write, the upstream
/// must have no body byte yet.
#[derive(Clone, Copy)]
pub(super) struct Watch<'a> {
    pub(super) proxy: &'a Sluice,
    pub(super) up: &'a RawServer,
    /// The upstream's path of the request.
    pub(super) path: &'a str,
    /// The request's `x-conf-id`.
    pub(super) req: &'a str,
    /// The body bytes of each write.
    pub(super) sizes: &'a [usize],
}

impl Watch<'_> {
    /// Before write `i`: paces the writes; false when pacing stops (the request went on
    /// without its body: the proxy answered, the context ended, or the upstream has a
    /// complete request; the assertions after the exchange tell what went wrong).
    async fn before_write(&self, i: usize, pacing: bool) -> bool {
        let mut pacing = pacing && i > 0;
        if pacing {
            let so_far: usize = self.sizes[..i].iter().sum();
            let deadline = Instant::now() + WAIT;
            loop {
                let lines = match lines_of(self.proxy, "a", self.req) {
                    Ended::No(l) => l,
                    Ended::Yes(_) | Ended::VmFailed(..) => {
                        pacing = false;
                        break;
                    }
                };
                if lines
                    .iter()
                    .any(|l| l.what == "on_request_body" && l.num("len") as usize == so_far)
                {
                    break;
                }
                let went_on = lines.iter().any(|l| {
                    ["on_request_body", "on_response_headers"].contains(&l.what.as_str())
                        && l.fields.get("eos").is_some_and(|e| e == "true")
                }) || !self.up.requests(self.path).is_empty();
                if went_on || Instant::now() > deadline {
                    pacing = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if i + 1 == self.sizes.len() {
            self.up.assert_no_body_yet(self.path);
        }
        pacing || i == 0
    }
}

/// One HTTP/1.1 exchange: the head, then each body write after [`PAUSE`] (and, with a
/// [`Watch`], once the plugin saw the previous ones). Returns every byte the client got.
pub(super) async fn h1_exchange(
    addr: SocketAddr,
    head: &str,
    writes: &[Vec<u8>],
    watch: Option<Watch<'_>>,
) -> Vec<u8> {
    let mut c = H1::connect(addr).await;
    c.send(head.as_bytes()).await;
    let mut pacing = true;
    for (i, w) in writes.iter().enumerate() {
        tokio::time::sleep(PAUSE).await;
        if let Some(watch) = watch {
            pacing = watch.before_write(i, pacing).await;
        }
        if !c.send(w).await {
            break;
        }
    }
    c.read_to_end().await
}

/// An HTTP/2 response.
#[derive(Debug)]
pub(super) struct H2Response {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl H2Response {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/2 connection (prior knowledge, as the listener speaks h2c).
pub(super) async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One request on an HTTP/2 connection: headers, then each part as a DATA frame after
/// [`PAUSE`] (the last one ends the stream); `watch` as for [`h1_exchange`].
pub(super) async fn h2_exchange(
    send: &h2::client::SendRequest<Bytes>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    parts: &[&str],
    watch: Option<Watch<'_>>,
) -> Result<H2Response, H2Failure> {
    let mut status = None;
    let mut out = Vec::new();
    let exchange = async {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://conf.test{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut send = send.clone().ready().await?;
        let (response, mut stream) = send.send_request(req.body(()).unwrap(), parts.is_empty())?;
        let mut pacing = true;
        for (i, p) in parts.iter().enumerate() {
            tokio::time::sleep(PAUSE).await;
            let last = i + 1 == parts.len();
            if let Some(watch) = watch {
                pacing = watch.before_write(i, pacing).await;
            }
            if stream
                .send_data(Bytes::copy_from_slice(p.as_bytes()), last)
                .is_err()
            {
                // The stream ended already (the proxy answered or reset it): see how.
                break;
            }
        }
        let response = response.await?;
        status = Some(response.status().as_u16());
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = response.into_body();
        while let Some(data) = body.data().await {
            let data = data?;
            let _ = body.flow_control().release_capacity(data.len());
            out.extend_from_slice(&data);
        }
        Ok(headers)
    };
    let r: Result<Vec<(String, String)>, h2::Error> = tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("HTTP/2 {method} {path}: no answer within {WAIT:?}"));
    match r {
        Ok(headers) => Ok(H2Response {
            status: status.unwrap_or(0),
            headers,
            body: out,
        }),
        Err(error) => Err(H2Failure {
            error,
            status,
            body: out,
        }),
    }
}

/// An HTTP/2 exchange that failed: the error, and what came before it.
#[derive(Debug)]
pub(super) struct H2Failure {
    pub(super) error: h2::Error,
    /// The response's status, if its head came.
    pub(super) status: Option<u16>,
    /// The response body received before the error.
    pub(super) body: Vec<u8>,
}

impl std::fmt::Display for H2Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.status {
            None => write!(f, "{} (before any response head)", self.error),
            Some(s) => write!(
                f,
                "{} after response head {s} and body {:?}",
                self.error,
                String::from_utf8_lossy(&self.body)
            ),
        }
    }
}
