//! Section `upstreams`: the services requests are forwarded to.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use super::duration::Dur;
use super::Validator;

/// `upstreams[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// The name routes refer to.
    pub name: String,
    /// `http://host:port` or `https://host:port`, without a path.
    pub url: String,
    /// Time allowed to connect (default 2s).
    pub connect_timeout: Option<Dur>,
    /// Time allowed for the response head (default 30s).
    pub timeout: Option<Dur>,
    /// `h1` (default) or `h2`.
    pub protocol: Option<UpstreamProtocol>,
    /// https: a PEM CA bundle to trust instead of the system roots.
    pub ca: Option<String>,
    /// https: a client certificate (PEM) to present; needs `client_key`.
    pub client_cert: Option<String>,
    /// https: the client certificate's private key (PEM).
    pub client_key: Option<String>,
}

/// The protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    #[default]
    H1,
    /// HTTP/2: prior knowledge on http, ALPN on https.
    H2,
}

/// A validated upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The configuration name (metric label, route reference).
    pub name: String,
    /// Scheme and authority only; the request's normalized path is appended.
    pub uri: Uri,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed for the response head.
    pub timeout: Duration,
    /// The protocol spoken.
    pub protocol: UpstreamProtocol,
    /// Trust these CAs (PEM) instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Present this client certificate (PEM cert, PEM key).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl Validator<'_> {
    pub(super) fn upstreams(&mut self, raw: &[RawUpstream], base: &Path) -> Vec<UpstreamConfig> {
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
                protocol: r.protocol.unwrap_or_default(),
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_problems, gateway_problems, gateway_with, LISTEN};
    use super::*;

    /// Each mistake is reported at its key, line and column.
    #[test]
    fn problem_table() {
        let cases = [
            ("upstreams: []\n", "upstreams", (2, 1)),
            (
                "upstreams: [ { name: u, url: \"http://a/x\" } ]\n",
                "upstreams[0].url",
                (2, 25),
            ),
            (
                "upstreams: [ { name: u, url: \"ftp://a\" } ]\n",
                "upstreams[0].url",
                (2, 25),
            ),
            (
                "upstreams: [ { name: u, url: \"http://a\", protocol: h3 } ]\n",
                "upstreams[0].protocol",
                (2, 42),
            ),
            (
                "upstreams: [ { name: u, url: \"https://a\", client_cert: c.pem } ]\n",
                "upstreams[0]",
                (2, 14),
            ),
            (
                "upstreams: [ { name: u, url: \"http://a\" }, { name: u, url: \"http://b\" } ]\n",
                "upstreams[1].name",
                (2, 46),
            ),
        ];
        assert_problems(&cases, |yaml| gateway_problems(&format!("{LISTEN}{yaml}")));
    }

    /// The URL keeps only scheme and authority; `protocol` parses into its enum.
    #[test]
    fn typed_values() {
        let c = gateway_with(&format!(
            "{LISTEN}upstreams: [ {{ name: u, url: \"https://a.example:8443/\", protocol: h2 }} ]\n"
        ));
        assert_eq!(c.upstreams[0].uri.to_string(), "https://a.example:8443/");
        assert_eq!(c.upstreams[0].protocol, UpstreamProtocol::H2);
    }
}
