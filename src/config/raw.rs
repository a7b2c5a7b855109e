//! Phase one of configuration: the YAML schema as serde structs. Unknown keys are errors;
//! fields whose shape depends on a keyword (`auth`, `token_sources`, claim matchers) stay
//! `Value` here and are checked, with positions, in `validate`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_norway::Value;

/// A duration written `500ms`, `30s`, `5m`, `24h` (or several: `1m30s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 500ms, 30s, 5m or 24h")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                parse_duration(s).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration `{s}`: write it as 500ms, 30s, 5m or 24h");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub admin: Option<Admin>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub log: Log,
    /// The `realm` of `WWW-Authenticate` challenges.
    #[serde(default)]
    pub realm: Option<String>,
    #[serde(default)]
    pub token_cache: TokenCache,
    #[serde(default)]
    pub issuers: Vec<Issuer>,
    pub upstreams: Vec<Upstream>,
    #[serde(default)]
    pub identity_headers: BTreeMap<String, String>,
    pub routes: Vec<Route>,
    #[serde(default)]
    pub revocation: Option<Revocation>,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub shutdown_grace: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    pub control_url: Option<String>,
    pub store: Option<String>,
    pub token: Option<String>,
    pub snapshot_file: Option<String>,
    pub max_staleness: Option<Dur>,
    pub on_stale: Option<String>,
    /// Single-node mode (`store`): who may use the control API on the admin listener.
    pub writers: Option<Writers>,
    pub readers: Option<Readers>,
    pub default_retention: Option<Dur>,
    pub max_token_lifetime: Option<Dur>,
    pub purge_interval: Option<Dur>,
}

/// `control.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    pub listen: String,
    pub store: String,
    #[serde(default)]
    pub writers: Option<Writers>,
    #[serde(default)]
    pub readers: Option<Readers>,
    pub default_retention: Option<Dur>,
    pub max_token_lifetime: Option<Dur>,
    pub purge_interval: Option<Dur>,
    /// Issuers of the tokens `/v1/revoke` and back-channel logout accept.
    #[serde(default)]
    pub issuers: Vec<Issuer>,
    pub backchannel_logout: Option<BackchannelLogout>,
    #[serde(default)]
    pub revoke_clients: Vec<RevokeClient>,
    #[serde(default)]
    pub log: Log,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackchannelLogout {
    /// Name of an entry of `issuers`.
    pub issuer: String,
    pub client_ids: Vec<String>,
    /// How old a logout token's `iat` may be.
    pub max_age: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeClient {
    pub client_id: String,
    /// Hex SHA-256 of the client secret.
    pub secret_sha256: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Writers {
    #[serde(default)]
    pub issuers: Vec<Issuer>,
    pub scope: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Readers {
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub name: String,
    /// Hex SHA-256 of the key; the key itself never appears in configuration.
    pub sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub address: String,
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub cert: String,
    pub key: String,
    /// PEM bundle of CAs: clients must present a certificate they signed (mTLS).
    pub client_ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub header_timeout: Option<Dur>,
    pub max_header_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub idle_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenCache {
    pub max_entries: Option<u64>,
    pub ttl: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    pub name: String,
    pub issuer: String,
    #[serde(default)]
    pub discovery: bool,
    pub jwks_uri: Option<String>,
    pub jwks_file: Option<String>,
    pub secret: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub algorithms: Vec<String>,
    pub leeway: Option<Dur>,
    pub jwks_refresh: Option<Dur>,
    pub jwks_max_stale: Option<Dur>,
    pub jwks_refetch_interval: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    pub url: String,
    pub connect_timeout: Option<Dur>,
    pub timeout: Option<Dur>,
    /// `h1` (default) or `h2`.
    pub protocol: Option<String>,
    /// https: a PEM CA bundle to trust instead of the system roots.
    pub ca: Option<String>,
    /// https: a client certificate and key to present.
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: Match,
    pub upstream: String,
    pub auth: Value,
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub host: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub issuers: Vec<String>,
    #[serde(default)]
    pub require: Require,
    pub token_sources: Option<Vec<Value>>,
    #[serde(default)]
    pub forward_token: bool,
    /// End WebSockets and streams of this route when the token expires (default true).
    pub close_on_expiry: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Require {
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    pub equals: Option<serde_json::Value>,
    pub one_of: Option<Vec<serde_json::Value>>,
    pub contains: Option<serde_json::Value>,
}
