//! `shared_signals` (control plane): the OpenID Shared Signals transmitters whose Security
//! Event Tokens (CAEP, RISC) become revocations.

use std::path::Path;
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use super::control::{ApiKey, RawApiKey};
use super::duration::Dur;
use super::issuers::{IssuerConfig, RawIssuer};
use super::Validator;

/// `shared_signals`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSharedSignals {
    /// The `aud` every SET must carry: this receiver's name at the transmitters.
    pub audience: String,
    /// How old a SET's `iat` may be (default 1d); its `jti` is remembered that long.
    pub max_age: Option<Dur>,
    /// Who sends events.
    pub transmitters: Vec<RawTransmitter>,
}

/// `shared_signals.transmitters[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTransmitter {
    /// Name for logs and the `transmitter` metric label.
    pub name: String,
    /// The SETs' `iss`, exactly.
    pub issuer: String,
    /// Where the transmitter publishes the keys it signs SETs with.
    pub jwks_uri: String,
    /// Accepted `alg` values (default: every asymmetric one; never `none` or HMAC).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `iat` (default 30s).
    pub leeway: Option<Dur>,
    /// Whose users the events name: an entry of `issuers` (its `issuer` becomes the
    /// revocations' `iss`) or that issuer URL itself.
    pub subjects: String,
    /// Subject formats besides `iss_sub` that hold the tokens' `sub` (`opaque`, `email`,
    /// `phone_number`): only when the provider's `sub` is that identifier.
    #[serde(default)]
    pub sub_formats: Vec<String>,
    /// The token claim that holds what an `email` or `phone_number` subject names, when
    /// `sub` does not: events about it revoke by that claim.
    #[serde(default)]
    pub subject_claims: RawSubjectClaims,
    /// Push delivery (RFC 8935) to `POST /v1/ssf/events`; absent: pushed SETs are refused.
    pub push: Option<RawPush>,
    /// Poll delivery (RFC 8936) from the transmitter.
    pub poll: Option<RawPoll>,
}

/// `shared_signals.transmitters[].subject_claims`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubjectClaims {
    pub email: Option<String>,
    pub phone_number: Option<String>,
}

/// Longest claim name a claim revocation may name.
pub const MAX_CLAIM_NAME: usize = 256;
/// Claims a claim revocation may not name: the token's own frame, and those with a
/// revocation kind of their own.
pub const NOT_USER_CLAIMS: &[&str] = &["iss", "aud", "exp", "nbf", "iat", "jti", "sid", "sub"];

/// What is wrong with `claim` as the claim of a claim revocation, if anything.
pub fn claim_name_problem(claim: &str) -> Option<String> {
    if claim.is_empty() || claim.len() > MAX_CLAIM_NAME || claim.chars().any(char::is_control) {
        Some("the name of a top-level token claim (1 to 256 characters), such as `email`".into())
    } else if NOT_USER_CLAIMS.contains(&claim) {
        Some(format!("`{claim}` is not a claim that names a user"))
    } else {
        None
    }
}

/// `shared_signals.transmitters[].push`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPush {
    /// Hex SHA-256 of the bearer token the transmitter presents.
    pub token_sha256: Option<String>,
    /// Or a file holding that token.
    pub token_file: Option<String>,
}

/// `shared_signals.transmitters[].poll`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoll {
    /// The transmitter's poll endpoint.
    pub url: String,
    /// Pause between polls that found nothing (default 5s).
    pub interval: Option<Dur>,
    /// A file holding the bearer token presented to the endpoint.
    pub token_file: Option<String>,
    /// SETs asked for per poll (default 100).
    pub max_events: Option<u32>,
}

/// Validated `shared_signals`.
#[derive(Debug, Clone)]
pub struct SsfConfig {
    /// The `aud` SETs must carry.
    pub audience: String,
    /// Oldest `iat` accepted; ids are remembered this long (plus leeway).
    pub max_age: Duration,
    /// The transmitters.
    pub transmitters: Vec<TransmitterConfig>,
}

/// Subject identifier formats (RFC 9493) that can name the tokens' `sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubFormat {
    Opaque,
    Email,
    PhoneNumber,
}

/// One validated transmitter.
#[derive(Debug, Clone)]
pub struct TransmitterConfig {
    /// Its name.
    pub name: String,
    /// Its SETs' issuer and keys, `audiences` set to the receiver's audience.
    pub issuer: IssuerConfig,
    /// The `iss` the revocations carry: the issuer of the tokens its events are about.
    pub subjects_iss: String,
    /// Extra formats that hold `sub`.
    pub sub_formats: Vec<SubFormat>,
    /// Formats held by another claim than `sub`: (format, claim).
    pub subject_claims: Vec<(SubFormat, String)>,
    /// Push allowed, and how the transmitter authenticates.
    pub push: Option<PushAuth>,
    /// Poll delivery.
    pub poll: Option<PollConfig>,
}

/// How a pushing transmitter authenticates, beyond the SET's signature.
#[derive(Debug, Clone)]
pub enum PushAuth {
    /// The signature alone (`push: {}`).
    SignatureOnly,
    /// A bearer token with this SHA-256.
    Bearer(ApiKey),
    /// A token was configured but its file does not exist yet: every push is refused.
    Nobody,
}

/// Validated `poll`.
#[derive(Debug, Clone)]
pub struct PollConfig {
    pub url: Uri,
    pub interval: Duration,
    pub token: Option<String>,
    pub max_events: u32,
}

/// Every asymmetric JWS algorithm.
const ASYMMETRIC: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl Validator<'_> {
    pub(super) fn shared_signals(
        &mut self,
        raw: &RawSharedSignals,
        token_issuers: &[IssuerConfig],
        base: &Path,
    ) -> SsfConfig {
        let p = "shared_signals";
        if raw.audience.trim().is_empty() {
            self.err(
                &format!("{p}.audience"),
                "the `aud` transmitters address SETs to",
            );
        }
        if raw.transmitters.is_empty() {
            self.err(
                &format!("{p}.transmitters"),
                "list at least one transmitter",
            );
        }
        let issuers: Vec<RawIssuer> = raw
            .transmitters
            .iter()
            .map(|t| RawIssuer {
                name: t.name.clone(),
                issuer: t.issuer.clone(),
                discovery: false,
                jwks_uri: Some(t.jwks_uri.clone()),
                jwks_file: None,
                secret: None,
                audiences: vec![raw.audience.clone()],
                algorithms: if t.algorithms.is_empty() {
                    ASYMMETRIC.iter().map(|a| (*a).to_owned()).collect()
                } else {
                    t.algorithms.clone()
                },
                leeway: t.leeway,
                jwks_refresh: None,
                jwks_max_stale: None,
                jwks_refetch_interval: None,
                require_sub: Some(false),
            })
            .collect();
        let checked = self.issuers_at(&format!("{p}.transmitters"), &issuers, base);
        let mut transmitters = Vec::new();
        for (i, t) in raw.transmitters.iter().enumerate() {
            let at = format!("{p}.transmitters[{i}]");
            let Some(issuer) = checked.iter().find(|c| c.name == t.name).cloned() else {
                continue;
            };
            let subjects_iss = match token_issuers.iter().find(|c| c.name == t.subjects) {
                Some(c) => c.issuer.clone(),
                None if t.subjects.contains("://") => t.subjects.clone(),
                None => {
                    self.err(&format!("{at}.subjects"), format!("no entry of `issuers` is named `{}`; name one, or write the `iss` of the tokens the events are about", t.subjects));
                    continue;
                }
            };
            let sub_formats = t
                .sub_formats
                .iter()
                .enumerate()
                .filter_map(|(j, f)| match f.as_str() {
                    "opaque" => Some(SubFormat::Opaque),
                    "email" => Some(SubFormat::Email),
                    "phone_number" => Some(SubFormat::PhoneNumber),
                    _ => {
                        self.err(
                            &format!("{at}.sub_formats[{j}]"),
                            "`opaque`, `email` or `phone_number` (`iss_sub` always names `sub`)",
                        );
                        None
                    }
                })
                .collect::<Vec<_>>();
            let subject_claims = self.subject_claims(&at, &t.subject_claims, &sub_formats);
            let push = t.push.as_ref().map(|push| {
                let key = RawApiKey {
                    name: t.name.clone(),
                    sha256: push.token_sha256.clone(),
                    key_file: push.token_file.clone(),
                };
                match (&key.sha256, &key.key_file) {
                    (None, None) => PushAuth::SignatureOnly,
                    // A token file that does not exist yet locks push, never opens it.
                    _ => self
                        .api_keys(&format!("{at}.push"), std::slice::from_ref(&key), base)
                        .pop()
                        .map_or(PushAuth::Nobody, PushAuth::Bearer),
                }
            });
            let poll = t.poll.as_ref().and_then(|poll| {
                let url = self.fetch_url(&format!("{at}.poll.url"), &poll.url)?;
                let token = poll.token_file.as_ref().and_then(|file| {
                    let path = base.join(file);
                    match super::secret_file(&path) {
                        Ok(Some(t)) => Some(t),
                        Ok(None) => {
                            self.err(
                                &format!("{at}.poll.token_file"),
                                format!("{} does not exist", path.display()),
                            );
                            None
                        }
                        Err(e) => {
                            self.err(&format!("{at}.poll.token_file"), e);
                            None
                        }
                    }
                });
                Some(PollConfig {
                    url,
                    interval: self.positive(
                        &format!("{at}.poll.interval"),
                        poll.interval,
                        Duration::from_secs(5),
                    ),
                    token,
                    max_events: poll.max_events.unwrap_or(100).clamp(1, 1000),
                })
            });
            if push.is_none() && poll.is_none() {
                self.err(
                    &at,
                    "give `push` (the transmitter posts to /v1/ssf/events), `poll` (jwtgate polls it), or both",
                );
            }
            transmitters.push(TransmitterConfig {
                name: t.name.clone(),
                issuer,
                subjects_iss,
                sub_formats,
                subject_claims,
                push,
                poll,
            });
        }
        SsfConfig {
            audience: raw.audience.clone(),
            max_age: self.positive(
                &format!("{p}.max_age"),
                raw.max_age,
                Duration::from_secs(86_400),
            ),
            transmitters,
        }
    }

    /// `subject_claims`: a top-level claim per format, not one `sub_formats` already gives
    /// to `sub`, and not one of the token's frame.
    fn subject_claims(
        &mut self,
        at: &str,
        raw: &RawSubjectClaims,
        sub_formats: &[SubFormat],
    ) -> Vec<(SubFormat, String)> {
        let mut out = Vec::new();
        for (format, key, claim) in [
            (SubFormat::Email, "email", &raw.email),
            (SubFormat::PhoneNumber, "phone_number", &raw.phone_number),
        ] {
            let Some(claim) = claim else { continue };
            let path = format!("{at}.subject_claims.{key}");
            if sub_formats.contains(&format) {
                self.err(
                    &path,
                    format!(
                        "`sub_formats` already says `sub` holds the {key}; keep one of the two"
                    ),
                );
            } else if let Some(problem) = claim_name_problem(claim) {
                self.err(
                    &path,
                    format!("{problem}; when `sub` holds the {key}, list `{key}` in `sub_formats`"),
                );
            } else {
                out.push((format, claim.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::control::ControlConfig;
    use super::*;

    const HEAD: &str = "listen: \"127.0.0.1:0\"\nstore: \"sqlite://r.db\"\nissuers:\n  - { name: corp, issuer: \"https://id.example\", jwks_uri: \"https://id.example/jwks\", audiences: [api] }\n";

    fn load(ssf: &str) -> Result<ControlConfig, Vec<String>> {
        ControlConfig::from_yaml(
            &format!("{HEAD}shared_signals:\n{ssf}"),
            Path::new("/etc/jwtgate"),
            &|_| None,
        )
        .map_err(|ps| ps.into_iter().map(|p| p.path).collect())
    }

    /// A transmitter with push and poll: keys from its JWKS, asymmetric algorithms only,
    /// events about the users of the `issuers` entry it names.
    #[test]
    fn a_transmitter() {
        let c = load("  audience: https://gw/\n  transmitters:\n    - { name: t, issuer: \"https://ssf.example\", jwks_uri: \"https://ssf.example/jwks\", subjects: corp, sub_formats: [email], push: { token_sha256: \"0000000000000000000000000000000000000000000000000000000000000000\" }, poll: { url: \"https://ssf.example/poll\", interval: 2s } }\n")
            .expect("valid");
        let s = c.idp.shared_signals.expect("shared_signals");
        let t = &s.transmitters[0];
        assert_eq!(t.subjects_iss, "https://id.example");
        assert_eq!(t.issuer.audiences, vec!["https://gw/".to_owned()]);
        assert!(!t
            .issuer
            .algorithms
            .iter()
            .any(|a| format!("{a:?}").starts_with("HS")));
        assert_eq!(t.sub_formats, vec![SubFormat::Email]);
        assert!(matches!(t.push, Some(PushAuth::Bearer(_))));
        assert_eq!(
            t.poll.as_ref().expect("poll").interval,
            Duration::from_secs(2)
        );
        assert_eq!(s.max_age, Duration::from_secs(86_400));
        // A push token file that does not exist yet refuses every push.
        let c = load("  audience: a\n  transmitters:\n    - { name: t, issuer: \"https://ssf.example\", jwks_uri: \"https://ssf.example/jwks\", subjects: corp, push: { token_file: /nonexistent/ssf-push } }\n")
            .expect("a warning, not an error");
        let s = c.idp.shared_signals.expect("shared_signals");
        assert!(matches!(s.transmitters[0].push, Some(PushAuth::Nobody)));
        assert!(c
            .warnings
            .iter()
            .any(|w| w.path.starts_with("shared_signals.transmitters[0].push")));
    }

    /// Each mistake is reported at its key.
    #[test]
    fn problems() {
        let t = |extra: &str| {
            let subjects = if extra.contains("subjects") {
                ""
            } else {
                ", subjects: corp"
            };
            format!("  audience: https://gw/\n  transmitters:\n    - {{ name: t, issuer: \"https://ssf.example\", jwks_uri: \"https://ssf.example/jwks\"{subjects}{extra} }}\n")
        };
        for (yaml, path) in [
            (t(""), "shared_signals.transmitters[0]"),
            (
                t(", push: {}, subjects: nobody"),
                "shared_signals.transmitters[0].subjects",
            ),
            (
                t(", push: {}, sub_formats: [account]"),
                "shared_signals.transmitters[0].sub_formats[0]",
            ),
            (
                t(", push: {}, sub_formats: [email], subject_claims: { email: email }"),
                "shared_signals.transmitters[0].subject_claims.email",
            ),
            (
                t(", push: {}, subject_claims: { phone_number: sub }"),
                "shared_signals.transmitters[0].subject_claims.phone_number",
            ),
            (
                t(", push: {}, subject_claims: { email: \"\" }"),
                "shared_signals.transmitters[0].subject_claims.email",
            ),
            (
                t(", push: {}, algorithms: [HS256]"),
                "shared_signals.transmitters[0].algorithms[0]",
            ),
            (
                t(", push: { token_sha256: xyz }"),
                "shared_signals.transmitters[0].push[0].sha256",
            ),
            (
                t(", poll: { url: \"ftp://x\" }"),
                "shared_signals.transmitters[0].poll.url",
            ),
            (
                t(", poll: { url: \"https://x/poll\", token_file: /nonexistent/t }"),
                "shared_signals.transmitters[0].poll.token_file",
            ),
            (
                "  audience: \"\"\n  transmitters: []\n".to_owned(),
                "shared_signals.audience",
            ),
            (
                "  audience: a\n  transmitters: []\n".to_owned(),
                "shared_signals.transmitters",
            ),
        ] {
            let got = load(&yaml).expect_err(&yaml);
            assert!(
                got.iter().any(|p| p == path),
                "{yaml}: want {path}, got {got:?}"
            );
        }
    }
}
