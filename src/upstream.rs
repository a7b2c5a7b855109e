//! Pooled keep-alive clients to the upstreams. Connection failures answer 502, a slow
//! upstream 504; neither leaks upstream details to the client.

use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::Histogram;

use crate::config::UpstreamConfig;
use crate::error::Reject;

pub struct Upstream {
    pub name: String,
    scheme: Scheme,
    authority: Authority,
    timeout: Duration,
    client: Client<HttpConnector, Incoming>,
    duration: Histogram,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, duration: Histogram) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Upstream {
            name: cfg.name.clone(),
            scheme: cfg.uri.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority: cfg
                .uri
                .authority()
                .cloned()
                .unwrap_or_else(|| Authority::from_static("invalid")),
            timeout: cfg.timeout,
            client,
            duration,
        }
    }

    /// The upstream URI for a normalized path and (already filtered) query.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, Reject> {
        let pq = match query {
            Some(q) => PathAndQuery::from_maybe_shared(format!("{path}?{q}")),
            None => PathAndQuery::try_from(path),
        }
        .map_err(|_| Reject::BadPath(crate::route::PathError::ControlByte))?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(pq);
        Uri::from_parts(parts).map_err(|_| Reject::UpstreamUnavailable)
    }

    /// Send the request; the response body streams back untouched.
    pub async fn forward(&self, req: Request<Incoming>) -> Result<Response<Incoming>, Reject> {
        let start = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.client.request(req)).await;
        self.duration.observe(start.elapsed().as_secs_f64());
        match result {
            Err(_) => Err(Reject::UpstreamTimeout),
            Ok(Err(e)) => {
                tracing::warn!(upstream = %self.name, error = %e, connect = e.is_connect(), "upstream request failed");
                Err(Reject::UpstreamUnavailable)
            }
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}
