//! Idle keep-alive HTTP/1 connections to a plain-`http` upstream, one list per worker
//! thread: a request goes out on a connection its own thread drives (no cross-thread
//! wake-ups), and pays for none of hyper-util's general client (a boxed 3.5 KB future per
//! request, a pool keyed by a hashed map and shared, under one lock, by every thread).
//! TLS and HTTP/2 upstreams use that client.

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
use tower_service::Service;

use super::RequestBody;

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
    lists: Arc<Lists>,
}

/// Per thread ([`SLOT`]): connections whose exchange is over, the most recently used last.
struct Lists(Box<[Mutex<VecDeque<Idle>>]>);

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Http(#[from] hyper::Error),
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
            lists: Arc::new(Lists((0..=threads).map(|_| Mutex::default()).collect())),
        }
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, PoolError> {
        let io = self
            .connector
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
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
    ) -> Result<Response<Incoming>, PoolError> {
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, self.host.clone());
        }
        let mut reused = self.lists.take();
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
                    // framing the gateway refuses is left to close.
                    if resp.status() != StatusCode::SWITCHING_PROTOCOLS
                        && !super::distrusted_framing(resp.headers())
                    {
                        self.lists.release(sender);
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

impl Lists {
    fn mine(&self) -> &Mutex<VecDeque<Idle>> {
        let slot = SLOT.with(Cell::get);
        &self.0[slot % self.0.len()]
    }

    /// This thread's most recently used connection that is still open and fresh: the one
    /// least likely to be closing on an upstream's keep-alive timeout.
    fn take(&self) -> Option<SendRequest<RequestBody>> {
        let mut list = self.mine().lock().unwrap_or_else(|e| e.into_inner());
        while let Some(idle) = list.pop_back() {
            if idle.sender.is_ready() && idle.since.elapsed() <= IDLE_TIMEOUT {
                return Some(idle.sender);
            }
        }
        None
    }

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

    fn put_back(&self, sender: SendRequest<RequestBody>) {
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
                sender,
                since: Instant::now(),
            });
        }
    }
}
