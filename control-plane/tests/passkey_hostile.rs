//! The passkey API under hostile traffic (DESIGN.md, "Hostile traffic"), over real HTTP on
//! 127.0.0.1:0 with the software authenticator doing real WebAuthn ceremonies:
//!
//! - a thousand `login/begin` calls naming alice, from a thousand addresses, do not lock her
//!   out;
//! - behind a trusted proxy, clients at different forwarded addresses have separate buckets,
//!   an IPv6 /64 is one client, and a forged `X-Forwarded-For` from anyone else is ignored;
//! - one /64 flooding the ceremony table is stopped at its own cap, and others still sign in;
//! - `login/begin` answers the same status, shape and size for a user who exists and one who
//!   does not;
//! - the session cookie is `__Host-keygate_session` when Secure, both names are read, and two
//!   that disagree are refused.
//!
//! The listener trusts `127.0.0.1` as a proxy; requests "from the internet" come either through
//! it with `X-Forwarded-For`, or straight from another loopback address (`127.0.0.2`).

#![allow(clippy::unwrap_used)]

mod support;

#[path = "../../benches/src/authenticator.rs"]
#[allow(dead_code)]
mod authenticator;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use authenticator::Device;
use keygate_control_plane::config::Cidr;
use keygate_control_plane::{ControlPlane, ControlPlaneConfig};
use keygate_proto::pb;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// The proxy the listener trusts (requests sent from it carry the client in a header).
const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// A client that connects directly (not a trusted proxy).
const DIRECT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A control plane serving until dropped.
struct Server {
    http: SocketAddr,
    grpc: SocketAddr,
    origin: String,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

/// A control plane trusting `127.0.0.1` as a proxy, with `adjust` applied to its config.
async fn server(adjust: impl FnOnce(&mut ControlPlaneConfig)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(&dir);
    config.trusted_proxies = vec!["127.0.0.1/32".parse::<Cidr>().unwrap()];
    adjust(&mut config);
    let control_plane = ControlPlane::bind(config.clone(), support::prometheus())
        .await
        .unwrap();
    let (http, grpc) = (control_plane.http_addr(), control_plane.grpc_addr());
    let origin = config.relying_party_origin(http);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(control_plane.serve(async {
        let _ = stopped.await;
    }));
    Server {
        http,
        grpc,
        origin,
        _stop: stop,
        _dir: dir,
    }
}

/// One HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Lowercased names, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request from the address `from` (a loopback address), on a connection of its own.
async fn request(
    server: &Server,
    from: IpAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Reply {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(server.http).await.unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("a complete response head");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    assert!(
        !headers.iter().any(|(name, _)| name == "transfer-encoding"),
        "bodies have a length"
    );
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// A POST of `body` through the trusted proxy for the client `client`.
async fn post_as(server: &Server, client: &str, path: &str, body: &Value) -> Reply {
    request(
        server,
        PROXY,
        "POST",
        path,
        &[("x-forwarded-for", client)],
        Some(body),
    )
    .await
}

/// `user_id` with an enrollment link (through the Admin API); the link's token.
async fn user_with_link(server: &Server, user_id: &str) -> String {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = pb::admin_client::AdminClient::new(channel);
    admin
        .create_user(support::with_token(
            pb::CreateUserRequest {
                user_id: user_id.into(),
            },
            Some(support::ADMIN_TOKEN),
        ))
        .await
        .unwrap();
    let link = admin
        .create_enrollment(support::with_token(
            pb::CreateEnrollmentRequest {
                user_id: user_id.into(),
                ..Default::default()
            },
            Some(support::ADMIN_TOKEN),
        ))
        .await
        .unwrap()
        .into_inner()
        .link;
    link.split_once("#enroll=").unwrap().1.to_owned()
}

/// Enrolls a passkey on `device` through the link `token`, from `client`; the finish's reply.
async fn enroll(server: &Server, client: &str, device: &Device, token: &str) -> Reply {
    let begun = post_as(
        server,
        client,
        "/v1/enroll/begin",
        &json!({ "token": token }),
    )
    .await;
    assert_eq!(begun.status, 200, "{}", begun.text());
    let begun = begun.json();
    let credential = device.create(&begun["publicKey"]).await;
    let finished = post_as(
        server,
        client,
        "/v1/enroll/finish",
        &json!({ "ceremonyId": begun["ceremonyId"], "credential": credential }),
    )
    .await;
    assert_eq!(finished.status, 200, "{}", finished.text());
    finished
}

/// A full sign-in with `device` from `client`, naming `user_id` at begin; the finish's reply.
async fn sign_in(server: &Server, client: &str, device: &Device, user_id: Option<&str>) -> Reply {
    let body = user_id.map_or_else(|| json!({}), |user_id| json!({ "userId": user_id }));
    let begun = post_as(server, client, "/v1/login/begin", &body).await;
    assert_eq!(begun.status, 200, "{}", begun.text());
    let begun = begun.json();
    let credential = device.get(&begun["publicKey"]).await;
    post_as(
        server,
        client,
        "/v1/login/finish",
        &json!({ "ceremonyId": begun["ceremonyId"], "credential": credential }),
    )
    .await
}

/// The signed-in user's passkeys, with `cookie` as the `Cookie` header(s).
async fn my_passkeys(server: &Server, cookies: &[&str]) -> Reply {
    let headers: Vec<(&str, &str)> = cookies.iter().map(|cookie| ("cookie", *cookie)).collect();
    request(server, PROXY, "GET", "/v1/me/passkeys", &headers, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_begins_naming_alice_from_a_thousand_addresses_do_not_lock_her_out() {
    // The defaults: 60 calls a minute per address, 30 per user, 20 ceremonies per address.
    let server = std::sync::Arc::new(server(|_| {}).await);
    let device = Device::new(&server.origin);
    let token = user_with_link(&server, "alice").await;
    enroll(&server, "198.51.100.7", &device, &token).await;

    // 1,000 sign-ins begun for alice, each from its own address, 16 at a time.
    let mut refused = Vec::new();
    for batch in 0..(1000 / 16 + 1) {
        let mut calls = JoinSet::new();
        for i in (batch * 16)..((batch + 1) * 16).min(1000) {
            let server = std::sync::Arc::clone(&server);
            calls.spawn(async move {
                let client = format!("203.0.{}.{}", i / 250, i % 250 + 1);
                let reply = post_as(
                    &server,
                    &client,
                    "/v1/login/begin",
                    &json!({ "userId": "alice" }),
                )
                .await;
                (reply.status, reply.code())
            });
        }
        while let Some(outcome) = calls.join_next().await {
            let (status, code) = outcome.unwrap();
            if status != 200 {
                refused.push((status, code));
            }
        }
    }
    assert!(
        refused.is_empty(),
        "{} refused: {:?}",
        refused.len(),
        &refused[..refused.len().min(5)]
    );

    // Alice signs in as usual, naming herself, and her session works.
    let signed_in = sign_in(&server, "198.51.100.7", &device, Some("alice")).await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.text());
    assert_eq!(signed_in.json()["userId"], "alice");
    let token = signed_in.json()["sessionToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let mine = my_passkeys(&server, &[&format!("keygate_session={token}")]).await;
    assert_eq!(mine.status, 200, "{}", mine.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_has_its_own_bucket_and_forged_headers_are_ignored() {
    let server = server(|config| config.passkey_rate_per_address = 2).await;
    let begin = |client: &'static str| {
        let server = &server;
        async move { post_as(server, client, "/v1/login/begin", &json!({})).await }
    };
    // Two users behind the same proxy, at different forwarded addresses.
    for _ in 0..2 {
        assert_eq!(begin("192.0.2.10").await.status, 200);
    }
    let limited = begin("192.0.2.10").await;
    assert_eq!(
        (limited.status, limited.code().as_str()),
        (429, "RATE_LIMITED")
    );
    assert!(!limited.all("retry-after").is_empty());
    assert_eq!(
        begin("192.0.2.20").await.status,
        200,
        "another client's bucket"
    );
    // `Forwarded` (RFC 7239) names a client the same way.
    let forwarded = |value: &'static str| {
        let server = &server;
        async move {
            let headers = [("forwarded", value)];
            request(
                server,
                PROXY,
                "POST",
                "/v1/login/begin",
                &headers,
                Some(&json!({})),
            )
            .await
        }
    };
    assert_eq!(forwarded("for=192.0.2.30").await.status, 200);
    assert_eq!(forwarded(r#"for="192.0.2.30:4711""#).await.status, 200);
    assert_eq!(
        forwarded("for=192.0.2.30").await.status,
        429,
        "the same client"
    );

    // IPv6 clients count per /64.
    assert_eq!(begin("2001:db8:1:2::1").await.status, 200);
    assert_eq!(begin("2001:db8:1:2:ffff::9").await.status, 200);
    assert_eq!(begin("2001:db8:1:2::77").await.status, 429, "the same /64");
    assert_eq!(begin("2001:db8:1:3::1").await.status, 200, "the next /64");

    // A client that is not a trusted proxy cannot pick its bucket by forging the header.
    let mut statuses = Vec::new();
    for i in 0..3 {
        let forged = format!("198.51.100.{i}");
        let headers = [("x-forwarded-for", forged.as_str())];
        let reply = request(
            &server,
            DIRECT,
            "POST",
            "/v1/login/begin",
            &headers,
            Some(&json!({})),
        )
        .await;
        statuses.push(reply.status);
    }
    assert_eq!(statuses, [200, 200, 429]);
    // ... nor spend somebody else's: the forged address still has its own.
    assert_eq!(begin("198.51.100.0").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_flooding_the_ceremony_table_does_not_stop_another_address_signing_in() {
    // No per-address rate: the ceremony cap is what stops the flood.
    let server = server(|config| {
        config.passkey_rate_per_address = 0;
        config.max_ceremonies_per_address = 20;
    })
    .await;
    let device = Device::new(&server.origin);
    let token = user_with_link(&server, "alice").await;
    enroll(&server, "198.51.100.7", &device, &token).await;

    let mut statuses = Vec::new();
    let mut refusal = None;
    for i in 0..40 {
        // A fresh address of the same /64 each time.
        let client = format!("2001:db8:bad:1:{i:x}::{:x}", i * 7 + 1);
        let reply = post_as(&server, &client, "/v1/login/begin", &json!({})).await;
        statuses.push(reply.status);
        if reply.status != 200 {
            refusal.get_or_insert(reply);
        }
    }
    assert!(
        statuses[..20].iter().all(|&status| status == 200),
        "{statuses:?}"
    );
    assert!(
        statuses[20..].iter().all(|&status| status == 429),
        "{statuses:?}"
    );
    let refusal = refusal.unwrap();
    assert_eq!(refusal.code(), "TOO_MANY_CEREMONIES_FROM_ADDRESS");
    let retry: u64 = refusal.all("retry-after")[0].parse().unwrap();
    assert!(
        (1..=300).contains(&retry),
        "until the first ceremony expires: {retry}"
    );

    // Another address signs in normally.
    let signed_in = sign_in(&server, "198.51.100.7", &device, None).await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.text());
    assert_eq!(signed_in.json()["userId"], "alice");
}

/// A JSON value's shape: its keys and the kinds and lengths of its values, recursively.
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        Value::String(text) => json!(format!("string of {}", text.len())),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => Value::Null,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_begin_looks_the_same_for_an_existing_and_a_missing_user() {
    let server = server(|config| config.passkey_rate_per_address = 0).await;
    let device = Device::new(&server.origin);
    let token = user_with_link(&server, "alice").await;
    enroll(&server, "198.51.100.7", &device, &token).await;

    let begin = |body: Value| {
        let server = &server;
        async move { post_as(server, "192.0.2.1", "/v1/login/begin", &body).await }
    };
    let existing = begin(json!({ "userId": "alice" })).await;
    let missing = begin(json!({ "userId": "mallory" })).await;
    let nobody = begin(json!({})).await;
    for reply in [&existing, &missing, &nobody] {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(shape(&existing.json()), shape(&missing.json()));
    assert_eq!(shape(&existing.json()), shape(&nobody.json()));
    assert_eq!(existing.body.len(), missing.body.len());
    let allowed = &existing.json()["publicKey"]["allowCredentials"];
    assert!(
        allowed.as_array().is_none_or(Vec::is_empty),
        "alice's credentials are not listed: {allowed}"
    );

    // The finish for a named user refuses another user's passkey as it refuses an unknown
    // one: the same status, code and message.
    let bob = Device::new(&server.origin);
    let token = user_with_link(&server, "bob").await;
    enroll(&server, "198.51.100.8", &bob, &token).await;
    let another_users = sign_in(&server, "192.0.2.1", &bob, Some("alice")).await;
    let stranger = Device::new(&server.origin);
    // A passkey registered nowhere: created from options of a ceremony never finished.
    let begun = post_as(
        &server,
        "192.0.2.1",
        "/v1/enroll/begin",
        &json!({ "token": user_with_link(&server, "carol").await }),
    )
    .await;
    stranger.create(&begun.json()["publicKey"]).await;
    let unknown = sign_in(&server, "192.0.2.1", &stranger, Some("alice")).await;
    assert_eq!(another_users.status, 401);
    assert_eq!(
        (another_users.status, another_users.body.clone()),
        (unknown.status, unknown.body.clone()),
        "{} / {}",
        another_users.text(),
        unknown.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_cookie_names_are_read_and_conflicting_ones_refused() {
    // Plain-HTTP localhost: the cookie is `keygate_session`.
    let server = server(|config| config.passkey_rate_per_address = 0).await;
    let device = Device::new(&server.origin);
    let token = user_with_link(&server, "alice").await;
    let enrolled = enroll(&server, "198.51.100.7", &device, &token).await;
    let set = enrolled.all("set-cookie");
    assert_eq!(set.len(), 1);
    assert!(set[0].starts_with("keygate_session="), "{}", set[0]);
    assert!(!set[0].contains("Secure"), "{}", set[0]);
    let session = enrolled.json()["sessionToken"].as_str().unwrap().to_owned();

    let plain = format!("keygate_session={session}");
    let host = format!("__Host-keygate_session={session}");
    let both = format!("{plain}; {host}");
    for cookies in [
        vec![plain.as_str()],
        vec![host.as_str()],
        vec![both.as_str()],
        vec![plain.as_str(), plain.as_str()],
    ] {
        let reply = my_passkeys(&server, &cookies).await;
        assert_eq!(reply.status, 200, "{cookies:?}: {}", reply.text());
    }

    let planted = format!("keygate_session=v4.public.planted; {host}");
    for cookies in [
        vec![planted.as_str()],
        vec![plain.as_str(), "keygate_session=v4.public.other"],
    ] {
        let reply = my_passkeys(&server, &cookies).await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (401, "MALFORMED"),
            "{cookies:?}"
        );
        // Both names are cleared.
        let cleared = reply.all("set-cookie");
        assert!(
            cleared
                .iter()
                .any(|c| c.starts_with("keygate_session=;") && c.contains("Max-Age=0")),
            "{cleared:?}"
        );
        assert!(
            cleared
                .iter()
                .any(|c| c.starts_with("__Host-keygate_session=;") && c.contains("Max-Age=0")),
            "{cleared:?}"
        );
    }
    // The session itself is untouched: alone, it still works.
    assert_eq!(my_passkeys(&server, &[plain.as_str()]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_cookie_is_named_host_and_logout_clears_both_names() {
    // An HTTPS relying party (TLS ends at a proxy in front): the cookie is Secure.
    let server = server(|config| {
        config.passkey_rate_per_address = 0;
        config.rp_origin = Some("https://localhost:7443".into());
    })
    .await;
    assert_eq!(server.origin, "https://localhost:7443");
    let device = Device::new(&server.origin);
    let token = user_with_link(&server, "alice").await;
    let enrolled = enroll(&server, "198.51.100.7", &device, &token).await;
    let set = enrolled.all("set-cookie");
    assert_eq!(set.len(), 1);
    let cookie = set[0];
    assert!(
        cookie.starts_with("__Host-keygate_session=v4.public."),
        "{cookie}"
    );
    for attribute in ["; Path=/;", "; Secure", "; HttpOnly", "; SameSite=Lax"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.to_ascii_lowercase().contains("domain"), "{cookie}");

    // The browser sends it back under that name.
    let value = cookie.split(';').next().unwrap();
    assert_eq!(my_passkeys(&server, &[value]).await.status, 200);
    let logout = request(
        &server,
        PROXY,
        "POST",
        "/v1/logout",
        &[("cookie", value)],
        None,
    )
    .await;
    assert_eq!(logout.status, 200, "{}", logout.text());
    let cleared = logout.all("set-cookie");
    assert_eq!(cleared.len(), 2, "{cleared:?}");
    assert!(
        cleared
            .iter()
            .all(|c| c.contains("Max-Age=0") && c.contains("Secure")),
        "{cleared:?}"
    );
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("__Host-keygate_session=;"))
    );
    assert!(cleared.iter().any(|c| c.starts_with("keygate_session=;")));
    let after = my_passkeys(&server, &[value]).await;
    assert_eq!((after.status, after.code().as_str()), (401, "REVOKED"));
}
