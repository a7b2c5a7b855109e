//! Every metric the gateway exports, named in one place. Labels are bounded: route and
//! upstream *names* from the configuration, outcomes and results from enums — never paths,
//! subjects or error text. Per-route series are resolved once at start-up so the request
//! path only increments.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::error::Outcome;

/// Requests by route and outcome.
pub const REQUESTS_TOTAL: &str = "jwtgate_requests_total";
/// Time from request head to response head, by route.
pub const REQUEST_DURATION_SECONDS: &str = "jwtgate_request_duration_seconds";
/// Time the upstream took to answer with its head, by upstream.
pub const UPSTREAM_DURATION_SECONDS: &str = "jwtgate_upstream_duration_seconds";
/// JWKS fetch attempts by issuer and result (`ok`, `error`, `no_usable_keys`).
pub const JWKS_REFRESH_TOTAL: &str = "jwtgate_jwks_refresh_total";
/// Usable keys held per issuer.
pub const JWKS_KEYS: &str = "jwtgate_jwks_keys";
/// Verified-token cache hits (signature check skipped).
pub const TOKEN_CACHE_HITS_TOTAL: &str = "jwtgate_token_cache_hits_total";
/// Verified-token cache misses (signature checked).
pub const TOKEN_CACHE_MISSES_TOTAL: &str = "jwtgate_token_cache_misses_total";

/// Revocation entries held, by kind.
pub const REVOCATIONS: &str = "jwtgate_revocations";
/// Seconds since the control plane was last heard from.
pub const REVOCATION_SYNC_LAG_SECONDS: &str = "jwtgate_revocation_sync_lag_seconds";

/// Open live connections (WebSockets and streaming responses).
pub const LIVE_CONNECTIONS: &str = "jwtgate_live_connections";
/// Live connections the gateway ended, by reason (`revoked`, `expired`).
pub const LIVE_CONNECTIONS_CLOSED_TOTAL: &str = "jwtgate_live_connections_closed_total";

/// Configuration reloads by result (`ok`, `error`).
pub const CONFIG_RELOADS_TOTAL: &str = "jwtgate_config_reloads_total";

/// Route label for requests that matched no route.
pub const NO_ROUTE: &str = "(none)";

const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Series of one route, resolved at start-up.
pub struct RouteSeries {
    pub outcomes: [IntCounter; Outcome::ALL.len()],
    pub duration: Histogram,
}

/// The gateway's metrics; cheap to clone, one registry per process.
#[derive(Clone)]
pub struct Metrics(Arc<MetricsInner>);

pub struct MetricsInner {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    jwks_refresh: IntCounterVec,
    jwks_keys: IntGaugeVec,
    pub token_cache_hits: IntCounter,
    pub token_cache_misses: IntCounter,
    pub revocations: IntGaugeVec,
    pub revocation_sync_lag: prometheus::Gauge,
    pub live_open: prometheus::IntGauge,
    pub live_closed: IntCounterVec,
    config_reloads: IntCounterVec,
}

impl std::ops::Deref for Metrics {
    type Target = MetricsInner;
    fn deref(&self) -> &MetricsInner {
        &self.0
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: T) -> T {
    // Names are constants of this module; a clash is a programming error caught by tests.
    if let Err(e) = registry.register(Box::new(m.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    m
}

fn help(name: &str) -> &'static str {
    match name {
        REQUESTS_TOTAL => "Requests by route and outcome.",
        REQUEST_DURATION_SECONDS => "Time from request head to response head.",
        UPSTREAM_DURATION_SECONDS => "Time the upstream took to send its response head.",
        JWKS_REFRESH_TOTAL => "JWKS fetch attempts by issuer and result.",
        JWKS_KEYS => "Usable signing keys held per issuer.",
        TOKEN_CACHE_HITS_TOTAL => "Verified-token cache hits.",
        TOKEN_CACHE_MISSES_TOTAL => "Verified-token cache misses.",
        REVOCATIONS => "Revocation entries held, by kind.",
        LIVE_CONNECTIONS => "Open live connections (WebSockets and streaming responses).",
        CONFIG_RELOADS_TOTAL => "Configuration reloads by result.",
        LIVE_CONNECTIONS_CLOSED_TOTAL => "Live connections the gateway ended, by reason.",
        REVOCATION_SYNC_LAG_SECONDS => "Seconds since the control plane was last heard from.",
        _ => "jwtgate metric",
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help(name)), labels).expect("valid metric"),
            )
        };
        let histogram_vec = |name: &str, label: &str| {
            register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(name, help(name)).buckets(DURATION_BUCKETS.to_vec()),
                    &[label],
                )
                .expect("valid metric"),
            )
        };
        let counter = |name: &str| {
            register(
                &registry,
                IntCounter::new(name, help(name)).expect("valid metric"),
            )
        };
        Metrics(Arc::new(MetricsInner {
            requests: counter_vec(REQUESTS_TOTAL, &["route", "outcome"]),
            request_duration: histogram_vec(REQUEST_DURATION_SECONDS, "route"),
            upstream_duration: histogram_vec(UPSTREAM_DURATION_SECONDS, "upstream"),
            jwks_refresh: counter_vec(JWKS_REFRESH_TOTAL, &["issuer", "result"]),
            jwks_keys: register(
                &registry,
                IntGaugeVec::new(Opts::new(JWKS_KEYS, help(JWKS_KEYS)), &["issuer"])
                    .expect("valid metric"),
            ),
            token_cache_hits: counter(TOKEN_CACHE_HITS_TOTAL),
            token_cache_misses: counter(TOKEN_CACHE_MISSES_TOTAL),
            revocations: register(
                &registry,
                IntGaugeVec::new(Opts::new(REVOCATIONS, help(REVOCATIONS)), &["kind"])
                    .expect("valid metric"),
            ),
            live_open: register(
                &registry,
                prometheus::IntGauge::new(LIVE_CONNECTIONS, help(LIVE_CONNECTIONS))
                    .expect("valid metric"),
            ),
            live_closed: counter_vec(LIVE_CONNECTIONS_CLOSED_TOTAL, &["reason"]),
            config_reloads: counter_vec(CONFIG_RELOADS_TOTAL, &["result"]),
            revocation_sync_lag: register(
                &registry,
                prometheus::Gauge::new(
                    REVOCATION_SYNC_LAG_SECONDS,
                    help(REVOCATION_SYNC_LAG_SECONDS),
                )
                .expect("valid metric"),
            ),
            registry,
        }))
    }

    /// Resolve a route's series once; every outcome starts at zero so dashboards see it.
    pub fn route(&self, route: &str) -> RouteSeries {
        RouteSeries {
            outcomes: Outcome::ALL.map(|o| self.requests.with_label_values(&[route, o.as_str()])),
            duration: self.request_duration.with_label_values(&[route]),
        }
    }

    pub fn upstream(&self, upstream: &str) -> Histogram {
        self.upstream_duration.with_label_values(&[upstream])
    }

    pub fn jwks_refresh(&self, issuer: &str, result: &str) {
        self.jwks_refresh.with_label_values(&[issuer, result]).inc();
    }

    pub fn config_reloads(&self, result: &str) {
        self.config_reloads.with_label_values(&[result]).inc();
    }

    pub fn jwks_keys(&self, issuer: &str, n: usize) {
        self.jwks_keys.with_label_values(&[issuer]).set(n as i64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
