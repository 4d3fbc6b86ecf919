//! One holder's state at this gateway (`key:<id>` or `identity:<id>`): its rate-limit windows
//! and its leased credits, behind one std mutex that a request holds for a few comparisons.
//!
//! Rate limits (fixed windows aligned to Unix time): per limit, `used` (this gateway's own use
//! in the current window, exact), `others` (what the control plane last said every other
//! gateway used in it) and `reported` (own use at the last report). A cost is admitted when
//! both rules of the design hold: (1) `others + used + cost ≤ limit`, and (2) `(used −
//! reported) + cost ≤ max(1, ⌈(limit − others − reported) ÷ live gateways⌉)`, the gateway's
//! share of the room left between two reports. Cut off from the control plane, only
//! `used + cost ≤ ⌈limit ÷ live gateways⌉` counts.
//!
//! Credits: only leased credits are spent. `available` is the sum of the unspent leases, each
//! spendable until its deadline; `exhausted_until` remembers a control plane that said the
//! balance is empty, so requests meanwhile are refused without asking again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use http::HeaderValue;
use keygate_proto::{Holder, RateLimit};
use tokio::sync::Notify;

use super::{LeaseReturn, WindowUsage};

/// How long a gateway told "exhausted" refuses before it asks for credits again, ms.
pub(crate) const EXHAUSTED_FOR_MS: i64 = 1_000;
/// Largest lease a gateway asks for.
pub(crate) const MAX_WANTED: u64 = 10_000;
/// After a grant of nothing without "exhausted", the next lease request waits this long, ms.
pub(crate) const ASK_AGAIN_AFTER_MS: i64 = 200;
/// A lease request unanswered for this long no longer blocks another one, ms.
pub(crate) const LEASE_REQUEST_STALE_MS: i64 = 2_000;

/// The state of one holder, shared by every key that counts against it.
pub struct HolderState {
    holder: Holder,
    /// `holder` as the sync protocol writes it.
    name: Box<str>,
    inner: Mutex<HolderInner>,
    /// Whether the holder is in the limiter's list of holders with unreported use.
    pub(super) queued: AtomicBool,
    /// Whether the holder is in the limiter's list of holders with leases; changed only under
    /// the holder's lock, so a grant and a sweep agree.
    pub(super) listed: AtomicBool,
    /// Woken when a lease grant for this holder arrives.
    pub(super) granted: Notify,
}

impl std::fmt::Debug for HolderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HolderState")
            .field("holder", &self.name)
            .finish_non_exhaustive()
    }
}

impl HolderState {
    pub(super) fn new(holder: Holder) -> Arc<Self> {
        Arc::new(Self {
            name: holder.to_string().into_boxed_str(),
            holder,
            inner: Mutex::new(HolderInner::default()),
            queued: AtomicBool::new(false),
            listed: AtomicBool::new(false),
            granted: Notify::new(),
        })
    }

    /// Which holder this is.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// `key:<id>` or `identity:<id>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state, locked. Every change under it is a few assignments, so a panic elsewhere
    /// cannot leave it half-changed.
    pub(super) fn lock(&self) -> MutexGuard<'_, HolderInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the holder as having unreported use; true when it was not marked yet.
    #[inline]
    pub(super) fn mark_queued(&self) -> bool {
        // A load first: while marked (most requests between two reports) no write is made.
        !self.queued.load(Ordering::Acquire) && !self.queued.swap(true, Ordering::AcqRel)
    }
}

/// The mutable part of a holder.
#[derive(Default)]
pub(crate) struct HolderInner {
    pub windows: Vec<Window>,
    /// `None`: the holder has no credits (nothing to spend, nothing to check).
    pub credits: Option<Credits>,
}

/// A limit's name and `RateLimit-Policy` value, made once per distinct (name, limit, window)
/// and interned, so a status names it without touching a reference count.
///
/// **Invariant:** interned limit names are never freed: memory grows with the distinct limit
/// definitions the process has seen (like owner names), not with requests.
#[derive(Debug)]
pub(crate) struct LimitName {
    pub name: Box<str>,
    pub policy_header: HeaderValue,
}

impl LimitName {
    /// The interned name of `limit`.
    pub fn of(limit: &RateLimit) -> &'static LimitName {
        type Interned = HashMap<(String, u64, u64), &'static LimitName>;
        static INTERNED: OnceLock<Mutex<Interned>> = OnceLock::new();
        let mut interned = INTERNED
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        interned
            .entry((limit.name.clone(), limit.limit, limit.window_ms))
            .or_insert_with(|| {
                Box::leak(Box::new(LimitName {
                    name: limit.name.as_str().into(),
                    policy_header: super::headers::policy_value(
                        &limit.name,
                        limit.limit,
                        limit.window_ms,
                    ),
                }))
            })
    }
}

/// One named rate limit and its current window.
pub(crate) struct Window {
    pub def: &'static LimitName,
    pub limit: u64,
    pub window_ms: u64,
    /// Start of the current window, Unix ms, and its end (exclusive).
    pub start: i64,
    pub end: i64,
    pub used: u64,
    pub others: u64,
    pub reported: u64,
}

impl Window {
    fn new(limit: &RateLimit) -> Self {
        Self {
            def: LimitName::of(limit),
            limit: limit.limit,
            window_ms: limit.window_ms.max(1),
            start: i64::MIN,
            end: i64::MIN,
            used: 0,
            others: 0,
            reported: 0,
        }
    }

    /// Moves to the window `now` falls in, forgetting the counts of an older one. Two
    /// comparisons while `now` is in the current window (no division).
    #[inline]
    pub fn roll(&mut self, now: i64) {
        if now >= self.start && now < self.end {
            return;
        }
        self.move_to(now);
    }

    #[cold]
    fn move_to(&mut self, now: i64) {
        let window = i64::try_from(self.window_ms).unwrap_or(i64::MAX);
        let start = now - now.rem_euclid(window);
        if start != self.start {
            self.start = start;
            self.end = start.saturating_add(window);
            self.used = 0;
            self.others = 0;
            self.reported = 0;
        }
    }

    /// Whole seconds until the window ends, at least 1.
    #[inline]
    pub fn reset_secs(&self, now: i64) -> u64 {
        let left = u64::try_from(self.end.saturating_sub(now)).unwrap_or(0);
        left.div_ceil(1000).max(1)
    }

    /// The status the headers show for this limit with `remaining` left.
    pub fn status(&self, remaining: u64, now: i64) -> RateLimitStatus {
        RateLimitStatus {
            def: self.def,
            limit: self.limit,
            remaining,
            reset_secs: self.reset_secs(now),
        }
    }
}

/// How the gateway stands with the control plane, for the rules.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinkView {
    pub cut_off: bool,
    pub live_gateways: u64,
}

/// Why a window refused a cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WindowRefusal {
    /// Rule 1 (or the cut-off share): retry when the window ends.
    Full { retry_after_secs: u64 },
    /// Rule 2 alone: this gateway used its share; a report goes out at once.
    Share,
}

/// What the headers say about one limit: its policy, what is left and when it resets.
#[derive(Clone, Debug)]
pub struct RateLimitStatus {
    pub(crate) def: &'static LimitName,
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    pub(crate) reset_secs: u64,
}

impl RateLimitStatus {
    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// Units per window.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Units left in the current window.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Seconds until the window ends.
    pub fn reset_secs(&self) -> u64 {
        self.reset_secs
    }
}

/// The tightest limit seen so far: which holder (0: the key's, 1: its identity's) and window,
/// with what is left. Numbers only; the status is made once, for the one that wins.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tightest {
    pub holder: usize,
    pub window: usize,
    pub remaining: u64,
    pub limit: u64,
}

/// Keeps the tightest of the limits offered (least left relative to the limit).
#[inline]
fn keep_tightest(tightest: &mut Option<Tightest>, offered: Tightest) {
    let tighter = match tightest {
        None => true,
        Some(current) => {
            u128::from(offered.remaining) * u128::from(current.limit)
                < u128::from(current.remaining) * u128::from(offered.limit)
        }
    };
    if tighter {
        *tightest = Some(offered);
    }
}

/// Credits leased to this gateway for one holder.
#[derive(Default)]
pub(crate) struct Credits {
    pub leases: Vec<Lease>,
    /// Sum of `leases[..].unspent`.
    pub available: u64,
    /// Until then (Unix ms) the control plane is taken at its word that nothing is left.
    pub exhausted_until: i64,
    /// The lease request in flight: its id and when it was sent (Unix ms).
    pub in_flight: Option<(u64, i64)>,
    /// No lease request before this (Unix ms): set when a grant of nothing came without
    /// "exhausted" (the control plane could not lease), so waiting requests do not ask in a
    /// tight loop.
    pub ask_again_at: i64,
    /// Size of the last grant, for prefetching.
    pub last_grant: u64,
    /// Spend-rate estimate: credits spent in the current and the previous second (the current
    /// one starting at `second_start`, Unix ms).
    pub second_start: i64,
    pub spent_this_second: u64,
    pub spent_last_second: u64,
}

/// One block of credits leased to this gateway.
pub(crate) struct Lease {
    pub id: String,
    pub unspent: u64,
    /// Spendable before this instant, Unix ms.
    pub deadline: i64,
}

/// What the credits of a holder say about a cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CreditCheck {
    Enough,
    Exhausted,
    /// Nothing to spend and the stream is down: credits cannot be proven.
    Unprovable,
    NeedLease,
}

impl Credits {
    /// Gives back the leases whose deadline has passed.
    pub fn expire(&mut self, now: i64, holder: &str, returns: &mut Vec<LeaseReturn>) {
        if self.leases.iter().all(|lease| lease.deadline > now) {
            return;
        }
        self.leases.retain_mut(|lease| {
            if lease.deadline > now {
                return true;
            }
            returns.push(LeaseReturn {
                lease_id: std::mem::take(&mut lease.id),
                holder: holder.to_owned(),
                unspent: lease.unspent,
            });
            false
        });
        self.available = self.leases.iter().map(|lease| lease.unspent).sum();
    }

    /// Whether `cost` can be spent now.
    #[inline]
    pub fn check(&self, cost: u64, now: i64, connected: bool) -> CreditCheck {
        if cost == 0 || self.available >= cost {
            CreditCheck::Enough
        } else if self.exhausted_until > now {
            CreditCheck::Exhausted
        } else if !connected {
            CreditCheck::Unprovable
        } else {
            CreditCheck::NeedLease
        }
    }

    /// Spends `cost` (checked before), the leases that expire first first.
    #[inline]
    pub fn spend(&mut self, cost: u64, now: i64, holder: &str, returns: &mut Vec<LeaseReturn>) {
        if cost == 0 {
            return;
        }
        if now < self.second_start || now >= self.second_start.saturating_add(1000) {
            self.next_second(now);
        }
        self.spent_this_second = self.spent_this_second.saturating_add(cost);
        self.available -= cost;
        let mut left = cost;
        // Leases are kept in the order they arrived, which is their deadline order.
        for lease in &mut self.leases {
            let taken = left.min(lease.unspent);
            lease.unspent -= taken;
            left -= taken;
            if left == 0 {
                break;
            }
        }
        // A lease spent to nothing is given back at once with 0 unspent: the control plane
        // closes it, so what it counts as leased is what gateways can still spend.
        if self.leases.first().is_some_and(|lease| lease.unspent == 0) {
            self.leases.retain_mut(|lease| {
                if lease.unspent > 0 {
                    return true;
                }
                returns.push(LeaseReturn {
                    lease_id: std::mem::take(&mut lease.id),
                    holder: holder.to_owned(),
                    unspent: 0,
                });
                false
            });
        }
    }

    /// Moves the spend-rate estimate to the second `now` falls in.
    #[cold]
    fn next_second(&mut self, now: i64) {
        let start = now - now.rem_euclid(1000);
        self.spent_last_second = if start == self.second_start.saturating_add(1000) {
            self.spent_this_second
        } else {
            0
        };
        self.second_start = start;
        self.spent_this_second = 0;
    }

    /// How much to ask for: about one second of spending, at least `cost`, at most
    /// [`MAX_WANTED`] (unless one request costs more).
    pub fn wanted(&self, cost: u64) -> u64 {
        let rate = self.spent_last_second.max(self.spent_this_second);
        rate.clamp(1, MAX_WANTED).max(cost)
    }

    /// Whether a lease request may be sent now (none in flight, or the one in flight is old).
    pub fn may_request(&self, now: i64) -> bool {
        now >= self.ask_again_at
            && self
                .in_flight
                .is_none_or(|(_, sent)| now.saturating_sub(sent) >= LEASE_REQUEST_STALE_MS)
    }

    /// Whether to ask for more before running out: less than half the last grant is left.
    pub fn wants_prefetch(&self, now: i64) -> bool {
        self.last_grant > 0
            && self.available < self.last_grant / 2
            && self.exhausted_until <= now
            && self.may_request(now)
    }
}

impl HolderInner {
    /// Replaces the holder's definition, keeping the counts of limits that stay (same name
    /// and window). Leases of a holder that no longer has credits are given back.
    pub fn define(
        &mut self,
        ratelimits: &[RateLimit],
        credits: bool,
        holder: &str,
        returns: &mut Vec<LeaseReturn>,
    ) {
        let mut windows = Vec::with_capacity(ratelimits.len());
        for limit in ratelimits {
            let kept = self.windows.iter().position(|window| {
                *window.def.name == *limit.name && window.window_ms == limit.window_ms
            });
            let mut window = Window::new(limit);
            if let Some(index) = kept {
                let old = &self.windows[index];
                window.start = old.start;
                window.end = old.end;
                window.used = old.used;
                window.others = old.others;
                window.reported = old.reported;
            }
            windows.push(window);
        }
        self.windows = windows;
        match (credits, &mut self.credits) {
            (true, None) => self.credits = Some(Credits::default()),
            (false, Some(_)) => {
                if let Some(old) = self.credits.take() {
                    return_all(old, holder, returns);
                }
            }
            _ => {}
        }
    }

    /// Checks `cost` against every window (after moving them to `now`'s window), keeping the
    /// tightest status for the headers. Nothing is changed but the windows' positions.
    #[inline]
    pub fn check_windows(
        &mut self,
        holder: usize,
        cost: u64,
        now: i64,
        link: LinkView,
        tightest: &mut Option<Tightest>,
    ) -> Result<(), WindowRefusal> {
        let mut refusal: Option<WindowRefusal> = None;
        for (index, window) in self.windows.iter_mut().enumerate() {
            window.roll(now);
            let (admitted, full, remaining) = if link.cut_off {
                let share = window.limit.div_ceil(link.live_gateways.max(1));
                let after = window.used.saturating_add(cost);
                (after <= share, true, share.saturating_sub(window.used))
            } else {
                let total = window.others.saturating_add(window.used);
                let rule1 = total.saturating_add(cost) <= window.limit;
                let room = window
                    .limit
                    .saturating_sub(window.others)
                    .saturating_sub(window.reported);
                let share = if link.live_gateways <= 1 {
                    room.max(1)
                } else {
                    room.div_ceil(link.live_gateways).max(1)
                };
                let unreported = window.used.saturating_sub(window.reported);
                let rule2 = unreported.saturating_add(cost) <= share;
                (rule1 && rule2, !rule1, window.limit.saturating_sub(total))
            };
            let offered = Tightest {
                holder,
                window: index,
                remaining,
                limit: window.limit,
            };
            if admitted {
                keep_tightest(
                    tightest,
                    Tightest {
                        remaining: remaining.saturating_sub(cost),
                        ..offered
                    },
                );
                continue;
            }
            keep_tightest(tightest, offered);
            let this = if full {
                WindowRefusal::Full {
                    retry_after_secs: window.reset_secs(now),
                }
            } else {
                WindowRefusal::Share
            };
            refusal = Some(match (refusal, this) {
                (
                    Some(WindowRefusal::Full {
                        retry_after_secs: a,
                    }),
                    WindowRefusal::Full {
                        retry_after_secs: b,
                    },
                ) => WindowRefusal::Full {
                    retry_after_secs: a.max(b),
                },
                (Some(full @ WindowRefusal::Full { .. }), WindowRefusal::Share) => full,
                (_, this) => this,
            });
        }
        match refusal {
            None => Ok(()),
            Some(refusal) => Err(refusal),
        }
    }

    /// Counts `cost` in every window (checked before).
    #[inline]
    pub fn count(&mut self, cost: u64) {
        for window in &mut self.windows {
            window.used = window.used.saturating_add(cost);
        }
    }

    /// The windows with use not reported yet, marked reported.
    pub fn take_report(&mut self, holder: &str, out: &mut Vec<WindowUsage>) {
        for window in &mut self.windows {
            if window.used != window.reported {
                window.reported = window.used;
                out.push(WindowUsage {
                    holder: holder.to_owned(),
                    limit: window.def.name.to_string(),
                    window_start_unix_ms: window.start,
                    used: window.used,
                });
            }
        }
    }
}

/// Every lease of `credits`, as returns.
pub(crate) fn return_all(credits: Credits, holder: &str, returns: &mut Vec<LeaseReturn>) {
    for lease in credits.leases {
        returns.push(LeaseReturn {
            lease_id: lease.id,
            holder: holder.to_owned(),
            unspent: lease.unspent,
        });
    }
}
