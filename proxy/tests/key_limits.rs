//! Per-key limits through a synced gateway (DESIGN.md, "Limits and permissions per key"):
//! route permissions, rate limits with their headers, route cost, credits leased from the
//! (scripted) control plane and given back on shutdown, identities shared by keys, and the
//! verify and authz endpoints. One gateway; the global counts across gateways are tested with
//! real processes in the workspace's `tests/limits.rs`.
//!
//! Rate limits here use a 30-day window (aligned to Unix time), so no test run straddles a
//! window boundary in practice.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use keygate_proto::session::SessionSigner;
use keygate_proto::{Change, Identity, KeyLimits, ReplicaKey};
use keygate_proxy::{AuthMode, ProxyConfig, RouteConfig};
use support::*;

const MONTH_SECS: u64 = 30 * 24 * 3600;

fn route(prefix: &str, upstream: String) -> RouteConfig {
    RouteConfig {
        path_prefix: prefix.into(),
        upstream,
        auth: AuthMode::KeyOrSession,
        ..RouteConfig::default()
    }
}

fn key_with(owner: &str, limits: KeyLimits) -> (String, ReplicaKey) {
    let (plaintext, mut key) = new_key(owner);
    key.limits = limits;
    (plaintext, key)
}

fn ratelimit(spec: &str) -> keygate_proto::RateLimit {
    spec.parse().unwrap()
}

struct Setup {
    control_plane: ControlPlane,
    gateway: RunningGateway,
    client: TestClient,
    _upstream: Upstream,
}

/// A gateway with routes `/` (no requirements), `/orders/` (needs `orders.read`) and
/// `/expensive/` (costs 2), synced with `keys`.
async fn setup(keys: &[&ReplicaKey], before: impl FnOnce(&ControlPlane)) -> Setup {
    let control_plane = ControlPlane::start().await;
    before(&control_plane);
    for key in keys {
        control_plane.upsert(key);
    }
    let upstream = Upstream::start().await;
    let mut config: ProxyConfig = config(&control_plane);
    config.routes = vec![
        route("/", upstream.url()),
        RouteConfig {
            permissions: vec!["orders.read".into()],
            ..route("/orders/", upstream.url())
        },
        RouteConfig {
            cost: Some(2),
            ..route("/expensive/", upstream.url())
        },
    ];
    let gateway = start_ready_gateway(config).await;
    let status = gateway.status.clone();
    let expected = keys.len();
    eventually("the keys", Duration::from_secs(10), || {
        status.replica_len() == expected
    })
    .await;
    Setup {
        control_plane,
        gateway,
        client: client(),
        _upstream: upstream,
    }
}

async fn get_as(setup: &Setup, path: &str, key: &str) -> Reply {
    get_with(
        &setup.client,
        &setup.gateway.url(path),
        &[("authorization", &format!("Bearer {key}"))],
    )
    .await
}

fn code_of(reply: &Reply) -> String {
    reply.json()["error"]["code"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// `RateLimit`'s `r` and `t`, checking the header's shape for `name`.
fn ratelimit_header(reply: &Reply, name: &str) -> (u64, u64) {
    let value = reply.headers["ratelimit"].to_str().unwrap();
    let rest = value
        .strip_prefix(&format!("\"{name}\";r="))
        .unwrap_or_else(|| panic!("RateLimit: {value}"));
    let (remaining, reset) = rest.split_once(";t=").unwrap();
    (remaining.parse().unwrap(), reset.parse().unwrap())
}

#[tokio::test]
async fn a_route_with_permissions_serves_only_keys_that_have_them() {
    let (reader, reader_key) = key_with(
        "alice",
        KeyLimits {
            permissions: vec!["orders.read".into(), "orders.write".into()],
            ..KeyLimits::default()
        },
    );
    let (plain, plain_key) = new_key("bob");
    let signer = SessionSigner::generate("sk_1");
    let setup = setup(&[&reader_key, &plain_key], |control_plane| {
        control_plane.signing_key(&signer, None);
    })
    .await;

    let reply = get_as(&setup, "/orders/1", &reader).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(
        reply.headers.get("ratelimit").is_none(),
        "no rate limits, no headers"
    );

    let reply = get_as(&setup, "/orders/1", &plain).await;
    assert_eq!(reply.status, 403);
    assert_eq!(code_of(&reply), "INSUFFICIENT_PERMISSIONS");
    assert!(reply.headers.get("www-authenticate").is_none());
    // Elsewhere the plain key is served as before.
    assert_eq!(get_as(&setup, "/other", &plain).await.status, 200);

    // Sessions carry no permissions.
    let session = session_token(&signer, "ses_1", "alice", "pk_1");
    let reply = get_as(&setup, "/orders/1", &session).await;
    assert_eq!(reply.status, 403);
    assert_eq!(code_of(&reply), "INSUFFICIENT_PERMISSIONS");
    assert_eq!(get_as(&setup, "/other", &session).await.status, 200);

    let metrics = get_with(&setup.client, &setup.gateway.admin_url("/metrics"), &[]).await;
    let page = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        page.lines().any(|line| line
            .starts_with("keygate_limit_refusals_total{code=\"INSUFFICIENT_PERMISSIONS\"}")
            && !line.ends_with(" 0")),
        "{page}"
    );
}

#[tokio::test]
async fn rate_limited_keys_get_the_headers_and_429_with_retry_after() {
    let (text, key) = key_with(
        "alice",
        KeyLimits {
            ratelimits: vec![ratelimit("requests=3/30d")],
            ..KeyLimits::default()
        },
    );
    let setup = setup(&[&key], |_| {}).await;
    for left in [2, 1, 0] {
        let reply = get_as(&setup, "/a", &text).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(
            reply.headers["ratelimit-policy"],
            format!("\"requests\";q=3;w={MONTH_SECS}")
        );
        let (remaining, reset) = ratelimit_header(&reply, "requests");
        assert_eq!(remaining, left);
        assert!((1..=MONTH_SECS).contains(&reset), "t={reset}");
    }
    let reply = get_as(&setup, "/a", &text).await;
    assert_eq!(reply.status, 429);
    assert_eq!(code_of(&reply), "RATE_LIMITED");
    let retry_after: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (remaining, reset) = ratelimit_header(&reply, "requests");
    assert_eq!(remaining, 0);
    assert_eq!(
        retry_after, reset,
        "Retry-After is the time to the window's end"
    );
    // The use was reported to the control plane (at most 250 ms apart while unreported).
    let control_plane = setup.control_plane.clone();
    let holder = format!("key:{}", key.id);
    eventually("a usage report of 3", Duration::from_secs(10), || {
        control_plane.reports().iter().any(|report| {
            report.windows.iter().any(|window| {
                window.holder == holder && window.limit == "requests" && window.used == 3
            })
        })
    })
    .await;
}

#[tokio::test]
async fn a_routes_cost_counts_in_every_limit() {
    let (text, key) = key_with(
        "alice",
        KeyLimits {
            ratelimits: vec![ratelimit("requests=3/30d")],
            ..KeyLimits::default()
        },
    );
    let setup = setup(&[&key], |_| {}).await;
    let reply = get_as(&setup, "/expensive/x", &text).await;
    assert_eq!(reply.status, 200);
    assert_eq!(ratelimit_header(&reply, "requests").0, 1);
    let reply = get_as(&setup, "/expensive/x", &text).await;
    assert_eq!(reply.status, 429, "2 + 2 > 3");
    // The refused request spent nothing: one unit is still there for a request costing 1.
    assert_eq!(get_as(&setup, "/cheap", &text).await.status, 200);
}

#[tokio::test]
async fn credits_are_leased_spent_and_given_back_on_shutdown() {
    let (text, key) = key_with(
        "alice",
        KeyLimits {
            credits: true,
            ..KeyLimits::default()
        },
    );
    let holder = format!("key:{}", key.id);
    let Setup {
        control_plane,
        gateway,
        client,
        _upstream,
    } = setup(&[&key], |control_plane| {
        control_plane.set_credits(&holder, 10)
    })
    .await;
    let get = |path: &'static str| {
        let (client, url, text) = (client.clone(), gateway.url(path), text.clone());
        async move { get_with(&client, &url, &[("x-api-key", &text)]).await }
    };
    let mut admitted = 0;
    for _ in 0..4 {
        let reply = get("/a").await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        admitted += 1;
    }
    assert!(control_plane.credits(&holder) <= 10 - admitted);
    gateway.stop().await;
    // Everything leased and not spent came back: the balance is what was not spent.
    assert_eq!(control_plane.credits(&holder), 10 - admitted);
    assert!(
        !control_plane.returned().is_empty(),
        "the leases were given back"
    );
}

#[tokio::test]
async fn cut_off_a_gateway_spends_its_live_leases_and_returns_expired_ones_on_reconnect() {
    let (text, key) = key_with(
        "alice",
        KeyLimits {
            credits: true,
            ..KeyLimits::default()
        },
    );
    let holder = format!("key:{}", key.id);
    let setup = setup(&[&key], |control_plane| {
        control_plane.set_credits(&holder, 10);
        control_plane.set_lease_ttl(Duration::from_millis(1_500));
        // So the gateway holds unspent credits when it is cut off.
        control_plane.set_lease_size(5);
    })
    .await;
    assert_eq!(get_as(&setup, "/a", &text).await.status, 200);
    let granted = 10 - setup.control_plane.credits(&holder);
    assert_eq!(granted, 5);

    setup.control_plane.refuse_streams(true);
    setup.control_plane.disconnect_all();
    let status = setup.gateway.status.clone();
    eventually("the gateway to notice", Duration::from_secs(10), || {
        !status.connected()
    })
    .await;
    // Cut off: what is leased is still spent ...
    assert_eq!(get_as(&setup, "/a", &text).await.status, 200);
    assert_eq!(get_as(&setup, "/a", &text).await.status, 200);
    // ... but more than is left cannot be proven.
    let reply = verify(&setup, serde_json::json!({"key": text, "cost": 3})).await;
    assert_eq!(reply.json()["code"], "STALE");
    assert!(setup.control_plane.returned().is_empty());

    // Back: the lease is given back with what was left of it once it expires.
    setup.control_plane.refuse_streams(false);
    let control_plane = setup.control_plane.clone();
    eventually(
        "the expired lease to be returned",
        Duration::from_secs(20),
        || !control_plane.returned().is_empty(),
    )
    .await;
    let returned = setup.control_plane.returned();
    assert_eq!(returned.len(), 1, "{returned:?}");
    assert_eq!(returned[0].unspent, 2);
    assert_eq!(setup.control_plane.credits(&holder), 10 - 3);
}

#[tokio::test]
async fn at_zero_credits_the_key_gets_usage_exceeded() {
    let (text, key) = key_with(
        "alice",
        KeyLimits {
            credits: true,
            ratelimits: vec![ratelimit("requests=100/30d")],
            ..KeyLimits::default()
        },
    );
    let holder = format!("key:{}", key.id);
    let setup = setup(&[&key], |control_plane| {
        control_plane.set_credits(&holder, 2)
    })
    .await;
    assert_eq!(get_as(&setup, "/a", &text).await.status, 200);
    assert_eq!(get_as(&setup, "/a", &text).await.status, 200);
    let reply = get_as(&setup, "/a", &text).await;
    assert_eq!(reply.status, 429);
    assert_eq!(code_of(&reply), "USAGE_EXCEEDED");
    assert!(reply.headers.get("retry-after").is_none());
    // A request refused for credits counted nothing in the rate limit.
    setup.control_plane.set_credits(&holder, 1);
    setup.control_plane.commit_change(Change::CreditsChanged {
        holder: holder.parse().unwrap(),
        remaining: 1,
    });
    let mut reply = get_as(&setup, "/a", &text).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reply.status != 200 {
        // Until the CreditsChanged event arrives the gateway still remembers "exhausted".
        assert!(tokio::time::Instant::now() < deadline, "{:?}", reply.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
        reply = get_as(&setup, "/a", &text).await;
    }
    assert_eq!(ratelimit_header(&reply, "requests").0, 97);
}

#[tokio::test]
async fn keys_of_one_identity_share_its_limit() {
    let identity = KeyLimits {
        identity: Some("acme".into()),
        ..KeyLimits::default()
    };
    let (first, first_key) = key_with("alice", identity.clone());
    let (second, second_key) = key_with("bob", identity);
    let setup = setup(&[&first_key, &second_key], |control_plane| {
        control_plane.commit_change(Change::IdentityUpserted(Identity {
            id: "acme".into(),
            ratelimits: vec![ratelimit("requests=3/30d")],
            credits: false,
        }));
    })
    .await;
    assert_eq!(get_as(&setup, "/a", &first).await.status, 200);
    assert_eq!(get_as(&setup, "/a", &second).await.status, 200);
    let reply = get_as(&setup, "/a", &first).await;
    assert_eq!(reply.status, 200);
    assert_eq!(ratelimit_header(&reply, "requests").0, 0);
    assert_eq!(get_as(&setup, "/a", &second).await.status, 429);
    assert_eq!(get_as(&setup, "/a", &first).await.status, 429);
}

async fn verify(setup: &Setup, body: serde_json::Value) -> Reply {
    let request = Request::post(setup.gateway.url("/_keygate/v1/verify"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(&setup.client, request).await
}

#[tokio::test]
async fn the_verify_endpoint_checks_permissions_and_consumes() {
    let (text, key) = key_with(
        "alice",
        KeyLimits {
            ratelimits: vec![ratelimit("requests=2/30d")],
            permissions: vec!["orders.read".into()],
            ..KeyLimits::default()
        },
    );
    let setup = setup(&[&key], |_| {}).await;
    let reply = verify(
        &setup,
        serde_json::json!({"key": text, "permissions": ["orders.read"]}),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["valid"], true);
    assert_eq!(reply.json()["keyId"], key.id.to_string());
    assert_eq!(ratelimit_header(&reply, "requests").0, 1);

    let reply = verify(
        &setup,
        serde_json::json!({"key": text, "permissions": ["orders.write"]}),
    )
    .await;
    assert_eq!(reply.json()["valid"], false);
    assert_eq!(reply.json()["code"], "INSUFFICIENT_PERMISSIONS");
    assert!(reply.json()["keyId"].is_null());

    let reply = verify(&setup, serde_json::json!({"key": text, "cost": 2})).await;
    assert_eq!(reply.json()["code"], "RATE_LIMITED");
    assert!(reply.headers.get("retry-after").is_some());
    let reply = verify(&setup, serde_json::json!({"key": text})).await;
    assert_eq!(
        reply.json()["code"],
        "VALID",
        "the refused check spent nothing"
    );
    assert_eq!(
        verify(&setup, serde_json::json!({"key": text}))
            .await
            .json()["code"],
        "RATE_LIMITED"
    );

    let reply = verify(
        &setup,
        serde_json::json!({"key": text, "permissions": ["orders read"]}),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("permission")
    );
}

#[tokio::test]
async fn the_authz_endpoint_applies_route_and_asked_permissions() {
    let (reader, reader_key) = key_with(
        "alice",
        KeyLimits {
            permissions: vec!["orders.read".into()],
            ..KeyLimits::default()
        },
    );
    let setup = setup(&[&reader_key], |_| {}).await;
    let check = |original: &'static str, asked: Option<&'static str>| {
        let (client, url, reader) = (
            setup.client.clone(),
            setup.gateway.url("/_keygate/v1/authz"),
            reader.clone(),
        );
        async move {
            let mut headers = vec![
                ("x-original-uri", original.to_owned()),
                ("authorization", format!("Bearer {reader}")),
            ];
            if let Some(asked) = asked {
                headers.push(("x-keygate-permissions", asked.to_owned()));
            }
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            get_with(&client, &url, &headers).await
        }
    };
    assert_eq!(check("/orders/1", None).await.status, 200);
    assert_eq!(check("/other", Some("orders.read")).await.status, 200);
    let reply = check("/other", Some("orders.read, orders.write")).await;
    assert_eq!(reply.status, 403);
    assert_eq!(code_of(&reply), "INSUFFICIENT_PERMISSIONS");
    assert_eq!(check("/other", Some("orders.*")).await.status, 400);
}
