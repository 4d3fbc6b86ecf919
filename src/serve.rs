//! `keygate control-plane` and `keygate proxy`: load the config file, lay flags and environment
//! over it, validate once, bind, print one line per listener, serve until a signal. The proxy
//! reloads its routes from the file on SIGHUP.

use keygate_control_plane::config::SmtpCredentials;
use keygate_control_plane::{ControlPlane, ControlPlaneConfig, ControlPlaneError};
use keygate_proxy::{Gateway, ProxyConfig, ProxyError, StalePolicy};

use crate::args::{ControlPlaneArgs, ProxyArgs, StalePolicyArg};
use crate::{Failure, config_file, shutdown, telemetry};

/// The control plane's config: file, then flags/environment, then validation.
pub fn control_plane_config(flags: &ControlPlaneArgs) -> Result<ControlPlaneConfig, Failure> {
    let mut config: ControlPlaneConfig = config_file::load(flags.config.as_deref())?;
    if let Some(addr) = flags.grpc_listen {
        config.grpc_listen = addr;
    }
    if let Some(addr) = flags.http_listen {
        config.http_listen = addr;
    }
    if let Some(database) = &flags.database {
        config.database.clone_from(database);
    }
    if let Some(token) = &flags.admin_token {
        config.admin_token.clone_from(token);
    }
    if let Some(token) = &flags.gateway_token {
        config.gateway_token.clone_from(token);
    }
    if flags.rp_id.is_some() {
        config.rp_id.clone_from(&flags.rp_id);
    }
    if flags.rp_origin.is_some() {
        config.rp_origin.clone_from(&flags.rp_origin);
    }
    if !flags.trusted_proxies.is_empty() {
        config.trusted_proxies.clone_from(&flags.trusted_proxies);
    }
    for (flag, setting) in [
        (&flags.tls_cert, &mut config.tls_cert),
        (&flags.tls_key, &mut config.tls_key),
        (&flags.client_ca, &mut config.client_ca),
        (&flags.aaguid_names, &mut config.aaguid_names),
    ] {
        if flag.is_some() {
            setting.clone_from(flag);
        }
    }
    config.smtp_credentials = smtp_credentials_from_env()?;
    config
        .validate()
        .map_err(|error| Failure::Config(format!("invalid control plane config: {error}")))?;
    Ok(config)
}

/// The SMTP relay's user and password, from `KEYGATE_SMTP_USER` and `KEYGATE_SMTP_PASSWORD`
/// (the only place they come from: not a flag, which other users could read in the process
/// list, nor the config file): both or neither.
fn smtp_credentials_from_env() -> Result<Option<SmtpCredentials>, Failure> {
    let read = |name: &str| match std::env::var(name) {
        Ok(value) if value.is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Failure::Config(format!(
            "invalid control plane config: {name} is not valid UTF-8"
        ))),
    };
    match (read("KEYGATE_SMTP_USER")?, read("KEYGATE_SMTP_PASSWORD")?) {
        (Some(user), Some(password)) => Ok(Some(SmtpCredentials::new(user, password))),
        (None, None) => Ok(None),
        _ => Err(Failure::Config(
            "invalid control plane config: set both KEYGATE_SMTP_USER and \
             KEYGATE_SMTP_PASSWORD, or neither"
                .into(),
        )),
    }
}

/// The gateway's config: file, then flags/environment, then validation.
pub fn proxy_config(flags: &ProxyArgs) -> Result<ProxyConfig, Failure> {
    let mut config: ProxyConfig = config_file::load(flags.config.as_deref())?;
    if let Some(addr) = flags.listen {
        config.listen = addr;
    }
    if let Some(addr) = flags.admin_listen {
        config.admin_listen = addr;
    }
    if flags.authz_grpc_listen.is_some() {
        config.authz_grpc_listen = flags.authz_grpc_listen;
    }
    if flags.trace_context {
        config.trace_context = true;
    }
    if flags.upstream.is_some() {
        config.upstream.clone_from(&flags.upstream);
    }
    if !flags.control_plane.is_empty() {
        config.control_plane.clone_from(&flags.control_plane);
    }
    if let Some(token) = &flags.gateway_token {
        config.gateway_token = token.as_str().into();
    }
    if flags.gateway_id.is_some() {
        config.gateway_id.clone_from(&flags.gateway_id);
    }
    if let Some(region) = &flags.region {
        config.region.clone_from(region);
    }
    if let Some(bound) = flags.propagation_bound {
        config.propagation_bound = bound;
    }
    if flags.workers.is_some() {
        config.workers = flags.workers;
    }
    for (flag, setting) in [
        (&flags.tls_cert, &mut config.tls_cert),
        (&flags.tls_key, &mut config.tls_key),
        (&flags.admin_tls_cert, &mut config.admin_tls_cert),
        (&flags.admin_tls_key, &mut config.admin_tls_key),
        (&flags.ca, &mut config.ca),
        (&flags.client_cert, &mut config.client_cert),
        (&flags.client_key, &mut config.client_key),
    ] {
        if flag.is_some() {
            setting.clone_from(flag);
        }
    }
    if let Some(policy) = flags.stale_policy {
        config.stale_policy = match policy {
            StalePolicyArg::FailClosed => StalePolicy::FailClosed,
            StalePolicyArg::Serve => StalePolicy::Serve,
        };
    }
    config
        .validate()
        .map_err(|error| Failure::Config(format!("invalid proxy config: {error}")))?;
    Ok(config)
}

/// Runs `keygate control-plane`.
pub async fn control_plane(flags: ControlPlaneArgs) -> Result<(), Failure> {
    let config = control_plane_config(&flags)?;
    let server = ControlPlane::bind(config, telemetry::metrics())
        .await
        .map_err(|error| match error {
            ControlPlaneError::Config(_) => Failure::Config(error.to_string()),
            _ => Failure::Runtime(error.to_string()),
        })?;
    println!(
        "keygate control-plane listening on {} (http {})",
        server.grpc_addr(),
        server.http_addr()
    );
    server
        .serve(shutdown::on_signal())
        .await
        .map_err(|error| Failure::Runtime(error.to_string()))
}

/// Runs `keygate proxy`.
/// With `export_spans` (`--otlp-endpoint`), the gateway makes spans for the exporter.
pub async fn proxy(flags: ProxyArgs, export_spans: bool) -> Result<(), Failure> {
    let mut config = proxy_config(&flags)?;
    config.spans = export_spans;
    let mut gateway =
        Gateway::bind(config, telemetry::metrics())
            .await
            .map_err(|error| match error {
                ProxyError::Config(_) => Failure::Config(error.to_string()),
                _ => Failure::Runtime(error.to_string()),
            })?;
    // SIGHUP reads the file again, with the same flags and environment laid over it.
    if flags.config.is_some() {
        gateway.reload_routes_on_hangup(move || {
            proxy_config(&flags).map_err(|failure| failure.to_string())
        });
    }
    println!(
        "keygate proxy listening on {} (admin {})",
        gateway.addr(),
        gateway.admin_addr()
    );
    if let Some(addr) = gateway.authz_grpc_addr() {
        println!("keygate proxy ext_authz gRPC listening on {addr}");
    }
    gateway
        .serve(shutdown::on_signal())
        .await
        .map_err(|error| Failure::Runtime(error.to_string()))
}
