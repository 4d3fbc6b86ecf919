//! `keygate enrollments create|list|revoke`: one-time links with which a user registers a
//! passkey. A link carries a secret token and is printed only by `create` (or emailed by the
//! control plane, with `--email`; many users at once with `--users-file`, in
//! `bulk_enrollments`); `list` and `revoke` show the link's id and state, never its token.

use std::time::Duration;

use keygate_proto::pb;
use serde_json::json;

use crate::Failure;
use crate::admin_client::{self, AdminClient, status_failure};
use crate::args::{ClientArgs, EnrollmentsCommand};
use crate::commands::bulk_enrollments;
use crate::output::{enrollment_json, enrollment_line, print_json, rfc3339};

/// Runs one `enrollments` subcommand.
pub async fn run(client_args: &ClientArgs, command: EnrollmentsCommand) -> Result<(), Failure> {
    let json = client_args.json;
    match command {
        EnrollmentsCommand::Create {
            user,
            email,
            users_file,
            email_column,
            expires,
        } => {
            if expires.is_zero() {
                return Err(Failure::Config("--expires must be longer than 0".into()));
            }
            if email_column.is_some() && users_file.is_none() {
                return Err(Failure::Config(
                    "--email-column goes with --users-file (for one user: --email ADDRESS)".into(),
                ));
            }
            if let Some(file) = users_file {
                let rows = bulk_enrollments::read_rows(&file, email_column.as_deref())?;
                let mut client = admin_client::connect_as(client_args).await?;
                return bulk_enrollments::enroll(&mut client, &rows, expires).await;
            }
            let user =
                user.ok_or_else(|| Failure::Config("--user or --users-file is required".into()))?;
            let mut client = admin_client::connect_as(client_args).await?;
            match email {
                Some(email) => create_emailed(&mut client, json, user, email, expires).await,
                None => create(&mut client, json, user, expires).await,
            }
        }
        EnrollmentsCommand::List { user } => {
            let mut client = admin_client::connect_as(client_args).await?;
            let listed = client
                .list_enrollments(pb::ListEnrollmentsRequest {
                    user_id: user.clone(),
                })
                .await
                .map_err(status_failure)?
                .into_inner();
            if json {
                let links: Vec<_> = listed.enrollments.iter().map(enrollment_json).collect();
                print_json(&json!({ "enrollments": links }));
            } else if listed.enrollments.is_empty() {
                println!("User {user} has no enrollment links.");
            } else {
                for link in &listed.enrollments {
                    println!("{}", enrollment_line(link));
                }
            }
            Ok(())
        }
        EnrollmentsCommand::Revoke { enrollment_id } => {
            let mut client = admin_client::connect_as(client_args).await?;
            let revoked = client
                .revoke_enrollment(pb::RevokeEnrollmentRequest { enrollment_id })
                .await
                .map_err(status_failure)?
                .into_inner();
            let link = revoked.enrollment.ok_or_else(|| {
                Failure::Runtime("the control plane answered without the link".into())
            })?;
            if json {
                print_json(&json!({
                    "enrollment": enrollment_json(&link),
                    "changed": revoked.changed,
                }));
            } else if revoked.changed {
                println!(
                    "Revoked enrollment link {} of {}: it can no longer enroll a passkey.",
                    link.enrollment_id, link.user_id
                );
            } else {
                println!(
                    "Enrollment link {} of {} is {} already; nothing changed.",
                    link.enrollment_id, link.user_id, link.state
                );
            }
            Ok(())
        }
    }
}

/// `enrollments create`: prints the link, which only this answer carries.
async fn create(
    client: &mut AdminClient,
    json: bool,
    user: String,
    expires: Duration,
) -> Result<(), Failure> {
    let enrollment = client
        .create_enrollment(pb::CreateEnrollmentRequest {
            user_id: user,
            expires_in_ms: u64::try_from(expires.as_millis()).unwrap_or(u64::MAX),
            email: String::new(),
        })
        .await
        .map_err(status_failure)?
        .into_inner();
    if json {
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

/// `enrollments create --email`: the control plane emails the link, which is shown nowhere
/// here; a send that failed revoked the link and fails the command.
async fn create_emailed(
    client: &mut AdminClient,
    json: bool,
    user: String,
    email: String,
    expires: Duration,
) -> Result<(), Failure> {
    let enrollment = client
        .create_enrollment(pb::CreateEnrollmentRequest {
            user_id: user,
            expires_in_ms: u64::try_from(expires.as_millis()).unwrap_or(u64::MAX),
            email,
        })
        .await
        .map_err(status_failure)?
        .into_inner();
    if json {
        print_json(&json!({
            "enrollmentId": enrollment.enrollment_id,
            "userId": enrollment.user_id,
            "emailedTo": enrollment.emailed_to,
            "expires": rfc3339(enrollment.expires_unix_ms),
        }));
    } else {
        println!(
            "Emailed enrollment link {} for {} to {} (works once, until {}).",
            enrollment.enrollment_id,
            enrollment.user_id,
            enrollment.emailed_to,
            rfc3339(enrollment.expires_unix_ms)
        );
    }
    Ok(())
}
