//! The control plane: the source of truth for revocations. It records them durably
//! ([`store`]), serves them to gateways as a snapshot and a resumable SSE stream, and
//! authenticates writers (a JWT with the configured scope, or an API key) and readers
//! (API keys). `jwtgate control` runs it on its own listener; a gateway in single-node mode
//! mounts the same API on its admin listener.

pub mod api;
pub mod client;
pub mod idp;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::body::Incoming;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{AccessConfig, ControlConfig, IdpConfig, StoreUrl, TokenCacheConfig};
use crate::metrics::Metrics;
use crate::verify::keys::Fetcher;
use crate::verify::Verifier;
use store::Store;

/// Control-plane metric names.
pub const CONTROL_REVOCATIONS_WRITTEN_TOTAL: &str = "jwtgate_control_revocations_written_total";
pub const CONTROL_STREAM_CLIENTS: &str = "jwtgate_control_stream_clients";

pub struct ControlPlane {
    pub store: Store,
    pub access: AccessConfig,
    /// Verifies writers' JWTs; `None` when writers use API keys only.
    pub writer_verifier: Option<Verifier>,
    pub registry: Registry,
    pub written: IntCounterVec,
    pub stream_clients: IntGauge,
    /// Back-channel logout and RFC 7009 revocation.
    pub idp: idp::IdpEndpoints,
    shutdown: watch::Receiver<bool>,
}

impl ControlPlane {
    /// Open the store and prepare the API. Background tasks (writer JWKS refresh, purge)
    /// are spawned into `tasks` and stop with `shutdown`.
    pub async fn open(
        store: &StoreUrl,
        access: AccessConfig,
        idp_config: &IdpConfig,
        tasks: &mut JoinSet<()>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<ControlPlane>> {
        let store = Store::open(store)
            .await
            .context("opening the revocation store")?;
        let writer_verifier = (!access.writer_issuers.is_empty()).then(|| {
            let cache = TokenCacheConfig {
                max_entries: 10_000,
                ttl: Duration::from_secs(60),
            };
            Verifier::new(
                &access.writer_issuers,
                &cache,
                &[],
                None,
                Fetcher::new(),
                Metrics::new(),
            )
        });
        if let Some(v) = &writer_verifier {
            for issuer in &v.issuers {
                tasks.spawn(issuer.clone().run(shutdown.clone()));
            }
        }
        let idp = idp::IdpEndpoints::new(idp_config);
        for keys in idp.key_sets() {
            tasks.spawn(keys.run(shutdown.clone()));
        }
        let registry = Registry::new();
        let written = IntCounterVec::new(
            Opts::new(
                CONTROL_REVOCATIONS_WRITTEN_TOTAL,
                "Revocations durably written, by kind.",
            ),
            &["kind"],
        )?;
        let stream_clients = IntGauge::new(CONTROL_STREAM_CLIENTS, "Open revocation streams.")?;
        registry.register(Box::new(written.clone()))?;
        registry.register(Box::new(stream_clients.clone()))?;
        let cp = Arc::new(ControlPlane {
            store,
            access,
            writer_verifier,
            registry,
            written,
            stream_clients,
            idp,
            shutdown: shutdown.clone(),
        });
        tasks.spawn(purge_loop(cp.clone(), shutdown));
        Ok(cp)
    }
}

/// Entries past their time are deleted every `purge_interval` (and once at start).
async fn purge_loop(cp: Arc<ControlPlane>, mut shutdown: watch::Receiver<bool>) {
    loop {
        match cp.store.purge(crate::verify::now_unix()).await {
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

/// A started control plane.
pub struct RunningControl {
    pub addr: std::net::SocketAddr,
    pub plane: Arc<ControlPlane>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl RunningControl {
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            self.tasks.abort_all();
        }
    }
}

/// Bind, open the store, serve.
pub async fn start(config: ControlConfig) -> anyhow::Result<RunningControl> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let plane = ControlPlane::open(
        &config.store,
        config.access,
        &config.idp,
        &mut tasks,
        shutdown_rx.clone(),
    )
    .await?;
    tasks.spawn(serve(listener, plane.clone(), shutdown_rx));
    tracing::info!(%addr, "jwtgate control serving");
    Ok(RunningControl {
        addr,
        plane,
        shutdown,
        tasks,
    })
}

async fn serve(listener: TcpListener, plane: Arc<ControlPlane>, shutdown: watch::Receiver<bool>) {
    let handler = move |req: hyper::Request<Incoming>| {
        let plane = plane.clone();
        async move { api::handle(&plane, req).await }
    };
    crate::server::serve_http1(listener, handler, shutdown).await;
}
