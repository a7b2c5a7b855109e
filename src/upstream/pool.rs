//! Idle keep-alive HTTP/1 connections to a plain-`http` upstream, one list per worker
//! thread: a request goes out on a connection its own thread drives (no cross-thread
//! wake-ups), and pays for none of hyper-util's general client (a boxed 3.5 KB future per
//! request, a pool keyed by a hashed map and shared, under one lock, by every thread).
//! TLS and HTTP/2 upstreams use that client.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::RequestBody;

thread_local! {
    /// This thread's list in every pool: 0 off the workers, 1 + its index on a worker.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Called on a worker thread before it serves: its list in every pool.
pub fn set_worker(index: usize) {
    SLOT.with(|s| s.set(index + 1));
}

/// Idle connections one thread keeps for an upstream, at most.
const MAX_IDLE: usize = 512;
/// A connection idle for longer is closed rather than reused (hyper-util's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub struct Pool {
    authority: Authority,
    host: HeaderValue,
    connect_timeout: Duration,
    /// Per thread ([`SLOT`]): connections, least recently used first. A connection is
    /// put back as soon as its response head arrived; it is taken again once ready (its
    /// response body read).
    lists: Box<[Mutex<VecDeque<Idle>>]>,
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl Pool {
    /// A pool for `authority`, with a list for each of `threads` worker threads and one
    /// for every other thread.
    pub fn new(authority: Authority, connect_timeout: Duration, threads: usize) -> Pool {
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        Pool {
            authority,
            host,
            connect_timeout,
            lists: (0..=threads).map(|_| Mutex::default()).collect(),
        }
    }

    fn list(&self) -> &Mutex<VecDeque<Idle>> {
        let slot = SLOT.with(Cell::get);
        &self.lists[slot % self.lists.len()]
    }

    /// A ready connection of this thread, dropping closed and stale ones on the way.
    fn idle(&self) -> Option<SendRequest<RequestBody>> {
        let mut list = self.list().lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..list.len() {
            let idle = list.pop_front()?;
            if idle.sender.is_closed() || idle.since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            if idle.sender.is_ready() {
                return Some(idle.sender);
            }
            // Still reading its last response: look again later.
            list.push_back(idle);
        }
        None
    }

    fn put_back(&self, sender: SendRequest<RequestBody>) {
        let mut list = self.list().lock().unwrap_or_else(|e| e.into_inner());
        if list.len() < MAX_IDLE {
            list.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, PoolError> {
        let addr = (
            self.authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']'),
            self.authority.port_u16().unwrap_or(80),
        );
        let stream =
            match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
            {
                Err(_) => return Err(PoolError::ConnectTimeout(self.authority.to_string())),
                Ok(Err(e)) => return Err(PoolError::Connect(self.authority.to_string(), e)),
                Ok(Ok(s)) => s,
            };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Send `req` (its URI absolute) in origin form, with a `Host` if it has none. A request
    /// a reused connection could not take (the upstream closed it meanwhile) goes again on
    /// a new one.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, PoolError> {
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = Uri::from(pq);
        } else {
            *req.uri_mut() = Uri::from(PathAndQuery::from_static("/"));
        }
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, self.host.clone());
        }
        let mut reused = self.idle();
        loop {
            let fresh = reused.is_none();
            let mut sender = match reused.take() {
                Some(s) => s,
                // Boxed: a reused connection, the usual case, then carries a small
                // future (connecting holds a resolver's and a handshake's).
                None => Box::pin(self.connect()).await?,
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // A switched protocol owns the connection now.
                    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                        self.put_back(sender);
                    }
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }
}
