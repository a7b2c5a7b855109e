//! The request path. [`handle`] observes (step 10) around [`process`], which reads as its
//! phases: admit (steps 2–7, [`admit`]) → rewrite the request (8) → forward (9) → the
//! downstream response ([`forward`]).

mod admit;
mod authz;
mod forward;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::clock::Clock;
use crate::config::{Config, ForwardAuth};
use crate::error::Reject;
use crate::headers;
use crate::live::{LiveBody, LiveRegistry};
use crate::metrics::{Metrics, RouteSeries, NO_ROUTE};
use crate::reason::Reason;
use crate::revocation::Revocations;
use crate::route::Router;
use crate::upstream::Upstream;
use crate::verify::{self, keys::IssuerKeys, Verifier};

/// A response: the upstream's streamed body, or a small one of the gateway's own.
pub type Body = Either<LiveBody, Full<Bytes>>;

/// What every configuration generation shares: revocations, live connections, and the
/// metrics, clock and key fetcher of [`verify::Context`].
#[derive(Clone)]
pub struct Shared {
    pub revocations: Option<Revocations>,
    /// Slots for requests forwarded upstream at once (`limits.max_in_flight`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub live: Arc<LiveRegistry>,
    pub verify: verify::Context,
}

/// Everything the request path needs, compiled from one configuration.
pub struct Gateway {
    pub revocations: Option<Revocations>,
    /// WebSockets and streams open right now, by token.
    pub live: Arc<LiveRegistry>,
    in_flight: Arc<tokio::sync::Semaphore>,
    pub clock: Clock,
    pub config: Config,
    router: Router,
    pub verifier: Verifier,
    upstreams: Vec<Upstream>,
    route_series: Vec<RouteSeries>,
    no_route: RouteSeries,
    identity_names: Vec<HeaderName>,
    pub metrics: Metrics,
    shared: Shared,
}

impl Gateway {
    /// Compile `config`.
    pub fn new(config: Config, shared: Shared) -> anyhow::Result<Gateway> {
        Gateway::build(config, shared, &[])
    }

    /// The next configuration generation: shares revocations, live connections and metrics
    /// with this one, and keeps the key sets of unchanged issuers.
    pub fn next(&self, config: Config) -> anyhow::Result<Gateway> {
        Gateway::build(config, self.shared.clone(), &self.verifier.issuers)
    }

    /// Ready to serve: every issuer has keys and the revocation set is loaded or synced.
    pub fn ready(&self) -> bool {
        self.verifier.ready() && self.revocations.as_ref().is_none_or(|r| r.state.is_ready())
    }

    /// Step 6: the token against the revocation set (when there is one), now.
    pub fn check_revocation(&self, v: &verify::Verified) -> Result<(), Reject> {
        let Some(revocations) = &self.revocations else {
            return Ok(());
        };
        revocations.check(crate::revocation::Presented {
            keys: &v.revocation_keys,
            checked: &v.revocation_checked,
            exp: v.exp,
            iat: v.iat,
            claims: &v.claims,
        })
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
            if let Some(ms) = r.state.last_contact_unix_ms() {
                self.metrics.revocation_last_sync.set(ms as f64 / 1000.0);
            }
        }
        let idle = self.in_flight.available_permits();
        self.metrics
            .upstream_in_flight
            .set(self.config.limits.max_in_flight.saturating_sub(idle) as i64);
    }

    /// Compile `config`, keeping the key sets in `previous` whose issuer is unchanged.
    fn build(
        config: Config,
        shared: Shared,
        previous: &[Arc<IssuerKeys>],
    ) -> anyhow::Result<Gateway> {
        let metrics = shared.verify.metrics.clone();
        let router = Router::new(&config.routes);
        let verifier = Verifier::new(
            &config.issuers,
            &config.token_cache,
            &shared.verify,
            previous,
        )
        .with_identity_headers(&config.identity_headers)
        .strict_identity()
        .with_revocations(shared.revocations.as_ref().map(|r| r.set.clone()));
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                Upstream::new(
                    u,
                    metrics.upstream(&u.name),
                    metrics.upstream_responses(&u.name),
                    config.limits.workers,
                )
            })
            .collect::<anyhow::Result<_>>()?;
        let route_series = config
            .routes
            .iter()
            .map(|r| metrics.route(&r.name, true))
            .collect();
        // Every header the gateway sets with identity, on any route, is stripped from
        // client requests on every route.
        let mut identity_names: Vec<HeaderName> = config
            .identity_headers
            .iter()
            .map(|h| h.name.clone())
            .collect();
        for name in config
            .routes
            .iter()
            .filter_map(|r| r.auth.as_ref())
            .flat_map(|a| {
                a.identity_headers
                    .iter()
                    .map(|h| h.name.clone())
                    .chain(a.forward_payload.clone())
            })
        {
            if !identity_names.contains(&name) {
                identity_names.push(name);
            }
        }
        Ok(Gateway {
            live: shared.live.clone(),
            revocations: shared.revocations.clone(),
            in_flight: shared.in_flight.clone(),
            clock: shared.verify.clock.clone(),
            router,
            verifier,
            upstreams,
            route_series,
            no_route: metrics.route(NO_ROUTE, false),
            identity_names,
            metrics,
            config,
            shared,
        })
    }
}

/// What the access log and metrics need to know about a finished request.
pub struct Trace {
    route: Option<usize>,
    /// The client's own `X-Request-Id` when it is short and plain, else a new one; the
    /// upstream sees it and the client gets it back, whatever the answer.
    request_id: HeaderValue,
    /// A forward-auth decision: the method and path of the request it was about.
    described: Option<(http::Method, String)>,
}

/// The client end of a connection, computed once per connection.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub forwarded_for: HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// The client presented a certificate the listener verified (mTLS).
    pub client_cert: bool,
    /// The listener answers forward-auth decisions instead of proxying.
    pub forward_auth: Option<Arc<ForwardAuth>>,
}

impl Peer {
    pub fn new(
        addr: SocketAddr,
        proto: &'static str,
        client_cert: bool,
        forward_auth: Option<Arc<ForwardAuth>>,
    ) -> Peer {
        Peer {
            addr,
            forwarded_for: headers::forwarded_for(addr.ip()),
            proto,
            client_cert,
            forward_auth,
        }
    }
}

/// Serve one request (step 1, accepting, is [`crate::server`]'s) and observe it (step 10).
pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>, peer: Peer) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    // Only an access line that will be written pays for a copy of the path.
    let access = tracing::enabled!(target: "jwtgate::access", tracing::Level::INFO);
    let path = access.then(|| req.uri().path().to_owned());
    let mut trace = Trace {
        route: None,
        request_id: headers::request_id(req.headers()),
        described: None,
    };
    let result = if let Some(asked) = &peer.forward_auth {
        // Boxed: forward-auth listeners alone pay for their future's size.
        Box::pin(authz::decide(&gw, req, &peer, asked, &mut trace)).await
    } else {
        process(&gw, req, &peer, &mut trace).await
    };
    let (mut resp, reason) = match result {
        Ok(resp) => (resp, Reason::Allowed),
        Err(reject) => (
            reject.respond(&gw.config.realm).map(Either::Right),
            reject.reason(),
        ),
    };
    resp.headers_mut()
        .insert(headers::X_REQUEST_ID, trace.request_id.clone());

    // 10. Observe.
    let series = trace.route.map_or(&gw.no_route, |i| &gw.route_series[i]);
    series.count(reason);
    let elapsed = start.elapsed();
    series.duration.observe(elapsed.as_secs_f64());
    if access {
        access_line(
            &gw,
            &trace,
            &peer,
            &method,
            path.as_deref(),
            reason,
            &resp,
            elapsed,
        );
    }
    resp
}

/// The request's access line: built straight into the log buffer when the subscriber is
/// this crate's (`tracing`'s formatter would cost more than the rest of a cache hit), through
/// `tracing` otherwise. Same bytes either way.
#[allow(clippy::too_many_arguments)]
fn access_line(
    gw: &Gateway,
    trace: &Trace,
    peer: &Peer,
    method: &http::Method,
    path: Option<&str>,
    reason: Reason,
    resp: &Response<Body>,
    elapsed: std::time::Duration,
) {
    let route = trace.route.map(|i| &gw.config.routes[i]);
    let request_id = trace.request_id.to_str().unwrap_or("-");
    let method = trace
        .described
        .as_ref()
        .map_or(method.as_str(), |(m, _)| m.as_str());
    let path = trace.described.as_ref().map(|(_, p)| p.as_str()).or(path);
    let route_name = route.map_or(NO_ROUTE, |r| r.name.as_str());
    let upstream = route
        .filter(|_| peer.forward_auth.is_none())
        .map(|r| gw.upstreams[r.upstream].name.as_str());
    let bytes = http_body::Body::size_hint(resp.body()).exact();
    let duration_us = elapsed.as_micros() as u64;
    let Some(mut line) = crate::logging::EventLine::info("jwtgate::access") else {
        tracing::info!(
            target: "jwtgate::access",
            request_id,
            client = %peer.addr.ip(),
            method,
            path,
            route = route_name,
            upstream,
            status = resp.status().as_u16(),
            outcome = reason.outcome().as_str(),
            reason = reason.as_str(),
            bytes,
            duration_us,
        );
        return;
    };
    line.str("request_id", request_id)
        .ip("client", peer.addr.ip())
        .str("method", method)
        .opt_str("path", path)
        .str("route", route_name)
        .opt_str("upstream", upstream)
        .u64("status", u64::from(resp.status().as_u16()))
        .str("outcome", reason.outcome().as_str())
        .str("reason", reason.as_str())
        .opt_u64("bytes", bytes)
        .u64("duration_us", duration_us);
    line.finish();
}

/// The request path in its phases; a refusal at any step is a [`Reject`].
async fn process(
    gw: &Gateway,
    req: Request<Incoming>,
    peer: &Peer,
    trace: &mut Trace,
) -> Result<Response<Body>, Reject> {
    let (mut parts, body) = req.into_parts();
    // 2.–7. Admit: normalize, route, token, verify, revocation, authorize.
    let admitted = admit::admit(gw, &parts, peer, trace).await?;
    // 8. Mutate: the request the upstream sees.
    let client_upgrade = forward::rewrite(gw, &admitted, &mut parts, peer, trace)?;
    // 9. Forward.
    let resp = forward::send(gw, &admitted, parts, body).await?;
    // Downstream: a 101 tunnel, a registered stream, or the response as is.
    forward::downstream(gw, &admitted, client_upgrade, resp)
}
