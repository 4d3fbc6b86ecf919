//! The cost of per-key limits on the hot path (DESIGN.md, "Performance targets": a
//! rate-limited or credit-checked key costs ≤ 50 ns more than a plain valid key), measured
//! beside the plain key in the same run, one thread.
//!
//! Both keys go through what the request path does after the credential is found: the verdict
//! (`Verifier::verify_cached`: parse, checksum, blake3, one replica lookup) and then, as the
//! handler does, the limits step when the key has a policy: `Limiter::admit_now` (the
//! decision without waiting, which the handler awaits a lease only after) with one rate limit
//! (rule 1 and rule 2 against the control plane's counts) and credits spent from a lease
//! already held. The clock is fixed (the limiter takes `now` as an argument), so no window rolls over and the
//! link never counts as cut off; the limit and the lease are far larger than a run spends.
//!
//! A key with meta and no limits is measured too: what any key with side data (meta or a
//! policy) pays for it, apart from the limits themselves.
//!
//! `cargo bench -p keygate-benches --bench limits`; under `cargo test` every benchmark runs once.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use keygate_proto::limits::MAX_AMOUNT;
use keygate_proto::{
    ApiKey, Change, Event, KeyId, KeyLimits, KeyPrefix, Meta, ReplicaKey, Revision,
};
use keygate_proxy::limits::{Admission, Attempt, LeaseGrant};
use keygate_proxy::{Code, Grant, Lookup, Replica, Verdict, Verifier};

/// The fixed "now" of every check.
const NOW_UNIX_MS: i64 = 1_800_000_000_000;

fn key(owner: &str, limits: KeyLimits) -> (String, ReplicaKey) {
    let plaintext = ApiKey::generate(&KeyPrefix::default());
    let hash = ApiKey::parse(&plaintext)
        .expect("generated keys parse")
        .hash();
    let record = ReplicaKey {
        hash,
        id: KeyId::generate(),
        owner: owner.to_owned(),
        enabled: true,
        expires_unix_ms: None,
        meta: Meta::new(),
        limits,
    };
    (plaintext, record)
}

/// The limits decision, which must not wait for a lease.
#[inline]
fn decided(attempt: Attempt) -> Admission {
    match attempt {
        Attempt::Done(admission) => admission,
        Attempt::NeedLease => panic!("the limits step waited for a lease"),
    }
}

/// What the handler does with a key's verdict: the limits step only for a key with a policy.
#[inline]
fn request(verifier: &Verifier, key: &str) -> Code {
    let grant = match verifier.verify_cached(key, NOW_UNIX_MS) {
        Lookup::Done(Verdict::Valid(Grant::Key(grant))) => grant,
        Lookup::Done(verdict) => return verdict.code(),
        Lookup::Miss(_) => return Code::NotFound,
    };
    let Some(policy) = grant.policy() else {
        return Code::Valid;
    };
    let limiter = verifier.replica().limiter();
    match decided(limiter.admit_now(Some(policy), &[], 1, NOW_UNIX_MS)) {
        Admission::Allowed(status) => {
            black_box(&status);
            Code::Valid
        }
        Admission::Denied { code, .. } => code,
    }
}

fn main() {
    let (plain_text, plain) = key("plain", KeyLimits::default());
    let (limited_text, limited) = key(
        "limited",
        KeyLimits {
            ratelimits: vec![format!("requests={MAX_AMOUNT}/30d").parse().expect("valid")],
            credits: true,
            ..KeyLimits::default()
        },
    );
    // Meta and no limits: what the side data beside a slot costs by itself.
    let (meta_text, mut with_meta) = key("meta", KeyLimits::default());
    with_meta.meta.insert("plan".into(), "pro".into());
    let replica = Arc::new(Replica::new());
    for (index, record) in [&plain, &limited, &with_meta].into_iter().enumerate() {
        replica
            .apply(&Event {
                revision: Revision(index as u64 + 1),
                committed_unix_ms: 0,
                change: Change::KeyUpserted(record.clone()),
            })
            .expect("in order");
    }
    let limiter = replica.limiter();
    limiter.set_connected(true, NOW_UNIX_MS);
    limiter.apply_grant(
        LeaseGrant {
            holder: format!("key:{}", limited.id),
            request_id: 0,
            lease_id: "bench".into(),
            granted: MAX_AMOUNT,
            ttl_ms: 3_600_000,
            exhausted: false,
        },
        NOW_UNIX_MS,
    );
    let verifier = Verifier::new(Arc::clone(&replica));
    assert_eq!(request(&verifier, &plain_text), Code::Valid);
    assert_eq!(request(&verifier, &limited_text), Code::Valid);

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("limits");
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));
    group.bench_function("plain key: verdict", |b| {
        b.iter(|| request(&verifier, black_box(&plain_text)))
    });
    group.bench_function("key with meta, no limits: verdict (side data)", |b| {
        b.iter(|| request(&verifier, black_box(&meta_text)))
    });
    group.bench_function(
        "key with a rate limit and leased credits: verdict + limits",
        |b| b.iter(|| request(&verifier, black_box(&limited_text))),
    );
    let grant = match verifier.verify_cached(&limited_text, NOW_UNIX_MS) {
        Lookup::Done(Verdict::Valid(Grant::Key(grant))) => grant,
        other => panic!("expected VALID, got {other:?}"),
    };
    let policy = grant.policy().expect("a key with limits has a policy");
    group.bench_function("Limiter::admit_now alone (rate limit + credits)", |b| {
        b.iter(|| {
            black_box(decided(limiter.admit_now(
                Some(black_box(policy)),
                &[],
                1,
                NOW_UNIX_MS,
            )))
        })
    });
    group.finish();
    criterion.final_summary();
}
