//! Configuration in two phases: serde structs parse the YAML schema (unknown keys are
//! errors), then a [`Validator`] turns them into the typed, compiled form the gateway and
//! the control plane run on. Every problem is reported with its key path, line and column;
//! nothing is bound or fetched until the whole file is valid.
//!
//! One file per section, each with its raw and typed structs, its validation and a table
//! of problems it reports: [`listeners`] (listeners, admin, limits, log), [`issuers`]
//! (issuers, token cache), [`upstreams`], [`identity`] (identity headers), [`routes`] and
//! their [`auth`] blocks, [`revocation`], and [`control`] (`control.yaml`). [`source`]
//! reads YAML with positions and expands `${VAR}`; [`duration`] parses `30s`.

pub mod auth;
pub mod control;
pub mod duration;
pub mod identity;
pub mod issuers;
pub mod listeners;
pub mod revocation;
pub mod routes;
pub mod source;
pub mod ssf;
pub mod upstreams;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;

pub use auth::{AuthPolicy, ClaimMatcher, ClaimRequirement, TokenSource};
pub use control::{AccessConfig, ApiKey, BackchannelConfig, ControlConfig, IdpConfig, StoreUrl};
pub use duration::Dur;
pub use identity::IdentityHeader;
pub use issuers::{parse_algorithm, IssuerConfig, KeySource, TokenCacheConfig};
pub use listeners::{
    Cidr, ForwardAuth, Limits, ListenerConfig, LogConfig, LogFormat, LogLevel, TlsFiles,
    UnderscoreHeaders,
};
pub use revocation::{OnStale, RevocationConfig, RevocationSource};
pub use routes::{PathMatch, RouteConfig};
pub use source::{Problem, Problems};
pub use upstreams::{UpstreamConfig, UpstreamProtocol};

use source::Positions;

/// A gateway file (`gateway.yaml`) as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Addresses clients connect to (at least one).
    pub listeners: Vec<listeners::RawListener>,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`).
    #[serde(default)]
    pub admin: Option<listeners::RawAdmin>,
    /// Per-connection limits.
    #[serde(default)]
    pub limits: listeners::RawLimits,
    /// Log format and level.
    #[serde(default)]
    pub log: listeners::RawLog,
    /// The `realm` of `WWW-Authenticate` challenges (default `jwtgate`).
    #[serde(default)]
    pub realm: Option<String>,
    /// The verified-token cache.
    #[serde(default)]
    pub token_cache: issuers::RawTokenCache,
    /// Token issuers.
    #[serde(default)]
    pub issuers: Vec<issuers::RawIssuer>,
    /// Services requests are forwarded to.
    pub upstreams: Vec<upstreams::RawUpstream>,
    /// Header name → claim path.
    #[serde(default)]
    pub identity_headers: BTreeMap<String, String>,
    /// Request headers whose name holds `_`: `drop` (default), `reject` (400) or `allow`
    /// (look-alikes of identity and forwarding headers are dropped even then).
    #[serde(default)]
    pub underscore_headers: UnderscoreHeaders,
    /// Peers (address ranges) whose `X-Forwarded-For` is kept and appended to; the client
    /// address is then the nearest untrusted one in it. Nobody else's is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Routes, first match wins.
    pub routes: Vec<routes::RawRoute>,
    /// Where revocations come from.
    #[serde(default)]
    pub revocation: Option<revocation::RawRevocation>,
    /// How long in-flight requests may finish after SIGTERM/SIGINT (default 30s).
    pub shutdown_grace: Option<Dur>,
}

/// The validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client listeners.
    pub listeners: Vec<ListenerConfig>,
    /// The admin listener's address.
    pub admin: Option<SocketAddr>,
    /// Per-connection limits.
    pub limits: Limits,
    /// Log format and level.
    pub log: LogConfig,
    /// The `realm` of challenges.
    pub realm: String,
    /// The verified-token cache.
    pub token_cache: TokenCacheConfig,
    /// Token issuers.
    pub issuers: Vec<IssuerConfig>,
    /// Upstreams.
    pub upstreams: Vec<UpstreamConfig>,
    /// Identity headers.
    pub identity_headers: Vec<IdentityHeader>,
    /// Request headers whose name holds `_`.
    pub underscore_headers: UnderscoreHeaders,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
    /// Revocation settings.
    pub revocation: Option<RevocationConfig>,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Things that are allowed but worth an operator's look (`check` prints them).
    pub warnings: Vec<Problem>,
}

impl Config {
    /// Read and validate a file. The error lists every problem found.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        load_file(path, Config::from_yaml)
    }

    /// Validate YAML text; relative file paths resolve against `base`.
    pub fn from_yaml(
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<Problem>> {
        let (value, pos) = source::load(text, env)?;
        let raw: RawGateway = deserialize(value, &pos)?;
        let mut v = Validator::new(&pos);
        let config = v.gateway(raw, base);
        if v.problems.is_empty() {
            Ok(Config {
                warnings: v.warnings,
                ..config
            })
        } else {
            Err(v.problems)
        }
    }

    /// Whether `other` differs in what only a restart applies: listeners, admin, limits,
    /// revocation (sync token and API key hashes included).
    pub fn needs_restart_for(&self, other: &Config) -> bool {
        self.listeners != other.listeners
            || self.admin != other.admin
            || self.limits != other.limits
            || self.revocation != other.revocation
    }
}

type Parse<T> = fn(&str, &Path, &dyn Fn(&str) -> Option<String>) -> Result<T, Vec<Problem>>;

/// Read `path` and parse it with the process environment; relative paths in it resolve
/// against its folder.
fn load_file<T>(path: &Path, parse: Parse<T>) -> Result<T, Problems> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Problems {
        file: file.clone(),
        list: vec![Problem {
            path: String::new(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        }],
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, &|k| std::env::var(k).ok()).map_err(|list| Problems { file, list })
}

/// Deserialize a subtree, turning serde's error into a positioned problem.
fn deserialize<T: serde::de::DeserializeOwned>(
    value: Value,
    pos: &Positions,
) -> Result<T, Vec<Problem>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![pos.problem(&path, did_you_mean(e.into_inner().to_string()))]
    })
}

impl Validator<'_> {
    /// Deserialize the subtree at `path` (already known to be a mapping), reporting each
    /// problem at its key below `path`.
    fn subtree<T: serde::de::DeserializeOwned>(&mut self, path: &str, value: Value) -> Option<T> {
        match deserialize(value, &Positions::default()) {
            Ok(t) => Some(t),
            Err(problems) => {
                for p in problems {
                    let at = if p.path.is_empty() {
                        path.to_owned()
                    } else {
                        format!("{path}.{}", p.path)
                    };
                    self.err(&at, p.message);
                }
                None
            }
        }
    }
}

/// serde's "unknown field `colur`, expected one of `a`, `colour`, …" with the closest
/// expected name suggested.
fn did_you_mean(message: String) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message;
    };
    let Some((given, expected)) = rest.split_once('`') else {
        return message;
    };
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|name| (edit_distance(given, name), name))
        .min();
    match best {
        Some((d, name)) if d <= (given.len() / 3).max(2) => {
            format!("{message}; did you mean `{name}`?")
        }
        _ => message,
    }
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Phase two: collects every problem (and warning) with its position while building the
/// typed configuration. Each section adds its own methods in its file.
struct Validator<'a> {
    pos: &'a Positions,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

/// A secret held in a file (a mounted secret): its trimmed text, `None` when the file does
/// not exist (yet), an error naming the file otherwise. Never echoes the content.
pub(crate) fn secret_file(path: &Path) -> Result<Option<String>, String> {
    use std::io::Read;
    const MAX: u64 = 4096;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    // At most one byte past the limit: `/dev/zero` or a huge file is refused, not read.
    let mut bytes = Vec::new();
    file.take(MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX {
        return Err(format!(
            "{} is larger than 4 KiB: not a key",
            path.display()
        ));
    }
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    // The key travels in an HTTP header: one line of visible characters.
    if key.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{} holds more than one line or control characters: a key is one line",
            path.display()
        ));
    }
    Ok(Some(key.to_owned()))
}

impl<'a> Validator<'a> {
    fn new(pos: &'a Positions) -> Validator<'a> {
        Validator {
            pos,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn err(&mut self, path: &str, msg: impl Into<String>) {
        self.problems.push(self.pos.problem(path, msg));
    }

    fn warn(&mut self, path: &str, msg: impl Into<String>) {
        self.warnings.push(self.pos.problem(path, msg));
    }

    fn addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    path,
                    format!("`{s}` is not an address: write it as 127.0.0.1:8080 or [::1]:8080"),
                );
                None
            }
        }
    }

    fn positive(&mut self, path: &str, d: Option<Dur>, default: Duration) -> Duration {
        match d {
            Some(Dur(d)) if d.is_zero() => {
                self.err(path, "must be greater than zero");
                default
            }
            Some(Dur(d)) => d,
            None => default,
        }
    }

    fn gateway(&mut self, raw: RawGateway, base: &Path) -> Config {
        let listeners = self.listeners(&raw.listeners, base);
        let admin = raw
            .admin
            .as_ref()
            .and_then(|a| self.addr("admin.address", &a.address));
        let limits = self.limits(&raw.limits);
        let token_cache = self.token_cache(&raw.token_cache);
        let issuers = self.issuers_at("issuers", &raw.issuers, base);
        let upstreams = self.upstreams(&raw.upstreams, base);
        let identity_headers = self.identity_headers(&raw.identity_headers);
        let routes = self.routes(raw.routes, &issuers, &upstreams);
        self.warn_method_shadowing(&routes);
        self.warn_unreachable(&routes, &issuers, &upstreams);
        for (i, auth) in routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i, r.auth.as_ref()?)))
        {
            let global = |h: &http::HeaderName| identity_headers.iter().any(|x| x.name == *h);
            if auth
                .forward_payload
                .as_ref()
                .is_some_and(|h| global(h) || auth.identity_headers.iter().any(|x| x.name == *h))
            {
                self.err(
                    &format!("routes[{i}].auth.forward_payload"),
                    "already an identity header; give the claims a header of their own",
                );
            }
            for h in auth.identity_headers.iter().filter(|h| global(&h.name)) {
                self.err(
                    &format!("routes[{i}].auth.identity_headers.{}", h.name),
                    "already a global identity header; a route adds headers, it does not redefine them",
                );
            }
        }
        let revocation = raw.revocation.as_ref().map(|r| self.revocation(r, base));
        if raw.trusted_proxies.is_empty() {
            for (i, _) in listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| l.forward_auth.is_some())
            {
                self.err(
                    &format!("listeners[{i}].forward_auth"),
                    "list the proxies that ask (nginx, Traefik, Envoy, Caddy) in `trusted_proxies`: only they may send the original method and URI",
                );
            }
        }
        Config {
            listeners,
            admin,
            limits,
            log: LogConfig::from(&raw.log),
            realm: self.realm(raw.realm),
            token_cache,
            issuers,
            upstreams,
            identity_headers,
            underscore_headers: raw.underscore_headers,
            trusted_proxies: self.trusted_proxies(&raw.trusted_proxies),
            routes,
            revocation,
            shutdown_grace: self.positive(
                "shutdown_grace",
                raw.shutdown_grace,
                Duration::from_secs(30),
            ),
            warnings: Vec::new(),
        }
    }

    /// A realm goes inside a quoted challenge parameter: visible ASCII, no `"` or `\`.
    fn realm(&mut self, realm: Option<String>) -> String {
        match realm {
            Some(r)
                if r.is_empty()
                    || !r
                        .bytes()
                        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') =>
            {
                self.err(
                    "realm",
                    "a realm is visible ASCII without quotes or backslashes",
                );
                r
            }
            Some(r) => r,
            None => "jwtgate".to_owned(),
        }
    }
}

/// Helpers for the sections' problem tables.
#[cfg(test)]
mod testing {
    use super::*;

    /// One listener: the smallest valid start of a gateway file.
    pub const LISTEN: &str = "listeners: [ { address: \"127.0.0.1:0\" } ]\n";

    /// Complete `sections` into a gateway file: the required keys it lacks are appended,
    /// so line numbers of the given text stay as written.
    fn complete(sections: &str) -> String {
        let given: Value = serde_norway::from_str(sections).unwrap_or(Value::Null);
        let has = |k: &str| given.get(k).is_some();
        let mut text = sections.to_owned();
        if !has("listeners") {
            text.push_str("listeners: [ { address: \"127.0.0.1:0\" } ]\n");
        }
        if !has("upstreams") {
            text.push_str("upstreams: [ { name: u, url: \"http://127.0.0.1:1\" } ]\n");
        }
        if !has("routes") {
            text.push_str(
                "routes: [ { name: r, match: { path_prefix: / }, upstream: u, auth: none } ]\n",
            );
        }
        text
    }

    /// The problems of a gateway file made of `sections` (which must be invalid).
    pub fn gateway_problems(sections: &str) -> Vec<Problem> {
        Config::from_yaml(&complete(sections), Path::new("/etc/jwtgate"), &|_| None)
            .expect_err("the configuration should be refused")
    }

    /// Each case is `(input, key path, (line, column))`: `problems(input)` must report a
    /// problem at that path and position. Every failing case is listed.
    pub fn assert_problems(
        cases: &[(&str, &str, (usize, usize))],
        problems: impl Fn(&str) -> Vec<Problem>,
    ) {
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|(input, path, at)| {
                let got = problems(input);
                let hit = got
                    .iter()
                    .any(|p| p.path == *path && (p.line, p.column) == *at);
                (!hit).then(|| format!("{input:?}: want {path} at {at:?}, got {got:?}"))
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// The validated gateway file made of `sections` (which must be valid).
    pub fn gateway_with(sections: &str) -> Config {
        Config::from_yaml(&complete(sections), Path::new("/etc/jwtgate"), &|_| None)
            .unwrap_or_else(|p| panic!("{sections}: {p:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{assert_problems, gateway_problems, gateway_with};

    /// The claims header cannot be an identity header too.
    #[test]
    fn payload_header_is_its_own() {
        let p = gateway_problems(
            "issuers: [ { name: i, issuer: \"https://i\", jwks_file: k.json, audiences: [a] } ]\nidentity_headers: { X-User-Id: sub }\nupstreams: [ { name: u, url: \"http://127.0.0.1:1\" } ]\nroutes: [ { name: r, match: { path_prefix: / }, upstream: u, auth: { issuers: [i], forward_payload: x-user-id } } ]\n",
        );
        assert!(
            p.iter().any(|p| p.path == "routes[0].auth.forward_payload"),
            "{p:?}"
        );
        let p = gateway_problems(
            "issuers: [ { name: i, issuer: \"https://i\", jwks_file: k.json, audiences: [a] } ]\nidentity_headers: { X-User-Id: sub }\nupstreams: [ { name: u, url: \"http://127.0.0.1:1\" } ]\nroutes: [ { name: r, match: { path_prefix: / }, upstream: u, auth: { issuers: [i], identity_headers: { X-User-Id: email, Host: x } } } ]\n",
        );
        for path in [
            "routes[0].auth.identity_headers.x-user-id",
            "routes[0].auth.identity_headers.Host",
        ] {
            assert!(p.iter().any(|p| p.path == path), "{path}: {p:?}");
        }
    }

    /// A misspelt key is answered with the closest one it could be.
    #[test]
    fn misspelt_keys_get_a_suggestion() {
        let p = gateway_problems("limits: { max_conections: 5 }\n");
        assert!(
            p.iter()
                .any(|p| p.message.contains("did you mean `max_connections`?")),
            "{p:?}"
        );
        let p = gateway_problems("limits: { zzz: 5 }\n");
        assert!(
            !p.iter().any(|p| p.message.contains("did you mean")),
            "{p:?}"
        );
    }

    /// Unknown keys anywhere are refused at their position; so is a bad realm.
    #[test]
    fn problem_table() {
        let cases = [
            ("nope: 1\n", "nope", (1, 1)),
            ("realm: \"a\\\"b\"\n", "realm", (1, 1)),
            ("shutdown_grace: 0s\n", "shutdown_grace", (1, 1)),
            ("admin: { address: x }\n", "admin.address", (1, 10)),
            (
                "listeners: [ { address: \"127.0.0.1:0\", forward_auth: true } ]\n",
                "listeners[0].forward_auth",
                (1, 40),
            ),
        ];
        assert_problems(&cases, gateway_problems);
    }

    /// A reload that changes the sync token or an API key hash needs a restart, though
    /// both are redacted in `Debug`.
    #[test]
    fn restart_is_decided_on_typed_values() {
        let a = gateway_with("revocation: { control_url: \"http://127.0.0.1:1\", token: one }\n");
        let b = gateway_with("revocation: { control_url: \"http://127.0.0.1:1\", token: two }\n");
        assert_eq!(format!("{:?}", a.revocation), format!("{:?}", b.revocation));
        assert!(a.needs_restart_for(&b));
        assert!(!a.needs_restart_for(&a.clone()));
        let keys = |hash: &str| {
            gateway_with(&format!(
                "revocation: {{ store: \"sqlite://r.db\", writers: {{ api_keys: [ {{ name: k, sha256: \"{}\" }} ] }} }}\n",
                hash.repeat(32)
            ))
        };
        assert!(keys("ab").needs_restart_for(&keys("cd")));
        let routes = gateway_with("revocation: { control_url: \"http://127.0.0.1:1\", token: one }\nroutes: [ { name: other, match: { path: /x }, upstream: u, auth: none } ]\n");
        assert!(
            !a.needs_restart_for(&routes),
            "routes apply without a restart"
        );
    }
}
