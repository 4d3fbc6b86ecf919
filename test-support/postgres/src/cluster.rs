//! One PostgreSQL cluster on disk and the programs that act on it. Its directory holds the data
//! directory (`data/`), the server log (`postgres.log`) and the unix socket; the programs run as
//! the [`ServerUser`] with the directory as working directory.
//!
//! The server runs as a child of this process (`postgres -D data`, its output appended to the
//! log), not detached by `pg_ctl start`: a child that exits during startup is seen at once
//! (`try_wait`) instead of at the end of a timeout, and `pg_ctl --wait`, which polls every
//! 100 ms, would add about 100 ms to every start and stop. `pg_ctl stop --no-wait` only sends
//! the shutdown signal; waiting for the child's exit says when the server is gone.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::Error;
use crate::binaries::Binaries;
use crate::server_user::ServerUser;

/// The superuser role every cluster is created with (`initdb --username`).
pub(crate) const SUPERUSER: &str = "keygate";

/// Settings for throwaway servers: no durability (a crashed test server is thrown away), a
/// small memory footprint, and room for connection pools.
const TEST_SETTINGS: &[&str] = &[
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=200",
    "shared_buffers=16MB",
];

/// How long a start may take to accept connections, and a stop to end the server.
const DEADLINE: Duration = Duration::from_secs(60);

/// How often a start checks for readiness, and a stop for the server's exit.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Lines of the server log quoted in an error.
const LOG_TAIL_LINES: usize = 30;

/// Where a cluster accepts connections besides its unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listen {
    /// TCP on 127.0.0.1:`port` too.
    Loopback,
    /// The unix socket only (the template, which no client outside this crate reaches).
    SocketOnly,
}

/// How a server is shut down.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shutdown {
    /// Roll back open transactions, disconnect clients, write a shutdown checkpoint.
    Fast,
    /// Quit at once; the next start runs crash recovery.
    Immediate,
}

/// A cluster in `dir`, served on `port`.
#[derive(Debug)]
pub(crate) struct Cluster<'a> {
    binaries: &'a Binaries,
    user: &'a ServerUser,
    dir: PathBuf,
    pub(crate) port: u16,
    listen: Listen,
    /// The running server (`postgres`, or the `setpriv`/`runuser` that became or runs it).
    server: Mutex<Option<Child>>,
}

impl<'a> Cluster<'a> {
    pub(crate) fn new(
        binaries: &'a Binaries,
        user: &'a ServerUser,
        dir: PathBuf,
        port: u16,
        listen: Listen,
    ) -> Cluster<'a> {
        Cluster {
            binaries,
            user,
            dir,
            port,
            listen,
            server: Mutex::new(None),
        }
    }

    pub(crate) fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// `initdb`: trust authentication, UTF8, the C locale, no fsync, and 1 MB WAL segments
    /// (the default 16 MB segment would be most of what every server copies).
    pub(crate) fn initdb(&self) -> Result<(), Error> {
        let output = self
            .command(&self.binaries.initdb)
            .arg("-D")
            .arg(self.data())
            .arg(format!("--username={SUPERUSER}"))
            .args(["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"])
            .arg("--wal-segsize=1")
            .output();
        check("initdb", output, String::new).map(drop)
    }

    /// Starts the server and returns once it accepts connections, or fails with the log lines
    /// of this attempt.
    pub(crate) fn start(&self) -> Result<(), Error> {
        let mut server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        if server.is_some() {
            return Err(Error::AlreadyRunning { port: self.port });
        }
        let log_from = self.log_len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .map_err(Error::io("open the server log"))?;
        let log_too = log.try_clone().map_err(Error::io("open the server log"))?;
        let listen_addresses = match self.listen {
            Listen::Loopback => "127.0.0.1",
            Listen::SocketOnly => "",
        };
        let mut command = self.command(&self.binaries.postgres);
        command
            .arg("-D")
            .arg(self.data())
            .arg(format!("--port={}", self.port))
            .arg(format!("--listen_addresses={listen_addresses}"))
            .arg("-c")
            .arg({
                let mut setting = std::ffi::OsString::from("unix_socket_directories=");
                setting.push(&self.dir);
                setting
            });
        for setting in TEST_SETTINGS {
            command.arg("-c").arg(setting);
        }
        let child = command
            .stdout(log)
            .stderr(log_too)
            .spawn()
            .map_err(|error| Error::Spawn {
                program: "postgres".into(),
                reason: error.to_string(),
            })?;
        let child = server.insert(child);

        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                *server = None;
                return Err(Error::Failed {
                    program: "postgres".into(),
                    status: status.to_string(),
                    output: "it exited during startup".into(),
                    log_tail: self.log_tail(log_from),
                });
            }
            if self.pid_file_says_ready() && self.accepts_connections() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    port: self.port,
                    log_tail: self.log_tail(log_from),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Shuts the server down and returns once it has exited.
    pub(crate) fn stop(&self, shutdown: Shutdown) -> Result<(), Error> {
        let mut server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(mut child) = server.take() else {
            return Err(Error::NotRunning { port: self.port });
        };
        let mode = match shutdown {
            Shutdown::Fast => "fast",
            Shutdown::Immediate => "immediate",
        };
        // std can only send SIGKILL (`Child::kill`), which skips the server's own shutdown;
        // `pg_ctl stop --no-wait` sends the mode's signal (SIGINT fast, SIGQUIT immediate).
        let signalled = self
            .command(&self.binaries.pg_ctl)
            .args(["stop", "-W", "-s", "-m", mode])
            .arg("-D")
            .arg(self.data())
            .output();
        let signalled = check("pg_ctl stop", signalled, || self.log_tail(0));
        let deadline = Instant::now()
            + if signalled.is_ok() {
                DEADLINE
            } else {
                Duration::ZERO
            };
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return signalled.map(drop),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                // Not signalled, or it did not end in time: end it the hard way.
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return signalled.map(drop);
                }
            }
        }
    }

    /// Whether `postmaster.pid` says the server is ready, as `pg_ctl --wait` asks. Asked before
    /// `pg_isready`, which would wait seconds for an answer from a foreign listener on a port
    /// that was taken.
    fn pid_file_says_ready(&self) -> bool {
        // Line 8 of the lock file is the postmaster's status: "starting", "ready", ...
        std::fs::read_to_string(self.data().join("postmaster.pid"))
            .is_ok_and(|pid_file| pid_file.lines().nth(7).is_some_and(|s| s.trim() == "ready"))
    }

    /// Whether the server accepts connections where clients reach it (`pg_isready`).
    fn accepts_connections(&self) -> bool {
        let mut command = self.command(&self.binaries.pg_isready);
        match self.listen {
            Listen::Loopback => command.args(["-h", "127.0.0.1"]),
            Listen::SocketOnly => command.arg("-h").arg(&self.dir),
        };
        command
            .args(["-q", "-t", "5", "-U", SUPERUSER, "-d", "postgres"])
            .arg(format!("--port={}", self.port))
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Runs `sql` through `psql` over the unix socket as the superuser, stopping at the first
    /// error; returns what it printed (unaligned, tuples only: `SELECT 1` gives "1\n").
    pub(crate) fn psql(&self, database: &str, sql: &str) -> Result<String, Error> {
        let child = self
            .command(&self.binaries.psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .arg(format!("--port={}", self.port))
            .args(["-U", SUPERUSER, "-d", database, "-f", "-"])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let output = child.and_then(|mut child| {
            let mut stdin = child.stdin.take();
            // Feed stdin from a second thread: with a large script and a large result, writing
            // all input before reading any output could fill both pipes and block forever.
            std::thread::scope(|scope| {
                scope.spawn(move || {
                    if let Some(stdin) = stdin.as_mut() {
                        // psql exits early on a failed connection; its error says why.
                        let _ = stdin.write_all(sql.as_bytes());
                    }
                });
                child.wait_with_output()
            })
        });
        let output = check("psql", output, String::new)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn command(&self, program: &Path) -> Command {
        let mut command = self.user.command(program);
        command.current_dir(&self.dir);
        command
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(self.log()).map_or(0, |meta| meta.len())
    }

    /// The last lines the server logged from byte `from` on.
    fn log_tail(&self, from: u64) -> String {
        let mut text = Vec::new();
        let read = std::fs::File::open(self.log()).and_then(|mut file| {
            file.seek(SeekFrom::Start(from))?;
            file.read_to_end(&mut text)
        });
        if read.is_err() {
            return String::new();
        }
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

/// `output`, or the error saying that `program` could not run or failed.
pub(crate) fn check(
    program: &str,
    output: std::io::Result<Output>,
    log_tail: impl FnOnce() -> String,
) -> Result<Output, Error> {
    let output = output.map_err(|error| Error::Spawn {
        program: program.into(),
        reason: error.to_string(),
    })?;
    if output.status.success() {
        return Ok(output);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let printed = if stderr.trim().is_empty() {
        String::from_utf8_lossy(&output.stdout)
    } else {
        stderr
    };
    Err(Error::Failed {
        program: program.into(),
        status: output.status.to_string(),
        output: printed.into_owned(),
        log_tail: log_tail(),
    })
}
