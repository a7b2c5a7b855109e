//! Configuration in two phases: [`raw`] parses the YAML schema (unknown keys are errors),
//! [`Config::from_yaml`] validates it into the typed, compiled form the gateway runs on.
//! Every problem is reported with its key path, line and column; nothing is bound or
//! fetched until the whole file is valid.

pub mod raw;
pub mod source;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::{Method, Uri};
use jsonwebtoken::Algorithm;
use serde_norway::Value;

use source::Positions;
pub use source::{Problem, Problems};

/// The validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<SocketAddr>,
    pub limits: Limits,
    pub log: LogConfig,
    pub realm: String,
    pub token_cache: TokenCacheConfig,
    pub issuers: Vec<IssuerConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub identity_headers: Vec<IdentityHeader>,
    pub routes: Vec<RouteConfig>,
    pub revocation: Option<RevocationConfig>,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Things that are allowed but worth an operator's look (`check` prints them).
    pub warnings: Vec<Problem>,
}

#[derive(Debug, Clone)]
pub struct RevocationConfig {
    pub source: RevocationSource,
    /// Where the last known set is kept across restarts.
    pub snapshot_file: Option<PathBuf>,
    /// How long the set may go without word from the control plane before `on_stale`.
    pub max_staleness: Duration,
    /// `on_stale: deny`: fail closed (503) once stale; `allow` enforces the last known set.
    pub deny_when_stale: bool,
    /// How often the gateway drops entries past their time from its set.
    pub purge_interval: Duration,
}

#[derive(Clone)]
pub enum RevocationSource {
    Control {
        url: Uri,
        token: Option<String>,
    },
    /// Single-node mode: the gateway runs the control API itself.
    Store {
        store: StoreUrl,
        access: AccessConfig,
    },
}

impl std::fmt::Debug for RevocationSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RevocationSource::Control { url, .. } => write!(f, "Control({url})"),
            RevocationSource::Store { store, .. } => write!(f, "Store({store:?})"),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            // The URL may hold a password.
            StoreUrl::Postgres(_) => f.write_str("postgres://<redacted>"),
        }
    }
}

/// A named API key, held as the SHA-256 of the key.
#[derive(Clone)]
pub struct ApiKey {
    pub name: String,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({})", self.name)
    }
}

/// Who may write and read revocations, and how long entries are kept.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    pub writer_issuers: Vec<IssuerConfig>,
    pub writer_scope: String,
    pub writer_keys: Vec<ApiKey>,
    pub reader_keys: Vec<ApiKey>,
    /// Retention of a `sid` entry without `expires_at`.
    pub default_retention: Duration,
    /// The longest lifetime a token of these issuers can have: a `sub` cutoff is kept
    /// this long, after which no token issued before it can still be valid.
    pub max_token_lifetime: Duration,
    /// How often entries past their time are deleted.
    pub purge_interval: Duration,
}

/// The validated `control.yaml`.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub listen: SocketAddr,
    pub store: StoreUrl,
    pub access: AccessConfig,
    pub idp: IdpConfig,
    pub log: LogConfig,
    pub warnings: Vec<Problem>,
}

/// What the control plane accepts straight from identity providers and OAuth clients.
#[derive(Debug, Clone, Default)]
pub struct IdpConfig {
    /// Issuers whose tokens `POST /v1/revoke` (RFC 7009) revokes.
    pub token_issuers: Vec<IssuerConfig>,
    pub backchannel: Option<BackchannelConfig>,
    /// OAuth clients allowed to call `/v1/revoke` with HTTP Basic credentials.
    pub revoke_clients: Vec<ApiKey>,
}

/// OIDC Back-Channel Logout: logout tokens of `issuer` addressed to one of its client ids.
#[derive(Debug, Clone)]
pub struct BackchannelConfig {
    /// The issuer, with `audiences` set to the accepted client ids.
    pub issuer: IssuerConfig,
    /// How old `iat` may be.
    pub max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub json: bool,
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct TokenCacheConfig {
    pub max_entries: u64,
    pub ttl: Duration,
}

#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `jwks_uri` from `{issuer}/.well-known/openid-configuration`.
    Discovery,
    Uri(Uri),
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    pub name: String,
    pub issuer: String,
    pub keys: KeySource,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub jwks_refresh: Duration,
    pub jwks_max_stale: Duration,
    /// Minimum time between refetches caused by an unknown `kid`.
    pub jwks_refetch_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// Scheme and authority only; the request's normalized path is appended.
    pub uri: Uri,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Speak HTTP/2 to the upstream (prior knowledge on http, ALPN on https).
    pub http2: bool,
    /// Trust these CAs (PEM) instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Present this client certificate (PEM cert, PEM key).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub tls: Option<TlsFiles>,
}

/// PEM files of a TLS listener; re-read on SIGHUP and when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct IdentityHeader {
    pub name: HeaderName,
    /// Dotted claim path, split.
    pub claim: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// Segment-aware: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(String),
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Lower-case host without port.
    pub host: Option<String>,
    pub path: PathMatch,
    pub methods: Option<Vec<Method>>,
    pub upstream: usize,
    /// `None` is `auth: none`.
    pub auth: Option<AuthPolicy>,
    /// Request bodies larger than this are refused (413).
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// Indexes into `Config::issuers`.
    pub issuers: Vec<usize>,
    pub scopes: Vec<String>,
    pub claims: Vec<ClaimRequirement>,
    pub sources: Vec<TokenSource>,
    pub forward_token: bool,
    /// End live connections (WebSocket, streams) at the token's `exp` (+ leeway).
    pub close_on_expiry: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The raw value of a named header.
    Header(HeaderName),
    Cookie(String),
    Query(String),
    /// `Sec-WebSocket-Protocol: <marker>, <token>[, <real subprotocols>]`.
    WebSocketProtocol(String),
}

#[derive(Debug, Clone)]
pub struct ClaimRequirement {
    pub claim: Vec<String>,
    pub matcher: ClaimMatcher,
}

#[derive(Debug, Clone)]
pub enum ClaimMatcher {
    Equals(serde_json::Value),
    OneOf(Vec<serde_json::Value>),
    Contains(serde_json::Value),
}

const HMAC_ALGS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// Headers an identity header may never be: the gateway or HTTP itself owns them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-request-id",
];

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
        let raw: raw::Gateway = deserialize(value, &pos)?;
        let mut v = Validator {
            pos: &pos,
            problems: Vec::new(),
            warnings: Vec::new(),
        };
        let config = v.gateway(raw, base);
        if v.problems.is_empty() {
            let mut config = config;
            config.warnings = v.warnings;
            Ok(config)
        } else {
            Err(v.problems)
        }
    }
}

impl ControlConfig {
    /// Read and validate a control-plane file. The error lists every problem found.
    pub fn load(path: &Path) -> Result<ControlConfig, Problems> {
        load_file(path, ControlConfig::from_yaml)
    }

    pub fn from_yaml(
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ControlConfig, Vec<Problem>> {
        let (value, pos) = source::load(text, env)?;
        let raw: raw::Control = deserialize(value, &pos)?;
        let mut v = Validator {
            pos: &pos,
            problems: Vec::new(),
            warnings: Vec::new(),
        };
        let listen = v.addr("listen", &raw.listen);
        let store = v.store_url("store", &raw.store, base);
        let access = v.access(
            "",
            RawAccess {
                writers: raw.writers.as_ref(),
                readers: raw.readers.as_ref(),
                retention: raw.default_retention,
                lifetime: raw.max_token_lifetime,
                purge: raw.purge_interval,
            },
            base,
        );
        let log = v.log(&raw.log);
        let idp = v.idp(&raw, base);
        if v.problems.is_empty() {
            if let (Some(listen), Some(store)) = (listen, store) {
                return Ok(ControlConfig {
                    listen,
                    store,
                    access,
                    idp,
                    log,
                    warnings: v.warnings,
                });
            }
        }
        Err(v.problems)
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
pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(
    value: Value,
    pos: &Positions,
) -> Result<T, Vec<Problem>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![pos.problem(&path, e.into_inner().to_string())]
    })
}

/// The access-related keys shared by `control.yaml` and a single-node `revocation` block.
struct RawAccess<'a> {
    writers: Option<&'a raw::Writers>,
    readers: Option<&'a raw::Readers>,
    retention: Option<raw::Dur>,
    lifetime: Option<raw::Dur>,
    purge: Option<raw::Dur>,
}

struct Validator<'a> {
    pos: &'a Positions,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Validator<'_> {
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

    fn positive(&mut self, path: &str, d: Option<raw::Dur>, default: Duration) -> Duration {
        match d {
            Some(raw::Dur(d)) if d.is_zero() => {
                self.err(path, "must be greater than zero");
                default
            }
            Some(raw::Dur(d)) => d,
            None => default,
        }
    }

    fn gateway(&mut self, raw: raw::Gateway, base: &Path) -> Config {
        if raw.listeners.is_empty() {
            self.err("listeners", "at least one listener is required");
        }
        let listeners = raw
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let address = self.addr(&format!("listeners[{i}].address"), &l.address)?;
                let tls = l.tls.as_ref().map(|t| TlsFiles {
                    cert: base.join(&t.cert),
                    key: base.join(&t.key),
                    client_ca: t.client_ca.as_ref().map(|c| base.join(c)),
                });
                Some(ListenerConfig { address, tls })
            })
            .collect();
        let admin = raw
            .admin
            .as_ref()
            .and_then(|a| self.addr("admin.address", &a.address));

        let limits = Limits {
            header_timeout: self.positive(
                "limits.header_timeout",
                raw.limits.header_timeout,
                Duration::from_secs(10),
            ),
            max_header_bytes: raw.limits.max_header_bytes.unwrap_or(16 * 1024),
            max_connections: raw.limits.max_connections.unwrap_or(10_000),
            idle_timeout: self.positive(
                "limits.idle_timeout",
                raw.limits.idle_timeout,
                Duration::from_secs(60),
            ),
        };
        if limits.max_header_bytes < 1024 {
            self.err("limits.max_header_bytes", "must be at least 1024");
        }
        if limits.max_connections == 0 {
            self.err("limits.max_connections", "must be greater than zero");
        }

        let log = self.log(&raw.log);

        let token_cache = TokenCacheConfig {
            max_entries: raw.token_cache.max_entries.unwrap_or(100_000),
            ttl: self.positive(
                "token_cache.ttl",
                raw.token_cache.ttl,
                Duration::from_secs(300),
            ),
        };

        let issuers = self.issuers(&raw.issuers, base);
        let upstreams = self.upstreams(&raw.upstreams, base);
        let identity_headers = self.identity_headers(&raw.identity_headers);
        let routes = self.routes(raw.routes, &issuers, &upstreams);
        let revocation = raw.revocation.as_ref().map(|r| self.revocation(r, base));

        Config {
            listeners,
            admin,
            limits,
            log,
            realm: match raw.realm {
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
            },
            token_cache,
            issuers,
            upstreams,
            identity_headers,
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

    fn idp(&mut self, raw: &raw::Control, base: &Path) -> IdpConfig {
        let token_issuers = self.issuers_at("issuers", &raw.issuers, base);
        let backchannel = raw.backchannel_logout.as_ref().and_then(|b| {
            if b.client_ids.is_empty() || b.client_ids.iter().any(String::is_empty) {
                self.err(
                    "backchannel_logout.client_ids",
                    "list the client ids logout tokens are addressed to (their `aud`)",
                );
            }
            let Some(issuer) = token_issuers.iter().find(|i| i.name == b.issuer) else {
                self.err(
                    "backchannel_logout.issuer",
                    format!("no entry of `issuers` is named `{}`", b.issuer),
                );
                return None;
            };
            if matches!(issuer.keys, KeySource::Secret(_)) {
                self.err(
                    "backchannel_logout.issuer",
                    "logout tokens must be signed with the provider's keys, not a shared secret",
                );
            }
            let mut issuer = issuer.clone();
            issuer.audiences = b.client_ids.clone();
            Some(BackchannelConfig {
                issuer,
                max_age: self.positive(
                    "backchannel_logout.max_age",
                    b.max_age,
                    Duration::from_secs(300),
                ),
            })
        });
        let clients: Vec<raw::ApiKey> = raw
            .revoke_clients
            .iter()
            .map(|c| raw::ApiKey {
                name: c.client_id.clone(),
                sha256: c.secret_sha256.clone(),
            })
            .collect();
        let revoke_clients = self.api_keys("revoke_clients", &clients);
        IdpConfig {
            token_issuers,
            backchannel,
            revoke_clients,
        }
    }

    fn log(&mut self, raw: &raw::Log) -> LogConfig {
        let json = match raw.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                self.err(
                    "log.format",
                    format!("`{other}` is not a log format: use text or json"),
                );
                false
            }
        };
        let level = raw.level.clone().unwrap_or_else(|| "info".to_owned());
        if !["trace", "debug", "info", "warn", "error"].contains(&level.as_str()) {
            self.err(
                "log.level",
                format!("`{level}` is not a level: use trace, debug, info, warn or error"),
            );
        }
        LogConfig { json, level }
    }

    fn store_url(&mut self, path: &str, s: &str, base: &Path) -> Option<StoreUrl> {
        if let Some(rest) = s.strip_prefix("sqlite://") {
            if rest.is_empty() {
                self.err(
                    path,
                    "write sqlite:///absolute/path.db or sqlite://relative.db",
                );
                return None;
            }
            return Some(StoreUrl::Sqlite(base.join(rest)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return match s.parse::<tokio_postgres::Config>() {
                Ok(_) => Some(StoreUrl::Postgres(s.to_owned())),
                Err(e) => {
                    self.err(path, format!("not a PostgreSQL URL: {e}"));
                    None
                }
            };
        }
        self.err(
            path,
            "a store is sqlite:///path/to/file.db or postgres://user@host/db",
        );
        None
    }

    fn api_keys(&mut self, path: &str, keys: &[raw::ApiKey]) -> Vec<ApiKey> {
        let mut out = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let p = format!("{path}[{i}].sha256");
            let hex = k.sha256.trim();
            let bytes: Option<Vec<u8>> = (hex.len() == 64 && hex.is_ascii())
                .then(|| {
                    (0..32)
                        .map(|j| u8::from_str_radix(&hex[2 * j..2 * j + 2], 16).ok())
                        .collect()
                })
                .flatten();
            match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                Some(sha256) => out.push(ApiKey {
                    name: k.name.clone(),
                    sha256,
                }),
                None => self.err(
                    &p,
                    "the hex SHA-256 of the key (64 hex digits): `printf %s KEY | sha256sum`",
                ),
            }
        }
        out
    }

    fn access(&mut self, prefix: &str, a: RawAccess<'_>, base: &Path) -> AccessConfig {
        let empty_w = raw::Writers::default();
        let empty_r = raw::Readers::default();
        let w = a.writers.unwrap_or(&empty_w);
        let r = a.readers.unwrap_or(&empty_r);
        let writer_issuers = self.issuers_at(&format!("{prefix}writers.issuers"), &w.issuers, base);
        if !writer_issuers.is_empty() && w.scope.as_deref().is_none_or(str::is_empty) {
            self.err(&format!("{prefix}writers.scope"), "writers authenticated by JWT need the `scope` their tokens must carry, e.g. jwtgate:revoke");
        }
        AccessConfig {
            writer_issuers,
            writer_scope: w.scope.clone().unwrap_or_default(),
            writer_keys: self.api_keys(&format!("{prefix}writers.api_keys"), &w.api_keys),
            reader_keys: self.api_keys(&format!("{prefix}readers.api_keys"), &r.api_keys),
            default_retention: self.positive(
                &format!("{prefix}default_retention"),
                a.retention,
                Duration::from_secs(86_400),
            ),
            max_token_lifetime: self.positive(
                &format!("{prefix}max_token_lifetime"),
                a.lifetime,
                Duration::from_secs(86_400),
            ),
            purge_interval: self.positive(
                &format!("{prefix}purge_interval"),
                a.purge,
                Duration::from_secs(60),
            ),
        }
    }

    fn revocation(&mut self, r: &raw::Revocation, base: &Path) -> RevocationConfig {
        let p = "revocation";
        let source = match (&r.control_url, &r.store) {
            (Some(url), None) => {
                if r.writers.is_some() || r.readers.is_some() {
                    self.err(&format!("{p}.writers"), "writers and readers belong to the control plane; they apply here only with `store` (single-node mode)");
                }
                let uri = self
                    .fetch_url(&format!("{p}.control_url"), url)
                    .unwrap_or_default();
                RevocationSource::Control {
                    url: uri,
                    token: r.token.clone(),
                }
            }
            (None, Some(store)) => {
                let access = self.access(
                    "revocation.",
                    RawAccess {
                        writers: r.writers.as_ref(),
                        readers: r.readers.as_ref(),
                        retention: r.default_retention,
                        lifetime: r.max_token_lifetime,
                        purge: r.purge_interval,
                    },
                    base,
                );
                let store = self
                    .store_url(&format!("{p}.store"), store, base)
                    .unwrap_or(StoreUrl::Sqlite(PathBuf::new()));
                RevocationSource::Store { store, access }
            }
            _ => {
                self.err(p, "give exactly one of `control_url` (sync from a control plane) or `store` (single-node mode)");
                RevocationSource::Control {
                    url: Uri::default(),
                    token: None,
                }
            }
        };
        let deny_when_stale = match r.on_stale.as_deref() {
            None | Some("allow") => false,
            Some("deny") => true,
            Some(other) => {
                self.err(&format!("{p}.on_stale"), format!("`{other}`: use allow (enforce the last known set) or deny (fail closed with 503)"));
                false
            }
        };
        RevocationConfig {
            source,
            snapshot_file: r.snapshot_file.as_ref().map(|f| base.join(f)),
            max_staleness: self.positive(
                &format!("{p}.max_staleness"),
                r.max_staleness,
                Duration::from_secs(60),
            ),
            deny_when_stale,
            purge_interval: self.positive(
                &format!("{p}.purge_interval"),
                r.purge_interval,
                Duration::from_secs(30),
            ),
        }
    }

    fn issuers(&mut self, raw: &[raw::Issuer], base: &Path) -> Vec<IssuerConfig> {
        self.issuers_at("issuers", raw, base)
    }

    fn issuers_at(&mut self, at: &str, raw: &[raw::Issuer], base: &Path) -> Vec<IssuerConfig> {
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
                if s.len() < 32 {
                    self.err(
                        &format!("{p}.secret"),
                        "an HMAC secret must be at least 32 bytes",
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
            });
        }
        out
    }

    /// An http(s) URL to fetch keys from; plain http is allowed but warned about off loopback.
    fn fetch_url(&mut self, path: &str, s: &str) -> Option<Uri> {
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

    fn upstreams(&mut self, raw: &[raw::Upstream], base: &Path) -> Vec<UpstreamConfig> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let p = format!("upstreams[{i}]");
            if !names.insert(r.name.clone()) {
                self.err(
                    &format!("{p}.name"),
                    format!("duplicate upstream name `{}`", r.name),
                );
            }
            let uri = match r.url.parse::<Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                    if u.path_and_query()
                        .is_some_and(|pq| pq.as_str() != "/" && !pq.as_str().is_empty())
                    {
                        self.err(&format!("{p}.url"), "must not carry a path or query: the request's normalized path is forwarded as is");
                    }
                    u
                }
                _ => {
                    self.err(
                        &format!("{p}.url"),
                        format!(
                            "`{}` must be an absolute http:// or https:// URL such as http://127.0.0.1:3000",
                            r.url
                        ),
                    );
                    Uri::default()
                }
            };
            let uri = Uri::builder()
                .scheme(uri.scheme_str().unwrap_or("http"))
                .authority(uri.authority().map(|a| a.as_str()).unwrap_or("invalid"))
                .path_and_query("/")
                .build()
                .unwrap_or_default();
            out.push(UpstreamConfig {
                name: r.name.clone(),
                uri,
                connect_timeout: self.positive(
                    &format!("{p}.connect_timeout"),
                    r.connect_timeout,
                    Duration::from_secs(2),
                ),
                timeout: self.positive(&format!("{p}.timeout"), r.timeout, Duration::from_secs(30)),
                http2: match r.protocol.as_deref() {
                    None | Some("h1") => false,
                    Some("h2") => true,
                    Some(other) => {
                        self.err(&format!("{p}.protocol"), format!("`{other}`: use h1 or h2"));
                        false
                    }
                },
                ca: r.ca.as_ref().map(|c| base.join(c)),
                client_cert: match (&r.client_cert, &r.client_key) {
                    (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
                    (None, None) => None,
                    _ => {
                        self.err(&p, "give both `client_cert` and `client_key`, or neither");
                        None
                    }
                },
            });
        }
        if out.is_empty() {
            self.err("upstreams", "at least one upstream is required");
        }
        out
    }

    fn identity_headers(
        &mut self,
        raw: &std::collections::BTreeMap<String, String>,
    ) -> Vec<IdentityHeader> {
        let mut out: Vec<IdentityHeader> = Vec::new();
        for (name, claim) in raw {
            let p = format!("identity_headers.{name}");
            let Ok(hn) = HeaderName::from_bytes(name.as_bytes()) else {
                self.err(&p, format!("`{name}` is not a valid header name"));
                continue;
            };
            if RESERVED_HEADERS.contains(&hn.as_str()) {
                self.err(
                    &p,
                    format!("`{name}` is owned by HTTP or the gateway and cannot carry identity"),
                );
                continue;
            }
            if out.iter().any(|h| h.name == hn) {
                self.err(
                    &p,
                    format!("`{name}` is listed twice (header names are case-insensitive)"),
                );
                continue;
            }
            let path: Vec<String> = claim.split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                self.err(
                    &p,
                    format!("`{claim}` is not a claim path: write `sub` or `realm_access.roles`"),
                );
                continue;
            }
            out.push(IdentityHeader {
                name: hn,
                claim: path,
            });
        }
        out
    }

    fn routes(
        &mut self,
        raw: Vec<raw::Route>,
        issuers: &[IssuerConfig],
        upstreams: &[UpstreamConfig],
    ) -> Vec<RouteConfig> {
        let issuer_index: HashMap<&str, usize> = issuers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let upstream_index: HashMap<&str, usize> = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i))
            .collect();
        let mut names = HashSet::new();
        let mut out = Vec::new();
        if raw.is_empty() {
            self.err("routes", "at least one route is required");
        }
        for (i, r) in raw.into_iter().enumerate() {
            let p = format!("routes[{i}]");
            if !names.insert(r.name.clone()) {
                self.err(
                    &format!("{p}.name"),
                    format!("duplicate route name `{}`", r.name),
                );
            }
            let path = match (&r.matcher.path, &r.matcher.path_prefix) {
                (Some(x), None) => self
                    .route_path(&format!("{p}.match.path"), x)
                    .map(PathMatch::Exact),
                (None, Some(x)) => self
                    .route_path(&format!("{p}.match.path_prefix"), x)
                    .map(|s| {
                        PathMatch::Prefix(if s == "/" {
                            s
                        } else {
                            s.trim_end_matches('/').to_owned()
                        })
                    }),
                _ => {
                    self.err(
                        &format!("{p}.match"),
                        "give exactly one of `path` or `path_prefix`",
                    );
                    None
                }
            };
            let methods = r.matcher.methods.as_ref().map(|ms| {
                ms.iter()
                    .enumerate()
                    .filter_map(|(j, m)| {
                        let up = m.to_ascii_uppercase();
                        match Method::from_bytes(up.as_bytes()) {
                            Ok(m) => Some(m),
                            Err(_) => {
                                self.err(
                                    &format!("{p}.match.methods[{j}]"),
                                    format!("`{m}` is not an HTTP method"),
                                );
                                None
                            }
                        }
                    })
                    .collect::<Vec<_>>()
            });
            let host = r.matcher.host.as_ref().map(|h| h.to_ascii_lowercase());
            if let Some(h) = &host {
                if h.is_empty() || h.contains(':') || h.contains('/') {
                    self.err(
                        &format!("{p}.match.host"),
                        "a host name without port, e.g. api.example.com",
                    );
                }
            }
            let upstream = match upstream_index.get(r.upstream.as_str()) {
                Some(u) => *u,
                None => {
                    self.err(
                        &format!("{p}.upstream"),
                        format!("no upstream named `{}`", r.upstream),
                    );
                    0
                }
            };
            let auth = self.auth(&format!("{p}.auth"), r.auth, &issuer_index);
            if let Some(path) = path {
                out.push(RouteConfig {
                    name: r.name,
                    host,
                    path,
                    methods,
                    upstream,
                    auth,
                    max_body_bytes: r.max_body_bytes,
                });
            }
        }
        out
    }

    fn route_path(&mut self, path: &str, s: &str) -> Option<String> {
        match crate::route::normalize_path(s.as_bytes()) {
            Ok(n) if n == s => Some(s.to_owned()),
            Ok(n) => {
                self.err(
                    path,
                    format!("`{s}` is not in normalized form; write `{n}`"),
                );
                None
            }
            Err(e) => {
                self.err(path, format!("`{s}` is not a valid path: {e}"));
                None
            }
        }
    }

    fn auth(
        &mut self,
        path: &str,
        value: Value,
        issuer_index: &HashMap<&str, usize>,
    ) -> Option<AuthPolicy> {
        if value.as_str() == Some("none") {
            return None;
        }
        if !value.is_mapping() {
            self.err(path, "write `auth: none` or `auth: { issuers: [...] }`");
            return None;
        }
        let policy: raw::Policy = match deserialize(value, &Positions::default()) {
            Ok(p) => p,
            Err(e) => {
                for p in e {
                    let sub = if p.path.is_empty() {
                        path.to_owned()
                    } else {
                        format!("{path}.{}", p.path)
                    };
                    self.err(&sub, p.message);
                }
                return None;
            }
        };
        if policy.issuers.is_empty() {
            self.err(
                &format!("{path}.issuers"),
                "name at least one issuer, or write `auth: none`",
            );
        }
        let issuers = policy
            .issuers
            .iter()
            .enumerate()
            .filter_map(|(j, n)| match issuer_index.get(n.as_str()) {
                Some(i) => Some(*i),
                None => {
                    self.err(
                        &format!("{path}.issuers[{j}]"),
                        format!("no issuer named `{n}`"),
                    );
                    None
                }
            })
            .collect();
        let mut claims = Vec::new();
        for (name, m) in policy.require.claims {
            let cp = format!("{path}.require.claims.{name}");
            let claim: Vec<String> = name.split('.').map(str::to_owned).collect();
            if claim.iter().any(String::is_empty) {
                self.err(&cp, "not a claim path");
                continue;
            }
            let matcher: raw::Matcher = match serde_norway::from_value(m) {
                Ok(m) => m,
                Err(e) => {
                    self.err(
                        &cp,
                        format!("{e}; use one of `equals: V`, `one_of: [..]`, `contains: V`"),
                    );
                    continue;
                }
            };
            let matcher = match (matcher.equals, matcher.one_of, matcher.contains) {
                (Some(v), None, None) => ClaimMatcher::Equals(v),
                (None, Some(v), None) => ClaimMatcher::OneOf(v),
                (None, None, Some(v)) => ClaimMatcher::Contains(v),
                _ => {
                    self.err(&cp, "give exactly one of `equals`, `one_of`, `contains`");
                    continue;
                }
            };
            claims.push(ClaimRequirement { claim, matcher });
        }
        let sources = match policy.token_sources {
            None => vec![TokenSource::Bearer],
            Some(list) => {
                if list.is_empty() {
                    self.err(
                        &format!("{path}.token_sources"),
                        "list at least one source, or leave it out for `[header]`",
                    );
                }
                let mut out: Vec<TokenSource> = Vec::new();
                for (j, v) in list.iter().enumerate() {
                    let sp = format!("{path}.token_sources[{j}]");
                    match token_source(v) {
                        Ok(s) if out.contains(&s) => self.err(&sp, "listed twice"),
                        Ok(s) => out.push(s),
                        Err(e) => self.err(&sp, e),
                    }
                }
                out
            }
        };
        Some(AuthPolicy {
            issuers,
            scopes: policy.require.scopes,
            claims,
            sources,
            forward_token: policy.forward_token,
            close_on_expiry: policy.close_on_expiry.unwrap_or(true),
        })
    }
}

fn token_source(v: &Value) -> Result<TokenSource, String> {
    const HELP: &str =
        "a token source is `header`, `{ header: NAME }`, `{ cookie: NAME }`, `{ query: NAME }` or `{ websocket_protocol: bearer }`";
    if v.as_str() == Some("header") {
        return Ok(TokenSource::Bearer);
    }
    let map = v.as_mapping().filter(|m| m.len() == 1).ok_or(HELP)?;
    let (k, val) = map.iter().next().ok_or(HELP)?;
    let name = val.as_str().filter(|s| !s.is_empty()).ok_or(HELP)?;
    match k.as_str() {
        Some("header") => HeaderName::from_bytes(name.as_bytes())
            .map(TokenSource::Header)
            .map_err(|_| format!("`{name}` is not a header name")),
        Some("cookie") => Ok(TokenSource::Cookie(name.to_owned())),
        Some("query") => Ok(TokenSource::Query(name.to_owned())),
        Some("websocket_protocol") if name.contains([',', ' ']) => {
            Err("the subprotocol marker is one token, e.g. `bearer`".to_owned())
        }
        Some("websocket_protocol") => Ok(TokenSource::WebSocketProtocol(name.to_owned())),
        _ => Err(HELP.to_owned()),
    }
}

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

pub(crate) fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
