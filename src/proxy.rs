//! `handle()`: the request path as one readable function, each numbered step of
//! DESIGN §3 a call into its own module.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use http::StatusCode;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::config::Config;
use crate::config::TokenSource;
use crate::control::ControlPlane;
use crate::error::{Outcome, Reject};
use crate::headers::{self, Forwarding};
use crate::live::{self, LiveBody, LiveRegistry};
use crate::metrics::{Metrics, RouteSeries, NO_ROUTE};
use crate::revocation::set::RevocationSet;
use crate::revocation::set::TokenKeys;
use crate::revocation::sync::SyncState;
use crate::route::{self, Router};
use crate::token;
use crate::upstream::{RequestBody, Upstream};
use crate::verify::{self, keys::Fetcher, policy, Verifier};

/// A response: the upstream's streamed body, or a small one of the gateway's own.
pub type Body = Either<LiveBody, Full<Bytes>>;

/// The gateway's view of revocations (shared by every configuration generation).
#[derive(Clone)]
pub struct Revocations {
    pub set: Arc<RevocationSet>,
    pub state: Arc<SyncState>,
    pub max_staleness: std::time::Duration,
    pub deny_when_stale: bool,
    /// Single-node mode: the control API served on the admin listener.
    pub control: Option<Arc<ControlPlane>>,
}

impl Revocations {
    fn stale(&self) -> bool {
        self.state.lag() > self.max_staleness
    }
}

/// Everything the request path needs, compiled from one configuration.
pub struct Gateway {
    pub revocations: Option<Revocations>,
    /// WebSockets and streams open right now, by token.
    pub live: Arc<LiveRegistry>,
    pub config: Config,
    router: Router,
    pub verifier: Verifier,
    upstreams: Vec<Upstream>,
    route_series: Vec<RouteSeries>,
    no_route: RouteSeries,
    identity_names: Vec<HeaderName>,
    pub metrics: Metrics,
}

impl Gateway {
    /// The next configuration generation: shares revocations, live connections and metrics
    /// with this one, and keeps the key sets of unchanged issuers.
    pub fn next(&self, config: Config) -> anyhow::Result<Gateway> {
        Gateway::build(
            config,
            self.metrics.clone(),
            self.revocations.clone(),
            self.live.clone(),
            &self.verifier.issuers,
        )
    }

    /// Ready to serve: every issuer has keys and the revocation set is loaded or synced.
    pub fn ready(&self) -> bool {
        self.verifier.ready() && self.revocations.as_ref().is_none_or(|r| r.state.is_ready())
    }

    /// Refresh the gauges that are read off state rather than counted.
    pub fn update_gauges(&self) {
        if let Some(r) = &self.revocations {
            for kind in crate::revocation::Kind::ALL {
                self.metrics
                    .revocations
                    .with_label_values(&[kind.as_str()])
                    .set(r.set.count(kind) as i64);
            }
            self.metrics
                .revocation_sync_lag
                .set(r.state.lag().as_secs_f64());
        }
    }

    pub fn new(
        config: Config,
        metrics: Metrics,
        revocations: Option<Revocations>,
        live: Arc<LiveRegistry>,
    ) -> anyhow::Result<Gateway> {
        Gateway::build(config, metrics, revocations, live, &[])
    }

    /// Compile `config`, keeping the key sets in `previous` whose issuer is unchanged.
    fn build(
        config: Config,
        metrics: Metrics,
        revocations: Option<Revocations>,
        live: Arc<LiveRegistry>,
        previous: &[Arc<crate::verify::keys::IssuerKeys>],
    ) -> anyhow::Result<Gateway> {
        let router = Router::new(&config.routes);
        let verifier = Verifier::reusing(
            &config.issuers,
            &config.token_cache,
            &config.identity_headers,
            revocations.as_ref().map(|r| r.set.clone()),
            Fetcher::new(),
            metrics.clone(),
            previous,
        );
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, metrics.upstream(&u.name)))
            .collect::<anyhow::Result<_>>()?;
        let route_series = config
            .routes
            .iter()
            .map(|r| metrics.route(&r.name))
            .collect();
        let identity_names = config
            .identity_headers
            .iter()
            .map(|h| h.name.clone())
            .collect();
        Ok(Gateway {
            live,
            revocations,
            router,
            verifier,
            upstreams,
            route_series,
            no_route: metrics.route(NO_ROUTE),
            identity_names,
            metrics,
            config,
        })
    }
}

/// What the access log and metrics need to know about a finished request.
struct Trace {
    route: Option<usize>,
    request_id: Option<http::HeaderValue>,
}

/// The client end of a connection, computed once per connection.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub forwarded_for: HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
}

impl Peer {
    pub fn new(addr: SocketAddr, proto: &'static str) -> Peer {
        Peer {
            addr,
            forwarded_for: headers::forwarded_for(addr.ip()),
            proto,
        }
    }
}

pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>, peer: Peer) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let mut trace = Trace {
        route: None,
        request_id: None,
    };
    let result = process(&gw, req, &peer, &mut trace).await;
    let (resp, outcome) = match result {
        Ok(resp) => (resp, Outcome::Allowed),
        Err(reject) => (
            reject.respond(&gw.config.realm).map(Either::Right),
            reject.outcome(),
        ),
    };

    // 10. Observe.
    let series = trace.route.map_or(&gw.no_route, |i| &gw.route_series[i]);
    series.outcomes[outcome.index()].inc();
    let elapsed = start.elapsed();
    series.duration.observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "jwtgate::access",
        client = %peer.addr.ip(),
        method = %method,
        route = trace.route.map_or(NO_ROUTE, |i| gw.config.routes[i].name.as_str()),
        status = resp.status().as_u16(),
        outcome = outcome.as_str(),
        duration_us = elapsed.as_micros() as u64,
        request_id = trace.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
    );
    resp
}

async fn process(
    gw: &Gateway,
    req: Request<Incoming>,
    peer: &Peer,
    trace: &mut Trace,
) -> Result<Response<Body>, Reject> {
    let (mut parts, body) = req.into_parts();
    // Read before the hop-by-hop headers go: a WebSocket handshake keeps its upgrade.
    let websocket = is_websocket_upgrade(&parts);

    // 2. Normalize the target once: what is matched is what is forwarded.
    let host = request_host(&parts)?;
    let path = route::normalize_path(parts.uri.path().as_bytes()).map_err(Reject::BadPath)?;
    let query = parts.uri.query();

    // 3. Route.
    let idx = gw
        .router
        .find(
            host.as_ref()
                .and_then(|h| h.to_str().ok())
                .map(route::host_without_port),
            &path,
            &parts.method,
        )
        .ok_or(Reject::NoRoute)?;
    trace.route = Some(idx);
    let route = &gw.config.routes[idx];

    // 4.–7. Token, verification, authorization.
    let mut new_query = None;
    let mut subprotocol_marker = None;
    let verified = match &route.auth {
        None => None,
        Some(policy) => {
            let token = token::extract(&policy.sources, &parts.headers, query)?
                .ok_or(Reject::MissingToken)?;
            let verified = gw
                .verifier
                .verify(&token.value, &policy.issuers, verify::now_unix())
                .await?;
            // 6. Revocation: checked on every request, cached verification or not.
            if let Some(rev) = &gw.revocations {
                if gw.verifier.is_revoked(&verified) {
                    return Err(Reject::Revoked);
                }
                if rev.deny_when_stale && rev.stale() {
                    return Err(Reject::RevocationsStale);
                }
            }
            policy::authorize(policy, &verified)?;
            let source = &policy.sources[token.source];
            if let TokenSource::WebSocketProtocol(marker) = source {
                subprotocol_marker = Some(marker.as_str());
            }
            if !policy.forward_token {
                new_query = token::remove(source, &mut parts.headers, query);
            }
            Some(verified)
        }
    };

    // 8. Mutate: the upstream sees the normalized path and the gateway's identity headers.
    let query = match &new_query {
        Some(q) => q.as_deref(),
        None => query,
    };
    let upstream = &gw.upstreams[route.upstream];
    let uri = upstream.uri(&path, query)?;
    let request_id = headers::prepare_request(
        &mut parts.headers,
        &Forwarding {
            identity_names: &gw.identity_names,
            identity: verified.as_ref().map_or(&[][..], |v| &v.identity),
            forwarded_for: &peer.forwarded_for,
            proto: peer.proto,
            host,
        },
    );
    parts.uri = uri;
    // The version spoken is the upstream's, whatever the client spoke.
    parts.version = upstream.version;
    trace.request_id = Some(request_id);
    let client_upgrade = if websocket {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };

    // 9. Forward.
    if let Some(max) = route.max_body_bytes {
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(Reject::BodyTooLarge);
        }
    }
    let body = RequestBody::new(body, route.max_body_bytes);
    let mut resp = upstream.forward(Request::from_parts(parts, body)).await?;
    headers::strip_hop_by_hop(resp.headers_mut());
    let now = verify::now_unix();
    let registration = |close_on_expiry: bool| match (&route.auth, &verified) {
        (Some(policy), Some(v)) => gw.live.register(
            v.revocation_keys,
            (policy.close_on_expiry && close_on_expiry).then(|| v.expires_in(now)),
        ),
        _ => gw.live.register(TokenKeys::default(), None),
    };

    // A WebSocket the upstream accepted: answer 101 and relay the two upgraded streams.
    if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, resp.status())
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (mut head, _) = resp.into_parts();
        head.headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        head.headers
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        // A browser that offered only `<marker>, <token>` must hear one of its offers back.
        if let Some(marker) = subprotocol_marker {
            if !head.headers.contains_key(SEC_WEBSOCKET_PROTOCOL) {
                if let Ok(v) = HeaderValue::from_str(marker) {
                    head.headers.insert(SEC_WEBSOCKET_PROTOCOL, v);
                }
            }
        }
        tokio::spawn(live::tunnel(
            client_upgrade,
            upstream_upgrade,
            registration(true),
        ));
        return Ok(Response::from_parts(
            head,
            Either::Right(Full::new(Bytes::new())),
        ));
    }

    // A streaming response (no length: SSE, chunked long poll) of an authenticated route
    // ends when its token is revoked or expires. Sized responses carry no registration.
    let streaming = route.auth.is_some()
        && !resp.headers().contains_key(CONTENT_LENGTH)
        && !matches!(
            resp.status(),
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::SWITCHING_PROTOCOLS
        );
    Ok(if streaming {
        let reg = registration(true);
        resp.map(|b| Either::Left(LiveBody::watched(b, reg)))
    } else {
        resp.map(|b| Either::Left(LiveBody::plain(b)))
    })
}

/// An HTTP/1.1 WebSocket handshake: `GET` with `Connection: upgrade` and `Upgrade: websocket`.
/// (`Upgrade: h2c` and anything else is dropped with the hop-by-hop headers.)
fn is_websocket_upgrade(parts: &http::request::Parts) -> bool {
    let has_token = |name: http::header::HeaderName, token: &str| {
        parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    parts.method == http::Method::GET
        && parts.version == http::Version::HTTP_11
        && has_token(CONNECTION, "upgrade")
        && has_token(UPGRADE, "websocket")
}

/// The host the client addressed. An absolute-form target must agree with `Host`;
/// several `Host` headers are refused.
fn request_host(parts: &http::request::Parts) -> Result<Option<HeaderValue>, Reject> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (Some(h), None) => Some(h),
        (None, _) => None,
        (Some(_), Some(_)) => return Err(Reject::BadHost),
    };
    match (parts.uri.authority(), header) {
        (Some(a), Some(h)) if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
            Err(Reject::BadHost)
        }
        (_, Some(h)) => Ok(Some(h.clone())),
        (Some(a), None) => HeaderValue::from_str(a.as_str())
            .map(Some)
            .map_err(|_| Reject::BadHost),
        (None, None) => Ok(None),
    }
}
