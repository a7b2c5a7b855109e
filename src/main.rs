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
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the control plane (revocation store and API).
    Control {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Revoke a token (`--jti`), a session (`--sid`) or a subject's tokens (`--sub`).
    Revoke {
        /// The control plane (or a single-node gateway's admin listener), e.g. http://127.0.0.1:9901.
        #[arg(long, value_name = "URL")]
        control: String,
        /// The issuer (`iss`) of the tokens to revoke.
        #[arg(long)]
        iss: String,
        #[arg(long, group = "what", requires = "exp")]
        jti: Option<String>,
        #[arg(long, group = "what")]
        sid: Option<String>,
        #[arg(long, group = "what")]
        sub: Option<String>,
        /// With --jti: the token's `exp` (Unix seconds). With --sid: when to forget the session.
        #[arg(long, value_name = "UNIX_SECONDS")]
        exp: Option<u64>,
        /// With --sub: revoke tokens issued before this time (Unix seconds; default: every
        /// token issued so far, this second included).
        #[arg(long, value_name = "UNIX_SECONDS")]
        before: Option<u64>,
        #[arg(long)]
        reason: Option<String>,
        /// Environment variable holding the writer API key.
        #[arg(long, default_value = "JWTGATE_API_KEY")]
        key_env: String,
    },
    /// Validate a configuration file offline; exit status 0 when it is valid.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Everything on loopback in one process for a first look.
    Dev {
        /// Gateway port (falls back to a free one when taken).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

fn main() -> ExitCode {
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
        Command::Revoke {
            control,
            iss,
            jti,
            sid,
            sub,
            exp,
            before,
            reason,
            key_env,
        } => runtime.block_on(revoke(
            &control, iss, jti, sid, sub, exp, before, reason, &key_env,
        )),
        Command::Serve { config } => runtime.block_on(jwtgate::app::run_gateway(&config)),
        Command::Dev { port } => match runtime.block_on(jwtgate::dev::run(port)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("jwtgate dev: {e:#}");
                ExitCode::FAILURE
            }
        },
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

#[allow(clippy::too_many_arguments)]
async fn revoke(
    control: &str,
    iss: String,
    jti: Option<String>,
    sid: Option<String>,
    sub: Option<String>,
    exp: Option<u64>,
    before: Option<u64>,
    reason: Option<String>,
    key_env: &str,
) -> ExitCode {
    let Ok(key) = std::env::var(key_env) else {
        eprintln!("jwtgate revoke: set {key_env} to a writer API key of the control plane");
        return ExitCode::FAILURE;
    };
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
    match jwtgate::control::client::post_revocation(control, &key, &body).await {
        Ok((status, text)) if (200..300).contains(&status) => {
            println!("revoked ({status}): {text}");
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
