//! Finding PostgreSQL's programs: the directory of the `initdb` on `PATH` (through symlinks, so
//! `/usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb` finds the whole set), else the
//! newest Debian `/usr/lib/postgresql/*/bin`. The client programs come from the same directory
//! when it has them, so client and server are one version (Debian's `/usr/bin/psql` is a
//! wrapper that picks a version of its own).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// Where Debian installs one directory of server programs per major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// The PostgreSQL programs this crate runs.
#[derive(Debug)]
pub(crate) struct Binaries {
    pub(crate) initdb: PathBuf,
    pub(crate) postgres: PathBuf,
    pub(crate) pg_ctl: PathBuf,
    pub(crate) psql: PathBuf,
    pub(crate) pg_isready: PathBuf,
}

impl Binaries {
    /// Finds the programs, or says which one is missing and how to install it.
    pub(crate) fn find() -> Result<Binaries, Error> {
        let server_dir = on_path("initdb")
            .and_then(|initdb| initdb.canonicalize().ok())
            .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
            .or_else(newest_debian_bin_dir)
            .ok_or_else(|| Error::NotInstalled {
                program: "initdb".into(),
                searched: format!("PATH and {DEBIAN_ROOT}/*/bin"),
            })?;
        let find = |program: &str| {
            let beside = server_dir.join(program);
            if is_executable(&beside) {
                return Ok(beside);
            }
            on_path(program).ok_or_else(|| Error::NotInstalled {
                program: program.into(),
                searched: format!("{} and PATH", server_dir.display()),
            })
        };
        Ok(Binaries {
            initdb: find("initdb")?,
            postgres: find("postgres")?,
            pg_ctl: find("pg_ctl")?,
            psql: find("psql")?,
            pg_isready: find("pg_isready")?,
        })
    }
}

/// The first executable `program` in a `PATH` directory.
pub(crate) fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// `/usr/lib/postgresql/<newest major>/bin`, when it has `initdb`.
fn newest_debian_bin_dir() -> Option<PathBuf> {
    std::fs::read_dir(DEBIAN_ROOT)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            // Majors are "15", "16", or "9.6" before PostgreSQL 10: compare them as numbers.
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            is_executable(&bin.join("initdb")).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
