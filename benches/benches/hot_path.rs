//! Micro-benchmarks of the verification hot path (DESIGN.md, "Performance targets": valid key
//! ≤ 150 ns median and malformed ≤ 30 ns, one core, 1M keys in the replica), each beside the
//! baselines it is made of, measured in the same run: a bare hash-map lookup of a precomputed
//! hash, blake3 of the key, CRC-32 of the key.
//!
//! Replicas of 1k and 1M synthetic keys are built once per group through the public API
//! (`Snapshot::insert`, `Replica::install_snapshot`). Keys are read in a shuffled order from one
//! contiguous buffer, so at 1M every lookup touches a replica slot that is not in cache (as a
//! gateway serving many clients would), while reading the key text itself is sequential.
//!
//! What is timed is what the request path calls: `Verifier::verify_cached` (parse + checksum,
//! blake3, one replica lookup, the checks), `Verifier::verify` (adds the clock read and the
//! credential match), and, for an unknown well-formed key, what `Verifier::verify` does after a
//! replica miss when the negative cache answers: the `AnswerCache` hit that
//! `MissLookup::resolve` performs, then the second replica check. `MissLookup` cannot be built
//! outside the proxy crate, so that step is reproduced here with the same cache type and
//! settings (except a long TTL, so entries do not expire during a measurement); the cache hit
//! alone is measured too.
//!
//! `cargo bench -p keygate-benches --bench hot_path` runs 1k and 1M keys. Under `cargo test`
//! (criterion's test mode: no `--bench` argument) only 1k keys are built and every benchmark
//! runs once, so CI keeps this compiling and working without timing anything.
//! `KEYGATE_BENCH_KEYS=1000,1000000,10000000` overrides the sizes.

use std::future::Future;
use std::hash::BuildHasherDefault;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::Criterion;
use keygate_benches::keyset::{self, KeyKind, KeySetSpec, KeyStream, Malformation};
use keygate_proto::{ApiKey, KeyHash, ReplicaKey, Revision};
use keygate_proxy::credential::Credential;
use keygate_proxy::miss::AnswerCache;
use keygate_proxy::replica::{HashPrefix, IdentityHasher};
use keygate_proxy::{Code, Lookup, Replica, Snapshot, Verdict, Verifier};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// A fixed "now" after every synthetic expiry and before any never-expiring key's.
const NOW_UNIX_MS: i64 = 1_800_000_000_000;

/// Keys of the unknown-key benchmark (all of them negatively cached).
const UNKNOWN_KEYS: usize = 4096;

/// The miss cache's answer, shaped like `keygate_proxy::miss`'s private one.
#[derive(Clone)]
#[allow(dead_code)]
enum Answer {
    Found(Arc<ReplicaKey>, Revision),
    Absent,
}

/// Plaintext keys of one length, back to back, read in rotation.
struct KeyRing {
    text: String,
    width: usize,
    count: usize,
    next: usize,
}

impl KeyRing {
    fn new(keys: &[String]) -> Self {
        let width = keys.first().map_or(1, String::len);
        assert!(
            keys.iter().all(|key| key.len() == width),
            "keys differ in length"
        );
        Self {
            text: keys.concat(),
            width,
            count: keys.len(),
            next: 0,
        }
    }

    #[inline]
    fn next(&mut self) -> &str {
        let at = self.next * self.width;
        self.next += 1;
        if self.next == self.count {
            self.next = 0;
        }
        &self.text[at..at + self.width]
    }
}

/// One replica size and everything its benchmarks read.
struct Fixture {
    label: String,
    verifier: Verifier,
    valid: Vec<String>,
    disabled: Vec<String>,
    expired: Vec<String>,
    unknown: Vec<String>,
    baseline_map: std::collections::HashMap<
        HashPrefix,
        (u128, u64, Arc<str>),
        BuildHasherDefault<IdentityHasher>,
    >,
    /// Hashes of `valid`, in the same order.
    valid_hashes: Vec<KeyHash>,
    /// Hashes of `unknown`, in the same order.
    unknown_hashes: Vec<KeyHash>,
    negative_cache: AnswerCache<Answer>,
}

impl Fixture {
    fn build(keys: usize) -> Self {
        let spec = KeySetSpec::standard(keys, 42);
        let mut snapshot = Snapshot::new(Revision(1), keys);
        let mut baseline_map = std::collections::HashMap::with_capacity_and_hasher(
            keys,
            BuildHasherDefault::default(),
        );
        let (mut valid, mut disabled, mut expired) = (Vec::new(), Vec::new(), Vec::new());
        for (index, key) in KeyStream::new(spec).enumerate() {
            snapshot.insert(&key.record);
            baseline_map.insert(
                HashPrefix::from(&key.record.hash),
                (index as u128, index as u64, Arc::from("owner")),
            );
            match key.kind {
                KeyKind::Valid => valid.push(key.plaintext),
                KeyKind::Disabled => disabled.push(key.plaintext),
                KeyKind::Expired => expired.push(key.plaintext),
            }
        }
        let replica = Arc::new(Replica::new());
        replica.install_snapshot(snapshot);
        let mut rng = StdRng::seed_from_u64(7);
        valid.shuffle(&mut rng);
        disabled.shuffle(&mut rng);
        expired.shuffle(&mut rng);
        let valid_hashes = valid
            .iter()
            .map(|key| ApiKey::parse(key).expect("synthetic keys parse").hash())
            .collect();
        let unknown = keyset::unknown_keys(42, UNKNOWN_KEYS);
        let negative_cache = AnswerCache::new(100_000, Duration::from_secs(3600));
        let unknown_hashes: Vec<KeyHash> = unknown
            .iter()
            .map(|key| ApiKey::parse(key).expect("unknown keys parse").hash())
            .collect();
        for hash in &unknown_hashes {
            negative_cache.insert(0, hash, Answer::Absent);
        }
        Self {
            label: if keys >= 1_000_000 && keys.is_multiple_of(1_000_000) {
                format!("{}M keys", keys / 1_000_000)
            } else if keys >= 1000 && keys.is_multiple_of(1000) {
                format!("{}k keys", keys / 1000)
            } else {
                format!("{keys} keys")
            },
            verifier: Verifier::new(replica),
            valid,
            disabled,
            expired,
            unknown,
            baseline_map,
            valid_hashes,
            unknown_hashes,
            negative_cache,
        }
    }

    /// Checks that every benchmark below measures the verdict it is named after.
    fn check(&self) {
        let code = |key: &str| match self.verifier.verify_cached(key, NOW_UNIX_MS) {
            Lookup::Done(verdict) => verdict.code(),
            Lookup::Miss(_) => Code::NotFound,
        };
        assert_eq!(code(&self.valid[0]), Code::Valid);
        assert_eq!(code(&self.disabled[0]), Code::Disabled);
        assert_eq!(code(&self.expired[0]), Code::Expired);
        assert_eq!(code(&self.unknown[0]), Code::NotFound);
        for how in [
            Malformation::WrongChecksum,
            Malformation::Truncated,
            Malformation::BadCharacter,
        ] {
            assert_eq!(
                code(&keyset::malformed(&self.valid[0], how)),
                Code::Malformed
            );
        }
        assert_eq!(self.unknown_key_verdict(&self.unknown[0]), Code::NotFound);
    }

    /// What `Verifier::verify` does for an unknown well-formed key whose absence is cached:
    /// the hot path's miss, `MissLookup::resolve`'s cache hit, the second replica check.
    #[inline]
    fn unknown_key_verdict(&self, key: &str) -> Code {
        let hash = match self.verifier.verify_cached(key, NOW_UNIX_MS) {
            Lookup::Done(verdict) => return verdict.code(),
            Lookup::Miss(hash) => hash,
        };
        match self.negative_cache.get(0, &hash) {
            Some(Answer::Absent) => {}
            _ => unreachable!("only absences are cached here"),
        }
        match self
            .verifier
            .check(&hash, keygate_proto::time::now_unix_ms())
        {
            Some(verdict) => verdict.code(),
            None => Code::NotFound,
        }
    }
}

/// Drives a future that never waits on I/O (a cache hit) to completion on this thread.
fn poll_to_end<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::hint::spin_loop();
    }
}

fn code_of(lookup: Lookup) -> Code {
    match lookup {
        Lookup::Done(Verdict::Valid(grant)) => {
            black_box(&grant);
            Code::Valid
        }
        Lookup::Done(Verdict::Denied(code)) => code,
        Lookup::Miss(_) => Code::NotFound,
    }
}

fn bench_fixture(criterion: &mut Criterion, fixture: &Fixture) {
    let mut group = criterion.benchmark_group(format!("verify/{}", fixture.label));
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));

    // Baselines.
    let mut at = 0usize;
    group.bench_function("baseline: HashMap lookup of a precomputed hash", |b| {
        b.iter(|| {
            let hash = &fixture.valid_hashes[at];
            at = (at + 1) % fixture.valid_hashes.len();
            black_box(
                fixture
                    .baseline_map
                    .get(&HashPrefix::from(black_box(hash)))
                    .map(|entry| entry.1),
            )
        })
    });
    let mut ring = KeyRing::new(&fixture.valid);
    group.bench_function("baseline: blake3 of the key", |b| {
        b.iter(|| black_box(blake3::hash(black_box(ring.next()).as_bytes())))
    });
    let mut ring = KeyRing::new(&fixture.valid);
    group.bench_function(
        "baseline: blake3 of the key, then the HashMap lookup",
        |b| {
            b.iter(|| {
                let hash = KeyHash(*blake3::hash(black_box(ring.next()).as_bytes()).as_bytes());
                black_box(
                    fixture
                        .baseline_map
                        .get(&HashPrefix::from(&hash))
                        .map(|entry| entry.1),
                )
            })
        },
    );
    let mut ring = KeyRing::new(&fixture.valid);
    group.bench_function("baseline: CRC-32 of the key", |b| {
        b.iter(|| {
            let key = black_box(ring.next()).as_bytes();
            black_box(crc32fast::hash(&key[..key.len() - 6]))
        })
    });

    // The hot path.
    let verifier = &fixture.verifier;
    let one = fixture.valid[0].as_str();
    group.bench_function("valid, same key every time (hot cache)", |b| {
        b.iter(|| code_of(verifier.verify_cached(black_box(one), NOW_UNIX_MS)))
    });
    let mut ring = KeyRing::new(&fixture.valid);
    group.bench_function("valid, keys spread over the replica", |b| {
        b.iter(|| code_of(verifier.verify_cached(black_box(ring.next()), NOW_UNIX_MS)))
    });
    let mut ring = KeyRing::new(&fixture.valid);
    group.bench_function("valid, Verifier::verify (clock read included)", |b| {
        b.iter(|| {
            let key = black_box(ring.next());
            poll_to_end(verifier.verify(Credential::ApiKey(key))).code()
        })
    });
    for (name, how) in [
        ("malformed: one character short", Malformation::Truncated),
        (
            "malformed: character outside the alphabet",
            Malformation::BadCharacter,
        ),
        ("malformed: wrong checksum", Malformation::WrongChecksum),
    ] {
        let broken: Vec<String> = fixture
            .valid
            .iter()
            .take(4096)
            .map(|key| keyset::malformed(key, how))
            .collect();
        let mut ring = KeyRing::new(&broken);
        group.bench_function(name, |b| {
            b.iter(|| code_of(verifier.verify_cached(black_box(ring.next()), NOW_UNIX_MS)))
        });
    }
    let mut ring = KeyRing::new(&fixture.unknown);
    group.bench_function("unknown well-formed key, negative-cache hit", |b| {
        b.iter(|| fixture.unknown_key_verdict(black_box(ring.next())))
    });
    let mut at = 0usize;
    group.bench_function("negative-cache hit alone (AnswerCache::get)", |b| {
        b.iter(|| {
            let hash = &fixture.unknown_hashes[at];
            at = (at + 1) % fixture.unknown_hashes.len();
            black_box(fixture.negative_cache.get(0, black_box(hash)).is_some())
        })
    });
    let mut ring = KeyRing::new(&fixture.disabled);
    group.bench_function("disabled", |b| {
        b.iter(|| code_of(verifier.verify_cached(black_box(ring.next()), NOW_UNIX_MS)))
    });
    let mut ring = KeyRing::new(&fixture.expired);
    group.bench_function("expired", |b| {
        b.iter(|| code_of(verifier.verify_cached(black_box(ring.next()), NOW_UNIX_MS)))
    });
    group.finish();
}

/// Replica sizes: both in a real benchmark run, only the small one in test mode.
fn sizes() -> Vec<usize> {
    if let Ok(text) = std::env::var("KEYGATE_BENCH_KEYS") {
        let sizes: Vec<usize> = text
            .split(',')
            .filter_map(|size| size.trim().parse().ok())
            .collect();
        if !sizes.is_empty() {
            return sizes;
        }
    }
    let args: Vec<String> = std::env::args().collect();
    let benchmarking =
        args.iter().any(|arg| arg == "--bench") && !args.iter().any(|arg| arg == "--test");
    if benchmarking {
        vec![1_000, 1_000_000]
    } else {
        vec![1_000]
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    for keys in sizes() {
        let fixture = Fixture::build(keys);
        fixture.check();
        bench_fixture(&mut criterion, &fixture);
    }
    criterion.final_summary();
}
