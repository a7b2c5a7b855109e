//! A small client for the control API, used by `jwtgate revoke` and `jwtgate dev`.

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};

use crate::http_client::{self, HttpsClient, Protocol};

/// Send one request to the control API; returns the status and the body text.
pub async fn send(
    control: &str,
    api_key: &str,
    method: Method,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<(u16, String)> {
    let client: HttpsClient<Full<Bytes>> = http_client::build(
        http_client::system_roots(),
        Protocol::Http1,
        std::time::Duration::from_secs(10),
    );
    let url = format!("{}{path}", control.trim_end_matches('/'));
    let mut req = Request::builder()
        .method(method)
        .uri(&url)
        .header(AUTHORIZATION, format!("Bearer {api_key}"));
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(60), client.request(req))
        .await
        .map_err(|_| anyhow::anyhow!("{url} did not answer within 60 s"))?
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), 4 * 1024 * 1024)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// POST one revocation (or a batch, when `body` is an array).
pub async fn post_revocation(
    control: &str,
    api_key: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, String)> {
    send(
        control,
        api_key,
        Method::POST,
        "/v1/revocations",
        Some(body.to_string()),
    )
    .await
}
