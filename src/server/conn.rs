//! One client connection's life. It must send its first byte within `header_timeout` (after
//! TLS too: the protocol sniffing of the HTTP/1-or-2 builder would otherwise wait forever),
//! and a connection that has sent no request yet is closed at `header_timeout`; after that
//! it is closed once idle (no request in flight) for `idle_timeout`, when the gateway needs
//! its slot for a new client, when it keeps cancelling streams it opened (HTTP/2 rapid
//! reset), or at shutdown — always gracefully (GOAWAY, or after the response in flight).

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Cancelled requests a connection may accumulate beyond the ones it completed before it
/// is sent away (GOAWAY): a client resetting what it opens, as in HTTP/2 rapid reset.
const RESET_ALLOWANCE: u64 = 100;

/// Every open client connection, so that one can be chosen to close.
pub struct Conns {
    permits: Arc<Semaphore>,
    per_client: Option<usize>,
    open: Mutex<Registry>,
    /// `jwtgate_open_connections`.
    gauge: prometheus::IntGauge,
}

#[derive(Default)]
struct Registry {
    next: u64,
    conns: HashMap<u64, Weak<ConnState>>,
    by_client: HashMap<IpAddr, usize>,
}

impl Conns {
    pub fn new(max: usize, per_client: Option<usize>, gauge: prometheus::IntGauge) -> Arc<Conns> {
        Arc::new(Conns {
            permits: Arc::new(Semaphore::new(max)),
            per_client,
            open: Mutex::new(Registry::default()),
            gauge,
        })
    }

    /// A slot for a client that is waiting (already accepted). At capacity, an idle
    /// keep-alive connection is asked to close (as nginx does), so new clients do not queue
    /// behind idle ones; while none is idle, look again every 250 ms.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            if let Ok(p) = self.permits.clone().try_acquire_owned() {
                return Some(p);
            }
            self.close_one_idle();
            tokio::select! {
                p = self.permits.clone().acquire_owned() => return p.ok(),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    fn close_one_idle(&self) {
        // Weak references are copied out and upgraded after the lock is released: the last
        // strong reference may be one of these, and dropping it unregisters (which locks).
        let candidates: Vec<Weak<ConnState>> = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .conns
            .values()
            .cloned()
            .collect();
        let idle = candidates
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| {
                // Keep-alive idle: served a request, none in flight. A connection that has
                // not spoken yet is the header timeout's business.
                c.requests.load(Ordering::Acquire) > 0
                    && c.in_flight.load(Ordering::Acquire) == 0
                    && !c.closing.load(Ordering::Acquire)
            })
            .min_by_key(|c| c.id);
        if let Some(c) = idle {
            c.close();
        }
    }

    /// Whether `client` may open another connection (checked before anyone is evicted).
    pub fn client_has_room(&self, client: IpAddr) -> bool {
        let Some(max) = self.per_client else {
            return true;
        };
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.by_client
            .get(&client_key(client))
            .copied()
            .unwrap_or(0)
            < max
    }

    /// Register a connection from `client`; `None` when the client holds its share.
    pub fn register(
        self: &Arc<Self>,
        client: IpAddr,
        permit: OwnedSemaphorePermit,
    ) -> Option<Arc<ConnState>> {
        let client = client_key(client);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let held = open.by_client.get(&client).copied().unwrap_or(0);
        if self.per_client.is_some_and(|max| held >= max) {
            return None;
        }
        open.by_client.insert(client, held + 1);
        open.next += 1;
        let id = open.next;
        let state = Arc::new(ConnState {
            id,
            client,
            conns: Arc::downgrade(self),
            _permit: permit,
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            bodies: AtomicUsize::new(0),
            body_progress_ms: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            wake: Notify::new(),
        });
        open.conns.insert(id, Arc::downgrade(&state));
        self.gauge.inc();
        Some(state)
    }

    /// Until every connection, upgraded tunnels included, has ended.
    pub async fn all_closed(&self) {
        while !self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .conns
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn unregister(&self, id: u64, client: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.conns.remove(&id).is_some() {
            self.gauge.dec();
        }
        if let Some(n) = open.by_client.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&client);
            }
        }
    }
}

/// The address a per-client cap counts by: IPv6 clients by their /64, which one client
/// usually holds whole.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
        v4 => v4,
    }
}

/// What the connection task and its requests share. Dropped (releasing the connection's
/// slot) when the connection and every upgraded tunnel it handed off are gone.
pub struct ConnState {
    id: u64,
    client: IpAddr,
    conns: Weak<Conns>,
    _permit: OwnedSemaphorePermit,
    started: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    /// When the last request ended, in ms since `started`.
    idle_since_ms: AtomicU64,
    /// Response bodies being sent, and when one last made progress.
    bodies: AtomicUsize,
    body_progress_ms: AtomicU64,
    closing: AtomicBool,
    wake: Notify,
}

/// The deadlines a connection lives by.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub header: Duration,
    pub idle: Duration,
    pub body: Duration,
}

impl Drop for ConnState {
    fn drop(&mut self) {
        if let Some(conns) = self.conns.upgrade() {
            conns.unregister(self.id, self.client);
        }
    }
}

impl ConnState {
    /// Ask the connection to close gracefully.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Why the connection should close now, if it should.
    fn should_close(&self, d: Deadlines) -> Option<&'static str> {
        if self.closing.load(Ordering::Acquire) {
            return Some("slot needed");
        }
        let (cancelled, completed) = (
            self.cancelled.load(Ordering::Acquire),
            self.completed.load(Ordering::Acquire),
        );
        if cancelled > completed.saturating_add(RESET_ALLOWANCE) {
            return Some("too many cancelled requests");
        }
        // A client that stops reading (a zero HTTP/2 window, a full socket) holds its
        // upstream slots: no body it is sent may stall for twice the body timeout (a body
        // whose upstream is silent is cut by its own deadline first).
        if self.bodies.load(Ordering::Acquire) > 0 {
            let stalled = Instant::now().saturating_duration_since(self.at(&self.body_progress_ms));
            if stalled >= d.body * 2 {
                return Some("response not read");
            }
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle_for = Instant::now().saturating_duration_since(self.at(&self.idle_since_ms));
        if self.requests.load(Ordering::Acquire) == 0 {
            (self.started.elapsed() >= d.header).then_some("no request in time")
        } else {
            (idle_for >= d.idle).then_some("idle")
        }
    }

    /// When to look again. Requests starting and ending do not wake the connection (only a
    /// cancelled one does), so the look is never further off than the idle timeout or
    /// twice the body timeout: a connection that turns idle meanwhile, or a response body
    /// that starts meanwhile and stalls, is still cut on time.
    fn next_check(&self, d: Deadlines) -> Instant {
        let now = Instant::now();
        let due = if self.bodies.load(Ordering::Acquire) > 0 {
            self.at(&self.body_progress_ms) + d.body * 2
        } else if self.in_flight.load(Ordering::Acquire) > 0 {
            now + d.idle
        } else if self.requests.load(Ordering::Acquire) == 0 {
            self.started + d.header
        } else {
            self.at(&self.idle_since_ms) + d.idle
        };
        due.min(now + d.idle.min(d.body * 2))
    }

    /// Mark `stamp` now (ms since the connection started): no lock on the per-frame path.
    fn mark(&self, stamp: &AtomicU64) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        stamp.store(ms, Ordering::Release);
    }

    /// The instant `stamp` holds.
    fn at(&self, stamp: &AtomicU64) -> Instant {
        self.started + Duration::from_millis(stamp.load(Ordering::Acquire))
    }

    fn progress(&self) {
        self.mark(&self.body_progress_ms);
    }

    /// Run the connection future `conn` until it ends, shutting it down gracefully when it
    /// should close or when `shutdown` turns true.
    pub async fn drive<F, E>(
        &self,
        mut conn: Pin<&mut F>,
        graceful: impl Fn(Pin<&mut F>),
        d: Deadlines,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), E>
    where
        F: std::future::Future<Output = Result<(), E>>,
    {
        let mut closing = false;
        // A graceful close that the peer does not complete (an HTTP/2 client that never
        // answers the GOAWAY's ping) is forced after this.
        let mut force_at: Option<Instant> = None;
        loop {
            let check = self.next_check(d);
            tokio::select! {
                r = conn.as_mut() => {
                    // What outlives the connection (an upgraded tunnel) is never idle.
                    self.closing.store(true, Ordering::Release);
                    return r;
                }
                _ = shutdown.changed(), if !closing => {
                    graceful(conn.as_mut());
                    closing = true;
                }
                _ = tokio::time::sleep_until(check), if !closing => {}
                _ = self.wake.notified(), if !closing => {}
                _ = tokio::time::sleep_until(force_at.unwrap_or_else(Instant::now)), if force_at.is_some() => {
                    self.closing.store(true, Ordering::Release);
                    return Ok(());
                }
            }
            if !closing {
                if let Some(why) = self.should_close(d) {
                    tracing::debug!(client = %self.client, reason = why, "closing connection");
                    graceful(conn.as_mut());
                    closing = true;
                    force_at = Some(Instant::now() + d.header.max(Duration::from_secs(1)));
                }
            }
        }
    }
}

/// One request on a connection: in flight until its response body is done or dropped.
/// Dropped before the response was produced, it counts as cancelled.
pub struct RequestGuard {
    state: Arc<ConnState>,
    responded: bool,
}

impl RequestGuard {
    pub fn new(state: Arc<ConnState>) -> RequestGuard {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.requests.fetch_add(1, Ordering::AcqRel);
        RequestGuard {
            state,
            responded: false,
        }
    }

    /// The response is ready. Only a forwarded exchange earns back a cancellation: the
    /// gateway's own instant refusals (404, 401) must not pad a rapid-reset allowance.
    pub fn responded(&mut self, forwarded: bool) {
        self.responded = true;
        if forwarded {
            self.state.completed.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.mark(&self.state.idle_since_ms);
        }
        // Only a cancellation changes what the connection must decide now (rapid reset);
        // idleness is found by the connection's own next look.
        if !self.responded {
            self.state.cancelled.fetch_add(1, Ordering::AcqRel);
            self.state.wake.notify_one();
        }
    }
}

/// A response body that keeps its request in flight until it is done.
pub struct Tracked<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, guard: RequestGuard) -> Tracked<B> {
        guard.state.bodies.fetch_add(1, Ordering::AcqRel);
        guard.state.progress();
        Tracked {
            inner,
            _guard: guard,
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self._guard.state.bodies.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if frame.is_ready() {
            self._guard.state.progress();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stream whose first bytes were already read (to enforce the first-byte deadline), put
/// back in front of the rest.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> Prefixed<S> {
    /// Wait up to `deadline` for the first bytes; `None` when none came (or the peer left).
    pub async fn first_bytes(mut inner: S, deadline: Duration) -> Option<Prefixed<S>> {
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(deadline, inner.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                buf.truncate(n);
                Some(Prefixed {
                    prefix: Bytes::from(buf),
                    inner,
                })
            }
            _ => None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
