//! The life of a `serve` or `control` process: load the file (a bad one stops here, before
//! any port is bound), start, reload on SIGHUP or edit, drain on SIGTERM/SIGINT.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ControlConfig, Problems};

/// A configuration that fails validation: print every problem, start nothing.
fn refuse(path: &Path, problems: &Problems) -> ExitCode {
    eprintln!("{problems}");
    eprintln!(
        "jwtgate: refusing to start: {} problem(s) in {}",
        problems.list.len(),
        path.display()
    );
    ExitCode::FAILURE
}

/// `jwtgate serve -c FILE`.
pub async fn run_gateway(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(problems) => return refuse(path, &problems),
    };
    crate::logging::init(&config.log);
    for w in &config.warnings {
        tracing::warn!(file = %path.display(), "{w}");
    }
    // A key file that can never verify a token (or one anybody can sign for) is refused
    // before binding, as `jwtgate check` refuses it.
    let (warnings, errors) = crate::verify::keys::audit_key_files(&config.issuers);
    warnings.iter().for_each(|w| tracing::warn!("{w}"));
    if let Some(e) = errors.first() {
        tracing::error!("{e}");
        eprintln!("jwtgate: {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    let running = match super::start_gateway(config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("jwtgate: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // SIGHUP or an edit of the file reloads it; a broken file is refused.
    let mut running = Arc::new(running);
    running.watch_config(path.to_path_buf());
    wait_for_signal().await;
    let running = loop {
        match Arc::try_unwrap(running) {
            Ok(r) => break r,
            // A reload holds a moment's reference; wait for it to finish.
            Err(r) => {
                running = r;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let grace = running.current().config.shutdown_grace;
    tracing::info!(
        grace_s = grace.as_secs(),
        "shutting down: no new connections; in-flight requests may finish"
    );
    running.shutdown(grace).await;
    ExitCode::SUCCESS
}

/// `jwtgate control -c FILE`.
pub async fn run_control(path: &Path) -> ExitCode {
    let config = match ControlConfig::load(path) {
        Ok(c) => c,
        Err(problems) => return refuse(path, &problems),
    };
    crate::logging::init(&config.log);
    let running = match super::start_control(config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("jwtgate control: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.shutdown(Duration::from_secs(10)).await;
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
