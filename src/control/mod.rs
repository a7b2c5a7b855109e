//! The control plane: the source of truth for revocations. It records them durably
//! ([`store`]), serves them to gateways as a snapshot and a resumable SSE stream ([`api`]),
//! takes them straight from identity providers ([`idp`]), and authenticates writers (a JWT
//! with the configured scope, or an API key) and readers (API keys). Refusals are
//! [`error::ApiError`]s.
//!
//! It shares with the data plane only the revocation wire types ([`crate::revocation::Entry`],
//! [`crate::revocation::Kind`]) and the verifier; `crate::app` runs it on its own listener
//! (`jwtgate control`) or mounts it on a single-node gateway's admin listener.

pub mod api;
pub mod client;
pub mod error;
pub mod idp;
pub mod ssf;
pub mod store;
pub mod writes;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::config::{AccessConfig, IdpConfig, StoreUrl, TokenCacheConfig};
use crate::metrics::Metrics;
use crate::verify::{self, Verifier};
use store::Store;

pub struct ControlPlane {
    pub store: Store,
    pub access: AccessConfig,
    /// Verifies writers' JWTs; `None` when writers use API keys only.
    pub writer_verifier: Option<Verifier>,
    /// The process's metrics (the control plane's own are `jwtgate_control_*`).
    pub metrics: Metrics,
    pub clock: Clock,
    /// Back-channel logout and RFC 7009 revocation.
    pub idp: idp::IdpEndpoints,
    /// The Shared Signals receiver, when transmitters are configured.
    pub ssf: Option<ssf::Receiver>,
    shutdown: watch::Receiver<bool>,
}

impl ControlPlane {
    /// Open the store and prepare the API. Background tasks (key refreshes, purge) are
    /// spawned into `tasks` and stop with `shutdown`.
    pub async fn open(
        store: &StoreUrl,
        access: AccessConfig,
        idp_config: &IdpConfig,
        ctx: &verify::Context,
        tasks: &mut JoinSet<()>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<ControlPlane>> {
        let store = Store::open(store)
            .await
            .context("opening the revocation store")?;
        let writer_verifier = (!access.writer_issuers.is_empty()).then(|| {
            let cache = TokenCacheConfig {
                max_entries: 10_000,
                max_bytes: 16 * 1024 * 1024,
                ttl: Duration::from_secs(60),
            };
            Verifier::new(&access.writer_issuers, &cache, ctx, &[])
        });
        if let Some(v) = &writer_verifier {
            for issuer in &v.issuers {
                tasks.spawn(issuer.clone().run(shutdown.clone()));
            }
        }
        let idp = idp::IdpEndpoints::new(idp_config, ctx);
        let ssf = idp_config
            .shared_signals
            .as_ref()
            .map(|s| ssf::Receiver::new(s, &access, ctx));
        let ssf_keys = ssf
            .as_ref()
            .map(ssf::Receiver::key_sets)
            .unwrap_or_default();
        for keys in idp.key_sets().into_iter().chain(ssf_keys) {
            tasks.spawn(keys.run(shutdown.clone()));
        }
        let cp = Arc::new(ControlPlane {
            store,
            access,
            writer_verifier,
            metrics: ctx.metrics.clone(),
            clock: ctx.clock.clone(),
            idp,
            ssf,
            shutdown: shutdown.clone(),
        });
        if let Some(rx) = &cp.ssf {
            for (t, tx) in rx.transmitters().iter().enumerate() {
                if let Some(poll) = &tx.poll {
                    tasks.spawn(ssf::poll::run(
                        cp.clone(),
                        t,
                        poll.clone(),
                        shutdown.clone(),
                    ));
                }
            }
        }
        tasks.spawn(purge_loop(cp.clone(), shutdown));
        Ok(cp)
    }
}

/// Entries past their time are deleted every `purge_interval` (and once at start).
async fn purge_loop(cp: Arc<ControlPlane>, mut shutdown: watch::Receiver<bool>) {
    loop {
        match cp.store.purge(cp.clock.unix()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "expired revocations purged"),
            Err(e) => tracing::warn!(error = %e, "purging expired revocations failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(cp.access.purge_interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Serve the control API on its own listener until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    plane: Arc<ControlPlane>,
    shutdown: watch::Receiver<bool>,
) {
    let handler = move |req: hyper::Request<Incoming>| {
        let plane = plane.clone();
        async move { api::handle(&plane, req).await }
    };
    crate::http1::serve(listener, handler, shutdown).await;
}
