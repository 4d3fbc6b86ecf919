//! A real, throwaway PostgreSQL server for tests. [`TestPostgres::start`] gives a test its own
//! server on a free port of 127.0.0.1, with its own data directory in a temporary directory; drop
//! stops it (also while a failing test unwinds) and deletes the directory. Nothing is mocked:
//! it is the installed PostgreSQL (`initdb`, `postgres`, `pg_ctl`, `psql`, `pg_isready` beside
//! the `initdb` on `PATH`, else in the newest Debian `/usr/lib/postgresql/*/bin`;
//! `tests/setup.sh` installs Debian's `postgresql` when it is missing).
//!
//! ```no_run
//! use keygate_test_postgres::TestPostgres;
//!
//! let postgres = TestPostgres::start()?;
//! let url = postgres.create_database("store_test")?; // postgres://keygate@127.0.0.1:PORT/store_test
//! assert_eq!(postgres.psql("store_test", "SELECT 1")?, "1\n");
//! # Ok::<(), keygate_test_postgres::Error>(())
//! ```
//!
//! Speed: `initdb` runs once per process into a template (see `template.rs`); each server
//! starts from a copy of it (in `/dev/shm` when that has room, see `scratch.rs`), with
//! durability off (`fsync`, `synchronous_commit`, `full_page_writes`), `shared_buffers = 16MB`
//! and `max_connections = 200`. On a 2-core machine the first start of a process takes about a
//! second, later ones about a tenth of that.
//!
//! Root: `initdb`, `pg_ctl` and `postgres` refuse to run as root, so a root process (CI) runs
//! every PostgreSQL program as the `postgres` system user (through `setpriv`), and hands it the
//! temporary directories; the temp dir they are made in must be traversable by that user, as
//! `/tmp` and `/dev/shm` are.
//!
//! The API blocks. Async tests may call it directly while setting up, as a `#[tokio::test]`
//! runs nothing else meanwhile, or through `tokio::task::spawn_blocking` once other tasks run.
//!
//! The server is a child process of the test, in its process group: Ctrl-C stops it too. A test
//! process killed by `SIGKILL` leaves it running; `pg_ctl stop -D <its dir>/data` ends it. The
//! directories a gone process left are removed by the next process's first start.

mod binaries;
mod cluster;
mod error;
mod port;
mod scratch;
mod server_user;
mod template;

use tempfile::TempDir;

pub use crate::error::Error;

use crate::cluster::{Cluster, Listen, SUPERUSER, Shutdown};
use crate::port::PortClaim;
use crate::template::Template;

/// Times a start is retried on a fresh port when another process took the chosen one.
const PORT_CLASH_RETRIES: u32 = 3;

/// A PostgreSQL server of one test: the superuser role `keygate` (trust authentication, no
/// password) and the database `keygate`, on 127.0.0.1. Dropping it stops the server and deletes
/// its files.
#[derive(Debug)]
pub struct TestPostgres {
    cluster: Cluster<'static>,
    /// Released after `Drop::drop` has stopped the server.
    claim: PortClaim,
    /// Deleted after `Drop::drop` has stopped the server.
    _dir: TempDir,
}

impl TestPostgres {
    /// Starts a server from a copy of the process's template cluster (made by `initdb` on the
    /// first call) on a free port of 127.0.0.1, and returns once it accepts TCP connections
    /// (`pg_isready`, polled until a deadline of a minute).
    pub fn start() -> Result<TestPostgres, Error> {
        let template = Template::get()?;
        let dir = copy_template(template)?;
        let claim = PortClaim::new()?;
        let cluster = Cluster::new(
            &template.binaries,
            &template.user,
            dir.path().into(),
            claim.port(),
            Listen::Loopback,
        );
        // From here on, drop stops whatever a failed start left running.
        let mut server = TestPostgres {
            cluster,
            claim,
            _dir: dir,
        };
        let mut clashes = 0;
        loop {
            match server.cluster.start() {
                Ok(()) => return Ok(server),
                // Another process bound the port between our probe and the server's bind.
                Err(error) if error.is_port_clash() && clashes < PORT_CLASH_RETRIES => {
                    clashes += 1;
                    server.claim = PortClaim::new()?;
                    server.cluster.port = server.claim.port();
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Creates the database `name` (ASCII letters, digits, `_`, `-`; at most 63) and returns
    /// its URL, `postgres://keygate@127.0.0.1:PORT/NAME`.
    pub fn create_database(&self, name: &str) -> Result<String, Error> {
        check_name(name)?;
        self.psql(SUPERUSER, &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.database_url(name))
    }

    /// The URL of the database `keygate`, which every server starts with.
    pub fn url(&self) -> String {
        self.database_url(SUPERUSER)
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.cluster.port
    }

    /// Stops the server (`pg_ctl stop -m fast`: open transactions roll back, clients are
    /// disconnected) and returns once it has exited; the data stays for
    /// [`restart`](Self::restart). Fails when it is not running.
    pub fn stop(&self) -> Result<(), Error> {
        self.cluster.stop(Shutdown::Fast)
    }

    /// Starts the stopped server again on the same port and data, and returns once it accepts
    /// TCP connections. Fails when it is running, or when another process took the port
    /// meanwhile (this process's other servers never get it).
    pub fn restart(&self) -> Result<(), Error> {
        self.cluster.start()
    }

    /// Runs `sql` (one or more statements) in `database` through `psql` as the superuser, over
    /// the unix socket, stopping at the first error; returns what `psql` printed, unaligned and
    /// tuples only (`SELECT 1, 'a'` gives "1|a\n"). For tests that inspect or break a database.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, Error> {
        check_name(database)?;
        self.cluster.psql(database, sql)
    }

    fn database_url(&self, name: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{name}",
            self.cluster.port
        )
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // Immediate: the data is about to be deleted. Fails harmlessly when already stopped.
        let _ = self.cluster.stop(Shutdown::Immediate);
    }
}

/// A name that needs no escaping in SQL (quoted), in a URL, or as a `psql -d` argument.
fn check_name(name: &str) -> Result<(), Error> {
    let valid = (1..=63).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidName { name: name.into() })
    }
}

/// A new temporary directory with a copy of the template's data directory, given to the
/// server user.
fn copy_template(template: &Template) -> Result<TempDir, Error> {
    let dir = scratch::server_dir()?;
    template.user.hand_over(dir.path())?;
    copy_dir(&template.data(), &dir.path().join("data"))?;
    Ok(dir)
}

/// `cp -a from to`: as root it keeps the postgres user as owner of every file, and the data
/// directory's mode 0700, which the server insists on.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<(), Error> {
    let output = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| Error::Spawn {
            program: "cp".into(),
            reason: error.to_string(),
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Failed {
        program: "cp -a".into(),
        status: output.status.to_string(),
        output: String::from_utf8_lossy(&output.stderr).into_owned(),
        log_tail: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    use super::*;

    fn accepts_tcp(port: u16) -> bool {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
    }

    /// Polls until nothing accepts connections on `port`, for at most ten seconds.
    fn closes_within_deadline(port: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !accepts_tcp(port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn starts_creates_databases_and_runs_sql() {
        let postgres = TestPostgres::start().expect("start");
        let port = postgres.port();
        assert_eq!(
            postgres.url(),
            format!("postgres://keygate@127.0.0.1:{port}/keygate")
        );
        assert!(accepts_tcp(port));

        let first = postgres.create_database("first").expect("create first");
        let second = postgres
            .create_database("second-db")
            .expect("create second");
        assert_eq!(first, format!("postgres://keygate@127.0.0.1:{port}/first"));
        assert_eq!(
            second,
            format!("postgres://keygate@127.0.0.1:{port}/second-db")
        );

        assert_eq!(postgres.psql("first", "SELECT 1").expect("select"), "1\n");
        let who = "SELECT current_user, current_database(), rolsuper FROM pg_roles \
                   WHERE rolname = current_user";
        assert_eq!(
            postgres.psql("second-db", who).expect("who"),
            "keygate|second-db|t\n"
        );
        let settings = "SELECT current_setting('port'), current_setting('fsync'), \
                        current_setting('server_encoding')";
        assert_eq!(
            postgres.psql("keygate", settings).expect("settings"),
            format!("{port}|off|UTF8\n")
        );

        // Several statements, each in its own transaction, stopping at the first error.
        let script = "CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2); SELECT sum(n) FROM t;";
        assert_eq!(postgres.psql("first", script).expect("script"), "3\n");
        let error = postgres
            .psql("first", "SELECT * FROM missing")
            .expect_err("missing table");
        assert!(
            error.to_string().contains("\"missing\" does not exist"),
            "{error}"
        );

        let error = postgres
            .create_database("first")
            .expect_err("created twice");
        assert!(error.to_string().contains("already exists"), "{error}");
    }

    #[test]
    fn refuses_names_that_need_escaping() {
        for name in ["", "a b", "x\"; DROP", "-d", "ü", &"n".repeat(64)] {
            assert!(
                matches!(check_name(name), Err(Error::InvalidName { .. })),
                "{name:?}"
            );
        }
        for name in ["keygate", "store_test_1", "Mixed-Case", &"n".repeat(63)] {
            assert!(check_name(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn stop_and_restart_keep_port_and_data() {
        let postgres = TestPostgres::start().expect("start");
        let port = postgres.port();
        postgres
            .psql(
                "keygate",
                "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42);",
            )
            .expect("write");

        postgres.stop().expect("stop");
        assert!(
            postgres.psql("keygate", "SELECT 1").is_err(),
            "psql after stop"
        );
        assert!(
            closes_within_deadline(port),
            "port {port} still open after stop"
        );

        postgres.restart().expect("restart");
        assert_eq!(postgres.port(), port);
        assert!(accepts_tcp(port));
        assert_eq!(
            postgres
                .psql("keygate", "SELECT n FROM kept")
                .expect("read"),
            "42\n"
        );
    }

    #[test]
    fn two_servers_run_side_by_side() {
        let one = TestPostgres::start().expect("start one");
        let two = TestPostgres::start().expect("start two");
        assert_ne!(one.port(), two.port());
        one.create_database("only_on_one").expect("create");
        let exists = "SELECT count(*) FROM pg_database WHERE datname = 'only_on_one'";
        assert_eq!(one.psql("keygate", exists).expect("one"), "1\n");
        assert_eq!(two.psql("keygate", exists).expect("two"), "0\n");
    }

    #[test]
    fn a_taken_port_is_recognised_as_a_clash() {
        let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = taken.local_addr().expect("address").port();
        let template = Template::get().expect("template");
        let dir = copy_template(template).expect("copy");
        let cluster = Cluster::new(
            &template.binaries,
            &template.user,
            dir.path().into(),
            port,
            Listen::Loopback,
        );
        let error = cluster.start().expect_err("the port is taken");
        assert!(error.is_port_clash(), "{error}");
        assert!(matches!(
            cluster.stop(Shutdown::Immediate),
            Err(Error::NotRunning { .. })
        ));
    }

    #[test]
    fn drop_stops_the_server() {
        let postgres = TestPostgres::start().expect("start");
        let port = postgres.port();
        assert!(accepts_tcp(port));
        drop(postgres);
        assert!(
            closes_within_deadline(port),
            "port {port} still open after drop"
        );
    }

    #[test]
    fn a_panicking_test_still_stops_its_server() {
        let (sender, receiver) = std::sync::mpsc::channel();
        let outcome = std::panic::catch_unwind(move || {
            let postgres = TestPostgres::start().expect("start");
            sender.send(postgres.port()).expect("send port");
            panic!("the test failed while its server ran");
        });
        assert!(outcome.is_err());
        let port = receiver.recv().expect("the server started");
        assert!(
            closes_within_deadline(port),
            "port {port} still open after the panic"
        );
    }
}
