//! Path normalization and the compiled route table.
//!
//! The normalized path is both what routes match on and what the upstream receives, so a
//! path that could be read two ways (encoded `/`, encoded dot segments, control bytes,
//! backslashes, `;` parameters) is refused instead of guessed at.

use std::borrow::Cow;
use std::collections::HashMap;

use http::Method;

use crate::config::{PathMatch, RouteConfig};

/// Why a request path was refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with `/`")]
    NotAbsolute,
    #[error("invalid percent-encoding")]
    BadEncoding,
    #[error("encoded `/` or `\\` in path")]
    EncodedSeparator,
    #[error("encoded dot segment")]
    EncodedDotSegment,
    #[error("control or non-ASCII byte in path")]
    ControlByte,
    #[error("backslash in path")]
    Backslash,
    #[error("`;` path parameters are not accepted")]
    Semicolon,
    #[error("`..` climbs above the root")]
    AboveRoot,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalize a request path (no query): decode percent-encoded unreserved characters,
/// upper-case the remaining escapes, merge slashes, resolve `.` and `..`.
/// Returns the input unchanged (borrowed) when it is already normal — the common case.
pub fn normalize_path(raw: &[u8]) -> Result<Cow<'_, str>, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // One pass to check bytes and to see whether any rewriting is needed.
    let mut needs_work = false;
    let mut prev = 0u8;
    for (i, &b) in raw.iter().enumerate() {
        match b {
            0..=0x1f | 0x7f..=0xff => return Err(PathError::ControlByte),
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            b'%' => needs_work = true,
            b'/' if prev == b'/' => needs_work = true,
            b'.' if prev == b'/' => {
                // A segment of `.` or `..`?
                let rest = &raw[i..];
                let seg_len = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
                if seg_len <= 2 && rest[..seg_len].iter().all(|&c| c == b'.') {
                    needs_work = true;
                }
            }
            _ => {}
        }
        prev = b;
    }
    if !needs_work {
        // Safe: every byte was checked to be printable ASCII.
        return Ok(Cow::Borrowed(
            std::str::from_utf8(raw).map_err(|_| PathError::ControlByte)?,
        ));
    }

    // Decode, segment by segment.
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for seg in raw[1..].split(|&c| c == b'/') {
        let mut out = String::with_capacity(seg.len());
        let mut decoded_any = false;
        let mut i = 0;
        while i < seg.len() {
            let b = seg[i];
            if b == b'%' {
                let (h, l) = match (
                    seg.get(i + 1).and_then(|&c| hex(c)),
                    seg.get(i + 2).and_then(|&c| hex(c)),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadEncoding),
                };
                let v = h << 4 | l;
                if v == b'/' || v == b'\\' {
                    return Err(PathError::EncodedSeparator);
                }
                if v < 0x20 || v == 0x7f {
                    return Err(PathError::ControlByte);
                }
                if is_unreserved(v) {
                    out.push(v as char);
                    decoded_any = true;
                } else {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    out.push('%');
                    out.push(HEX[(v >> 4) as usize] as char);
                    out.push(HEX[(v & 15) as usize] as char);
                }
                i += 3;
            } else {
                out.push(b as char);
                i += 1;
            }
        }
        match out.as_str() {
            "." | ".." if decoded_any => return Err(PathError::EncodedDotSegment),
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            _ => {
                segments.push(out);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(raw.len());
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

/// The host of a request without its port, as sent (compare case-insensitively).
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop `:port` after them.
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

struct CompiledRoute {
    host: Option<Box<str>>,
    path: PathMatch,
    /// Bit per well-known method; `u16::MAX` for any. Other methods use `extra`.
    methods: u16,
    extra: Vec<Method>,
}

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
                    None => (u16::MAX, Vec::new()),
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
                CompiledRoute {
                    host: r.host.as_deref().map(Into::into),
                    path: r.path.clone(),
                    methods,
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
                None => r.methods == u16::MAX || r.extra.contains(method),
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

    fn n(s: &str) -> Result<String, PathError> {
        normalize_path(s.as_bytes()).map(|c| c.into_owned())
    }

    /// Normal paths come back untouched; the rest are rewritten or refused.
    #[test]
    fn normalization_table() {
        assert_eq!(n("/a/b").as_deref(), Ok("/a/b"));
        assert_eq!(n("/").as_deref(), Ok("/"));
        assert_eq!(n("//admin").as_deref(), Ok("/admin"));
        assert_eq!(n("/a/./b").as_deref(), Ok("/a/b"));
        assert_eq!(n("/public/../admin").as_deref(), Ok("/admin"));
        assert_eq!(n("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(n("/%61dmin").as_deref(), Ok("/admin"));
        assert_eq!(n("/a%20b").as_deref(), Ok("/a%20b"));
        assert_eq!(n("/a%c3%a9").as_deref(), Ok("/a%C3%A9"));
        assert_eq!(n("/admin/").as_deref(), Ok("/admin/"));
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/%2e%2e/admin"), Err(PathError::EncodedDotSegment));
        assert_eq!(n("/.%2e/admin"), Err(PathError::EncodedDotSegment));
        assert_eq!(n("/admin%2f"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/admin%5Cx"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%00"), Err(PathError::ControlByte));
        assert_eq!(n("/a%zz"), Err(PathError::BadEncoding));
        assert_eq!(n("/a%4"), Err(PathError::BadEncoding));
        assert_eq!(n("/admin;x"), Err(PathError::Semicolon));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("a"), Err(PathError::NotAbsolute));
    }

    /// Prefixes are segment-aware and hosts ignore case and port.
    #[test]
    fn prefix_is_segment_aware() {
        assert!(path_matches(&PathMatch::Prefix("/api".into()), "/api"));
        assert!(path_matches(&PathMatch::Prefix("/api".into()), "/api/x"));
        assert!(!path_matches(&PathMatch::Prefix("/api".into()), "/apix"));
        assert!(path_matches(&PathMatch::Prefix("/".into()), "/anything"));
        assert_eq!(host_without_port("Api.Example.com:8080"), "Api.Example.com");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
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
        let only = Router::new(&routes[..1]);
        assert_eq!(only.find(None, "/nothing", &Method::POST), None);
    }
}
