//! Section `revocation` of a gateway: where its revocation set comes from (a control plane,
//! or in single-node mode a local store whose API the admin listener serves), and what
//! happens when it goes stale.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use super::control::{AccessConfig, RawAccess, RawReaders, RawWriters, StoreUrl};
use super::duration::Dur;
use super::Validator;

/// `revocation`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRevocation {
    /// The control plane to sync from, e.g. `http://127.0.0.1:9901`.
    pub control_url: Option<String>,
    /// Single-node mode instead: `sqlite:///path.db` or `postgres://…`.
    pub store: Option<String>,
    /// The bearer (a reader API key) the gateway presents to the control plane.
    pub token: Option<String>,
    /// Or a file holding it (a mounted secret, or `jwtgate keygen`'s `reader.key`).
    pub token_file: Option<String>,
    /// Where the last known set is kept across restarts.
    pub snapshot_file: Option<String>,
    /// How long the set may go without word from the control plane (default 60s).
    pub max_staleness: Option<Dur>,
    /// `allow` (enforce the last known set, default) or `deny` (fail closed with 503).
    pub on_stale: Option<OnStale>,
    /// Single-node mode: who may write revocations through the admin listener.
    pub writers: Option<RawWriters>,
    /// Single-node mode: who may read them.
    pub readers: Option<RawReaders>,
    /// Single-node mode: retention of a `sid` entry without `expires_at` (default 24h).
    pub default_retention: Option<Dur>,
    /// The longest token lifetime (`exp − iat`) accepted, and in single-node mode how long a
    /// `sub` cutoff is kept (default 24h). Keep it equal to the control plane's.
    pub max_token_lifetime: Option<Dur>,
    /// How often entries past their time are dropped (default 30s).
    pub purge_interval: Option<Dur>,
}

/// What a gateway does once its set is older than `max_staleness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStale {
    /// Keep enforcing the last known set.
    #[default]
    Allow,
    /// Fail closed: protected routes answer 503.
    Deny,
}

/// A validated `revocation` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationConfig {
    /// Where entries come from.
    pub source: RevocationSource,
    /// Where the last known set is kept across restarts.
    pub snapshot_file: Option<PathBuf>,
    /// How long the set may go without word from the control plane before `on_stale`.
    pub max_staleness: Duration,
    /// What happens once stale.
    pub on_stale: OnStale,
    /// Tokens living longer are refused.
    pub max_token_lifetime: Duration,
    /// How often the gateway drops entries past their time from its set.
    pub purge_interval: Duration,
}

/// Where a gateway's revocations come from.
#[derive(Clone, PartialEq, Eq)]
pub enum RevocationSource {
    /// Sync from a control plane.
    Control {
        /// Its base URL.
        url: Uri,
        /// The bearer presented.
        token: Option<String>,
    },
    /// Single-node mode: the gateway runs the control API itself.
    Store {
        /// The store opened.
        store: StoreUrl,
        /// Who may use the API.
        access: AccessConfig,
    },
}

impl std::fmt::Debug for RevocationSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RevocationSource::Control { url, .. } => write!(f, "Control({url})"),
            RevocationSource::Store { store, .. } => write!(f, "Store({store:?})"),
        }
    }
}

impl Validator<'_> {
    pub(super) fn revocation(&mut self, r: &RawRevocation, base: &Path) -> RevocationConfig {
        let p = "revocation";
        let source = match (&r.control_url, &r.store) {
            (Some(url), None) => {
                if r.writers.is_some() || r.readers.is_some() {
                    self.err(&format!("{p}.writers"), "writers and readers belong to the control plane; they apply here only with `store` (single-node mode)");
                }
                let uri = self
                    .fetch_url(&format!("{p}.control_url"), url)
                    .unwrap_or_default();
                let token = match (&r.token, &r.token_file) {
                    (Some(_), Some(_)) => {
                        self.err(
                            &format!("{p}.token_file"),
                            "give `token` or `token_file`, not both",
                        );
                        None
                    }
                    (None, None) => {
                        self.warn(
                            &format!("{p}.control_url"),
                            "no `token` or `token_file`: a control plane with readers configured will refuse this gateway, and protected routes answer 503 until the first sync",
                        );
                        None
                    }
                    (t, None) => t.clone(),
                    (None, Some(file)) => {
                        let path = base.join(file);
                        match super::secret_file(&path) {
                            Ok(Some(t)) => Some(t),
                            Ok(None) => {
                                self.warn(&format!("{p}.token_file"), format!("{} does not exist yet: the control plane will refuse this gateway (and protected routes answer 503) until it does", path.display()));
                                None
                            }
                            Err(e) => {
                                self.err(&format!("{p}.token_file"), e);
                                None
                            }
                        }
                    }
                };
                RevocationSource::Control { url: uri, token }
            }
            (None, Some(store)) => {
                let access = self.access(
                    "revocation.",
                    RawAccess {
                        writers: r.writers.as_ref(),
                        readers: r.readers.as_ref(),
                        retention: r.default_retention,
                        lifetime: r.max_token_lifetime,
                        purge: r.purge_interval,
                    },
                    base,
                );
                let store = self
                    .store_url(&format!("{p}.store"), store, base)
                    .unwrap_or(StoreUrl::Sqlite(PathBuf::new()));
                RevocationSource::Store { store, access }
            }
            _ => {
                self.err(p, "give exactly one of `control_url` (sync from a control plane) or `store` (single-node mode)");
                RevocationSource::Control {
                    url: Uri::default(),
                    token: None,
                }
            }
        };
        RevocationConfig {
            source,
            snapshot_file: r.snapshot_file.as_ref().map(|f| base.join(f)),
            max_staleness: self.positive(
                &format!("{p}.max_staleness"),
                r.max_staleness,
                Duration::from_secs(60),
            ),
            on_stale: r.on_stale.unwrap_or_default(),
            max_token_lifetime: self.positive(
                &format!("{p}.max_token_lifetime"),
                r.max_token_lifetime,
                Duration::from_secs(86_400),
            ),
            purge_interval: self.positive(
                &format!("{p}.purge_interval"),
                r.purge_interval,
                Duration::from_secs(30),
            ),
        }
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
            ("revocation: { max_staleness: 5s }\n", "revocation", (2, 1)),
            (
                "revocation: { control_url: \"http://a\", store: \"sqlite://x.db\" }\n",
                "revocation",
                (2, 1),
            ),
            (
                "revocation: { control_url: \"http://a\", on_stale: maybe }\n",
                "revocation.on_stale",
                (2, 40),
            ),
            (
                "revocation: { control_url: \"http://a\", writers: { api_keys: [] } }\n",
                "revocation.writers",
                (2, 40),
            ),
            ("revocation: { store: \"mysql://x\" }\n", "revocation.store", (2, 15)),
            (
                "revocation: { store: \"sqlite://x.db\", writers: { api_keys: [ { name: k, sha256: abc } ] } }\n",
                "revocation.writers.api_keys[0].sha256",
                (2, 73),
            ),
        ];
        assert_problems(&cases, |yaml| gateway_problems(&format!("{LISTEN}{yaml}")));
    }

    /// A control plane without credentials is allowed (one may accept anonymous readers),
    /// with a warning that says what will fail.
    #[test]
    fn missing_credentials_warn() {
        let c = gateway_with(&format!(
            "{LISTEN}revocation: {{ control_url: \"http://127.0.0.1:9901\" }}\n"
        ));
        assert!(
            c.warnings
                .iter()
                .any(|w| w.path == "revocation.control_url" && w.message.contains("token_file")),
            "{:?}",
            c.warnings
        );
        let c = gateway_with(&format!(
            "{LISTEN}revocation: {{ control_url: \"http://127.0.0.1:9901\", token: t }}\n"
        ));
        assert!(!c
            .warnings
            .iter()
            .any(|w| w.path == "revocation.control_url"));
    }

    /// `on_stale` parses into its enum; single-node mode carries the access settings.
    #[test]
    fn typed_values() {
        let c = gateway_with(&format!(
            "{LISTEN}revocation: {{ control_url: \"http://127.0.0.1:9901\", on_stale: deny, token: t }}\n"
        ));
        let r = c.revocation.expect("revocation");
        assert_eq!(r.on_stale, OnStale::Deny);
        assert!(
            matches!(r.source, RevocationSource::Control { token: Some(ref t), .. } if t == "t")
        );
        let c = gateway_with(&format!(
            "{LISTEN}revocation: {{ store: \"sqlite://r.db\" }}\n"
        ));
        let r = c.revocation.expect("revocation");
        assert!(
            matches!(r.source, RevocationSource::Store { store: StoreUrl::Sqlite(ref p), .. } if p.ends_with("r.db"))
        );
    }
}
