//! The one shutdown path of the server commands: the first SIGTERM or Ctrl-C starts a graceful
//! drain, a second one exits at once.

use tokio::sync::watch;

/// A future that resolves on the first SIGTERM / SIGINT, and a background task that exits the
/// process on the second.
pub fn on_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    let (tx, mut rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining in-flight requests (signal again to exit now)");
        let _ = tx.send(true);
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// A shared shutdown trigger for several servers in one process (`keygate dev`, tests).
pub fn fan_out(
    trigger: impl std::future::Future<Output = ()> + Send + 'static,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        trigger.await;
        let _ = tx.send(true);
    });
    rx
}

/// Resolves when `rx` says stop (or its sender is gone).
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
