//! The control plane's file (`control.yaml`), and the access settings it shares with a
//! single-node gateway's `revocation` block: the store, who may write and read, how long
//! entries are kept, and what identity providers may send.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::duration::Dur;
use super::issuers::{IssuerConfig, KeySource, RawIssuer};
use super::listeners::{LogConfig, RawLog};
use super::source::{self, Problem, Problems};
use super::{deserialize, load_file, Validator};

/// `control.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    /// `IP:port` of the control API.
    pub listen: String,
    /// `sqlite:///path.db` or `postgres://user@host/db`.
    pub store: String,
    /// Who may write revocations.
    #[serde(default)]
    pub writers: Option<RawWriters>,
    /// Who may read them (gateways).
    #[serde(default)]
    pub readers: Option<RawReaders>,
    /// Retention of a `sid` entry without `expires_at` (default 24h).
    pub default_retention: Option<Dur>,
    /// The longest lifetime a token can have: a `sub` cutoff is kept this long (default 24h).
    pub max_token_lifetime: Option<Dur>,
    /// How often entries past their time are deleted (default 60s).
    pub purge_interval: Option<Dur>,
    /// Issuers of the tokens `/v1/revoke` and back-channel logout accept.
    #[serde(default)]
    pub issuers: Vec<RawIssuer>,
    /// OIDC Back-Channel Logout.
    pub backchannel_logout: Option<RawBackchannelLogout>,
    /// OAuth clients that may call `/v1/revoke` with HTTP Basic credentials.
    #[serde(default)]
    pub revoke_clients: Vec<RawRevokeClient>,
    /// OpenID Shared Signals: security events (CAEP, RISC) that revoke.
    pub shared_signals: Option<super::ssf::RawSharedSignals>,
    /// Log format and level.
    #[serde(default)]
    pub log: RawLog,
}

/// `backchannel_logout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackchannelLogout {
    /// Name of an entry of `issuers`.
    pub issuer: String,
    /// The client ids logout tokens are addressed to (their `aud`).
    pub client_ids: Vec<String>,
    /// How old a logout token's `iat` may be (default 5m).
    pub max_age: Option<Dur>,
}

/// `revoke_clients[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRevokeClient {
    /// The OAuth client id.
    pub client_id: String,
    /// Hex SHA-256 of the client secret.
    pub secret_sha256: String,
}

/// `writers`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawWriters {
    /// Issuers of writers' JWTs.
    #[serde(default)]
    pub issuers: Vec<RawIssuer>,
    /// The scope a writer's JWT must carry, e.g. `jwtgate:revoke`.
    pub scope: Option<String>,
    /// Writer API keys.
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    /// The token claims writers may revoke by (`claim` entries); default `email` and
    /// `phone_number`.
    pub claims: Option<Vec<String>>,
}

/// `readers`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawReaders {
    /// Reader API keys (what gateways present).
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
}

/// One API key entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// Who holds it (for the operator).
    pub name: String,
    /// Hex SHA-256 of the key; the key itself never appears in configuration.
    pub sha256: Option<String>,
    /// Or a file holding the key itself (a mounted secret, or `jwtgate keygen`'s
    /// `writer.key`/`reader.key`), hashed when the configuration is loaded.
    pub key_file: Option<String>,
}

/// The access-related keys shared by `control.yaml` and a single-node `revocation` block.
pub(super) struct RawAccess<'a> {
    /// `writers`.
    pub writers: Option<&'a RawWriters>,
    /// `readers`.
    pub readers: Option<&'a RawReaders>,
    /// `default_retention`.
    pub retention: Option<Dur>,
    /// `max_token_lifetime`.
    pub lifetime: Option<Dur>,
    /// `purge_interval`.
    pub purge: Option<Dur>,
}

/// The revocation store.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// One SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (several control replicas).
    Postgres(String),
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            // The URL may hold a password.
            StoreUrl::Postgres(_) => f.write_str("postgres://<redacted>"),
        }
    }
}

/// A named API key, held as the SHA-256 of the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Who holds it.
    pub name: String,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({})", self.name)
    }
}

/// Who may write and read revocations, and how long entries are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfig {
    /// Issuers of writers' JWTs.
    pub writer_issuers: Vec<IssuerConfig>,
    /// The scope a writer's JWT must carry.
    pub writer_scope: String,
    /// Writer API keys.
    pub writer_keys: Vec<ApiKey>,
    /// The claims `claim` entries written through the API may name (`writers.claims`).
    pub writer_claims: Vec<String>,
    /// Reader API keys.
    pub reader_keys: Vec<ApiKey>,
    /// Retention of a `sid` entry without `expires_at`.
    pub default_retention: Duration,
    /// The longest lifetime a token of these issuers can have: a `sub` cutoff is kept
    /// this long, after which no token issued before it can still be valid.
    pub max_token_lifetime: Duration,
    /// How often entries past their time are deleted.
    pub purge_interval: Duration,
}

/// The validated `control.yaml`.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The control API's address.
    pub listen: SocketAddr,
    /// The store.
    pub store: StoreUrl,
    /// Writers, readers, retention.
    pub access: AccessConfig,
    /// What identity providers and OAuth clients may send.
    pub idp: IdpConfig,
    /// Log format and level.
    pub log: LogConfig,
    /// Allowed but worth an operator's look.
    pub warnings: Vec<Problem>,
}

/// What the control plane accepts straight from identity providers and OAuth clients.
#[derive(Debug, Clone, Default)]
pub struct IdpConfig {
    /// Issuers whose tokens `POST /v1/revoke` (RFC 7009) revokes.
    pub token_issuers: Vec<IssuerConfig>,
    /// OIDC Back-Channel Logout, when configured.
    pub backchannel: Option<BackchannelConfig>,
    /// OAuth clients allowed to call `/v1/revoke` with HTTP Basic credentials.
    pub revoke_clients: Vec<ApiKey>,
    /// Shared Signals transmitters, when configured.
    pub shared_signals: Option<super::ssf::SsfConfig>,
}

/// OIDC Back-Channel Logout: logout tokens of `issuer` addressed to one of its client ids.
#[derive(Debug, Clone)]
pub struct BackchannelConfig {
    /// The issuer, with `audiences` set to the accepted client ids.
    pub issuer: IssuerConfig,
    /// How old `iat` may be.
    pub max_age: Duration,
}

impl ControlConfig {
    /// Read and validate a control-plane file. The error lists every problem found.
    pub fn load(path: &Path) -> Result<ControlConfig, Problems> {
        load_file(path, ControlConfig::from_yaml)
    }

    /// Validate YAML text; relative file paths resolve against `base`.
    pub fn from_yaml(
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ControlConfig, Vec<Problem>> {
        let (value, pos) = source::load(text, env)?;
        let raw: RawControl = deserialize(value, &pos)?;
        let mut v = Validator::new(&pos);
        let listen = v.addr("listen", &raw.listen);
        let store = v.store_url("store", &raw.store, base);
        let access = v.access(
            "",
            RawAccess {
                writers: raw.writers.as_ref(),
                readers: raw.readers.as_ref(),
                retention: raw.default_retention,
                lifetime: raw.max_token_lifetime,
                purge: raw.purge_interval,
            },
            base,
        );
        let log = LogConfig::from(&raw.log);
        let idp = v.idp(&raw, base);
        if v.problems.is_empty() {
            if let (Some(listen), Some(store)) = (listen, store) {
                return Ok(ControlConfig {
                    listen,
                    store,
                    access,
                    idp,
                    log,
                    warnings: v.warnings,
                });
            }
        }
        Err(v.problems)
    }
}

impl Validator<'_> {
    pub(super) fn idp(&mut self, raw: &RawControl, base: &Path) -> IdpConfig {
        let token_issuers = self.issuers_at("issuers", &raw.issuers, base);
        let backchannel = raw.backchannel_logout.as_ref().and_then(|b| {
            if b.client_ids.is_empty() || b.client_ids.iter().any(String::is_empty) {
                self.err(
                    "backchannel_logout.client_ids",
                    "list the client ids logout tokens are addressed to (their `aud`)",
                );
            }
            let Some(issuer) = token_issuers.iter().find(|i| i.name == b.issuer) else {
                self.err(
                    "backchannel_logout.issuer",
                    format!("no entry of `issuers` is named `{}`", b.issuer),
                );
                return None;
            };
            if matches!(issuer.keys, KeySource::Secret(_)) {
                self.err(
                    "backchannel_logout.issuer",
                    "logout tokens must be signed with the provider's keys, not a shared secret",
                );
            }
            let mut issuer = issuer.clone();
            issuer.audiences = b.client_ids.clone();
            // A logout token may name only a session (`sid`).
            issuer.require_sub = false;
            Some(BackchannelConfig {
                issuer,
                max_age: self.positive(
                    "backchannel_logout.max_age",
                    b.max_age,
                    Duration::from_secs(300),
                ),
            })
        });
        let clients: Vec<RawApiKey> = raw
            .revoke_clients
            .iter()
            .map(|c| RawApiKey {
                name: c.client_id.clone(),
                sha256: Some(c.secret_sha256.clone()),
                key_file: None,
            })
            .collect();
        let revoke_clients = self.api_keys("revoke_clients", &clients, Path::new("."));
        let shared_signals = raw
            .shared_signals
            .as_ref()
            .map(|s| self.shared_signals(s, &token_issuers, base));
        IdpConfig {
            token_issuers,
            backchannel,
            revoke_clients,
            shared_signals,
        }
    }

    pub(super) fn store_url(&mut self, path: &str, s: &str, base: &Path) -> Option<StoreUrl> {
        if let Some(rest) = s.strip_prefix("sqlite://") {
            if rest.is_empty() {
                self.err(
                    path,
                    "write sqlite:///absolute/path.db or sqlite://relative.db",
                );
                return None;
            }
            return Some(StoreUrl::Sqlite(base.join(rest)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return match s.parse::<tokio_postgres::Config>() {
                Ok(_) => Some(StoreUrl::Postgres(s.to_owned())),
                Err(e) => {
                    self.err(path, format!("not a PostgreSQL URL: {e}"));
                    None
                }
            };
        }
        self.err(
            path,
            "a store is sqlite:///path/to/file.db or postgres://user@host/db",
        );
        None
    }

    pub(super) fn api_keys(&mut self, path: &str, keys: &[RawApiKey], base: &Path) -> Vec<ApiKey> {
        let mut out = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let sha256 = match (&k.sha256, &k.key_file) {
                (Some(hex), None) => self.sha256_hex(&format!("{path}[{i}].sha256"), hex),
                (None, Some(file)) => {
                    self.key_file(&format!("{path}[{i}].key_file"), &base.join(file))
                }
                _ => {
                    self.err(&format!("{path}[{i}]"), "give exactly one of `sha256` (the key's hex SHA-256) or `key_file` (a file holding the key)");
                    None
                }
            };
            if let Some(sha256) = sha256 {
                out.push(ApiKey {
                    name: k.name.clone(),
                    sha256,
                });
            }
        }
        out
    }

    fn sha256_hex(&mut self, p: &str, hex: &str) -> Option<[u8; 32]> {
        let hex = hex.trim();
        let bytes: Option<Vec<u8>> = (hex.len() == 64 && hex.is_ascii())
            .then(|| {
                (0..32)
                    .map(|j| u8::from_str_radix(&hex[2 * j..2 * j + 2], 16).ok())
                    .collect()
            })
            .flatten();
        let sha256 = bytes.and_then(|b| <[u8; 32]>::try_from(b).ok());
        if sha256.is_none() {
            self.err(
                p,
                "the hex SHA-256 of the key (64 hex digits): `printf %s KEY | sha256sum`",
            );
        }
        sha256
    }

    /// The SHA-256 of the key a file holds (surrounding whitespace ignored). A file that does
    /// not exist yet is a warning: the key authenticates nobody until it does.
    fn key_file(&mut self, p: &str, file: &Path) -> Option<[u8; 32]> {
        let key = match super::secret_file(file) {
            Ok(Some(key)) => key,
            Ok(None) => {
                self.warn(p, format!("{} does not exist yet: this key authenticates nobody until it does (`jwtgate keygen --dir DIR` writes writer.key and reader.key)", file.display()));
                return None;
            }
            Err(e) => {
                self.err(p, e);
                return None;
            }
        };
        if key.len() < 16 {
            self.err(
                p,
                format!("{} holds a key shorter than 16 characters", file.display()),
            );
            return None;
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
        <[u8; 32]>::try_from(digest.as_ref()).ok()
    }

    pub(super) fn access(&mut self, prefix: &str, a: RawAccess<'_>, base: &Path) -> AccessConfig {
        let empty_w = RawWriters::default();
        let empty_r = RawReaders::default();
        let w = a.writers.unwrap_or(&empty_w);
        let r = a.readers.unwrap_or(&empty_r);
        let writer_issuers = self.issuers_at(&format!("{prefix}writers.issuers"), &w.issuers, base);
        if !writer_issuers.is_empty() && w.scope.as_deref().is_none_or(str::is_empty) {
            self.err(&format!("{prefix}writers.scope"), "writers authenticated by JWT need the `scope` their tokens must carry, e.g. jwtgate:revoke");
        }
        AccessConfig {
            writer_issuers,
            writer_scope: w.scope.clone().unwrap_or_default(),
            writer_keys: self.api_keys(&format!("{prefix}writers.api_keys"), &w.api_keys, base),
            writer_claims: match &w.claims {
                None => vec!["email".to_owned(), "phone_number".to_owned()],
                Some(claims) => claims
                    .iter()
                    .enumerate()
                    .filter(|(i, c)| {
                        let problem = super::ssf::claim_name_problem(c);
                        if let Some(problem) = &problem {
                            self.err(&format!("{prefix}writers.claims[{i}]"), problem);
                        }
                        problem.is_none()
                    })
                    .map(|(_, c)| c.clone())
                    .collect(),
            },
            reader_keys: self.api_keys(&format!("{prefix}readers.api_keys"), &r.api_keys, base),
            default_retention: self.positive(
                &format!("{prefix}default_retention"),
                a.retention,
                Duration::from_secs(86_400),
            ),
            max_token_lifetime: self.positive(
                &format!("{prefix}max_token_lifetime"),
                a.lifetime,
                Duration::from_secs(86_400),
            ),
            purge_interval: self.positive(
                &format!("{prefix}purge_interval"),
                a.purge,
                Duration::from_secs(60),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::assert_problems;
    use super::*;

    fn problems(yaml: &str) -> Vec<Problem> {
        ControlConfig::from_yaml(yaml, Path::new("/etc/jwtgate"), &|_| None).expect_err("invalid")
    }

    const HEAD: &str = "listen: \"127.0.0.1:0\"\nstore: \"sqlite://r.db\"\n";

    /// Each mistake is reported at its key, line and column.
    #[test]
    fn problem_table() {
        let cases = [
            ("listen: nowhere\nstore: \"sqlite://r.db\"\n", "listen", (1, 1)),
            ("listen: \"127.0.0.1:0\"\nstore: \"redis://x\"\n", "store", (2, 1)),
            ("listen: \"127.0.0.1:0\"\nstore: \"sqlite://\"\n", "store", (2, 1)),
            (
                "writers: { api_keys: [ { name: k, sha256: \"zz\" } ] }\n",
                "writers.api_keys[0].sha256",
                (3, 35),
            ),
            (
                "writers: { issuers: [ { name: w, issuer: \"https://w\", jwks_file: k.json, audiences: [a] } ] }\n",
                "writers.scope",
                (3, 1),
            ),
            (
                "backchannel_logout: { issuer: nope, client_ids: [c] }\n",
                "backchannel_logout.issuer",
                (3, 23),
            ),
            (
                "issuers: [ { name: i, issuer: \"https://i\", jwks_file: k.json, audiences: [a] } ]\nbackchannel_logout: { issuer: i, client_ids: [] }\n",
                "backchannel_logout.client_ids",
                (4, 34),
            ),
            ("default_retention: 0s\n", "default_retention", (3, 1)),
            (
                "writers: { claims: [email, iss] }\n",
                "writers.claims[1]",
                (3, 28),
            ),
        ];
        assert_problems(&cases, |yaml| {
            let yaml = if yaml.starts_with("listen") {
                yaml.to_owned()
            } else {
                format!("{HEAD}{yaml}")
            };
            problems(&yaml)
        });
    }

    /// Key hashes decode; relative store paths resolve against the file's folder;
    /// back-channel logout takes its audiences from `client_ids`.
    #[test]
    fn typed_values() {
        let yaml = format!(
            "{HEAD}writers: {{ api_keys: [ {{ name: ops, sha256: \"{}\" }} ] }}\nissuers: [ {{ name: i, issuer: \"https://i\", jwks_file: k.json, audiences: [a] }} ]\nbackchannel_logout: {{ issuer: i, client_ids: [web] }}\n",
            "ab".repeat(32)
        );
        let c =
            ControlConfig::from_yaml(&yaml, Path::new("/etc/jwtgate"), &|_| None).expect("valid");
        assert_eq!(c.access.writer_keys[0].sha256, [0xab; 32]);
        assert_eq!(
            c.store,
            StoreUrl::Sqlite(PathBuf::from("/etc/jwtgate/r.db"))
        );
        let bc = c.idp.backchannel.expect("backchannel");
        assert_eq!(bc.issuer.audiences, vec!["web"]);
        assert!(matches!(bc.issuer.keys, KeySource::File(_)));
    }
}
