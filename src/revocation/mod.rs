//! Revocation on the gateway: the in-memory set the request path consults
//! ([`set`]), and the client that keeps it in sync with the control plane ([`sync`]).
//!
//! A revocation entry is one of: `(iss, jti)` — that token is dead; `(iss, sid)` — every
//! token of that session is dead; `(iss, sub, issued_before)` — every token of that subject
//! issued before the cutoff is dead.

pub mod set;
pub mod sync;

use serde::{Deserialize, Serialize};

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<u64>,
    /// Unix seconds after which the entry is dropped (it can no longer match a live token).
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Jti,
    Sid,
    Sub,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Jti, Kind::Sid, Kind::Sub];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Jti => "jti",
            Kind::Sid => "sid",
            Kind::Sub => "sub",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl Entry {
    /// The entry's kind and key value; `None` when it names none or several.
    pub fn key(&self) -> Option<(Kind, &str)> {
        match (&self.jti, &self.sid, &self.sub) {
            (Some(v), None, None) => Some((Kind::Jti, v)),
            (None, Some(v), None) => Some((Kind::Sid, v)),
            (None, None, Some(v)) => Some((Kind::Sub, v)),
            _ => None,
        }
    }
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
