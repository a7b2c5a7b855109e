//! Pooled keep-alive clients to the upstreams. Connection failures answer 502, a slow
//! upstream 504; neither leaks upstream details to the client.

mod chunked;
pub mod h1;
pub mod pool;

use std::time::{Duration, Instant};

use anyhow::Context;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use prometheus::Histogram;

use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::error::Reject;
use crate::http_client::{self, HttpsClient, Protocol};
use crate::metrics::UpstreamResponses;

pub struct Upstream {
    pub name: String,
    scheme: Scheme,
    authority: Authority,
    /// Time allowed for the response head.
    pub timeout: Duration,
    /// The HTTP version spoken to this upstream.
    pub version: http::Version,
    transport: Transport,
    duration: Histogram,
    responses: UpstreamResponses,
}

/// How requests reach an upstream.
enum Transport {
    /// Plain `http`, HTTP/1: this crate's per-thread pool.
    Pooled(pool::Pool),
    /// TLS or HTTP/2: hyper-util's client.
    Client(Box<HttpsClient<RequestBody>>),
}

impl Upstream {
    /// An upstream served by `threads` worker threads (each gets its own idle connections).
    pub fn new(
        cfg: &UpstreamConfig,
        duration: Histogram,
        responses: UpstreamResponses,
        threads: usize,
    ) -> anyhow::Result<Upstream> {
        let tls = crate::tls::upstream_client_config(
            cfg.ca.as_deref(),
            cfg.client_cert
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .with_context(|| format!("TLS settings of upstream {}", cfg.name))?;
        let (protocol, version) = match cfg.protocol {
            UpstreamProtocol::H1 => (Protocol::Http1, http::Version::HTTP_11),
            UpstreamProtocol::H2 => (Protocol::Http2, http::Version::HTTP_2),
        };
        let scheme = cfg.uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = cfg
            .uri
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("invalid"));
        let transport = if scheme == Scheme::HTTP && protocol == Protocol::Http1 {
            Transport::Pooled(pool::Pool::new(
                authority.clone(),
                cfg.connect_timeout,
                threads,
            ))
        } else {
            Transport::Client(Box::new(http_client::build(
                tls,
                protocol,
                cfg.connect_timeout,
            )))
        };
        Ok(Upstream {
            name: cfg.name.clone(),
            scheme,
            authority,
            timeout: cfg.timeout,
            version,
            transport,
            duration,
            responses,
        })
    }

    /// The upstream URI for a normalized path and (already filtered) query: origin form
    /// for the pool, which writes it as it is; absolute for hyper-util's client, which
    /// picks the connection by it.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, Reject> {
        let pq = match query {
            Some(q) => PathAndQuery::from_maybe_shared(format!("{path}?{q}")),
            None => PathAndQuery::try_from(path),
        }
        .map_err(|_| Reject::BadPath(crate::path::PathError::ControlByte))?;
        if let Transport::Pooled(_) = self.transport {
            return Ok(Uri::from(pq));
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(pq);
        Uri::from_parts(parts).map_err(|_| Reject::UpstreamUnavailable)
    }

    /// Send the request; the response body streams back untouched.
    pub async fn forward(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, Reject> {
        let start = Instant::now();
        let result = match &self.transport {
            Transport::Pooled(pool) => tokio::time::timeout(self.timeout, pool.send(req))
                .await
                .map(|r| r.map_err(SendError::from)),
            Transport::Client(client) => tokio::time::timeout(self.timeout, client.request(req))
                .await
                .map(|r| {
                    r.map(|r| r.map(UpstreamBody::Hyper))
                        .map_err(SendError::from)
                }),
        };
        self.duration.observe(start.elapsed().as_secs_f64());
        match result {
            Err(_) => Err(Reject::UpstreamTimeout),
            Ok(Err(e)) => {
                // The client's own body may be what failed: that is the client's error.
                if let Some(reject) = client_body_error(&e) {
                    tracing::debug!(upstream = %self.name, error = %e, "request body refused");
                    return Err(reject);
                }
                tracing::warn!(upstream = %self.name, error = %e, connect = e.is_connect(), "upstream request failed");
                Err(Reject::UpstreamUnavailable)
            }
            Ok(Ok(resp)) => {
                self.responses.count(resp.status());
                if distrusted_framing(resp.headers()) {
                    tracing::warn!(upstream = %self.name, "upstream response with both Transfer-Encoding and Content-Length refused");
                    return Err(Reject::UpstreamUnavailable);
                }
                Ok(resp)
            }
        }
    }
}

/// Why an upstream exchange failed, whichever transport carried it.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Pool(#[from] pool::PoolError),
    #[error(transparent)]
    Client(#[from] hyper_util::client::legacy::Error),
}

impl SendError {
    /// No connection could be made (as opposed to an exchange that failed).
    fn is_connect(&self) -> bool {
        match self {
            SendError::Pool(e) => matches!(e, pool::PoolError::Connect(_)),
            SendError::Client(e) => e.is_connect(),
        }
    }
}

/// RFC 9112 §6.3: a response with both Transfer-Encoding and Content-Length is a smuggling
/// attempt or a broken upstream; its framing is not trusted (the response is refused, its
/// connection never reused).
fn distrusted_framing(h: &http::HeaderMap) -> bool {
    h.contains_key(http::header::TRANSFER_ENCODING) && h.contains_key(http::header::CONTENT_LENGTH)
}

/// A response body from the upstream: read by hyper's client, or by [`h1`] in the
/// request's own task.
pub enum UpstreamBody {
    Hyper(Incoming),
    Direct(h1::Body),
}

/// Why a response body broke off.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Direct(#[from] h1::BodyError),
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, ResponseBodyError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
            UpstreamBody::Direct(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Direct(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Direct(b) => b.size_hint(),
        }
    }
}

/// A response without a body by its request's method (HEAD) or its status (204, 304)
/// whose headers announce one anyway (`Transfer-Encoding`, a non-zero `Content-Length`):
/// some upstreams then send that body after the head, where it would be read as the next
/// request's response, on a connection reused meanwhile. Such a connection is not reused.
fn body_may_follow(head_request: bool, status: http::StatusCode, h: &http::HeaderMap) -> bool {
    (head_request || matches!(status.as_u16(), 204 | 304))
        && (h.contains_key(http::header::TRANSFER_ENCODING)
            || h.get_all(http::header::CONTENT_LENGTH)
                .iter()
                .any(|v| v.as_bytes() != b"0"))
}

/// The refusal for a request whose own body broke the exchange: too large (413), silent
/// (408), or malformed framing from the client (400).
fn client_body_error(e: &(dyn std::error::Error + 'static)) -> Option<Reject> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(b) = c.downcast_ref::<BodyError>() {
            return Some(match b {
                BodyError::TooLarge => Reject::BodyTooLarge,
                BodyError::Idle => Reject::BodyTimeout,
                BodyError::Hyper(_) => Reject::BadBody,
            });
        }
        cause = c.source();
    }
    None
}

/// The client's request body on its way upstream, cut off past the route's `max_body_bytes`
/// when it arrives without a declared length (a declared one is checked before forwarding),
/// and when the client goes silent mid-body for longer than the body timeout.
pub struct RequestBody {
    inner: Incoming,
    /// Bytes still allowed; `None` for no limit.
    left: Option<u64>,
    idle: crate::clock::IdleDeadline,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: Option<u64>, idle: Duration) -> RequestBody {
        RequestBody {
            inner,
            left: limit,
            idle: crate::clock::IdleDeadline::new(idle),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than the route allows")]
    TooLarge,
    #[error("the client sent nothing within the body timeout")]
    Idle,
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

impl http_body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BodyError>>> {
        let this = &mut *self;
        let frame = match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            std::task::Poll::Ready(frame) => frame,
            std::task::Poll::Pending if this.idle.poll_expired(cx) => {
                return std::task::Poll::Ready(Some(Err(BodyError::Idle)));
            }
            std::task::Poll::Pending => return std::task::Poll::Pending,
        };
        this.idle.reset();
        if let (Some(Ok(f)), Some(left)) = (&frame, this.left.as_mut()) {
            let n = f.data_ref().map_or(0, |d| d.len() as u64);
            if n > *left {
                return std::task::Poll::Ready(Some(Err(BodyError::TooLarge)));
            }
            *left -= n;
        }
        std::task::Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
