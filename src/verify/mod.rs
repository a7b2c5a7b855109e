//! Token verification: JOSE header checks, issuer by `iss`, key by `kid`, signature, then
//! the registered claims — and the verified-token cache that lets a repeated token skip
//! the signature while `exp` is still checked on every request.

pub mod jwk;
pub mod keys;
pub mod policy;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::config::{parse_algorithm, IdentityHeader, IssuerConfig, TokenCacheConfig};
use crate::error::Reject;
use crate::metrics::Metrics;
use crate::revocation::set::{RevocationSet, TokenKeys};
use keys::{Fetcher, IssuerKeys, Lookup};
use std::sync::atomic::AtomicU64;

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What a verified token grants, computed once and shared by every request that
/// presents the same token.
#[derive(Debug)]
pub struct Verified {
    pub issuer: usize,
    pub claims: Map<String, Value>,
    pub exp: u64,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
    leeway: u64,
    /// Scopes from `scope` (space-separated) or `scp` (array or string).
    pub scopes: Box<[Box<str>]>,
    /// Identity headers to inject, values already checked.
    pub identity: Box<[(HeaderName, HeaderValue)]>,
    key_epoch: u64,
    /// Revocation keys (`jti`, `sid`, `sub`, `iat`) hashed once for the set's lookups.
    pub revocation_keys: TokenKeys,
    /// The revocation-set version this token was last found clean at.
    pub revocation_checked: AtomicU64,
    /// What this verification holds in memory (estimated), for the cache's byte budget.
    bytes: u32,
}

/// The identity headers `headers` name, from `claims`: a claim that is absent sets no
/// header; one that cannot be forwarded faithfully refuses the request.
fn identity_of(
    claims: &Map<String, Value>,
    headers: &[IdentityHeader],
) -> Result<Vec<(HeaderName, HeaderValue)>, Reject> {
    headers
        .iter()
        .filter_map(|h| {
            let v = policy::lookup(claims, &h.claim)?;
            Some(identity_value(v).map(|value| (h.name.clone(), value)).ok_or_else(|| {
                tracing::info!(header = %h.name, "token refused: its identity claim is not a string, number, boolean or array of them without `,`, or holds characters a header cannot carry faithfully");
                Reject::UnusableClaim
            }))
        })
        .collect()
}

impl Verified {
    /// A route's own identity headers, from the verified claims.
    pub fn identity_for(
        &self,
        headers: &[IdentityHeader],
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Reject> {
        identity_of(&self.claims, headers)
    }

    /// The verified claims as one header value: base64url (no padding) of their JSON.
    pub fn payload_header(&self) -> Option<HeaderValue> {
        use base64::Engine;
        let json = serde_json::to_vec(&self.claims).ok()?;
        HeaderValue::from_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)).ok()
    }
}

/// Bytes one cache entry costs beyond its token and claims: the entry's own structures
/// (moka's entry and deque nodes, the `Arc`s, this struct), measured with
/// `cargo bench --bench cache_memory`.
const ENTRY_OVERHEAD: usize = 1_100;

/// Heap bytes a parsed JSON value holds (strings, map nodes, arrays), estimated.
fn json_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.len() * 32 + a.iter().map(json_bytes).sum::<usize>(),
        Value::Object(m) => map_bytes(m),
        _ => 0,
    }
}

/// Heap bytes of a JSON object's entries (key, value, map node), estimated.
fn map_bytes(m: &Map<String, Value>) -> usize {
    m.iter()
        .map(|(k, v)| k.len() + 24 + 32 + 16 + json_bytes(v))
        .sum()
}

impl Verified {
    /// What this verification holds in memory beyond its token, estimated.
    fn heap_bytes(&self) -> u32 {
        let claims = map_bytes(&self.claims);
        let scopes: usize = self.scopes.iter().map(|s| s.len() + 16).sum();
        let identity: usize = self
            .identity
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 64)
            .sum();
        u32::try_from(ENTRY_OVERHEAD + claims + scopes + identity).unwrap_or(u32::MAX)
    }

    /// Time left until `exp` (+ leeway): when a live connection of this token must end.
    pub fn expires_in(&self, now: u64) -> Duration {
        Duration::from_secs(self.exp.saturating_add(self.leeway).saturating_sub(now))
    }

    /// The time checks that must hold on every request, cached or not.
    fn check_time(&self, now: u64) -> Result<(), Reject> {
        if self.exp.saturating_add(self.leeway) < now {
            return Err(Reject::Expired);
        }
        if self
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(self.leeway))
        {
            return Err(Reject::NotYetValid);
        }
        Ok(())
    }
}

/// What every verifier of a process shares: the key fetcher, the metrics, the clock.
#[derive(Clone, Default)]
pub struct Context {
    pub fetcher: Fetcher,
    pub metrics: Metrics,
    pub clock: Clock,
}

type TokenCache = moka::sync::Cache<Arc<str>, Arc<Verified>, foldhash::fast::RandomState>;

pub struct Verifier {
    pub issuers: Vec<Arc<IssuerKeys>>,
    /// The index of each issuer by its exact `iss`.
    by_iss: HashMap<String, usize, foldhash::fast::RandomState>,
    cache: TokenCache,
    /// `max_entries: 0` turns the cache off: no lookup, no insertion (and no eviction work).
    caching: bool,
    identity_headers: Vec<IdentityHeader>,
    strict_identity: bool,
    revocations: Option<Arc<RevocationSet>>,
    metrics: Metrics,
}

#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    crit: Option<Value>,
}

impl Verifier {
    /// Verify tokens of `issuers`, caching up to `cache.max_entries` verifications. Key sets
    /// of issuers whose configuration equals one in `previous` are kept (with their keys).
    pub fn new(
        issuers: &[IssuerConfig],
        cache: &TokenCacheConfig,
        ctx: &Context,
        previous: &[Arc<IssuerKeys>],
    ) -> Verifier {
        let configs = issuers;
        let issuers: Vec<_> = configs
            .iter()
            .map(|c| match previous.iter().find(|p| p.cfg == *c) {
                Some(kept) => kept.clone(),
                None => IssuerKeys::new(c.clone(), ctx),
            })
            .collect();
        let by_iss = configs
            .iter()
            .enumerate()
            .map(|(i, c)| (c.issuer.clone(), i))
            .collect();
        // Bounded in bytes: each entry weighs what it holds (the token, its claims), and at
        // least `max_bytes / max_entries`, so neither bound is passed.
        let caching = cache.max_entries > 0;
        let floor =
            (cache.max_bytes / cache.max_entries.max(1)).clamp(1, u64::from(u32::MAX)) as u32;
        let cache = moka::sync::Cache::builder()
            .max_capacity(if cache.max_entries == 0 {
                0
            } else {
                cache.max_bytes
            })
            .weigher(move |token: &Arc<str>, v: &Arc<Verified>| {
                (token.len() as u32).saturating_add(v.bytes).max(floor)
            })
            .time_to_live(cache.ttl)
            .build_with_hasher(foldhash::fast::RandomState::default());
        Verifier {
            issuers,
            by_iss,
            caching,
            cache,
            identity_headers: Vec::new(),
            strict_identity: false,
            revocations: None,
            metrics: ctx.metrics.clone(),
        }
    }

    /// Compute the identity headers of each verified token.
    pub fn with_identity_headers(mut self, headers: &[IdentityHeader]) -> Verifier {
        self.identity_headers = headers.to_vec();
        self
    }

    /// Refuse tokens whose `sub`, `sid` or `jti` is not a string, and tokens without `sub`
    /// when their issuer requires one: what the gateway forwards and revokes by must be
    /// unambiguous. (The control plane checks logout tokens' claims itself.)
    pub fn strict_identity(mut self) -> Verifier {
        self.strict_identity = true;
        self
    }

    /// Compute each verified token's keys in `set`, for the revocation check.
    pub fn with_revocations(mut self, set: Option<Arc<RevocationSet>>) -> Verifier {
        self.revocations = set;
        self
    }

    /// Whether every issuer has usable keys.
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(|i| i.ready())
    }

    /// Verify `token` for a route that accepts `allowed` issuers, at time `now`.
    pub async fn verify(
        &self,
        token: &str,
        allowed: &[usize],
        now: u64,
    ) -> Result<Arc<Verified>, Reject> {
        if let Some(hit) = self.caching.then(|| self.cache.get(token)).flatten() {
            let keys = &self.issuers[hit.issuer];
            let set = keys.snapshot();
            if keys.is_stale(&set) {
                return Err(Reject::KeysUnavailable);
            }
            if hit.key_epoch == set.epoch {
                self.metrics.token_cache_hits.inc();
                if !allowed.contains(&hit.issuer) {
                    return Err(Reject::UnknownIssuer);
                }
                hit.check_time(now)?;
                return Ok(hit);
            }
        }
        self.metrics.token_cache_misses.inc();
        // Boxed: a cache hit then carries (and moves) a small future, and a miss, which
        // spends tens of microseconds on the signature, one allocation more.
        let verified = Arc::new(Box::pin(self.verify_signature(token, allowed, now)).await?);
        if self.caching {
            self.cache.insert(Arc::from(token), verified.clone());
        }
        // Let the other connections that are ready run their verifications before this
        // request is forwarded: their upstream writes then go out together, and the
        // upstream's core is woken once for the batch instead of once per request (a
        // signature check is long enough for it to fall idle in between). Under cold-path
        // load this cut cross-CPU wake-ups per request ~6× (0.65 → 0.11) and CPU per request
        // ~10 %; alone, it costs one non-blocking poll of the reactor.
        tokio::task::yield_now().await;
        Ok(verified)
    }

    /// The full check without the cache (the cold path; benchmarks measure it directly).
    pub async fn verify_signature(
        &self,
        token: &str,
        allowed: &[usize],
        now: u64,
    ) -> Result<Verified, Reject> {
        let (issuer, claims, key_epoch) = self.signed_claims(token, allowed).await?;
        check_registered(&claims, &self.issuers[issuer].cfg, now)?;
        self.build(token, issuer, claims, key_epoch, now)
    }

    /// The issuer (one of `allowed`) whose key signed `token` with an algorithm it allows,
    /// and the payload — no claim checked beyond `iss`. For JWTs that are not access
    /// tokens (Security Event Tokens carry no `exp`): the caller checks the claims.
    pub async fn signed_claims(
        &self,
        token: &str,
        allowed: &[usize],
    ) -> Result<(usize, Map<String, Value>, u64), Reject> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Reject::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(sig64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reject::Malformed);
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header_json = b64.decode(h64).map_err(|_| Reject::Malformed)?;
        let header: JoseHeader =
            serde_json::from_slice(&header_json).map_err(|_| Reject::Malformed)?;
        // We implement no JWS extensions, so any `crit` is one we do not understand.
        if header.crit.is_some() {
            return Err(Reject::UnsupportedCrit);
        }
        let alg = parse_algorithm(&header.alg).ok_or(Reject::AlgorithmNotAllowed)?;

        let payload = b64.decode(p64).map_err(|_| Reject::Malformed)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| Reject::Malformed)?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(Reject::Malformed)?;
        let Some(&issuer) = self.by_iss.get(iss).filter(|i| allowed.contains(i)) else {
            tracing::debug!(iss = %shown(iss), "token refused: its issuer is not one this route accepts");
            return Err(Reject::UnknownIssuer);
        };
        let keys = &self.issuers[issuer];
        if !keys.cfg.algorithms.contains(&alg) {
            return Err(Reject::AlgorithmNotAllowed);
        }

        let kid = header.kid.as_deref();
        let mut refetched = false;
        loop {
            let set = keys.snapshot();
            match keys.lookup(&set, kid, alg) {
                Lookup::Found(key) => {
                    // The signature over the signing input as received, with the key parsed
                    // at load; then the registered claims from the payload parsed above.
                    let signature = b64.decode(sig64).map_err(|_| Reject::Malformed)?;
                    let signing_input = &token.as_bytes()[..h64.len() + 1 + p64.len()];
                    if !key.verify(alg, signing_input, &signature) {
                        tracing::debug!(issuer = %keys.cfg.name, kid = %shown(kid.unwrap_or("-")), "token refused: bad signature");
                        return Err(Reject::BadSignature);
                    }
                    return Ok((issuer, claims, set.epoch));
                }
                Lookup::Unavailable if refetched => return Err(Reject::KeysUnavailable),
                Lookup::Unknown if refetched => {
                    tracing::debug!(issuer = %keys.cfg.name, kid = %shown(kid.unwrap_or("-")), "token refused: no key with its kid, even after a refetch");
                    return Err(Reject::UnknownKey);
                }
                miss => {
                    // One shared, rate-limited refetch; then look again. Boxed: the fetch
                    // is kilobytes of future that every request would otherwise carry
                    // (and move) for a path taken at key rotation.
                    if !Box::pin(keys.refetch_for_unknown_kid()).await {
                        return Err(match miss {
                            Lookup::Unavailable => Reject::KeysUnavailable,
                            _ => Reject::UnknownKey,
                        });
                    }
                    refetched = true;
                }
            }
        }
    }

    fn build(
        &self,
        token: &str,
        issuer: usize,
        claims: Map<String, Value>,
        key_epoch: u64,
        now: u64,
    ) -> Result<Verified, Reject> {
        let leeway = self.issuers[issuer].cfg.leeway.as_secs();
        let numeric = |name: &str| -> Result<Option<u64>, Reject> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .or_else(|| {
                        v.as_f64()
                            .filter(|f| f.is_finite() && *f >= 0.0)
                            .map(|f| f as u64)
                    })
                    .map(Some)
                    .ok_or(Reject::Malformed),
            }
        };
        let exp = numeric("exp")?.ok_or(Reject::Malformed)?;
        let nbf = numeric("nbf")?;
        let iat = numeric("iat")?;
        if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
            return Err(Reject::IssuedInFuture);
        }
        // `sub`, `sid` and `jti` identify the token for revocation and often for the
        // upstream: a non-string would forward like a string (`42` as "42") and key
        // revocation ambiguously. `sub` is required unless the issuer says otherwise (RFC 9068).
        let text = |name: &str| -> Result<Option<&str>, Reject> {
            match claims.get(name) {
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) if self.strict_identity => Err(Reject::UnusableClaim),
                _ => Ok(None),
            }
        };
        let (jti, sid, sub) = (text("jti")?, text("sid")?, text("sub")?);
        if self.strict_identity && sub.is_none() && self.issuers[issuer].cfg.require_sub {
            return Err(Reject::UnusableClaim);
        }
        let scopes = policy::scopes(&claims);
        // An identity claim that cannot be forwarded faithfully refuses the request: an
        // authenticated request never reaches the upstream with part of its identity missing.
        let identity = identity_of(&claims, &self.identity_headers)?.into_boxed_slice();
        let revocation_keys = match &self.revocations {
            Some(set) => {
                let iss = self.issuers[issuer].cfg.issuer.as_str();
                // A token without `jti` is still revocable by itself: by its digest.
                let jti = jti.map_or_else(|| token_ref(token), str::to_owned);
                set.token_keys(iss, Some(&jti), sid, sub, iat)
            }
            None => TokenKeys::default(),
        };
        let mut verified = Verified {
            revocation_keys,
            revocation_checked: AtomicU64::new(0),
            issuer,
            claims,
            exp,
            nbf,
            iat,
            leeway,
            scopes,
            identity,
            key_epoch,
            bytes: 0,
        };
        verified.bytes = verified.heap_bytes();
        verified.check_time(now)?;
        Ok(verified)
    }

    /// Drop every cached verification (used when the configuration changes).
    pub fn clear_cache(&self) {
        self.cache.invalidate_all();
    }

    /// Cached verifications and the bytes they weigh (after pending evictions run).
    pub fn cache_usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    pub fn cache_ttl(&self) -> Option<Duration> {
        self.cache.policy().time_to_live()
    }
}

/// Part `part` of a compact JWS (0: the JOSE header, 1: the payload) as a JSON object,
/// **unverified**: for picking keys or refusing early, never for trusting.
pub fn unverified_part(token: &str, part: usize) -> Option<Map<String, Value>> {
    let segment = token.split('.').nth(part)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// The revocation key of a token without `jti`: `#` and the base64url SHA-256 of its
/// signing input (header and payload, without the signature). `POST /v1/revoke` records
/// the same value. The signature is left out because it is malleable (an ECDSA `s` can be
/// replaced by `n − s`): a revoked token must stay revoked under any valid signature.
pub fn token_ref(token: &str) -> String {
    let signing_input = token.rsplit_once('.').map_or(token, |(input, _)| input);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, signing_input.as_bytes());
    format!(
        "#{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
    )
}

/// A NumericDate claim (RFC 7519 §2): a non-negative number, fractions rounded as
/// jsonwebtoken did; absent is `None`, anything else malformed.
fn numeric_date(v: Option<&Value>) -> Result<Option<u64>, Reject> {
    match v {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
                    .map(|f| f.round() as u64)
            })
            .map(Some)
            .ok_or(Reject::Malformed),
    }
}

/// The registered claims every token must satisfy (RFC 7519 §4.1), in the order (and with
/// the answers) the checks had when jsonwebtoken made them: `exp` present, `aud` present
/// (a string, or an array of strings), `exp`/`nbf` well-formed, not expired, not early,
/// an audience of ours. `iss` was matched when the issuer was chosen.
fn check_registered(
    claims: &Map<String, Value>,
    cfg: &IssuerConfig,
    now: u64,
) -> Result<(), Reject> {
    if !claims.contains_key("exp") {
        return Err(Reject::Malformed);
    }
    let ours = |a: &str| cfg.audiences.iter().any(|x| x == a);
    let audience_ours = match claims.get("aud") {
        Some(Value::String(a)) => Some(ours(a)),
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
            Some(list.iter().filter_map(Value::as_str).any(ours))
        }
        _ => None,
    }
    .ok_or(Reject::WrongAudience)?;
    let exp = numeric_date(claims.get("exp"))?.ok_or(Reject::Malformed)?;
    let nbf = numeric_date(claims.get("nbf"))?;
    let leeway = cfg.leeway.as_secs();
    if exp < now.saturating_sub(leeway) {
        tracing::debug!(exp, now, leeway_s = leeway, "token refused: expired");
        return Err(Reject::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(Reject::NotYetValid);
    }
    if !audience_ours {
        tracing::debug!(
            expected = %cfg.audiences.join(","),
            got = %shown(&claims.get("aud").map(serde_json::Value::to_string).unwrap_or_default()),
            "token refused: audience"
        );
        return Err(Reject::WrongAudience);
    }
    Ok(())
}

/// A value from a token, as a debug line may show it: at most 128 characters, control
/// characters and quotes escaped (never the token itself).
fn shown(s: &str) -> String {
    s.chars()
        .take(128)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

/// A claim as a header value: strings, numbers and booleans as text, arrays of those
/// joined with `,` (an element holding `,` is refused, so the join stays unambiguous).
/// Anything else, a string with spaces at either end, or any byte outside visible ASCII
/// and space, is refused.
fn identity_value(v: &Value) -> Option<HeaderValue> {
    fn scalar(v: &Value, out: &mut String) -> Option<()> {
        match v {
            // Spaces at either end vanish in transit; `,` would read as two elements.
            Value::String(s) if s.trim() != s || s.contains(',') => return None,
            Value::String(s) => out.push_str(s),
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            _ => return None,
        }
        Some(())
    }
    let mut s = String::new();
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                scalar(item, &mut s)?;
            }
        }
        Value::String(text) if text.trim() == text => s.push_str(text),
        other => scalar(other, &mut s)?,
    }
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    HeaderValue::from_str(&s).ok()
}
