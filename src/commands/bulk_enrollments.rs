//! `keygate enrollments create --users-file FILE.csv [--email-column C]`: one enrollment link
//! per row of a CSV file, each created (and emailed) on its own, so one bad row spoils no other.
//!
//! The file has a header row naming a `user` column (and the `--email-column`, when given;
//! other columns are ignored, names match without regard to case). Users must exist already:
//! a row naming an unknown or disabled user fails, as does one with no user, a user already on
//! an earlier row, or (with `--email-column`) an empty or malformed address. Each link is
//! printed on stdout as it is made, one JSON object a line; a summary on stderr names every
//! failed row by line number, user and reason, and the command fails when any row did.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use keygate_proto::pb;
use serde_json::json;
use tonic::Code;

use crate::Failure;
use crate::admin_client::{AdminClient, status_failure};
use crate::output::{print_json, rfc3339};

/// The column naming each row's user.
const USER_COLUMN: &str = "user";

/// One data row of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Where the row starts in the file (the header is line 1).
    pub line: u64,
    pub user: String,
    /// The address to email the link to (with `--email-column`).
    pub email: Option<String>,
    /// Why the row cannot be enrolled, known before asking the control plane.
    pub problem: Option<String>,
}

/// A row that was not enrolled, and why.
struct Failed<'a> {
    row: &'a Row,
    reason: String,
}

/// Reads every row of `path`. A file that cannot be read, has no header row, lacks a needed
/// column or has no rows is refused as a whole; a row that is bad on its own is kept, with its
/// problem, to be reported with the others.
pub fn read_rows(path: &Path, email_column: Option<&str>) -> Result<Vec<Row>, Failure> {
    let shown = path.display();
    let text = read_file(path)?;
    // The csv crate counts a blank line before a record as part of it; counting the line ends
    // up to the record's first character gives the line an editor shows.
    let line_at = |position: Option<&csv::Position>| {
        let byte = position.map_or(0, |position| position.byte());
        let start = usize::try_from(byte).unwrap_or(usize::MAX).min(text.len());
        let blank = text[start..]
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        let ends = text[..start + blank]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        u64::try_from(ends).unwrap_or(u64::MAX).saturating_add(1)
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_slice());
    let headers = reader.headers().map_err(|error| {
        Failure::Config(format!("cannot read the header row of {shown}: {error}"))
    })?;
    let column = |name: &str| {
        headers.iter().position(|header| {
            header
                .trim_start_matches('\u{feff}')
                .eq_ignore_ascii_case(name)
        })
    };
    let user_at = column(USER_COLUMN).ok_or_else(|| {
        Failure::Config(format!(
            "{shown} has no `{USER_COLUMN}` column: its first line must be a header row \
             naming the columns, e.g. `{USER_COLUMN},email`"
        ))
    })?;
    let email_at = match email_column {
        Some(name) => Some(column(name).ok_or_else(|| {
            Failure::Config(format!(
                "{shown} has no `{name}` column (--email-column) in its header row"
            ))
        })?),
        None => None,
    };

    let mut rows = Vec::new();
    let mut first_line_of: HashMap<String, u64> = HashMap::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = line_at(record.position());
                let user = record.get(user_at).unwrap_or_default().to_owned();
                let email = email_at.map(|at| record.get(at).unwrap_or_default().to_owned());
                let problem = if user.is_empty() {
                    Some(format!("no user in the `{USER_COLUMN}` column"))
                } else if let Some(first) = first_line_of.get(&user) {
                    Some(format!("the user is on line {first} already"))
                } else if email.as_deref() == Some("") {
                    Some("no email address".to_owned())
                } else {
                    None
                };
                if !user.is_empty() {
                    first_line_of.entry(user.clone()).or_insert(line);
                }
                rows.push(Row {
                    line,
                    user,
                    email,
                    problem,
                });
            }
            Err(error) if error.is_io_error() => {
                return Err(Failure::Config(format!("cannot read {shown}: {error}")));
            }
            Err(error) => {
                // A row that is not valid CSV (or not UTF-8): reported, and the rest go on.
                let line = line_at(error.position());
                rows.push(Row {
                    line,
                    user: String::new(),
                    email: None,
                    problem: Some(format!("not a readable CSV row: {error}")),
                });
            }
        }
    }
    if rows.is_empty() {
        return Err(Failure::Config(format!(
            "{shown} has a header row but no users"
        )));
    }
    Ok(rows)
}

/// Largest `--users-file` read: about a million rows of user and address.
const MAX_FILE_BYTES: u64 = 128 * 1024 * 1024;

/// The whole file (it is read twice: for its records, and for their line numbers).
fn read_file(path: &Path) -> Result<Vec<u8>, Failure> {
    let cannot = |error: std::io::Error| {
        Failure::Config(format!(
            "cannot read --users-file {}: {error}",
            path.display()
        ))
    };
    let size = std::fs::metadata(path).map_err(cannot)?.len();
    if size > MAX_FILE_BYTES {
        return Err(Failure::Config(format!(
            "--users-file {} is larger than {} MiB; split it",
            path.display(),
            MAX_FILE_BYTES / (1024 * 1024)
        )));
    }
    std::fs::read(path).map_err(cannot)
}

/// Creates one link per row that has no problem, in file order, printing each as a JSON line;
/// then the summary on stderr. Fails when any row did.
pub async fn enroll(
    client: &mut AdminClient,
    rows: &[Row],
    expires: Duration,
) -> Result<(), Failure> {
    let expires_in_ms = u64::try_from(expires.as_millis()).unwrap_or(u64::MAX);
    let mut failed = Vec::new();
    // Set when the control plane refuses something no other row could fix (the token, the
    // connection): the rows after it are not attempted.
    let mut stopped: Option<String> = None;
    for row in rows {
        if let Some(problem) = &row.problem {
            failed.push(Failed {
                row,
                reason: problem.clone(),
            });
            continue;
        }
        if let Some(reason) = &stopped {
            failed.push(Failed {
                row,
                reason: format!("not attempted: {reason}"),
            });
            continue;
        }
        let created = client
            .create_enrollment(pb::CreateEnrollmentRequest {
                user_id: row.user.clone(),
                expires_in_ms,
                email: row.email.clone().unwrap_or_default(),
            })
            .await;
        match created {
            Ok(enrollment) => print_json(&link_json(row, &enrollment.into_inner())),
            Err(status) => {
                let row_specific = matches!(
                    status.code(),
                    Code::NotFound
                        | Code::InvalidArgument
                        | Code::FailedPrecondition
                        | Code::AlreadyExists
                        | Code::Aborted
                );
                let reason = status_failure(status).to_string();
                if !row_specific {
                    stopped = Some(reason.clone());
                }
                failed.push(Failed { row, reason });
            }
        }
    }
    let enrolled = rows.len() - failed.len();
    if failed.is_empty() {
        eprintln!("enrolled {enrolled} of {} users", rows.len());
        return Ok(());
    }
    eprintln!(
        "enrolled {enrolled} of {} users; {} failed:",
        rows.len(),
        failed.len()
    );
    for Failed { row, reason } in &failed {
        eprintln!("  line {}, user {:?}: {reason}", row.line, row.user);
    }
    Err(Failure::Runtime(format!(
        "{} of {} rows failed (listed above)",
        failed.len(),
        rows.len()
    )))
}

/// A created link as one JSON line: the link itself, or where it was emailed.
fn link_json(row: &Row, enrollment: &pb::Enrollment) -> serde_json::Value {
    let mut line = json!({
        "line": row.line,
        "enrollmentId": enrollment.enrollment_id,
        "userId": enrollment.user_id,
        "expires": rfc3339(enrollment.expires_unix_ms),
    });
    if enrollment.emailed_to.is_empty() {
        line["link"] = json!(enrollment.link);
    } else {
        line["emailedTo"] = json!(enrollment.emailed_to);
    }
    line
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rows(text: &[u8], email_column: Option<&str>) -> Result<Vec<Row>, String> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        read_rows(file.path(), email_column).map_err(|failure| failure.to_string())
    }

    #[test]
    fn rows_keep_their_line_numbers_and_problems() {
        let read = rows(
            b"\xef\xbb\xbfUser , Email,team\n\
              alice, alice@example.com ,red\n\
              \n\
              ,nobody@example.com\n\
              bob,\n\
              alice,again@example.com\n\
              \"carol\",carol@example.com\n\
              dave\n\
              \xff\xfe,x@example.com\n",
            Some("email"),
        )
        .unwrap();
        let summary: Vec<(u64, &str, Option<&str>, Option<&str>)> = read
            .iter()
            .map(|row| {
                (
                    row.line,
                    row.user.as_str(),
                    row.email.as_deref(),
                    row.problem.as_deref(),
                )
            })
            .collect();
        assert_eq!(summary[0], (2, "alice", Some("alice@example.com"), None));
        assert_eq!(
            summary[1],
            (
                4,
                "",
                Some("nobody@example.com"),
                Some("no user in the `user` column")
            )
        );
        assert_eq!(summary[2], (5, "bob", Some(""), Some("no email address")));
        assert_eq!(
            summary[3],
            (
                6,
                "alice",
                Some("again@example.com"),
                Some("the user is on line 2 already")
            )
        );
        assert_eq!(summary[4], (7, "carol", Some("carol@example.com"), None));
        assert_eq!(summary[5], (8, "dave", Some(""), Some("no email address")));
        assert_eq!(summary[6].0, 9);
        assert!(
            summary[6].3.unwrap().starts_with("not a readable CSV row"),
            "{summary:?}"
        );
        assert_eq!(read.len(), 7);

        let no_email = rows(b"user\nalice\n", None).unwrap();
        assert_eq!(no_email[0].email, None);
        assert_eq!(no_email[0].problem, None);
    }

    #[test]
    fn a_file_without_its_columns_or_rows_is_refused_whole() {
        let error = rows(b"alice\nbob\n", None).unwrap_err();
        assert!(error.contains("no `user` column"), "{error}");
        let error = rows(b"user,mail\nalice,a@example.com\n", Some("email")).unwrap_err();
        assert!(error.contains("no `email` column"), "{error}");
        let error = rows(b"user\n", None).unwrap_err();
        assert!(error.contains("no users"), "{error}");
        let error = rows(b"", None).unwrap_err();
        assert!(error.contains("no `user` column"), "{error}");
        let missing = read_rows(Path::new("/nonexistent/users.csv"), None)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read --users-file"), "{missing}");
    }
}
