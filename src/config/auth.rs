//! The `auth` block of a route: which issuers, what the token must carry (`require`),
//! where the token is looked for (`token_sources`), and what happens to it.

use std::collections::{BTreeMap, HashMap};

use http::header::HeaderName;
use serde::Deserialize;
use serde_norway::Value;

use super::Validator;

/// `routes[].auth` when it is not `none`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Names of entries of `issuers` whose tokens this route accepts.
    pub issuers: Vec<String>,
    /// What a valid token must also carry (else 403).
    #[serde(default)]
    pub require: RawRequire,
    /// Where the token is looked for, in order (default `[header]`).
    pub token_sources: Option<Vec<Value>>,
    /// Pass the token upstream as it came (default false: it is removed).
    #[serde(default)]
    pub forward_token: bool,
    /// A request without a token passes anonymously (no identity headers); one with a
    /// token must still present a valid, unrevoked one (default false).
    #[serde(default)]
    pub optional: bool,
    /// CORS preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) pass
    /// without a token, anonymously, to the upstream that answers them (default false:
    /// they need a token like any request, which browsers never send on a preflight).
    #[serde(default)]
    pub allow_preflight: bool,
    /// Send the verified claims upstream in this header, base64url-encoded JSON (like
    /// Envoy's `forward_payload_header`); client copies are stripped on every route.
    pub forward_payload: Option<String>,
    /// Identity headers of this route only, beside the global `identity_headers`
    /// (header → claim path).
    #[serde(default)]
    pub identity_headers: BTreeMap<String, String>,
    /// End WebSockets and streams of this route when the token expires (default true).
    pub close_on_expiry: Option<bool>,
    /// Origins (`https://app.example.com`) whose pages may open WebSockets here and send
    /// state-changing requests with a cookie token; without it, only the same origin may.
    pub allowed_origins: Option<Vec<String>>,
}

/// `routes[].auth.require`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRequire {
    /// Every one of these scopes (`scope`, space-separated, or `scp`, an array).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Claim path → matcher; every one must hold.
    #[serde(default)]
    pub claims: BTreeMap<String, Value>,
}

/// One claim matcher: exactly one of its fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatcher {
    /// The claim equals this JSON value.
    pub equals: Option<serde_json::Value>,
    /// The claim (or an element of an array claim) is one of these.
    pub one_of: Option<Vec<serde_json::Value>>,
    /// The claim is an array holding this value.
    pub contains: Option<serde_json::Value>,
}

/// A validated `auth` block.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// Indexes into `Config::issuers`.
    pub issuers: Vec<usize>,
    /// Scopes required, all of them.
    pub scopes: Vec<String>,
    /// Claim matchers, all of them.
    pub claims: Vec<ClaimRequirement>,
    /// Token sources, in order.
    pub sources: Vec<TokenSource>,
    /// Pass the token upstream.
    pub forward_token: bool,
    /// No token: anonymous, forwarded without identity.
    pub optional: bool,
    /// CORS preflights pass anonymously.
    pub allow_preflight: bool,
    /// The header carrying the verified claims upstream.
    pub forward_payload: Option<HeaderName>,
    /// This route's own identity headers.
    pub identity_headers: Vec<super::identity::IdentityHeader>,
    /// End live connections (WebSocket, streams) at the token's `exp` (+ leeway).
    pub close_on_expiry: bool,
    /// Origins allowed to use this route's ambient credentials cross-site.
    pub allowed_origins: Option<Vec<String>>,
}

/// Where a token may be presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The raw value of a named header.
    Header(HeaderName),
    /// A cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
    /// `Sec-WebSocket-Protocol: <marker>, <token>[, <real subprotocols>]`.
    WebSocketProtocol(String),
}

/// One `require.claims` entry.
#[derive(Debug, Clone)]
pub struct ClaimRequirement {
    /// Dotted claim path, split.
    pub claim: Vec<String>,
    /// What the claim must satisfy.
    pub matcher: ClaimMatcher,
}

/// What a claim must satisfy. A missing claim never matches.
#[derive(Debug, Clone)]
pub enum ClaimMatcher {
    /// Exactly this JSON value.
    Equals(serde_json::Value),
    /// The claim, or any element of an array claim, is in the list.
    OneOf(Vec<serde_json::Value>),
    /// An array claim holds this value.
    Contains(serde_json::Value),
}

impl Validator<'_> {
    pub(super) fn auth(
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
        let policy: RawPolicy = self.subtree(path, value)?;
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
        if policy.optional
            && (!policy.require.scopes.is_empty() || !policy.require.claims.is_empty())
        {
            self.err(
                &format!("{path}.optional"),
                "an optional route cannot `require` scopes or claims: an anonymous request would skip them; drop `optional` or the requirement",
            );
        }
        let mut claims = Vec::new();
        for (name, m) in policy.require.claims {
            let cp = format!("{path}.require.claims.{name}");
            let claim: Vec<String> = name.split('.').map(str::to_owned).collect();
            if claim.iter().any(String::is_empty) {
                self.err(&cp, "not a claim path");
                continue;
            }
            let matcher: RawMatcher = match serde_norway::from_value(m) {
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
            optional: policy.optional,
            allow_preflight: policy.allow_preflight,
            identity_headers: self.identity_headers_at(
                &format!("{path}.identity_headers"),
                &policy.identity_headers,
            ),
            forward_payload: policy
                .forward_payload
                .as_ref()
                .and_then(|h| self.gateway_header(&format!("{path}.forward_payload"), h)),
            close_on_expiry: policy.close_on_expiry.unwrap_or(true),
            allowed_origins: policy.allowed_origins.as_ref().map(|list| {
                list.iter()
                    .enumerate()
                    .filter_map(|(j, o)| {
                        let o = o.trim_end_matches('/');
                        let ok = o.split_once("://").is_some_and(|(scheme, rest)| {
                            matches!(scheme, "http" | "https")
                                && crate::path::parse_authority(rest.as_bytes()).is_some()
                        });
                        if !ok {
                            self.err(
                                &format!("{path}.allowed_origins[{j}]"),
                                format!(
                                    "`{o}` is not an origin: write https://app.example.com[:port]"
                                ),
                            );
                        }
                        ok.then(|| o.to_ascii_lowercase())
                    })
                    .collect()
            }),
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

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_problems, gateway_problems, gateway_with};
    use super::*;

    const HEAD: &str = "listeners: [ { address: \"127.0.0.1:0\" } ]\nupstreams: [ { name: u, url: \"http://127.0.0.1:1\" } ]\nissuers: [ { name: i, issuer: \"https://i\", jwks_file: k.json, audiences: [a] } ]\n";

    fn route(auth: &str) -> String {
        format!("{HEAD}routes:\n  - name: r\n    match: {{ path: /a }}\n    upstream: u\n    auth: {auth}\n")
    }

    /// Each mistake is reported at its key, line and column.
    #[test]
    fn problem_table() {
        let cases = [
            ("sometimes", "routes[0].auth", (8, 5)),
            ("{ issuers: [] }", "routes[0].auth.issuers", (8, 13)),
            ("{ issuers: [nope] }", "routes[0].auth.issuers[0]", (8, 23)),
            (
                "{ issuers: [i], require: { claims: { tenant: { equals: 1, contains: 2 } } } }",
                "routes[0].auth.require.claims.tenant",
                (8, 48),
            ),
            (
                "{ issuers: [i], token_sources: [header, header] }",
                "routes[0].auth.token_sources[1]",
                (8, 51),
            ),
            (
                "{ issuers: [i], token_sources: [{ websocket_protocol: \"a b\" }] }",
                "routes[0].auth.token_sources[0]",
                (8, 43),
            ),
            ("{ issuers: [i], nope: 1 }", "routes[0].auth.nope", (8, 27)),
            (
                "{ issuers: [i], forward_payload: Host }",
                "routes[0].auth.forward_payload",
                (8, 27),
            ),
            (
                "{ issuers: [i], optional: true, require: { scopes: [a] } }",
                "routes[0].auth.optional",
                (8, 27),
            ),
        ];
        assert_problems(&cases, |auth| gateway_problems(&route(auth)));
    }

    /// Sources parse in order into their enum; `close_on_expiry` defaults to true.
    #[test]
    fn typed_values() {
        let c = gateway_with(&route(
            "{ issuers: [i], token_sources: [header, { header: X-Token }, { cookie: s }, { query: t }, { websocket_protocol: bearer }], require: { scopes: [a], claims: { tenant: { one_of: [x] } } } }",
        ));
        let auth = c.routes[0].auth.as_ref().expect("auth");
        assert_eq!(
            auth.sources,
            vec![
                TokenSource::Bearer,
                TokenSource::Header(HeaderName::from_static("x-token")),
                TokenSource::Cookie("s".into()),
                TokenSource::Query("t".into()),
                TokenSource::WebSocketProtocol("bearer".into()),
            ]
        );
        assert!(auth.close_on_expiry && !auth.forward_token);
        assert_eq!(auth.issuers, vec![0]);
        assert!(matches!(auth.claims[0].matcher, ClaimMatcher::OneOf(_)));
    }
}
