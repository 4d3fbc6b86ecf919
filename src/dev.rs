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
use crate::local_ca::DevCertificates;
use crate::{Failure, shutdown, telemetry};

/// The dev gateway's id (and, with `--tls`, its client certificate's SAN).
const DEV_GATEWAY_ID: &str = "dev-gateway";

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
    let tls = if args.tls {
        Some(DevCertificates::create(
            &args.data_dir.join("tls"),
            DEV_GATEWAY_ID,
        )?)
    } else {
        None
    };

    let control_plane = ControlPlane::bind(
        ControlPlaneConfig {
            grpc_listen: args.grpc_listen,
            http_listen: args.http_listen,
            database: format!("sqlite://{}", args.data_dir.join("keygate.db").display()),
            admin_token: admin_token.clone(),
            gateway_token: gateway_token.clone(),
            tls_cert: tls.as_ref().map(|tls| tls.server.0.clone()),
            tls_key: tls.as_ref().map(|tls| tls.server.1.clone()),
            client_ca: tls.as_ref().map(|tls| tls.ca.clone()),
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
        dev_gateway_config(
            &args,
            grpc_addr,
            &upstream_url,
            &gateway_token,
            tls.as_ref(),
        ),
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

    // Under TLS the certificates name `localhost`, so the URLs do too.
    let (scheme, ca) = match &tls {
        Some(tls) => ("https", Some(tls.ca.as_path())),
        None => ("http", None),
    };
    let endpoint = format!("{scheme}://{}", local_name(grpc_addr, ca.is_some()));
    let mut client = admin_client::connect(&endpoint, Some(&admin_token), ca).await?;
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
    let gateway_url = format!("{scheme}://{}", local_name(gateway_addr, ca.is_some()));
    let admin_url = format!("{scheme}://{}", local_name(admin_addr, ca.is_some()));
    let (curl, ca_env) = match ca {
        Some(ca) => (
            format!("curl --cacert {}", ca.display()),
            format!(" KEYGATE_CA={}", ca.display()),
        ),
        None => ("curl".to_owned(), String::new()),
    };
    if let Some(tls) = &tls {
        println!(
            "TLS on every link: CA {} (mutual TLS between gateway and control plane; certificates in {})",
            tls.ca.display(),
            args.data_dir.join("tls").display()
        );
    }
    println!("Admin token (for keygate commands):");
    println!("  export KEYGATE_TOKEN={admin_token} KEYGATE_ENDPOINT={endpoint}{ca_env}");
    println!("Demo key {} (owner \"demo\", shown only now):", demo.key_id);
    println!("  {}", demo.key);
    println!();
    println!("Try:");
    println!(
        "  {curl} -i {gateway_url}/hello -H 'Authorization: Bearer {}'",
        demo.key
    );
    println!("  {curl} -i {gateway_url}/hello                      # 401 MISSING");
    println!("  {curl} -i {gateway_url}/public/hello               # no-auth route");
    println!(
        "  {curl} -s {gateway_url}/_keygate/v1/verify -d '{{\"key\":\"{}\"}}'",
        demo.key
    );
    println!(
        "  KEYGATE_TOKEN={admin_token} KEYGATE_ENDPOINT={endpoint}{ca_env} cargo run --release -- keys disable {}",
        demo.key_id
    );
    println!(
        "  {curl} -i {gateway_url}/hello -H 'X-API-Key: {}'   # now 403 DISABLED",
        demo.key
    );
    println!("  {curl} -s {admin_url}/metrics | grep keygate_verifications");
    println!("Passkeys (same KEYGATE_TOKEN / KEYGATE_ENDPOINT):");
    println!(
        "  cargo run --release -- users create alice && cargo run --release -- enrollments create --user alice"
    );
    println!(
        "  then open the printed link; the passkey page is {scheme}://localhost:{}/",
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

/// `addr` as a URL authority: `localhost:PORT` under TLS (what the certificates name, and a
/// secure context for the passkey page), the address itself otherwise.
fn local_name(addr: SocketAddr, tls: bool) -> String {
    if tls && addr.ip().is_loopback() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}

fn dev_gateway_config(
    args: &DevArgs,
    grpc_addr: SocketAddr,
    upstream: &str,
    token: &str,
    tls: Option<&DevCertificates>,
) -> ProxyConfig {
    let control_plane = match tls {
        Some(_) => format!("https://{}", local_name(grpc_addr, true)),
        None => format!("http://{grpc_addr}"),
    };
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
        control_plane: vec![control_plane],
        gateway_token: token.into(),
        gateway_id: Some(DEV_GATEWAY_ID.into()),
        region: "local".into(),
        tls_cert: tls.map(|tls| tls.server.0.clone()),
        tls_key: tls.map(|tls| tls.server.1.clone()),
        admin_tls_cert: tls.map(|tls| tls.server.0.clone()),
        admin_tls_key: tls.map(|tls| tls.server.1.clone()),
        ca: tls.map(|tls| tls.ca.clone()),
        client_cert: tls.map(|tls| tls.gateway.0.clone()),
        client_key: tls.map(|tls| tls.gateway.1.clone()),
        ..ProxyConfig::default()
    }
}
