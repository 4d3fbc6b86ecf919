//! The template cluster. `initdb` takes about a second, so it runs once per process, into a
//! temporary directory of its own; the template server is started once, on its unix socket
//! only, to create the `keygate` database, and stopped cleanly (sparing every copy a crash
//! recovery). Every test server starts from a copy of its data directory.
//!
//! The template lives in a `static`, and statics are never dropped, so its directory
//! (`$TMPDIR/keygate-pg-template-<pid>-*`, about 35 MB: four databases of 7 MB and the WAL)
//! stays after the process exits, until the next process that makes a template removes it
//! (`scratch.rs`). No server needs it once copied.

use std::path::PathBuf;
use std::sync::OnceLock;

use tempfile::TempDir;

use crate::Error;
use crate::binaries::Binaries;
use crate::cluster::{Cluster, Listen, SUPERUSER, Shutdown};
use crate::scratch;
use crate::server_user::ServerUser;

/// The template's port: a unix socket in the template's own directory, so it clashes with
/// nothing, not even a system cluster on the same number.
const TEMPLATE_PORT: u16 = 5432;

/// The initialised cluster every test server copies, and the programs and user that made it.
#[derive(Debug)]
pub(crate) struct Template {
    dir: TempDir,
    pub(crate) binaries: Binaries,
    pub(crate) user: ServerUser,
}

static TEMPLATE: OnceLock<Result<Template, Error>> = OnceLock::new();

impl Template {
    /// The process's template, made on first use; a failure is remembered, so every test of
    /// the process reports the same error at once.
    pub(crate) fn get() -> Result<&'static Template, Error> {
        TEMPLATE
            .get_or_init(Template::create)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The data directory to copy.
    pub(crate) fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn create() -> Result<Template, Error> {
        let binaries = Binaries::find()?;
        let user = ServerUser::detect()?;
        scratch::remove_leftovers(user.uid());
        let dir = scratch::template_dir()?;
        user.hand_over(dir.path())?;
        let cluster = Cluster::new(
            &binaries,
            &user,
            dir.path().to_path_buf(),
            TEMPLATE_PORT,
            Listen::SocketOnly,
        );
        cluster.initdb()?;
        cluster.start()?;
        let created = cluster.psql("postgres", &format!("CREATE DATABASE {SUPERUSER}"));
        let stopped = cluster.stop(Shutdown::Fast);
        created?;
        stopped?;
        drop(cluster);
        Ok(Template {
            dir,
            binaries,
            user,
        })
    }
}
