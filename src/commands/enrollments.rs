//! `keygate enrollments create --user U [--expires D]`: a one-time link with which a user
//! registers a passkey. The link carries a secret token and is printed only here.

use keygate_proto::pb;
use serde_json::json;

use crate::Failure;
use crate::admin_client::{self, status_failure};
use crate::args::{ClientArgs, EnrollmentsCommand};
use crate::output::{print_json, rfc3339};

/// Runs one `enrollments` subcommand.
pub async fn run(client_args: &ClientArgs, command: EnrollmentsCommand) -> Result<(), Failure> {
    let EnrollmentsCommand::Create { user, expires } = command;
    if expires.is_zero() {
        return Err(Failure::Config("--expires must be longer than 0".into()));
    }
    let mut client = admin_client::connect_as(client_args).await?;
    let enrollment = client
        .create_enrollment(pb::CreateEnrollmentRequest {
            user_id: user,
            expires_in_ms: u64::try_from(expires.as_millis()).unwrap_or(u64::MAX),
        })
        .await
        .map_err(status_failure)?
        .into_inner();
    if client_args.json {
        print_json(&json!({
            "enrollmentId": enrollment.enrollment_id,
            "userId": enrollment.user_id,
            "link": enrollment.link,
            "expires": rfc3339(enrollment.expires_unix_ms),
        }));
    } else {
        println!(
            "Enrollment link for {} (works once, until {}; shown only this once):",
            enrollment.user_id,
            rfc3339(enrollment.expires_unix_ms)
        );
        println!("{}", enrollment.link);
    }
    Ok(())
}
