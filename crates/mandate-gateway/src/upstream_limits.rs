//! The per-upstream bound on one answer (`max_result_bytes`).
//!
//! An answer over the bound is never read whole: over HTTP the MCP client
//! stops reading the body (a JSON body, or one SSE event) at the bound;
//! over stdio [`BoundedLines`] drops the rest of the line. In either case
//! the request it answered gets, at once, a JSON-RPC error in its place
//! ([`too_large_reply`]) and its id is noted in the connection's
//! [`Oversized`], so the forwarder reports `result_too_large` rather than
//! the upstream's error, and the connection goes on serving other calls.

use rmcp::model::{ClientJsonRpcMessage, JsonRpcMessage, RequestId, ServerJsonRpcMessage};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Most ids one connection remembers as answered too large; a forwarded
/// call takes its own id out as soon as it has its answer, so only ids
/// nobody waits for any more (a cancelled call) stay, and the oldest go.
const REMEMBERED: usize = 64;

/// How much of an oversized line is kept to find whose answer it was.
const PREFIX: usize = 8 * 1024;

/// Requests of one upstream connection whose answer was over the bound.
#[derive(Debug, Default)]
pub(super) struct Oversized {
    ids: Mutex<VecDeque<RequestId>>,
    /// An oversized message that answered no request of ours could be
    /// attributed: the connection was closed and every call on it failed.
    unattributed: AtomicBool,
}

impl Oversized {
    fn mark(&self, id: RequestId) {
        if let Ok(mut ids) = self.ids.lock() {
            if ids.len() >= REMEMBERED {
                ids.pop_front();
            }
            ids.push_back(id);
        }
    }

    /// Whether the answer to `id` was over the bound (forgetting it).
    pub(super) fn take(&self, id: &RequestId) -> bool {
        if self.unattributed.load(Ordering::Relaxed) {
            return true;
        }
        let Ok(mut ids) = self.ids.lock() else {
            return false;
        };
        match ids.iter().position(|i| i == id) {
            Some(at) => ids.remove(at).is_some(),
            None => false,
        }
    }
}

/// The error that takes the place of request `id`'s oversized answer. Its
/// text is the gateway's, never the upstream's.
fn too_large_reply(id: &RequestId, max: usize) -> serde_json::Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": rmcp::model::ErrorCode::INTERNAL_ERROR.0,
            "message": format!("the upstream's answer exceeded max_result_bytes ({max} bytes)"),
        },
    })
}

/// [`too_large_reply`] as a message of the MCP client, with `id` noted.
pub(super) fn answered_too_large(
    oversized: &Oversized,
    id: &RequestId,
    max: usize,
) -> Option<ServerJsonRpcMessage> {
    oversized.mark(id.clone());
    serde_json::from_value(too_large_reply(id, max)).ok()
}

/// The id of the request an HTTP POST carried, if it was one.
pub(super) fn request_id(message: &ClientJsonRpcMessage) -> Option<RequestId> {
    match message {
        JsonRpcMessage::Request(r) => Some(r.id.clone()),
        _ => None,
    }
}

/// Whether an SSE stream failed because one event was over the bound the
/// MCP client was given (rmcp reports it as a body error with this text;
/// `test_oversized_result_over_http_sse_is_refused_at_once_and_the_connection_recovers`
/// fails if the wording changes).
pub(super) fn is_event_too_large(error: &sse_stream::Error) -> bool {
    matches!(error, sse_stream::Error::Body(e) if e.to_string().contains("exceeded the maximum size"))
}

/// The top-level `id` of a JSON-RPC *response* (an object with `result`
/// or `error` and no `method`) from the first bytes of its line, or `None`
/// if those bytes do not show one.
fn response_id(prefix: &[u8]) -> Option<RequestId> {
    let mut depth = 0usize;
    let mut i = 0usize;
    let mut id = None;
    let mut is_response = false;
    // The key just read at depth 1, while its value is expected.
    let mut key: Option<Vec<u8>> = None;
    while let Some(&b) = prefix.get(i) {
        match b {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while let Some(&c) = prefix.get(j) {
                    match c {
                        b'\\' => j += 2,
                        b'"' => break,
                        _ => j += 1,
                    }
                }
                let text = prefix.get(start..j)?;
                i = j + 1;
                if depth == 1 && key.is_none() {
                    // A key at the top level if a colon follows.
                    let rest = prefix.get(i..)?;
                    let colon = rest.iter().position(|c| !c.is_ascii_whitespace())?;
                    if rest.get(colon) == Some(&b':') {
                        key = Some(text.to_vec());
                        i += colon + 1;
                        match text {
                            b"result" | b"error" => is_response = true,
                            b"method" => return None,
                            b"id" => {
                                let mut values =
                                    serde_json::Deserializer::from_slice(prefix.get(i..)?)
                                        .into_iter::<RequestId>();
                                id = values.next().and_then(Result::ok);
                            }
                            _ => {}
                        }
                        continue;
                    }
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => key = None,
            _ => {}
        }
        i += 1;
        if is_response && id.is_some() {
            break;
        }
    }
    if is_response { id } else { None }
}

/// A child's stdout, passed through a line at a time, each line bounded:
/// a line over `max` bytes is dropped, and if it was the answer to one of
/// our requests, an error for that request takes its place; if not (a
/// notification, a request of the server's, or no id to be seen), the
/// stream ends there, which closes the connection and fails its calls.
///
/// Each line must also be JSON: MCP's stdio transport forbids a server to
/// write anything else on stdout, and a line that is not cannot be
/// attributed to a request (rmcp would skip it and leave the call waiting
/// for its timeout). Once the server has written one JSON line, a line
/// that is not ends the stream the same way, so the calls on it fail at
/// once and the next call starts a new process. Lines before the first
/// JSON one (a banner printed at start, before any call) pass on to rmcp,
/// which skips them.
pub(super) struct BoundedLines<R> {
    inner: R,
    max: usize,
    oversized: std::sync::Arc<Oversized>,
    /// The line being read (at most `max` bytes).
    line: Vec<u8>,
    /// The first bytes of a line found too long, until its end.
    prefix: Option<Vec<u8>>,
    /// Bytes ready for the reader.
    out: Vec<u8>,
    out_at: usize,
    scratch: Box<[u8]>,
    ended: bool,
    /// Whether a JSON line has passed (from then on, any other line ends
    /// the stream).
    spoken: bool,
}

impl<R> BoundedLines<R> {
    pub(super) fn new(inner: R, max: usize, oversized: std::sync::Arc<Oversized>) -> Self {
        Self {
            inner,
            max,
            oversized,
            line: Vec::new(),
            prefix: None,
            out: Vec::new(),
            out_at: 0,
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
            ended: false,
            spoken: false,
        }
    }

    /// Takes in `chunk` (bytes read from the child).
    fn take_in(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() && !self.ended {
            let newline = chunk.iter().position(|b| *b == b'\n');
            let (part, rest) = match newline {
                Some(at) => (
                    chunk.get(..at).unwrap_or_default(),
                    chunk.get(at + 1..).unwrap_or_default(),
                ),
                None => (chunk, &[][..]),
            };
            chunk = rest;
            if let Some(prefix) = self.prefix.as_mut() {
                let room = PREFIX.saturating_sub(prefix.len());
                prefix.extend_from_slice(part.get(..room.min(part.len())).unwrap_or_default());
            } else if self.line.len().saturating_add(part.len()) > self.max {
                let mut prefix = std::mem::take(&mut self.line);
                prefix.truncate(PREFIX);
                let room = PREFIX.saturating_sub(prefix.len());
                prefix.extend_from_slice(part.get(..room.min(part.len())).unwrap_or_default());
                self.prefix = Some(prefix);
            } else {
                self.line.extend_from_slice(part);
            }
            if newline.is_none() {
                break;
            }
            // The line ends here.
            match self.prefix.take() {
                None => self.complete_line(),
                Some(prefix) => self.dropped(&prefix),
            }
        }
    }

    /// A line within the bound ended (in `self.line`): passed on if it is
    /// JSON (or blank, or before the server's first JSON line); otherwise
    /// the stream ends here.
    fn complete_line(&mut self) {
        let text = self.line.trim_ascii();
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok();
        if !json && !text.is_empty() && self.spoken {
            tracing::warn!(
                bytes = self.line.len(),
                "an upstream wrote a line that is not JSON on stdout; closing the connection"
            );
            self.line.clear();
            self.ended = true;
            return;
        }
        self.spoken |= json;
        self.out.append(&mut self.line);
        self.out.push(b'\n');
    }

    /// A line over the bound ended; `prefix` is how it began.
    fn dropped(&mut self, prefix: &[u8]) {
        match response_id(prefix) {
            Some(id) => {
                tracing::warn!(max_result_bytes = self.max, id = %id, "an upstream answer over max_result_bytes was dropped");
                self.oversized.mark(id.clone());
                if let Ok(mut reply) = serde_json::to_vec(&too_large_reply(&id, self.max)) {
                    self.out.append(&mut reply);
                    self.out.push(b'\n');
                }
            }
            None => {
                tracing::warn!(
                    max_result_bytes = self.max,
                    "an upstream message over max_result_bytes answered no request; closing the connection"
                );
                self.oversized.unattributed.store(true, Ordering::Relaxed);
                self.ended = true;
            }
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for BoundedLines<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_at < this.out.len() {
                let ready = this.out.get(this.out_at..).unwrap_or_default();
                let n = ready.len().min(buf.remaining());
                buf.put_slice(ready.get(..n).unwrap_or_default());
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        // The child closed its stdout: a last line without
                        // a newline is passed on as it is.
                        this.ended = true;
                        if this.prefix.is_none() {
                            this.out.append(&mut this.line);
                        }
                        continue;
                    }
                    let chunk = this.scratch.get(..n).unwrap_or_default().to_vec();
                    this.take_in(&chunk);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "upstream_limits_tests.rs"]
mod tests;
