//! Sections `listeners`, `admin`, `limits`, `log` and `shutdown_grace`: where the gateway
//! listens and how much it lets a client hold.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;

use super::duration::Dur;
use super::Validator;

/// `listeners[]`: one address to accept clients on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `IP:port`, e.g. `0.0.0.0:8443` or `[::]:8080`.
    pub address: String,
    /// Serve TLS on this listener (otherwise plain HTTP).
    pub tls: Option<RawListenerTls>,
    /// Answer authorization decisions for another proxy instead of proxying: `true` when
    /// the caller describes the original request in `X-Forwarded-*` headers (nginx
    /// `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth`), or
    /// `{ original: request_line, path_prefix: /check }` when it sends the original
    /// method, path and Host as its own (Envoy `ext_authz`). Only `trusted_proxies` may ask.
    pub forward_auth: Option<Value>,
}

/// `listeners[].forward_auth` in its long form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForwardAuth {
    /// Where the original request is described (default `headers`).
    #[serde(default)]
    original: Original,
    /// With `request_line`: the prefix the caller puts before the original path.
    path_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Original {
    #[default]
    Headers,
    RequestLine,
}

/// `listeners[].tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// PEM certificate chain, leaf first; re-read when the file changes.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// PEM bundle of CAs: clients must present a certificate they signed (mTLS).
    pub client_ca: Option<String>,
}

/// `admin`: the listener of `/metrics`, `/healthz`, `/readyz` (and, in single-node mode,
/// the control API).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `IP:port`; keep it on loopback or a private network.
    pub address: String,
}

/// `limits`: what one client may hold.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Time a client has to send a request head (default 10s).
    pub header_timeout: Option<Dur>,
    /// Largest request head in bytes (default 16384, at least 1024).
    pub max_header_bytes: Option<usize>,
    /// Connections served at once; the excess waits in the listen backlog (default 10000).
    pub max_connections: Option<usize>,
    /// Time a connection may sit with no request in flight (default 60s); a connection that
    /// has sent no request yet gets `header_timeout`. Idle connections are also closed first
    /// when `max_connections` is reached.
    pub idle_timeout: Option<Dur>,
    /// Longest silence inside a request or response body before the exchange is cut
    /// (default 60s; SSE upstreams should send heartbeats more often).
    pub body_timeout: Option<Dur>,
    /// HTTP/2 streams one connection may have open at once (default 100).
    pub max_concurrent_streams: Option<u32>,
    /// Requests forwarded upstream at once across all connections (default:
    /// `max_connections`); past it a request waits up to its upstream's `timeout`, then 503.
    pub max_in_flight: Option<usize>,
    /// Connections one client address may hold at once (default: no limit of its own).
    pub max_connections_per_client: Option<usize>,
    /// Threads serving client connections, each with its own single-threaded runtime
    /// (default: one per CPU the process may run on).
    pub workers: Option<usize>,
}

/// `log`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` (default) or `json`.
    pub format: Option<LogFormat>,
    /// `trace`, `debug`, `info` (default), `warn` or `error`; `RUST_LOG` overrides it.
    pub level: Option<LogLevel>,
}

/// A validated listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// The address bound.
    pub address: SocketAddr,
    /// TLS files, when the listener speaks TLS.
    pub tls: Option<TlsFiles>,
    /// Decisions for another proxy instead of proxying.
    pub forward_auth: Option<ForwardAuth>,
}

/// How a forward-auth caller describes the request it asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardAuth {
    /// In `X-Forwarded-Method`/`-Uri`/`-Host`/`-Proto` (or `X-Original-Method`/`-URI`).
    Headers,
    /// As the decision request's own method, Host and path (after `path_prefix`, which may
    /// be empty); the scheme still in `X-Forwarded-Proto`. Envoy `ext_authz` asks this way.
    RequestLine {
        /// What the caller puts before the original path (`""` for nothing).
        path_prefix: String,
    },
}

/// PEM files of a TLS listener; re-read on SIGHUP and when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// CAs that client certificates must chain to (mTLS), if required.
    pub client_ca: Option<PathBuf>,
}

/// Validated `limits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a request head (and to finish a TLS handshake).
    pub header_timeout: Duration,
    /// Largest request head accepted.
    pub max_header_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a connection may sit with no request in flight.
    pub idle_timeout: Duration,
    /// Longest silence inside a body.
    pub body_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Requests forwarded at once, in total.
    pub max_in_flight: usize,
    /// Connections per client address (`None`: only `max_connections`).
    pub max_connections_per_client: Option<usize>,
    /// Threads serving client connections.
    pub workers: usize,
}

/// What happens to a request header whose name holds `_`. CGI, WSGI, PHP and Rack fold
/// `_` and `-` into one variable name, so `X_User_Id` would read as `X-User-Id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderscoreHeaders {
    /// Drop such headers (nginx's default).
    #[default]
    Drop,
    /// Refuse the request with 400.
    Reject,
    /// Forward them, except those that fold into a header the gateway sets.
    Allow,
}

/// An address range (`10.0.0.0/8`, `fd00::/8`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `ADDR/PREFIX` or a single address.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let net: std::net::IpAddr = addr.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { net, prefix })
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v) => u128::from(u32::from(v)),
                IpAddr::V6(v) => u128::from(v),
            }
        };
        if self.net.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let shift = width - u32::from(self.prefix);
        let mask = if shift >= 128 { 0 } else { u128::MAX << shift };
        let mask = if width == 32 {
            mask & u128::from(u32::MAX)
        } else {
            mask
        };
        bits(ip) & mask == bits(self.net) & mask
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The `tracing` filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Validated `log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogConfig {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// The default level.
    pub level: LogLevel,
}

impl From<&RawLog> for LogConfig {
    fn from(raw: &RawLog) -> LogConfig {
        LogConfig {
            format: raw.format.unwrap_or_default(),
            level: raw.level.unwrap_or_default(),
        }
    }
}

impl Validator<'_> {
    pub(super) fn listeners(&mut self, raw: &[RawListener], base: &Path) -> Vec<ListenerConfig> {
        if raw.is_empty() {
            self.err("listeners", "at least one listener is required");
        }
        raw.iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let address = self.addr(&format!("listeners[{i}].address"), &l.address)?;
                let tls = l.tls.as_ref().map(|t| TlsFiles {
                    cert: base.join(&t.cert),
                    key: base.join(&t.key),
                    client_ca: t.client_ca.as_ref().map(|c| base.join(c)),
                });
                let forward_auth = l
                    .forward_auth
                    .clone()
                    .and_then(|v| self.forward_auth(&format!("listeners[{i}].forward_auth"), v));
                Some(ListenerConfig {
                    address,
                    tls,
                    forward_auth,
                })
            })
            .collect()
    }

    fn forward_auth(&mut self, path: &str, value: Value) -> Option<ForwardAuth> {
        match value {
            Value::Bool(on) => return on.then_some(ForwardAuth::Headers),
            Value::Mapping(_) => {}
            _ => {
                self.err(
                    path,
                    "write `true`, or `{ original: request_line, path_prefix: /check }` for Envoy ext_authz",
                );
                return None;
            }
        }
        let raw: RawForwardAuth = self.subtree(path, value)?;
        match (raw.original, raw.path_prefix) {
            (Original::Headers, None) => Some(ForwardAuth::Headers),
            (Original::Headers, Some(_)) => {
                self.err(
                    &format!("{path}.path_prefix"),
                    "only `original: request_line` takes a path prefix",
                );
                None
            }
            (Original::RequestLine, prefix) => {
                let prefix = prefix.unwrap_or_default();
                let prefix = prefix.strip_suffix('/').unwrap_or(&prefix).to_owned();
                let plain = prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b));
                if !prefix.is_empty()
                    && (!prefix.starts_with('/') || !plain || prefix.contains("//"))
                {
                    self.err(
                        &format!("{path}.path_prefix"),
                        "a plain absolute path such as `/check` (letters, digits, `/-._~`), as in Envoy's `path_prefix`",
                    );
                    return None;
                }
                Some(ForwardAuth::RequestLine {
                    path_prefix: prefix,
                })
            }
        }
    }

    pub(super) fn trusted_proxies(&mut self, raw: &[String]) -> Vec<Cidr> {
        raw.iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let c = Cidr::parse(s.trim());
                if c.is_none() {
                    self.err(
                        &format!("trusted_proxies[{i}]"),
                        format!("`{s}` is not an address range: write 10.0.0.0/8, fd00::/8 or 192.0.2.7"),
                    );
                }
                c
            })
            .collect()
    }

    pub(super) fn limits(&mut self, raw: &RawLimits) -> Limits {
        let limits = Limits {
            header_timeout: self.positive(
                "limits.header_timeout",
                raw.header_timeout,
                Duration::from_secs(10),
            ),
            max_header_bytes: raw.max_header_bytes.unwrap_or(16 * 1024),
            max_connections: raw.max_connections.unwrap_or(10_000),
            idle_timeout: self.positive(
                "limits.idle_timeout",
                raw.idle_timeout,
                Duration::from_secs(60),
            ),
            body_timeout: self.positive(
                "limits.body_timeout",
                raw.body_timeout,
                Duration::from_secs(60),
            ),
            max_concurrent_streams: raw.max_concurrent_streams.unwrap_or(100),
            max_in_flight: raw
                .max_in_flight
                .unwrap_or(raw.max_connections.unwrap_or(10_000)),
            max_connections_per_client: raw.max_connections_per_client,
            workers: raw.workers.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
        };
        if limits.max_concurrent_streams == 0 {
            self.err("limits.max_concurrent_streams", "must be greater than zero");
        }
        if limits.max_in_flight == 0 {
            self.err("limits.max_in_flight", "must be greater than zero");
        }
        if limits.max_connections_per_client == Some(0) {
            self.err(
                "limits.max_connections_per_client",
                "must be greater than zero",
            );
        }
        if limits.max_header_bytes < 1024 {
            self.err("limits.max_header_bytes", "must be at least 1024");
        }
        if limits.max_connections == 0 {
            self.err("limits.max_connections", "must be greater than zero");
        }
        if !(1..=1024).contains(&limits.workers) {
            self.err("limits.workers", "must be between 1 and 1024");
        }
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_problems, gateway_problems, gateway_with};
    use super::*;

    /// Each mistake is reported at its key, line and column.
    #[test]
    fn problem_table() {
        let cases = [
            (
                "listeners: [ { address: nowhere } ]\n",
                "listeners[0].address",
                (1, 16),
            ),
            ("listeners: []\n", "listeners", (1, 1)),
            (
                "listeners: [ { address: \"127.0.0.1:0\" } ]\nlimits: { max_header_bytes: 10 }\n",
                "limits.max_header_bytes",
                (2, 11),
            ),
            (
                "listeners: [ { address: \"127.0.0.1:0\" } ]\nlimits: { max_connections: 0 }\n",
                "limits.max_connections",
                (2, 11),
            ),
            (
                "listeners: [ { address: \"127.0.0.1:0\" } ]\nlimits: { header_timeout: 0s }\n",
                "limits.header_timeout",
                (2, 11),
            ),
            (
                "listeners: [ { address: \"127.0.0.1:0\" } ]\nlog: { format: xml }\n",
                "log.format",
                (2, 8),
            ),
            (
                "listeners: [ { address: \"127.0.0.1:0\" } ]\nlog: { level: loud }\n",
                "log.level",
                (2, 8),
            ),
            (
                "trusted_proxies: [ 127.0.0.1 ]\nlisteners: [ { address: \"127.0.0.1:0\", forward_auth: maybe } ]\n",
                "listeners[0].forward_auth",
                (2, 40),
            ),
            (
                "trusted_proxies: [ 127.0.0.1 ]\nlisteners: [ { address: \"127.0.0.1:0\", forward_auth: { orignal: headers } } ]\n",
                "listeners[0].forward_auth.orignal",
                (2, 56),
            ),
            (
                "trusted_proxies: [ 127.0.0.1 ]\nlisteners: [ { address: \"127.0.0.1:0\", forward_auth: { original: line } } ]\n",
                "listeners[0].forward_auth.original",
                (2, 56),
            ),
            (
                "trusted_proxies: [ 127.0.0.1 ]\nlisteners: [ { address: \"127.0.0.1:0\", forward_auth: { path_prefix: /x } } ]\n",
                "listeners[0].forward_auth.path_prefix",
                (2, 56),
            ),
            (
                "trusted_proxies: [ 127.0.0.1 ]\nlisteners: [ { address: \"127.0.0.1:0\", forward_auth: { original: request_line, path_prefix: \"/a?b\" } } ]\n",
                "listeners[0].forward_auth.path_prefix",
                (2, 80),
            ),
        ];
        assert_problems(&cases, gateway_problems);
    }

    /// `forward_auth` in its short and long forms.
    #[test]
    fn forward_auth_forms() {
        let with = |fa: &str| {
            gateway_with(&format!(
                "trusted_proxies: [ 127.0.0.1 ]\nlisteners: [ {{ address: \"127.0.0.1:0\", forward_auth: {fa} }} ]\n"
            ))
            .listeners[0]
                .forward_auth
                .clone()
        };
        assert_eq!(with("true"), Some(ForwardAuth::Headers));
        assert_eq!(with("false"), None);
        assert_eq!(with("{ original: headers }"), Some(ForwardAuth::Headers));
        assert_eq!(
            with("{ original: request_line, path_prefix: /check/ }"),
            Some(ForwardAuth::RequestLine {
                path_prefix: "/check".into()
            })
        );
        assert_eq!(
            with("{ original: request_line }"),
            Some(ForwardAuth::RequestLine {
                path_prefix: String::new()
            })
        );
    }

    /// Address ranges match by prefix, IPv4-mapped IPv6 as IPv4.
    #[test]
    fn cidr() {
        let c = Cidr::parse("10.0.0.0/8").expect("cidr");
        assert!(c.contains("10.255.1.2".parse().expect("ip")));
        assert!(!c.contains("11.0.0.1".parse().expect("ip")));
        assert!(c.contains("::ffff:10.1.1.1".parse().expect("ip")));
        let one = Cidr::parse("::1").expect("cidr");
        assert!(one.contains("::1".parse().expect("ip")));
        assert!(!one.contains("::2".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("all")
            .contains("8.8.8.8".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    /// Closed sets parse into their enums; TLS paths resolve against the file's folder.
    #[test]
    fn typed_values() {
        let c = gateway_with(
            "listeners: [ { address: \"127.0.0.1:0\", tls: { cert: c.pem, key: k.pem } } ]\nlog: { format: json, level: debug }\n",
        );
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, LogLevel::Debug);
        let tls = c.listeners[0].tls.as_ref().expect("tls");
        assert!(tls.cert.ends_with("c.pem") && tls.cert.is_absolute());
        assert_eq!(c.limits.max_connections, 10_000);
    }
}
