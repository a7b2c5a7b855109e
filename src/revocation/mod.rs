//! Revocation on the gateway: the in-memory set the request path consults ([`set`]), the
//! client that keeps it in sync with the control plane ([`sync`]), and the one check of a
//! token against both ([`Revocations::check`]). [`Entry`] and [`Kind`] are the wire types
//! the control plane shares.
//!
//! A revocation entry is one of: `(iss, jti)` — that token is dead; `(iss, sid)` — every
//! token of that session is dead; `(iss, sub, issued_before)` — every token of that subject
//! issued before the cutoff is dead; `(iss, claim, value, issued_before)` — every token whose
//! string claim `claim` holds `value` (ASCII case aside) issued before the cutoff is dead, for
//! users known by another identifier than `sub` (an email, a phone number).

pub mod set;
pub mod sync;

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{OnStale, RevocationConfig};
use crate::error::Reject;
use set::{RevocationSet, TokenKeys};
use sync::SyncState;

/// The gateway's view of revocations, shared by every configuration generation.
#[derive(Clone)]
pub struct Revocations {
    /// The entries.
    pub set: Arc<RevocationSet>,
    /// How current they are.
    pub state: Arc<SyncState>,
    /// How long the set may go without word from its source.
    pub max_staleness: Duration,
    /// What a stale set means for requests.
    pub on_stale: OnStale,
    /// How long a `sub` cutoff is kept: a token living longer could outlast it.
    pub max_token_lifetime: Duration,
}

/// What the revocation check reads of a verified token.
pub struct Presented<'a> {
    pub keys: &'a TokenKeys,
    /// The set version the token was last found clean at.
    pub checked: &'a AtomicU64,
    pub exp: u64,
    pub iat: Option<u64>,
    /// The token's claims, for claim entries.
    pub claims: &'a serde_json::Map<String, serde_json::Value>,
}

impl Revocations {
    /// The last snapshot (if any), else an empty set that is not ready until a first sync.
    pub fn load(rc: &RevocationConfig, state: Arc<SyncState>) -> Revocations {
        let set = match &rc.snapshot_file {
            Some(path) if path.exists() => {
                match RevocationSet::load(path, state.clock().unix()) {
                    Ok(set) => {
                        tracing::info!(file = %path.display(), entries = set.len(), cursor = set.cursor(), "revocation snapshot loaded");
                        state.set_ready();
                        set
                    }
                    Err(e) => {
                        // Unreadable: start empty and re-sync from the beginning (not ready
                        // until then).
                        tracing::error!(error = %e, "ignoring the revocation snapshot; syncing from scratch");
                        RevocationSet::new()
                    }
                }
            }
            _ => RevocationSet::new(),
        };
        Revocations {
            set: Arc::new(set),
            state,
            max_staleness: rc.max_staleness,
            on_stale: rc.on_stale,
            max_token_lifetime: rc.max_token_lifetime,
        }
    }

    /// The set has gone without word from its source for longer than `max_staleness`.
    pub fn stale(&self) -> bool {
        self.state.lag() > self.max_staleness
    }

    /// Step 6 of the request path: refuse any token while no set is known yet, a revoked
    /// token, a token living longer than `max_token_lifetime` or without `iat` (a `sub`
    /// cutoff is dropped after that long, so such a token could outlive its own
    /// revocation), and any token while the set is stale under `on_stale: deny`.
    pub fn check(&self, token: Presented<'_>) -> Result<(), Reject> {
        // A set never known is not "the last known set": fail closed until the first sync
        // or snapshot load.
        if !self.state.is_ready() {
            return Err(Reject::RevocationsNotReady);
        }
        if self.set.is_revoked(token.keys, token.checked, token.claims) {
            return Err(Reject::Revoked);
        }
        // Without `iat` a token's lifetime is unbounded: once a `sub` cutoff it predates is
        // purged, nothing could tell it was revoked (RFC 9068 requires `iat` anyway).
        let lifetime = token.iat.map(|iat| token.exp.saturating_sub(iat));
        // The shorter of ours and the control plane's: a cutoff lives only as long as the
        // control plane keeps it.
        let max = self
            .state
            .control_lifetime()
            .map_or(self.max_token_lifetime, |c| c.min(self.max_token_lifetime));
        if lifetime.is_none_or(|l| l > max.as_secs()) {
            return Err(Reject::LifetimeTooLong);
        }
        if self.on_stale == OnStale::Deny && self.stale() {
            return Err(Reject::RevocationsStale);
        }
        Ok(())
    }
}

/// One revocation as the control plane stores and streams it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the control plane's log; opaque to clients (a decimal string on the wire).
    #[serde(with = "cursor_string")]
    pub cursor: u64,
    pub iss: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// A claim entry: the claim's name; `value` holds what it must equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<u64>,
    /// Unix seconds after which the entry is dropped (it can no longer match a live token).
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A tombstone: the entry with this key was deleted (`DELETE /v1/revocations/{id}`);
    /// gateways drop it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Jti,
    Sid,
    Sub,
    Claim,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Jti, Kind::Sid, Kind::Sub, Kind::Claim];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Jti => "jti",
            Kind::Sid => "sid",
            Kind::Sub => "sub",
            Kind::Claim => "claim",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl Entry {
    /// The entry's kind and key value (for a claim entry, [`claim_value`]); `None` when it
    /// names none or several.
    pub fn key(&self) -> Option<(Kind, Cow<'_, str>)> {
        match (&self.jti, &self.sid, &self.sub, &self.claim, &self.value) {
            (Some(v), None, None, None, None) => Some((Kind::Jti, v.into())),
            (None, Some(v), None, None, None) => Some((Kind::Sid, v.into())),
            (None, None, Some(v), None, None) => Some((Kind::Sub, v.into())),
            (None, None, None, Some(c), Some(v)) => Some((Kind::Claim, claim_value(c, v).into())),
            _ => None,
        }
    }

    /// Set the key field(s) of `kind` from a stored key value.
    pub fn set_key(&mut self, kind: Kind, value: String) {
        match kind {
            Kind::Jti => self.jti = Some(value),
            Kind::Sid => self.sid = Some(value),
            Kind::Sub => self.sub = Some(value),
            Kind::Claim => {
                let (claim, v) = value.split_once(CLAIM_SEPARATOR).unwrap_or(("", &value));
                self.claim = Some(claim.to_owned());
                self.value = Some(v.to_owned());
            }
        }
    }
}

/// Between a claim's name and its value in a claim entry's key: a control character, which
/// neither may hold (and PostgreSQL text can).
pub const CLAIM_SEPARATOR: char = '\u{1f}';

/// The key value of a claim entry: the claim's name and its value, the value's ASCII letters
/// in lower case — an email's domain has no case, and providers treat its local part as
/// having none; erring that way revokes more, never less.
pub fn claim_value(claim: &str, value: &str) -> String {
    let mut s = String::with_capacity(claim.len() + 1 + value.len());
    s.push_str(claim);
    s.push(CLAIM_SEPARATOR);
    s.extend(value.chars().map(|c| c.to_ascii_lowercase()));
    s
}

mod cursor_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
