use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jwtgate::config::Config;

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
        Command::Serve { config } => runtime.block_on(serve(&config)),
        Command::Dev { port } => match runtime.block_on(jwtgate::dev::run(port)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("jwtgate dev: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(path: &Path) -> ExitCode {
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

async fn serve(path: &Path) -> ExitCode {
    // A bad config stops here, before any port is bound.
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            eprintln!("{problems}");
            eprintln!(
                "jwtgate: refusing to start: {} problem(s) in {}",
                problems.list.len(),
                path.display()
            );
            return ExitCode::FAILURE;
        }
    };
    jwtgate::logging::init(&config.log);
    for w in &config.warnings {
        tracing::warn!(file = %path.display(), "{w}");
    }
    let running = match jwtgate::server::start(config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("jwtgate: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.shutdown(Duration::from_secs(30)).await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
