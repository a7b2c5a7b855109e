//! Section `routes`: which requests go where, first match in file order. Each route's
//! `auth` block is validated in [`super::auth`].

use std::collections::{HashMap, HashSet};

use http::Method;
use serde::Deserialize;
use serde_norway::Value;

use super::auth::AuthPolicy;
use super::issuers::IssuerConfig;
use super::upstreams::UpstreamConfig;
use super::Validator;
use crate::path::normalize_path;

/// `routes[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// The route's name (metric label, access log).
    pub name: String,
    /// What requests it takes.
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    /// The name of an entry of `upstreams`.
    pub upstream: String,
    /// `none`, or `{ issuers: [...], require: ..., token_sources: ... }`.
    pub auth: Value,
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: Option<u64>,
    /// Only requests over a TLS connection whose client presented a certificate the
    /// listener's `client_ca` verified (403 otherwise) — so the route is not reachable
    /// through a listener without mTLS. (mTLS itself is set per listener.)
    #[serde(default)]
    pub require_client_cert: bool,
}

/// `routes[].match`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// The Host (or `:authority`) without port, case-insensitive.
    pub host: Option<String>,
    /// An exact normalized path.
    pub path: Option<String>,
    /// A segment-aware prefix: `/api` takes `/api` and `/api/x`, not `/apix`.
    pub path_prefix: Option<String>,
    /// Methods taken (default: all).
    pub methods: Option<Vec<String>>,
}

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// This path exactly.
    Exact(String),
    /// Segment-aware: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(String),
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The route's name.
    pub name: String,
    /// Lower-case host without port.
    pub host: Option<String>,
    /// The path it matches.
    pub path: PathMatch,
    /// Methods taken; `None` for all.
    pub methods: Option<Vec<Method>>,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    /// `None` is `auth: none`.
    pub auth: Option<AuthPolicy>,
    /// Request bodies larger than this are refused (413).
    pub max_body_bytes: Option<u64>,
    /// Only over mTLS.
    pub require_client_cert: bool,
}

impl Validator<'_> {
    pub(super) fn routes(
        &mut self,
        raw: Vec<RawRoute>,
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
                    require_client_cert: r.require_client_cert,
                });
            }
        }
        out
    }

    /// An authenticated route restricted to some methods, followed by an `auth: none` route
    /// covering its path: the other methods (OPTIONS, PUT, …) reach the open route instead.
    pub(super) fn warn_method_shadowing(&mut self, routes: &[RouteConfig]) {
        for (i, a) in routes.iter().enumerate() {
            let Some(methods) = &a.methods else { continue };
            let shadow = routes.iter().enumerate().skip(i + 1).find(|(_, b)| {
                let host_ok = b.host.is_none() || b.host == a.host;
                let covers = match (&b.path, &a.path) {
                    (PathMatch::Prefix(pb), PathMatch::Prefix(pa) | PathMatch::Exact(pa)) => {
                        pb == "/" || pa == pb || pa.starts_with(&format!("{pb}/"))
                    }
                    (PathMatch::Exact(pb), PathMatch::Exact(pa)) => pa == pb,
                    _ => false,
                };
                host_ok && covers && a.auth.is_some() && b.auth.is_none()
            });
            if let Some((j, b)) = shadow {
                let listed: Vec<&str> = methods.iter().map(http::Method::as_str).collect();
                self.warn(
                    &format!("routes[{i}].match.methods"),
                    format!(
                        "`{}` takes only {} (and HEAD with GET); other methods on its path, such as OPTIONS, fall through to `{}` (routes[{j}]), which asks for no token",
                        a.name,
                        listed.join(", "),
                        b.name
                    ),
                );
            }
        }
    }

    /// Warnings for what can only fail at runtime: a route no request can reach (an earlier
    /// route matches everything it would), and issuers or upstreams no route uses.
    pub(super) fn warn_unreachable(
        &mut self,
        routes: &[RouteConfig],
        issuers: &[IssuerConfig],
        upstreams: &[UpstreamConfig],
    ) {
        for (j, b) in routes.iter().enumerate() {
            let earlier = routes[..j].iter().enumerate().find(|(_, a)| {
                let host = a.host.is_none() || a.host == b.host;
                let methods = match (&a.methods, &b.methods) {
                    (None, _) => true,
                    (Some(am), Some(bm)) => bm.iter().all(|m| am.contains(m)),
                    (Some(_), None) => false,
                };
                host && methods && path_covers(&a.path, &b.path)
            });
            if let Some((i, a)) = earlier {
                self.warn(
                    &format!("routes[{j}]"),
                    format!(
                        "`{}` is never matched: `{}` (routes[{i}]) comes first and matches every request it would",
                        b.name, a.name
                    ),
                );
            }
        }
        for (i, issuer) in issuers.iter().enumerate() {
            if !routes
                .iter()
                .any(|r| r.auth.as_ref().is_some_and(|a| a.issuers.contains(&i)))
            {
                self.warn(
                    &format!("issuers[{i}]"),
                    format!("no route accepts tokens of `{}`", issuer.name),
                );
            }
        }
        for (i, upstream) in upstreams.iter().enumerate() {
            if !routes.iter().any(|r| r.upstream == i) {
                self.warn(
                    &format!("upstreams[{i}]"),
                    format!("no route forwards to `{}`", upstream.name),
                );
            }
        }
    }

    fn route_path(&mut self, path: &str, s: &str) -> Option<String> {
        match normalize_path(s.as_bytes()) {
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
}

/// Whether every path `b` matches is one `a` matches.
fn path_covers(a: &PathMatch, b: &PathMatch) -> bool {
    match (a, b) {
        (PathMatch::Prefix(pa), PathMatch::Prefix(pb) | PathMatch::Exact(pb)) => {
            pa == "/" || pb == pa || pb.starts_with(&format!("{pa}/"))
        }
        (PathMatch::Exact(pa), PathMatch::Exact(pb)) => pa == pb,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_problems, gateway_problems, gateway_with, LISTEN};
    use super::*;

    const HEAD: &str = "listeners: [ { address: \"127.0.0.1:0\" } ]\nupstreams: [ { name: u, url: \"http://127.0.0.1:1\" } ]\n";

    /// Each mistake is reported at its key, line and column.
    #[test]
    fn problem_table() {
        let cases = [
            ("routes: []\n", "routes", (3, 1)),
            (
                "routes: [ { name: r, match: { path: /a/../b }, upstream: u, auth: none } ]\n",
                "routes[0].match.path",
                (3, 31),
            ),
            (
                "routes: [ { name: r, match: { path: /a, path_prefix: /a }, upstream: u, auth: none } ]\n",
                "routes[0].match",
                (3, 22),
            ),
            (
                "routes: [ { name: r, match: { path: /a }, upstream: nope, auth: none } ]\n",
                "routes[0].upstream",
                (3, 43),
            ),
            (
                "routes: [ { name: r, match: { path: /a, methods: [\"G T\"] }, upstream: u, auth: none } ]\n",
                "routes[0].match.methods[0]",
                (3, 51),
            ),
            (
                "routes: [ { name: r, match: { host: \"a:80\", path: /a }, upstream: u, auth: none } ]\n",
                "routes[0].match.host",
                (3, 31),
            ),
            (
                "routes:\n  - { name: r, match: { path: /a }, upstream: u, auth: none }\n  - { name: r, match: { path: /b }, upstream: u, auth: none }\n",
                "routes[1].name",
                (5, 7),
            ),
        ];
        assert_problems(&cases, |yaml| gateway_problems(&format!("{HEAD}{yaml}")));
    }

    /// Routes no request can reach, and issuers or upstreams no route uses, are warned
    /// about; a narrower route before a wider one is not.
    #[test]
    fn unreachable_and_unused_warn() {
        let c = gateway_with(&format!(
            "{LISTEN}issuers: [ {{ name: i, issuer: \"https://i\", jwks_file: k.json, audiences: [a] }}, {{ name: idle, issuer: \"https://idle\", jwks_file: k.json, audiences: [a] }} ]\nupstreams: [ {{ name: u, url: \"http://127.0.0.1:1\" }}, {{ name: spare, url: \"http://127.0.0.1:2\" }} ]\nroutes:\n  - {{ name: api, match: {{ path_prefix: /api }}, upstream: u, auth: {{ issuers: [i] }} }}\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: u, auth: none }}\n  - {{ name: late, match: {{ path: /api/x, methods: [GET] }}, upstream: u, auth: none }}\n  - {{ name: later, match: {{ host: a.example, path_prefix: /b }}, upstream: u, auth: none }}\n"
        ));
        let said: Vec<(&str, &str)> = c
            .warnings
            .iter()
            .map(|w| (w.path.as_str(), w.message.as_str()))
            .collect();
        for (path, text) in [
            ("routes[2]", "`late` is never matched: `api` (routes[0])"),
            ("routes[3]", "`later` is never matched: `all` (routes[1])"),
            ("issuers[1]", "no route accepts tokens of `idle`"),
            ("upstreams[1]", "no route forwards to `spare`"),
        ] {
            assert!(
                said.iter().any(|(p, m)| *p == path && m.contains(text)),
                "{path}: {said:?}"
            );
        }
        assert!(!said.iter().any(|(p, _)| *p == "routes[1]"), "{said:?}");
    }

    /// A method-restricted authenticated route shadowed by a later open route is warned
    /// about; open routes shadowing open ones are not.
    #[test]
    fn method_shadowing_warns() {
        let c = gateway_with(&format!(
            "{HEAD}routes:\n  - {{ name: w, match: {{ path_prefix: /api, methods: [POST] }}, upstream: u, auth: none }}\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: u, auth: none }}\n"
        ));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let yaml = format!(
            "{HEAD}issuers: [ {{ name: i, issuer: \"https://i\", jwks_file: k.json, audiences: [a] }} ]\nroutes:\n  - {{ name: w, match: {{ path_prefix: /api, methods: [GET] }}, upstream: u, auth: {{ issuers: [i] }} }}\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: u, auth: none }}\n"
        );
        let c = gateway_with(&yaml);
        assert!(
            c.warnings
                .iter()
                .any(|w| w.path == "routes[0].match.methods" && w.message.contains("`all`")),
            "{:?}",
            c.warnings
        );
    }

    /// A prefix loses its trailing slash (except `/`); hosts are lower-cased.
    #[test]
    fn typed_values() {
        let c = gateway_with(&format!(
            "{HEAD}routes:\n  - {{ name: a, match: {{ host: API.Example.com, path_prefix: /api/ }}, upstream: u, auth: none }}\n  - {{ name: b, match: {{ path_prefix: / }}, upstream: u, auth: none }}\n"
        ));
        assert_eq!(c.routes[0].path, PathMatch::Prefix("/api".into()));
        assert_eq!(c.routes[0].host.as_deref(), Some("api.example.com"));
        assert_eq!(c.routes[1].path, PathMatch::Prefix("/".into()));
        assert!(c.routes[0].auth.is_none());
    }
}
