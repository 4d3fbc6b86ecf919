//! The operator's gRPC client of the control plane's Admin service: attaches the admin token
//! and the caller's name, and turns gRPC statuses into one-line messages.

use std::time::Duration;

use keygate_proto::pb::admin_client::AdminClient as PbAdminClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::Failure;

/// Adds `authorization: Bearer <token>` and `x-keygate-actor` to every call.
#[derive(Clone)]
pub struct Credentials {
    authorization: AsciiMetadataValue,
    actor: Option<AsciiMetadataValue>,
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        metadata.insert("authorization", self.authorization.clone());
        if let Some(actor) = &self.actor {
            metadata.insert("x-keygate-actor", actor.clone());
        }
        Ok(request)
    }
}

/// A connected Admin client.
pub type AdminClient = PbAdminClient<InterceptedService<Channel, Credentials>>;

/// Connects to `endpoint` with `token`. The actor recorded in the audit log is the local user
/// name, when there is one.
pub async fn connect(endpoint: &str, token: Option<&str>) -> Result<AdminClient, Failure> {
    let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
        Failure::Config("no admin token: pass --token or set KEYGATE_TOKEN".into())
    })?;
    let authorization = format!("Bearer {token}")
        .parse::<AsciiMetadataValue>()
        .map_err(|_| {
            Failure::Config("the admin token contains characters that cannot be sent".into())
        })?;
    let actor = std::env::var("USER")
        .ok()
        .and_then(|user| user.parse::<AsciiMetadataValue>().ok());
    let channel = Channel::from_shared(endpoint.to_owned())
        .map_err(|error| Failure::Config(format!("invalid endpoint {endpoint:?}: {error}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .map_err(|error| {
            Failure::Runtime(format!(
                "cannot reach the control plane at {endpoint}: {}",
                source_chain(&error)
            ))
        })?;
    Ok(PbAdminClient::with_interceptor(
        channel,
        Credentials {
            authorization,
            actor,
        },
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
        tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
            Failure::Runtime(message.to_owned())
        }
        code => Failure::Runtime(format!("{code:?}: {message}")),
    }
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
