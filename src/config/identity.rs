//! Section `identity_headers`: claim → header the upstream receives. Every listed header is
//! stripped from every incoming request, on every route, before the gateway sets its own.

use std::collections::BTreeMap;

use http::header::HeaderName;

use super::Validator;

/// A validated identity header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeader {
    /// The header set.
    pub name: HeaderName,
    /// Dotted claim path, split.
    pub claim: Vec<String>,
}

/// Headers an identity header may never be: the gateway or HTTP itself owns them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-request-id",
];

impl Validator<'_> {
    /// A header name the gateway will set itself: valid, without `_` (a client's `-` twin
    /// would be read instead), and not one HTTP or the gateway owns.
    pub(super) fn gateway_header(&mut self, p: &str, name: &str) -> Option<HeaderName> {
        let Ok(hn) = HeaderName::from_bytes(name.as_bytes()) else {
            self.err(p, format!("`{name}` is not a valid header name"));
            return None;
        };
        if hn.as_str().contains('_') {
            self.err(
                p,
                format!("`{name}`: header names with `_` are dropped by nginx and many servers, so a client's `-` twin would be read instead; use `-`"),
            );
            return None;
        }
        if RESERVED_HEADERS.contains(&hn.as_str()) {
            self.err(
                p,
                format!("`{name}` is owned by HTTP or the gateway and cannot carry identity"),
            );
            return None;
        }
        Some(hn)
    }

    pub(super) fn identity_headers(
        &mut self,
        raw: &BTreeMap<String, String>,
    ) -> Vec<IdentityHeader> {
        self.identity_headers_at("identity_headers", raw)
    }

    /// The identity headers of the mapping at `at` (the global one, or a route's).
    pub(super) fn identity_headers_at(
        &mut self,
        at: &str,
        raw: &BTreeMap<String, String>,
    ) -> Vec<IdentityHeader> {
        let mut out: Vec<IdentityHeader> = Vec::new();
        for (name, claim) in raw {
            let p = format!("{at}.{name}");
            let Some(hn) = self.gateway_header(&p, name) else {
                continue;
            };
            if out.iter().any(|h| h.name == hn) {
                self.err(
                    &p,
                    format!("`{name}` is listed twice (header names are case-insensitive)"),
                );
                continue;
            }
            let path: Vec<String> = claim.split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                self.err(
                    &p,
                    format!("`{claim}` is not a claim path: write `sub` or `realm_access.roles`"),
                );
                continue;
            }
            out.push(IdentityHeader {
                name: hn,
                claim: path,
            });
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
            (
                "identity_headers: { \"X Bad\": sub }\n",
                "identity_headers.X Bad",
                (2, 21),
            ),
            (
                "identity_headers: { Authorization: sub }\n",
                "identity_headers.Authorization",
                (2, 21),
            ),
            (
                "identity_headers: { X-Forwarded-For: sub }\n",
                "identity_headers.X-Forwarded-For",
                (2, 21),
            ),
            (
                "identity_headers: { X-User: \"a..b\" }\n",
                "identity_headers.X-User",
                (2, 21),
            ),
            (
                "identity_headers: { X-User: sub, x-user: email }\n",
                "identity_headers.x-user",
                (2, 34),
            ),
        ];
        assert_problems(&cases, |yaml| gateway_problems(&format!("{LISTEN}{yaml}")));
    }

    /// Claim paths are split on dots.
    #[test]
    fn typed_values() {
        let c = gateway_with(&format!(
            "{LISTEN}identity_headers: {{ X-Roles: realm_access.roles }}\n"
        ));
        assert_eq!(
            c.identity_headers[0].name,
            HeaderName::from_static("x-roles")
        );
        assert_eq!(c.identity_headers[0].claim, vec!["realm_access", "roles"]);
    }
}
