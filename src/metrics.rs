//! Every metric the gateway exports, named in one place. Labels are bounded: route and
//! upstream *names* from the configuration, outcomes and results from enums — never paths,
//! subjects or error text. Per-route series are resolved once at start-up so the request
//! path only increments.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::reason::Reason;

/// Requests by route, outcome and reason.
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

/// The build: `version` label, value 1.
pub const BUILD_INFO: &str = "jwtgate_build_info";
/// Client connections open now.
pub const OPEN_CONNECTIONS: &str = "jwtgate_open_connections";
/// Requests being forwarded upstream now (bounded by `limits.max_in_flight`).
pub const UPSTREAM_IN_FLIGHT: &str = "jwtgate_upstream_requests_in_flight";
/// Upstream responses by upstream and status class (`2xx`, …).
pub const UPSTREAM_RESPONSES_TOTAL: &str = "jwtgate_upstream_responses_total";
/// When each issuer's keys were last fetched successfully (Unix seconds; 0: never).
pub const JWKS_LAST_REFRESH: &str = "jwtgate_jwks_last_refresh_timestamp_seconds";
/// When the control plane was last heard from (Unix seconds; 0: not yet).
pub const REVOCATION_LAST_SYNC: &str = "jwtgate_revocation_last_sync_timestamp_seconds";

/// Upstream status classes, in the order of [`UpstreamResponses`].
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Configuration reloads by result (`ok`, `error`).
pub const CONFIG_RELOADS_TOTAL: &str = "jwtgate_config_reloads_total";

/// Control plane: revocations durably written, by kind.
pub const CONTROL_REVOCATIONS_WRITTEN_TOTAL: &str = "jwtgate_control_revocations_written_total";
pub const SSF_EVENTS_TOTAL: &str = "jwtgate_ssf_events_total";
/// Control plane: time a store write took, by operation (`insert`, `batch`, `delete`).
pub const CONTROL_STORE_WRITE_SECONDS: &str = "jwtgate_control_store_write_seconds";
/// Control plane: the store's head cursor (the newest write), read at scrape time.
pub const CONTROL_HEAD_CURSOR: &str = "jwtgate_control_head_cursor";
/// Control plane: open revocation streams (syncing gateways).
pub const CONTROL_STREAM_CLIENTS: &str = "jwtgate_control_stream_clients";

/// Route label for requests that matched no route.
pub const NO_ROUTE: &str = "(none)";

const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Series of one route, resolved at start-up.
pub struct RouteSeries {
    /// By [`Reason::index`]; `None` where the reason cannot arise for this series.
    reasons: Vec<Option<IntCounter>>,
    route: String,
    requests: IntCounterVec,
    pub duration: Histogram,
}

impl RouteSeries {
    /// Count one request.
    pub fn count(&self, reason: Reason) {
        match &self.reasons[reason.index()] {
            Some(c) => c.inc(),
            // Not expected (see [`Reason::possible`]); counted rather than lost.
            None => self
                .requests
                .with_label_values(&[&self.route, reason.outcome().as_str(), reason.as_str()])
                .inc(),
        }
    }
}

/// An upstream's response counters by status class.
pub struct UpstreamResponses([IntCounter; 5]);

impl UpstreamResponses {
    pub fn count(&self, status: http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.0[class].inc();
    }
}

/// The components running in a process; each exports its metrics through the one registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The data plane: requests, upstreams, revocation set, live connections, reloads.
    Gateway,
    /// The control plane: writes and revocation streams.
    Control,
}

/// The process's metrics: one registry, cheap to clone, passed down to every component.
#[derive(Clone)]
pub struct Metrics(Arc<MetricsInner>);

pub struct MetricsInner {
    registry: Registry,
    // Both planes verify tokens against key sets.
    jwks_refresh: IntCounterVec,
    jwks_keys: IntGaugeVec,
    pub token_cache_hits: IntCounter,
    pub token_cache_misses: IntCounter,
    // The gateway.
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    pub revocations: IntGaugeVec,
    pub revocation_sync_lag: prometheus::Gauge,
    pub live_open: IntGauge,
    pub live_closed: IntCounterVec,
    config_reloads: IntCounterVec,
    pub open_connections: IntGauge,
    pub upstream_in_flight: IntGauge,
    upstream_responses: IntCounterVec,
    jwks_last_refresh: prometheus::GaugeVec,
    pub revocation_last_sync: prometheus::Gauge,
    // The control plane.
    pub control_written: IntCounterVec,
    /// Security Event Tokens by transmitter, event and what came of them.
    pub ssf_events: IntCounterVec,
    pub control_stream_clients: IntGauge,
    control_store_write: HistogramVec,
    pub control_head_cursor: IntGauge,
}

impl std::ops::Deref for Metrics {
    type Target = MetricsInner;
    fn deref(&self) -> &MetricsInner {
        &self.0
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: &T) {
    // Names are constants of this module; a clash is a programming error caught by tests.
    if let Err(e) = registry.register(Box::new(m.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
}

fn help(name: &str) -> &'static str {
    match name {
        REQUESTS_TOTAL => "Requests by route, outcome and reason (why allowed or refused).",
        CONTROL_STORE_WRITE_SECONDS => "Time a durable store write took, by operation.",
        CONTROL_HEAD_CURSOR => "The revocation store's head cursor.",
        BUILD_INFO => "The running build (value 1).",
        OPEN_CONNECTIONS => "Client connections open now.",
        UPSTREAM_IN_FLIGHT => "Requests being forwarded upstream now.",
        UPSTREAM_RESPONSES_TOTAL => "Upstream responses by upstream and status class.",
        JWKS_LAST_REFRESH => "Unix time of the last successful key fetch, per issuer.",
        REVOCATION_LAST_SYNC => "Unix time the control plane was last heard from.",
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
        CONTROL_REVOCATIONS_WRITTEN_TOTAL => "Revocations durably written, by kind.",
        SSF_EVENTS_TOTAL => "Shared Signals security events received, by transmitter, event type and result (revoked, ignored, replayed, refused).",
        CONTROL_STREAM_CLIENTS => "Open revocation streams.",
        _ => "jwtgate metric",
    }
}

fn counter_vec(name: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help(name)), labels).expect("valid metric")
}

fn gauge_vec(name: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help(name)), labels).expect("valid metric")
}

fn histogram_vec(name: &str, label: &str) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help(name)).buckets(DURATION_BUCKETS.to_vec()),
        &[label],
    )
    .expect("valid metric")
}

impl Metrics {
    /// One registry exporting the metrics of `components` (and the key-set and
    /// verification metrics both planes share).
    pub fn new(components: &[Component]) -> Metrics {
        let m = MetricsInner {
            registry: Registry::new(),
            jwks_refresh: counter_vec(JWKS_REFRESH_TOTAL, &["issuer", "result"]),
            jwks_keys: gauge_vec(JWKS_KEYS, &["issuer"]),
            token_cache_hits: IntCounter::new(TOKEN_CACHE_HITS_TOTAL, help(TOKEN_CACHE_HITS_TOTAL))
                .expect("valid metric"),
            token_cache_misses: IntCounter::new(
                TOKEN_CACHE_MISSES_TOTAL,
                help(TOKEN_CACHE_MISSES_TOTAL),
            )
            .expect("valid metric"),
            requests: counter_vec(REQUESTS_TOTAL, &["route", "outcome", "reason"]),
            request_duration: histogram_vec(REQUEST_DURATION_SECONDS, "route"),
            upstream_duration: histogram_vec(UPSTREAM_DURATION_SECONDS, "upstream"),
            revocations: gauge_vec(REVOCATIONS, &["kind"]),
            revocation_sync_lag: prometheus::Gauge::new(
                REVOCATION_SYNC_LAG_SECONDS,
                help(REVOCATION_SYNC_LAG_SECONDS),
            )
            .expect("valid metric"),
            live_open: IntGauge::new(LIVE_CONNECTIONS, help(LIVE_CONNECTIONS))
                .expect("valid metric"),
            live_closed: counter_vec(LIVE_CONNECTIONS_CLOSED_TOTAL, &["reason"]),
            config_reloads: counter_vec(CONFIG_RELOADS_TOTAL, &["result"]),
            open_connections: IntGauge::new(OPEN_CONNECTIONS, help(OPEN_CONNECTIONS))
                .expect("valid metric"),
            upstream_in_flight: IntGauge::new(UPSTREAM_IN_FLIGHT, help(UPSTREAM_IN_FLIGHT))
                .expect("valid metric"),
            upstream_responses: counter_vec(UPSTREAM_RESPONSES_TOTAL, &["upstream", "class"]),
            jwks_last_refresh: prometheus::GaugeVec::new(
                Opts::new(JWKS_LAST_REFRESH, help(JWKS_LAST_REFRESH)),
                &["issuer"],
            )
            .expect("valid metric"),
            revocation_last_sync: prometheus::Gauge::new(
                REVOCATION_LAST_SYNC,
                help(REVOCATION_LAST_SYNC),
            )
            .expect("valid metric"),
            control_written: counter_vec(CONTROL_REVOCATIONS_WRITTEN_TOTAL, &["kind"]),
            ssf_events: counter_vec(SSF_EVENTS_TOTAL, &["transmitter", "event", "result"]),
            control_stream_clients: IntGauge::new(
                CONTROL_STREAM_CLIENTS,
                help(CONTROL_STREAM_CLIENTS),
            )
            .expect("valid metric"),
            control_store_write: HistogramVec::new(
                HistogramOpts::new(
                    CONTROL_STORE_WRITE_SECONDS,
                    help(CONTROL_STORE_WRITE_SECONDS),
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["op"],
            )
            .expect("valid metric"),
            control_head_cursor: IntGauge::new(CONTROL_HEAD_CURSOR, help(CONTROL_HEAD_CURSOR))
                .expect("valid metric"),
        };
        let r = &m.registry;
        let build = gauge_vec(BUILD_INFO, &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        register(r, &build);
        // process_cpu_seconds_total, process_resident_memory_bytes, open fds, start time.
        if let Err(e) = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::warn!(error = %e, "process metrics unavailable");
        }
        register(r, &m.jwks_refresh);
        register(r, &m.jwks_keys);
        register(r, &m.jwks_last_refresh);
        register(r, &m.token_cache_hits);
        register(r, &m.token_cache_misses);
        if components.contains(&Component::Gateway) {
            register(r, &m.requests);
            register(r, &m.request_duration);
            register(r, &m.upstream_duration);
            register(r, &m.revocations);
            register(r, &m.revocation_sync_lag);
            register(r, &m.live_open);
            register(r, &m.live_closed);
            register(r, &m.config_reloads);
            register(r, &m.open_connections);
            register(r, &m.upstream_in_flight);
            register(r, &m.upstream_responses);
            register(r, &m.revocation_last_sync);
            // Present at zero from the start.
            for result in ["ok", "error"] {
                m.config_reloads.with_label_values(&[result]);
            }
            for reason in ["revoked", "expired", "shutdown", "stale"] {
                m.live_closed.with_label_values(&[reason]);
            }
        }
        if components.contains(&Component::Control) {
            register(r, &m.control_written);
            register(r, &m.ssf_events);
            register(r, &m.control_stream_clients);
            register(r, &m.control_store_write);
            register(r, &m.control_head_cursor);
            for op in ["insert", "batch", "delete"] {
                m.control_store_write.with_label_values(&[op]);
            }
        }
        Metrics(Arc::new(m))
    }

    /// Resolve a route's series once (`routed`: a configured route, not `(none)`); every
    /// reason that can arise there starts at zero so dashboards see it, and none that
    /// cannot is created.
    pub fn route(&self, route: &str, routed: bool) -> RouteSeries {
        RouteSeries {
            reasons: Reason::ALL
                .iter()
                .map(|r| {
                    r.possible(routed).then(|| {
                        self.requests
                            .with_label_values(&[route, r.outcome().as_str(), r.as_str()])
                    })
                })
                .collect(),
            route: route.to_owned(),
            requests: self.requests.clone(),
            duration: self.request_duration.with_label_values(&[route]),
        }
    }

    /// An upstream's response counters, one per status class, present at zero.
    pub fn upstream_responses(&self, upstream: &str) -> UpstreamResponses {
        UpstreamResponses(
            STATUS_CLASSES.map(|c| self.upstream_responses.with_label_values(&[upstream, c])),
        )
    }

    /// An issuer's key-fetch series, present at zero from the start.
    pub fn issuer(&self, issuer: &str) {
        for result in ["ok", "error", "no_usable_keys"] {
            self.jwks_refresh.with_label_values(&[issuer, result]);
        }
        self.jwks_last_refresh.with_label_values(&[issuer]);
    }

    pub fn upstream(&self, upstream: &str) -> Histogram {
        self.upstream_duration.with_label_values(&[upstream])
    }

    pub fn jwks_refresh(&self, issuer: &str, result: &str) {
        if result == "ok" {
            self.jwks_last_refresh
                .with_label_values(&[issuer])
                .set(crate::clock::Clock::system().unix_ms() as f64 / 1000.0);
        }
        self.jwks_refresh.with_label_values(&[issuer, result]).inc();
    }

    pub fn ssf_event(&self, transmitter: &str, event: &str, result: &str) {
        self.ssf_events
            .with_label_values(&[transmitter, event, result])
            .inc();
    }

    pub fn count_written(&self, kind: &str) {
        self.control_written.with_label_values(&[kind]).inc();
    }

    pub fn config_reloads(&self, result: &str) {
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// A write reached `cursor`: the head is at least there (scrapes of the control API
    /// also read it from the store, which counts other replicas' writes).
    pub fn head_at_least(&self, cursor: u64) {
        let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
        if cursor > self.control_head_cursor.get() {
            self.control_head_cursor.set(cursor);
        }
    }

    /// A durable store write of the control plane took `took`.
    pub fn store_write(&self, op: &str, took: std::time::Duration) {
        self.control_store_write
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
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
    /// The gateway's metrics.
    fn default() -> Self {
        Metrics::new(&[Component::Gateway])
    }
}
