//! Idle keep-alive HTTP/1 connections to a plain-`http` upstream, one list per worker
//! thread: a request goes out on a connection its own thread drives (no cross-thread
//! wake-ups), and pays for none of hyper-util's general client (a boxed 3.5 KB future per
//! request, a pool keyed by a hashed map and shared, under one lock, by every thread).
//! TLS and HTTP/2 upstreams use that client.
//!
//! A GET or HEAD without a body is exchanged by [`super::h1`] in the request's own task;
//! other requests go through hyper's HTTP/1 client. Each kind has its own idle lists.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use super::h1;
use super::{RequestBody, UpstreamBody};

thread_local! {
    /// This thread's list in every pool: 0 off the workers, 1 + its index on a worker.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Worker threads running (fixed at start; a reload cannot change it).
static WORKERS: AtomicUsize = AtomicUsize::new(0);

/// Called on a worker thread before it serves: its list in every pool, of `count`.
pub fn set_worker(index: usize, count: usize) {
    WORKERS.fetch_max(count, Ordering::Relaxed);
    SLOT.with(|s| s.set(index + 1));
}

/// Idle connections one thread keeps for an upstream, at most.
const MAX_IDLE: usize = 512;
/// A connection idle for longer is closed rather than reused (hyper-util's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub struct Pool {
    /// `http://authority/`, what the connector dials.
    target: Uri,
    /// The `Host` a request without one gets: the authority without a default port.
    host: HeaderValue,
    connector: HttpConnector,
    /// Connections hyper's client drives.
    senders: Arc<Lists<SendRequest<RequestBody>>>,
    /// Connections [`h1`] reads and writes itself.
    conns: Arc<Lists<h1::Conn>>,
}

/// Per thread ([`SLOT`]): connections whose exchange is over, the most recently used last.
struct Lists<T>(Box<[Mutex<VecDeque<Idle<T>>>]>);

struct Idle<T> {
    conn: T,
    since: Instant,
}

/// A connection that may sit in a list.
trait Reusable {
    /// Still open, as far as is known without a system call.
    fn usable(&self) -> bool;
}

impl Reusable for SendRequest<RequestBody> {
    fn usable(&self) -> bool {
        self.is_ready()
    }
}

impl Reusable for h1::Conn {
    fn usable(&self) -> bool {
        self.is_idle()
    }
}

/// Where an [`h1`] connection goes back once its response has ended.
pub struct Home(Arc<Lists<h1::Conn>>);

impl Home {
    pub fn put_back(self, conn: h1::Conn) {
        self.0.put_back(conn);
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Exchange(#[from] h1::Error),
}

impl Pool {
    /// A pool for `authority`, with a list for each of `threads` worker threads (or of
    /// those running, when more: `limits.workers` takes effect on restart only) and one for
    /// every other thread.
    pub fn new(authority: Authority, connect_timeout: Duration, threads: usize) -> Pool {
        let threads = threads.max(WORKERS.load(Ordering::Relaxed));
        let host = match authority.port_u16() {
            Some(port) if port != 80 => format!("{}:{port}", authority.host()),
            _ => authority.host().to_owned(),
        };
        let mut target = http::uri::Parts::default();
        target.scheme = Some(Scheme::HTTP);
        target.authority = Some(authority);
        target.path_and_query = Some(PathAndQuery::from_static("/"));
        // hyper-util's connector, as for every other upstream: resolution, each address
        // within the timeout, the other address family after 300 ms, TCP_NODELAY, TCP
        // keep-alive.
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        Pool {
            target: Uri::from_parts(target).unwrap_or_default(),
            host: HeaderValue::from_str(&host)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            connector,
            senders: Arc::new(Lists::new(threads)),
            conns: Arc::new(Lists::new(threads)),
        }
    }

    async fn dial(&self) -> Result<TokioIo<TcpStream>, PoolError> {
        self.connector
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| PoolError::Connect(e.into()))
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, PoolError> {
        let io = self.dial().await?;
        let (sender, conn) = http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Send `req` (its URI in origin form), with a `Host` if it has none. A request
    /// a reused connection did not take (the upstream closed it meanwhile) goes again, once,
    /// on a new one; hyper hands a request back only when none of it was written.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, PoolError> {
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, self.host.clone());
        }
        if h1::eligible(&req) {
            return Ok(self.exchange(req).await?.map(UpstreamBody::Direct));
        }
        // Boxed: the request future every GET carries stays the size of the direct
        // exchange (a future is copied at each level it is awaited through).
        Ok(Box::pin(self.send_hyper(req))
            .await?
            .map(UpstreamBody::Hyper))
    }

    /// A GET or HEAD in this task; one its reused connection did not take (closed
    /// meanwhile) goes again, once, on a new connection.
    async fn exchange(&self, req: Request<RequestBody>) -> Result<Response<h1::Body>, PoolError> {
        if let Some(conn) = self.conns.take() {
            match h1::exchange(conn, &req, Home(self.conns.clone())).await {
                Err(h1::Error::Unsent(e)) => {
                    tracing::debug!(error = %e, "reused upstream connection closed; sending again");
                }
                other => return Ok(other?),
            }
        }
        // Boxed: a reused connection, the usual case, then carries a small future.
        let io = Box::pin(self.dial()).await?;
        let conn = h1::Conn::new(io.into_inner());
        Ok(h1::exchange(conn, &req, Home(self.conns.clone())).await?)
    }

    async fn send_hyper(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, PoolError> {
        let head_request = req.method() == http::Method::HEAD;
        let mut reused = self.senders.take();
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
                    // A switched protocol owns the connection now; one whose response
                    // framing the gateway refuses, or after which a body may follow, is left
                    // to close.
                    if resp.status() != StatusCode::SWITCHING_PROTOCOLS
                        && !super::distrusted_framing(resp.headers())
                        && !super::body_may_follow(head_request, resp.status(), resp.headers())
                    {
                        self.senders.release(sender);
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

impl<T: Reusable> Lists<T> {
    fn new(threads: usize) -> Lists<T> {
        Lists((0..=threads).map(|_| Mutex::default()).collect())
    }

    fn mine(&self) -> &Mutex<VecDeque<Idle<T>>> {
        let slot = SLOT.with(Cell::get);
        &self.0[slot % self.0.len()]
    }

    /// This thread's most recently used connection that is still open and fresh: the one
    /// least likely to be closing on an upstream's keep-alive timeout.
    fn take(&self) -> Option<T> {
        let mut list = self.mine().lock().unwrap_or_else(|e| e.into_inner());
        while let Some(idle) = list.pop_back() {
            if idle.conn.usable() && idle.since.elapsed() <= IDLE_TIMEOUT {
                return Some(idle.conn);
            }
        }
        None
    }

    fn put_back(&self, conn: T) {
        let mut list = self.mine().lock().unwrap_or_else(|e| e.into_inner());
        // The least recently used one, if stale, goes: a sweep paced by the traffic.
        if list
            .front()
            .is_some_and(|idle| idle.since.elapsed() > IDLE_TIMEOUT)
        {
            list.pop_front();
        }
        if list.len() < MAX_IDLE {
            list.push_back(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

impl Lists<SendRequest<RequestBody>> {
    /// Back to this thread's list once the exchange is over: at once when it already is,
    /// else when the response body has been read (a task waits for that, on this thread;
    /// a connection that closes meanwhile is dropped).
    fn release(self: &Arc<Self>, mut sender: SendRequest<RequestBody>) {
        if sender.is_ready() {
            self.put_back(sender);
            return;
        }
        let lists = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                lists.put_back(sender);
            }
        });
    }
}
