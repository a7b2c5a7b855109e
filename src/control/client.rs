//! A small client for the control API, used by `jwtgate revoke`.

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::Request;
use http_body_util::{BodyExt, Full, Limited};

use crate::http_client::{self, HttpsClient, Protocol};

/// POST a revocation; returns the status and the body text.
pub async fn post_revocation(
    control: &str,
    api_key: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, String)> {
    let client: HttpsClient<Full<Bytes>> = http_client::build(
        http_client::system_roots(),
        Protocol::Http1,
        std::time::Duration::from_secs(10),
    );
    let url = format!("{}/v1/revocations", control.trim_end_matches('/'));
    let req = Request::post(&url)
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, format!("Bearer {api_key}"))
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| anyhow::anyhow!("{url} did not answer within 30 s"))?
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
