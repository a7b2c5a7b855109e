//! Section `issuers` (also the writer and user-token issuers of the control plane) and
//! `token_cache`: whose tokens are accepted, with which keys and algorithms.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::duration::Dur;
use super::Validator;
use crate::path::is_loopback_host;

/// `issuers[]`: one token issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    /// The name routes refer to.
    pub name: String,
    /// Must equal the tokens' `iss` claim exactly.
    pub issuer: String,
    /// Find `jwks_uri` through `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// The JWKS URL (https; http only on loopback without a warning).
    pub jwks_uri: Option<String>,
    /// A local JWKS file, re-read when it changes.
    pub jwks_file: Option<String>,
    /// A shared HMAC secret, at least as long as the hash (32, 48 or 64 bytes for HS256,
    /// HS384, HS512): the issuer then accepts HS* only.
    pub secret: Option<String>,
    /// Accepted `aud` values; a token must name at least one.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted `alg` values (default `[RS256]`; HMAC ones only with `secret`).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf`, `iat` (default 30s, at most 5m).
    pub leeway: Option<Dur>,
    /// Background key refresh interval (default 10m); `Cache-Control: max-age` may shorten it.
    pub jwks_refresh: Option<Dur>,
    /// How long cached keys keep serving while the source fails (default 24h); then 503.
    pub jwks_max_stale: Option<Dur>,
    /// Minimum time between refetches caused by an unknown `kid` (default 10s).
    pub jwks_refetch_interval: Option<Dur>,
    /// Refuse tokens without a string `sub` (default true, as RFC 9068 requires).
    pub require_sub: Option<bool>,
}

/// `token_cache`: verified tokens skip the signature check on a repeat.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTokenCache {
    /// Tokens held (default 100000; 0 turns the cache off).
    pub max_entries: Option<u64>,
    /// Memory the cached verifications may hold, tokens and claims included (default 64 MiB).
    pub max_bytes: Option<u64>,
    /// How long a verification is reused (default 5m); `exp` is checked on every request.
    pub ttl: Option<Dur>,
}

/// Where an issuer's keys come from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `jwks_uri` from `{issuer}/.well-known/openid-configuration`.
    Discovery,
    /// A JWKS URL.
    Uri(Uri),
    /// A JWKS file.
    File(PathBuf),
    /// A shared HMAC secret: this issuer accepts HS* only.
    Secret(Vec<u8>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Discovery => f.write_str("Discovery"),
            KeySource::Uri(u) => write!(f, "Uri({u})"),
            KeySource::File(p) => write!(f, "File({})", p.display()),
            KeySource::Secret(_) => f.write_str("Secret(<redacted>)"),
        }
    }
}

/// A validated issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The configuration name (metric label, route reference).
    pub name: String,
    /// The exact `iss`.
    pub issuer: String,
    /// Where the keys come from.
    pub keys: KeySource,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// Accepted algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated.
    pub leeway: Duration,
    /// Background refresh interval.
    pub jwks_refresh: Duration,
    /// How long cached keys serve while the source fails.
    pub jwks_max_stale: Duration,
    /// Minimum time between refetches caused by an unknown `kid`.
    pub jwks_refetch_interval: Duration,
    /// Tokens must carry a string `sub`.
    pub require_sub: bool,
}

/// Validated `token_cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCacheConfig {
    /// Entries held; 0 disables the cache.
    pub max_entries: u64,
    /// Bytes the entries may hold (tokens, claims and per-entry structures, estimated).
    pub max_bytes: u64,
    /// How long a verification is reused.
    pub ttl: Duration,
}

const HMAC_ALGS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// The algorithm named by a JOSE `alg` (or a config entry).
pub fn parse_algorithm(s: &str) -> Option<Algorithm> {
    Some(match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => return None,
    })
}

impl Validator<'_> {
    pub(super) fn token_cache(&mut self, raw: &RawTokenCache) -> TokenCacheConfig {
        TokenCacheConfig {
            max_entries: raw.max_entries.unwrap_or(100_000),
            max_bytes: raw.max_bytes.unwrap_or(64 * 1024 * 1024),
            ttl: self.positive("token_cache.ttl", raw.ttl, Duration::from_secs(300)),
        }
    }

    pub(super) fn issuers_at(
        &mut self,
        at: &str,
        raw: &[RawIssuer],
        base: &Path,
    ) -> Vec<IssuerConfig> {
        let mut names = HashSet::new();
        let mut iss_values = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let p = format!("{at}[{i}]");
            if !names.insert(r.name.clone()) {
                self.err(
                    &format!("{p}.name"),
                    format!("duplicate issuer name `{}`", r.name),
                );
            }
            if r.issuer.is_empty() {
                self.err(
                    &format!("{p}.issuer"),
                    "must not be empty: it must equal the tokens' `iss` claim",
                );
            } else if !iss_values.insert(r.issuer.clone()) {
                self.err(
                    &format!("{p}.issuer"),
                    format!(
                        "issuer `{}` is configured twice; tokens are matched to an issuer by `iss`",
                        r.issuer
                    ),
                );
            }
            let sources = [
                r.discovery,
                r.jwks_uri.is_some(),
                r.jwks_file.is_some(),
                r.secret.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if sources != 1 {
                self.err(&p, "exactly one key source is required: `discovery: true`, `jwks_uri`, `jwks_file` or `secret`");
            }
            let keys = if let Some(s) = &r.secret {
                // RFC 7518 §3.2: a key at least as long as the hash output.
                let need = r
                    .algorithms
                    .iter()
                    .map(|a| match a.as_str() {
                        "HS384" => 48,
                        "HS512" => 64,
                        _ => 32,
                    })
                    .max()
                    .unwrap_or(32);
                if s.len() < need {
                    self.err(
                        &format!("{p}.secret"),
                        format!("an HMAC secret for these algorithms must be at least {need} bytes (as long as the hash)"),
                    );
                }
                KeySource::Secret(s.as_bytes().to_vec())
            } else if let Some(u) = &r.jwks_uri {
                KeySource::Uri(
                    self.fetch_url(&format!("{p}.jwks_uri"), u)
                        .unwrap_or_default(),
                )
            } else if let Some(f) = &r.jwks_file {
                KeySource::File(base.join(f))
            } else {
                if r.discovery {
                    let _ = self.fetch_url(&format!("{p}.issuer"), &r.issuer);
                }
                KeySource::Discovery
            };

            if r.audiences.is_empty() || r.audiences.iter().any(String::is_empty) {
                self.err(&format!("{p}.audiences"), "list the audiences this gateway accepts (the tokens' `aud`); at least one, none empty");
            }
            let mut algorithms = Vec::new();
            // OIDC's default signing algorithm when none is listed; HMAC must be explicit.
            let default_algs = vec!["RS256".to_owned()];
            let listed = if r.algorithms.is_empty() && r.secret.is_none() {
                &default_algs
            } else {
                &r.algorithms
            };
            if listed.is_empty() {
                self.err(
                    &format!("{p}.algorithms"),
                    "list the allowed HMAC algorithms, e.g. [HS256]",
                );
            }
            for (j, a) in listed.iter().enumerate() {
                let ap = format!("{p}.algorithms[{j}]");
                match parse_algorithm(a) {
                    Some(alg) => {
                        let hmac = HMAC_ALGS.contains(&alg);
                        if hmac && r.secret.is_none() {
                            self.err(&ap, format!("{a} needs a shared `secret`; an issuer with public keys never accepts HMAC algorithms"));
                        } else if !hmac && r.secret.is_some() {
                            self.err(&ap, format!("an issuer with a `secret` accepts only HS256, HS384 or HS512, not {a}"));
                        }
                        algorithms.push(alg);
                    }
                    None => self.err(&ap, format!("`{a}` is not a supported algorithm: use RS256/384/512, PS256/384/512, ES256/384, EdDSA, or HS256/384/512 with a secret")),
                }
            }
            let leeway = r.leeway.map(|d| d.0).unwrap_or(Duration::from_secs(30));
            if leeway > Duration::from_secs(300) {
                self.err(
                    &format!("{p}.leeway"),
                    "at most 5m: clock skew larger than that is a broken clock",
                );
            }
            out.push(IssuerConfig {
                name: r.name.clone(),
                issuer: r.issuer.clone(),
                keys,
                audiences: r.audiences.clone(),
                algorithms,
                leeway,
                jwks_refresh: self.positive(
                    &format!("{p}.jwks_refresh"),
                    r.jwks_refresh,
                    Duration::from_secs(600),
                ),
                jwks_max_stale: self.positive(
                    &format!("{p}.jwks_max_stale"),
                    r.jwks_max_stale,
                    Duration::from_secs(86_400),
                ),
                jwks_refetch_interval: self.positive(
                    &format!("{p}.jwks_refetch_interval"),
                    r.jwks_refetch_interval,
                    Duration::from_secs(10),
                ),
                require_sub: r.require_sub.unwrap_or(true),
            });
        }
        out
    }

    pub(super) fn fetch_url(&mut self, path: &str, s: &str) -> Option<Uri> {
        let uri: Uri = match s.parse() {
            Ok(u) => u,
            Err(_) => {
                self.err(path, format!("`{s}` is not a URL"));
                return None;
            }
        };
        match (uri.scheme_str(), uri.host()) {
            (Some("https"), Some(_)) => Some(uri),
            (Some("http"), Some(host)) => {
                if !is_loopback_host(host) {
                    self.warn(path, format!("keys fetched over plain http from `{host}` can be tampered with in transit; use https"));
                }
                Some(uri)
            }
            _ => {
                self.err(
                    path,
                    format!("`{s}` must be an absolute http:// or https:// URL"),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_problems, gateway_problems, gateway_with, LISTEN};
    use super::*;

    /// Each mistake is reported at its key, line and column.
    #[test]
    fn problem_table() {
        let cases = [
            (
                "issuers:\n  - { name: a, issuer: i, audiences: [x] }\n",
                "issuers[0]",
                (3, 5),
            ),
            (
                "issuers:\n  - { name: a, issuer: i, jwks_uri: \"ftp://k\", audiences: [x] }\n",
                "issuers[0].jwks_uri",
                (3, 27),
            ),
            (
                "issuers:\n  - { name: a, issuer: i, jwks_file: k.json, audiences: [] }\n",
                "issuers[0].audiences",
                (3, 46),
            ),
            (
                "issuers:\n  - { name: a, issuer: i, jwks_file: k.json, audiences: [x], algorithms: [HS256] }\n",
                "issuers[0].algorithms[0]",
                (3, 75),
            ),
            (
                "issuers:\n  - { name: a, issuer: i, secret: short, audiences: [x], algorithms: [HS256] }\n",
                "issuers[0].secret",
                (3, 27),
            ),
            (
                "issuers:\n  - { name: a, issuer: i, jwks_file: k.json, audiences: [x], leeway: 10m }\n",
                "issuers[0].leeway",
                (3, 62),
            ),
            (
                "issuers:\n  - { name: a, issuer: i, jwks_file: k.json, audiences: [x] }\n  - { name: a, issuer: i, jwks_file: k.json, audiences: [x] }\n",
                "issuers[1].issuer",
                (4, 16),
            ),
        ];
        assert_problems(&cases, |yaml| gateway_problems(&format!("{LISTEN}{yaml}")));
    }

    /// Plain-http key URLs off loopback are allowed with a warning; RS256 is the default.
    #[test]
    fn http_key_url_warns_off_loopback() {
        let c = gateway_with(&format!(
            "{LISTEN}issuers:\n  - {{ name: a, issuer: i, jwks_uri: \"http://idp.example/k\", audiences: [x] }}\n"
        ));
        assert_eq!(c.issuers[0].algorithms, vec![Algorithm::RS256]);
        assert!(c.warnings.iter().any(|w| w.path == "issuers[0].jwks_uri"));
        let c = gateway_with(&format!(
            "{LISTEN}issuers:\n  - {{ name: a, issuer: i, jwks_uri: \"http://127.0.0.1/k\", audiences: [x] }}\n"
        ));
        assert!(!c.warnings.iter().any(|w| w.path == "issuers[0].jwks_uri"));
    }
}
