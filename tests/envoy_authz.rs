//! Envoy's gRPC external authorization against a gateway with TLS and a real control plane:
//! the `--authz-grpc-listen` listener speaks TLS with the main listener's certificate (only),
//! allows a key the control plane issued with its identity, checks the permissions a route
//! asks for in the check's context extension `permissions` against the key's, and fails closed
//! (503) once the control plane has been stopped for longer than the propagation bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use keygate_proto::envoy_pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use keygate_proto::envoy_pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate_proto::envoy_pb::envoy::service::auth::v3::check_response::HttpResponse;
use keygate_proto::envoy_pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse,
};
use keygate_proxy::Gateway;
use keygate_transport::Trust;
use keygate_transport::client::grpc_client_tls;
use support::cli::Cli;
use support::tls::Pki;
use support::{Cluster, eventually};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

fn envoy_check(path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    headers,
                    ..HttpRequest::default()
                }),
            }),
            ..AttributeContext::default()
        }),
    }
}

/// `request` with the context extension `permissions` (what Envoy's per-route
/// `check_settings.context_extensions` sends).
fn asking_for(mut request: CheckRequest, permissions: &str) -> CheckRequest {
    request
        .attributes
        .as_mut()
        .unwrap()
        .context_extensions
        .insert("permissions".into(), permissions.into());
    request
}

/// The error code of a denied check's JSON body.
fn denied_code(response: &CheckResponse) -> String {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("not denied: {response:?}");
    };
    let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    body["error"]["code"].as_str().unwrap().to_owned()
}

/// The HTTP status Envoy would answer with: 200 for an `ok_response`, else the denied one's.
fn http_status(response: &CheckResponse) -> i32 {
    match &response.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(denied)) => denied.status.as_ref().unwrap().code,
        None => panic!("no http_response in {response:?}"),
    }
}

async fn check(client: &AuthorizationClient<Channel>, request: CheckRequest) -> CheckResponse {
    client.clone().check(request).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_listener_speaks_tls_and_fails_closed_without_its_control_plane() {
    let pki = Pki::new("envoy-authz");
    let mut cluster = Cluster::start(0).await;
    let (cert, key) = pki.server("gateway", None);
    let mut config = cluster.gateway_config(0);
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    config.authz_grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    config.propagation_bound = Duration::from_secs(1);
    config.ping_interval = Duration::from_millis(200);
    let gateway = Gateway::bind(config, keygate::telemetry::metrics())
        .await
        .expect("gateway binds");
    let addr = gateway.authz_grpc_addr().expect("the authz gRPC listener");
    let status = gateway.status();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(gateway.serve(async move {
        let _ = stopped.await;
    }));
    let ready = status.clone();
    eventually("gateway ready", || {
        let ready = ready.clone();
        async move { ready.is_ready() }
    })
    .await;
    let issued = cluster.create_key("alice").await;

    let tls = grpc_client_tls(&Trust::Ca(pki.ca_path.clone()), None, "localhost").unwrap();
    let channel = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("a TLS connection to the authz gRPC listener");
    let client = AuthorizationClient::new(channel);
    let bearer = format!("Bearer {}", issued.key);
    let allowed = check(&client, envoy_check("/api", &[("authorization", &bearer)])).await;
    assert_eq!(http_status(&allowed), 200, "{allowed:?}");
    let Some(HttpResponse::OkResponse(ok)) = &allowed.http_response else {
        unreachable!()
    };
    let owner = ok
        .headers
        .iter()
        .filter_map(|option| option.header.as_ref())
        .find(|header| header.key == "x-keygate-owner")
        .map(|header| header.value.as_str());
    assert_eq!(owner, Some("alice"));
    assert_eq!(ok.headers_to_remove, ["authorization"]);
    let open = check(&client, envoy_check("/public/page", &[])).await;
    assert_eq!(http_status(&open), 200);

    // Permissions from the context extension: all of them needed, checked against the key's.
    let reader = Cli::admin(&cluster)
        .json(&[
            "keys",
            "create",
            "--owner",
            "bob",
            "--permission",
            "orders.read",
        ])
        .await;
    let reader = format!("Bearer {}", reader["key"].as_str().unwrap());
    let reading = envoy_check("/api", &[("authorization", &reader)]);
    eventually("the reader's key allowed", || {
        let (client, reading) = (client.clone(), reading.clone());
        async move { http_status(&check(&client, asking_for(reading, "orders.read")).await) == 200 }
    })
    .await;
    let writing = check(
        &client,
        asking_for(reading.clone(), "orders.read orders.write"),
    )
    .await;
    assert_eq!(http_status(&writing), 403, "{writing:?}");
    assert_eq!(denied_code(&writing), "INSUFFICIENT_PERMISSIONS");
    let plain_key = check(
        &client,
        asking_for(
            envoy_check("/api", &[("authorization", &bearer)]),
            "orders.read",
        ),
    )
    .await;
    assert_eq!(
        denied_code(&plain_key),
        "INSUFFICIENT_PERMISSIONS",
        "a key without permissions"
    );
    let unreadable = check(&client, asking_for(reading, "orders read!")).await;
    assert_eq!(http_status(&unreadable), 400, "{unreadable:?}");

    // Plaintext HTTP/2 is not served beside TLS.
    let plaintext = async {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", addr.port()))
            .unwrap()
            .connect()
            .await?;
        AuthorizationClient::new(channel)
            .check(envoy_check("/public/page", &[]))
            .await
            .map_err(|status| Box::new(status) as Box<dyn std::error::Error>)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(plaintext.await.is_err(), "a plaintext check was answered");

    cluster.stop_control_plane().await;
    let stale = status.clone();
    eventually("staleness past the bound", || {
        let stale = stale.clone();
        async move { stale.is_stale() }
    })
    .await;
    let refused = check(&client, envoy_check("/api", &[("authorization", &bearer)])).await;
    assert_eq!(http_status(&refused), 503, "{refused:?}");
    let Some(HttpResponse::DeniedResponse(denied)) = &refused.http_response else {
        unreachable!()
    };
    let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(body["error"]["code"], "STALE");

    let _ = stop.send(());
    served.await.unwrap().unwrap();
}
