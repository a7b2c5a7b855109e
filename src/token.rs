//! Finding the token: from the route's configured sources, exactly one of which may carry
//! it (RFC 6750 §2), and removing it again before the request goes upstream.

use std::borrow::Cow;

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE, SEC_WEBSOCKET_PROTOCOL};

use crate::config::TokenSource;
use crate::error::Reject;
use crate::path::percent_decode;

/// A presented token. `Debug` never shows it.
pub struct Token<'a> {
    pub value: Cow<'a, str>,
    /// Index of the source in the route's `token_sources`.
    pub source: usize,
}

impl std::fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(<redacted>, source {})", self.source)
    }
}

/// The token the request presents through `sources`, if any. Two tokens — from two
/// sources, or twice from one — are refused rather than one of them picked.
pub fn extract<'a>(
    sources: &[TokenSource],
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<Option<Token<'a>>, Reject> {
    let mut found: Option<Token<'a>> = None;
    for (index, source) in sources.iter().enumerate() {
        let value = match source {
            TokenSource::Bearer => bearer(headers)?,
            TokenSource::Header(name) => single(headers.get_all(name).iter())?
                .map(|v| {
                    v.to_str()
                        .map(|s| Cow::Borrowed(s.trim()))
                        .map_err(|_| Reject::Malformed)
                })
                .transpose()?,
            TokenSource::Cookie(name) => cookie(headers, name)?,
            TokenSource::Query(name) => query.map(|q| query_param(q, name)).transpose()?.flatten(),
            TokenSource::WebSocketProtocol(marker) => subprotocol_token(headers, marker)?,
        };
        if let Some(value) = value {
            if found.is_some() {
                return Err(Reject::MultipleTokens);
            }
            if value.is_empty() {
                return Err(Reject::Malformed);
            }
            found = Some(Token {
                value,
                source: index,
            });
        }
    }
    Ok(found)
}

fn single<'a>(
    mut values: impl Iterator<Item = &'a HeaderValue>,
) -> Result<Option<&'a HeaderValue>, Reject> {
    let first = values.next();
    if values.next().is_some() {
        return Err(Reject::MultipleTokens);
    }
    Ok(first)
}

/// `Authorization: Bearer <token>`; another scheme is not a token of ours. The scheme ends
/// at a space or a tab, as lenient upstream parsers read it.
fn bearer(headers: &HeaderMap) -> Result<Option<Cow<'_, str>>, Reject> {
    let Some(v) = single(headers.get_all(AUTHORIZATION).iter())? else {
        return Ok(None);
    };
    let s = v.to_str().map_err(|_| Reject::Malformed)?;
    let (scheme, rest) = s.split_once([' ', '\t']).unwrap_or((s, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    Ok(Some(Cow::Borrowed(rest.trim())))
}

/// The cookie `name`. Cookie lines the gateway cannot read (not UTF-8) are refused rather
/// than skipped, pairs are also split at whitespace (as Python's `SimpleCookie` does), and
/// names are compared as PHP reads them ([`same_param`]): any second reading of the name is
/// a second token.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<Cow<'a, str>>, Reject> {
    let mut found = None;
    for v in headers.get_all(COOKIE) {
        let s = v.to_str().map_err(|_| Reject::Malformed)?;
        for pair in s.split([';', ' ', '\t']) {
            let (k, val) = pair.split_once('=').unwrap_or((pair, ""));
            if !k.trim().is_empty() && same_param(k.trim(), name) {
                if found.is_some() {
                    return Err(Reject::MultipleTokens);
                }
                found = Some(Cow::Borrowed(val.trim().trim_matches('"')));
            }
        }
    }
    Ok(found)
}

/// A query parameter by name, comparing decoded names so `access%5Ftoken` is no way around.
fn query_param<'a>(query: &'a str, name: &str) -> Result<Option<Cow<'a, str>>, Reject> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if same_param(&percent_decode(k), name) {
            if found.is_some() {
                return Err(Reject::MultipleTokens);
            }
            found = Some(percent_decode(v));
        }
    }
    Ok(found)
}

/// The offered subprotocols, in order, across every `Sec-WebSocket-Protocol` header.
fn subprotocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// `Sec-WebSocket-Protocol: <marker>, <token>[, …]`: the element after the marker.
fn subprotocol_token<'a>(
    headers: &'a HeaderMap,
    marker: &str,
) -> Result<Option<Cow<'a, str>>, Reject> {
    let mut it = subprotocols(headers);
    let mut found = None;
    while let Some(p) = it.next() {
        if p == marker {
            if found.is_some() {
                return Err(Reject::MultipleTokens);
            }
            found = Some(Cow::Borrowed(it.next().ok_or(Reject::Malformed)?));
        }
    }
    Ok(found)
}

/// Remove the token from where it came so the upstream never sees it. Returns the new
/// query string when the token came from the query.
pub fn remove(
    source: &TokenSource,
    headers: &mut HeaderMap,
    query: Option<&str>,
) -> Option<Option<String>> {
    match source {
        TokenSource::Bearer => {
            headers.remove(AUTHORIZATION);
            None
        }
        TokenSource::Header(name) => {
            headers.remove(name);
            None
        }
        TokenSource::Cookie(name) => {
            let kept: Vec<String> = headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|s| s.split(';'))
                .filter(|pair| {
                    !same_param(
                        pair.split_once('=').map_or(pair.trim(), |(k, _)| k.trim()),
                        name,
                    )
                })
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect();
            headers.remove(COOKIE);
            if !kept.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
                    headers.insert(COOKIE, v);
                }
            }
            None
        }
        TokenSource::WebSocketProtocol(marker) => {
            let mut kept = Vec::new();
            {
                let mut it = subprotocols(headers);
                while let Some(p) = it.next() {
                    if p == marker {
                        it.next();
                    } else {
                        kept.push(p.to_owned());
                    }
                }
            }
            headers.remove(SEC_WEBSOCKET_PROTOCOL);
            if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
                if !kept.is_empty() {
                    headers.insert(SEC_WEBSOCKET_PROTOCOL, v);
                }
            }
            None
        }
        TokenSource::Query(name) => {
            let q = query?;
            let kept: Vec<&str> = q
                .split('&')
                .filter(|pair| {
                    !same_param(
                        &percent_decode(pair.split_once('=').map_or(*pair, |(k, _)| k)),
                        name,
                    )
                })
                .collect();
            Some(if kept.is_empty() {
                None
            } else {
                Some(kept.join("&"))
            })
        }
    }
}

/// A parameter or cookie name as the most lenient upstream reads it: PHP stops at a NUL,
/// drops leading spaces, reads `a[x]` as `a`, and turns `.`, space and `[` into `_`;
/// ASP.NET ignores case. Two names that read the same there are the same name here.
fn reading(name: &str) -> impl Iterator<Item = char> + '_ {
    // PHP reads names as C strings: `tok%00x` is `tok` to it.
    let name = name.split('\0').next().unwrap_or_default();
    let name = name.trim_start_matches(' ');
    // `a[x]` is the array `a` to PHP.
    let name = match name.find('[') {
        Some(i) if name[i..].contains(']') => &name[..i],
        _ => name,
    };
    name.chars().map(|c| match c {
        '.' | ' ' | '[' => '_',
        c => c.to_ascii_lowercase(),
    })
}

/// Whether two parameter or cookie names read the same ([`reading`]); allocates nothing,
/// as it runs for every query pair and cookie of a request.
pub fn same_param(a: &str, b: &str) -> bool {
    reading(a).eq(reading(b))
}

/// The parameter RFC 6750 §2.3 names for a token in the query.
const ACCESS_TOKEN: &str = "access_token";

/// Whether the request carries a bearer credential through a well-known carrier
/// (`Authorization: Bearer`, the `access_token` query parameter) that `sources` do not
/// name: with the token of a named source, that is two credentials (RFC 6750 §2).
pub fn stray_credentials(
    sources: &[TokenSource],
    headers: &HeaderMap,
    query: Option<&str>,
) -> bool {
    let bearer_named = sources.contains(&TokenSource::Bearer);
    let query_named = sources
        .iter()
        .any(|s| matches!(s, TokenSource::Query(n) if n == ACCESS_TOKEN));
    let stray_bearer = !bearer_named && !matches!(bearer(headers), Ok(None));
    let stray_query =
        !query_named && query.is_some_and(|q| !matches!(query_param(q, ACCESS_TOKEN), Ok(None)));
    stray_bearer || stray_query
}

/// Drop the well-known credential carriers — `Authorization: Bearer` and the
/// `access_token` query parameter — so a token the route did not read never reaches the
/// upstream or its logs. Returns the new query as [`remove`] does.
pub fn strip_carriers(headers: &mut HeaderMap, query: Option<&str>) -> Option<Option<String>> {
    if !matches!(bearer(headers), Ok(None)) {
        headers.remove(AUTHORIZATION);
    }
    let q = query?;
    if matches!(query_param(q, ACCESS_TOKEN), Ok(None)) {
        return None;
    }
    remove(
        &TokenSource::Query(ACCESS_TOKEN.to_owned()),
        headers,
        Some(q),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Query names are compared decoded, so an encoded name cannot smuggle the token past removal.
    #[test]
    fn encoded_query_names_match() {
        assert_eq!(
            query_param("a=1&access%5Ftoken=t.o.k", "access_token")
                .ok()
                .flatten()
                .as_deref(),
            Some("t.o.k")
        );
        assert_eq!(
            query_param("access_token=a&access_token=b", "access_token").err(),
            Some(Reject::MultipleTokens)
        );
        assert_eq!(
            remove(
                &TokenSource::Query("access_token".into()),
                &mut HeaderMap::new(),
                Some("a=1&access%5ftoken=x&b=2")
            ),
            Some(Some("a=1&b=2".to_owned()))
        );
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%41"), "aA");
    }
}
