//! The Redis serialization protocol (RESP2): commands out, replies in, with limits on what a
//! reply may hold.

use std::io::{self, BufRead, Write};

/// Largest bulk string accepted in a reply (values are at most 1 MiB; margin for the rest).
const MAX_BULK: usize = 8 << 20;
/// Most elements accepted in an array reply (the commands used here get two).
const MAX_ARRAY: usize = 64;
/// Longest status, error or integer line.
const MAX_LINE: usize = 64 * 1024;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Status(String),
    /// `-ERR …`: the server refused the command.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$n` bytes, or `$-1` (nil).
    Bulk(Option<Vec<u8>>),
    /// `*n` replies, or `*-1` (nil).
    Array(Option<Vec<Reply>>),
}

/// Writes one command (an array of bulk strings).
pub fn write_command(out: &mut impl Write, args: &[&[u8]]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
    out.write_all(&buf)?;
    out.flush()
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads one line without its CRLF.
fn read_line<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let n = <&mut R as io::Read>::take(r, MAX_LINE as u64 + 2).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(bad("a reply line without CRLF or longer than 64 KiB"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_int(line: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            bad(format!(
                "not an integer: {:?}",
                String::from_utf8_lossy(line)
            ))
        })
}

/// Reads one reply.
pub fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    read_nested(r, 0)
}

fn read_nested(r: &mut impl BufRead, depth: usize) -> io::Result<Reply> {
    if depth > 4 {
        return Err(bad("replies nested too deep"));
    }
    let line = read_line(r)?;
    let (&kind, rest) = line
        .split_first()
        .ok_or_else(|| bad("an empty reply line"))?;
    match kind {
        b'+' => Ok(Reply::Status(String::from_utf8_lossy(rest).into_owned())),
        b'-' => Ok(Reply::Error(String::from_utf8_lossy(rest).into_owned())),
        b':' => Ok(Reply::Int(parse_int(rest)?)),
        b'$' => {
            let n = parse_int(rest)?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let n = usize::try_from(n).map_err(|_| bad("bulk length"))?;
            if n > MAX_BULK {
                return Err(bad(format!(
                    "a bulk reply of {n} bytes (at most {MAX_BULK})"
                )));
            }
            let mut data = vec![0u8; n + 2];
            r.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(bad("a bulk reply without its CRLF"));
            }
            data.truncate(n);
            Ok(Reply::Bulk(Some(data)))
        }
        b'*' => {
            let n = parse_int(rest)?;
            if n < 0 {
                return Ok(Reply::Array(None));
            }
            let n = usize::try_from(n).map_err(|_| bad("array length"))?;
            if n > MAX_ARRAY {
                return Err(bad(format!("an array reply of {n} elements")));
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_nested(r, depth + 1)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        other => Err(bad(format!("an unknown reply type {:?}", other as char))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        write_command(&mut out, &[b"HMGET", b"k\r\n", b""]).unwrap();
        assert_eq!(out, b"*3\r\n$5\r\nHMGET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n");
    }

    #[test]
    fn replies_of_every_kind() {
        let text: &[u8] = b"+OK\r\n-NOSCRIPT No matching script\r\n:-7\r\n$3\r\na\r\n\r\n$-1\r\n*2\r\n$1\r\nx\r\n:5\r\n*-1\r\n*0\r\n";
        let mut r = io::BufReader::new(text);
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Status("OK".into()));
        assert_eq!(
            read_reply(&mut r).unwrap(),
            Reply::Error("NOSCRIPT No matching script".into())
        );
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Int(-7));
        assert_eq!(
            read_reply(&mut r).unwrap(),
            Reply::Bulk(Some(b"a\r\n".to_vec()))
        );
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Bulk(None));
        assert_eq!(
            read_reply(&mut r).unwrap(),
            Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec())), Reply::Int(5)]))
        );
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Array(None));
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Array(Some(vec![])));
        assert_eq!(
            read_reply(&mut r).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn malformed_and_oversized_replies_are_errors() {
        let cases: &[&[u8]] = &[
            b"?\r\n",
            b"+no crlf",
            b":12a\r\n",
            b"$5\r\nab\r\n",
            b"$3\r\nabcde",
            b"$99999999999\r\n",
            b"*100000\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b"\r\n",
        ];
        for c in cases {
            let mut r = io::BufReader::new(*c);
            assert!(
                read_reply(&mut r).is_err(),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
    }
}
