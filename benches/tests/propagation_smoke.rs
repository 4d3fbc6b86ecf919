//! CI smoke of the propagation measurement, timing nothing: an in-process control plane
//! (SQLite in a temp dir, passkey rate limits off), two gateways and the fixed-response
//! upstream on 127.0.0.1:0; a few revocations of each kind. Every revocation must be refused
//! at both gateways with its own code (403 DISABLED, 401 NOT_FOUND, 401 REVOKED for a passkey's
//! session), which `propagation::run` checks, and `WaitForRevision` must complete.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate::echo::EchoUpstream;
use keygate_benches::propagation::{self, PropagationArgs, Revoke};
use keygate_control_plane::{ControlPlane, ControlPlaneConfig};
use keygate_proxy::{Gateway, ProxyConfig, RouteConfig};
use tokio::sync::watch;

fn localhost() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A future that resolves when `stop` is set.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_and_passkey_revocations_are_measured_at_every_gateway() {
    let (stop, stop_rx) = watch::channel(false);
    let data = tempfile::tempdir().unwrap();
    let admin_token = keygate::dev::random_token();
    let gateway_token = keygate::dev::random_token();

    let control_plane = ControlPlane::bind(
        ControlPlaneConfig {
            grpc_listen: localhost(),
            http_listen: localhost(),
            database: format!("sqlite://{}", data.path().join("keygate.db").display()),
            admin_token: admin_token.clone(),
            gateway_token: gateway_token.clone(),
            passkey_rate_per_address: 0,
            passkey_rate_per_user: 0,
            ..ControlPlaneConfig::default()
        },
        keygate::telemetry::metrics(),
    )
    .await
    .unwrap();
    let (grpc_addr, http_addr) = (control_plane.grpc_addr(), control_plane.http_addr());
    let cp_task = tokio::spawn(control_plane.serve(stopped(stop_rx.clone())));

    let upstream = EchoUpstream::bind(localhost())
        .await
        .unwrap()
        .fixed_response();
    let upstream_url = format!("http://{}", upstream.addr().unwrap());
    let upstream_task = tokio::spawn(upstream.serve(stopped(stop_rx.clone())));

    let mut gateways = Vec::new();
    let mut gateway_tasks = Vec::new();
    for index in 0..2 {
        let config = ProxyConfig {
            listen: localhost(),
            admin_listen: localhost(),
            // The default auth accepts keys and sessions.
            routes: vec![RouteConfig {
                path_prefix: "/".into(),
                upstream: upstream_url.clone(),
                ..RouteConfig::default()
            }],
            control_plane: vec![format!("http://{grpc_addr}")],
            gateway_token: gateway_token.as_str().into(),
            gateway_id: Some(format!("smoke-{index}")),
            ..ProxyConfig::default()
        };
        let gateway = Gateway::bind(config, keygate::telemetry::metrics())
            .await
            .unwrap();
        gateways.push(format!("http://{}/x", gateway.addr()));
        gateway_tasks.push(tokio::spawn(gateway.serve(stopped(stop_rx.clone()))));
    }

    for (revoke, revocations) in [
        (Revoke::Keys, 4),
        (
            Revoke::Passkeys {
                api: format!("http://{http_addr}"),
            },
            3,
        ),
    ] {
        let args = PropagationArgs {
            gateways: gateways.clone(),
            endpoint: format!("http://{grpc_addr}"),
            token: admin_token.clone(),
            revocations,
            load_rps: 0,
            revoke,
        };
        let report = propagation::run(&args).await.unwrap();
        assert_eq!(report.revocations, revocations, "{}", report.text());
        assert_eq!(
            report.disables + report.deletes + report.passkeys,
            revocations,
            "{}",
            report.text()
        );
        assert_eq!(report.gateways, 2);
    }

    stop.send(true).unwrap();
    for task in gateway_tasks {
        task.await.unwrap().unwrap();
    }
    cp_task.await.unwrap().unwrap();
    upstream_task.await.unwrap();
}
