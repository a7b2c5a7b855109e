//! `jwtgate control`: the control plane on its own listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::config::ControlConfig;
use crate::control::{self, ControlPlane};
use crate::metrics::{Component, Metrics};
use crate::verify;

/// A started control plane.
pub struct RunningControl {
    pub addr: SocketAddr,
    pub plane: Arc<ControlPlane>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl RunningControl {
    /// Stop serving; open streams end, background tasks get `grace` to finish.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            self.tasks.abort_all();
        }
    }
}

/// Bind, open the store, serve, on the system clock.
pub async fn start_control(config: ControlConfig) -> anyhow::Result<RunningControl> {
    start_control_with(config, Clock::system()).await
}

/// As [`start_control`], with time read from `clock`.
pub async fn start_control_with(
    config: ControlConfig,
    clock: Clock,
) -> anyhow::Result<RunningControl> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let ctx = verify::Context {
        fetcher: verify::keys::Fetcher::new(),
        metrics: Metrics::new(&[Component::Control]),
        clock,
    };
    let plane = ControlPlane::open(
        &config.store,
        config.access,
        &config.idp,
        &ctx,
        &mut tasks,
        shutdown_rx.clone(),
    )
    .await?;
    tasks.spawn(control::serve(listener, plane.clone(), shutdown_rx));
    tracing::info!(%addr, "jwtgate control serving");
    Ok(RunningControl {
        addr,
        plane,
        shutdown,
        tasks,
    })
}
