//! The usage aggregator: what every gateway connected here used in the current window of each
//! holder's rate limit, and which gateway must hear what the others used.
//!
//! Gateways report absolute counts per window (a lost or repeated report does no harm), so the
//! aggregator keeps, per (holder, limit) and gateway, the largest count reported for the
//! current window, and their sum. A report of a later window replaces the earlier one; a
//! report of an earlier window is ignored. A gateway is owed an update for a window when what
//! the others used there differs from what it was last sent; [`Usage::take_update`] hands it
//! over, and the caller paces the pushes.
//!
//! With several replicas, what this replica's gateways reported is handed to
//! [`super::shared`] ([`Usage::take_unpublished`]) for the others, and what the others'
//! gateways reported comes back through [`Usage::merge`]: counted like a report of that
//! gateway, so a limit is global across replicas.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use keygate_proto::limits::{Holder, MAX_NAME_CHARS, RateLimit};
use keygate_proto::pb;
use tokio::sync::Notify;

use crate::store::UsageRow;

/// A rate limit of one holder.
pub type LimitKey = (Holder, String);

/// One window of one holder's rate limit.
#[derive(Debug)]
struct Window {
    start_unix_ms: i64,
    /// Each gateway's largest reported count in this window.
    used: HashMap<String, u64>,
    /// The sum of `used`.
    total: u64,
    /// When a report last touched it (for the sweep of idle windows).
    reported_at: Instant,
    /// The limit's window, once the sweep has looked it up.
    window_ms: Option<u64>,
}

impl Window {
    fn new(start_unix_ms: i64) -> Self {
        Self {
            start_unix_ms,
            used: HashMap::new(),
            total: 0,
            reported_at: Instant::now(),
            window_ms: None,
        }
    }

    /// What every gateway but `gateway` used.
    fn others(&self, gateway: &str) -> u64 {
        self.total
            .saturating_sub(self.used.get(gateway).copied().unwrap_or(0))
    }
}

/// A gateway whose stream is open on this replica.
struct Subscriber {
    /// Tells apart a stream from the newer one of the same gateway that replaced it.
    serial: u64,
    notify: Arc<Notify>,
    /// Limits whose others' count may differ from what the gateway was last sent.
    dirty: HashSet<LimitKey>,
    /// What it was last sent, per limit: (window start, others' count).
    sent: HashMap<LimitKey, (i64, u64)>,
}

impl Subscriber {
    /// Whether the gateway must be told `others` for the window starting at `start`: it was
    /// told another count, or nothing (then it assumes 0).
    fn owed(&self, key: &LimitKey, start: i64, others: u64) -> bool {
        let told = self
            .sent
            .get(key)
            .filter(|(sent_start, _)| *sent_start == start)
            .map_or(0, |(_, count)| *count);
        told != others
    }
}

#[derive(Default)]
struct Inner {
    windows: HashMap<LimitKey, Window>,
    subscribers: HashMap<String, Subscriber>,
    serials: u64,
    /// Counts this replica's gateways reported since the last [`Usage::take_unpublished`].
    unpublished: HashSet<(LimitKey, String)>,
}

impl Inner {
    /// Counts `used` for `gateway` in the window of `key` that starts at `start`, and marks
    /// every subscriber that is owed an update by it; false for a window earlier than the one
    /// kept.
    fn count(&mut self, key: &LimitKey, start: i64, gateway: &str, used: u64) -> bool {
        let Inner {
            windows,
            subscribers,
            ..
        } = self;
        let window = windows
            .entry(key.clone())
            .or_insert_with(|| Window::new(start));
        if start < window.start_unix_ms {
            return false;
        }
        if start > window.start_unix_ms {
            // A later window: the earlier one is over for everyone. Its length is looked
            // up again if it goes idle (an operator may have changed it meanwhile).
            *window = Window::new(start);
        }
        window.reported_at = Instant::now();
        let own = window.used.entry(gateway.to_owned()).or_insert(0);
        if used > *own {
            window.total = window.total.saturating_add(used - *own);
            *own = used;
        }
        for gateway in window.used.keys() {
            if let Some(subscriber) = subscribers.get_mut(gateway) {
                let others = window.others(gateway);
                if subscriber.owed(key, start, others) && subscriber.dirty.insert(key.clone()) {
                    subscriber.notify.notify_one();
                }
            }
        }
        true
    }
}

/// The aggregator; one per control-plane replica.
#[derive(Default)]
pub struct Usage {
    inner: Mutex<Inner>,
    /// Whether other replicas read what this one's gateways report ([`Usage::share`]): only
    /// then are reports kept for [`Usage::take_unpublished`].
    shared: AtomicBool,
}

/// A gateway's subscription to its updates; [`Usage::detach`] ends it.
#[derive(Clone)]
pub struct Subscription {
    pub gateway_id: String,
    serial: u64,
    /// Woken when the gateway is owed an update.
    pub notify: Arc<Notify>,
}

/// What a report changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    /// Windows taken into account.
    pub accepted: usize,
    /// Windows ignored: an unreadable holder or limit name, or an earlier window.
    pub ignored: usize,
}

/// A window start more than this far in the future (Unix ms) is a gateway's broken clock,
/// not a window: ignored.
const MAX_CLOCK_AHEAD_MS: i64 = 60_000;

impl Usage {
    /// Subscribes a gateway's stream to its updates; replaces an earlier stream's subscription
    /// of the same gateway.
    pub fn attach(&self, gateway_id: &str) -> Subscription {
        let mut inner = self.lock();
        inner.serials += 1;
        let serial = inner.serials;
        let notify = Arc::new(Notify::new());
        inner.subscribers.insert(
            gateway_id.to_owned(),
            Subscriber {
                serial,
                notify: Arc::clone(&notify),
                dirty: HashSet::new(),
                sent: HashMap::new(),
            },
        );
        Subscription {
            gateway_id: gateway_id.to_owned(),
            serial,
            notify,
        }
    }

    /// Ends a subscription, unless a newer stream of the gateway has replaced it. What the
    /// gateway reported stays counted: it did use those.
    pub fn detach(&self, subscription: &Subscription) {
        let mut inner = self.lock();
        if inner
            .subscribers
            .get(&subscription.gateway_id)
            .is_some_and(|subscriber| subscriber.serial == subscription.serial)
        {
            inner.subscribers.remove(&subscription.gateway_id);
        }
    }

    /// Takes a gateway's report into account and wakes every gateway owed an update by it.
    pub fn report(&self, gateway_id: &str, report: &pb::UsageReport, now_unix_ms: i64) -> Reported {
        let mut outcome = Reported::default();
        let mut inner = self.lock();
        for reported in &report.windows {
            let Ok(holder) = reported.holder.parse::<Holder>() else {
                outcome.ignored += 1;
                continue;
            };
            let start = reported.window_start_unix_ms;
            if reported.limit.is_empty()
                || reported.limit.len() > MAX_NAME_CHARS
                || start > now_unix_ms.saturating_add(MAX_CLOCK_AHEAD_MS)
            {
                outcome.ignored += 1;
                continue;
            }
            let key: LimitKey = (holder, reported.limit.clone());
            if inner.count(&key, start, gateway_id, reported.used) {
                outcome.accepted += 1;
                if self.shared.load(Ordering::Relaxed) {
                    inner.unpublished.insert((key, gateway_id.to_owned()));
                }
            } else {
                outcome.ignored += 1;
            }
        }
        outcome
    }

    /// From now on, keeps what this replica's gateways report for the other replicas
    /// ([`super::shared`]); a replica alone keeps nothing of the kind.
    pub fn share(&self) {
        self.shared.store(true, Ordering::Relaxed);
    }

    /// What this replica's gateways reported since the last call, as their current counts,
    /// for the other replicas ([`super::shared`]).
    pub fn take_unpublished(&self) -> Vec<UsageRow> {
        let mut inner = self.lock();
        let unpublished = std::mem::take(&mut inner.unpublished);
        unpublished
            .into_iter()
            .filter_map(|((holder, limit), gateway_id)| {
                let window = inner.windows.get(&(holder.clone(), limit.clone()))?;
                let used = *window.used.get(&gateway_id)?;
                Some(UsageRow {
                    window_start_unix_ms: window.start_unix_ms,
                    holder,
                    limit,
                    gateway_id,
                    used,
                })
            })
            .collect()
    }

    /// Rows [`Usage::take_unpublished`] handed out that could not be published: handed out
    /// again next time (with the counts of then).
    pub fn unpublish(&self, rows: &[UsageRow]) {
        let mut inner = self.lock();
        for row in rows {
            inner.unpublished.insert((
                (row.holder.clone(), row.limit.clone()),
                row.gateway_id.clone(),
            ));
        }
    }

    /// Counts what other replicas' gateways used, as if they had reported here. Returns how
    /// many rows were taken into account (a row of an earlier window than the one kept, or
    /// with an unreadable limit name, is not).
    pub fn merge(&self, rows: &[UsageRow], now_unix_ms: i64) -> usize {
        let mut inner = self.lock();
        rows.iter()
            .filter(|row| {
                !row.limit.is_empty()
                    && row.limit.len() <= MAX_NAME_CHARS
                    && row.window_start_unix_ms <= now_unix_ms.saturating_add(MAX_CLOCK_AHEAD_MS)
            })
            .filter(|row| {
                let key = (row.holder.clone(), row.limit.clone());
                inner.count(&key, row.window_start_unix_ms, &row.gateway_id, row.used)
            })
            .count()
    }

    /// The update a gateway is owed (the others' counts of every window whose count changed
    /// since it was last told), recorded as sent; `None` when it is owed nothing. The caller
    /// sets `live_gateways`.
    pub fn take_update(&self, subscription: &Subscription) -> Option<pb::UsageUpdate> {
        let mut inner = self.lock();
        let Inner {
            windows,
            subscribers,
            ..
        } = &mut *inner;
        let subscriber = subscribers
            .get_mut(&subscription.gateway_id)
            .filter(|subscriber| subscriber.serial == subscription.serial)?;
        let mut update = pb::UsageUpdate::default();
        for key in std::mem::take(&mut subscriber.dirty) {
            let Some(window) = windows.get(&key) else {
                continue;
            };
            if !window.used.contains_key(&subscription.gateway_id) {
                continue;
            }
            let others = window.others(&subscription.gateway_id);
            if !subscriber.owed(&key, window.start_unix_ms, others) {
                continue;
            }
            update.windows.push(pb::WindowUsage {
                holder: key.0.to_string(),
                limit: key.1.clone(),
                window_start_unix_ms: window.start_unix_ms,
                used: others,
            });
            subscriber.sent.insert(key, (window.start_unix_ms, others));
        }
        (!update.windows.is_empty()).then_some(update)
    }

    /// What every gateway reported in the current window of each of `limits` of `holder`
    /// (0 for a window nobody reported yet).
    pub fn current(
        &self,
        holder: &Holder,
        limits: &[RateLimit],
        now_unix_ms: i64,
    ) -> Vec<(i64, u64)> {
        let inner = self.lock();
        limits
            .iter()
            .map(|limit| {
                let start = limit.window_start(now_unix_ms);
                let used = inner
                    .windows
                    .get(&(holder.clone(), limit.name.clone()))
                    .filter(|window| window.start_unix_ms == start)
                    .map_or(0, |window| window.total);
                (start, used)
            })
            .collect()
    }

    /// Limits whose window is unknown and that no report touched for `idle`: the sweep looks
    /// their window up (at most `most`).
    pub fn unknown_idle(&self, idle: std::time::Duration, most: usize) -> Vec<LimitKey> {
        let inner = self.lock();
        inner
            .windows
            .iter()
            .filter(|(_, window)| {
                window.window_ms.is_none() && window.reported_at.elapsed() >= idle
            })
            .map(|(key, _)| key.clone())
            .take(most)
            .collect()
    }

    /// Records a limit's window as the sweep found it; `None`: the limit no longer exists, so
    /// its counts are dropped.
    pub fn set_window(&self, key: &LimitKey, window_ms: Option<u64>) {
        let mut inner = self.lock();
        match window_ms {
            Some(window_ms) => {
                if let Some(window) = inner.windows.get_mut(key) {
                    window.window_ms = Some(window_ms);
                }
            }
            None => {
                inner.windows.remove(key);
            }
        }
    }

    /// Drops the windows that are over at `now_unix_ms` (those whose length is known), and
    /// what subscribers were told about windows no longer kept. Returns how many were dropped.
    pub fn drop_past(&self, now_unix_ms: i64) -> usize {
        let mut inner = self.lock();
        let before = inner.windows.len();
        inner.windows.retain(|_, window| {
            window.window_ms.is_none_or(|window_ms| {
                let length = i64::try_from(window_ms).unwrap_or(i64::MAX);
                window.start_unix_ms.saturating_add(length) > now_unix_ms
            })
        });
        let Inner {
            windows,
            subscribers,
            unpublished,
            ..
        } = &mut *inner;
        for subscriber in subscribers.values_mut() {
            subscriber.sent.retain(|key, _| windows.contains_key(key));
            subscriber.dirty.retain(|key| windows.contains_key(key));
        }
        unpublished.retain(|(key, _)| windows.contains_key(key));
        before - windows.len()
    }

    /// How many windows are kept.
    #[cfg(test)]
    pub fn windows(&self) -> usize {
        self.lock().windows.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use keygate_proto::KeyId;

    fn report(holder: &Holder, start: i64, used: u64) -> pb::UsageReport {
        pb::UsageReport {
            windows: vec![pb::WindowUsage {
                holder: holder.to_string(),
                limit: "requests".into(),
                window_start_unix_ms: start,
                used,
            }],
        }
    }

    /// The others' count in the update, by window start.
    fn others(update: Option<pb::UsageUpdate>) -> Option<(i64, u64)> {
        let update = update?;
        assert_eq!(update.windows.len(), 1, "{update:?}");
        let window = &update.windows[0];
        assert_eq!(window.limit, "requests");
        Some((window.window_start_unix_ms, window.used))
    }

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn each_gateway_hears_the_total_of_the_others() {
        let usage = Usage::default();
        let holder = Holder::Key(KeyId::generate());
        let [a, b, c] = ["gw-a", "gw-b", "gw-c"].map(|id| usage.attach(id));
        usage.report("gw-a", &report(&holder, NOW, 10), NOW);
        // Alone in the window: nothing to tell anyone (the others used 0).
        assert_eq!(usage.take_update(&a), None);
        usage.report("gw-b", &report(&holder, NOW, 4), NOW);
        usage.report("gw-c", &report(&holder, NOW, 1), NOW);
        assert_eq!(others(usage.take_update(&a)), Some((NOW, 5)));
        assert_eq!(others(usage.take_update(&b)), Some((NOW, 11)));
        assert_eq!(others(usage.take_update(&c)), Some((NOW, 14)));
        // Nothing changed since: nothing owed.
        assert_eq!(usage.take_update(&a), None);
        let limit = RateLimit {
            name: "requests".into(),
            limit: 100,
            window_ms: 1_000,
        };
        assert_eq!(usage.current(&holder, &[limit], NOW + 5), vec![(NOW, 15)]);
        // A gateway that never reported the holder hears nothing of it.
        let d = usage.attach("gw-d");
        usage.report("gw-a", &report(&holder, NOW, 12), NOW);
        assert_eq!(usage.take_update(&d), None);
        assert_eq!(others(usage.take_update(&b)), Some((NOW, 13)));
    }

    #[test]
    fn local_counts_are_handed_out_once_and_other_replicas_counts_count_as_reports() {
        let usage = Usage::default();
        let holder = Holder::Identity("acme".into());
        usage.report("gw-a", &report(&holder, NOW - 1_000, 1), NOW);
        assert!(
            usage.take_unpublished().is_empty(),
            "a replica alone keeps nothing to publish"
        );
        usage.share();
        let a = usage.attach("gw-a");
        usage.report("gw-a", &report(&holder, NOW, 10), NOW);
        let row = |gateway: &str, used: u64| UsageRow {
            holder: holder.clone(),
            limit: "requests".into(),
            gateway_id: gateway.into(),
            window_start_unix_ms: NOW,
            used,
        };
        assert_eq!(usage.take_unpublished(), [row("gw-a", 10)]);
        assert!(usage.take_unpublished().is_empty(), "handed out once");
        // A gateway of another replica: counted like a report, and not handed out again.
        assert_eq!(usage.merge(&[row("gw-z", 30)], NOW), 1);
        assert_eq!(others(usage.take_update(&a)), Some((NOW, 30)));
        assert!(usage.take_unpublished().is_empty());
        // Merging the same row again, or an older count of it, changes nothing.
        usage.merge(&[row("gw-z", 30), row("gw-z", 20)], NOW);
        assert_eq!(usage.take_update(&a), None);
        // A failed publish hands the row out again, with the count of then.
        usage.report("gw-a", &report(&holder, NOW, 12), NOW);
        let failed = usage.take_unpublished();
        usage.report("gw-a", &report(&holder, NOW, 15), NOW);
        usage.unpublish(&failed);
        assert_eq!(usage.take_unpublished(), [row("gw-a", 15)]);
        // Nothing is kept of a window that is over.
        usage.report("gw-a", &report(&holder, NOW, 16), NOW);
        usage.set_window(&(holder.clone(), "requests".into()), Some(1_000));
        assert_eq!(usage.drop_past(NOW + 1_000), 1);
        assert!(usage.take_unpublished().is_empty());
    }

    #[test]
    fn repeated_and_late_reports_keep_the_largest_count() {
        let usage = Usage::default();
        let holder = Holder::Identity("acme".into());
        let a = usage.attach("gw-a");
        usage.attach("gw-b");
        usage.report("gw-b", &report(&holder, NOW, 7), NOW);
        usage.report("gw-a", &report(&holder, NOW, 1), NOW);
        assert_eq!(others(usage.take_update(&a)), Some((NOW, 7)));
        // A repeat, and an older report arriving late: no change, nothing owed.
        usage.report("gw-b", &report(&holder, NOW, 7), NOW);
        usage.report("gw-b", &report(&holder, NOW, 3), NOW);
        assert_eq!(usage.take_update(&a), None);
        usage.report("gw-b", &report(&holder, NOW, 9), NOW);
        assert_eq!(others(usage.take_update(&a)), Some((NOW, 9)));
    }

    #[test]
    fn a_later_window_replaces_the_earlier_and_earlier_reports_are_ignored() {
        let usage = Usage::default();
        let holder = Holder::Identity("acme".into());
        let a = usage.attach("gw-a");
        usage.report("gw-a", &report(&holder, NOW, 1), NOW);
        usage.report("gw-b", &report(&holder, NOW, 50), NOW);
        assert_eq!(others(usage.take_update(&a)), Some((NOW, 50)));
        let next = NOW + 1_000;
        usage.report("gw-a", &report(&holder, next, 2), next);
        // gw-b has not reported the new window: the others used 0 there, which gw-a assumes.
        assert_eq!(usage.take_update(&a), None);
        let late = usage.report("gw-b", &report(&holder, NOW, 60), next);
        assert_eq!(
            late,
            Reported {
                accepted: 0,
                ignored: 1
            }
        );
        assert_eq!(usage.take_update(&a), None);
        usage.report("gw-b", &report(&holder, next, 3), next);
        assert_eq!(others(usage.take_update(&a)), Some((next, 3)));
        let limit = RateLimit {
            name: "requests".into(),
            limit: 100,
            window_ms: 1_000,
        };
        assert_eq!(
            usage.current(&holder, std::slice::from_ref(&limit), next),
            vec![(next, 5)]
        );
        // Once its length is known, a window that is over is dropped.
        usage.set_window(&(holder.clone(), "requests".into()), Some(1_000));
        assert_eq!(usage.drop_past(next + 999), 0);
        assert_eq!(usage.drop_past(next + 1_000), 1);
        assert_eq!(usage.windows(), 0);
        assert_eq!(
            usage.current(&holder, &[limit], next + 1_000),
            vec![(next + 1_000, 0)]
        );
    }

    #[test]
    fn garbage_is_ignored_and_replaced_streams_hear_nothing() {
        let usage = Usage::default();
        let holder = Holder::Identity("acme".into());
        let bad = pb::UsageReport {
            windows: vec![
                pb::WindowUsage {
                    holder: "user:x".into(),
                    limit: "requests".into(),
                    window_start_unix_ms: NOW,
                    used: 1,
                },
                pb::WindowUsage {
                    holder: holder.to_string(),
                    limit: String::new(),
                    window_start_unix_ms: NOW,
                    used: 1,
                },
                pb::WindowUsage {
                    holder: holder.to_string(),
                    limit: "requests".into(),
                    window_start_unix_ms: NOW + 3_600_000,
                    used: 1,
                },
            ],
        };
        assert_eq!(
            usage.report("gw-a", &bad, NOW),
            Reported {
                accepted: 0,
                ignored: 3
            }
        );
        assert_eq!(usage.windows(), 0);
        let old = usage.attach("gw-a");
        let new = usage.attach("gw-a");
        usage.detach(&old);
        usage.report("gw-a", &report(&holder, NOW, 1), NOW);
        usage.report("gw-b", &report(&holder, NOW, 2), NOW);
        assert_eq!(usage.take_update(&old), None);
        assert_eq!(others(usage.take_update(&new)), Some((NOW, 2)));
    }

    /// A burst of reports wakes the gateway once and becomes one update with the latest count.
    #[tokio::test]
    async fn a_burst_of_reports_is_one_wake_up_and_one_update() {
        let usage = Usage::default();
        let holder = Holder::Identity("acme".into());
        let a = usage.attach("gw-a");
        usage.report("gw-a", &report(&holder, NOW, 1), NOW);
        for used in 1..=20 {
            usage.report("gw-b", &report(&holder, NOW, used), NOW);
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), a.notify.notified())
            .await
            .unwrap();
        assert_eq!(others(usage.take_update(&a)), Some((NOW, 20)));
        // The one stored wake-up was used; nothing more is owed.
        assert_eq!(usage.take_update(&a), None);
        let again = a.notify.notified();
        tokio::pin!(again);
        assert!(futures_poll_once(again.as_mut()).is_pending());
    }

    fn futures_poll_once<F: std::future::Future>(
        future: std::pin::Pin<&mut F>,
    ) -> std::task::Poll<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        future.poll(&mut cx)
    }
}
