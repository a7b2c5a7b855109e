//! The gateway's own HTTP/1.1 exchange with plain-`http` upstreams (GET and HEAD without
//! a body): every framing an upstream may answer with, delivered in pieces, reaches the
//! client whole and correct; a connection is reused only when its response ended exactly
//! where its framing said; and nothing an upstream sends past a response ever reaches
//! another request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::net::TcpStream;

use crate::support::*;

/// What the upstream answers to `/<case>/…`.
fn answer(path: &str) -> Answer {
    let case = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let own = format!("own:{path}");
    // A 200 with `fields` (each ending in CRLF) before its `Content-Length`.
    let with = |fields: &str, body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\n{fields}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let sized = |body: &str| with("", body);
    let (raw, piece, close) = match case {
        "sized" => (sized(&own), 3, false),
        "chunked" => (
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{own}\r\n3;ext=1\r\nabc\r\n0\r\nX-Checksum: 42\r\n\r\n",
                own.len()
            ),
            2,
            false,
        ),
        // Read to the close, never reused.
        "until-close" => (format!("HTTP/1.1 200 OK\r\n\r\n{own}"), 4, true),
        "interim" => (
            format!("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n{}", sized(&own)),
            5,
            false,
        ),
        "head" => ("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".into(), usize::MAX, false),
        "close" => (
            with("Connection: close\r\nClose: internal\r\n", &own),
            usize::MAX,
            false,
        ),
        // Hop-by-hop fields, and one `Connection` names, stay on the gateway's hop.
        "named" => (
            with("Connection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\nX-Internal: secret\r\nX-Kept: yes\r\n", &own),
            7,
            false,
        ),
        "close-listed" => (
            with("Connection: Keep-Alive\r\nConnection: X-Other, CLOSE\r\nClose: internal\r\n", &own),
            usize::MAX,
            false,
        ),
        // A `Connection` value that is not text cannot be read for `close`.
        "unreadable" => (
            with("Connection: keep-alive, \u{ff}\r\n", &own),
            usize::MAX,
            false,
        ),
        // A second response the gateway never asked for, right behind the first.
        "smuggle" => (
            format!("{}HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled", sized(&own)),
            usize::MAX,
            false,
        ),
        // The same, a moment after the first response: the connection is idle by then.
        "smuggle-late" => {
            let first = sized(&own);
            let piece = first.len();
            (format!("{first}HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"), piece, false)
        }
        // A HEAD answered with a body in a segment of its own, as some frameworks do.
        "head-body" => {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 28\r\n\r\n";
            (format!("{head}HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"), head.len(), false)
        }
        // The same after a 204 to a POST (which hyper's client carries).
        "post-204" => {
            let head = "HTTP/1.1 204 No Content\r\nContent-Length: 28\r\n\r\n";
            (format!("{head}HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"), head.len(), false)
        }
        "smuggle-chunked" => (
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{own}\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
                own.len()
            ),
            usize::MAX,
            false,
        ),
        "truncated" => ("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort".into(), usize::MAX, true),
        "bad-chunk" => ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".into(), usize::MAX, false),
        "bad-head" => ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nBad Name: x\r\n\r\nabc".into(), usize::MAX, false),
        "bad-length" => ("HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabc".into(), usize::MAX, false),
        _ => (sized(&own), usize::MAX, false),
    };
    Answer {
        bytes: raw.into_bytes(),
        piece,
        close,
    }
}

async fn framing_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    head_by_head_upstream(answer).await
}

struct Got {
    status: u16,
    headers: http::HeaderMap,
    body: Result<Bytes, String>,
}

/// One keep-alive client connection to the gateway, spoken through hyper.
async fn client(gw: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(gw).await.expect("connect"));
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn fetch(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    method: &str,
    path: &str,
) -> Got {
    sender.ready().await.expect("client connection ready");
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gw")
        .header("te", "trailers")
        .body(Empty::new())
        .expect("request");
    let resp = match tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await {
        Ok(Ok(resp)) => resp,
        // The connection ended before a whole head arrived.
        Ok(Err(e)) => {
            return Got {
                status: 0,
                headers: http::HeaderMap::new(),
                body: Err(e.to_string()),
            }
        }
        Err(_) => panic!("{path}: no response within 10 s"),
    };
    let (parts, body) = resp.into_parts();
    let body = match tokio::time::timeout(Duration::from_secs(10), body.collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("body timed out".into()),
    };
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

async fn gateway(up: SocketAddr) -> jwtgate::app::Running {
    start_gateway(&format!(
        r#"
listeners: [ {{ address: "127.0.0.1:0" }} ]
limits: {{ workers: 1 }}
upstreams: [ {{ name: up, url: "http://{up}", timeout: 5s }} ]
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: up, auth: none }}
"#
    ))
    .await
}

/// Each framing arrives whole, however the upstream splits it, and the connection is kept
/// exactly when the response ended cleanly and nobody asked to close.
#[tokio::test]
async fn every_framing_arrives_whole_and_reuse_follows_it() {
    // (case, method, body the client gets, connection reused afterwards). The chunked
    // answer's trailer section is read past (the gateway does not forward trailers).
    let cases: &[(&str, &str, &str, bool)] = &[
        ("sized", "GET", "own:/sized/1", true),
        ("chunked", "GET", "own:/chunked/1abc", true),
        ("until-close", "GET", "own:/until-close/1", false),
        ("interim", "GET", "own:/interim/1", true),
        // It announces 1000 bytes: the connection is not trusted to stay clean.
        ("head", "HEAD", "", false),
        ("close", "GET", "own:/close/1", false),
        ("named", "GET", "own:/named/1", true),
        ("close-listed", "GET", "own:/close-listed/1", false),
        ("unreadable", "GET", "own:/unreadable/1", false),
    ];
    for &(case, method, want, reused) in cases {
        let (up, accepted) = framing_upstream().await;
        let gw = gateway(up).await;
        let mut c = client(gw.addrs[0]).await;
        let got = fetch(&mut c, method, &format!("/{case}/1")).await;
        assert_eq!(got.status, 200, "{case}");
        let body = got.body.unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(String::from_utf8_lossy(&body), want, "{case}");
        for hop in ["connection", "keep-alive", "x-internal", "close"] {
            assert!(
                !got.headers.contains_key(hop),
                "{case}: {hop} reached the client"
            );
        }
        if case == "named" {
            assert_eq!(
                got.headers.get("x-kept").map(|v| v.as_bytes()),
                Some(&b"yes"[..])
            );
        }
        if case == "head" {
            assert_eq!(
                got.headers.get("content-length").map(|v| v.as_bytes()),
                Some(&b"1000"[..])
            );
        }
        // The next request: on the same upstream connection only if the first ended cleanly.
        let next = fetch(&mut c, "GET", "/sized/2").await;
        assert_eq!(next.status, 200, "{case}");
        assert_eq!(
            next.body.unwrap_or_default(),
            "own:/sized/2".as_bytes(),
            "{case}"
        );
        let connections = accepted.load(Ordering::SeqCst);
        assert_eq!(
            connections,
            if reused { 1 } else { 2 },
            "{case}: upstream connections"
        );
    }
}

/// Bytes an upstream sends past the end of a response (a second response nobody asked
/// for) are dropped with their connection: the next request, from the same client or
/// another, gets its own answer from a new connection.
#[tokio::test]
async fn bytes_past_a_response_never_answer_another_request() {
    for case in [
        "smuggle",
        "smuggle-late",
        "smuggle-chunked",
        "head-body",
        "post-204",
    ] {
        let (up, accepted) = framing_upstream().await;
        let gw = gateway(up).await;
        let mut first = client(gw.addrs[0]).await;
        let (method, want) = match case {
            "head-body" => ("HEAD", String::new()),
            "post-204" => ("POST", String::new()),
            _ => ("GET", format!("own:/{case}/1")),
        };
        let got = fetch(&mut first, method, &format!("/{case}/1")).await;
        assert_eq!(got.body.unwrap_or_default(), want.as_bytes(), "{case}");
        if case == "smuggle-late" {
            // Let the stray response arrive while the connection sits idle.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut other = client(gw.addrs[0]).await;
        for (c, path) in [(&mut first, "/sized/2"), (&mut other, "/sized/3")] {
            let got = fetch(c, "GET", path).await;
            assert_eq!(
                String::from_utf8_lossy(&got.body.unwrap_or_default()),
                format!("own:{path}"),
                "{case}"
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "{case}: the tainted connection was not reused"
        );
    }
}

/// A response the upstream breaks off, or frames wrongly, never looks complete to the
/// client: a bad head is a 502, a body cut short or mis-chunked ends the client's
/// connection mid-body. The upstream connection is not reused.
#[tokio::test]
async fn broken_upstream_responses_fail_visibly() {
    for case in ["bad-head", "bad-length"] {
        let (up, _) = framing_upstream().await;
        let gw = gateway(up).await;
        let mut c = client(gw.addrs[0]).await;
        assert_eq!(
            fetch(&mut c, "GET", &format!("/{case}/1")).await.status,
            502,
            "{case}"
        );
    }
    for case in ["truncated", "bad-chunk"] {
        let (up, accepted) = framing_upstream().await;
        let gw = gateway(up).await;
        let mut c = client(gw.addrs[0]).await;
        let got = fetch(&mut c, "GET", &format!("/{case}/1")).await;
        assert!(
            got.body.is_err(),
            "{case}: a broken body must not look complete"
        );
        let mut again = client(gw.addrs[0]).await;
        let next = fetch(&mut again, "GET", "/sized/2").await;
        assert_eq!(
            next.body.unwrap_or_default(),
            "own:/sized/2".as_bytes(),
            "{case}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "{case}");
    }
}
