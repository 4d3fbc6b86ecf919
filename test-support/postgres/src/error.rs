//! The crate's one error type: which step or program failed, and what it and the server said.
//!
//! Every variant carries text only (no `io::Error`), so the error is `Clone`: a failed `initdb`
//! is remembered once per process and handed to every later `start`.

use std::fmt;

/// Why a test server could not be set up, started, stopped or queried.
#[derive(Debug, Clone)]
pub enum Error {
    /// The PostgreSQL server programs are not installed.
    NotInstalled {
        /// The program that is missing.
        program: String,
        /// Where it was looked for.
        searched: String,
    },
    /// Running as root, where `initdb` and `postgres` refuse to run, and there is no
    /// `postgres` system user to run them as.
    NoServerUser {
        /// What looking the user up said.
        detail: String,
    },
    /// A program could not be started at all.
    Spawn {
        /// The program.
        program: String,
        /// The operating system's reason.
        reason: String,
    },
    /// A program ran and failed.
    Failed {
        /// The program (`initdb`, `pg_ctl start`, `psql`, ...).
        program: String,
        /// Its exit status.
        status: String,
        /// Its standard error (or standard output when that is all it printed).
        output: String,
        /// The last lines the server logged during this step; empty when none.
        log_tail: String,
    },
    /// The server started but did not accept TCP connections before the deadline.
    NotReady {
        /// The port it should listen on.
        port: u16,
        /// The last lines of the server log.
        log_tail: String,
    },
    /// `stop` on a server that is not running.
    NotRunning {
        /// The server's port.
        port: u16,
    },
    /// `restart` on a server that is running.
    AlreadyRunning {
        /// The server's port.
        port: u16,
    },
    /// A file-system step failed.
    Io {
        /// The step, e.g. "create a temporary directory".
        action: String,
        /// The operating system's reason.
        reason: String,
    },
    /// A database name that is not plain ASCII letters, digits, `_` and `-` (at most 63).
    InvalidName {
        /// The name given.
        name: String,
    },
}

impl Error {
    /// An error for the file-system step `action`.
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let action = action.into();
        move |source| Error::Io {
            action,
            reason: source.to_string(),
        }
    }

    /// Whether the server failed because its TCP port was taken in the meantime.
    pub(crate) fn is_port_clash(&self) -> bool {
        matches!(self, Error::Failed { log_tail, .. } if log_tail.contains("Address already in use"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotInstalled { program, searched } => write!(
                f,
                "PostgreSQL's `{program}` was not found (looked in {searched}); run tests/setup.sh \
                 (the README's test command does) or `apt-get install postgresql`"
            ),
            Error::NoServerUser { detail } => write!(
                f,
                "running as root, where initdb and postgres refuse to run, and there is no \
                 `postgres` system user to run them as ({detail}); Debian's postgresql package \
                 creates it (tests/setup.sh installs it)"
            ),
            Error::Spawn { program, reason } => write!(f, "could not run `{program}`: {reason}"),
            Error::Failed {
                program,
                status,
                output,
                log_tail,
            } => {
                write!(f, "`{program}` failed ({status})")?;
                let output = output.trim();
                if !output.is_empty() {
                    write!(f, ": {output}")?;
                }
                if !log_tail.is_empty() {
                    write!(
                        f,
                        "\n--- server log, last lines ---\n{}",
                        log_tail.trim_end()
                    )?;
                }
                Ok(())
            }
            Error::NotReady { port, log_tail } => {
                write!(
                    f,
                    "PostgreSQL did not accept connections on 127.0.0.1:{port} in time"
                )?;
                if !log_tail.is_empty() {
                    write!(
                        f,
                        "\n--- server log, last lines ---\n{}",
                        log_tail.trim_end()
                    )?;
                }
                Ok(())
            }
            Error::NotRunning { port } => {
                write!(f, "the PostgreSQL server of port {port} is not running")
            }
            Error::AlreadyRunning { port } => {
                write!(f, "the PostgreSQL server of port {port} is already running")
            }
            Error::Io { action, reason } => write!(f, "could not {action}: {reason}"),
            Error::InvalidName { name } => write!(
                f,
                "database name {name:?} is not 1 to 63 ASCII letters, digits, `_` or `-` \
                 (not starting with `-`)"
            ),
        }
    }
}

impl std::error::Error for Error {}
