//! `--wait [--timeout D]`: after a change, ask the control plane to return once every gateway
//! that may be serving has applied its revision, and report how long that took and where.

use keygate_proto::pb;
use serde_json::{Value, json};

use crate::Failure;
use crate::admin_client::{AdminClient, status_failure};
use crate::args::WaitArgs;
use crate::output::{gateway_json, millis_text, print_json};

/// The control plane's answer to one wait.
#[derive(Debug)]
pub struct Waited(pb::WaitForRevisionResponse);

/// Waits for `revision` if `--wait` was given.
pub async fn wait_if_asked(
    client: &mut AdminClient,
    revision: u64,
    args: WaitArgs,
) -> Result<Option<Waited>, Failure> {
    if !args.wait {
        return Ok(None);
    }
    let timeout_ms = args.timeout.map_or(0, |timeout| {
        u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
    });
    let response = client
        .wait_for_revision(pb::WaitForRevisionRequest {
            revision,
            timeout_ms,
        })
        .await
        .map_err(status_failure)?
        .into_inner();
    Ok(Some(Waited(response)))
}

impl Waited {
    /// The `"wait"` member of a command's JSON output.
    pub fn json(&self) -> Value {
        let waited = &self.0;
        json!({
            "complete": waited.complete,
            "elapsedMs": waited.elapsed_ms,
            "acked": waited.acked,
            "pending": waited.pending.iter().map(gateway_json).collect::<Vec<_>>(),
            "pastBound": waited.past_bound,
        })
    }

    /// One line for a person.
    pub fn line(&self) -> String {
        let waited = &self.0;
        let total = waited.acked.len() + waited.pending.len() + waited.past_bound.len();
        let mut line = if waited.complete {
            format!(
                "Applied at {} of {total} gateway(s) in {}.",
                waited.acked.len(),
                millis_text(waited.elapsed_ms)
            )
        } else {
            format!(
                "Not applied within {} at {} of {total} gateway(s): {}.",
                millis_text(waited.elapsed_ms),
                waited.pending.len(),
                self.pending_names()
            )
        };
        if !waited.past_bound.is_empty() {
            line.push_str(&format!(
                " Lost and past their propagation bound, so refusing every credential: {}.",
                waited.past_bound.join(", ")
            ));
        }
        line
    }

    /// `Err` naming the gateways that did not apply the change, when the wait timed out.
    pub fn outcome(&self) -> Result<(), Failure> {
        if self.0.complete {
            Ok(())
        } else {
            Err(Failure::Runtime(format!(
                "the change was not applied within {} at: {}",
                millis_text(self.0.elapsed_ms),
                self.pending_names()
            )))
        }
    }

    fn pending_names(&self) -> String {
        let names: Vec<String> = self
            .0
            .pending
            .iter()
            .map(|gateway| {
                let state = if gateway.connected {
                    "connected"
                } else {
                    "disconnected"
                };
                format!(
                    "{} ({state}, applied {})",
                    gateway.gateway_id, gateway.applied_revision
                )
            })
            .collect();
        names.join(", ")
    }
}

/// Prints the result of a change — `output` as one JSON object (with a `"wait"` member when the
/// command waited), or what `print_for_people` prints followed by the wait's line — and fails
/// naming the gateways that did not apply the change when the wait timed out.
pub fn report_change(
    json: bool,
    output: Value,
    print_for_people: impl FnOnce(),
    waited: Option<Waited>,
) -> Result<(), Failure> {
    if json {
        print_json(&with_wait(output, waited.as_ref()));
    } else {
        print_for_people();
        print_wait_line(waited.as_ref());
    }
    waited.map_or(Ok(()), |waited| waited.outcome())
}

/// `output` with a `"wait"` member when the command waited.
fn with_wait(mut output: Value, waited: Option<&Waited>) -> Value {
    if let (Some(waited), Some(object)) = (waited, output.as_object_mut()) {
        object.insert("wait".to_owned(), waited.json());
    }
    output
}

/// Prints the wait's line when the command waited.
fn print_wait_line(waited: Option<&Waited>) {
    if let Some(waited) = waited {
        println!("{}", waited.line());
    }
}
