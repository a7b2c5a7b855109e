//! Step 1 of the request path: listeners (plain and TLS), connection limits ([`conn`]),
//! HTTP/1.1 and HTTP/2 serving, and the admin listener. Everything it starts is spawned
//! into the caller's task set and stops with the caller's shutdown signal.

mod conn;
mod workers;

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
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, ForwardAuth};
use crate::http1::{self, BoxBody, Handler};
use crate::live::Hold;
use crate::proxy::{self, Gateway};
use crate::tls::ReloadingCert;
use conn::{ConnState, Conns, Deadlines, Prefixed, RequestGuard, Tracked};

/// The configuration generation requests are served by; swapped whole on reload.
pub type Current = Arc<arc_swap::ArcSwap<Gateway>>;

type TlsSettings = (Arc<rustls::ServerConfig>, Arc<ReloadingCert>);

/// How a listener serves: TLS or not, proxying or forward-auth decisions.
#[derive(Clone)]
pub(super) struct Listening {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub forward_auth: Option<Arc<ForwardAuth>>,
}

/// Listeners bound, certificates read: nothing can fail for want of a port any more.
pub struct Bound {
    /// Each with its TLS settings and whether it answers forward-auth decisions.
    listeners: Vec<(TcpListener, Option<TlsSettings>, Option<ForwardAuth>)>,
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
        listeners.push((bound, tls, l.forward_auth.clone()));
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
    let conns = Conns::new(
        limits.max_connections,
        limits.max_connections_per_client,
        current.load().metrics.open_connections.clone(),
    );
    // Limits take effect at start (a reload that changes them warns that a restart is
    // needed): resolved once here, not per connection.
    let deadlines = Deadlines {
        header: limits.header_timeout,
        idle: limits.idle_timeout,
        body: limits.body_timeout,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(Some(20))
        // Pings find peers that vanished; the idle timeout closes those that just sit.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));

    let mut addrs = Vec::new();
    let mut certs = Vec::new();
    let mut listeners = Vec::new();
    for (listener, tls, forward_auth) in bound.listeners {
        addrs.push(listener.local_addr()?);
        let acceptor = tls.map(|(config, cert)| {
            certs.push(cert.clone());
            tasks.spawn(watch_certificate(cert, shutdown.clone()));
            tokio_rustls::TlsAcceptor::from(config)
        });
        listeners.push((
            listener.into_std()?,
            Listening {
                tls: acceptor,
                forward_auth: forward_auth.map(Arc::new),
            },
        ));
    }
    let shared = workers::Shared {
        current: current.clone(),
        builder,
        conns,
        deadlines,
    };
    workers::spawn(limits.workers, &listeners, &shared, shutdown, tasks)?;
    let admin = match bound.admin {
        Some(l) => {
            let addr = l.local_addr()?;
            tasks.spawn(admin_loop(l, current.clone(), mount, shutdown.clone()));
            Some(addr)
        }
        None => None,
    };
    tracing::info!(
        listeners = %addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        admin = admin.map(|a| a.to_string()),
        "jwtgate serving"
    );
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
    peer: proxy::Peer,
    state: Arc<ConnState>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Tracked<proxy::Body>>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static {
    service_fn(move |mut req: Request<Incoming>| {
        // Each request runs on the generation current when it arrived.
        let gw = current.load_full();
        let peer = peer.clone();
        let mut guard = RequestGuard::new(state.clone());
        // A WebSocket keeps its connection's slot for as long as the tunnel lives. Only a
        // request asking to upgrade can become one (this spares every other request an
        // extensions allocation).
        if req.headers().contains_key(http::header::UPGRADE) {
            req.extensions_mut().insert(Hold(state.clone()));
        }
        async move {
            let resp = proxy::handle(gw, req, peer).await;
            guard.responded(matches!(resp.body(), http_body_util::Either::Left(_)));
            Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, guard)))
        }
    })
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    current: Current,
    builder: auto::Builder<TokioExecutor>,
    conns: Arc<Conns>,
    (listening, deadlines): (Listening, Deadlines),
    mut shutdown: watch::Receiver<bool>,
) {
    let mut open = JoinSet::new();
    loop {
        while open.try_join_next().is_some() {}
        // One client at a time is accepted and then waits for a slot; the rest wait in the
        // kernel's backlog.
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
        // A client over its own cap is turned away before anyone else is evicted for it.
        if !conns.client_has_room(peer.ip()) {
            tracing::debug!(%peer, "connection refused: the client holds max_connections_per_client");
            continue;
        }
        let permit = tokio::select! {
            p = conns.slot() => match p { Some(p) => p, None => break },
            _ = shutdown.changed() => break,
        };
        let Some(state) = conns.register(peer.ip(), permit) else {
            tracing::debug!(%peer, "connection refused: the client holds max_connections_per_client");
            continue;
        };
        let _ = stream.set_nodelay(true);
        open.spawn(serve_connection(
            stream,
            peer,
            (listening.clone(), deadlines),
            builder.clone(),
            current.clone(),
            state,
            shutdown.clone(),
        ));
    }
    drop(listener);
    // Each connection saw the shutdown and is closing gracefully; the caller bounds the wait.
    while open.join_next().await.is_some() {}
}

/// One connection: TLS (within `header_timeout`), the first byte (within `header_timeout`),
/// then HTTP until [`ConnState::drive`] ends it.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    (listening, deadlines): (Listening, Deadlines),
    builder: auto::Builder<TokioExecutor>,
    current: Current,
    state: Arc<ConnState>,
    shutdown: watch::Receiver<bool>,
) {
    let deadline = deadlines.header;
    let forward_auth = listening.forward_auth;
    match listening.tls {
        None => {
            if let Some(io) = Prefixed::first_bytes(stream, deadline).await {
                serve_io(
                    io,
                    proxy::Peer::new(peer, "http", false, forward_auth),
                    &builder,
                    current,
                    (state, deadlines),
                    shutdown,
                )
                .await;
            }
        }
        Some(acceptor) => {
            let tls = match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let client_cert = tls.get_ref().1.peer_certificates().is_some();
            if let Some(io) = Prefixed::first_bytes(tls, deadline).await {
                serve_io(
                    io,
                    proxy::Peer::new(peer, "https", client_cert, forward_auth),
                    &builder,
                    current,
                    (state, deadlines),
                    shutdown,
                )
                .await;
            }
        }
    }
}

async fn serve_io<I>(
    io: I,
    peer: proxy::Peer,
    builder: &auto::Builder<TokioExecutor>,
    current: Current,
    (state, deadlines): (Arc<ConnState>, Deadlines),
    shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service(current, peer, state.clone()));
    tokio::pin!(conn);
    let result = state
        .drive(
            conn.as_mut(),
            |c| c.graceful_shutdown(),
            deadlines,
            shutdown,
        )
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
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
