//! Header surgery between client and upstream: hop-by-hop headers (and whatever a
//! `Connection` header names) are dropped, identity headers belong to the gateway alone —
//! any client copy is stripped on every route before the gateway sets its own, and so is
//! any header a CGI/WSGI/Rack upstream would read as one of them (`X_User_Id`) — headers
//! that make frameworks re-route or change the method after the gateway decided are
//! dropped, and `X-Forwarded-*` / `X-Real-IP` / `X-Request-Id` are set from what the
//! gateway itself saw.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, FORWARDED, HOST};

pub use crate::config::UnderscoreHeaders as Underscores;
use crate::error::Reject;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers some frameworks obey to pick another path or method than the one the gateway
/// authorized (Symfony, Laravel, Spring, IIS, Express method-override, …), and
/// client-address headers whose only trustworthy source is the gateway. Dropped from every
/// request.
static UNTRUSTED: [HeaderName; 29] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-override-url"),
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-forwarded-path"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-original-method"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("x-forwarded"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("client-ip"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-http-host-override"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-forwarded-protocol"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("x-scheme"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("fastly-client-ip"),
];

/// Headers the gateway sets itself.
static OWNED: [HeaderName; 6] = [
    FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    X_REAL_IP,
    X_REQUEST_ID,
];

/// Whether any request header name holds `_`.
pub fn has_underscore_header(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| k.as_str().contains('_'))
}

/// `name` read as an upstream that folds `_` into `-` reads it.
fn folds_into(name: &HeaderName, owned: &HeaderName) -> bool {
    let (a, b) = (name.as_str().as_bytes(), owned.as_str().as_bytes());
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x == y || (*x == b'_' && *y == b'-'))
}

/// RFC 9110 §7.6.1 plus the de-facto ones.
static HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::PROXY_AUTHORIZATION,
];

/// Drop hop-by-hop headers and every header a `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_connection_named(headers);
    // One pass over the few names a response carries (comparing a standard name is an
    // enum compare) instead of a hashed removal per hop-by-hop name.
    remove_where(headers, |k| HOP_BY_HOP.contains(k));
}

/// Remove every field whose name `doomed` picks. Nothing is allocated unless one is found.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let found: Vec<HeaderName> = headers.keys().filter(|k| doomed(k)).cloned().collect();
    for name in found {
        headers.remove(name);
    }
}

/// Whether `name` (any case) is a hop-by-hop header, dropped at every hop anyway.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_str().eq_ignore_ascii_case(name))
}

/// Whether any `name` field's comma-separated list holds `token` (ASCII case ignored), as
/// `Connection: keep-alive, Upgrade` holds `upgrade`.
pub fn list_has(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Drop every header a `Connection` header names. Names that are hop-by-hop anyway are
/// left to the caller's hop-by-hop pass, so the usual `Connection: keep-alive` costs no
/// allocation.
fn strip_connection_named(headers: &mut HeaderMap) {
    if !headers.contains_key(CONNECTION) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| !is_hop_by_hop(t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// The forwarding headers the gateway sets from what it saw, besides `X-Forwarded-For`.
static SET_FROM_SEEN: [HeaderName; 3] = [FORWARDED, X_FORWARDED_HOST, X_FORWARDED_PROTO];

/// Every name a request loses whatever the configuration: hop-by-hop, [`UNTRUSTED`], and
/// the forwarding headers the gateway sets from what it saw. Compared in a pass over the
/// request's few names: a standard name against a custom one is an enum compare, cheaper
/// than hashing every name for a set.
fn dropped(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || SET_FROM_SEEN.contains(name) || UNTRUSTED.contains(name)
}

/// A client-sent request id is kept when it is short and plain; otherwise replaced.
fn well_formed_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for b in buf.iter_mut() {
        *b = HEX[(n & 15) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

/// Everything the request carries to the upstream besides the client's own headers.
pub struct Forwarding<'a> {
    pub underscores: Underscores,
    pub identity_names: &'a [HeaderName],
    pub identity: &'a [(HeaderName, HeaderValue)],
    /// `X-Forwarded-For`: the client's address (rendered once per connection), or the
    /// chain of a trusted proxy with the peer appended ([`forwarding_chain`]).
    pub forwarded_for: &'a HeaderValue,
    /// `X-Real-IP`: the client's address as the gateway determined it.
    pub client: &'a HeaderValue,
    pub proto: &'static str,
    /// The host the client addressed (`Host` or `:authority`), in canonical form.
    pub host: Option<HeaderValue>,
    /// `X-Request-Id` ([`request_id`]).
    pub request_id: &'a HeaderValue,
}

/// The request's id: the client's `X-Request-Id` when there is exactly one, short and
/// plain; otherwise a new random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut given = headers.get_all(X_REQUEST_ID).iter();
    match (given.next(), given.next()) {
        (Some(v), None) if well_formed_request_id(v) => v.clone(),
        _ => new_request_id(),
    }
}

/// Whether the request carries one of `identity_names`, or a name an upstream folding `_`
/// into `-` would read as one.
pub fn carries_identity(headers: &HeaderMap, identity_names: &[HeaderName]) -> bool {
    headers.keys().any(|k| {
        identity_names.contains(k)
            || (k.as_str().contains('_') && identity_names.iter().any(|o| folds_into(k, o)))
    })
}

/// Prepare request headers for the upstream.
pub fn prepare_request(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    strip_connection_named(headers);
    // The client's view of the chain is not trusted either (the gateway is the edge), nor
    // any copy of an identity header, nor a name an upstream folding `_` into `-` would
    // read as one of those.
    remove_where(headers, |k| {
        dropped(k)
            || f.identity_names.contains(k)
            || (k.as_str().contains('_')
                && (f.underscores != Underscores::Allow
                    || f.identity_names.iter().any(|o| folds_into(k, o))
                    || OWNED.iter().chain(&UNTRUSTED).any(|o| folds_into(k, o))))
    });
    // Room for what follows at once, instead of growing the table on the way.
    headers.reserve(f.identity.len() + 6);
    for (name, value) in f.identity {
        headers.insert(name.clone(), value.clone());
    }
    headers.insert(X_FORWARDED_FOR, f.forwarded_for.clone());
    headers.insert(X_REAL_IP, f.client.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(f.proto));
    if let Some(host) = f.host.clone() {
        // The canonical host: what the gateway routed on is what the upstream sees.
        headers.insert(HOST, host.clone());
        headers.insert(X_FORWARDED_HOST, host);
    }
    headers.insert(X_REQUEST_ID, f.request_id.clone());
}

/// `X-Forwarded-For` and the client address for a request from `peer` (whose own
/// rendering is `rendered`). Only when the peer is a trusted proxy is its incoming
/// `X-Forwarded-For` believed: the chain is kept with the peer appended, and the client is
/// the nearest address, from the right, that is not itself a trusted proxy (the leftmost
/// when all are). An element that is not an address before that one makes the client
/// unknown and the request is refused — the trusted peer itself is never reported as the
/// client.
pub fn forwarding_chain(
    trusted: &[crate::config::Cidr],
    peer: IpAddr,
    rendered: &HeaderValue,
    headers: &HeaderMap,
) -> Result<(HeaderValue, HeaderValue), Reject> {
    let unknown = || Reject::BadForwardedFor;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) || !headers.contains_key(X_FORWARDED_FOR) {
        return Ok((rendered.clone(), rendered.clone()));
    }
    let mut items: Vec<&str> = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        let text = value.to_str().map_err(|_| unknown())?;
        items.extend(text.split(',').map(str::trim).filter(|s| !s.is_empty()));
    }
    // Right to left: the first untrusted address; if every one is trusted, the leftmost
    // (the original client inside the trusted network).
    let mut client = None;
    for item in items.iter().rev() {
        let ip = item.parse::<IpAddr>().map_err(|_| unknown())?;
        client = Some(ip);
        if !is_trusted(ip) {
            break;
        }
    }
    let client = client.ok_or_else(unknown)?;
    let chain = format!(
        "{}, {}",
        items.join(", "),
        String::from_utf8_lossy(rendered.as_bytes())
    );
    let chain = HeaderValue::from_str(&chain).map_err(|_| unknown())?;
    Ok((chain, forwarded_for(client)))
}

/// The `X-Forwarded-For` value for a peer (IPv4-mapped IPv6 shown as IPv4).
pub fn forwarded_for(ip: IpAddr) -> HeaderValue {
    let text = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    };
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Headers named in `Connection` go, in any case; identity headers are replaced, not appended.
    #[test]
    fn connection_named_and_identity_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("X-Secret, keep-alive"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.append("x-user-id", HeaderValue::from_static("spoof"));
        h.append("X-USER-ID", HeaderValue::from_static("spoof2"));
        let names = [HeaderName::from_static("x-user-id")];
        let identity = [(
            HeaderName::from_static("x-user-id"),
            HeaderValue::from_static("42"),
        )];
        prepare_request(
            &mut h,
            &Forwarding {
                underscores: Underscores::Drop,
                identity_names: &names,
                identity: &identity,
                forwarded_for: &forwarded_for("127.0.0.1".parse().expect("ip")),
                client: &forwarded_for("127.0.0.1".parse().expect("ip")),
                proto: "http",
                host: Some(HeaderValue::from_static("a")),
                request_id: &HeaderValue::from_static("r-1"),
            },
        );
        assert!(h.get("x-secret").is_none());
        assert_eq!(h.get(X_REQUEST_ID), Some(&HeaderValue::from_static("r-1")));
        assert_eq!(
            h.get_all("x-user-id").iter().collect::<Vec<_>>(),
            vec![&HeaderValue::from_static("42")]
        );
        assert_eq!(
            h.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"127.0.0.1"[..])
        );
    }

    /// Look-alikes of gateway-owned headers never pass, whatever the underscore policy;
    /// rewrite and method-override headers never pass at all.
    #[test]
    fn look_alikes_and_rewrites_are_stripped() {
        for policy in [Underscores::Allow, Underscores::Drop] {
            let mut h = HeaderMap::new();
            for (k, v) in [
                ("x_user_id", "root"),
                ("x-user_id", "root"),
                ("x_forwarded_for", "10.0.0.1"),
                ("x_real_ip", "10.0.0.1"),
                ("x-original-url", "/admin"),
                ("x-http-method-override", "DELETE"),
                ("x-real-ip", "10.0.0.1"),
                ("x_app_flag", "1"),
            ] {
                h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            let names = [HeaderName::from_static("x-user-id")];
            prepare_request(
                &mut h,
                &Forwarding {
                    underscores: policy,
                    identity_names: &names,
                    identity: &[],
                    forwarded_for: &forwarded_for("127.0.0.1".parse().expect("ip")),
                    client: &forwarded_for("127.0.0.1".parse().expect("ip")),
                    proto: "http",
                    host: None,
                    request_id: &HeaderValue::from_static("r-1"),
                },
            );
            let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            for gone in [
                "x_user_id",
                "x-user_id",
                "x_forwarded_for",
                "x_real_ip",
                "x-original-url",
                "x-http-method-override",
            ] {
                assert!(!left.contains(&gone), "{policy:?}: {gone} passed");
            }
            assert_eq!(
                h.get("x-real-ip").map(HeaderValue::as_bytes),
                Some(&b"127.0.0.1"[..])
            );
            assert_eq!(left.contains(&"x_app_flag"), policy == Underscores::Allow);
        }
    }

    /// A client's id is kept only when there is one, short and plain.
    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-1.2:3_4"));
        assert_eq!(request_id(&h), "abc-1.2:3_4");
        h.append(X_REQUEST_ID, HeaderValue::from_static("second"));
        assert_ne!(request_id(&h), "abc-1.2:3_4", "two ids: neither is trusted");
        for bad in ["has space", "a\"b", ""] {
            h.insert(X_REQUEST_ID, HeaderValue::from_str(bad).expect("value"));
            let id = request_id(&h);
            assert_ne!(id, bad);
            assert_eq!(id.len(), 32, "a fresh random id");
        }
        h.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(&"a".repeat(129)).expect("value"),
        );
        assert_eq!(request_id(&h).len(), 32, "too long: replaced");
    }
}
