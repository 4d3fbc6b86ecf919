//! Micro-benchmarks of session verification at the gateway (DESIGN.md, "Performance targets":
//! verify a cached session ≤ 300 ns), beside the baselines it is made of, in the same run:
//! parsing the token, Ed25519 verification of its signature, and blake3 of the token.
//!
//! A replica holds one signing key and realistic revocation sets (10 000 revoked sessions,
//! 1 000 revoked passkeys, 1 000 user states), applied as events through the public API. What is
//! timed is `Verifier::verify_session`, the function the request path calls:
//! - `cached`: 4 096 distinct valid tokens, all in the signature cache (claims only; the
//!   signing key, expiry and revocation sets are still read on every call);
//! - `uncached`: the same tokens with the cache off, so every call verifies the signature;
//! - `revoked_cached`: tokens whose passkey was revoked after they were cached → REVOKED;
//! - `malformed`: a token without the `v4.public.` header.
//!
//! `cargo bench -p keygate-benches --bench sessions`; under `cargo test` every benchmark runs
//! once (criterion's test mode), so CI keeps it compiling and working without timing anything.

use std::hint::black_box;
use std::sync::Arc;

use criterion::Criterion;
use keygate_proto::session::{self, SessionClaims, SessionSigner};
use keygate_proto::{
    Change, Event, PasskeyRevocation, Revision, SessionRevocation, SessionVerifyingKey, UserState,
};
use keygate_proxy::{Code, Replica, Verdict, Verifier};

const NOW_UNIX_MS: i64 = 1_800_000_000_000;
const TOKENS: usize = 4096;
const HOUR_MS: i64 = 3_600_000;

/// A replica with a signing key and revocation sets, and the signer of that key.
fn replica() -> (Arc<Replica>, SessionSigner) {
    let signer = SessionSigner::generate("sk_bench");
    let replica = Arc::new(Replica::new());
    let mut revision = 0;
    let mut apply = |change: Change| {
        revision += 1;
        replica
            .apply(&Event {
                revision: Revision(revision),
                committed_unix_ms: NOW_UNIX_MS,
                change,
            })
            .expect("events are contiguous");
    };
    apply(Change::SigningKey(SessionVerifyingKey {
        key_id: signer.key_id().to_owned(),
        public_key: signer.public_key(),
        created_unix_ms: NOW_UNIX_MS - HOUR_MS,
        verify_until_unix_ms: None,
        revoked: false,
        max_session_lifetime_ms: Some(12 * HOUR_MS),
    }));
    let prune_after_unix_ms = NOW_UNIX_MS + 12 * HOUR_MS;
    for i in 0..10_000 {
        apply(Change::SessionRevoked(SessionRevocation {
            session_id: format!("ses_revoked_{i}"),
            user_id: format!("user_{}", i % 1000),
            prune_after_unix_ms,
        }));
    }
    for i in 0..1_000 {
        apply(Change::PasskeyRevoked(PasskeyRevocation {
            user_id: format!("user_{i}"),
            passkey_id: format!("pk_revoked_{i}"),
            revoked_unix_ms: NOW_UNIX_MS - HOUR_MS,
            prune_after_unix_ms,
        }));
        apply(Change::UserState(UserState {
            user_id: format!("signed_out_{i}"),
            disabled: false,
            sessions_revoked_before_unix_ms: NOW_UNIX_MS - HOUR_MS,
            prune_after_unix_ms,
        }));
    }
    (replica, signer)
}

fn tokens(signer: &SessionSigner, passkey: &str) -> Vec<String> {
    (0..TOKENS)
        .map(|i| {
            signer.sign(&SessionClaims {
                session_id: format!("ses_{passkey}_{i:06}"),
                user_id: format!("user_{}", i % 500),
                passkey_id: passkey.to_owned(),
                issued_unix_ms: NOW_UNIX_MS - 60_000,
                expires_unix_ms: NOW_UNIX_MS + HOUR_MS,
            })
        })
        .collect()
}

fn code(verdict: &Verdict) -> Code {
    verdict.code()
}

fn sessions(c: &mut Criterion) {
    let (replica, signer) = replica();
    let valid = tokens(&signer, "pk_live");
    let revoked = tokens(&signer, "pk_revoked_later");
    let cached = Verifier::new(Arc::clone(&replica));
    let uncached = Verifier::with_session_cache(Arc::clone(&replica), 0);
    for token in valid.iter().chain(&revoked) {
        assert_eq!(
            code(&cached.verify_session(token, NOW_UNIX_MS)),
            Code::Valid
        );
    }
    // Revoke the second set's passkey after its tokens were cached.
    replica
        .apply(&Event {
            revision: Revision(replica.applied_revision().0 + 1),
            committed_unix_ms: NOW_UNIX_MS,
            change: Change::PasskeyRevoked(PasskeyRevocation {
                user_id: "user_0".into(),
                passkey_id: "pk_revoked_later".into(),
                revoked_unix_ms: NOW_UNIX_MS,
                prune_after_unix_ms: NOW_UNIX_MS + HOUR_MS,
            }),
        })
        .expect("contiguous");
    assert_eq!(
        code(&cached.verify_session(&revoked[0], NOW_UNIX_MS)),
        Code::Revoked
    );
    let public_key = signer.public_key();

    let mut group = c.benchmark_group("session");
    let mut i = 0;
    group.bench_function("cached", |b| {
        b.iter(|| {
            i = (i + 1) % TOKENS;
            black_box(cached.verify_session(black_box(&valid[i]), NOW_UNIX_MS))
        })
    });
    group.bench_function("uncached", |b| {
        b.iter(|| {
            i = (i + 1) % TOKENS;
            black_box(uncached.verify_session(black_box(&valid[i]), NOW_UNIX_MS))
        })
    });
    group.bench_function("revoked_cached", |b| {
        b.iter(|| {
            i = (i + 1) % TOKENS;
            black_box(cached.verify_session(black_box(&revoked[i]), NOW_UNIX_MS))
        })
    });
    group.bench_function("malformed", |b| {
        b.iter(|| black_box(cached.verify_session(black_box("v3.public.abc.def"), NOW_UNIX_MS)))
    });
    group.bench_function("baseline_parse", |b| {
        b.iter(|| {
            i = (i + 1) % TOKENS;
            black_box(session::parse(black_box(&valid[i])).is_ok())
        })
    });
    group.bench_function("baseline_parse_and_ed25519_verify", |b| {
        b.iter(|| {
            i = (i + 1) % TOKENS;
            let token = session::parse(black_box(&valid[i])).expect("parses");
            black_box(token.verify(&public_key).is_ok())
        })
    });
    group.bench_function("baseline_blake3_of_token", |b| {
        b.iter(|| {
            i = (i + 1) % TOKENS;
            black_box(blake3::hash(black_box(valid[i].as_bytes())))
        })
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    sessions(&mut criterion);
    criterion.final_summary();
}
