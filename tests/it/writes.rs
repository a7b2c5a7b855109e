//! Writes beyond one entry: deletes (`DELETE /v1/revocations/{id}`, `jwtgate revoke
//! --delete`) streamed to gateways like any change, and batches (`POST /v1/revocations` with
//! an array, `jwtgate revoke --file`) written in one durable commit, all or none.

use std::time::{Duration, Instant};

use crate::revocation::{gateway_yaml, world};
use crate::support::*;
use serde_json::{json, Value};

fn delete(id: &str, key: &str) -> String {
    format!("DELETE /v1/revocations/{id} HTTP/1.1\nHost: c\nAuthorization: Bearer {key}\nContent-Length: 0")
}

/// Poll until the gateway answers `want` to the token (within 1 s); the time it took.
async fn until_status(gw: std::net::SocketAddr, token: &str, want: u16) -> Duration {
    let start = Instant::now();
    loop {
        let got = get(gw, "/", &[&bearer(token)]).await.status;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "still {got}, not {want}, after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A deleted revocation is lifted at a streaming gateway within a second, at a gateway that
/// starts cold afterwards, and for writer checks; deleting is for writers only, of live ids
/// only; the same key can be revoked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_streamed_to_gateways() {
    let w = world("", "").await;
    let c_addr = w.control_addr;
    let (token, c) = w.token(json!({}));
    let (other, oc) = w.token(json!({}));
    let r = revoke(
        c_addr,
        &json!({ "iss": w.idp.url, "jti": c["jti"], "expires_at": c["exp"] }),
    )
    .await;
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let r = revoke(
        c_addr,
        &json!({ "iss": w.idp.url, "jti": oc["jti"], "expires_at": oc["exp"] }),
    )
    .await;
    assert_eq!(r.status, 201);
    w.until_refused(&token, Duration::from_secs(1)).await;
    w.until_refused(&other, Duration::from_secs(1)).await;

    // Refusals first: they change nothing.
    for (target, key, want) in [
        (id.as_str(), READER_KEY, 403),
        (id.as_str(), "wrong", 401),
        ("999999", WRITER_KEY, 404),
        ("-1", WRITER_KEY, 404),
        ("1e3", WRITER_KEY, 404),
        ("99999999999999999999999", WRITER_KEY, 404),
        (&format!("0{id}"), WRITER_KEY, 404),
        // Encoded, trailing-slash and dotted forms name no id: only the exact decimal path.
        (&format!("%3{}{}", &id[..1], &id[1..]), WRITER_KEY, 404),
        (&format!("{id}/"), WRITER_KEY, 404),
        (&format!("./{id}"), WRITER_KEY, 404),
        (&format!("{id}%00"), WRITER_KEY, 404),
    ] {
        let r = raw(c_addr, &delete(target, key), b"").await;
        assert_eq!(r.status, want, "DELETE {target} with {key}");
    }
    let r = raw(
        c_addr,
        &format!("GET /v1/revocations/{id} HTTP/1.1\nHost: c\nAuthorization: Bearer {WRITER_KEY}"),
        b"",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(w.status(&token).await, 401, "a refused delete lifted it");

    // The delete: a tombstone with a new cursor, lifted at the gateway within a second.
    let r = raw(c_addr, &delete(&id, WRITER_KEY), b"").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["deleted"], true);
    let took = until_status(w.a(), &token, 200).await;
    println!("delete lifted at the gateway in {took:?}");
    assert_eq!(w.status(&other).await, 401, "the other revocation holds");
    let r = raw(c_addr, &delete(&id, WRITER_KEY), b"").await;
    assert_eq!(r.status, 404, "a second delete of the same id");

    // Gateways of this version ask for tombstones; a client that does not (an older
    // gateway, which would refuse the unknown field) gets none, and its cursor passes them.
    let auth = format!("Authorization: Bearer {READER_KEY}");
    let old_client = get(c_addr, "/v1/revocations", &[auth.as_str()])
        .await
        .json();
    let new_client = get(c_addr, "/v1/revocations?tombstones=1", &[auth.as_str()])
        .await
        .json();
    let deleted = |page: &Value| {
        page["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["deleted"] == true)
            .count()
    };
    assert_eq!((deleted(&old_client), deleted(&new_client)), (0, 1));
    assert_eq!(old_client["cursor"], new_client["cursor"]);
    assert_eq!(old_client["entries"].as_array().map(Vec::len), Some(1));

    // A gateway starting cold now never holds the deleted entry; the other still holds.
    let cold = start_gateway(&gateway_yaml(
        &w.idp,
        &Echo::start().await.expect("echo"),
        &format!("  control_url: http://{c_addr}\n  token: {READER_KEY}\n"),
    ))
    .await;
    assert_eq!(
        get(cold.addrs[0], "/", &[&bearer(&token)]).await.status,
        200
    );
    assert_eq!(
        get(cold.addrs[0], "/", &[&bearer(&other)]).await.status,
        401
    );
    let metrics = String::from_utf8(get(w.gw.admin.expect("admin"), "/metrics", &[]).await.body)
        .expect("utf8");
    assert!(
        metrics.contains("jwtgate_revocations{kind=\"jti\"} 1"),
        "the gauge counts the delete: {metrics}"
    );

    // Revoking the same token again works (the tombstone does not block it), at both.
    let r = revoke(
        c_addr,
        &json!({ "iss": w.idp.url, "jti": c["jti"], "expires_at": c["exp"] }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    w.until_refused(&token, Duration::from_secs(1)).await;
    until_status(cold.addrs[0], &token, 401).await;
}

/// A delete reaches a gateway that was down when it was written: it resumes from its
/// snapshot's cursor and drops the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_reaches_a_gateway_restarting_from_its_snapshot() {
    let mut w = world("", "").await;
    let (token, c) = w.token(json!({}));
    let r = revoke(
        w.control_addr,
        &json!({ "iss": w.idp.url, "jti": c["jti"], "expires_at": c["exp"] }),
    )
    .await;
    let id = r.json()["id"].as_str().expect("id").to_owned();
    w.until_refused(&token, Duration::from_secs(1)).await;
    // Stop the gateway (it writes its snapshot), delete, start it again from the snapshot.
    let echo = Echo::start().await.expect("echo");
    let yaml = gateway_yaml(
        &w.idp,
        &echo,
        &format!(
            "  control_url: http://{}\n  token: {READER_KEY}\n  snapshot_file: {}\n",
            w.control_addr,
            w.dir.join("gw.snapshot").display()
        ),
    );
    let old = std::mem::replace(&mut w.gw, start_gateway(&yaml).await);
    old.shutdown(Duration::from_secs(1)).await;
    let r = raw(w.control_addr, &delete(&id, WRITER_KEY), b"").await;
    assert_eq!(r.status, 200);
    let restarted = start_gateway(&yaml).await;
    until_status(restarted.addrs[0], &token, 200).await;
}

fn jti_entry(iss: &str, jti: &str) -> Value {
    json!({ "iss": iss, "jti": jti, "expires_at": now() + 600 })
}

/// A batch is one commit: every entry refused at three gateways; an invalid entry refuses
/// the whole batch, naming its index, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_is_all_or_none() {
    let w = world("", "").await;
    let a = w.control_addr;
    let head = |r: &Resp| r.json()["head"].as_str().unwrap_or("").to_owned();
    let auth = format!("Authorization: Bearer {READER_KEY}");
    let headers = [auth.as_str()];
    let list = || get(a, "/v1/revocations?limit=1", &headers);
    let before = head(&list().await);

    // Refused batches write nothing.
    let mut bad: Vec<Value> = (0..20)
        .map(|i| jti_entry(&w.idp.url, &format!("b{i}")))
        .collect();
    bad[7] = json!({ "iss": w.idp.url, "jti": "x" });
    let too_many: Vec<Value> = (0..10_001)
        .map(|i| jti_entry("i", &format!("m{i}")))
        .collect();
    for (body, status, why) in [
        (Value::Array(bad), 400, "entry 7 of the batch"),
        (json!([]), 400, "empty"),
        (Value::Array(too_many), 400, "at most 10000"),
        (
            json!([{ "iss": "i", "jti": "j\nx", "expires_at": now() + 60 }]),
            400,
            "control characters",
        ),
        (json!([1, 2]), 400, "malformed"),
    ] {
        let r = revoke(a, &body).await;
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
        let d = r.json()["error_description"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(d.contains(why), "{d}");
    }
    let r = post_json(
        a,
        "/v1/revocations",
        READER_KEY,
        &json!([jti_entry("i", "r")]),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        head(&list().await),
        before,
        "a refused batch wrote something"
    );

    // Three gateways; 10,000 tokens revoked in one request.
    let mut gateways = vec![w.a()];
    let mut extra = Vec::new();
    for _ in 0..2 {
        let g = start_gateway(&gateway_yaml(
            &w.idp,
            &Echo::start().await.expect("echo"),
            &format!("  control_url: http://{a}\n  token: {READER_KEY}\n"),
        ))
        .await;
        gateways.push(g.addrs[0]);
        extra.push(g);
    }
    let tokens: Vec<(String, Value)> = (0..3).map(|_| w.token(json!({}))).collect();
    let mut batch: Vec<Value> = (0..9_997)
        .map(|i| jti_entry(&w.idp.url, &format!("bulk-{i}")))
        .collect();
    // The tokens at the start, the middle and the end of the batch.
    for (at, (_, c)) in [0, 5_000, 9_999].into_iter().zip(&tokens) {
        batch.insert(
            at,
            json!({ "iss": w.idp.url, "jti": c["jti"], "expires_at": c["exp"] }),
        );
    }
    assert_eq!(batch.len(), 10_000);
    let start = Instant::now();
    let r = revoke(a, &Value::Array(batch)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["count"], 10_000);
    assert_eq!(r.json()["created"], 10_000);
    assert_eq!(r.json()["ids"].as_array().map(Vec::len), Some(10_000));
    for gw in &gateways {
        for (token, _) in &tokens {
            until_status(*gw, token, 401).await;
        }
    }
    println!(
        "10,000 entries: 201 and refused at 3 gateways in {:?}",
        start.elapsed()
    );
    // A repeat changes nothing.
    let again: Vec<Value> = tokens
        .iter()
        .map(|(_, c)| json!({ "iss": w.idp.url, "jti": c["jti"], "expires_at": c["exp"] }))
        .collect();
    let r = revoke(a, &Value::Array(again)).await;
    assert_eq!(r.status, 200, "a repeat that changed nothing");
    assert_eq!(r.json()["created"], 0);
}

/// `jwtgate revoke --file` (JSON lines or an array, sent in batches) and `--delete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_file_and_delete() {
    let dir = temp_dir();
    let control = start_control(&format!("sqlite://{}", dir.join("rev.db").display()), "").await;
    let url = format!("http://{}", control.addr);
    let run = |args: Vec<String>| {
        let mut all = vec!["revoke".to_owned(), "--control".to_owned(), url.clone()];
        all.extend(args);
        tokio::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
            .args(all)
            .env("JWTGATE_API_KEY", WRITER_KEY)
            .output()
    };
    // 12,000 lines: three requests of at most 5,000.
    let lines: String = (0..12_000)
        .map(|i| format!("{}\n", jti_entry("https://i", &format!("f{i}"))))
        .collect();
    let file = dir.join("revocations.jsonl");
    std::fs::write(&file, lines).expect("write");
    let out = run(vec!["--file".into(), file.display().to_string()])
        .await
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked 12000 entries"));
    let (all, more) = control
        .plane
        .store
        .list(0, 10_000, now())
        .await
        .expect("list");
    assert!(more && all.len() == 10_000);

    // A bad line is reported with its line number, before anything is sent.
    std::fs::write(
        &file,
        "{\"iss\":\"i\",\"jti\":\"ok\",\"expires_at\":1}\n{oops\n",
    )
    .expect("write");
    let out = run(vec!["--file".into(), file.display().to_string()])
        .await
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revocations.jsonl:2"));

    // An array whose entry the API refuses: the answer names it, nothing of it is written.
    let array = dir.join("revocations.json");
    std::fs::write(
        &array,
        json!([jti_entry("https://i", "g1"), { "iss": "https://i", "jti": "g2" }]).to_string(),
    )
    .expect("write");
    let out = run(vec!["--file".into(), array.display().to_string()])
        .await
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("entry 1 of the batch") && err.contains("0 of 2 written"),
        "{err}"
    );

    // --delete: by the id a write returned.
    let id = all[0].cursor.to_string();
    let out = run(vec!["--delete".into(), id.clone()]).await.expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!control
        .plane
        .store
        .revokes(
            "https://i",
            [Some("f0"), None, None],
            &[],
            Some(now()),
            now()
        )
        .await
        .expect("revokes"));
    let out = run(vec!["--delete".into(), id]).await.expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
}

/// `jwtgate revoke --token JWT` (or `-` on standard input) revokes the token's `jti` until
/// its `exp`, or its session when it has no `jti`; a token that names neither, or is not
/// a JWT, is refused with the way out and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_revokes_a_token_it_is_given() {
    use tokio::io::AsyncWriteExt;
    let dir = temp_dir();
    let control = start_control(&format!("sqlite://{}", dir.join("rev.db").display()), "").await;
    let url = format!("http://{}", control.addr);
    let key = Signer::new("ec256.pem", jsonwebtoken::Algorithm::ES256, "k1");
    let exp = now() + 600;
    let revoke = |token: String, stdin: Option<String>| {
        let url = url.clone();
        async move {
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
                .args(["revoke", "--control", &url, "--token", &token])
                .env("JWTGATE_API_KEY", WRITER_KEY)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn");
            let mut input = child.stdin.take().expect("stdin");
            input
                .write_all(stdin.unwrap_or_default().as_bytes())
                .await
                .expect("write");
            drop(input);
            let out = child.wait_with_output().await.expect("run");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let with_jti = key
        .mint(&json!({ "iss": "https://i", "sub": "u", "jti": "t-1", "sid": "s-1", "exp": exp }));
    let (ok, err) = revoke(with_jti, None).await;
    assert!(ok, "{err}");
    let sid_only = key.mint(&json!({ "iss": "https://i", "sub": "u", "sid": "s-2", "exp": exp }));
    let (ok, err) = revoke("-".into(), Some(format!("Bearer {sid_only}\n"))).await;
    assert!(ok, "{err}");
    let (all, _) = control.plane.store.list(0, 100, now()).await.expect("list");
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0].jti.as_deref(), Some("t-1"));
    assert_eq!(all[0].sid, None, "the token itself, not its whole session");
    assert!(all[0].expires_at >= exp);
    assert_eq!(all[1].sid.as_deref(), Some("s-2"));
    for (token, says) in [
        (
            key.mint(&json!({ "iss": "https://i", "sub": "u", "exp": exp })),
            "--iss https://i --sub SUB",
        ),
        (
            key.mint(&json!({ "iss": "https://i", "jti": "t-3" })),
            "no `exp`",
        ),
        (
            key.mint(&json!({ "sub": "u", "jti": "t-4", "exp": exp })),
            "no `iss`",
        ),
        ("not.a-jwt".to_owned(), "not a compact JWT"),
        ("a.!!!.c".to_owned(), "not base64url JSON"),
    ] {
        let (ok, err) = revoke(token, None).await;
        assert!(!ok && err.contains(says), "{says}: {err}");
    }
    let (all, _) = control.plane.store.list(0, 100, now()).await.expect("list");
    assert_eq!(all.len(), 2, "nothing more written");
}
