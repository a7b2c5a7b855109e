//! Poll delivery (RFC 8936): the control plane asks a transmitter for Security Event
//! Tokens, commits what each calls for, and acknowledges it in the next poll. A SET is
//! acknowledged only once its effect is durable; one that could not be committed is neither
//! acknowledged nor refused, so the transmitter delivers it again. Acknowledgements and
//! errors that did not reach the transmitter are sent again with the next poll, and a
//! redelivered SET is recognized by its `jti`: nothing is lost or applied twice across
//! failures and restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{receive, SetError};
use crate::backoff::backoff;
use crate::config::ssf::PollConfig;
use crate::control::ControlPlane;
use crate::http_client::{self, HttpsClient, Protocol};

/// The largest poll answer read.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// How long one poll may take.
const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the next poll reports back.
#[derive(Default)]
struct Pending {
    ack: Vec<String>,
    errors: BTreeMap<String, Value>,
}

/// Poll transmitter `t` until `shutdown`.
pub async fn run(
    cp: Arc<ControlPlane>,
    t: usize,
    cfg: PollConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(rx) = cp.ssf.as_ref() else { return };
    let name = rx.transmitters()[t].name.clone();
    let client: HttpsClient<Full<Bytes>> = http_client::build(
        http_client::system_roots(),
        Protocol::Http1,
        Duration::from_secs(10),
    );
    let mut pending = Pending::default();
    let mut failures = 0u32;
    loop {
        let result = poll_once(&cp, t, &cfg, &client, &mut pending).await;
        // A transmitter that keeps refusing what we report (it forgot those ids) would
        // stall polling for good: after a few refusals the report is dropped; the SETs it
        // named were committed, or will be delivered again.
        let refused = result
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<Refused>());
        let reporting = !(pending.ack.is_empty() && pending.errors.is_empty());
        if refused.is_some_and(|r| (400..500).contains(&r.0)) && failures >= 3 && reporting {
            tracing::error!(transmitter = %name, "the transmitter keeps refusing our report of committed and refused SETs; dropping it");
            pending = Pending::default();
        }
        let pause = match result {
            Ok(again) => {
                failures = 0;
                if again {
                    Duration::ZERO
                } else {
                    cfg.interval
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = backoff(failures);
                tracing::warn!(transmitter = %name, error = %e, retry_in_ms = delay.as_millis() as u64, "polling the transmitter failed");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One poll: report what is pending, receive SETs, commit them. `Ok(true)` when the
/// transmitter has more waiting.
async fn poll_once(
    cp: &ControlPlane,
    t: usize,
    cfg: &PollConfig,
    client: &HttpsClient<Full<Bytes>>,
    pending: &mut Pending,
) -> anyhow::Result<bool> {
    let rx = cp
        .ssf
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no receiver"))?;
    let mut body = json!({
        "ack": pending.ack,
        "maxEvents": cfg.max_events,
        "returnImmediately": true,
    });
    if !pending.errors.is_empty() {
        body["setErrs"] = json!(pending.errors);
    }
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(cfg.url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json");
    if let Some(token) = &cfg.token {
        req = req.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.body(Full::new(Bytes::from(body.to_string())))?;
    let resp = tokio::time::timeout(POLL_TIMEOUT, client.request(req))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {POLL_TIMEOUT:?}"))??;
    let status = resp.status();
    let bytes = tokio::time::timeout(
        POLL_TIMEOUT,
        Limited::new(resp.into_body(), MAX_RESPONSE_BYTES).collect(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the answer did not arrive within {POLL_TIMEOUT:?}"))?
    .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
    .to_bytes();
    if status != StatusCode::OK {
        return Err(Refused(status.as_u16()).into());
    }
    // The transmitter has what we reported.
    *pending = Pending::default();
    let answer: Value =
        serde_json::from_slice(&bytes).map_err(|_| anyhow::anyhow!("the answer is not JSON"))?;
    let empty = serde_json::Map::new();
    let sets = match answer.get("sets") {
        None => &empty,
        Some(Value::Object(sets)) => sets,
        Some(_) => anyhow::bail!("`sets` is not an object"),
    };
    let more = answer.get("moreAvailable").and_then(Value::as_bool) == Some(true);
    let mut unavailable = false;
    // At most what was asked for: the rest stays unacknowledged and comes again.
    for (id, set) in sets.iter().take(cfg.max_events as usize) {
        let Some(set) = set.as_str() else {
            pending.errors.insert(
                id.clone(),
                json!({ "err": "invalid_request", "description": "the SET is not a string" }),
            );
            continue;
        };
        match receive(cp, rx, t, set.trim()).await {
            Ok(_) => pending.ack.push(id.clone()),
            Err(e @ SetError::Unavailable(_)) => {
                // Not acknowledged: delivered again.
                tracing::warn!(transmitter = %rx.transmitters()[t].name, reason = %e.description(), "security event left for redelivery");
                unavailable = true;
            }
            Err(e) => {
                pending.errors.insert(
                    id.clone(),
                    json!({ "err": e.code(), "description": e.description() }),
                );
            }
        }
    }
    if unavailable {
        anyhow::bail!("some events could not be committed; they will be delivered again");
    }
    // Poll again at once only after SETs came: to report on them and take what waits.
    // An empty answer (whatever `moreAvailable` says) waits for the interval.
    Ok(!sets.is_empty() && (more || !pending.ack.is_empty() || !pending.errors.is_empty()))
}

/// A poll answered with an HTTP error status.
#[derive(Debug, Clone, Copy)]
struct Refused(u16);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the transmitter answered {}", self.0)
    }
}

impl std::error::Error for Refused {}
