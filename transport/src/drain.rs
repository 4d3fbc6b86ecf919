//! Serving connections so that shutdown can drain them: every connection runs in a tracked
//! task; [`Connections::drain`] asks each to finish its in-flight requests (HTTP/1 closes after
//! the current response, HTTP/2 sends GOAWAY), waits up to a grace period, then drops whatever
//! is still open. The connection's slot (its accept permit) is released when its task ends.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activity::{Activity, IdleLimits, Verdict, Watchdog};

/// A served connection that can be asked to finish what it is doing and close: hyper's
/// connections ([`GracefulConnection`], which hyper-util seals), and a server's own.
pub trait Graceful: Future<Output = Result<(), Self::Error>> {
    type Error;

    /// Finish the request in flight, if any, then close. [`Connections`] polls the connection
    /// right after asking, so an implementation may act on the request in its next poll.
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<C: GracefulConnection> Graceful for C {
    type Error = <C as GracefulConnection>::Error;

    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        GracefulConnection::graceful_shutdown(self);
    }
}

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
        C: Graceful + Send + 'static,
        C::Error: Display + Send,
    {
        self.spawn_watched::<C, Activity>(connection, remote, permit, None);
    }

    /// Like [`Connections::spawn`], and with `watch`, closes the connection when the service
    /// reports no first request within `first_request` of `since` (the accept: dropped), an
    /// HTTP/1 head not complete within `head` of its first byte (dropped), or no request for
    /// `idle` (closed gracefully, so a response still streaming finishes).
    /// `A` is whatever per-connection state the service keeps its [`Activity`] in.
    pub fn spawn_watched<C, A>(
        &self,
        connection: C,
        remote: SocketAddr,
        permit: OwnedSemaphorePermit,
        watch: Option<(Arc<A>, IdleLimits, tokio::time::Instant)>,
    ) where
        C: Graceful + Send + 'static,
        C::Error: Display + Send,
        A: AsRef<Activity> + Send + Sync + 'static,
    {
        let (drain, close) = (self.drain.clone(), self.close.clone());
        self.tasks.spawn(async move {
            let result = watched(connection, &drain, &close, watch, remote).await;
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

/// Runs `connection` until it ends (`Some`) or is dropped (`None`): at the end of the shutdown
/// grace, or when the watchdog finds it never spoke. Shutdown and an idle verdict ask it to
/// finish gracefully.
///
/// The drain and close tokens and the watchdog's timer are polled with a waker of their own
/// ([`Events`]), and only after one of them has woken it: a connection task wakes a few times
/// per request, and polling three more futures on each wake (a lock each for the tokens, the
/// timer's state) cost more than the request's own I/O readiness checks (BENCHMARKS.md).
async fn watched<C, A>(
    connection: C,
    drain: &CancellationToken,
    close: &CancellationToken,
    watch: Option<(Arc<A>, IdleLimits, tokio::time::Instant)>,
    remote: SocketAddr,
) -> Option<Result<(), C::Error>>
where
    C: Graceful,
    A: AsRef<Activity>,
{
    let mut connection = std::pin::pin!(connection);
    let mut drained = std::pin::pin!(drain.cancelled());
    let mut closed = std::pin::pin!(close.cancelled());
    let first_check = watch
        .as_ref()
        .map(|(_, limits, since)| *since + limits.first_request);
    let mut check = std::pin::pin!(tokio::time::sleep_until(
        first_check.unwrap_or_else(far_future)
    ));
    let mut checking = first_check.is_some();
    let events = Arc::new(Events::default());
    let events_waker = Waker::from(Arc::clone(&events));
    let mut watchdog = Watchdog::new();
    let (mut finishing, mut registered) = (false, false);
    std::future::poll_fn(|cx| {
        events.task.register(cx.waker());
        if !registered || events.fired.swap(false, Ordering::AcqRel) {
            registered = true;
            let mut events_cx = Context::from_waker(&events_waker);
            if !finishing && drained.as_mut().poll(&mut events_cx).is_ready() {
                finishing = true;
                connection.as_mut().graceful_shutdown();
            }
            if closed.as_mut().poll(&mut events_cx).is_ready() {
                return Poll::Ready(None);
            }
            if checking
                && check.as_mut().poll(&mut events_cx).is_ready()
                && let Some((activity, limits, _)) = &watch
            {
                let now = tokio::time::Instant::now();
                match watchdog.check(activity.as_ref().as_ref(), limits, now) {
                    Verdict::Busy(next) => {
                        check.as_mut().reset(next);
                        // Registers the events waker for the new deadline.
                        let _ = check.as_mut().poll(&mut events_cx);
                    }
                    Verdict::NeverSpoke => {
                        tracing::debug!(%remote, deadline = ?limits.first_request, "no request in time; closing");
                        return Poll::Ready(None);
                    }
                    Verdict::SlowHead => {
                        tracing::debug!(%remote, deadline = ?limits.head, "request head not complete in time; closing");
                        return Poll::Ready(None);
                    }
                    Verdict::Idle => {
                        tracing::debug!(%remote, idle = ?limits.idle, "idle; closing");
                        checking = false;
                        if !finishing {
                            finishing = true;
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        }
        connection.as_mut().poll(cx).map(Some)
    })
    .await
}

/// A deadline that never comes, for a connection without a watchdog.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

/// The waker the drain and close tokens and the watchdog's timer get: it notes that one of them
/// fired and wakes the connection's task.
#[derive(Default)]
struct Events {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Events {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}
