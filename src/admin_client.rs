//! The operator's gRPC client of the control plane's Admin service: attaches the operator
//! token and turns gRPC statuses into one-line messages. It names no actor: the audit log's
//! actor is the token's name, which the control plane knows.

use std::path::Path;
use std::time::Duration;

use keygate_proto::error_chain;
use keygate_transport::Trust;

use keygate_proto::pb::admin_client::AdminClient as PbAdminClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::Failure;
use crate::args::ClientArgs;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Credentials {
    authorization: AsciiMetadataValue,
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        Ok(request)
    }
}

/// A connected Admin client.
pub type AdminClient = PbAdminClient<InterceptedService<Channel, Credentials>>;

/// Connects as the command line says: `--endpoint`, `--token`, `--ca`.
pub async fn connect_as(args: &ClientArgs) -> Result<AdminClient, Failure> {
    connect(&args.endpoint, args.token.as_deref(), args.ca.as_deref()).await
}

/// Connects to `endpoint` with `token` (the bootstrap admin token or a named operator token);
/// an `https://` endpoint is verified against `ca` (else the system's roots).
pub async fn connect(
    endpoint: &str,
    token: Option<&str>,
    ca: Option<&Path>,
) -> Result<AdminClient, Failure> {
    let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
        Failure::Config("no operator token: pass --token or set KEYGATE_TOKEN".into())
    })?;
    let authorization = format!("Bearer {token}")
        .parse::<AsciiMetadataValue>()
        .map_err(|_| {
            Failure::Config("the operator token contains characters that cannot be sent".into())
        })?;
    let mut channel = Channel::from_shared(endpoint.to_owned())
        .map_err(|error| Failure::Config(format!("invalid endpoint {endpoint:?}: {error}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60));
    let uri = channel.uri().clone();
    match uri.scheme_str() {
        Some("https") => {
            let host = uri.host().unwrap_or_default();
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let tls =
                keygate_transport::client::grpc_client_tls(&Trust::from_ca_file(ca), None, host)
                    .map_err(|error| Failure::Config(format!("--ca / KEYGATE_CA: {error}")))?;
            channel = channel.tls_config(tls).map_err(|error| {
                Failure::Config(format!(
                    "TLS settings for {endpoint}: {}",
                    error_chain(&error)
                ))
            })?;
        }
        Some("http") if ca.is_some() => {
            return Err(Failure::Config(format!(
                "--ca / KEYGATE_CA is set but the endpoint {endpoint} is not https://"
            )));
        }
        _ => {}
    }
    let channel = channel.connect().await.map_err(|error| {
        let chain = error_chain(&error);
        let advice = if chain.contains("invalid peer certificate") {
            if ca.is_some() {
                "; the control plane's certificate does not chain to the CA in --ca / KEYGATE_CA, or names another host"
            } else {
                "; the control plane's certificate is not trusted by the system roots: pass --ca FILE or set KEYGATE_CA to the CA that signed it"
            }
        } else {
            ""
        };
        Failure::Runtime(format!(
            "cannot reach the control plane at {endpoint}: {chain}{advice}"
        ))
    })?;
    Ok(PbAdminClient::with_interceptor(
        channel,
        Credentials { authorization },
    ))
}

/// One line for a failed call, naming what the operator can do about it.
pub fn status_failure(status: tonic::Status) -> Failure {
    let message = status.message();
    match status.code() {
        tonic::Code::Unauthenticated => {
            Failure::Runtime(format!("{message} (check --token / KEYGATE_TOKEN)"))
        }
        tonic::Code::Unavailable => {
            Failure::Runtime(format!("control plane unavailable: {message}"))
        }
        tonic::Code::PermissionDenied => Failure::Runtime(format!(
            "{message} (keygate tokens create … --scope S makes a token with it)"
        )),
        tonic::Code::NotFound
        | tonic::Code::InvalidArgument
        | tonic::Code::FailedPrecondition
        | tonic::Code::AlreadyExists
        | tonic::Code::Aborted
        | tonic::Code::ResourceExhausted => Failure::Runtime(message.to_owned()),
        code => Failure::Runtime(format!("{code:?}: {message}")),
    }
}
