//! Live connections: every upgraded (WebSocket) connection and every streaming response is
//! registered for its lifetime under its token's revocation keys. A matching revocation, or
//! the token's expiry, ends it: a WebSocket gets a close frame (1008, `token revoked` /
//! `token expired`) at a frame boundary and then its TCP connection is closed; a stream's
//! response simply ends.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounterVec, IntGauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::revocation::set::TokenKeys;
use crate::revocation::Kind;
use crate::upstream::UpstreamBody;
use crate::verify::Verified;

/// Why the gateway ended a live connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Revoked,
    Expired,
    /// The gateway is shutting down (WebSocket close 1001).
    Shutdown,
    /// The revocation set went stale under `on_stale: deny` (WebSocket close 1011).
    Stale,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Revoked => "revoked",
            CloseReason::Expired => "expired",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Stale => "stale",
        }
    }
    fn ws_code(self) -> u16 {
        match self {
            CloseReason::Revoked | CloseReason::Expired => 1008,
            CloseReason::Shutdown => 1001,
            CloseReason::Stale => 1011,
        }
    }
    fn ws_reason(self) -> &'static [u8] {
        match self {
            CloseReason::Revoked => b"token revoked",
            CloseReason::Expired => b"token expired",
            CloseReason::Shutdown => b"gateway shutting down",
            CloseReason::Stale => b"revocation status unavailable",
        }
    }
}

struct Conn {
    keys: TokenKeys,
    /// The token, for claim entries (`None` on `auth: none` routes).
    token: Option<Arc<Verified>>,
    close: watch::Sender<Option<CloseReason>>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    conns: HashMap<u64, Conn>,
    /// Revocation key → connections holding a token with that key.
    by_key: HashMap<u64, Vec<u64>>,
}

pub struct LiveRegistry {
    inner: Mutex<Inner>,
    pub open: IntGauge,
    pub closed: IntCounterVec,
}

impl LiveRegistry {
    pub fn new(open: IntGauge, closed: IntCounterVec) -> Arc<LiveRegistry> {
        Arc::new(LiveRegistry {
            inner: Mutex::new(Inner::default()),
            open,
            closed,
        })
    }

    /// Register a connection, under its token's keys when it has one; it stays registered
    /// until the returned guard is dropped.
    pub fn register(
        self: &Arc<Self>,
        token: Option<Arc<Verified>>,
        expires_in: Option<Duration>,
    ) -> Registration {
        let keys = token
            .as_ref()
            .map_or_else(TokenKeys::default, |v| v.revocation_keys);
        let (tx, rx) = watch::channel(None);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.next += 1;
        let id = inner.next;
        for k in [keys.jti, keys.sid, keys.sub].into_iter().flatten() {
            inner.by_key.entry(k).or_default().push(id);
        }
        inner.conns.insert(
            id,
            Conn {
                keys,
                token,
                close: tx,
            },
        );
        drop(inner);
        self.open.inc();
        Registration {
            id,
            registry: self.clone(),
            signal: rx,
            expires_in,
        }
    }

    /// A revocation arrived: signal every connection it matches. Returns how many.
    pub fn revoke(&self, kind: Kind, key: u64, issued_before: Option<u64>) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(ids) = inner.by_key.get(&key) else {
            return 0;
        };
        let mut n = 0;
        for id in ids {
            let Some(conn) = inner.conns.get(id) else {
                continue;
            };
            let matches = match kind {
                Kind::Sub => issued_before.is_some_and(|cutoff| conn.keys.iat < cutoff),
                Kind::Jti | Kind::Sid => true,
                // Not indexed by key: see `revoke_claim`.
                Kind::Claim => false,
            };
            if matches {
                conn.close
                    .send_if_modified(|r| r.replace(CloseReason::Revoked).is_none());
                n += 1;
            }
        }
        n
    }

    /// A claim entry arrived: signal every connection whose token `holds` its claim value
    /// and was issued before the cutoff. Claim entries are rare; every connection is looked
    /// at. Returns how many.
    pub fn revoke_claim(
        &self,
        holds: impl Fn(&serde_json::Map<String, serde_json::Value>) -> bool,
        issued_before: Option<u64>,
    ) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for conn in inner.conns.values() {
            let Some(token) = &conn.token else { continue };
            if issued_before.is_some_and(|cutoff| conn.keys.iat < cutoff) && holds(&token.claims) {
                conn.close
                    .send_if_modified(|r| r.replace(CloseReason::Revoked).is_none());
                n += 1;
            }
        }
        n
    }

    /// End every live connection (graceful shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for conn in inner.conns.values() {
            conn.close.send_if_modified(|r| r.replace(reason).is_none());
        }
    }

    /// End every live connection opened with a token (those of `auth: none` routes carry
    /// no revocation keys and stay).
    pub fn close_authenticated(&self, reason: CloseReason) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for conn in inner.conns.values() {
            if conn.token.is_some() {
                conn.close.send_if_modified(|r| r.replace(reason).is_none());
                n += 1;
            }
        }
        n
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .conns
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn unregister(&self, id: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conn) = inner.conns.remove(&id) {
            for k in [conn.keys.jti, conn.keys.sid, conn.keys.sub]
                .into_iter()
                .flatten()
            {
                if let Some(list) = inner.by_key.get_mut(&k) {
                    list.retain(|x| *x != id);
                    if list.is_empty() {
                        inner.by_key.remove(&k);
                    }
                }
            }
            self.open.dec();
        }
    }
}

/// A registered connection. Dropping it unregisters.
pub struct Registration {
    id: u64,
    registry: Arc<LiveRegistry>,
    signal: watch::Receiver<Option<CloseReason>>,
    /// Time until the token's `exp` (+ leeway), when expiry ends the connection.
    expires_in: Option<Duration>,
}

impl Registration {
    /// Resolves when the connection must end, and why.
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + 'static {
        let mut rx = self.signal.clone();
        let expiry = self.expires_in;
        async move {
            let revoked = async {
                loop {
                    if let Some(r) = *rx.borrow_and_update() {
                        return r;
                    }
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            match expiry {
                Some(d) => tokio::select! {
                    r = revoked => r,
                    _ = tokio::time::sleep(d) => CloseReason::Expired,
                },
                None => revoked.await,
            }
        }
    }

    pub fn count_close(&self, reason: CloseReason) {
        self.registry
            .closed
            .with_label_values(&[reason.as_str()])
            .inc();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.unregister(self.id);
    }
}

/// Resolves when a live connection must end.
type Closing = Pin<Box<dyn Future<Output = CloseReason> + Send>>;

/// A response body from the upstream; for a streaming response of an authenticated route it
/// ends when the connection is revoked or the token expires. An upstream silent mid-body
/// for longer than the body timeout cuts the response. It holds the gateway's in-flight
/// slot until it ends.
pub struct LiveBody {
    /// `None` once the gateway ended the stream.
    inner: Option<UpstreamBody>,
    live: Option<(Registration, Closing)>,
    idle: Option<crate::clock::IdleDeadline>,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Why a response body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Upstream(#[from] crate::upstream::ResponseBodyError),
    #[error("the upstream sent nothing within the body timeout")]
    Idle,
}

impl LiveBody {
    pub fn plain(inner: UpstreamBody) -> LiveBody {
        LiveBody {
            inner: Some(inner),
            live: None,
            idle: None,
            _slot: None,
        }
    }

    pub fn watched(inner: UpstreamBody, reg: Registration) -> LiveBody {
        let closed = Box::pin(reg.closed());
        LiveBody {
            live: Some((reg, closed)),
            ..LiveBody::plain(inner)
        }
    }

    /// Cut the body after `idle` without a frame; hold `slot` until the body ends.
    pub fn bounded(
        mut self,
        idle: Duration,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> LiveBody {
        self.idle = Some(crate::clock::IdleDeadline::new(idle));
        self._slot = slot;
        self
    }
}

impl Body for LiveBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some((reg, closed)) = self.live.as_mut() {
            if let Poll::Ready(reason) = closed.as_mut().poll(cx) {
                reg.count_close(reason);
                self.live = None;
                // End the stream: the client sees the response finish.
                self.inner = None;
                return Poll::Ready(None);
            }
        }
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(idle) = this.idle.as_mut() {
                    idle.reset();
                }
                if frame.is_none() {
                    this._slot = None;
                }
                Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
            }
            Poll::Pending => {
                if this.idle.as_mut().is_some_and(|idle| idle.poll_expired(cx)) {
                    this.inner = None;
                    this._slot = None;
                    return Poll::Ready(Some(Err(BodyError::Idle)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// What an upgraded connection keeps alive for as long as it lives (the client
/// connection's slot under `max_connections`), passed as a request extension.
#[derive(Clone)]
pub struct Hold(pub Arc<dyn std::any::Any + Send + Sync>);

/// Tracks WebSocket frame boundaries in one direction of the byte stream.
#[derive(Default)]
pub struct Frames {
    header: Vec<u8>,
    remaining: u64,
}

impl Frames {
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.header.is_empty()
    }

    /// Consume `chunk`; returns the offsets in it at which a frame ends.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<usize> {
        let mut boundaries = Vec::new();
        let mut pos = 0;
        while pos < chunk.len() {
            if self.remaining > 0 {
                let take =
                    (chunk.len() - pos).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                pos += take;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    boundaries.push(pos);
                }
                continue;
            }
            self.header.push(chunk[pos]);
            pos += 1;
            if let Some(len) = header_complete(&self.header) {
                self.header.clear();
                self.remaining = len;
                if len == 0 {
                    boundaries.push(pos);
                }
            }
        }
        boundaries
    }
}

/// The payload length once `h` holds a whole frame header.
fn header_complete(h: &[u8]) -> Option<u64> {
    if h.len() < 2 {
        return None;
    }
    let masked = h[1] & 0x80 != 0;
    let len7 = h[1] & 0x7f;
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let need = 2 + ext + if masked { 4 } else { 0 };
    if h.len() < need {
        return None;
    }
    Some(match len7 {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes(h[2..10].try_into().unwrap_or([0; 8])),
        n => u64::from(n),
    })
}

/// Per-direction relay buffer of a WebSocket.
const RELAY_BUFFER: usize = 4096;

fn close_frame(reason: CloseReason) -> Vec<u8> {
    let text = reason.ws_reason();
    let mut f = vec![0x88, (2 + text.len()) as u8];
    f.extend_from_slice(&reason.ws_code().to_be_bytes());
    f.extend_from_slice(text);
    f
}

/// Relay an upgraded WebSocket connection until either side closes, or until the gateway
/// ends it: then the client gets a close frame at a frame boundary and both TCP connections
/// are closed.
pub async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    reg: Registration,
    hold: (Option<Hold>, Option<tokio::sync::OwnedSemaphorePermit>),
) {
    let _hold = hold;
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket upgrade did not complete");
            return;
        }
    };
    let (mut cr, mut cw) = tokio::io::split(TokioIo::new(client));
    let (mut ur, mut uw) = tokio::io::split(TokioIo::new(upstream));
    // Small buffers: an idle socket costs its buffers for as long as it lives.
    let to_upstream = tokio::spawn(async move {
        let mut buf = vec![0u8; RELAY_BUFFER];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if uw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = uw.shutdown().await;
    });
    let mut closed = Box::pin(reg.closed());
    let mut pending: Option<CloseReason> = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut frames = Frames::default();
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        if let Some(reason) = pending {
            if frames.at_boundary() {
                let _ = cw.write_all(&close_frame(reason)).await;
                let _ = cw.shutdown().await;
                reg.count_close(reason);
                break;
            }
        }
        tokio::select! {
            n = ur.read(&mut buf) => {
                let n = match n { Ok(0) | Err(_) => break, Ok(n) => n };
                let chunk = &buf[..n];
                let boundaries = frames.feed(chunk);
                match (pending, boundaries.first()) {
                    // Revoked mid-frame: forward up to the end of that frame, then close.
                    (Some(reason), Some(&end)) => {
                        let _ = cw.write_all(&chunk[..end]).await;
                        let _ = cw.write_all(&close_frame(reason)).await;
                        let _ = cw.shutdown().await;
                        reg.count_close(reason);
                        break;
                    }
                    _ => {
                        if cw.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                }
            }
            reason = &mut closed, if pending.is_none() => {
                pending = Some(reason);
                // A frame cut mid-way gets a second to finish; after that, cut the TCP.
                deadline = Some(tokio::time::Instant::now() + Duration::from_secs(1));
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                if let Some(reason) = pending {
                    reg.count_close(reason);
                }
                break;
            }
        }
    }
    to_upstream.abort();
    drop(reg);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frame boundaries are found across chunk splits, for short and extended lengths.
    #[test]
    fn frame_boundaries() {
        let mut f = Frames::default();
        // A 3-byte text frame, then the header of a 300-byte frame split across chunks.
        let mut data = vec![0x81, 3, b'a', b'b', b'c', 0x82, 126, 0x01];
        assert_eq!(f.feed(&data), vec![5]);
        assert!(!f.at_boundary());
        data = vec![0x2c];
        data.extend(std::iter::repeat_n(0u8, 300));
        assert_eq!(f.feed(&data), vec![301]);
        assert!(f.at_boundary());
        // Masked client frame with an empty payload.
        assert_eq!(f.feed(&[0x89, 0x80, 1, 2, 3, 4]), vec![6]);
    }
}
