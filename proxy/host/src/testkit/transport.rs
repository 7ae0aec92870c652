//! The test kit's callout transport: plain-text connections to the upstreams a test names
//! (`Options::upstreams` over HTTP/1.1, `Options::grpc_upstreams` over HTTP/2), one
//! connection per call. The proxy's own transport (pools, TLS, kept connections) is not
//! needed to test what a plugin does with a callout's answer.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::wasm::callout::{CalloutResponse, MAX_RESPONSE_BODY};
use crate::wasm::stream::HeaderList;
use crate::wasm::target::{CalloutTarget, H2Call, TargetProtocol};

/// Longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for the response head, and for each piece of its body.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// An upstream at one plain-text address.
pub struct PlainTarget {
    name: String,
    addr: SocketAddr,
    protocol: TargetProtocol,
}

impl PlainTarget {
    /// `name` at `addr`, speaking `protocol` (HTTP/1.1 or HTTP/2 without TLS).
    pub fn new(name: &str, addr: SocketAddr, protocol: TargetProtocol) -> Self {
        PlainTarget {
            name: name.to_string(),
            addr,
            protocol,
        }
    }

    async fn connect(&self) -> Result<TcpStream, String> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| format!("connect to {}: timed out", self.addr))?
            .map_err(|e| format!("connect to {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// The callout as an `http` request (`Host` from `:authority`, else the address).
    fn request(
        &self,
        headers: &HeaderList,
        body: &Bytes,
    ) -> Result<http::Request<Full<Bytes>>, String> {
        let bad = |e: &dyn std::fmt::Display| format!("bad callout request: {e}");
        let pseudo = |name: &[u8]| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let (Some(method), Some(path)) = (pseudo(b":method"), pseudo(b":path")) else {
            return Err(bad(&"no :method or :path"));
        };
        let host = match pseudo(b":authority") {
            Some(a) if !a.is_empty() => a.clone(),
            _ => self.addr.to_string().into_bytes(),
        };
        let mut req = http::Request::builder()
            .method(http::Method::from_bytes(method).map_err(|e| bad(&e))?)
            .uri(http::Uri::try_from(path.as_slice()).map_err(|e| bad(&e))?)
            .header(http::header::HOST, host);
        for (k, v) in headers.iter().filter(|(k, _)| k.first() != Some(&b':')) {
            req = req.header(k.as_slice(), v.as_slice());
        }
        let has_length = headers.iter().any(|(k, _)| k == b"content-length");
        if !body.is_empty() && !has_length {
            req = req.header(http::header::CONTENT_LENGTH, body.len());
        }
        req.body(Full::new(body.clone())).map_err(|e| bad(&e))
    }
}

fn list(status: http::StatusCode, map: &http::HeaderMap) -> HeaderList {
    let mut out = Vec::with_capacity(map.len() + 1);
    out.push((b":status".to_vec(), status.as_str().as_bytes().to_vec()));
    out.extend(
        map.iter()
            .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
    );
    out
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(READ_TIMEOUT, f)
        .await
        .map_err(|_| format!("{what}: no answer in {} s", READ_TIMEOUT.as_secs()))
}

#[async_trait::async_trait]
impl CalloutTarget for PlainTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn protocol(&self) -> TargetProtocol {
        self.protocol
    }

    async fn http_call(
        &self,
        headers: &HeaderList,
        body: &Bytes,
    ) -> Result<CalloutResponse, String> {
        let req = self.request(headers, body)?;
        if self.protocol == TargetProtocol::H2 {
            return h2_call(self, req).await;
        }
        let tcp = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let resp = within("response head", sender.send_request(req))
            .await?
            .map_err(|e| e.to_string())?;
        let (parts, mut incoming) = resp.into_parts();
        let mut out = CalloutResponse {
            headers: list(parts.status, &parts.headers),
            ..CalloutResponse::default()
        };
        while let Some(frame) = within("response body", incoming.frame()).await? {
            let frame = frame.map_err(|e| format!("reading the callout response: {e}"))?;
            match frame.into_data() {
                Ok(data) => {
                    if out.body.len() + data.len() > MAX_RESPONSE_BODY {
                        return Err(format!(
                            "the callout response body is over {MAX_RESPONSE_BODY} bytes"
                        ));
                    }
                    out.body.extend_from_slice(&data);
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        out.trailers.extend(
                            t.iter().map(|(k, v)| {
                                (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())
                            }),
                        );
                    }
                }
            }
        }
        Ok(out)
    }

    async fn open_h2(
        &self,
        path: &str,
        headers: http::HeaderMap,
    ) -> Result<Box<dyn H2Call>, String> {
        let mut client = h2_client(self).await?;
        let uri = format!("http://{}{path}", self.addr);
        let mut req = http::Request::post(uri)
            .body(())
            .map_err(|e| format!("bad gRPC request: {e}"))?;
        *req.headers_mut() = headers;
        let (response, body) = client.send_request(req, false).map_err(|e| e.to_string())?;
        Ok(Box::new(PlainH2 {
            response: Some(response),
            body: Some(body),
            recv: None,
        }))
    }
}

/// An HTTP/2 connection to `target`, driven on the current runtime.
async fn h2_client(target: &PlainTarget) -> Result<h2::client::SendRequest<Bytes>, String> {
    let tcp = target.connect().await?;
    let (client, conn) = h2::client::handshake(tcp)
        .await
        .map_err(|e| format!("HTTP/2 with {}: {e}", target.addr))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.ready().await.map_err(|e| e.to_string())
}

/// An HTTP callout over HTTP/2.
async fn h2_call(
    target: &PlainTarget,
    req: http::Request<Full<Bytes>>,
) -> Result<CalloutResponse, String> {
    let mut client = h2_client(target).await?;
    let (parts, body) = req.into_parts();
    let mut uri = format!("http://{}", target.addr);
    uri.push_str(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    let mut head = http::Request::from_parts(parts, ());
    *head.uri_mut() = http::Uri::try_from(uri).map_err(|e| e.to_string())?;
    let data = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let (response, mut send) = client
        .send_request(head, data.is_empty())
        .map_err(|e| e.to_string())?;
    if !data.is_empty() {
        send.send_data(data, true).map_err(|e| e.to_string())?;
    }
    let mut call = PlainH2 {
        response: Some(response),
        body: None,
        recv: None,
    };
    let (status, headers) = within("response head", call.response_header()).await??;
    let mut out = CalloutResponse {
        headers: list(status, &headers),
        ..CalloutResponse::default()
    };
    while let Some(data) = within("response body", call.response_body()).await?? {
        if out.body.len() + data.len() > MAX_RESPONSE_BODY {
            return Err(format!(
                "the callout response body is over {MAX_RESPONSE_BODY} bytes"
            ));
        }
        out.body.extend_from_slice(&data);
    }
    if let Some(t) = call.trailers().await? {
        out.trailers = t
            .iter()
            .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
    }
    Ok(out)
}

/// One HTTP/2 request on its own connection.
struct PlainH2 {
    response: Option<h2::client::ResponseFuture>,
    body: Option<h2::SendStream<Bytes>>,
    recv: Option<h2::RecvStream>,
}

#[async_trait::async_trait]
impl H2Call for PlainH2 {
    fn take_request_body(&mut self) -> Option<h2::SendStream<Bytes>> {
        self.body.take()
    }

    async fn response_header(&mut self) -> Result<(http::StatusCode, http::HeaderMap), String> {
        let response = self.response.as_mut().ok_or("the response head was read")?;
        // No deadline of its own: a gRPC call's is the plugin's.
        let resp = response.await.map_err(|e| e.to_string())?;
        self.response = None;
        let (parts, recv) = resp.into_parts();
        self.recv = Some(recv);
        Ok((parts.status, parts.headers))
    }

    async fn response_body(&mut self) -> Result<Option<Bytes>, String> {
        let recv = self.recv.as_mut().ok_or("no response head yet")?;
        match recv.data().await {
            None => Ok(None),
            Some(Err(e)) => Err(e.to_string()),
            Some(Ok(data)) => {
                let _ = recv.flow_control().release_capacity(data.len());
                Ok(Some(data))
            }
        }
    }

    async fn trailers(&mut self) -> Result<Option<http::HeaderMap>, String> {
        let recv = self.recv.as_mut().ok_or("no response head yet")?;
        recv.trailers().await.map_err(|e| e.to_string())
    }

    async fn release(self: Box<Self>) {}
}
