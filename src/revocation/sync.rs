//! Keeping a gateway's revocation set current: a snapshot (paged `GET`), then the SSE
//! stream from the cursor; on any failure, reconnect with backoff and jitter and resume
//! from the last *applied* cursor, so an event cut mid-way is fetched again, never lost.
//! The set is saved atomically to `snapshot_file` so a restart while the control plane is
//! down still enforces what was known.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use serde::Deserialize;
use tokio::sync::watch;

use super::set::RevocationSet;
use super::Entry;
use crate::backoff::backoff;
use crate::clock::Clock;
use crate::http_client::{self, HttpsClient, Protocol};

/// How current the set is.
#[derive(Default)]
pub struct SyncState {
    clock: Clock,
    /// Last time the control plane (or the local store) was heard from, Unix ms.
    last_contact_ms: AtomicU64,
    /// A first sync completed, or a snapshot file was loaded.
    ready: AtomicBool,
    /// The control plane's `max_token_lifetime` in seconds (0: not heard yet).
    control_lifetime: AtomicU64,
}

impl SyncState {
    pub fn new(clock: Clock) -> SyncState {
        SyncState {
            clock,
            ..SyncState::default()
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn contact(&self) {
        self.last_contact_ms
            .store(self.clock.unix_ms(), Ordering::Release);
    }

    /// The control plane keeps `sub` cutoffs this long.
    pub fn set_control_lifetime(&self, secs: u64) {
        self.control_lifetime.store(secs, Ordering::Release);
    }

    /// The control plane's `max_token_lifetime`, once heard.
    pub fn control_lifetime(&self) -> Option<Duration> {
        match self.control_lifetime.load(Ordering::Acquire) {
            0 => None,
            s => Some(Duration::from_secs(s)),
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// When the control plane was last heard from (Unix ms), once the set is loaded.
    pub fn last_contact_unix_ms(&self) -> Option<u64> {
        self.is_ready()
            .then(|| self.last_contact_ms.load(Ordering::Acquire))
    }

    /// Time since the control plane was last heard from.
    pub fn lag(&self) -> Duration {
        Duration::from_millis(
            self.clock
                .unix_ms()
                .saturating_sub(self.last_contact_ms.load(Ordering::Acquire)),
        )
    }
}

/// Apply one entry to the set (and to anything else that follows revocations).
pub type Apply = Arc<dyn Fn(&Entry) + Send + Sync>;

#[derive(Deserialize)]
struct Page {
    entries: Vec<Entry>,
    cursor: String,
    more: bool,
    /// The store's epoch and newest cursor (absent from control planes before 0.1.1).
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    head: Option<String>,
    /// The control plane's `max_token_lifetime`, in seconds.
    #[serde(default)]
    max_token_lifetime: Option<u64>,
}

/// The client side of the control API.
pub struct SyncClient {
    base: String,
    token: Option<HeaderValue>,
    client: HttpsClient<Empty<Bytes>>,
    set: Arc<RevocationSet>,
    apply: Apply,
    state: Arc<SyncState>,
    heartbeat: Duration,
    /// The longest wait between reconnects (a third of `max_staleness`, at most 500 ms): a
    /// revocation written once the control plane is back must not wait out a long backoff.
    retry_cap: Duration,
}

const PAGE_BYTES: usize = 16 * 1024 * 1024;
const EVENT_BYTES: usize = 64 * 1024;

impl SyncClient {
    pub fn new(
        url: &Uri,
        token: Option<&str>,
        set: Arc<RevocationSet>,
        apply: Apply,
        state: Arc<SyncState>,
        max_staleness: Duration,
    ) -> SyncClient {
        let token = token
            .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        SyncClient {
            base: url.to_string().trim_end_matches('/').to_owned(),
            token,
            client: http_client::build(
                http_client::system_roots(),
                Protocol::Http1,
                Duration::from_secs(10),
            ),
            set,
            apply,
            state,
            // Heard from at least three times per staleness window, at most once a second.
            heartbeat: (max_staleness / 3)
                .clamp(Duration::from_millis(200), Duration::from_secs(5)),
            retry_cap: (max_staleness / 3)
                .clamp(Duration::from_millis(100), Duration::from_millis(500)),
        }
    }

    fn request(&self, path_and_query: &str) -> Result<Request<Empty<Bytes>>, String> {
        let mut req = Request::get(format!("{}{path_and_query}", self.base))
            .header(ACCEPT, "application/json, text/event-stream")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        if let Some(t) = &self.token {
            req.headers_mut().insert(AUTHORIZATION, t.clone());
        }
        Ok(req)
    }

    /// Run until `shutdown`: sync, stream, and on failure back off and resume.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            let result = tokio::select! {
                r = self.session(&mut failures) => r,
                _ = shutdown.changed() => return,
            };
            failures = failures.saturating_add(1);
            let error = result.err().unwrap_or_default();
            // Unreachable or cut off: try again soon, so a revocation written once the control
            // plane is back waits no long backoff. The control plane answered with an error
            // (its store down, a refusal): back off further, up to 5 s, to spare it.
            let cap = if error.starts_with("control plane ") {
                Duration::from_secs(5)
            } else {
                self.retry_cap
            };
            // Capped, and still jittered under the cap, so gateways do not reconnect in step.
            let delay = match backoff(failures) {
                d if d > cap => cap.mul_f64(0.5 + fastrand::f64() / 2.0),
                d => d,
            };
            tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "revocation sync interrupted; enforcing the last known set");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One connection's worth of syncing. Only returns on failure.
    async fn session(&self, failures: &mut u32) -> Result<(), String> {
        // 1. Catch up by pages from the cursor (everything live when the cursor is 0).
        let mut restarted = false;
        loop {
            let since = self.set.cursor();
            let req = self.request(&format!(
                "/v1/revocations?since={since}&limit=5000&tombstones=1&claims=1"
            ))?;
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("cannot reach the control plane: {e}"))?;
            if resp.status() != StatusCode::OK {
                return Err(format!(
                    "control plane answered {} to the snapshot request",
                    resp.status()
                ));
            }
            let body = Limited::new(resp.into_body(), PAGE_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| format!("control plane sent an invalid page: {e}"))?;
            // A store recreated (another epoch) or restored from an older backup (its head
            // below our cursor) does not know our cursor: start over from zero, or every
            // entry below the old cursor would be skipped while we report ready.
            if let Some(epoch) = &page.epoch {
                let known = self.set.epoch();
                let behind = page
                    .head
                    .as_deref()
                    .and_then(|h| h.parse::<u64>().ok())
                    .is_some_and(|head| head < since);
                if (!known.is_empty() && known != *epoch) || behind {
                    // Once per session: replicas disagreeing would otherwise loop here.
                    if restarted {
                        return Err(
                            "the control plane's store changed again during a resync".into()
                        );
                    }
                    restarted = true;
                    tracing::warn!(
                        epoch_changed = known != *epoch,
                        head_behind_cursor = behind,
                        "the revocation store was recreated or restored; syncing from the beginning"
                    );
                    self.set.restart(epoch);
                    continue;
                }
                self.set.set_epoch(epoch);
            }
            if let Some(secs) = page.max_token_lifetime {
                self.state.set_control_lifetime(secs);
            }
            for e in &page.entries {
                (self.apply)(e);
            }
            if let Ok(c) = page.cursor.parse() {
                self.set.set_cursor(c);
            }
            self.state.contact();
            if !page.more {
                break;
            }
        }
        self.state.set_ready();
        *failures = 0;

        // 2. Follow the stream.
        let cursor = self.set.cursor();
        let epoch = self.set.epoch();
        let mut req = self.request(&format!(
            "/v1/revocations/stream?since={cursor}&heartbeat_ms={}&epoch={epoch}&tombstones=1&claims=1",
            self.heartbeat.as_millis()
        ))?;
        if let Ok(v) = HeaderValue::from_str(&cursor.to_string()) {
            req.headers_mut().insert("last-event-id", v);
        }
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("cannot open the stream: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!(
                "control plane answered {} to the stream request",
                resp.status()
            ));
        }
        let mut body = resp.into_body();
        let mut parser = EventParser::default();
        loop {
            // Heartbeats arrive every `heartbeat`: silence for three of them is a dead link.
            let frame = tokio::time::timeout(self.heartbeat * 3, body.frame())
                .await
                .map_err(|_| "the stream went silent".to_owned())?;
            let Some(frame) = frame else {
                return Err("the stream ended".into());
            };
            let frame = frame.map_err(|e| format!("the stream broke: {e}"))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            self.state.contact();
            for event in parser.feed(data)? {
                let entry: Entry = serde_json::from_str(&event)
                    .map_err(|e| format!("invalid event from the control plane: {e}"))?;
                (self.apply)(&entry);
            }
        }
    }
}

/// Incremental `text/event-stream` parsing: only complete events (ended by a blank line)
/// come out, so a stream cut mid-event applies nothing of that event.
#[derive(Default)]
pub struct EventParser {
    buf: Vec<u8>,
}

impl EventParser {
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<String>, String> {
        self.buf.extend_from_slice(data);
        if self.buf.len() > EVENT_BYTES + data.len() && !self.buf.windows(2).any(|w| w == b"\n\n") {
            return Err("an event larger than 64 KiB".into());
        }
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let mut data = String::new();
            for line in text.lines() {
                if let Some(d) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            if !data.is_empty() {
                out.push(data);
            }
        }
        Ok(out)
    }
}

/// Save the set whenever it changed (checked every second) and once more at shutdown;
/// drop expired entries every `purge_interval`.
pub async fn maintain(
    set: Arc<RevocationSet>,
    clock: Clock,
    file: Option<std::path::PathBuf>,
    purge_interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut saved = 0;
    let mut last_purge = clock.now();
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(purge_interval.min(Duration::from_secs(1))) => false,
            _ = shutdown.changed() => true,
        };
        if clock.since(last_purge) >= purge_interval {
            last_purge = clock.now();
            set.purge(clock.unix());
        }
        if let Some(path) = &file {
            let version = set.version();
            if version != saved || stop {
                let s = set.clone();
                let p = path.clone();
                match tokio::task::spawn_blocking(move || s.save(&p)).await {
                    Ok(Ok(())) => saved = version,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, file = %path.display(), "cannot save the revocation snapshot")
                    }
                    Err(_) => {}
                }
            }
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events split anywhere come out whole; a trailing partial event stays pending.
    #[test]
    fn parser_handles_split_events() {
        let mut p = EventParser::default();
        assert!(p.feed(b"id: 1\nda").expect("ok").is_empty());
        assert_eq!(
            p.feed(b"ta: {\"a\":1}\n\n: heartbeat\n\nid: 2\ndata: x")
                .expect("ok"),
            vec!["{\"a\":1}".to_owned()]
        );
        assert_eq!(p.feed(b"\n\n").expect("ok"), vec!["x".to_owned()]);
    }
}
