//! `handle()`: the request path as one readable function, each numbered step of
//! DESIGN §3 a call into its own module.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::config::Config;
use crate::control::ControlPlane;
use crate::error::{Outcome, Reject};
use crate::headers::{self, Forwarding};
use crate::metrics::{Metrics, RouteSeries, NO_ROUTE};
use crate::revocation::set::RevocationSet;
use crate::revocation::sync::SyncState;
use crate::route::{self, Router};
use crate::token;
use crate::upstream::Upstream;
use crate::verify::{self, keys::Fetcher, policy, Verifier};

/// A response: the upstream's streamed body, or a small one of the gateway's own.
pub type Body = Either<Incoming, Full<Bytes>>;

/// The gateway's view of revocations.
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

    pub fn new(config: Config, metrics: Metrics, revocations: Option<Revocations>) -> Gateway {
        let router = Router::new(&config.routes);
        let verifier = Verifier::new(
            &config.issuers,
            &config.token_cache,
            &config.identity_headers,
            revocations.as_ref().map(|r| r.set.clone()),
            Fetcher::new(),
            metrics.clone(),
        );
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, metrics.upstream(&u.name)))
            .collect();
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
        Gateway {
            revocations,
            router,
            verifier,
            upstreams,
            route_series,
            no_route: metrics.route(NO_ROUTE),
            identity_names,
            metrics,
            config,
        }
    }
}

/// What the access log and metrics need to know about a finished request.
struct Trace {
    route: Option<usize>,
    request_id: Option<http::HeaderValue>,
}

pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    peer: SocketAddr,
    proto: &'static str,
) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let mut trace = Trace {
        route: None,
        request_id: None,
    };
    let result = process(&gw, req, peer, proto, &mut trace).await;
    let (resp, outcome) = match result {
        Ok(resp) => (resp.map(Either::Left), Outcome::Allowed),
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
        client = %peer.ip(),
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
    peer: SocketAddr,
    proto: &'static str,
    trace: &mut Trace,
) -> Result<Response<Incoming>, Reject> {
    let (mut parts, body) = req.into_parts();

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
            if !policy.forward_token {
                let source = &policy.sources[token.source];
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
            client_ip: peer.ip(),
            proto,
            host,
        },
    );
    parts.uri = uri;
    trace.request_id = Some(request_id);

    // 9. Forward.
    let mut resp = upstream.forward(Request::from_parts(parts, body)).await?;
    headers::strip_hop_by_hop(resp.headers_mut());
    Ok(resp)
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
