//! The command line: parse arguments, then hand over to the library (`jwtgate::app` runs
//! the processes; `check` and `revoke` are answered here).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jwtgate::config::{Config, ControlConfig};

/// A JWT-enforcing reverse proxy.
#[derive(Parser)]
#[command(name = "jwtgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The gateway configuration (YAML; see config/gateway.example.yaml).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the control plane (revocation store and API).
    Control {
        /// The control-plane configuration (YAML; see config/control.example.yaml).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Revoke a token (`--jti`), a session (`--sid`) or a subject's tokens (`--sub`); many
    /// at once from a file (`--file`); or delete a revocation (`--delete ID`).
    Revoke(Box<RevokeArgs>),
    /// Probe a running gateway or control plane (for container and Kubernetes health
    /// checks: the image has no curl); exit status 0 when it answers 2xx.
    Health {
        /// What to ask: the gateway's admin `/healthz` (alive) or `/readyz` (keys and
        /// revocations loaded), or the control plane's `/healthz`.
        #[arg(long, default_value = "http://127.0.0.1:9900/readyz")]
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 2)]
        timeout: u64,
    },
    /// Validate a configuration file offline; exit status 0 when it is valid.
    Check {
        /// The gateway or control-plane configuration to validate.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Make an Ed25519 signing key, its JWKS and random writer/reader API keys in a folder,
    /// unless they are there already (first run only).
    Keygen {
        /// The folder (created if needed); the private files are readable by their owner only.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Mint a token with a `keygen` signing key (for demos and tests).
    Token {
        /// The signing key `keygen` wrote (`signing-key.pem`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The issuer (`iss`), as the gateway's issuer configures it.
        #[arg(long)]
        iss: String,
        /// The audience (`aud`).
        #[arg(long)]
        aud: String,
        /// The subject (`sub`).
        #[arg(long)]
        sub: String,
        /// Seconds until `exp`.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Space-separated scopes (`scope`).
        #[arg(long)]
        scope: Option<String>,
        /// A session id (`sid`), for session revocation demos.
        #[arg(long)]
        sid: Option<String>,
    },
    /// Everything on loopback in one process for a first look.
    Dev {
        /// Gateway port (falls back to a free one when taken).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Address the gateway and admin listeners bind (`0.0.0.0` inside a container,
        /// so that a published port reaches them).
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
    },
}

/// `jwtgate revoke`.
#[derive(clap::Args)]
struct RevokeArgs {
    /// The control plane (or a single-node gateway's admin listener), e.g. http://127.0.0.1:9901.
    #[arg(long, value_name = "URL")]
    control: String,
    /// The issuer (`iss`) of the tokens to revoke.
    #[arg(long, required_unless_present_any = ["file", "delete", "token"])]
    iss: Option<String>,
    /// Revoke one token by its `jti` (give its `exp` with --exp).
    #[arg(long, group = "what", requires_all = ["exp", "iss"])]
    jti: Option<String>,
    /// Revoke every token of one session (`sid`).
    #[arg(long, group = "what", requires = "iss")]
    sid: Option<String>,
    /// Revoke every token of one subject (`sub`) issued before --before.
    #[arg(long, group = "what", requires = "iss")]
    sub: Option<String>,
    /// Revoke this token: its `jti` (until its `exp`), or, when it has no `jti`, its session
    /// (`sid`). Read from the token itself, not verified: the control plane learns only
    /// identifiers. `-` reads it from standard input (out of `ps` and shell history).
    #[arg(long, group = "what", value_name = "JWT", conflicts_with_all = ["iss", "exp", "before"])]
    token: Option<String>,
    /// Revoke every entry of a file in batches of 5,000 (one durable commit each): a
    /// JSON array, or one JSON object per line, each as `POST /v1/revocations` takes it.
    #[arg(long, group = "what", value_name = "FILE", conflicts_with_all = ["iss", "reason"])]
    file: Option<PathBuf>,
    /// Delete the revocation with this id (as returned when it was written, or listed by
    /// `GET /v1/revocations`); gateways drop it within a second.
    #[arg(long, group = "what", value_name = "ID", conflicts_with_all = ["iss", "reason"])]
    delete: Option<u64>,
    /// With --jti: the token's `exp` (Unix seconds). With --sid: when to forget the session.
    #[arg(long, value_name = "UNIX_SECONDS")]
    exp: Option<u64>,
    /// With --sub: revoke tokens issued before this time (Unix seconds; default: every
    /// token issued so far, this second included).
    #[arg(long, value_name = "UNIX_SECONDS")]
    before: Option<u64>,
    /// Why (kept with the entry, shown in listings; never a secret).
    #[arg(long)]
    reason: Option<String>,
    /// Environment variable holding the writer API key.
    #[arg(long, default_value = "JWTGATE_API_KEY")]
    key_env: String,
}

fn main() -> ExitCode {
    // Log lines held in the buffer (see `logging`) reach stderr before the process ends:
    // dropped last, after the runtime.
    let _flush_logs = jwtgate::logging::FlushOnExit;
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("jwtgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Control { config } => runtime.block_on(jwtgate::app::run_control(&config)),
        Command::Revoke(args) => {
            let RevokeArgs {
                control,
                iss,
                jti,
                sid,
                sub,
                token,
                file,
                delete,
                exp,
                before,
                reason,
                key_env,
            } = *args;
            let Ok(key) = std::env::var(&key_env) else {
                eprintln!("jwtgate revoke: set {key_env} to a writer API key of the control plane");
                return ExitCode::FAILURE;
            };
            runtime.block_on(async {
                match (file, delete, iss) {
                    (Some(file), _, _) => revoke_file(&control, &key, &file).await,
                    (None, Some(id), _) => delete_revocation(&control, &key, id).await,
                    (None, None, None) if token.is_some() => {
                        match token_ids(token.as_deref().unwrap_or_default()) {
                            Ok((iss, jti, sid, exp)) => {
                                revoke(&control, &key, iss, jti, sid, None, exp, None, reason).await
                            }
                            Err(e) => {
                                eprintln!("jwtgate revoke --token: {e}");
                                ExitCode::FAILURE
                            }
                        }
                    }
                    (None, None, Some(iss)) => {
                        revoke(&control, &key, iss, jti, sid, sub, exp, before, reason).await
                    }
                    (None, None, None) => {
                        eprintln!("jwtgate revoke: give --iss with --jti, --sid or --sub; or --file; or --delete");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Keygen { dir } => keygen(&dir),
        Command::Health { url, timeout } => {
            match runtime.block_on(health(&url, std::time::Duration::from_secs(timeout.max(1)))) {
                Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
                Ok(status) => {
                    eprintln!("jwtgate health: {url} answered {status}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("jwtgate health: {url}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token {
            key,
            iss,
            aud,
            sub,
            ttl,
            scope,
            sid,
        } => mint(&key, iss, aud, sub, ttl, scope, sid),
        Command::Serve { config } => runtime.block_on(jwtgate::app::run_gateway(&config)),
        Command::Dev { port, bind } => match runtime.block_on(jwtgate::dev::run(bind, port)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                jwtgate::logging::flush();
                eprintln!("jwtgate dev: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The status `url` (plain http: the admin and control listeners) answers a GET with,
/// through the crate's one HTTP client.
async fn health(url: &str, timeout: std::time::Duration) -> Result<u16, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs (the admin and control listeners)".into());
    }
    let client: jwtgate::http_client::HttpsClient<http_body_util::Empty<bytes::Bytes>> =
        jwtgate::http_client::build(
            jwtgate::http_client::system_roots(),
            jwtgate::http_client::Protocol::Http1,
            timeout,
        );
    let req = http::Request::get(uri)
        .body(http_body_util::Empty::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
        Ok(Err(e)) if e.is_connect() => Err(format!("cannot connect: {e}")),
        Ok(Err(e)) => Err(format!("no usable answer: {e}")),
        Ok(Ok(resp)) => Ok(resp.status().as_u16()),
    }
}

fn keygen(dir: &Path) -> ExitCode {
    match jwtgate::keygen::ensure(dir) {
        Ok(written) => {
            for f in &written {
                println!("wrote {}", f.display());
            }
            if written.is_empty() {
                println!("{}: keys already there, kept", dir.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("jwtgate keygen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn mint(
    key: &Path,
    iss: String,
    aud: String,
    sub: String,
    ttl: u64,
    scope: Option<String>,
    sid: Option<String>,
) -> ExitCode {
    let minted = jwtgate::keygen::SigningKey::load(key).and_then(|k| {
        let now = jwtgate::clock::now_unix();
        let jti = jwtgate::keygen::api_key()?;
        let mut claims = serde_json::json!({
            "iss": iss, "aud": aud, "sub": sub, "iat": now, "exp": now + ttl, "jti": &jti[..32],
        });
        if let Some(s) = scope {
            claims["scope"] = s.into();
        }
        if let Some(s) = sid {
            claims["sid"] = s.into();
        }
        k.sign(&claims)
    });
    match minted {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("jwtgate token: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A control-plane file has `listen` and `store` at the top; anything else is a gateway file.
fn is_control_file(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_norway::from_str::<serde_norway::Value>(&t).ok())
        .and_then(|v| {
            v.as_mapping()
                .map(|m| m.contains_key("listen") && m.contains_key("store"))
        })
        .unwrap_or(false)
}

fn check(path: &Path) -> ExitCode {
    if is_control_file(path) {
        return match ControlConfig::load(path) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("{}:{w} (warning)", path.display());
                }
                println!(
                    "{}: ok (control plane on {}, store {:?})",
                    path.display(),
                    c.listen,
                    c.store
                );
                ExitCode::SUCCESS
            }
            Err(problems) => {
                eprintln!("{problems}");
                eprintln!("{}: {} problem(s)", path.display(), problems.list.len());
                ExitCode::FAILURE
            }
        };
    }
    match Config::load(path) {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("{}:{w} (warning)", path.display());
            }
            let (warnings, errors) = jwtgate::verify::keys::audit_key_files(&config.issuers);
            for w in warnings {
                eprintln!("{}: {w} (warning)", path.display());
            }
            for e in &errors {
                eprintln!("{}: {e}", path.display());
            }
            if !errors.is_empty() {
                eprintln!("{}: key files refused", path.display());
                return ExitCode::FAILURE;
            }
            println!(
                "{}: ok ({} listener(s), {} issuer(s), {} upstream(s), {} route(s))",
                path.display(),
                config.listeners.len(),
                config.issuers.len(),
                config.upstreams.len(),
                config.routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!("{problems}");
            eprintln!("{}: {} problem(s)", path.display(), problems.list.len());
            ExitCode::FAILURE
        }
    }
}

/// `(iss, jti, sid, exp)` of a compact JWT (`-`: read from standard input): the `jti` with
/// its `exp` when it has one, else its `sid`.
#[allow(clippy::type_complexity)]
fn token_ids(arg: &str) -> Result<(String, Option<String>, Option<String>, Option<u64>), String> {
    use std::io::Read;
    let mut text = arg.to_owned();
    if arg == "-" {
        text.clear();
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
    }
    let text = text.trim();
    let text = text.strip_prefix("Bearer ").unwrap_or(text);
    if text.split('.').count() != 3 {
        return Err("not a compact JWT (header.payload.signature)".into());
    }
    let claims = serde_json::Value::Object(
        jwtgate::verify::unverified_part(text, 1).ok_or("the payload is not base64url JSON")?,
    );
    let string = |k: &str| claims[k].as_str().map(str::to_owned);
    let iss = string("iss").ok_or("the token names no `iss`")?;
    match (string("jti"), claims["exp"].as_u64(), string("sid")) {
        (Some(jti), Some(exp), _) => Ok((iss, Some(jti), None, Some(exp))),
        (Some(_), None, _) => Err("the token has a `jti` but no `exp`".into()),
        (None, _, Some(sid)) => Ok((iss, None, Some(sid), None)),
        (None, _, None) => Err(format!(
            "the token has neither `jti` nor `sid`; revoke its subject with --iss {iss} --sub SUB"
        )),
    }
}

#[allow(clippy::too_many_arguments)]
async fn revoke(
    control: &str,
    key: &str,
    iss: String,
    jti: Option<String>,
    sid: Option<String>,
    sub: Option<String>,
    exp: Option<u64>,
    before: Option<u64>,
    reason: Option<String>,
) -> ExitCode {
    let mut body = serde_json::json!({ "iss": iss });
    match (jti, sid, sub) {
        (Some(j), None, None) => {
            body["jti"] = j.into();
            body["expires_at"] = exp.into();
        }
        (None, Some(s), None) => {
            body["sid"] = s.into();
            if let Some(e) = exp {
                body["expires_at"] = e.into();
            }
        }
        (None, None, Some(s)) => {
            body["sub"] = s.into();
            // Default: every token issued up to and including this second.
            body["issued_before"] = before
                .unwrap_or_else(|| jwtgate::clock::now_unix() + 1)
                .into();
        }
        _ => {
            eprintln!("jwtgate revoke: give one of --jti (with --exp), --sid or --sub");
            return ExitCode::FAILURE;
        }
    }
    if let Some(r) = reason {
        body["reason"] = r.into();
    }
    let sent = jwtgate::control::client::post_revocation(control, key, &body).await;
    answered("revoked", sent)
}

/// Print the control plane's answer; success for a 2xx.
fn answered(what: &str, sent: anyhow::Result<(u16, String)>) -> ExitCode {
    match sent {
        Ok((status, text)) if (200..300).contains(&status) => {
            println!("{what} ({status}): {text}");
            ExitCode::SUCCESS
        }
        Ok((status, text)) => {
            eprintln!("jwtgate revoke: the control plane answered {status}: {text}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("jwtgate revoke: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn delete_revocation(control: &str, key: &str, id: u64) -> ExitCode {
    let sent = jwtgate::control::client::send(
        control,
        key,
        http::Method::DELETE,
        &format!("/v1/revocations/{id}"),
        None,
    )
    .await;
    answered("deleted", sent)
}

/// Entries per request of `--file` (the API takes up to 10,000).
const FILE_BATCH: usize = 5_000;

/// Read a file of revocations (a JSON array, or one object per line).
fn read_revocations(path: &Path) -> Result<Vec<serde_json::Value>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a JSON array of revocations: {e}", path.display()));
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str(l)
                .map_err(|e| format!("{}:{}: not a JSON revocation: {e}", path.display(), n + 1))
        })
        .collect()
}

async fn revoke_file(control: &str, key: &str, path: &Path) -> ExitCode {
    let entries = match read_revocations(path) {
        Ok(e) if e.is_empty() => {
            eprintln!("jwtgate revoke: {} holds no revocations", path.display());
            return ExitCode::FAILURE;
        }
        Ok(e) => e,
        Err(e) => {
            eprintln!("jwtgate revoke: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let mut done = 0;
    for chunk in entries.chunks(FILE_BATCH) {
        let body = serde_json::Value::Array(chunk.to_vec());
        match jwtgate::control::client::post_revocation(control, key, &body).await {
            Ok((status, _)) if (200..300).contains(&status) => done += chunk.len(),
            Ok((status, text)) => {
                eprintln!(
                    "jwtgate revoke: entries {}..{} refused ({status}): {text}\n{done} of {} written before it (durable); fix the file and run again (repeats are harmless)",
                    done,
                    done + chunk.len() - 1,
                    entries.len()
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!(
                    "jwtgate revoke: {e:#}\n{done} of {} written (durable); run again to finish (repeats are harmless)",
                    entries.len()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "revoked {done} entries in {} ms",
        started.elapsed().as_millis()
    );
    ExitCode::SUCCESS
}
