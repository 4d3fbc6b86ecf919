//! Limits and permissions per key (DESIGN.md, "Limits and permissions per key"), end to end with
//! real `keygate` processes: one control plane, four gateways, the echo upstream, and the
//! operator's CLI. Credits are never overspent however many gateways spend them and come back
//! with a refill; a global rate limit holds within the README's stated bound under a steady
//! overload spread over the gateways, with correct `Retry-After` and `RateLimit` headers, and
//! each gateway falls back to its share when the control plane dies; a route's permissions
//! refuse keys and sessions without them until an update grants them; keys of one identity
//! share its credits; a route's cost spends that many credits and rate-limit units. (Bad limit
//! input at the CLI is `tests/limits_cli.rs`'s.)
//!
//! The deployments are heavy for a 2-core machine, so the tests run one at a time. Timing
//! figures (overshoot at 2, 4, 8 gateways, stranded credits, control-plane CPU) are
//! `benches/limits.sh`'s; these tests assert only counts, and bound every wait by a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use keygate_proto::time::now_unix_ms;
use support::limits::{
    COST, CreatedKey, EXPENSIVE, LimitField, LimitsDeployment, Load, ORDERS, ORDERS_READ, Outcome,
    PLAIN, load_client, request, unexpected,
};
use support::passkeys::{Device, enroll_at, get_with_session};
use support::processes::eventually_within;
use support::{DEADLINE, expect_verdict, send};

/// One deployment at a time: each test's load needs the machine's two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const GATEWAYS: usize = 4;

/// Sends one request at a time with `key` to `url` until it is refused with `code`; how many
/// passed before that.
async fn passes_until_refused(url: &str, key: &str, code: &str) -> u64 {
    let client = load_client();
    let mut passed = 0;
    let started = std::time::Instant::now();
    loop {
        let outcome = request(&client, 0, 0, url, key).await;
        if outcome.passed() {
            passed += 1;
        } else if outcome.code == code {
            return passed;
        } else {
            panic!(
                "{url}: {} {} while waiting for {code}",
                outcome.status, outcome.code
            );
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{url} still passes the key after {DEADLINE:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_are_never_overspent_by_four_gateways_and_come_back_when_refilled() {
    let _one = ONE_AT_A_TIME.lock().await;
    let deployment = LimitsDeployment::start(GATEWAYS).await;
    let key = deployment
        .create_key("acme", &["--credits", "1000", "--refill", "1000/1d"])
        .await;
    let urls = deployment.urls(PLAIN);

    // Four gateways, eight connections each, for 5 s: far more than 1,000 requests.
    let outcomes = Load::closed(&urls, std::slice::from_ref(&key.key), 8)
        .run_for(Duration::from_secs(5))
        .await;
    let odd = unexpected(&outcomes, &["USAGE_EXCEEDED"]);
    assert!(
        odd.is_empty(),
        "answers other than 200 and USAGE_EXCEEDED: {odd:?}"
    );
    let passed = outcomes.iter().filter(|o| o.passed()).count() as u64;
    let refused = outcomes.len() as u64 - passed;
    assert!(passed <= 1000, "{passed} requests passed on 1,000 credits");
    assert!(
        passed >= 990,
        "only {passed} of 1,000 credits served a request ({refused} refused): the rest is \
         stranded in leases"
    );
    for gateway in 0..GATEWAYS {
        assert!(
            outcomes.iter().any(|o| o.gateway == gateway && o.passed()),
            "gw-{gateway} never spent a credit"
        );
    }

    // Every gateway refuses now; whatever one still held is spent on the way, never more.
    let mut drained = 0;
    for url in &urls {
        drained += passes_until_refused(url, &key.key, "USAGE_EXCEEDED").await;
    }
    assert!(
        passed + drained <= 1000,
        "{passed} + {drained} requests passed on 1,000 credits"
    );

    // A key created without credits passes only once the control plane's refill task has
    // given it some, at every gateway. (A refill sets the balance to its amount minus what
    // gateways still hold in leases: an amount that covers a lease for each gateway lets all
    // four pass after the first refill.)
    let refilled = deployment
        .create_key("acme", &["--credits", "0", "--refill", "100/1s"])
        .await;
    let answer = request(&load_client(), 0, 0, &urls[0], &refilled.key).await;
    assert!(
        answer.passed() || answer.code == "USAGE_EXCEEDED",
        "{} {}",
        answer.status,
        answer.code
    );
    served_everywhere(&deployment, &refilled, "the refilled key").await;

    // Setting the credits of the key that ran dry (a CreditsChanged event) lets every gateway
    // spend again.
    deployment
        .cli_ok(&["keys", "update", &key.id, "--credits", "500"])
        .await;
    served_everywhere(&deployment, &key, "the key given 500 credits").await;
}

/// Waits until every gateway serves `key`; on a timeout, fails with what `keys get` shows.
async fn served_everywhere(deployment: &LimitsDeployment, key: &CreatedKey, what: &str) {
    let client = load_client();
    for (index, url) in deployment.urls(PLAIN).iter().enumerate() {
        let served = tokio::time::timeout(DEADLINE, async {
            while !request(&client, index, 0, url, &key.key).await.passed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if served.is_err() {
            let record = deployment.cli_ok(&["keys", "get", &key.id]).await;
            panic!("gw-{index} never served {what} within {DEADLINE:?}; keys get: {record}");
        }
    }
}

/// A steady overload: `key` paced at `rate` per second at each of `urls` for `length` (the
/// experiment's length, not a wait for anything). Returns the load, still running, when it
/// started and ended (Unix ms), and the answers that came by the end, which must all be 200
/// or RATE_LIMITED.
async fn overload(
    urls: &[String],
    key: &str,
    rate: f64,
    length: Duration,
) -> (Load, i64, i64, Vec<Outcome>) {
    let started = now_unix_ms();
    let load = Load::paced(urls, &[key.to_owned()], rate, 4);
    tokio::time::sleep(length).await;
    let ended = now_unix_ms();
    let steady: Vec<Outcome> = load
        .outcomes()
        .into_iter()
        .filter(|o| o.answered_ms <= ended)
        .collect();
    let odd = unexpected(&steady, &["RATE_LIMITED"]);
    assert!(
        odd.is_empty(),
        "answers other than 200 and RATE_LIMITED: {odd:?}"
    );
    (load, started, ended, steady)
}

/// The README's overshoot bound ("How limits hold across gateways"): per window, admitted ≤
/// limit + (N − 1) × (one share + what one gateway admits during one report round trip). A
/// share is at most ⌈limit ÷ N⌉; what a gateway admits in a round trip is at most what
/// arrives at it, counted here over 250 ms, the longest a gateway goes between reports (a
/// round trip on loopback is far shorter).
fn overshoot_bound(limit: u64, gateways: u64, rate_per_gateway: f64) -> u64 {
    let share = limit.div_ceil(gateways);
    let in_round_trip = (rate_per_gateway * 0.250).ceil() as u64;
    limit + (gateways - 1) * (share + in_round_trip)
}

/// Admitted requests per window, counting only those whose send and answer fall in the same
/// window (the admission happened between them); requests sent from `from_ms` on.
fn admitted_per_window(outcomes: &[Outcome], window_ms: i64, from_ms: i64) -> BTreeMap<i64, u64> {
    let mut windows = BTreeMap::new();
    for outcome in outcomes
        .iter()
        .filter(|o| o.passed() && o.sent_ms >= from_ms)
    {
        if let Some(window) = outcome.window(window_ms) {
            *windows.entry(window).or_default() += 1;
        }
    }
    windows
}

/// Checks the draft's headers on one answer of a key whose tightest limit is
/// `requests=100/1s`.
fn check_headers(outcome: &Outcome) {
    let what = format!("gw-{} {} {}", outcome.gateway, outcome.status, outcome.code);
    let policy = outcome
        .policy
        .as_deref()
        .unwrap_or_else(|| panic!("{what}: no RateLimit-Policy"));
    let policy = LimitField::parse(policy).unwrap_or_else(|| panic!("{what}: {policy:?}"));
    assert_eq!(policy.name, "requests", "{what}");
    assert_eq!(
        (policy.get("q"), policy.get("w")),
        (Some(100), Some(1)),
        "{what}: {policy:?}"
    );
    let ratelimit = outcome
        .ratelimit
        .as_deref()
        .unwrap_or_else(|| panic!("{what}: no RateLimit"));
    let ratelimit = LimitField::parse(ratelimit).unwrap_or_else(|| panic!("{what}: {ratelimit:?}"));
    assert_eq!(ratelimit.name, "requests", "{what}");
    let remaining = ratelimit
        .get("r")
        .unwrap_or_else(|| panic!("{what}: {ratelimit:?}"));
    let reset = ratelimit
        .get("t")
        .unwrap_or_else(|| panic!("{what}: {ratelimit:?}"));
    assert_eq!(reset, 1, "{what}: t={reset} in a 1 s window");
    if outcome.passed() {
        assert!(
            outcome.retry_after.is_none(),
            "{what}: Retry-After on a pass"
        );
        assert!(remaining < 100, "{what}: r={remaining} after admitting one");
    } else {
        assert!(remaining <= 100, "{what}: r={remaining}");
        let retry = outcome
            .retry_after
            .as_deref()
            .unwrap_or_else(|| panic!("{what}: no Retry-After"));
        assert_eq!(retry, "1", "{what}: Retry-After {retry} in a 1 s window");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_rate_limit_holds_its_bound_over_four_gateways_and_falls_back_to_shares() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut deployment = LimitsDeployment::start(GATEWAYS).await;
    let key = deployment
        .create_key("acme", &["--ratelimit", "requests=100/1s"])
        .await;
    let urls = deployment.urls(PLAIN);
    const LIMIT: u64 = 100;
    const WINDOW_MS: i64 = 1000;
    // 100 requests per second at each gateway: four times the limit, spread evenly.
    const RATE: f64 = 100.0;

    let (load, started, ended, steady) =
        overload(&urls, &key.key, RATE, Duration::from_secs(10)).await;
    for outcome in &steady {
        check_headers(outcome);
    }
    let bound = overshoot_bound(LIMIT, GATEWAYS as u64, RATE);
    let windows = admitted_per_window(&steady, WINDOW_MS, started);
    for (start, admitted) in &windows {
        assert!(
            *admitted <= bound,
            "{admitted} admitted in the window at {start} ms, over the bound {bound}: {windows:?}"
        );
    }
    // All of them, also those whose window is not known: at most the bound in every window
    // the run touched.
    let admitted = steady.iter().filter(|o| o.passed()).count() as u64;
    let touched = (ended.div_euclid(WINDOW_MS) - started.div_euclid(WINDOW_MS) + 1) as u64;
    assert!(
        admitted <= bound * touched,
        "{admitted} admitted in {touched} windows, bound {bound} each"
    );
    // And the limit is not starved: the full windows admit at least half of it on average.
    let full = touched - 2;
    assert!(
        admitted >= LIMIT / 2 * full,
        "only {admitted} admitted in {full} full windows of a limit of {LIMIT}: {windows:?}"
    );
    let refused = steady.len() as u64 - admitted;
    assert!(refused > 0, "a 4× overload was never refused");

    // The control plane dies; each gateway, cut off, admits at most its share per window.
    deployment.kill_control_plane().await;
    for gateway in &deployment.gateways {
        eventually_within(DEADLINE, &format!("{} notices", gateway.id), || async {
            gateway.readiness().await.1["connected"] == false
        })
        .await;
    }
    let cut_off = now_unix_ms();
    let from = cut_off - cut_off.rem_euclid(WINDOW_MS) + WINDOW_MS;
    let until = from + 3 * WINDOW_MS;
    // Three whole windows of load after the one in which the last gateway noticed.
    tokio::time::sleep(Duration::from_millis(
        (until - now_unix_ms()).max(0) as u64 + 50,
    ))
    .await;
    let outcomes = load.stop().await;
    let alone: Vec<Outcome> = outcomes
        .into_iter()
        .filter(|o| o.sent_ms >= from && o.answered_ms < until)
        .collect();
    let odd = unexpected(&alone, &["RATE_LIMITED"]);
    assert!(
        odd.is_empty(),
        "cut off, answers other than 200 and RATE_LIMITED: {odd:?}"
    );
    let share = LIMIT.div_ceil(GATEWAYS as u64);
    for gateway in 0..GATEWAYS {
        let own: Vec<Outcome> = alone
            .iter()
            .filter(|o| o.gateway == gateway)
            .cloned()
            .collect();
        let windows = admitted_per_window(&own, WINDOW_MS, from);
        for (start, admitted) in &windows {
            assert!(
                *admitted <= share,
                "gw-{gateway}, cut off, admitted {admitted} in the window at {start} ms, over \
                 its share {share}: {windows:?}"
            );
        }
        let admitted = own.iter().filter(|o| o.passed()).count() as u64;
        assert!(
            admitted >= share,
            "gw-{gateway}, cut off, admitted only {admitted} in three windows"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_global_across_control_plane_replicas() {
    let _one = ONE_AT_A_TIME.lock().await;
    // gw-0 syncs from cp-0, gw-1 from cp-1: neither replica hears the other's gateway except
    // through the database.
    let deployment = LimitsDeployment::start_with(2, 2).await;
    let key = deployment
        .create_key("acme", &["--ratelimit", "requests=100/1s"])
        .await;
    let urls = deployment.urls(PLAIN);
    const LIMIT: u64 = 100;
    const WINDOW_MS: i64 = 1000;
    // Each gateway is offered the whole limit: counted per replica, each would admit all of
    // it, twice the limit in every window.
    const RATE: f64 = 100.0;

    let (load, started, ended, steady) =
        overload(&urls, &key.key, RATE, Duration::from_secs(8)).await;
    load.stop().await;
    let windows = admitted_per_window(&steady, WINDOW_MS, started);
    // The windows both gateways were loaded through, from the second on (the first is
    // partly before the load).
    let full: Vec<u64> = windows
        .iter()
        .filter(|(start, _)| **start > started && **start + WINDOW_MS <= ended)
        .map(|(_, admitted)| *admitted)
        .collect();
    assert!(full.len() >= 5, "{windows:?}");
    let mut sorted = full.clone();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    // Global: about the limit (the one-replica bound, plus what arrives while a count crosses
    // the database). Per replica it would be about twice the limit; the median of the full
    // windows tells the two apart with room on either side.
    assert!(
        median <= LIMIT * 3 / 2,
        "median {median} admitted per window across two replicas, limit {LIMIT}: {windows:?}"
    );
    assert!(
        median >= LIMIT / 2,
        "median {median} admitted per window, limit {LIMIT}: starved: {windows:?}"
    );
    for gateway in 0..2 {
        assert!(
            steady.iter().any(|o| o.gateway == gateway && o.passed()),
            "gw-{gateway} admitted nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_refuses_keys_and_sessions_without_its_permission_until_a_key_is_granted_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let deployment = LimitsDeployment::start(GATEWAYS).await;
    let writer = deployment
        .create_key("acme", &["--permission", "orders.write"])
        .await;
    let plain = deployment.create_key("acme", &[]).await;
    // Permissions are exact strings: a longer one is not the one the route names.
    let longer = deployment
        .create_key("acme", &["--permission", "orders.read.all"])
        .await;
    for gateway in &deployment.gateways {
        for key in [&writer, &plain, &longer] {
            expect_verdict(
                &gateway.url(ORDERS),
                &key.key,
                403,
                Some("INSUFFICIENT_PERMISSIONS"),
            )
            .await;
            expect_verdict(&gateway.url(PLAIN), &key.key, 200, None).await;
        }
    }
    // The verify endpoint checks permissions named in the request.
    let verify = send(
        "POST",
        &deployment.gateways[0].url("/_keygate/v1/verify"),
        &[("content-type", b"application/json")],
        serde_json::json!({"key": writer.key, "permissions": [ORDERS_READ]})
            .to_string()
            .as_bytes(),
    )
    .await;
    let body = verify.json();
    assert_eq!(
        (&body["valid"], &body["code"]),
        (
            &serde_json::json!(false),
            &serde_json::json!("INSUFFICIENT_PERMISSIONS")
        ),
        "{body}"
    );

    deployment
        .cli_ok(&["keys", "update", &writer.id, "--permission", ORDERS_READ])
        .await;
    for gateway in &deployment.gateways {
        expect_verdict(&gateway.url(ORDERS), &writer.key, 200, None).await;
    }
    expect_verdict(
        &deployment.gateways[0].url(ORDERS),
        &plain.key,
        403,
        Some("INSUFFICIENT_PERMISSIONS"),
    )
    .await;

    // Sessions carry no permissions: refused on that route, served on the others.
    assert_eq!(deployment.cli(&["users", "create", "alice"]).await.code, 0);
    let enrollment = deployment
        .cli_ok(&["enrollments", "create", "--user", "alice"])
        .await;
    let link = enrollment["link"].as_str().expect("a link");
    let (origin, token) = link.split_once("/#enroll=").expect("a link with a token");
    let session = enroll_at(&deployment.http, &Device::new(origin), token, "Laptop").await;
    for gateway in &deployment.gateways {
        eventually_within(
            DEADLINE,
            &format!("the session works at {}", gateway.id),
            || async { get_with_session(&gateway.url(PLAIN), &session).await.status == 200 },
        )
        .await;
        let refused = get_with_session(&gateway.url(ORDERS), &session).await;
        assert_eq!(
            (refused.status, refused.code()),
            (403, "INSUFFICIENT_PERMISSIONS".to_owned()),
            "{}",
            String::from_utf8_lossy(&refused.body)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_of_one_identity_share_its_credits() {
    let _one = ONE_AT_A_TIME.lock().await;
    let deployment = LimitsDeployment::start(GATEWAYS).await;
    deployment
        .cli_ok(&["identities", "create", "acme", "--credits", "100"])
        .await;
    let first = deployment.create_key("acme", &["--identity", "acme"]).await;
    let second = deployment.create_key("acme", &["--identity", "acme"]).await;
    let keys = [first.key.clone(), second.key.clone()];
    let urls = deployment.urls(PLAIN);

    // Each sender alternates between the two keys.
    let outcomes = Load::closed(&urls, &keys, 4)
        .run_for(Duration::from_secs(3))
        .await;
    let odd = unexpected(&outcomes, &["USAGE_EXCEEDED"]);
    assert!(
        odd.is_empty(),
        "answers other than 200 and USAGE_EXCEEDED: {odd:?}"
    );
    let passed = |key: usize| {
        outcomes
            .iter()
            .filter(|o| o.passed() && o.key == key)
            .count() as u64
    };
    let (by_first, by_second) = (passed(0), passed(1));
    assert!(
        by_first > 0 && by_second > 0,
        "{by_first} and {by_second} passed"
    );
    let mut total = by_first + by_second;
    for url in &urls {
        for key in &keys {
            total += passes_until_refused(url, key, "USAGE_EXCEEDED").await;
        }
    }
    assert!(
        total <= 100,
        "the two keys passed {total} times on 100 shared credits"
    );
    assert!(
        total >= 99,
        "the two keys passed only {total} times on 100 shared credits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_cost_spends_that_many_credits_and_rate_limit_units() {
    let _one = ONE_AT_A_TIME.lock().await;
    let deployment = LimitsDeployment::start(GATEWAYS).await;
    // A 30-day window: the test never straddles two.
    let key = deployment
        .create_key(
            "acme",
            &["--credits", "50", "--ratelimit", "requests=1000/30d"],
        )
        .await;
    let client = load_client();
    let gateway = &deployment.gateways[0];
    let remaining = |outcome: &Outcome| {
        LimitField::parse(outcome.ratelimit.as_deref().expect("a RateLimit header"))
            .and_then(|field| field.get("r"))
            .expect("RateLimit r=")
    };
    // Nine requests of cost 5 (45 credits), then five of cost 1 (one of them below, for `t`):
    // all 50 credits.
    for spent in 1..=9 {
        let outcome = request(&client, 0, 0, &gateway.url(EXPENSIVE), &key.key).await;
        assert!(
            outcome.passed(),
            "request {spent}: {} {}",
            outcome.status,
            outcome.code
        );
        assert_eq!(remaining(&outcome), 1000 - COST * spent, "request {spent}");
    }
    // `t` is the seconds left in the 30-day window (aligned to Unix time), rounded up.
    let outcome = request(&client, 0, 0, &gateway.url(PLAIN), &key.key).await;
    let window_ms = 30 * 24 * 3600 * 1000;
    let left_ms = |now: i64| window_ms - now.rem_euclid(window_ms);
    let reset = LimitField::parse(outcome.ratelimit.as_deref().expect("a RateLimit header"))
        .and_then(|field| field.get("t"))
        .expect("RateLimit t=");
    let (earliest, latest) = (left_ms(outcome.answered_ms), left_ms(outcome.sent_ms));
    assert!(
        (earliest as u64).div_ceil(1000) <= reset && reset <= (latest as u64).div_ceil(1000),
        "t={reset}, but {earliest}..={latest} ms were left in the window"
    );
    assert!(outcome.passed(), "{} {}", outcome.status, outcome.code);
    assert_eq!(remaining(&outcome), 1000 - COST * 9 - 1);
    for spent in 2..=5 {
        let outcome = request(&client, 0, 0, &gateway.url(PLAIN), &key.key).await;
        assert!(
            outcome.passed(),
            "cheap request {spent}: {} {}",
            outcome.status,
            outcome.code
        );
        assert_eq!(remaining(&outcome), 1000 - COST * 9 - spent);
    }
    for gateway in &deployment.gateways {
        for path in [EXPENSIVE, PLAIN] {
            let outcome = request(&client, 0, 0, &gateway.url(path), &key.key).await;
            assert_eq!(
                (outcome.status, outcome.code.as_str()),
                (429, "USAGE_EXCEEDED"),
                "{} {path} after 50 credits were spent",
                gateway.id
            );
        }
    }
}
