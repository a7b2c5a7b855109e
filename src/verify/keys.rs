//! Per-issuer signing keys: fetched from a JWKS URL (explicit or by OIDC discovery), read
//! from a file, or a configured HMAC secret. Keys are swapped in atomically; the request
//! path only reads. An unknown `kid` triggers at most one refetch per issuer at a time and
//! at most one per `jwks_refetch_interval`, so a flood of random kids never becomes a flood
//! to the identity provider.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::backoff::backoff;
use crate::clock::Clock;
use crate::http_client::{self, HttpsClient, Protocol};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::Algorithm;
use serde_json::Value;

pub use super::jwk::{alg_bit, audit_key_files, parse_jwks, parse_jwks_explained, Key};
use crate::config::{IssuerConfig, KeySource};
use crate::metrics::Metrics;

/// Largest key document accepted: a JWKS is a few KiB; more is an attack or a mistake.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One generation of an issuer's keys.
pub struct KeySet {
    pub keys: Vec<Key>,
    /// When the keys were last confirmed by the source; `None` for a secret (never stale).
    pub confirmed: Option<Instant>,
    /// Changes whenever the keys themselves change: cached verifications of an older
    /// epoch are verified again.
    pub epoch: u64,
    fingerprint: u64,
}

impl KeySet {
    fn empty(clock: &Clock) -> KeySet {
        KeySet {
            keys: Vec::new(),
            confirmed: Some(clock.now() - Duration::from_secs(365 * 86_400)),
            epoch: 0,
            fingerprint: 0,
        }
    }
}

pub enum Lookup<'a> {
    Found(&'a Key),
    Unknown,
    /// No confirmed keys within `jwks_max_stale`: fail closed.
    Unavailable,
}

pub struct IssuerKeys {
    pub cfg: IssuerConfig,
    current: ArcSwap<KeySet>,
    /// Set once the first usable key set is in place.
    loaded: std::sync::atomic::AtomicBool,
    /// Completed fetch attempts, so waiters on the single-flight lock can tell that
    /// someone else fetched while they waited.
    attempts: AtomicU64,
    refetch: tokio::sync::Mutex<Option<Instant>>,
    fetcher: Fetcher,
    metrics: Metrics,
    clock: Clock,
    /// Set when a reloaded configuration no longer uses these keys: the refresh task ends.
    retired: tokio::sync::watch::Sender<bool>,
}

impl IssuerKeys {
    /// Stop refreshing: a new configuration dropped or changed this issuer.
    pub fn retire(&self) {
        self.retired.send_replace(true);
    }

    pub fn new(cfg: IssuerConfig, ctx: &super::Context) -> Arc<IssuerKeys> {
        let set = match &cfg.keys {
            KeySource::Secret(s) => KeySet {
                keys: vec![Key::secret(
                    s,
                    cfg.algorithms.iter().fold(0, |m, a| m | alg_bit(*a)),
                )],
                confirmed: None,
                epoch: 1,
                fingerprint: 1,
            },
            _ => KeySet::empty(&ctx.clock),
        };
        let loaded = matches!(cfg.keys, KeySource::Secret(_));
        ctx.metrics.issuer(&cfg.name);
        Arc::new(IssuerKeys {
            cfg,
            current: ArcSwap::from_pointee(set),
            loaded: loaded.into(),
            attempts: AtomicU64::new(0),
            refetch: tokio::sync::Mutex::new(None),
            fetcher: ctx.fetcher.clone(),
            metrics: ctx.metrics.clone(),
            clock: ctx.clock.clone(),
            retired: tokio::sync::watch::channel(false).0,
        })
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    pub fn epoch(&self) -> u64 {
        self.current.load().epoch
    }

    /// Usable keys are in place and not past `jwks_max_stale`.
    pub fn ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire) && !self.is_stale(&self.current.load())
    }

    pub fn is_stale(&self, set: &KeySet) -> bool {
        set.confirmed
            .is_some_and(|t| self.clock.since(t) > self.cfg.jwks_max_stale)
    }

    /// Find the key for `kid` able to verify `alg`. A token without `kid` is accepted only
    /// when exactly one key fits the algorithm.
    pub fn lookup<'a>(&self, set: &'a KeySet, kid: Option<&str>, alg: Algorithm) -> Lookup<'a> {
        if self.is_stale(set) || !self.loaded.load(Ordering::Acquire) {
            return Lookup::Unavailable;
        }
        let bit = alg_bit(alg);
        // A shared secret is the issuer's only key: a `kid` in an HMAC token names nothing.
        let kid = if matches!(self.cfg.keys, KeySource::Secret(_)) {
            None
        } else {
            kid
        };
        let mut fits = set.keys.iter().filter(|k| k.algs & bit != 0);
        match kid {
            Some(kid) => fits
                .find(|k| k.kid.as_deref() == Some(kid))
                .map_or(Lookup::Unknown, Lookup::Found),
            None => match (fits.next(), fits.next()) {
                (Some(k), None) => Lookup::Found(k),
                _ => Lookup::Unknown,
            },
        }
    }

    /// Called on an unknown `kid`: refetch once, shared by everyone waiting, and not more
    /// often than `jwks_refetch_interval`. Returns whether a fetch completed since the
    /// caller looked, i.e. whether looking again can help.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        if matches!(self.cfg.keys, KeySource::Secret(_)) {
            return false;
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let mut last = self.refetch.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen {
            return true;
        }
        if last.is_some_and(|t| self.clock.since(t) < self.cfg.jwks_refetch_interval) {
            return false;
        }
        *last = Some(self.clock.now());
        self.refresh().await.is_ok()
    }

    /// Fetch and install the keys; on failure the old keys stay (until `jwks_max_stale`).
    /// Returns the `Cache-Control: max-age` the source sent, if any.
    pub async fn refresh(&self) -> Result<Option<Duration>, String> {
        let result = self.fetch().await;
        self.attempts.fetch_add(1, Ordering::AcqRel);
        let issuer = self.cfg.name.as_str();
        match result {
            Ok((doc, max_age)) => {
                let keys = parse_jwks(&doc, &self.cfg);
                if keys.is_empty() {
                    self.metrics.jwks_refresh(issuer, "no_usable_keys");
                    return Err("the key set holds no usable key".to_owned());
                }
                let fingerprint = fingerprint(&doc);
                let old = self.current.load();
                let epoch = if old.fingerprint == fingerprint {
                    old.epoch
                } else {
                    old.epoch + 1
                };
                self.metrics.jwks_keys(issuer, keys.len());
                self.current.store(Arc::new(KeySet {
                    keys,
                    confirmed: Some(self.clock.now()),
                    epoch,
                    fingerprint,
                }));
                self.loaded.store(true, Ordering::Release);
                self.metrics.jwks_refresh(issuer, "ok");
                Ok(max_age)
            }
            Err(e) => {
                self.metrics.jwks_refresh(issuer, "error");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<(Bytes, Option<Duration>), String> {
        match &self.cfg.keys {
            KeySource::Secret(_) => Err("a secret is not fetched".to_owned()),
            KeySource::File(path) => {
                let data = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if data.len() > MAX_DOCUMENT_BYTES {
                    return Err(format!("{} is larger than 1 MiB", path.display()));
                }
                Ok((Bytes::from(data), None))
            }
            KeySource::Uri(uri) => self.fetcher.get(uri).await,
            KeySource::Discovery => {
                let base = self.cfg.issuer.trim_end_matches('/');
                let url: Uri = format!("{base}/.well-known/openid-configuration")
                    .parse()
                    .map_err(|_| "the issuer is not a URL".to_owned())?;
                let (doc, _) = self.fetcher.get(&url).await?;
                let doc: Value = serde_json::from_slice(&doc)
                    .map_err(|e| format!("discovery document is not JSON: {e}"))?;
                // OIDC Discovery §4.3: the document must name the issuer we asked about.
                if doc.get("issuer").and_then(Value::as_str) != Some(self.cfg.issuer.as_str()) {
                    return Err("discovery document names another issuer".to_owned());
                }
                let jwks: Uri = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .filter(|u: &Uri| matches!(u.scheme_str(), Some("https" | "http")))
                    .ok_or_else(|| "discovery document has no usable jwks_uri".to_owned())?;
                self.fetcher.get(&jwks).await
            }
        }
    }

    /// Background refresh: on `jwks_refresh` (or the source's max-age within bounds),
    /// with backoff while the source fails. Files are also watched for changes.
    pub async fn run(self: Arc<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        if matches!(self.cfg.keys, KeySource::Secret(_)) {
            return;
        }
        let mut retired = self.retired.subscribe();
        tokio::select! {
            _ = self.clone().refresh_loop(shutdown) => {}
            _ = retired.wait_for(|r| *r) => {}
        }
    }

    async fn refresh_loop(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let refresh = self.cfg.jwks_refresh;
        let floor = refresh.min(Duration::from_secs(30));
        let mut failures: u32 = 0;
        let mut file_stamp = self.file_stamp().await;
        loop {
            let delay = match self.refresh().await {
                Ok(max_age) => {
                    failures = 0;
                    max_age.unwrap_or(refresh).clamp(floor, refresh)
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(issuer = %self.cfg.name, error = %e, "JWKS refresh failed; keeping the cached keys until jwks_max_stale");
                    backoff(failures).min(refresh)
                }
            };
            let deadline = tokio::time::Instant::now() + delay;
            // Files: poll their stamp every second so an edit takes effect promptly.
            loop {
                let step = if matches!(self.cfg.keys, KeySource::File(_)) {
                    Duration::from_secs(1)
                } else {
                    delay
                };
                let wake = (tokio::time::Instant::now() + step).min(deadline);
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = shutdown.changed() => return,
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                let stamp = self.file_stamp().await;
                if stamp != file_stamp {
                    file_stamp = stamp;
                    break;
                }
            }
        }
    }

    async fn file_stamp(&self) -> Option<(SystemTime, u64)> {
        let KeySource::File(p) = &self.cfg.keys else {
            return None;
        };
        let m = tokio::fs::metadata(p).await.ok()?;
        Some((m.modified().ok()?, m.len()))
    }
}

fn fingerprint(doc: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = foldhash::quality::FixedState::default().build_hasher();
    h.write(doc);
    h.finish().max(1)
}

/// Fetches key documents over http(s) with a size limit and a timeout.
#[derive(Clone)]
pub struct Fetcher {
    client: HttpsClient<Empty<Bytes>>,
}

impl Fetcher {
    pub fn new() -> Fetcher {
        Fetcher {
            client: http_client::build(http_client::system_roots(), Protocol::Http1, FETCH_TIMEOUT),
        }
    }

    pub async fn get(&self, uri: &Uri) -> Result<(Bytes, Option<Duration>), String> {
        let req = Request::get(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("jwtgate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("cannot reach {uri}: {e}"))?;
            if resp.status() != StatusCode::OK {
                return Err(format!("{uri} answered {}", resp.status()));
            }
            let max_age = resp
                .headers()
                .get(http::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_max_age);
            let body = Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading {uri}: {e}"))?
                .to_bytes();
            Ok((body, max_age))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fut)
            .await
            .map_err(|_| format!("{uri} did not answer within {FETCH_TIMEOUT:?}"))?
    }
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher::new()
    }
}

fn parse_max_age(v: &str) -> Option<Duration> {
    v.split(',').find_map(|d| {
        let d = d.trim();
        let (k, val) = d.split_once('=')?;
        k.trim().eq_ignore_ascii_case("max-age").then(|| {
            val.trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs)
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Cache-Control: max-age` is read among other directives, case-insensitively.
    #[test]
    fn max_age_parsing() {
        assert_eq!(
            parse_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_max_age("Max-Age=\"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_max_age("no-store"), None);
        assert_eq!(parse_max_age("max-age=-1"), None);
    }
}
