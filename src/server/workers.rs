//! The threads that serve client connections. Each runs its own single-threaded runtime
//! and accepts from every listener, so a connection, its requests and its upstream
//! exchanges stay on one thread: no work stealing, no cross-thread wake-ups on the hop
//! (about a tenth of the CPU per proxied request, measured against one multi-threaded
//! runtime). Background work (key refresh, revocation sync, the admin listener) stays on
//! the main runtime.

use std::sync::Arc;

use anyhow::Context;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::conn::{Conns, Deadlines};
use super::Current;

/// What every worker serves with.
#[derive(Clone)]
pub struct Shared {
    pub current: Current,
    pub builder: auto::Builder<TokioExecutor>,
    pub conns: Arc<Conns>,
    pub deadlines: Deadlines,
}

type Listener = (std::net::TcpListener, super::Listening);

/// Start `count` workers on `listeners`. Each is represented in `tasks` by a task that ends
/// when the worker has stopped: after `shutdown`, once every connection has closed. If
/// that task is dropped (the caller's grace ran out, or it went away), the worker stops at
/// once, closing what it still holds.
pub fn spawn(
    count: usize,
    listeners: &[Listener],
    shared: &Shared,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    for i in 0..count {
        let mine = listeners
            .iter()
            .map(|(l, how)| Ok((l.try_clone()?, how.clone())))
            .collect::<std::io::Result<Vec<Listener>>>()
            .context("cannot share a listener with a worker")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a worker runtime")?;
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name(format!("jwtgate-worker-{i}"))
            .spawn(move || {
                crate::upstream::pool::set_worker(i, count);
                runtime.block_on(work(mine, shared, shutdown, stop_rx));
                drop(runtime);
                let _ = done_tx.send(());
            })
            .context("cannot start a worker thread")?;
        tasks.spawn(async move {
            let _stop = stop_tx;
            let _ = done_rx.await;
        });
    }
    Ok(())
}

async fn work(
    listeners: Vec<Listener>,
    shared: Shared,
    shutdown: watch::Receiver<bool>,
    stop: oneshot::Receiver<()>,
) {
    let mut loops = JoinSet::new();
    for (listener, how) in listeners {
        match TcpListener::from_std(listener) {
            Ok(l) => {
                loops.spawn(super::accept_loop(
                    l,
                    shared.current.clone(),
                    shared.builder.clone(),
                    shared.conns.clone(),
                    (how, shared.deadlines),
                    shutdown.clone(),
                ));
            }
            Err(e) => tracing::error!(error = %e, "a worker cannot use a listener"),
        }
    }
    let drained = async {
        while loops.join_next().await.is_some() {}
        // Upgraded connections (WebSockets) outlive their HTTP exchange and run here too.
        shared.conns.all_closed().await;
    };
    tokio::select! {
        _ = drained => {}
        _ = stop => {}
    }
}
