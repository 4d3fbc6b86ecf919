//! Serving connections so that shutdown can drain them: every connection runs in a tracked
//! task; [`Connections::drain`] asks each to finish its in-flight requests (HTTP/1 closes after
//! the current response, HTTP/2 sends GOAWAY), waits up to a grace period, then drops whatever
//! is still open. The connection's slot (its accept permit) is released when its task ends.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activity::{Activity, IdleLimits, Verdict, Watchdog};

/// The open connections of one listener.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    tasks: TaskTracker,
    /// Cancelled when draining starts: connections finish what they are doing.
    drain: CancellationToken,
    /// Cancelled when the grace period is over: connections are dropped.
    close: CancellationToken,
}

impl Connections {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `connection` in its own task until it ends, shutdown drains it, or the grace
    /// period runs out.
    pub fn spawn<C>(&self, connection: C, remote: SocketAddr, permit: OwnedSemaphorePermit)
    where
        C: GracefulConnection + Send + 'static,
        C::Error: Display + Send,
    {
        self.spawn_watched::<C, Activity>(connection, remote, permit, None);
    }

    /// Like [`Connections::spawn`], and with `watch`, closes the connection when the service
    /// reports no first request within `first_request` of `since` (the accept: dropped) or no
    /// request for `idle` (closed gracefully, so a response still streaming finishes).
    /// `A` is whatever per-connection state the service keeps its [`Activity`] in.
    pub fn spawn_watched<C, A>(
        &self,
        connection: C,
        remote: SocketAddr,
        permit: OwnedSemaphorePermit,
        watch: Option<(Arc<A>, IdleLimits, tokio::time::Instant)>,
    ) where
        C: GracefulConnection + Send + 'static,
        C::Error: Display + Send,
        A: AsRef<Activity> + Send + Sync + 'static,
    {
        let (drain, close) = (self.drain.clone(), self.close.clone());
        self.tasks.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let mut watchdog = Watchdog::new();
            let mut next_check = watch
                .as_ref()
                .map(|(_, limits, since)| *since + limits.first_request);
            let result = loop {
                let check = async {
                    match next_check {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    result = connection.as_mut() => break Some(result),
                    () = drain.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        break tokio::select! {
                            result = connection.as_mut() => Some(result),
                            () = close.cancelled() => None,
                        };
                    }
                    () = check => {
                        let Some((activity, limits, _)) = &watch else { continue };
                        match watchdog.check(activity.as_ref().as_ref()) {
                            Verdict::Busy => {
                                next_check = Some(tokio::time::Instant::now() + limits.idle);
                            }
                            Verdict::NeverSpoke => {
                                tracing::debug!(%remote, deadline = ?limits.first_request, "no request in time; closing");
                                break None;
                            }
                            Verdict::Idle => {
                                tracing::debug!(%remote, idle = ?limits.idle, "idle; closing");
                                connection.as_mut().graceful_shutdown();
                                break tokio::select! {
                                    result = connection.as_mut() => Some(result),
                                    () = close.cancelled() => None,
                                };
                            }
                        }
                    }
                }
            };
            if let Some(Err(error)) = result {
                tracing::debug!(%remote, %error, "connection ended with an error");
            }
            drop(permit);
        });
    }

    /// Asks every connection to finish and waits up to `grace` for them; then drops the rest.
    /// Returns whether all finished in time.
    pub async fn drain(self, listener: &'static str, grace: Duration) -> bool {
        self.drain.cancel();
        self.tasks.close();
        let drained = tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
        if !drained {
            tracing::warn!(
                listener,
                ?grace,
                "shutdown grace elapsed; closing remaining connections"
            );
        }
        self.close.cancel();
        drained
    }
}
