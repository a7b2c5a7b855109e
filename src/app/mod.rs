//! The one place that wires the planes together: it starts the gateway (data plane), the
//! control plane, and single-node mode (a gateway that runs the control API itself), and it
//! owns reload and shutdown. Nothing below this module names both planes.

mod control;
mod run;

pub use control::{start_control, start_control_with, RunningControl};
pub use run::{run_control, run_gateway};

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::config::{Config, IdpConfig, OnStale, RevocationConfig, RevocationSource};
use crate::control::store::Store;
use crate::control::{api as control_api, ControlPlane};
use crate::http1::Handler;
use crate::live::LiveRegistry;
use crate::metrics::{Component, Metrics};
use crate::proxy::{Gateway, Shared};
use crate::revocation::set::RevocationSet;
use crate::revocation::sync::{self, Apply, SyncClient, SyncState};
use crate::revocation::{Entry, Kind, Revocations};
use crate::server::{self, Current};
use crate::tls::ReloadingCert;
use crate::verify;

/// A started gateway: its bound addresses, and the handle to reload or stop it.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// The generation it started with (revocations, live registry and metrics are shared by
    /// all generations).
    pub gateway: Arc<Gateway>,
    /// Single-node mode: the control plane the admin listener serves.
    pub control: Option<Arc<ControlPlane>>,
    current: Current,
    certs: Vec<Arc<ReloadingCert>>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Start a gateway on the system clock.
pub async fn start_gateway(config: Config) -> anyhow::Result<Running> {
    start_gateway_with(config, Clock::system()).await
}

/// Start a gateway whose time is `clock` (tests move an adjustable clock forward).
/// Every listener is bound before anything else starts.
pub async fn start_gateway_with(config: Config, clock: Clock) -> anyhow::Result<Running> {
    let bound = server::bind(&config).await?;
    let single_node = matches!(
        config.revocation.as_ref().map(|r| &r.source),
        Some(RevocationSource::Store { .. })
    );
    let components: &[Component] = if single_node {
        &[Component::Gateway, Component::Control]
    } else {
        &[Component::Gateway]
    };
    let ctx = verify::Context {
        fetcher: verify::keys::Fetcher::new(),
        metrics: Metrics::new(components),
        clock,
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let live = LiveRegistry::new(
        ctx.metrics.live_open.clone(),
        ctx.metrics.live_closed.clone(),
    );
    let (revocations, control) = match &config.revocation {
        Some(rc) => {
            let (r, c) = start_revocations(rc, &live, &ctx, &mut tasks, &shutdown_rx).await?;
            (Some(r), c)
        }
        None => (None, None),
    };
    let in_flight = Arc::new(tokio::sync::Semaphore::new(config.limits.max_in_flight));
    let gateway = Arc::new(Gateway::new(
        config,
        Shared {
            in_flight,
            revocations,
            live,
            verify: ctx,
        },
    )?);
    for issuer in &gateway.verifier.issuers {
        tasks.spawn(issuer.clone().run(shutdown_rx.clone()));
    }
    let current: Current = Arc::new(arc_swap::ArcSwap::new(gateway.clone()));
    let serving = server::serve(
        bound,
        &current,
        control.clone().map(mount),
        &mut tasks,
        &shutdown_rx,
    )?;
    Ok(Running {
        addrs: serving.addrs,
        admin: serving.admin,
        gateway,
        control,
        current,
        certs: serving.certs,
        shutdown,
        tasks,
    })
}

/// The control API as endpoints of the admin listener.
fn mount(plane: Arc<ControlPlane>) -> Handler {
    Arc::new(move |req| {
        let plane = plane.clone();
        Box::pin(async move { control_api::handle(&plane, req).await.map(BodyExt::boxed) })
    })
}

/// Load the last snapshot (if any), then keep the set current: from the control plane, or
/// in single-node mode from the local store whose API the admin listener serves.
async fn start_revocations(
    rc: &RevocationConfig,
    live: &Arc<LiveRegistry>,
    ctx: &verify::Context,
    tasks: &mut JoinSet<()>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<(Revocations, Option<Arc<ControlPlane>>)> {
    let state = Arc::new(SyncState::new(ctx.clock.clone()));
    let revocations = Revocations::load(rc, state.clone());
    let set = revocations.set.clone();
    let apply = apply_to(set.clone(), live.clone());
    let control = match &rc.source {
        RevocationSource::Control { url, token } => {
            let client = SyncClient::new(
                url,
                token.as_deref(),
                set.clone(),
                apply,
                state.clone(),
                rc.max_staleness,
            );
            tasks.spawn(client.run(shutdown.clone()));
            None
        }
        RevocationSource::Store { store, access } => {
            let plane = ControlPlane::open(
                store,
                access.clone(),
                &IdpConfig::default(),
                ctx,
                tasks,
                shutdown.clone(),
            )
            .await?;
            tasks.spawn(follow_store(
                plane.store.clone(),
                apply,
                set.clone(),
                state.clone(),
                shutdown.clone(),
            ));
            Some(plane)
        }
    };
    tasks.spawn(sync::maintain(
        set,
        ctx.clock.clone(),
        rc.snapshot_file.clone(),
        rc.purge_interval,
        shutdown.clone(),
    ));
    if rc.on_stale == OnStale::Deny {
        tasks.spawn(close_live_when_stale(
            revocations.clone(),
            live.clone(),
            shutdown.clone(),
        ));
    }
    Ok((revocations, control))
}

/// `on_stale: deny` holds for open WebSockets and streams too: once the set is stale they
/// are ended (WebSocket close 1011), as new requests get 503.
async fn close_live_when_stale(
    revocations: Revocations,
    live: Arc<LiveRegistry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let every =
        (revocations.max_staleness / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if revocations.stale() {
            let n = live.close_authenticated(crate::live::CloseReason::Stale);
            if n > 0 {
                tracing::warn!(
                    closed = n,
                    "revocation set stale under on_stale: deny; live connections ended"
                );
            }
        }
    }
}

/// An entry goes into the set, and live connections of that token, session or subject end
/// now; a tombstone takes its entry out.
fn apply_to(set: Arc<RevocationSet>, live: Arc<LiveRegistry>) -> Apply {
    Arc::new(move |e: &Entry| {
        match e.key() {
            Some((kind, value)) if e.deleted => set.remove(kind, &e.iss, &value),
            Some((kind, value)) => {
                set.insert(kind, &e.iss, &value, e.expires_at, e.issued_before);
                let key = set.key(kind, &e.iss, &value);
                if kind == Kind::Claim {
                    let claim = e.claim.as_deref().unwrap_or_default();
                    live.revoke_claim(
                        |claims| set.claim_key(claims, claim) == Some(key),
                        e.issued_before,
                    );
                } else {
                    live.revoke(kind, key, e.issued_before);
                }
            }
            None => {}
        }
        set.set_cursor(e.cursor);
    })
}

/// Single-node mode: follow the local store directly, woken by each commit.
async fn follow_store(
    store: Store,
    apply: Apply,
    set: Arc<RevocationSet>,
    state: Arc<SyncState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut latest = store.subscribe();
    // A snapshot of another store (recreated, or restored below the snapshot's cursor)
    // starts over, as a syncing gateway does.
    let behind = store
        .max_cursor()
        .await
        .is_ok_and(|head| head < set.cursor());
    let known = set.epoch();
    if behind || (!known.is_empty() && known != store.epoch()) {
        tracing::warn!(
            "the revocation store was recreated or restored; reading it from the beginning"
        );
        set.restart(store.epoch());
    }
    set.set_epoch(store.epoch());
    loop {
        latest.mark_unchanged();
        loop {
            match store.list(set.cursor(), 5000, state.clock().unix()).await {
                Ok((entries, more)) => {
                    for e in &entries {
                        apply(e);
                    }
                    state.contact();
                    state.set_ready();
                    if !more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the local revocation store failed");
                    break;
                }
            }
        }
        tokio::select! {
            r = latest.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

impl Running {
    /// The generation serving now.
    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Swap in a validated configuration atomically. In-flight requests and live connections
    /// keep the generation they started with; key caches of unchanged issuers are kept.
    /// Listeners, admin, limits and the revocation block need a restart (a warning says so).
    pub fn reload(&self, config: Config) -> anyhow::Result<()> {
        let old = self.current.load_full();
        if config.needs_restart_for(&old.config) {
            tracing::warn!("listeners, admin, limits or revocation changed: those take effect at the next restart");
        }
        let new = Arc::new(old.next(config)?);
        for issuer in &new.verifier.issuers {
            if !old.verifier.issuers.iter().any(|o| Arc::ptr_eq(o, issuer)) {
                tokio::spawn(issuer.clone().run(self.shutdown.subscribe()));
            }
        }
        for issuer in &old.verifier.issuers {
            if !new.verifier.issuers.iter().any(|n| Arc::ptr_eq(n, issuer)) {
                issuer.retire();
            }
        }
        self.current.store(new);
        for cert in &self.certs {
            cert.reload_if_changed();
        }
        Ok(())
    }

    /// Read, validate and apply a configuration file; a file that fails validation is
    /// refused (each problem logged) and the running configuration keeps serving.
    pub fn reload_file(&self, path: &Path) -> bool {
        let metrics = &self.gateway.metrics;
        match Config::load(path)
            .map_err(|p| p.to_string())
            .and_then(|c| self.reload(c).map_err(|e| format!("{e:#}")))
        {
            Ok(()) => {
                metrics.config_reloads("ok");
                tracing::info!(file = %path.display(), "configuration reloaded");
                true
            }
            Err(problems) => {
                metrics.config_reloads("error");
                for line in problems.lines() {
                    tracing::error!("{line}");
                }
                tracing::error!(file = %path.display(), "configuration refused; the previous one keeps serving");
                false
            }
        }
    }

    /// Reload on SIGHUP and whenever the file changes (checked every second).
    pub fn watch_config(self: &Arc<Self>, path: std::path::PathBuf) {
        let me = Arc::downgrade(self);
        let mut shutdown = self.shutdown.subscribe();
        tokio::spawn(async move {
            let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut last = stamp(&path);
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<()>();
                let forced = tokio::select! {
                    _ = hangup => true,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                    _ = shutdown.changed() => return,
                };
                let now = stamp(&path);
                if forced || now != last {
                    last = now;
                    match me.upgrade() {
                        Some(running) => {
                            running.reload_file(&path);
                        }
                        None => return,
                    }
                }
            }
        });
    }

    /// Stop accepting, let open connections finish for up to `grace`, stop background tasks.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        // Upgraded connections are not hyper's any more: end them with 1001 ourselves.
        self.gateway
            .live
            .close_all(crate::live::CloseReason::Shutdown);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            self.tasks.abort_all();
        }
    }
}
