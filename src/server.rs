//! Step 1 of the request path: listeners (plain and TLS), connection limits, HTTP/1.1 and
//! HTTP/2 serving, and the admin listener. Everything it starts is spawned into the
//! caller's task set and stops with the caller's shutdown signal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::http1::{self, BoxBody, Handler};
use crate::proxy::{self, Gateway};
use crate::tls::ReloadingCert;

/// The configuration generation requests are served by; swapped whole on reload.
pub type Current = Arc<arc_swap::ArcSwap<Gateway>>;

type TlsSettings = (Arc<rustls::ServerConfig>, Arc<ReloadingCert>);

/// Listeners bound, certificates read: nothing can fail for want of a port any more.
pub struct Bound {
    listeners: Vec<(TcpListener, Option<TlsSettings>)>,
    admin: Option<TcpListener>,
}

/// Where the gateway serves.
pub struct Serving {
    pub addrs: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// Listener certificates, re-read on reload.
    pub certs: Vec<Arc<ReloadingCert>>,
}

/// Bind every listener (so a busy port or an unreadable certificate fails before anything
/// else starts).
pub async fn bind(config: &Config) -> anyhow::Result<Bound> {
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
    Ok(Bound { listeners, admin })
}

/// Serve `bound` with the generation in `current`. `mount` answers the admin listener's
/// `/v1/…` paths (the control API in single-node mode).
pub fn serve(
    bound: Bound,
    current: &Current,
    mount: Option<Handler>,
    tasks: &mut JoinSet<()>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Serving> {
    let limits = current.load().config.limits.clone();
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
    let mut certs = Vec::new();
    for (listener, tls) in bound.listeners {
        addrs.push(listener.local_addr()?);
        let acceptor = tls.map(|(config, cert)| {
            certs.push(cert.clone());
            tasks.spawn(watch_certificate(cert, shutdown.clone()));
            tokio_rustls::TlsAcceptor::from(config)
        });
        tasks.spawn(accept_loop(
            listener,
            current.clone(),
            builder.clone(),
            connections.clone(),
            acceptor,
            shutdown.clone(),
        ));
    }
    let admin = match bound.admin {
        Some(l) => {
            let addr = l.local_addr()?;
            tasks.spawn(admin_loop(l, current.clone(), mount, shutdown.clone()));
            Some(addr)
        }
        None => None,
    };
    tracing::info!(listeners = ?addrs, admin = ?admin, "jwtgate serving");
    Ok(Serving {
        addrs,
        admin,
        certs,
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

async fn admin_loop(
    listener: TcpListener,
    current: Current,
    mount: Option<Handler>,
    shutdown: watch::Receiver<bool>,
) {
    let handler = move |req: Request<Incoming>| {
        let gw = current.load_full();
        let mount = mount.clone();
        async move {
            match mount {
                Some(mount) if req.uri().path().starts_with("/v1/") => mount(req).await,
                _ => admin(&gw, req),
            }
        }
    };
    http1::serve(listener, handler, shutdown).await;
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<BoxBody> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `/metrics`, `/healthz` (the process answers), `/readyz` (every issuer has usable keys
/// and the revocation set is loaded).
fn admin(gw: &Gateway, req: Request<Incoming>) -> Response<BoxBody> {
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
