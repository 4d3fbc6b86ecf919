//! `keygate store copy`: everything in one store copied into a new one (SQLite to PostgreSQL
//! and back), from database to database, with no control plane involved. The target is written
//! in one transaction (or not at all), then read back and checked against the source.

use keygate_control_plane::config::DatabaseUrl;
use keygate_control_plane::open_store_offline;
use keygate_control_plane::store::DumpSummary;
use keygate_control_plane::store::log::fresh_log_id;
use serde_json::json;

use crate::Failure;
use crate::args::{ClientArgs, StoreCommand, StoreCopyArgs};
use crate::output::print_json;

/// Runs a `keygate store` command.
pub async fn run(client_args: &ClientArgs, command: StoreCommand) -> Result<(), Failure> {
    let StoreCommand::Copy(args) = command;
    let copied = copy(&args).await?;
    let (from, to) = (
        DatabaseUrl::redacted(&args.from),
        DatabaseUrl::redacted(&args.to),
    );
    if client_args.json {
        print_json(&json!({
            "from": from,
            "to": to,
            "logId": copied.log.log_id.0,
            "head": copied.log.head.0,
            "keys": copied.keys,
            "identities": copied.identities,
            "creditBalances": copied.credits,
            "users": copied.users,
            "passkeys": copied.passkeys,
            "sessions": copied.sessions,
            "events": copied.events,
            "auditRows": copied.audit,
            "operatorTokens": copied.operator_tokens,
        }));
        return Ok(());
    }
    println!("Copied {from} to {to}.");
    println!(
        "log {} at revision {} (events kept from revision {})",
        copied.log.log_id.0, copied.log.head, copied.log.oldest_retained
    );
    println!(
        "{} keys, {} identities, {} credit balances, {} users, {} passkeys, {} enrollment links, \
         {} sessions, {} passkey revocations, {} signing keys, {} events, {} audit rows, {} \
         operator tokens",
        copied.keys,
        copied.identities,
        copied.credits,
        copied.users,
        copied.passkeys,
        copied.enrollments,
        copied.sessions,
        copied.revoked_passkeys,
        copied.signing_keys,
        copied.events,
        copied.audit,
        copied.operator_tokens
    );
    Ok(())
}

/// Copies `--from` into `--to` and returns what the target holds afterwards.
async fn copy(args: &StoreCopyArgs) -> Result<DumpSummary, Failure> {
    let (from, to) = (
        DatabaseUrl::redacted(&args.from),
        DatabaseUrl::redacted(&args.to),
    );
    let source_url = DatabaseUrl::parse(&args.from)
        .map_err(|error| Failure::Config(format!("--from: {error}")))?;
    DatabaseUrl::parse(&args.to).map_err(|error| Failure::Config(format!("--to: {error}")))?;
    if args.from == args.to {
        return Err(Failure::Config(
            "--from and --to name the same database".into(),
        ));
    }
    // Opening a SQLite store creates the file: a mistyped source path would copy an empty store.
    if let DatabaseUrl::Sqlite(path) = &source_url
        && !path.is_file()
    {
        return Err(Failure::Runtime(format!(
            "no SQLite database at {}",
            path.display()
        )));
    }

    // The source stays open (and a SQLite source locked) until the copy is checked, so no
    // control plane can start on it meanwhile; the same file named twice is refused by that
    // lock too.
    let source = open_store_offline(&args.from)
        .await
        .map_err(|error| Failure::Runtime(format!("cannot open {from}: {error}")))?;
    let mut dump = source
        .export()
        .await
        .map_err(|error| Failure::Runtime(format!("cannot read {from}: {error}")))?;
    let source_log = dump.log.clone();
    if args.new_log_id {
        dump.log.log_id = fresh_log_id();
    }
    let expected = dump.summary();

    let target = open_store_offline(&args.to)
        .await
        .map_err(|error| Failure::Runtime(format!("cannot open {to}: {error}")))?;
    target
        .import(dump)
        .await
        .map_err(|error| Failure::Runtime(format!("cannot copy into {to}: {error}")))?;

    let copied = target
        .export()
        .await
        .map_err(|error| Failure::Runtime(format!("cannot read the copy back from {to}: {error}")))?
        .summary();
    if copied != expected {
        return Err(Failure::Runtime(format!(
            "the copy in {to} does not match {from}: expected {expected} (log {}), found \
             {copied} (log {})",
            expected.log.log_id.0, copied.log.log_id.0
        )));
    }
    // Still the source's state: nothing committed on it while it was copied.
    let bounds = source
        .log_bounds()
        .await
        .map_err(|error| Failure::Runtime(format!("cannot read {from}: {error}")))?;
    if bounds != source_log {
        return Err(Failure::Runtime(format!(
            "{from} changed while it was copied: the copy in {to} stops at revision {}, the \
             source is at {}; stop every control plane on {from}, then copy into a new database",
            expected.log.head, bounds.head
        )));
    }
    Ok(copied)
}
