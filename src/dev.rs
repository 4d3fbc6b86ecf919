//! `keygate dev`: the whole system on one machine — control plane on embedded SQLite, one
//! gateway, and the echo upstream — with a fresh admin token, a demo key, and curl lines that
//! work when pasted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keygate_control_plane::{ControlPlane, ControlPlaneConfig};
use keygate_proto::pb;
use keygate_proxy::{AuthMode, Gateway, ProxyConfig, RouteConfig};
use rand::Rng;

use crate::admin_client::{self, status_failure};
use crate::args::DevArgs;
use crate::echo::EchoUpstream;
use crate::{Failure, shutdown, telemetry};

/// How long `dev` waits for its gateway to hold a first snapshot before giving up.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A random 32-character base62 token.
pub fn random_token() -> String {
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(keygate_proto::base62::ALPHABET[rng.random_range(0..62)]))
        .collect()
}

/// Runs everything until SIGTERM / Ctrl-C.
pub async fn run(args: DevArgs) -> Result<(), Failure> {
    std::fs::create_dir_all(&args.data_dir).map_err(|error| {
        Failure::Runtime(format!(
            "cannot create data dir {}: {error}",
            args.data_dir.display()
        ))
    })?;
    let admin_token = random_token();
    let gateway_token = random_token();
    let metrics = telemetry::metrics();
    let stop = shutdown::fan_out(shutdown::on_signal());

    let control_plane = ControlPlane::bind(
        ControlPlaneConfig {
            grpc_listen: args.grpc_listen,
            http_listen: args.http_listen,
            database: format!("sqlite://{}", args.data_dir.join("keygate.db").display()),
            admin_token: admin_token.clone(),
            gateway_token: gateway_token.clone(),
            ..ControlPlaneConfig::default()
        },
        metrics.clone(),
    )
    .await
    .map_err(|error| Failure::Runtime(error.to_string()))?;
    let grpc_addr = control_plane.grpc_addr();
    let http_addr = control_plane.http_addr();

    let upstream = EchoUpstream::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|error| Failure::Runtime(format!("cannot bind the echo upstream: {error}")))?;
    let upstream_url = format!(
        "http://{}",
        upstream
            .addr()
            .map_err(|error| Failure::Runtime(error.to_string()))?
    );

    let gateway = Gateway::bind(
        dev_gateway_config(&args, grpc_addr, &upstream_url, &gateway_token),
        metrics,
    )
    .await
    .map_err(|error| Failure::Runtime(error.to_string()))?;
    let gateway_addr = gateway.addr();
    let admin_addr = gateway.admin_addr();
    let status = gateway.status();

    let cp_task = tokio::spawn(control_plane.serve(shutdown::stopped(stop.clone())));
    tokio::spawn(upstream.serve(shutdown::stopped(stop.clone())));
    let gateway_task = tokio::spawn(gateway.serve(shutdown::stopped(stop.clone())));

    let endpoint = format!("http://{grpc_addr}");
    let mut client = admin_client::connect(&endpoint, Some(&admin_token)).await?;
    let demo = client
        .create_key(pb::CreateKeyRequest {
            owner: "demo".into(),
            name: "keygate dev demo key".into(),
            ..Default::default()
        })
        .await
        .map_err(status_failure)?
        .into_inner();
    let deadline = Instant::now() + READY_TIMEOUT;
    while !status.is_ready() {
        if Instant::now() > deadline {
            return Err(Failure::Runtime(
                "the gateway did not sync with the control plane in time".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    println!("keygate control-plane listening on {grpc_addr} (http {http_addr})");
    println!("keygate proxy listening on {gateway_addr} (admin {admin_addr})");
    println!(
        "echo upstream listening on {}",
        upstream_url.trim_start_matches("http://")
    );
    println!();
    println!("Admin token (for keygate commands):");
    println!("  export KEYGATE_TOKEN={admin_token} KEYGATE_ENDPOINT={endpoint}");
    println!("Demo key {} (owner \"demo\", shown only now):", demo.key_id);
    println!("  {}", demo.key);
    println!();
    println!("Try:");
    println!(
        "  curl -i http://{gateway_addr}/hello -H 'Authorization: Bearer {}'",
        demo.key
    );
    println!("  curl -i http://{gateway_addr}/hello                      # 401 MISSING");
    println!("  curl -i http://{gateway_addr}/public/hello               # no-auth route");
    println!(
        "  curl -s http://{gateway_addr}/_keygate/v1/verify -d '{{\"key\":\"{}\"}}'",
        demo.key
    );
    println!(
        "  KEYGATE_TOKEN={admin_token} KEYGATE_ENDPOINT={endpoint} cargo run --release -- keys disable {}",
        demo.key_id
    );
    println!(
        "  curl -i http://{gateway_addr}/hello -H 'X-API-Key: {}'   # now 403 DISABLED",
        demo.key
    );
    println!("  curl -s http://{admin_addr}/metrics | grep keygate_verifications");
    println!("Passkeys (same KEYGATE_TOKEN / KEYGATE_ENDPOINT):");
    println!(
        "  cargo run --release -- users create alice && cargo run --release -- enrollments create --user alice"
    );
    println!(
        "  then open the printed link; the passkey page is http://localhost:{}/",
        http_addr.port()
    );
    println!();
    println!(
        "Ctrl-C to stop. Keys persist in {}.",
        args.data_dir.display()
    );

    let (cp_result, gateway_result) = tokio::join!(cp_task, gateway_task);
    cp_result
        .map_err(|error| Failure::Runtime(error.to_string()))?
        .map_err(|error| Failure::Runtime(error.to_string()))?;
    gateway_result
        .map_err(|error| Failure::Runtime(error.to_string()))?
        .map_err(|error| Failure::Runtime(error.to_string()))
}

fn dev_gateway_config(
    args: &DevArgs,
    grpc_addr: SocketAddr,
    upstream: &str,
    token: &str,
) -> ProxyConfig {
    ProxyConfig {
        listen: args.listen,
        admin_listen: args.admin_listen,
        routes: vec![
            RouteConfig {
                path_prefix: "/".into(),
                upstream: upstream.to_owned(),
                auth: AuthMode::KeyOrSession,
                ..RouteConfig::default()
            },
            RouteConfig {
                path_prefix: "/public/".into(),
                upstream: upstream.to_owned(),
                auth: AuthMode::None,
                ..RouteConfig::default()
            },
        ],
        control_plane: vec![format!("http://{grpc_addr}")],
        gateway_token: token.into(),
        gateway_id: Some("dev-gateway".into()),
        region: "local".into(),
        ..ProxyConfig::default()
    }
}
