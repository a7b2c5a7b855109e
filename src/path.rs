//! Request-target parsing shared by the gateway and the configuration: path
//! normalization (what is matched is what is forwarded), host without port, and the
//! percent-decoding of form fields and query parameters.
//!
//! A path that could be read two ways (encoded `/`, encoded dot segments, control bytes,
//! backslashes, `;` parameters) is refused instead of guessed at.

use std::borrow::Cow;

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
    #[error("percent-encoded bytes that are not UTF-8")]
    NotUtf8,
    #[error("a double-encoded escape (`%25` and two hex digits)")]
    DoubleEncoded,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

pub fn hex(b: u8) -> Option<u8> {
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
    // Every byte as an upstream that decodes all escapes would see it: it must be UTF-8
    // (no overlong forms, no surrogates), or some upstream may decode it to `/` or `.`.
    let mut decoded: Vec<u8> = Vec::with_capacity(raw.len());
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
                // `%2541` is `%41` to an upstream that decodes twice.
                if v == b'%'
                    && seg.get(i + 3).and_then(|&c| hex(c)).is_some()
                    && seg.get(i + 4).and_then(|&c| hex(c)).is_some()
                {
                    return Err(PathError::DoubleEncoded);
                }
                decoded.push(v);
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
                decoded.push(b);
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
    if std::str::from_utf8(&decoded).is_err() {
        return Err(PathError::NotUtf8);
    }

    let mut path = String::with_capacity(raw.len());
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        path.push('/');
    }
    // Decoding may have made one: `%25%41` becomes `%25A`, and with the next character an
    // escape of an escape. Checked on what is forwarded (found by fuzzing).
    let b = path.as_bytes();
    let double = (0..b.len().saturating_sub(4))
        .any(|i| b[i..].starts_with(b"%25") && hex(b[i + 3]).is_some() && hex(b[i + 4]).is_some());
    if double {
        return Err(PathError::DoubleEncoded);
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

/// A `Host` / `:authority` value in canonical form: lower case, no trailing dot, the port
/// (if any) as digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// A DNS name, an IPv4 address, or an `[IPv6]` literal (with its brackets).
    pub host: String,
    pub port: Option<u16>,
}

impl Authority {
    /// `host[:port]`.
    pub fn render(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// Whether `value` is already this authority's canonical rendering (so it can be used
    /// as is, without rendering a copy).
    pub fn renders_as(&self, value: &[u8]) -> bool {
        let Some(rest) = value.strip_prefix(self.host.as_bytes()) else {
            return false;
        };
        match (self.port, rest) {
            (None, rest) => rest.is_empty(),
            (Some(port), rest) => rest.strip_prefix(b":").is_some_and(|digits| {
                // No leading zero: `:080` is not the rendering of port 80.
                !digits.starts_with(b"0")
                    && digits.iter().all(u8::is_ascii_digit)
                    && std::str::from_utf8(digits)
                        .ok()
                        .and_then(|d| d.parse::<u16>().ok())
                        == Some(port)
            }),
        }
    }
}

/// Parse a `Host` / `:authority` value strictly (RFC 9110 §7.2, RFC 3986 §3.2.2): a
/// reg-name of letters, digits, `-`, `.` and `_` in non-empty labels, an IPv4 address, or
/// an `[IPv6]` literal; then an optional all-digit port. Everything else — userinfo, a
/// path, several colons, percent-escapes, an empty host or label — is refused, because
/// another parser downstream (nginx takes everything up to the first colon) would read it
/// as a different host.
pub fn parse_authority(value: &[u8]) -> Option<Authority> {
    let text = std::str::from_utf8(value).ok()?;
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (literal, after) = rest.split_once(']')?;
        let ip: std::net::Ipv6Addr = literal.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{ip}]"), port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        // One trailing dot names the same host (`example.com.`); the canonical form has none.
        let host = host.strip_suffix('.').unwrap_or(host);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return None;
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some(Authority { host, port })
}

pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Whether a URL host is the loopback interface (`localhost`, 127.0.0.0/8, `::1`).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
        assert_eq!(n("/%252e%252e/admin"), Err(PathError::DoubleEncoded));
        assert_eq!(n("/a%2541"), Err(PathError::DoubleEncoded));
        assert_eq!(n("/50%25off").as_deref(), Ok("/50%25off"));
        // Fuzzing: an escape of an escape assembled by decoding.
        assert_eq!(n("/%25%411+iiiiiiii/e-5"), Err(PathError::DoubleEncoded));
        // Decoded bytes must be UTF-8: overlong `/` and `.`, lone continuation bytes,
        // surrogates, truncated sequences.
        assert_eq!(n("/a%C3%A9%E2%82%AC").as_deref(), Ok("/a%C3%A9%E2%82%AC"));
        for bad in [
            "/%C0%AF",
            "/%C0%AE%C0%AE/x",
            "/%E0%80%AF",
            "/a%80",
            "/%ED%A0%80",
            "/%C3",
            "/%F8%88%80%80%80",
        ] {
            assert_eq!(n(bad), Err(PathError::NotUtf8), "{bad}");
        }
    }

    /// Hosts lose their port, IPv6 literals keep their brackets.
    #[test]
    fn host_without_port_keeps_ipv6_brackets() {
        assert_eq!(host_without_port("Api.Example.com:8080"), "Api.Example.com");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
    }

    /// Hosts are parsed strictly and canonicalized; anything another parser could read
    /// as a different host is refused.
    #[test]
    fn authority_table() {
        let ok = [
            ("api.example.com", "api.example.com"),
            ("API.Example.COM:8080", "api.example.com:8080"),
            ("api.example.com.", "api.example.com"),
            ("api.example.com.:443", "api.example.com:443"),
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("[::1]:8080", "[::1]:8080"),
            ("[0:0::1]", "[::1]"),
            ("internal_svc", "internal_svc"),
        ];
        for (raw, want) in ok {
            let a = parse_authority(raw.as_bytes()).unwrap_or_else(|| panic!("{raw}"));
            assert_eq!(a.render(), want, "{raw}");
            // The client's own value is passed on only when it is the rendering.
            assert_eq!(a.renders_as(raw.as_bytes()), raw == want, "{raw}");
        }
        let a = parse_authority(b"a:80").unwrap_or_else(|| panic!("a:80"));
        for other in [
            "a:080", "a:8", "a:800", "a:", "a", "ab:80", "a:80 ", "A:80", "a:+80",
        ] {
            assert!(!a.renders_as(other.as_bytes()), "{other}");
        }
        for bad in [
            "", ":80", "a:b:c", "a:80:80", "user@a", "a/b", "a b", "a..b", ".a", "a.:80.", "a:",
            "a:65536", "a:-1", "a%2eb", "[::1", "[::1]x", "[nope]", "a\\b", "é.com", "a?b", "a#b",
            "..", "[::1]:", "a,b",
        ] {
            assert_eq!(parse_authority(bad.as_bytes()), None, "{bad}");
        }
    }

    /// Form decoding turns `+` into a space and leaves a broken escape as it was.
    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a+b%20c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("plain"), "plain");
    }
}
