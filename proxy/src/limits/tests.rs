//! The limiter's rules on a fake clock: `now` is passed in, the link is set by hand.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use keygate_proto::{Identity, KeyLimits, RateLimit, ReplicaKey};

use super::*;
use crate::replica::tests::sample_key;

/// A Unix time at the start of a second (and of a minute).
const T0: i64 = 1_800_000_000_000;

fn limit(spec: &str) -> RateLimit {
    spec.parse().expect("valid rate limit")
}

fn key_with(limits: KeyLimits) -> ReplicaKey {
    let (_, mut key) = sample_key("acme-owner");
    key.limits = limits;
    key
}

/// A connected limiter that has just heard from the control plane.
fn connected() -> Limiter {
    let limiter = Limiter::new();
    limiter.set_connected(true, T0);
    limiter
}

/// The admission if it is decided without waiting for a lease (`None`: a lease was asked for).
fn admit_now(
    limiter: &Limiter,
    policy: &KeyPolicy,
    required: &[String],
    cost: u64,
    now: i64,
) -> Option<Admission> {
    match limiter.try_admit(policy, required, cost, now) {
        Attempt::Done(admission) => Some(admission),
        Attempt::NeedLease => None,
    }
}

fn code(limiter: &Limiter, policy: &KeyPolicy, cost: u64, now: i64) -> Code {
    admit_now(limiter, policy, &[], cost, now)
        .expect("decided without waiting")
        .code()
}

/// How many requests of `cost` are admitted in a row at `now`.
fn admitted_in_a_row(limiter: &Limiter, policy: &KeyPolicy, cost: u64, now: i64) -> u64 {
    let mut admitted = 0;
    while code(limiter, policy, cost, now) == Code::Valid {
        admitted += 1;
        assert!(admitted < 10_000, "never refused");
    }
    admitted
}

fn grant(
    holder: &str,
    request_id: u64,
    lease_id: &str,
    granted: u64,
    exhausted: bool,
) -> LeaseGrant {
    LeaseGrant {
        holder: holder.to_owned(),
        request_id,
        lease_id: lease_id.to_owned(),
        granted,
        ttl_ms: 10_000,
        exhausted,
    }
}

#[test]
fn rule_one_counts_this_gateway_and_the_others() {
    let limiter = connected();
    let key = key_with(KeyLimits {
        ratelimits: vec![limit("requests=10/1m")],
        ..KeyLimits::default()
    });
    let policy = limiter
        .policy_for(&key)
        .expect("a key with limits has a policy");
    assert_eq!(admitted_in_a_row(&limiter, &policy, 1, T0 + 1_000), 10);
    match admit_now(&limiter, &policy, &[], 1, T0 + 1_000).expect("decided") {
        Admission::Denied {
            code: Code::RateLimited,
            retry_after_secs,
            status: Some(status),
        } => {
            assert_eq!(retry_after_secs, Some(59), "seconds to the window's end");
            assert_eq!((status.remaining(), status.limit()), (0, 10));
        }
        other => panic!("expected RATE_LIMITED, got {other:?}"),
    }
    // The next window starts empty; the others' use counts against it.
    let next = T0 + 60_000;
    limiter.apply_usage(
        &[WindowUsage {
            holder: format!("key:{}", key.id),
            limit: "requests".into(),
            window_start_unix_ms: next,
            used: 7,
        }],
        1,
        next,
    );
    assert_eq!(admitted_in_a_row(&limiter, &policy, 1, next), 3);
    // A report for another window changes nothing.
    limiter.apply_usage(
        &[WindowUsage {
            holder: format!("key:{}", key.id),
            limit: "requests".into(),
            window_start_unix_ms: T0,
            used: 0,
        }],
        1,
        next,
    );
    assert_eq!(code(&limiter, &policy, 1, next), Code::RateLimited);
}

#[test]
fn rule_two_spends_one_share_between_reports_and_reports_at_once() {
    let limiter = connected();
    limiter.apply_usage(&[], 4, T0);
    let key = key_with(KeyLimits {
        ratelimits: vec![limit("requests=100/1m")],
        ..KeyLimits::default()
    });
    let policy = limiter.policy_for(&key).expect("policy");
    // ⌈100 ÷ 4⌉ = 25 before a report.
    assert_eq!(admitted_in_a_row(&limiter, &policy, 1, T0 + 10), 25);
    match admit_now(&limiter, &policy, &[], 1, T0 + 10).expect("decided") {
        Admission::Denied {
            code: Code::RateLimited,
            retry_after_secs: Some(1),
            ..
        } => {}
        other => panic!("expected RATE_LIMITED with Retry-After 1, got {other:?}"),
    }
    // The refusal asked for a report at once (not waiting for the tick).
    let out = limiter.take_outgoing(T0 + 10, false);
    assert_eq!(
        out.report,
        [WindowUsage {
            holder: format!("key:{}", key.id),
            limit: "requests".into(),
            window_start_unix_ms: T0,
            used: 25,
        }]
    );
    // Reported 25, nobody else used any: the next share is ⌈(100 − 25) ÷ 4⌉ = 19.
    assert_eq!(admitted_in_a_row(&limiter, &policy, 1, T0 + 20), 19);
    // Nothing unreported is reported twice; a tick reports the new use.
    let out = limiter.take_outgoing(T0 + 120, true);
    assert_eq!(out.report.len(), 1);
    assert_eq!(out.report[0].used, 44);
    assert!(limiter.take_outgoing(T0 + 220, true).report.is_empty());
}

#[test]
fn cut_off_a_gateway_admits_its_share_of_the_limit_and_no_more() {
    let limiter = connected();
    limiter.apply_usage(&[], 4, T0);
    let key = key_with(KeyLimits {
        ratelimits: vec![limit("requests=100/1m")],
        ..KeyLimits::default()
    });
    let policy = limiter.policy_for(&key).expect("policy");
    limiter.set_connected(false, T0);
    assert_eq!(admitted_in_a_row(&limiter, &policy, 1, T0 + 10), 25);
    match admit_now(&limiter, &policy, &[], 1, T0 + 10).expect("decided") {
        Admission::Denied {
            code: Code::RateLimited,
            retry_after_secs: Some(60),
            ..
        } => {}
        other => panic!("expected RATE_LIMITED until the window ends, got {other:?}"),
    }
    // Connected but silent for more than 2 s counts as cut off too.
    let silent = connected();
    silent.apply_usage(&[], 2, T0);
    let policy = silent.policy_for(&key).expect("policy");
    let later = T0 + CUT_OFF_AFTER_MS + 1;
    assert_eq!(admitted_in_a_row(&silent, &policy, 1, later), 50);
}

#[test]
fn credits_are_spent_only_from_leases_and_exhaustion_is_remembered() {
    let limiter = connected();
    let key = key_with(KeyLimits {
        credits: true,
        ..KeyLimits::default()
    });
    let holder = format!("key:{}", key.id);
    let policy = limiter.policy_for(&key).expect("policy");
    // Nothing leased: the request waits for a lease, which is asked for.
    assert!(admit_now(&limiter, &policy, &[], 1, T0).is_none());
    let out = limiter.take_outgoing(T0, false);
    assert_eq!(out.requests.len(), 1, "{out:?}");
    assert_eq!(
        (out.requests[0].holder.as_str(), out.requests[0].wanted),
        (holder.as_str(), 1)
    );
    // One request in flight per holder.
    assert!(admit_now(&limiter, &policy, &[], 1, T0).is_none());
    assert!(limiter.take_outgoing(T0, false).requests.is_empty());

    limiter.apply_grant(
        grant(&holder, out.requests[0].request_id, "lease-1", 3, false),
        T0,
    );
    assert_eq!(code(&limiter, &policy, 2, T0 + 1), Code::Valid);
    assert_eq!(code(&limiter, &policy, 1, T0 + 2), Code::Valid);
    // Cost 0 is free, even with nothing left.
    assert_eq!(code(&limiter, &policy, 0, T0 + 3), Code::Valid);
    assert!(admit_now(&limiter, &policy, &[], 1, T0 + 3).is_none());
    let mut out = limiter.take_outgoing(T0 + 3, false);
    // The lease spent to nothing went back at once, so the control plane closes it.
    assert_eq!(
        out.returns,
        [LeaseReturn {
            lease_id: "lease-1".into(),
            holder: holder.clone(),
            unspent: 0,
        }]
    );
    // About a second's spending is asked for: 3 were spent in this one.
    let request = out.requests.pop().expect("asked again");
    assert_eq!(request.wanted, 3);
    limiter.apply_grant(
        grant(&holder, request.request_id, "lease-2", 0, true),
        T0 + 3,
    );
    assert_eq!(code(&limiter, &policy, 1, T0 + 4), Code::UsageExceeded);
    assert!(
        limiter.take_outgoing(T0 + 4, false).requests.is_empty(),
        "told exhausted: no asking"
    );
    // A second later it asks again; a refill (CreditsChanged) lets it ask at once.
    assert!(admit_now(&limiter, &policy, &[], 1, T0 + 3 + holder::EXHAUSTED_FOR_MS).is_none());
    let request = limiter
        .take_outgoing(T0 + 1_100, false)
        .requests
        .pop()
        .expect("asked");
    limiter.apply_grant(
        grant(&holder, request.request_id, "lease-3", 0, true),
        T0 + 1_100,
    );
    assert_eq!(code(&limiter, &policy, 1, T0 + 1_200), Code::UsageExceeded);
    limiter.credits_changed(&Holder::Key(key.id));
    assert!(admit_now(&limiter, &policy, &[], 1, T0 + 1_200).is_none());
}

#[test]
fn leases_past_their_deadline_are_given_back_with_what_is_left() {
    let limiter = connected();
    let key = key_with(KeyLimits {
        credits: true,
        ..KeyLimits::default()
    });
    let holder = format!("key:{}", key.id);
    let policy = limiter.policy_for(&key).expect("policy");
    limiter.apply_grant(grant(&holder, 0, "lease-1", 10, false), T0);
    assert_eq!(code(&limiter, &policy, 4, T0 + 1), Code::Valid);
    assert!(limiter.take_outgoing(T0 + 9_999, true).returns.is_empty());
    let returns = limiter.take_outgoing(T0 + 10_000, true).returns;
    assert_eq!(
        returns,
        [LeaseReturn {
            lease_id: "lease-1".into(),
            holder: holder.clone(),
            unspent: 6,
        }]
    );
    // Nothing of it is spent afterwards.
    assert!(admit_now(&limiter, &policy, &[], 1, T0 + 10_001).is_none());
    // On shutdown every live lease goes back.
    limiter.apply_grant(grant(&holder, 0, "lease-2", 5, false), T0 + 10_001);
    assert_eq!(code(&limiter, &policy, 1, T0 + 10_002), Code::Valid);
    let everything = limiter.return_everything();
    assert_eq!(everything.len(), 1, "{everything:?}");
    assert_eq!(
        (everything[0].lease_id.as_str(), everything[0].unspent),
        ("lease-2", 4)
    );
    assert!(admit_now(&limiter, &policy, &[], 1, T0 + 10_003).is_none());
}

#[test]
fn a_rate_limited_request_spends_no_credit() {
    let limiter = connected();
    let key = key_with(KeyLimits {
        ratelimits: vec![limit("requests=2/1m")],
        credits: true,
        ..KeyLimits::default()
    });
    let holder = format!("key:{}", key.id);
    let policy = limiter.policy_for(&key).expect("policy");
    limiter.apply_grant(grant(&holder, 0, "lease-1", 100, false), T0);
    assert_eq!(admitted_in_a_row(&limiter, &policy, 1, T0 + 1), 2);
    for _ in 0..5 {
        assert_eq!(code(&limiter, &policy, 1, T0 + 2), Code::RateLimited);
    }
    let returned = limiter.return_everything();
    assert_eq!(
        returned[0].unspent, 98,
        "only the two admitted requests spent credits"
    );
}

#[test]
fn out_of_credits_wins_over_a_rate_limit_and_nothing_is_counted() {
    let limiter = connected();
    let key = key_with(KeyLimits {
        ratelimits: vec![limit("requests=1/1m")],
        credits: true,
        ..KeyLimits::default()
    });
    let holder = format!("key:{}", key.id);
    let policy = limiter.policy_for(&key).expect("policy");
    limiter.apply_grant(grant(&holder, 0, "lease-1", 0, true), T0);
    assert_eq!(code(&limiter, &policy, 1, T0 + 1), Code::UsageExceeded);
    limiter.apply_grant(grant(&holder, 0, "lease-2", 1, false), T0 + 2);
    assert_eq!(
        code(&limiter, &policy, 1, T0 + 3),
        Code::Valid,
        "the refusal used no unit"
    );
}

#[test]
fn an_identity_is_shared_by_its_keys() {
    let limiter = connected();
    limiter.upsert_identity(&Identity {
        id: "acme".into(),
        ratelimits: vec![limit("requests=3/1m")],
        credits: false,
    });
    let identity = KeyLimits {
        identity: Some("acme".into()),
        ..KeyLimits::default()
    };
    let first = limiter
        .policy_for(&key_with(identity.clone()))
        .expect("policy");
    let second = limiter.policy_for(&key_with(identity)).expect("policy");
    assert_eq!(code(&limiter, &first, 1, T0), Code::Valid);
    assert_eq!(code(&limiter, &first, 1, T0), Code::Valid);
    assert_eq!(code(&limiter, &second, 1, T0), Code::Valid);
    assert_eq!(code(&limiter, &second, 1, T0), Code::RateLimited);
    assert_eq!(code(&limiter, &first, 1, T0), Code::RateLimited);
    // A key's own limit and its identity's both count; the tightest one is in the headers.
    let own = limiter
        .policy_for(&key_with(KeyLimits {
            ratelimits: vec![limit("mine=10/1m")],
            identity: Some("acme".into()),
            ..KeyLimits::default()
        }))
        .expect("policy");
    match admit_now(&limiter, &own, &[], 1, T0).expect("decided") {
        Admission::Denied {
            code: Code::RateLimited,
            status: Some(status),
            ..
        } => assert_eq!((status.name(), status.remaining()), ("requests", 0)),
        other => panic!("expected the identity's limit to refuse, got {other:?}"),
    }
    // The refused request counted nothing against the key's own limit.
    limiter.delete_identity("acme");
    match admit_now(&limiter, &own, &[], 1, T0).expect("decided") {
        Admission::Allowed(Some(status)) => {
            assert_eq!((status.name(), status.remaining()), ("mine", 9));
        }
        other => panic!("expected VALID, got {other:?}"),
    }
}

#[test]
fn permissions_need_every_required_one() {
    let limiter = connected();
    let policy = limiter
        .policy_for(&key_with(KeyLimits {
            permissions: vec!["orders.read".into(), "orders.write".into()],
            ..KeyLimits::default()
        }))
        .expect("policy");
    let required = |list: &[&str]| list.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
    for (needed, expected) in [
        (required(&[]), Code::Valid),
        (required(&["orders.read"]), Code::Valid),
        (required(&["orders.read", "orders.write"]), Code::Valid),
        (required(&["orders.delete"]), Code::InsufficientPermissions),
        (
            required(&["orders.read", "users.read"]),
            Code::InsufficientPermissions,
        ),
    ] {
        let admission = admit_now(&limiter, &policy, &needed, 1, T0).expect("decided");
        assert_eq!(admission.code(), expected, "{needed:?}");
    }
    // The request path's future is ready at once when nothing waits for a lease.
    let mut fast = pin!(limiter.admit(Some(&policy), &[], 1, T0));
    assert!(matches!(
        fast.as_mut().poll(&mut Context::from_waker(Waker::noop())),
        Poll::Ready(Admission::Allowed(None))
    ));
    // A plain key has no permissions at all.
    let needed = required(&["orders.read"]);
    let mut plain = pin!(limiter.admit(None, &needed, 1, T0));
    assert!(matches!(
        plain.as_mut().poll(&mut Context::from_waker(Waker::noop())),
        Poll::Ready(Admission::Denied {
            code: Code::InsufficientPermissions,
            ..
        })
    ));
}

#[test]
fn with_the_stream_down_credits_that_are_not_leased_cannot_be_proven() {
    let limiter = connected();
    let key = key_with(KeyLimits {
        credits: true,
        ..KeyLimits::default()
    });
    let holder = format!("key:{}", key.id);
    let policy = limiter.policy_for(&key).expect("policy");
    limiter.apply_grant(grant(&holder, 0, "lease-1", 2, false), T0);
    limiter.set_connected(false, T0 + 1);
    // Live leases are still spent while cut off ...
    assert_eq!(code(&limiter, &policy, 2, T0 + 2), Code::Valid);
    // ... and then nothing can be proven.
    assert_eq!(code(&limiter, &policy, 1, T0 + 3), Code::Stale);
}

#[test]
fn a_lease_for_a_holder_the_gateway_no_longer_has_goes_back_at_once() {
    let limiter = connected();
    let key = key_with(KeyLimits {
        credits: true,
        ..KeyLimits::default()
    });
    let holder = format!("key:{}", key.id);
    let _policy = limiter.policy_for(&key).expect("policy");
    limiter.forget_key(key.id);
    limiter.apply_grant(grant(&holder, 0, "lease-1", 7, false), T0);
    let returns = limiter.take_outgoing(T0, false).returns;
    assert_eq!(returns.len(), 1);
    assert_eq!(
        (returns[0].lease_id.as_str(), returns[0].unspent),
        ("lease-1", 7)
    );
}

#[test]
fn a_grant_of_nothing_without_exhaustion_delays_the_next_request() {
    let limiter = connected();
    let key = key_with(KeyLimits {
        credits: true,
        ..KeyLimits::default()
    });
    let holder = format!("key:{}", key.id);
    let policy = limiter.policy_for(&key).expect("policy");
    assert!(admit_now(&limiter, &policy, &[], 1, T0).is_none());
    let request = limiter
        .take_outgoing(T0, false)
        .requests
        .pop()
        .expect("asked");
    // The control plane could not lease (a store error): nothing, and not "exhausted".
    limiter.apply_grant(grant(&holder, request.request_id, "lease-1", 0, false), T0);
    assert!(admit_now(&limiter, &policy, &[], 1, T0 + 1).is_none());
    assert!(
        limiter.take_outgoing(T0 + 1, false).requests.is_empty(),
        "no tight loop"
    );
    assert!(admit_now(&limiter, &policy, &[], 1, T0 + holder::ASK_AGAIN_AFTER_MS).is_none());
    assert_eq!(limiter.take_outgoing(T0 + 300, false).requests.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_its_lease_and_gives_up_after_two_seconds() {
    let limiter = Arc::new(connected());
    let key = key_with(KeyLimits {
        credits: true,
        ..KeyLimits::default()
    });
    let holder = format!("key:{}", key.id);
    let policy = Arc::new(limiter.policy_for(&key).expect("policy"));
    let waiting = {
        let (limiter, policy) = (Arc::clone(&limiter), Arc::clone(&policy));
        tokio::spawn(async move { limiter.admit(Some(&policy), &[], 1, T0).await })
    };
    let request = loop {
        if let Some(request) = limiter.take_outgoing(T0, false).requests.pop() {
            break request;
        }
        tokio::task::yield_now().await;
    };
    limiter.apply_grant(grant(&holder, request.request_id, "lease-1", 1, false), T0);
    assert_eq!(waiting.await.expect("joins").code(), Code::Valid);
    // No grant comes: STALE once the wait is over.
    let started = tokio::time::Instant::now();
    let admission = limiter.admit(Some(&policy), &[], 1, T0 + 1).await;
    assert_eq!(admission.code(), Code::Stale);
    assert!(started.elapsed() >= LEASE_WAIT);
}

#[test]
fn a_key_without_limits_of_its_own_has_no_holder_and_a_changed_limit_keeps_its_count() {
    let limiter = connected();
    let mut key = key_with(KeyLimits {
        ratelimits: vec![limit("requests=5/1m")],
        ..KeyLimits::default()
    });
    let policy = limiter.policy_for(&key).expect("policy");
    assert_eq!(admitted_in_a_row(&limiter, &policy, 2, T0), 2);
    // Raised to 6: the 4 used stay counted.
    key.limits.ratelimits = vec![limit("requests=6/1m")];
    let policy = limiter.policy_for(&key).expect("policy");
    assert_eq!(admitted_in_a_row(&limiter, &policy, 1, T0), 2);
    key.limits = KeyLimits {
        permissions: vec!["a".into()],
        ..KeyLimits::default()
    };
    let policy = limiter.policy_for(&key).expect("policy");
    assert_eq!(policy.holders().count(), 0);
    assert!(limiter.holder(&Holder::Key(key.id)).is_none());
    key.limits = KeyLimits::default();
    assert!(limiter.policy_for(&key).is_none());
}
