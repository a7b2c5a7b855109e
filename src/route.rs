//! The compiled route table: first match in file order, indexed by first path segment.
//! Paths arrive normalized ([`crate::path::normalize_path`]).

use std::collections::HashMap;

use http::Method;

use crate::config::{PathMatch, RouteConfig};

struct CompiledRoute {
    host: Option<Box<str>>,
    path: PathMatch,
    /// Bit per well-known method. A route without `methods` takes every method but
    /// `CONNECT` and `TRACE`, which only a route naming them takes. A route taking `GET`
    /// takes `HEAD` too: `HEAD` is judged by the `GET` policy, never falls through to a
    /// weaker route.
    methods: u16,
    /// Other methods: every one when `any`, else those listed.
    any: bool,
    extra: Vec<Method>,
}

const GET_BIT: u16 = 1;
const HEAD_BIT: u16 = 1 << 1;
const CONNECT_TRACE: u16 = (1 << 7) | (1 << 8);

fn method_bit(m: &Method) -> Option<u16> {
    Some(match *m {
        Method::GET => 1,
        Method::HEAD => 1 << 1,
        Method::POST => 1 << 2,
        Method::PUT => 1 << 3,
        Method::PATCH => 1 << 4,
        Method::DELETE => 1 << 5,
        Method::OPTIONS => 1 << 6,
        Method::CONNECT => 1 << 7,
        Method::TRACE => 1 << 8,
        _ => return None,
    })
}

/// Routes in file order; the first match wins. Routes are indexed by the first segment
/// of their path at load time, so a lookup scans only the routes that could match (those
/// for that segment plus the `/` catch-alls), still in file order.
pub struct Router {
    routes: Vec<CompiledRoute>,
    by_segment: HashMap<Box<str>, Box<[usize]>, foldhash::fast::RandomState>,
    /// Routes whose prefix is `/`: candidates for every path.
    wildcard: Box<[usize]>,
}

fn first_segment(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').next().unwrap_or("")
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Router {
        let routes: Vec<CompiledRoute> = routes
            .iter()
            .map(|r| {
                let (methods, extra) = match &r.methods {
                    None => (!CONNECT_TRACE, Vec::new()),
                    Some(ms) => {
                        let mut bits = 0;
                        let mut extra = Vec::new();
                        for m in ms {
                            match method_bit(m) {
                                Some(b) => bits |= b,
                                None => extra.push(m.clone()),
                            }
                        }
                        (bits, extra)
                    }
                };
                let methods = if methods & GET_BIT != 0 {
                    methods | HEAD_BIT
                } else {
                    methods
                };
                CompiledRoute {
                    host: r.host.as_deref().map(Into::into),
                    path: r.path.clone(),
                    methods,
                    any: r.methods.is_none(),
                    extra,
                }
            })
            .collect();
        let segment_of = |r: &CompiledRoute| match &r.path {
            PathMatch::Prefix(p) if p == "/" => None,
            PathMatch::Prefix(p) | PathMatch::Exact(p) => Some(first_segment(p).to_owned()),
        };
        let wildcard: Vec<usize> = (0..routes.len())
            .filter(|i| segment_of(&routes[*i]).is_none())
            .collect();
        let mut by_segment: HashMap<Box<str>, Box<[usize]>, foldhash::fast::RandomState> =
            HashMap::default();
        for seg in routes.iter().filter_map(segment_of) {
            if by_segment.contains_key(seg.as_str()) {
                continue;
            }
            let list: Vec<usize> = (0..routes.len())
                .filter(|i| segment_of(&routes[*i]).is_none_or(|s| s == seg))
                .collect();
            by_segment.insert(seg.into(), list.into());
        }
        Router {
            routes,
            by_segment,
            wildcard: wildcard.into(),
        }
    }

    /// Index of the first route matching; `host` is without port, `path` normalized.
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> Option<usize> {
        let candidates = self
            .by_segment
            .get(first_segment(path))
            .unwrap_or(&self.wildcard);
        let bit = method_bit(method);
        candidates.iter().copied().find(|&i| {
            let r = &self.routes[i];
            let method_ok = match bit {
                Some(b) => r.methods & b != 0,
                None => r.any || r.extra.contains(method),
            };
            method_ok
                && match &r.host {
                    None => true,
                    Some(h) => host.is_some_and(|x| x.eq_ignore_ascii_case(h)),
                }
                && path_matches(&r.path, path)
        })
    }
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => {
            p == "/"
                || (path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prefixes are segment-aware and hosts ignore case and port.
    #[test]
    fn prefix_is_segment_aware() {
        assert!(path_matches(&PathMatch::Prefix("/api".into()), "/api"));
        assert!(path_matches(&PathMatch::Prefix("/api".into()), "/api/x"));
        assert!(!path_matches(&PathMatch::Prefix("/api".into()), "/apix"));
        assert!(path_matches(&PathMatch::Prefix("/".into()), "/anything"));
    }

    fn route(name: &str, path: PathMatch, methods: Option<Vec<Method>>) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            host: None,
            path,
            methods,
            upstream: 0,
            auth: None,
            max_body_bytes: None,
            require_client_cert: false,
        }
    }

    /// The segment index keeps file order across indexed and catch-all routes.
    #[test]
    fn index_keeps_first_match_order() {
        let routes = vec![
            route(
                "a",
                PathMatch::Prefix("/api".into()),
                Some(vec![Method::POST]),
            ),
            route(
                "all-posts",
                PathMatch::Prefix("/".into()),
                Some(vec![Method::POST]),
            ),
            route("b", PathMatch::Prefix("/api/x".into()), None),
            route("root", PathMatch::Exact("/".into()), None),
            route("rest", PathMatch::Prefix("/".into()), None),
        ];
        let r = Router::new(&routes);
        assert_eq!(r.find(None, "/api/x", &Method::POST), Some(0));
        assert_eq!(r.find(None, "/other", &Method::POST), Some(1));
        assert_eq!(r.find(None, "/api/x/y", &Method::GET), Some(2));
        assert_eq!(r.find(None, "/api", &Method::GET), Some(4));
        assert_eq!(r.find(None, "/", &Method::GET), Some(3));
        assert_eq!(r.find(None, "/apix", &Method::GET), Some(4));
        // HEAD follows GET; CONNECT and TRACE need a route that names them.
        let strict = vec![
            route(
                "get",
                PathMatch::Prefix("/p".into()),
                Some(vec![Method::GET]),
            ),
            route("open", PathMatch::Prefix("/".into()), None),
            route(
                "trace",
                PathMatch::Prefix("/t".into()),
                Some(vec![Method::TRACE]),
            ),
        ];
        let r = Router::new(&strict);
        assert_eq!(r.find(None, "/p/x", &Method::HEAD), Some(0));
        assert_eq!(r.find(None, "/p/x", &Method::OPTIONS), Some(1));
        assert_eq!(r.find(None, "/p/x", &Method::TRACE), None);
        assert_eq!(r.find(None, "/x", &Method::CONNECT), None);
        assert_eq!(r.find(None, "/t", &Method::TRACE), Some(2));
        let ext = Method::from_bytes(b"PROPFIND").expect("method");
        assert_eq!(r.find(None, "/x", &ext), Some(1));
        let only = Router::new(&routes[..1]);
        assert_eq!(only.find(None, "/nothing", &Method::POST), None);
    }
}
