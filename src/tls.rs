//! TLS with rustls (aws-lc-rs): listener certificates that are re-read when their files
//! change (and on SIGHUP) without dropping connections, TLS 1.2 and 1.3 only, ALPN `h2` and
//! `http/1.1`, optional client certificates (mTLS); and the upstream client's TLS settings.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::config::TlsFiles;

use crate::http_client::provider;

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

fn certified_key(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain = certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a PEM private key from {}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .context("unusable private key")?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .context("the certificate does not belong to the private key")?;
    Ok(ck)
}

fn stamp(files: &TlsFiles) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&files.cert)?, m(&files.key)?))
}

/// The listener's current certificate, swapped atomically on reload.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
    stamp: std::sync::Mutex<Option<(SystemTime, SystemTime)>>,
}

impl ReloadingCert {
    /// Re-read the files; on failure the old certificate keeps serving.
    pub fn reload(&self) -> anyhow::Result<()> {
        let ck = certified_key(&self.files.cert, &self.files.key)?;
        self.current.store(Arc::new(ck));
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = stamp(&self.files);
        Ok(())
    }

    /// Reload if the files changed since the last load.
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.files);
        let last = *self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now != last {
            match self.reload() {
                Ok(()) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded")
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "TLS certificate not reloaded; the old one keeps serving")
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Server settings for a TLS listener.
pub fn server_config(
    files: &TlsFiles,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, Arc<ReloadingCert>)> {
    let cert = Arc::new(ReloadingCert {
        files: files.clone(),
        current: ArcSwap::from_pointee(certified_key(&files.cert, &files.key)?),
        stamp: std::sync::Mutex::new(stamp(files)),
    });
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).context("invalid client CA certificate")?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), cert))
}

/// Client settings for an https upstream: a CA bundle (else the system roots), an optional
/// client certificate.
pub fn upstream_client_config(
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            for c in certs(ca)? {
                roots.add(c).context("invalid upstream CA certificate")?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain = certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read a PEM private key from {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("upstream client certificate")?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}
