//! Pryv's envelope on the answers hyper writes by itself.
//!
//! A request hyper cannot parse (a malformed request line or header, a head larger than its
//! read buffer, a URI past its own limit) never reaches the router: hyper answers it with a
//! bare `400`, `431` or `414` and an empty body, then closes the connection, and it offers no
//! hook to change that answer. Every other error of ours is Pryv's JSON envelope, so clients
//! that parse `error.id` would choke on exactly these.
//!
//! This wrapper sits between the TCP stream and hyper and recognises those automatic answers by
//! their shape: one of those three statuses with `content-length: 0`, the whole head in one
//! write. The router never writes such an answer (its errors always carry a JSON body), so the
//! match cannot catch one of ours. The head is rewritten with a JSON body and
//! `connection: close` (hyper closes the connection after it anyway); everything else passes
//! through untouched, reads included.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The `meta` every answer carries, taken when the answer is written.
pub type Meta = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// A connection's stream, rewriting hyper's empty-bodied parse-error answers.
pub struct PryvParseErrors<T> {
    inner: T,
    meta: Meta,
    /// The rewritten answer being written: its bytes, how many are written, and the length of
    /// hyper's original (reported to hyper once the whole rewrite is out).
    rewrite: Option<(Vec<u8>, usize, usize)>,
}

impl<T> PryvParseErrors<T> {
    pub fn new(inner: T, meta: Meta) -> Self {
        PryvParseErrors { inner, meta, rewrite: None }
    }
}

/// The answer to send instead of `head`, if `head` is one of hyper's automatic parse-error
/// answers.
fn rewrite(head: &[u8], meta: &Meta) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let message = match text.get(..13)? {
        "HTTP/1.1 400 " => "The request could not be parsed as HTTP/1.1.",
        "HTTP/1.1 431 " => "The request head (its headers) is too large.",
        "HTTP/1.1 414 " => "The request URI is too long.",
        _ => return None,
    };
    // Exactly a head (ends at the blank line) that announces no body.
    let end = text.find("\r\n\r\n")?;
    if end + 4 != text.len() || !text.to_ascii_lowercase().contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let body = serde_json::json!({ "error": { "id": "invalid-request-structure", "message": message }, "meta": meta() }).to_string();
    let mut out = String::with_capacity(text.len() + body.len() + 80);
    for line in text[..end].split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("content-length:") || lower.starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()));
    out.push_str(&body);
    Some(out.into_bytes())
}

impl<T: AsyncWrite + Unpin> PryvParseErrors<T> {
    /// Write out the rewrite in progress; then report hyper's original as written.
    fn drive_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, written, _)) = self.rewrite.as_mut() {
            if *written == bytes.len() {
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        let original = self.rewrite.take().map(|(_, _, original)| original).unwrap_or(0);
        Poll::Ready(Ok(original))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PryvParseErrors<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PryvParseErrors<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.rewrite.is_none() {
            match rewrite(buf, &this.meta) {
                Some(bytes) => this.rewrite = Some((bytes, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        this.drive_rewrite(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.rewrite.is_none() {
            // hyper's automatic answer is a head alone: one non-empty slice.
            let mut non_empty = bufs.iter().filter(|b| !b.is_empty());
            let candidate = match (non_empty.next(), non_empty.next()) {
                (Some(only), None) => rewrite(only, &this.meta).map(|bytes| (bytes, only.len())),
                _ => None,
            };
            match candidate {
                Some((bytes, original)) => this.rewrite = Some((bytes, 0, original)),
                None => return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            }
        }
        this.drive_rewrite(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.rewrite.is_some() {
            ready!(self.drive_rewrite(cx))?;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.rewrite.is_some() {
            ready!(self.drive_rewrite(cx))?;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_empty_bodied_parse_answers() {
        let meta: Meta = Arc::new(|| serde_json::json!({ "serverTime": 1.5 }));
        let rewrite = |head: &[u8]| super::rewrite(head, &meta);
        let hyper = "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 29 Nov 2026 17:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(hyper.as_bytes()).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains("\r\ndate: Sun, 29 Nov 2026 17:00:00 GMT"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["id"], "invalid-request-structure");
        assert_eq!(v["meta"]["serverTime"], 1.5);
        // One of ours (a body follows), another status, or a partial head: untouched.
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}").is_none());
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n").is_some());
    }
}
