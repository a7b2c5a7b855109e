//! Listeners, connection limits, HTTP/1.1 + HTTP/2 serving, the admin listener, and an
//! injected shutdown that stops every task this module started.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::{Config, RevocationConfig, RevocationSource};
use crate::control::api::{self as control_api, ControlBody};
use crate::control::ControlPlane;
use crate::live::LiveRegistry;
use crate::metrics::Metrics;
use crate::proxy::{self, Gateway, Revocations};
use crate::revocation::set::RevocationSet;
use crate::revocation::sync::{self, SyncClient, SyncState};

/// The configuration generation requests are served by; swapped whole on reload.
pub type Current = Arc<arc_swap::ArcSwap<Gateway>>;

/// A started gateway: its bound addresses, and the handle to reload or stop it.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// The generation it started with (revocations, live registry and metrics are shared by
    /// all generations).
    pub gateway: Arc<Gateway>,
    current: Current,
    certs: Vec<Arc<crate::tls::ReloadingCert>>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
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
        let restart_needed = format!(
            "{:?}{:?}{:?}{:?}",
            config.listeners, config.admin, config.limits, config.revocation
        ) != format!(
            "{:?}{:?}{:?}{:?}",
            old.config.listeners, old.config.admin, old.config.limits, old.config.revocation
        );
        if restart_needed {
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
    pub fn reload_file(&self, path: &std::path::Path) -> bool {
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
            let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
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
        let _ = &self.certs;
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

/// Bind every listener (so a busy port fails before anything else starts), then serve.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let mut listeners = Vec::new();
    for l in &config.listeners {
        // TLS settings first: an unreadable certificate fails before anything is bound.
        let tls = match &l.tls {
            Some(files) => Some(
                crate::tls::server_config(files)
                    .with_context(|| format!("TLS for listener {}", l.address))?,
            ),
            None => None,
        };
        let bound = TcpListener::bind(l.address)
            .await
            .with_context(|| format!("cannot listen on {}", l.address))?;
        listeners.push((bound, tls));
    }
    let admin = match config.admin {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?,
        ),
        None => None,
    };

    let metrics = Metrics::new();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let live = LiveRegistry::new(metrics.live_open.clone(), metrics.live_closed.clone());
    let revocations = match &config.revocation {
        Some(rc) => Some(start_revocations(rc, live.clone(), &mut tasks, &shutdown_rx).await?),
        None => None,
    };
    let gateway = Arc::new(Gateway::new(config, metrics, revocations, live)?);
    let current: Current = Arc::new(arc_swap::ArcSwap::new(gateway.clone()));
    let mut certs = Vec::new();

    for issuer in &gateway.verifier.issuers {
        tasks.spawn(issuer.clone().run(shutdown_rx.clone()));
    }

    let limits = gateway.config.limits.clone();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());

    let mut addrs = Vec::new();
    for (listener, tls) in listeners {
        addrs.push(listener.local_addr()?);
        let acceptor = tls.map(|(config, cert)| {
            certs.push(cert.clone());
            tasks.spawn(watch_certificate(cert, shutdown_rx.clone()));
            tokio_rustls::TlsAcceptor::from(config)
        });
        tasks.spawn(accept_loop(
            listener,
            current.clone(),
            builder.clone(),
            connections.clone(),
            acceptor,
            shutdown_rx.clone(),
        ));
    }
    let admin_addr = match admin {
        Some(l) => {
            let addr = l.local_addr()?;
            tasks.spawn(admin_loop(l, current.clone(), shutdown_rx.clone()));
            Some(addr)
        }
        None => None,
    };
    tracing::info!(listeners = ?addrs, admin = ?admin_addr, "jwtgate serving");
    Ok(Running {
        addrs,
        admin: admin_addr,
        gateway,
        current,
        certs,
        shutdown,
        tasks,
    })
}

/// Load the last snapshot (if any), then keep the set current: from the control plane, or
/// in single-node mode from the local store whose API the admin listener serves.
async fn start_revocations(
    rc: &RevocationConfig,
    live: Arc<LiveRegistry>,
    tasks: &mut JoinSet<()>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Revocations> {
    let state = Arc::new(SyncState::default());
    let set = match &rc.snapshot_file {
        Some(path) if path.exists() => match RevocationSet::load(path, crate::verify::now_unix()) {
            Ok(set) => {
                tracing::info!(file = %path.display(), entries = set.len(), cursor = set.cursor(), "revocation snapshot loaded");
                state.set_ready();
                set
            }
            Err(e) => {
                // Unreadable: start empty and re-sync from the beginning (not ready until then).
                tracing::error!(error = %e, "ignoring the revocation snapshot; syncing from scratch");
                RevocationSet::new()
            }
        },
        _ => RevocationSet::new(),
    };
    let set = Arc::new(set);
    let apply = sync::apply_to(set.clone(), live);
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
                &crate::config::IdpConfig::default(),
                tasks,
                shutdown.clone(),
            )
            .await?;
            tasks.spawn(sync::follow_store(
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
        set.clone(),
        rc.snapshot_file.clone(),
        rc.purge_interval,
        shutdown.clone(),
    ));
    Ok(Revocations {
        set,
        state,
        max_staleness: rc.max_staleness,
        deny_when_stale: rc.deny_when_stale,
        control,
    })
}

/// Re-read a listener's certificate when its files change (checked every two seconds).
async fn watch_certificate(
    cert: Arc<crate::tls::ReloadingCert>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => cert.reload_if_changed(),
            _ = shutdown.changed() => return,
        }
    }
}

fn service(
    current: Current,
    peer: SocketAddr,
    proto: &'static str,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<proxy::Body>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static {
    let peer = proxy::Peer::new(peer, proto);
    service_fn(move |req: Request<Incoming>| {
        // Each request runs on the generation current when it arrived.
        let gw = current.load_full();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(proxy::handle(gw, req, peer).await) }
    })
}

async fn accept_loop(
    listener: TcpListener,
    current: Current,
    builder: auto::Builder<TokioExecutor>,
    connections: Arc<Semaphore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let handshake_timeout = current.load().config.limits.header_timeout;
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let gw = current.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result =
                match tls {
                    None => {
                        let conn = builder.serve_connection_with_upgrades(
                            TokioIo::new(stream),
                            service(gw, peer, "http"),
                        );
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(acceptor) => {
                        // The handshake counts against the header timeout (slow-handshake clients).
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            };
                        let conn = builder.serve_connection_with_upgrades(
                            TokioIo::new(stream),
                            service(gw, peer, "https"),
                        );
                        watcher.watch(conn.into_owned()).await
                    }
                };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serve plain HTTP/1.1 with `handler` until shutdown: the admin and control listeners.
pub(crate) async fn serve_http1<F, Fut, B>(
    listener: TcpListener,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let response = handler(req);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    // Streams (SSE) end on the same shutdown signal; bound the wait regardless.
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

async fn admin_loop(listener: TcpListener, current: Current, shutdown: watch::Receiver<bool>) {
    let handler = move |req: Request<Incoming>| {
        let gw = current.load_full();
        async move { admin(&gw, req).await }
    };
    serve_http1(listener, handler, shutdown).await;
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ControlBody> {
    let mut r = Response::new(Either::Left(Full::new(body.into())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `/metrics`, `/healthz` (the process answers), `/readyz` (every issuer has usable keys
/// and the revocation set is loaded); in single-node mode also the control API (`/v1/…`).
async fn admin(gw: &Gateway, req: Request<Incoming>) -> Response<ControlBody> {
    if req.uri().path().starts_with("/v1/") {
        if let Some(plane) = gw.revocations.as_ref().and_then(|r| r.control.as_ref()) {
            return control_api::handle(plane, req).await;
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        );
    }
    match req.uri().path() {
        "/metrics" => {
            gw.update_gauges();
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                gw.metrics.render(),
            )
        }
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            let mut waiting: Vec<String> = gw
                .verifier
                .issuers
                .iter()
                .filter(|i| !i.ready())
                .map(|i| format!("no usable keys for issuer {}", i.cfg.name))
                .collect();
            if gw.revocations.as_ref().is_some_and(|r| !r.state.is_ready()) {
                waiting.push("revocations not yet synced".to_owned());
            }
            if waiting.is_empty() {
                text(StatusCode::OK, "text/plain", "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {}\n", waiting.join("; ")),
                )
            }
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
