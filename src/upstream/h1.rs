//! The common exchange with a plain-`http` HTTP/1.1 upstream, done in the request's own
//! task: a GET or HEAD without a body and without an upgrade is written on a pooled
//! connection and its response read back by the same task that serves the client, with
//! no connection task, channel or wake-up in between (hyper's client takes three task
//! switches per request). Anything else (a body, an upgrade) goes through hyper.
//!
//! Framing follows RFC 9112 §6.3 as hyper's client does, and as strictly: `httparse` reads
//! the head; a HEAD answer, 204 and 304 have no body; `Transfer-Encoding` ending in
//! `chunked` is decoded, any other coding is read to the close; `Content-Length` values
//! must agree; with neither, the body ends with the connection. A connection goes back to
//! the pool only when its response ended exactly where its framing said, nothing more
//! arrived, neither side asked to close, and no announced body may still follow a HEAD,
//! 204 or 304 (see `super::body_may_follow`).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::chunked::{Chunked, Step};
use super::pool::Home;

/// Headers in a response head, at most (hyper's default).
const MAX_HEADERS: usize = 100;
/// Hop-by-hop, like `Connection`: never passed on.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// Bytes of a response head (with any 1xx before it), at most (hyper's default buffer).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Interim (1xx) responses skipped before the final one, at most.
const MAX_INTERIM: usize = 16;
/// A read buffer larger than this is not kept with an idle connection.
const KEEP_BUFFER: usize = 64 * 1024;
/// Read size while a response streams.
const READ_SIZE: usize = 16 * 1024;

/// An idle connection to the upstream: nothing owed in either direction.
pub struct Conn {
    io: TcpStream,
    /// The last request head written, its allocation kept for the next.
    out: Vec<u8>,
    /// The read buffer, back from the last response: its allocation is reused once the
    /// client has been sent everything sliced from it.
    buf: BytesMut,
}

impl Conn {
    pub fn new(io: TcpStream) -> Conn {
        Conn {
            io,
            out: Vec::new(),
            buf: BytesMut::new(),
        }
    }

    /// Still usable: the socket holds nothing, neither a close nor stray bytes, asked of
    /// the kernel itself (one non-blocking peek). The reactor's readiness would not do:
    /// it lags the socket, and reads as "nothing" once the task's budget is spent, and a
    /// stray byte taken for the next response is a response sent to the wrong client.
    pub fn is_idle(&self) -> bool {
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        matches!(
            socket2::SockRef::from(&self.io).peek(&mut byte),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Back to the pool: the request head it kept is wiped, and a read buffer an
    /// outsized response grew is let go.
    fn idle(mut self, buf: BytesMut) -> Conn {
        self.out.fill(0);
        self.out.clear();
        self.buf = if buf.capacity() > KEEP_BUFFER {
            BytesMut::new()
        } else {
            buf
        };
        self
    }
}

/// Whether this module carries `req`: GET or HEAD, HTTP/1.1, nothing to send after the
/// head, no upgrade.
pub fn eligible<B: http_body::Body>(req: &Request<B>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD)
        && req.version() == Version::HTTP_11
        && req.body().is_end_stream()
        && !req.headers().contains_key(TRANSFER_ENCODING)
        && !req.headers().contains_key(UPGRADE)
        && !req.headers().contains_key(CONNECTION)
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request could not be written: on a reused connection, the upstream closed it
    /// meanwhile, and the request may go again on a new one. (Once written, it never
    /// goes twice, as with hyper's client: the upstream may have acted on it.)
    #[error("upstream connection closed before the request was written: {0}")]
    Unsent(std::io::Error),
    #[error("upstream connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream response head: {0}")]
    Head(&'static str),
}

/// Send `req` (origin-form URI, `Host` set) on `conn` and read the response head.
/// `home` gets the connection back once the response has ended cleanly.
pub async fn exchange<B>(
    mut conn: Conn,
    req: &Request<B>,
    home: Home,
) -> Result<Response<Body>, Error> {
    conn.out.clear();
    encode(req, &mut conn.out);
    if let Err(e) = conn.io.write_all(&conn.out).await {
        return Err(Error::Unsent(e));
    }
    let is_head = req.method() == Method::HEAD;
    let mut buf = std::mem::take(&mut conn.buf);
    buf.clear();
    buf.reserve(8192);
    let mut interim = 0;
    loop {
        if conn.io.read_buf(&mut buf).await? == 0 {
            return Err(Error::Head(if buf.is_empty() && interim == 0 {
                "connection closed before a response"
            } else {
                "truncated"
            }));
        }
        loop {
            match parse_head(&mut buf, is_head)? {
                Parsed::Partial => break,
                Parsed::Interim => {
                    interim += 1;
                    if interim > MAX_INTERIM {
                        return Err(Error::Head("too many interim responses"));
                    }
                }
                Parsed::Final(head) => return Ok(head.into_response(conn, buf, home)),
            }
        }
        if buf.len() > MAX_HEAD {
            return Err(Error::Head("too large"));
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8192);
        }
    }
}

/// The request head as hyper's client writes it (lowercase names, as stored).
fn encode<B>(req: &Request<B>, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        req.uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

enum Parsed {
    Partial,
    /// A 1xx other than 101, consumed.
    Interim,
    Final(Head),
}

struct Head {
    status: StatusCode,
    version: Version,
    reason: Option<Bytes>,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the upstream closes.
    Close,
}

fn parse_head(buf: &mut BytesMut, is_head: bool) -> Result<Parsed, Error> {
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::Head("too many headers")),
        Err(_) => return Err(Error::Head("malformed")),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Error::Head("bad status"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // No upgrade was asked for.
        return Err(Error::Head("101 to a request without upgrade"));
    }
    let version = if resp.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let reason = resp
        .reason
        .filter(|r| Some(*r) != status.canonical_reason())
        .map(|r| Bytes::copy_from_slice(r.as_bytes()));
    // Where each name and value lies in the head, to slice them out of it once frozen.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = resp.headers.len();
    // Offsets within a head of at most MAX_HEAD bytes fit in u32.
    let at = |p: *const u8| (p as usize - base) as u32;
    for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
        let (name, value) = (at(h.name.as_ptr()), at(h.value.as_ptr()));
        *span = (
            name,
            name + h.name.len() as u32,
            value,
            value + h.value.len() as u32,
        );
    }
    let raw = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    // `Connection` and `Keep-Alive` concern this hop alone: read here and, unless
    // `Connection` names an end-to-end header the client must not get (left for the
    // hop-by-hop pass to strip), never put in the response.
    let (mut close, mut names_others) = (false, false);
    for &(n0, n1, v0, v1) in &spans[..count] {
        let (n0, n1, v0, v1) = (n0 as usize, n1 as usize, v0 as usize, v1 as usize);
        let name = HeaderName::from_bytes(&raw[n0..n1]).map_err(|_| Error::Head("header name"))?;
        let value = HeaderValue::from_maybe_shared(raw.slice(v0..v1))
            .map_err(|_| Error::Head("header value"))?;
        if name == CONNECTION {
            // A value that is not plain text cannot be read for `close`: the connection is
            // not trusted to stay open.
            let Ok(list) = value.to_str() else {
                close = true;
                continue;
            };
            for token in list.split(',').map(str::trim) {
                // `close` also names a field (RFC 9110 §7.6.1), stripped like any other.
                close |= token.eq_ignore_ascii_case("close");
                names_others |= !token.is_empty() && !crate::headers::is_hop_by_hop(token);
            }
        } else if name != KEEP_ALIVE {
            headers.append(name, value);
        }
    }
    if names_others {
        for &(n0, n1, v0, v1) in &spans[..count] {
            if raw[n0 as usize..n1 as usize].eq_ignore_ascii_case(b"connection") {
                let value = HeaderValue::from_maybe_shared(raw.slice(v0 as usize..v1 as usize))
                    .map_err(|_| Error::Head("header value"))?;
                headers.append(CONNECTION, value);
            }
        }
    }
    // A response the caller refuses, or after which a body may come after all, leaves
    // its connection unused.
    let keep_alive = version == Version::HTTP_11
        && !close
        && !super::distrusted_framing(&headers)
        && !super::body_may_follow(is_head, status, &headers);
    let framing =
        if is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Length(0)
        } else if let Some(last) = headers.get_all(TRANSFER_ENCODING).iter().next_back() {
            if version == Version::HTTP_10 {
                return Err(Error::Head("Transfer-Encoding in HTTP/1.0"));
            }
            if headers.contains_key(CONTENT_LENGTH) {
                Framing::Close
            } else if last
                .to_str()
                .ok()
                .and_then(|s| s.rsplit(',').next())
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
            {
                Framing::Chunked
            } else {
                Framing::Close
            }
        } else if headers.contains_key(CONTENT_LENGTH) {
            Framing::Length(content_length(&headers).ok_or(Error::Head("bad Content-Length"))?)
        } else {
            Framing::Close
        };
    Ok(Parsed::Final(Head {
        status,
        version,
        reason,
        headers,
        framing,
        keep_alive: keep_alive && framing != Framing::Close,
    }))
}

/// Every `Content-Length` value, as digits only, and all the same.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut found = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for v in value.to_str().ok()?.split(',') {
            let v = v.trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = v.parse().ok()?;
            if found.is_some_and(|f| f != n) {
                return None;
            }
            found = Some(n);
        }
    }
    found
}

impl Head {
    fn into_response(self, conn: Conn, buf: BytesMut, home: Home) -> Response<Body> {
        let decode = match self.framing {
            Framing::Length(n) => Decode::Length(n),
            Framing::Chunked => Decode::Chunked(Chunked::default()),
            Framing::Close => Decode::Close,
        };
        let mut body = Body {
            decode,
            buf,
            conn: Some(conn),
            keep_alive: self.keep_alive,
            home: Some(home),
            ready: None,
        };
        // The usual case: the whole body came with the head. The connection goes back
        // before the response is even written to the client.
        if let Decode::Length(n) = body.decode {
            if let Some(n) = usize::try_from(n).ok().filter(|n| *n <= body.buf.len()) {
                let data = body.buf.split_to(n).freeze();
                body.decode = Decode::Length(0);
                body.ready = (!data.is_empty()).then_some(data);
                body.finish();
            }
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        *resp.version_mut() = self.version;
        *resp.headers_mut() = self.headers;
        if let Some(reason) = self
            .reason
            .and_then(|r| hyper::ext::ReasonPhrase::try_from(r).ok())
        {
            resp.extensions_mut().insert(reason);
        }
        resp
    }
}

/// A response body read from the upstream connection as the client takes it.
pub struct Body {
    decode: Decode,
    /// Bytes read and not yet decoded.
    buf: BytesMut,
    /// `None` once the body ended (the connection released or closed).
    conn: Option<Conn>,
    keep_alive: bool,
    /// Where the connection goes back to.
    home: Option<Home>,
    /// Data decoded ahead (the whole body, when it came with the head).
    ready: Option<Bytes>,
}

enum Decode {
    Length(u64),
    Chunked(Chunked),
    Close,
}

/// Why a response body broke off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream closed the connection mid-body")]
    Truncated,
    #[error("upstream chunked body: {0}")]
    Chunked(&'static str),
}

impl Body {
    /// The body ended where its framing said: the connection goes back to the pool when
    /// nothing else arrived and both sides keep it alive, else it closes.
    fn finish(&mut self) {
        let conn = self.conn.take();
        if let (Some(conn), true) = (conn, self.keep_alive && self.buf.is_empty()) {
            if let Some(home) = self.home.take() {
                home.put_back(conn.idle(std::mem::take(&mut self.buf)));
            }
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, BodyError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Err(BodyError::Truncated));
        };
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_SIZE);
        }
        let read = std::pin::pin!(conn.io.read_buf(&mut self.buf));
        read.poll(cx).map_err(BodyError::from)
    }

    fn next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(data) = self.ready.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            match &mut self.decode {
                Decode::Length(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Decode::Length(left) => {
                    if !self.buf.is_empty() {
                        let take = self
                            .buf
                            .len()
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= take as u64;
                        let data = self.buf.split_to(take).freeze();
                        if *left == 0 {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Decode::Close => {
                    if !self.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(self.buf.split().freeze()))));
                    }
                }
                Decode::Chunked(chunked) => match chunked.step(&mut self.buf)? {
                    Step::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    // The last frame: hyper polls no further.
                    Step::Trailers(t) => {
                        self.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Step::End => {
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Step::More => {}
                },
            }
            if ready!(self.poll_read(cx))? == 0 {
                if let Decode::Close = self.decode {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                self.conn = None;
                return Poll::Ready(Some(Err(BodyError::Truncated)));
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = self.next_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &frame {
            // A broken body never leaves its connection for another request.
            self.conn = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_none() && matches!(self.decode, Decode::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Length(n) => {
                SizeHint::with_exact(n + self.ready.as_ref().map_or(0, |d| d.len() as u64))
            }
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, is_head: bool) -> Result<(Parsed, usize), Error> {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse_head(&mut buf, is_head).map(|p| (p, buf.len()))
    }

    fn framing(raw: &str, is_head: bool) -> Result<(Framing, bool), Error> {
        match head(raw, is_head)?.0 {
            Parsed::Final(h) => Ok((h.framing, h.keep_alive)),
            Parsed::Partial => Err(Error::Head("partial")),
            Parsed::Interim => Err(Error::Head("interim")),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        use Framing::*;
        let cases: &[(&str, bool, (Framing, bool))] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                false,
                (Length(3), true),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n",
                false,
                (Length(3), true),
            ),
            // No body by method or status; one that is announced may follow anyway, so
            // the connection is not reused.
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                true,
                (Length(0), false),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                true,
                (Length(0), true),
            ),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
                false,
                (Length(0), false),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                (Length(0), false),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
                false,
                (Length(0), true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n",
                false,
                (Chunked, true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                (Close, false),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false,
                (Close, false),
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, (Close, false)),
            (
                "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
                false,
                (Length(0), false),
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
                false,
                (Length(0), false),
            ),
            // Both framings: refused upstream of here, and never reused, bodiless or not.
            ("HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", false, (Length(0), false)),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", true, (Length(0), false)),
        ];
        for (raw, is_head, want) in cases {
            assert_eq!(framing(raw, *is_head).ok(), Some(*want), "{raw:?}");
        }
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3,\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
        ] {
            assert!(
                matches!(framing(raw, false), Err(Error::Head(_))),
                "{raw:?}"
            );
        }
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok((Parsed::Partial, _))
        ));
        let (p, left) = head(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
            false,
        )
        .expect("parses");
        assert!(matches!(p, Parsed::Interim));
        assert_eq!(left, 19, "the final response stays in the buffer");
    }

    #[test]
    fn requests_are_written_as_hyper_writes_them() {
        let req = Request::get("/a/b?c=d")
            .header("host", "up:8080")
            .header("x-two", "1")
            .header("x-two", "2")
            .body(())
            .expect("request");
        let mut out = Vec::new();
        encode(&req, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET /a/b?c=d HTTP/1.1\r\nhost: up:8080\r\nx-two: 1\r\nx-two: 2\r\n\r\n"
        );
        let post = Request::post("/").body(()).expect("request");
        assert!(!eligible(
            &post.map(|_| http_body_util::Empty::<Bytes>::new())
        ));
    }
}
