//! TLS on every link (DESIGN.md, "Transport security"), end to end on loopback with
//! certificates the tests make: HTTPS at the gateway for curl, openssl and a Rust client; mutual
//! TLS between gateways and the control plane, with the gateway's id bound to its certificate;
//! a gateway that cannot verify its control plane going STALE instead of trusting it;
//! certificate reload under load; the CLI over TLS; https upstreams.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use keygate_control_plane::ControlPlaneConfig;
use keygate_proto::pb;
use keygate_proxy::{Gateway, ProxyConfig, RouteConfig};
use keygate_transport::client::grpc_client_tls;
use keygate_transport::{ClientIdentity, Trust};
use support::tls::{HttpsConnection, Pki, client_config, handshake_with_identity, https_get};
use support::{Cluster, eventually};

/// A cluster whose control plane serves TLS with `pki`'s `cp` certificate; with `mtls`,
/// gateways must present a client certificate from the same CA.
async fn tls_cluster(pki: &Pki, mtls: bool) -> Cluster {
    let (cert, key) = pki.server("cp", None);
    let ca = pki.ca_path.clone();
    Cluster::start_configured(
        0,
        Some(Box::new(move |config: &mut ControlPlaneConfig| {
            config.tls_cert = Some(cert.clone());
            config.tls_key = Some(key.clone());
            config.client_ca = mtls.then(|| ca.clone());
        })),
    )
    .await
}

/// The cluster's gRPC URL under TLS (the certificate names `localhost`).
fn grpc_url(cluster: &Cluster) -> String {
    format!("https://localhost:{}", cluster.grpc_addr.port())
}

/// A gateway config for `cluster`'s TLS control plane, trusting `ca`, with `identity` as its
/// client certificate.
fn tls_gateway_config(
    cluster: &Cluster,
    index: usize,
    ca: &Path,
    identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> ProxyConfig {
    let mut config = cluster.gateway_config(index);
    config.control_plane = vec![grpc_url(cluster)];
    config.ca = Some(ca.to_path_buf());
    if let Some((cert, key)) = identity {
        config.client_cert = Some(cert);
        config.client_key = Some(key);
    }
    config
}

async fn admin(cluster: &Cluster, ca: &Path) -> keygate::admin_client::AdminClient {
    keygate::admin_client::connect(&grpc_url(cluster), Some(&cluster.admin_token), Some(ca))
        .await
        .expect("admin client over TLS")
}

/// The ids in the control plane's gateway registry.
async fn registered_gateways(cluster: &Cluster, ca: &Path) -> Vec<String> {
    let listed = admin(cluster, ca)
        .await
        .list_gateways(pb::ListGatewaysRequest {})
        .await
        .unwrap()
        .into_inner();
    listed.gateways.into_iter().map(|g| g.gateway_id).collect()
}

async fn create_key(cluster: &Cluster, ca: &Path, owner: &str) -> pb::IssuedKey {
    admin(cluster, ca)
        .await
        .create_key(pb::CreateKeyRequest {
            owner: owner.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Runs a program to completion off the async runtime.
async fn run(
    program: &str,
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
) -> std::process::Output {
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .args(&args)
            .envs(envs)
            .env_remove("KEYGATE_LOG")
            .output()
            .unwrap_or_else(|error| panic!("cannot run {program}: {error}"))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_https_to_curl_openssl_and_rust_clients() {
    let pki = Pki::new("test CA");
    let mut cluster = Cluster::start(0).await;
    let (cert, key) = pki.server("gateway", Some(7));
    let mut config = cluster.gateway_config(0);
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    let addr = cluster.add_gateway_with(config).await.addr;
    let key = cluster.create_key("alice").await;
    cluster.wait_applied(key.revision).await;
    let url = format!("https://localhost:{}/orders", addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", addr.port());
    let ca = pki.ca_path.display().to_string();

    // curl, HTTP/1.1 and h2, verifying the certificate against the test CA.
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = run(
            "curl",
            vec![
                "-sS".into(),
                flag.into(),
                "--cacert".into(),
                ca.clone(),
                "--resolve".into(),
                resolve.clone(),
                "-H".into(),
                format!("Authorization: Bearer {}", key.key),
                "-w".into(),
                "\n%{http_version} %{http_code}".into(),
                url.clone(),
            ],
            vec![],
        )
        .await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.ends_with(&format!("\n{version} 200")),
            "curl {flag}: {stdout}"
        );
        // The upstream hears that the client came over TLS, and who the key belongs to.
        assert!(
            stdout.contains(r#""x-forwarded-proto":"https""#),
            "{stdout}"
        );
        assert!(stdout.contains(r#""x-keygate-owner":"alice""#), "{stdout}");
    }

    // curl refuses a certificate that does not name the host it asked for.
    let wrong_host = format!("https://wrong.example:{}/orders", addr.port());
    let out = run(
        "curl",
        vec![
            "-sS".into(),
            "--cacert".into(),
            ca.clone(),
            "--resolve".into(),
            format!("wrong.example:{}:127.0.0.1", addr.port()),
            wrong_host,
        ],
        vec![],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(60),
        "curl exit code for a name mismatch: {out:?}"
    );

    // The Rust client: both ALPN protocols, the certificate's serial, and a name mismatch.
    for (alpn, version) in [
        (&[b"h2".as_slice()][..], http::Version::HTTP_2),
        (&[b"http/1.1".as_slice()][..], http::Version::HTTP_11),
    ] {
        let config = client_config(&pki.ca_path, alpn);
        let bearer = format!("Bearer {}", key.key);
        let (connection, reply) = https_get(addr, config, "/orders", &[("authorization", &bearer)])
            .await
            .unwrap();
        assert_eq!(connection.version, version);
        assert_eq!(reply.status, 200);
        assert_eq!(connection.serial, "07");
    }
    let config = client_config(&pki.ca_path, &[b"http/1.1"]);
    let error = HttpsConnection::open(addr, "wrong.example", config)
        .await
        .err()
        .expect("a certificate for another name is refused");
    assert!(error.contains("not valid for name"), "{error}");

    // TLS 1.1 is refused by the gateway, while the same client gets through with TLS 1.2
    // (so the refusal is the server's, not the client's own configuration).
    let openssl = |version: &str| {
        run(
            "openssl",
            vec![
                "s_client".into(),
                "-connect".into(),
                addr.to_string(),
                "-servername".into(),
                "localhost".into(),
                "-CAfile".into(),
                ca.clone(),
                version.into(),
                "-cipher".into(),
                "DEFAULT:@SECLEVEL=0".into(),
            ],
            vec![],
        )
    };
    let tls12 = openssl("-tls1_2").await;
    let tls12_out = String::from_utf8_lossy(&tls12.stdout);
    assert!(
        tls12_out.contains("Protocol  : TLSv1.2") || tls12_out.contains("TLSv1.2"),
        "{tls12_out}"
    );
    assert!(
        tls12_out.contains("Verify return code: 0 (ok)"),
        "{tls12_out}"
    );
    let tls11 = openssl("-tls1_1").await;
    let tls11_err = String::from_utf8_lossy(&tls11.stderr);
    assert!(!tls11.status.success(), "TLS 1.1 must fail: {tls11_err}");
    assert!(
        tls11_err.contains("alert"),
        "the server answers TLS 1.1 with an alert: {tls11_err}"
    );
    assert!(String::from_utf8_lossy(&tls11.stdout).contains("no peer certificate available"));
}

/// Opens a Sync stream as a gateway would, with `identity` as the client certificate and
/// `gateway_id` in the Hello; Ok once the control plane starts answering, Err with the reason.
async fn try_sync(
    cluster: &Cluster,
    ca: &Path,
    identity: Option<ClientIdentity>,
    gateway_id: &str,
) -> Result<(), String> {
    let tls =
        grpc_client_tls(&Trust::Ca(ca.to_path_buf()), identity.as_ref(), "localhost").unwrap();
    let channel = tonic::transport::Endpoint::from_shared(grpc_url(cluster))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|error| support::error_chain(&error))?;
    let hello = pb::GatewayMessage {
        msg: Some(pb::gateway_message::Msg::Hello(pb::Hello {
            gateway_id: gateway_id.to_owned(),
            region: "test".into(),
            version: "test".into(),
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello).await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", cluster.gateway_token).parse().unwrap(),
    );
    let mut inbound = pb::sync_client::SyncClient::new(channel)
        .stream(request)
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
        .into_inner();
    let first = tokio::time::timeout(support::DEADLINE, inbound.message())
        .await
        .expect("the control plane answers");
    drop(tx);
    match first {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("stream closed".into()),
        Err(status) => Err(format!(
            "{:?}: {} {}",
            status.code(),
            status.message(),
            support::error_chain(&status)
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_gateways_with_a_certificate_from_the_ca() {
    let pki = Pki::new("cluster CA");
    let mut cluster = tls_cluster(&pki, true).await;
    let identity = pki.client("gw-0", "gw-0", None);
    let config = tls_gateway_config(&cluster, 0, &pki.ca_path, Some(identity.clone()));
    let gateway_addr = cluster.add_gateway_with(config).await.addr;

    // The same gateway id as a sanity check of the probe itself: admitted.
    let gw0 = ClientIdentity {
        cert: identity.0.clone(),
        key: identity.1.clone(),
    };
    try_sync(&cluster, &pki.ca_path, Some(gw0.clone()), "gw-0")
        .await
        .unwrap();

    // No client certificate: the Sync service refuses.
    let error = try_sync(&cluster, &pki.ca_path, None, "gw-x")
        .await
        .unwrap_err();
    assert!(
        error.contains("Unauthenticated") && error.contains("requires a client certificate"),
        "{error}"
    );

    // A certificate from another CA: the handshake fails.
    let other = Pki::new("another CA");
    let (cert, key) = other.client("gw-x", "gw-x", None);
    let error = handshake_with_identity(
        cluster.grpc_addr,
        &pki.ca_path,
        &ClientIdentity { cert, key },
    )
    .await
    .unwrap_err();
    assert!(
        error.contains("UnknownCA") || error.contains("BadCertificate"),
        "{error}"
    );

    // An expired certificate from the right CA: the handshake fails.
    let now = SystemTime::now();
    let (cert, key) = pki.client(
        "expired",
        "gw-x",
        Some((
            now - Duration::from_secs(3 * 86400),
            now - Duration::from_secs(86400),
        )),
    );
    let error = handshake_with_identity(
        cluster.grpc_addr,
        &pki.ca_path,
        &ClientIdentity { cert, key },
    )
    .await
    .unwrap_err();
    assert!(
        error.contains("CertificateExpired") || error.contains("expired"),
        "{error}"
    );

    // The admitted gateway keeps being served: a key created now works there.
    let key = create_key(&cluster, &pki.ca_path, "bob").await;
    eventually("the admitted gateway applies the new key", || {
        let status = cluster.gateways[0].status.clone();
        async move { status.applied_revision() >= key.revision }
    })
    .await;
    let reply = support::get_with_key(&format!("http://{gateway_addr}/x"), &key.key).await;
    assert_eq!(reply.status, 200);

    // Only the real gateway is registered.
    let ids = registered_gateways(&cluster, &pki.ca_path).await;
    assert!(!ids.iter().any(|id| id == "gw-x"), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_one_gateway_cannot_register_as_another() {
    let pki = Pki::new("cluster CA");
    let cluster = tls_cluster(&pki, true).await;
    let (cert, key) = pki.client("gw-a", "gw-a", None);
    let gw_a = ClientIdentity {
        cert: cert.clone(),
        key: key.clone(),
    };

    // Over the wire: a Hello claiming gw-b on gw-a's certificate is refused.
    let error = try_sync(&cluster, &pki.ca_path, Some(gw_a.clone()), "gw-b")
        .await
        .unwrap_err();
    assert!(error.contains("PermissionDenied"), "{error}");
    assert!(error.contains(r#"identifies gateway "gw-a""#), "{error}");
    try_sync(&cluster, &pki.ca_path, Some(gw_a), "gw-a")
        .await
        .unwrap();

    // A gateway configured that way does not even start: it names the mismatch.
    let mut config = tls_gateway_config(&cluster, 0, &pki.ca_path, Some((cert, key)));
    config.gateway_id = Some("gw-b".into());
    let error = Gateway::bind(config.clone(), keygate::telemetry::metrics())
        .await
        .err()
        .expect("a gateway id that its certificate does not name is refused");
    assert!(error.to_string().contains("gw-a"), "{error}");
    // Without an explicit id the certificate's name is used.
    config.gateway_id = None;
    let gateway = Gateway::bind(config, keygate::telemetry::metrics())
        .await
        .unwrap();
    let status = gateway.status();
    let server = support::Running::spawn(|shutdown| gateway.serve(shutdown));
    eventually("the gateway registers under its certificate's name", || {
        let status = status.clone();
        async move { status.is_ready() }
    })
    .await;
    let ids = registered_gateways(&cluster, &pki.ca_path).await;
    assert!(
        ids.iter().any(|id| id == "gw-a") && !ids.iter().any(|id| id == "gw-b"),
        "{ids:?}"
    );
    // `keygate gateways` says which credential it used.
    let listed = admin(&cluster, &pki.ca_path)
        .await
        .list_gateways(pb::ListGatewaysRequest {})
        .await
        .unwrap()
        .into_inner();
    let registered = listed.gateways.iter().find(|g| g.gateway_id == "gw-a");
    assert_eq!(
        registered.map(|g| g.credential.as_str()),
        Some("certificate:gw-a")
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_cannot_verify_its_control_plane_goes_stale_instead_of_trusting_it() {
    let pki = Pki::new("cluster CA");
    let mut cluster = tls_cluster(&pki, false).await;
    let mut config = tls_gateway_config(&cluster, 0, &pki.ca_path, None);
    config.propagation_bound = Duration::from_secs(3);
    config.ping_interval = Duration::from_millis(300);
    let addr = cluster.add_gateway_with(config).await.addr;
    let key = create_key(&cluster, &pki.ca_path, "carol").await;
    let url = format!("http://{addr}/x");
    support::expect_verdict(&url, &key.key, 200, None).await;

    // The control plane comes back on the same address with a certificate from another CA, as
    // an impostor would: the gateway refuses it, and once its bound passes answers STALE.
    cluster.stop_control_plane().await;
    let impostor = Pki::new("impostor CA");
    let (cert, key_file) = impostor.server("cp", None);
    std::fs::copy(&cert, pki.path("cp.pem")).unwrap();
    std::fs::copy(&key_file, pki.path("cp-key.pem")).unwrap();
    cluster.start_control_plane().await;
    let started = Instant::now();
    support::expect_verdict(&url, &key.key, 503, Some("STALE")).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "STALE only after the bound"
    );
    assert!(!cluster.gateways[0].status.connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_under_load_without_a_failed_request() {
    let pki = Pki::new("reload CA");
    let mut cluster = Cluster::start(0).await;
    let (cert, key) = pki.server("gateway", Some(1));
    let mut config = cluster.gateway_config(0);
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    let gateway = cluster.add_gateway_with(config).await;
    let (addr, admin_addr) = (gateway.addr, gateway.admin_addr);
    let api_key = cluster.create_key("dave").await;
    cluster.wait_applied(api_key.revision).await;
    let bearer = format!("Bearer {}", api_key.key);
    let tls = client_config(&pki.ca_path, &[b"h2", b"http/1.1"]);

    // Load: two clients opening a new connection per request (they see each new certificate)
    // and one keeping a single connection alive throughout (it must never be dropped).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let newest_serial = Arc::new(std::sync::Mutex::new(String::new()));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (stop, ok, failed, serial, tls, bearer) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
            Arc::clone(&newest_serial),
            Arc::clone(&tls),
            bearer.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                match https_get(
                    addr,
                    Arc::clone(&tls),
                    "/load",
                    &[("authorization", &bearer)],
                )
                .await
                {
                    Ok((connection, reply)) if reply.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        *serial.lock().unwrap() = connection.serial;
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed request: {:?}", other.map(|(_, reply)| reply.status));
                    }
                }
            }
        }));
    }
    {
        let (stop, ok, failed, tls, bearer) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
            Arc::clone(&tls),
            bearer.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut connection = HttpsConnection::open(addr, "localhost", tls).await.unwrap();
            assert_eq!(connection.serial, "01");
            let mut pace = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                match connection
                    .get("/keepalive", &[("authorization", &bearer)])
                    .await
                {
                    Ok(reply) if reply.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed keep-alive request: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let started = Instant::now();
    let serial_seen = |expected: &'static str| {
        let serial = Arc::clone(&newest_serial);
        move || {
            let serial = Arc::clone(&serial);
            async move { *serial.lock().unwrap() == expected }
        }
    };
    eventually("load running on the first certificate", serial_seen("01")).await;

    // A new certificate: new connections get it.
    pki.server("gateway", Some(2));
    eventually("new connections see the new certificate", serial_seen("02")).await;

    // A broken file: the reload fails, is counted, and the certificate in use stays.
    let failures = || async move {
        let metrics = support::send("GET", &format!("http://{admin_addr}/metrics"), &[], b"").await;
        String::from_utf8_lossy(&metrics.body)
            .lines()
            .find(|line| line.starts_with("keygate_tls_reload_failures_total{listener=\"main\"}"))
            .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = failures().await;
    std::fs::write(
        pki.path("gateway.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    eventually(
        "the broken certificate is noticed and refused",
        || async move { failures().await > before },
    )
    .await;
    let fresh = https_get(
        addr,
        Arc::clone(&tls),
        "/after",
        &[("authorization", &bearer)],
    )
    .await
    .unwrap();
    assert_eq!(fresh.0.serial, "02", "the old certificate stays in service");

    // Keep the load going for 30 s in all, then count.
    let rest = Duration::from_secs(30).saturating_sub(started.elapsed());
    tokio::time::sleep(rest).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed requests of {}", ok + failed);
    assert!(ok > 100, "the load ran: {ok} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_tls_and_says_what_to_do_without_the_ca() {
    let pki = Pki::new("cli CA");
    let cluster = tls_cluster(&pki, false).await;
    let keygate = env!("CARGO_BIN_EXE_keygate");
    let envs = |ca: Option<&Path>| {
        let mut envs = vec![
            ("KEYGATE_ENDPOINT", grpc_url(&cluster)),
            ("KEYGATE_TOKEN", cluster.admin_token.clone()),
        ];
        if let Some(ca) = ca {
            envs.push(("KEYGATE_CA", ca.display().to_string()));
        }
        envs
    };
    let out = run(
        keygate,
        vec![
            "keys".into(),
            "create".into(),
            "--owner".into(),
            "erin".into(),
            "--json".into(),
        ],
        envs(Some(&pki.ca_path)),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(created["keyId"].as_str().unwrap().starts_with("key_"));

    let out = run(keygate, vec!["keys".into(), "list".into()], envs(None)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("KEYGATE_CA") && stderr.contains("not trusted"),
        "{stderr}"
    );

    // --ca with a plain endpoint is a usage mistake, said as such.
    let out = run(
        keygate,
        vec![
            "keys".into(),
            "list".into(),
            "--endpoint".into(),
            format!("http://{}", cluster.grpc_addr),
        ],
        envs(Some(&pki.ca_path)),
    )
    .await;
    assert_eq!(out.status.code(), Some(78), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified() {
    let pki = Pki::new("upstream CA");
    let (cert, key) = pki.server("upstream", None);
    let upstream = support::tls::TlsUpstream::start(&cert, &key).await;
    let mut cluster = Cluster::start(0).await;
    let mut config = cluster.gateway_config(0);
    let upstream_url = format!("https://localhost:{}", upstream.addr.port());
    config.routes = vec![
        RouteConfig {
            path_prefix: "/".into(),
            upstream: upstream_url.clone(),
            upstream_ca: Some(pki.ca_path.clone()),
            ..RouteConfig::default()
        },
        // The same upstream, trusted against the system roots, which do not know the test CA.
        RouteConfig {
            path_prefix: "/untrusted/".into(),
            upstream: upstream_url,
            ..RouteConfig::default()
        },
    ];
    let addr = cluster.add_gateway_with(config).await.addr;
    let key = cluster.create_key("frank").await;
    cluster.wait_applied(key.revision).await;

    let reply = support::get_with_key(&format!("http://{addr}/secure"), &key.key).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(&reply.body[..], b"over tls: /secure");

    let reply = support::get_with_key(&format!("http://{addr}/untrusted/x"), &key.key).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.code(), "UPSTREAM_UNAVAILABLE");
    assert_eq!(
        upstream.served(),
        1,
        "the untrusted request never reached the upstream"
    );
}
