// ---------------------------------------------------------------------------------------
// HTTP/1.1 messages, parsed from raw bytes
// ---------------------------------------------------------------------------------------

/// How a message's body was delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Framing {
    /// `content-length: N`.
    Length(usize),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// A response without either: until the connection closed.
    Close,
    /// No body (a request without framing headers, or a status without body).
    Empty,
}

/// One HTTP/1.1 message.
#[derive(Debug, Clone)]
pub(super) struct Message {
    /// The request line or the status line.
    pub(super) start: String,
    /// Header names lower-cased, values as sent, in order.
    pub(super) headers: Vec<(String, String)>,
    /// The body, decoded (chunks joined).
    pub(super) body: Vec<u8>,
    pub(super) framing: Framing,
    /// Bytes of the input the message took.
    pub(super) raw_len: usize,
}

impl Message {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub(super) fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Decodes a chunked body at the start of `buf`: the body and the bytes it took, `None` if
/// incomplete.
fn dechunk(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        let Some(e) = find(&buf[i..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&buf[i..i + e]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size line {line:?}"))?;
        i += e + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(e) = find(&buf[i..], b"\r\n") else {
                    return Ok(None);
                };
                i += e + 2;
                if e == 0 {
                    return Ok(Some((out, i)));
                }
            }
        }
        if buf.len() < i + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&buf[i..i + size]);
        if &buf[i + size..i + size + 2] != b"\r\n" {
            return Err(format!("chunk of {size} bytes not followed by CRLF"));
        }
        i += size + 2;
    }
}

/// Parses the HTTP/1.1 message at the start of `buf`. `Ok(None)`: not complete yet. `eof`:
/// nothing more will come (a response without framing runs to the end). A message with both
/// `content-length` and `transfer-encoding`, several or bad `content-length`s, or a transfer
/// coding other than `chunked` is an error: the framing must be unambiguous.
pub(super) fn parse_message(
    buf: &[u8],
    request: bool,
    eof: bool,
) -> Result<Option<Message>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|e| format!("head: {e}"))?;
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| format!("bad header line {l:?}"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let body_start = head_end + 4;
    let mut m = Message {
        start,
        headers,
        body: Vec::new(),
        framing: Framing::Empty,
        raw_len: body_start,
    };
    let te = m.all("transfer-encoding");
    let cl = m.all("content-length");
    if !te.is_empty() && !cl.is_empty() {
        return Err(format!(
            "both transfer-encoding and content-length: {:?}",
            m.headers
        ));
    }
    if !te.is_empty() {
        if te != ["chunked"] {
            return Err(format!("transfer-encoding {te:?}"));
        }
        m.framing = Framing::Chunked;
        return Ok(dechunk(&buf[body_start..])?.map(|(body, used)| {
            m.body = body;
            m.raw_len = body_start + used;
            m
        }));
    }
    if !cl.is_empty() {
        if cl.len() != 1 {
            return Err(format!("content-length {cl:?}"));
        }
        let n: usize = cl[0]
            .parse()
            .map_err(|_| format!("content-length {:?}", cl[0]))?;
        m.framing = Framing::Length(n);
        if buf.len() < body_start + n {
            return Ok(None);
        }
        m.body = buf[body_start..body_start + n].to_vec();
        m.raw_len = body_start + n;
        return Ok(Some(m));
    }
    let status = m.status();
    if request || status < 200 || status == 204 || status == 304 {
        return Ok(Some(m));
    }
    if !eof {
        return Ok(None);
    }
    m.framing = Framing::Close;
    m.body = buf[body_start..].to_vec();
    m.raw_len = buf.len();
    Ok(Some(m))
}

/// `bytes` as exactly one complete response (what a client read until the close): fails on
/// anything else, e.g. bytes after the response.
pub(super) fn one_response(bytes: &[u8]) -> Message {
    let text = String::from_utf8_lossy(bytes);
    let m = match parse_message(bytes, false, true) {
        Ok(Some(m)) => m,
        Ok(None) => panic!("incomplete response:\n{text}"),
        Err(e) => panic!("bad response ({e}):\n{text}"),
    };
    assert_eq!(m.raw_len, bytes.len(), "bytes after the response:\n{text}");
    m
}
