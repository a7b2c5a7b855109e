//! Header surgery between client and upstream: hop-by-hop headers (and whatever a
//! `Connection` header names) are dropped, identity headers belong to the gateway alone —
//! any client copy is stripped on every route before the gateway sets its own — and
//! `X-Forwarded-*` / `X-Request-Id` are set from what the gateway itself saw.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, FORWARDED, HOST};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// RFC 9110 §7.6.1 plus the de-facto ones.
const HOP_BY_HOP: [HeaderName; 8] = [
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
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
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
    pub identity_names: &'a [HeaderName],
    pub identity: &'a [(HeaderName, HeaderValue)],
    /// `X-Forwarded-For`: the client's address, rendered once per connection.
    pub forwarded_for: &'a HeaderValue,
    pub proto: &'static str,
    /// The host the client addressed (`Host` or `:authority`).
    pub host: Option<HeaderValue>,
}

/// Prepare request headers for the upstream. Returns the request id used.
pub fn prepare_request(headers: &mut HeaderMap, f: &Forwarding<'_>) -> HeaderValue {
    strip_hop_by_hop(headers);
    for name in f.identity_names {
        headers.remove(name);
    }
    // The client's view of the chain is not trusted: the gateway is the edge.
    headers.remove(FORWARDED);
    headers.remove(X_FORWARDED_HOST);
    headers.remove(X_FORWARDED_PROTO);
    for (name, value) in f.identity {
        headers.insert(name.clone(), value.clone());
    }
    headers.insert(X_FORWARDED_FOR, f.forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(f.proto));
    if let Some(host) = f.host.clone() {
        if !headers.contains_key(HOST) {
            headers.insert(HOST, host.clone());
        }
        headers.insert(X_FORWARDED_HOST, host);
    }
    let id = match headers.get(X_REQUEST_ID) {
        Some(v)
            if well_formed_request_id(v) && headers.get_all(X_REQUEST_ID).iter().count() == 1 =>
        {
            v.clone()
        }
        _ => {
            let id = new_request_id();
            headers.insert(X_REQUEST_ID, id.clone());
            id
        }
    };
    id
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
                identity_names: &names,
                identity: &identity,
                forwarded_for: &forwarded_for("127.0.0.1".parse().expect("ip")),
                proto: "http",
                host: Some(HeaderValue::from_static("a")),
            },
        );
        assert!(h.get("x-secret").is_none());
        assert_eq!(
            h.get_all("x-user-id").iter().collect::<Vec<_>>(),
            vec![&HeaderValue::from_static("42")]
        );
        assert_eq!(
            h.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"127.0.0.1"[..])
        );
    }
}
