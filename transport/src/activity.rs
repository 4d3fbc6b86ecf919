//! Deadlines for connections that do nothing, or too little:
//! - the first request's head must arrive within `first_request` of accept (this covers a
//!   silent client, one that sends `PRI` and stops during protocol detection, and an HTTP/2
//!   client that sends its preface and never opens a stream): dropped;
//! - on HTTP/1, each later head must be complete within `head` of its first byte (a slowloris
//!   head on a kept-alive connection): dropped;
//! - a connection with no request in flight and nothing arriving for `idle` is closed
//!   gracefully (keep-alive idle, HTTP/1 and HTTP/2 alike).
//!
//! Per request this costs relaxed atomic operations on per-connection counters and one clock
//! read, when the first bytes of a head arrive; no timer. The one timer per connection fires
//! once per period (the shorter of `head` and `idle`) and is re-armed then. So the idle close
//! comes between `idle` and `idle` plus a period after the last request ended, and a head that
//! stalls is dropped `head` after its first byte.
//!
//! Before, hyper's own head deadline did the HTTP/1 part: a timer allocated, registered and
//! removed for every request, started when hyper began waiting for the next head, so that an
//! idle keep-alive connection was closed after `head` (10 s) rather than `idle` (60 s).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// How long a connection may do nothing.
#[derive(Debug, Clone, Copy)]
pub struct IdleLimits {
    /// From accept to the first request's head.
    pub first_request: Duration,
    /// HTTP/1: from a later head's first byte to its end.
    pub head: Duration,
    /// With no request in flight (keep-alive idle).
    pub idle: Duration,
}

impl IdleLimits {
    /// How often the watchdog looks: often enough to drop a stalled head on time.
    fn period(&self) -> Duration {
        self.idle.min(self.head).max(Duration::from_millis(1))
    }
}

/// Requests started and finished on one connection, and when the head being read began.
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
    /// The connection speaks HTTP/1: heads are timed.
    http1: AtomicBool,
    /// When the first byte of a head arrived while no request was in flight, in nanoseconds
    /// since [`epoch`] plus one; 0 while none is being read.
    head_since: AtomicU64,
}

impl Activity {
    /// A request's head has arrived.
    #[inline]
    pub fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    /// A request has been answered (its response head produced).
    #[inline]
    pub fn finished(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// The connection speaks HTTP/1 (said by the service with each request; only the first
    /// time writes).
    #[inline]
    pub fn http1(&self) {
        if !self.http1.load(Ordering::Relaxed) {
            self.http1.store(true, Ordering::Relaxed);
        }
    }

    /// Bytes arrived from the client. On HTTP/1 with no request in flight they are the start of
    /// the next head: its deadline starts now.
    #[inline]
    pub fn bytes_arrived(&self) {
        if self.http1.load(Ordering::Relaxed)
            && self.head_since.load(Ordering::Relaxed) == 0
            && self.snapshot().1
        {
            self.head_since
                .store(since_epoch(Instant::now()), Ordering::Relaxed);
        }
    }

    /// Requests started so far, and whether none is in flight.
    pub(crate) fn snapshot(&self) -> (u64, bool) {
        let started = self.started.load(Ordering::Relaxed);
        let finished = self.finished.load(Ordering::Relaxed);
        (started, finished >= started)
    }

    /// When the head being read began, if one is.
    fn head_since(&self) -> Option<Instant> {
        match self.head_since.load(Ordering::Relaxed) {
            0 => None,
            stamp => Some(epoch() + Duration::from_nanos(stamp - 1)),
        }
    }
}

impl AsRef<Activity> for Activity {
    fn as_ref(&self) -> &Activity {
        self
    }
}

/// The instant head times are counted from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch(at: Instant) -> u64 {
    let nanos = at.saturating_duration_since(epoch()).as_nanos();
    u64::try_from(nanos)
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

/// A connection's stream that tells its [`Activity`] when bytes arrive.
#[derive(Debug)]
pub struct Reading<S, A> {
    stream: S,
    activity: Arc<A>,
}

impl<S, A> Reading<S, A> {
    pub fn new(stream: S, activity: Arc<A>) -> Self {
        Self { stream, activity }
    }
}

impl<S: AsyncRead + Unpin, A: AsRef<Activity>> AsyncRead for Reading<S, A> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.as_ref().as_ref().bytes_arrived();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin, A> AsyncWrite for Reading<S, A> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// What the watchdog decides at a check.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Something is happening, or not for long enough yet: check again at this instant.
    Busy(Instant),
    /// No first request within the deadline: drop the connection.
    NeverSpoke,
    /// An HTTP/1 head was not complete within `head` of its first byte: drop the connection.
    SlowHead,
    /// Nothing for `idle`: close gracefully.
    Idle,
}

/// Tracks one connection between checks.
#[derive(Debug)]
pub(crate) struct Watchdog {
    /// Requests started at the last check.
    seen: Option<u64>,
    /// Checks in a row that found nothing in flight, nothing new and no head arriving.
    quiet_checks: u32,
}

impl Watchdog {
    pub fn new() -> Self {
        Self {
            seen: None,
            quiet_checks: 0,
        }
    }

    /// Judges the connection at a check made at `now`.
    pub fn check(&mut self, activity: &Activity, limits: &IdleLimits, now: Instant) -> Verdict {
        let (started, quiet) = activity.snapshot();
        let first_check = self.seen.is_none();
        let unchanged = self.seen == Some(started);
        self.seen = Some(started);
        if first_check && started == 0 {
            return Verdict::NeverSpoke;
        }
        let head_since = if quiet { activity.head_since() } else { None };
        if let Some(since) = head_since {
            self.quiet_checks = 0;
            let deadline = since + limits.head;
            return if now >= deadline {
                Verdict::SlowHead
            } else {
                Verdict::Busy(deadline)
            };
        }
        if quiet && unchanged {
            self.quiet_checks += 1;
            if limits.period() * self.quiet_checks >= limits.idle {
                return Verdict::Idle;
            }
        } else {
            self.quiet_checks = 0;
        }
        Verdict::Busy(now + limits.period())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: IdleLimits = IdleLimits {
        first_request: Duration::from_secs(10),
        head: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_judged_by_what_happened_between_checks() {
        let activity = Activity::default();
        let now = Instant::now();
        assert_eq!(
            Watchdog::new().check(&activity, &LIMITS, now),
            Verdict::NeverSpoke
        );

        let mut watchdog = Watchdog::new();
        activity.started();
        let period = Duration::from_secs(10);
        assert_eq!(
            watchdog.check(&activity, &LIMITS, now),
            Verdict::Busy(now + period)
        );
        // Still in flight a period later (a slow upstream): not idle.
        assert_eq!(
            watchdog.check(&activity, &LIMITS, now),
            Verdict::Busy(now + period)
        );
        activity.finished();
        // Answered, and then nothing: idle once `idle` worth of quiet checks have passed.
        for _ in 0..5 {
            assert!(matches!(
                watchdog.check(&activity, &LIMITS, now),
                Verdict::Busy(_)
            ));
        }
        assert_eq!(watchdog.check(&activity, &LIMITS, now), Verdict::Idle);
        // A new request starts the count again.
        activity.started();
        activity.finished();
        assert!(matches!(
            watchdog.check(&activity, &LIMITS, now),
            Verdict::Busy(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_head_must_be_complete_within_its_deadline() {
        let activity = Activity::default();
        let mut watchdog = Watchdog::new();
        activity.started();
        activity.http1();
        activity.finished();
        let start = Instant::now();
        assert_eq!(
            watchdog.check(&activity, &LIMITS, start),
            Verdict::Busy(start + Duration::from_secs(10))
        );
        // The next head's first bytes arrive 3 s later: its deadline is 10 s from then.
        tokio::time::advance(Duration::from_secs(3)).await;
        activity.bytes_arrived();
        let deadline = Instant::now() + LIMITS.head;
        assert_eq!(
            watchdog.check(&activity, &LIMITS, start + Duration::from_secs(10)),
            Verdict::Busy(deadline)
        );
        assert_eq!(
            watchdog.check(&activity, &LIMITS, deadline),
            Verdict::SlowHead
        );
        // A head that completes in time clears the deadline.
        activity.started();
        assert!(matches!(
            watchdog.check(&activity, &LIMITS, deadline),
            Verdict::Busy(_)
        ));
        // Bytes while a request is in flight (its body) are not a head.
        activity.bytes_arrived();
        activity.finished();
        assert_eq!(activity.head_since(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_bytes_between_requests_start_no_head_deadline() {
        let activity = Activity::default();
        activity.started();
        activity.finished();
        activity.bytes_arrived();
        assert_eq!(activity.head_since(), None);
    }
}
