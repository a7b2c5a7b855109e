//! No published key is ever trusted, and first runs make keys of their own: `jwtgate keygen`
//! and `jwtgate token`, key files for API keys and the sync token, and the shipped configs
//! and container demo built on them.

use std::path::Path;
use std::process::Command;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_jwtgate");

/// RFC 8037 §A.1: the example Ed25519 key, private half (`d`) printed in the RFC.
const RFC8037_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

fn rfc8037_jwk() -> serde_json::Value {
    json!({ "kty": "OKP", "crv": "Ed25519", "x": RFC8037_X, "kid": "example", "alg": "EdDSA", "use": "sig" })
}

/// A token signed with the RFC 8037 private key: anybody who read the RFC can make it.
fn forged(iss: &str) -> String {
    let seed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(RFC8037_D)
        .expect("d");
    // PKCS#8 v1 for an Ed25519 seed (RFC 8410).
    let mut der = hex_bytes("302e020100300506032b657004220420");
    der.extend_from_slice(&seed);
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("example".into());
    jsonwebtoken::encode(&header, &claims(iss), &EncodingKey::from_ed_der(&der)).expect("sign")
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

fn gateway(idp_url: &str, keys: &str, echo: &Echo) -> String {
    format!(
        r#"
listeners: [ {{ address: "127.0.0.1:0" }} ]
issuers:
  - {{ name: idp, issuer: "{idp_url}", {keys}, audiences: [api], algorithms: [EdDSA] }}
upstreams: [ {{ name: echo, url: "http://{echo}" }} ]
routes:
  - {{ name: api, match: {{ path_prefix: / }}, upstream: echo, auth: {{ issuers: [idp] }} }}
"#,
        echo = echo.addr
    )
}

/// A JWKS serving a published example key beside a real one (as an IdP's demo realm left
/// behind might): the published key is skipped, so a token signed with its published private
/// half is refused while the real key's tokens pass; with only the published key, nothing
/// passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_keys_are_never_trusted() {
    let real = jwtgate::keygen::SigningKey::generate().expect("key");
    let real_jwk = real.jwks()["keys"][0].clone();
    let idp = Idp::start(vec![rfc8037_jwk(), real_jwk]).await;
    let echo = Echo::start().await.expect("echo");
    let gw = start_gateway(&gateway(
        &idp.url,
        &format!("jwks_uri: \"{}\"", idp.jwks_url()),
        &echo,
    ))
    .await;
    let good = real.sign(&claims(&idp.url)).expect("sign");
    assert_eq!(get(gw.addrs[0], "/", &[&bearer(&good)]).await.status, 200);
    let r = get(gw.addrs[0], "/", &[&bearer(&forged(&idp.url))]).await;
    assert_eq!(
        r.status,
        401,
        "a token signed with the RFC 8037 key: {}",
        String::from_utf8_lossy(&r.body)
    );
    idp.set_keys(vec![rfc8037_jwk()]);
    let lone = Idp::start(vec![rfc8037_jwk()]).await;
    let gw = start_gateway(&gateway(
        &lone.url,
        &format!("jwks_uri: \"{}\"", lone.jwks_url()),
        &echo,
    ))
    .await;
    let r = get(gw.addrs[0], "/", &[&bearer(&forged(&lone.url))]).await;
    assert_ne!(r.status, 200, "the published key alone verified a token");
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check` and `serve` refuse a `jwks_file` holding a published key; a missing one is a
/// warning (it may be mounted or generated later).
#[test]
fn key_files_with_published_keys_are_refused() {
    let dir = temp_dir();
    std::fs::write(
        dir.join("jwks.json"),
        json!({ "keys": [rfc8037_jwk()] }).to_string(),
    )
    .expect("write");
    let port = free_port();
    let yaml = format!(
        "listeners: [ {{ address: \"127.0.0.1:{port}\" }} ]\nissuers:\n  - {{ name: idp, issuer: i, jwks_file: jwks.json, audiences: [api], algorithms: [EdDSA] }}\nupstreams: [ {{ name: a, url: \"http://127.0.0.1:1\" }} ]\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: a, auth: {{ issuers: [idp] }} }}\n"
    );
    let cfg = dir.join("gw.yaml");
    std::fs::write(&cfg, &yaml).expect("write");
    let (ok, _, err) = run(&["check", "-c", cfg.to_str().expect("utf8")]);
    assert!(!ok && err.contains("RFC 8037"), "{err}");
    let (ok, _, err) = run(&["serve", "-c", cfg.to_str().expect("utf8")]);
    assert!(!ok && err.contains("RFC 8037"), "{err}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "serve bound its listener"
    );
    std::fs::remove_file(dir.join("jwks.json")).expect("rm");
    let (ok, _, err) = run(&["check", "-c", cfg.to_str().expect("utf8")]);
    assert!(ok && err.contains("does not exist yet"), "{err}");
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
}

/// `keygen` makes keys once (private files owner-only; a second run keeps them); a token
/// from `jwtgate token` passes a gateway trusting the generated JWKS; `key_file` and
/// `token_file` carry the generated API keys between control plane and gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_token_and_key_files_work_end_to_end() {
    let dir = temp_dir().join("keys");
    let d = dir.to_str().expect("utf8");
    let (ok, out, err) = run(&["keygen", "--dir", d]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    for f in ["signing-key.pem", "writer.key", "reader.key"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    let jwks = std::fs::read(dir.join("jwks.json")).expect("jwks");
    let writer = std::fs::read_to_string(dir.join("writer.key")).expect("writer");
    let (ok, out, _) = run(&["keygen", "--dir", d]);
    assert!(ok && out.contains("kept"), "{out}");
    assert_eq!(std::fs::read(dir.join("jwks.json")).expect("jwks"), jwks);
    assert_eq!(
        std::fs::read_to_string(dir.join("writer.key")).expect("writer"),
        writer
    );
    // A JWKS that is not the signing key's is refused, not silently kept.
    let mismatched = temp_dir().join("keys");
    run(&["keygen", "--dir", mismatched.to_str().expect("utf8")]);
    std::fs::copy(dir.join("jwks.json"), mismatched.join("jwks.json")).expect("copy");
    let (ok, _, err) = run(&["keygen", "--dir", mismatched.to_str().expect("utf8")]);
    assert!(!ok && err.contains("does not hold the public key"), "{err}");
    // Two runs elsewhere make different keys.
    let other = temp_dir().join("keys");
    run(&["keygen", "--dir", other.to_str().expect("utf8")]);
    assert_ne!(std::fs::read(other.join("jwks.json")).expect("jwks"), jwks);

    // A control plane whose API keys are the generated files; a gateway with the generated
    // JWKS and reader key.
    let store = format!("sqlite://{}", temp_dir().join("rev.db").display());
    let control_yaml = format!(
        "listen: \"127.0.0.1:0\"\nstore: \"{store}\"\nwriters:\n  api_keys: [ {{ name: ops, key_file: {d}/writer.key }} ]\nreaders:\n  api_keys: [ {{ name: gateways, key_file: {d}/reader.key }} ]\n"
    );
    let config =
        jwtgate::config::ControlConfig::from_yaml(&control_yaml, Path::new("."), &|_| None)
            .unwrap_or_else(|p| panic!("{p:?}"));
    let control = jwtgate::app::start_control(config).await.expect("control");
    let echo = Echo::start().await.expect("echo");
    let yaml = format!(
        "{}revocation:\n  control_url: http://{}\n  token_file: {d}/reader.key\n",
        gateway(
            "http://issuer.test",
            &format!("jwks_file: {d}/jwks.json"),
            &echo
        ),
        control.addr
    );
    let gw = start_gateway(&yaml).await;
    let (ok, token, err) = run(&[
        "token",
        "--key",
        &format!("{d}/signing-key.pem"),
        "--iss",
        "http://issuer.test",
        "--aud",
        "api",
        "--sub",
        "42",
    ]);
    assert!(ok, "{err}");
    let token = token.trim();
    let r = get(gw.addrs[0], "/", &[&bearer(token)]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = post_json(
        control.addr,
        "/v1/revocations",
        writer.trim(),
        &json!({ "iss": "http://issuer.test", "sub": "42", "issued_before": now() + 1 }),
    )
    .await;
    assert_eq!(r.status, 201, "the generated writer key writes");
    let start = std::time::Instant::now();
    while get(gw.addrs[0], "/", &[&bearer(token)]).await.status != 401 {
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let r = get(gw.addrs[0], "/", &[&bearer(&forged("http://issuer.test"))]).await;
    assert_eq!(r.status, 401);
}

/// Config problems with key files: both forms at once, an empty file, a short key, two
/// lines (a header cannot carry them), an endless file.
#[test]
fn key_file_mistakes_are_reported() {
    let dir = temp_dir();
    std::fs::write(dir.join("empty.key"), "\n").expect("write");
    std::fs::write(dir.join("short.key"), "abc\n").expect("write");
    std::fs::write(dir.join("two.key"), "0123456789abcdef0123\nsecond-line\n").expect("write");
    for (entry, why) in [
        (
            format!(
                "{{ name: a, key_file: empty.key, sha256: {} }}",
                "0".repeat(64)
            ),
            "exactly one of",
        ),
        ("{ name: a, key_file: empty.key }".to_owned(), "is empty"),
        (
            "{ name: a, key_file: short.key }".to_owned(),
            "shorter than 16",
        ),
        ("{ name: a, key_file: two.key }".to_owned(), "one line"),
        (
            "{ name: a, key_file: /dev/zero }".to_owned(),
            "larger than 4 KiB",
        ),
    ] {
        let yaml = format!(
            "listen: \"127.0.0.1:0\"\nstore: \"sqlite://x.db\"\nwriters:\n  api_keys: [ {entry} ]\n"
        );
        let problems = jwtgate::config::ControlConfig::from_yaml(&yaml, &dir, &|_| None)
            .err()
            .unwrap_or_else(|| panic!("{entry} accepted"));
        assert!(
            format!("{problems:?}").contains(why),
            "{entry}: {problems:?}"
        );
    }
}
