//! Who runs PostgreSQL's programs. `initdb`, `pg_ctl` and `postgres` refuse to run as root, so a
//! root process (CI runs as root) runs all of them as the `postgres` system user through
//! `setpriv` (or `runuser`), in directories handed over to that user; any other user runs them
//! directly.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;
use crate::binaries::on_path;

/// The system user the server runs as when the tests run as root.
const SYSTEM_USER: &str = "postgres";

/// The user PostgreSQL's programs run as.
#[derive(Debug)]
pub(crate) enum ServerUser {
    /// Not root: every program runs as this process's user, `uid`.
    Current { uid: u32 },
    /// Root: every program runs as the `postgres` system user.
    System { uid: u32, gid: u32, switch: Switch },
}

/// The util-linux program that drops root for one command.
#[derive(Debug)]
pub(crate) enum Switch {
    /// `setpriv --reuid --regid --clear-groups`: a plain exec, no PAM session.
    Setpriv(PathBuf),
    /// `runuser -u`, where setpriv is missing.
    Runuser(PathBuf),
}

impl ServerUser {
    /// The current user, or the `postgres` system user when running as root.
    pub(crate) fn detect() -> Result<ServerUser, Error> {
        // std has no geteuid and the workspace forbids unsafe code: ask `id`, once per process.
        let euid = id(&["-u"]).map_err(|detail| Error::Spawn {
            program: "id -u".into(),
            reason: detail,
        })?;
        if euid != 0 {
            return Ok(ServerUser::Current { uid: euid });
        }
        let uid = id(&["-u", SYSTEM_USER]).map_err(|detail| Error::NoServerUser { detail })?;
        let gid = id(&["-g", SYSTEM_USER]).map_err(|detail| Error::NoServerUser { detail })?;
        let switch = if let Some(setpriv) = on_path("setpriv") {
            Switch::Setpriv(setpriv)
        } else if let Some(runuser) = on_path("runuser") {
            Switch::Runuser(runuser)
        } else {
            return Err(Error::Spawn {
                program: "setpriv".into(),
                reason: "neither setpriv nor runuser (util-linux) is on PATH, and PostgreSQL's \
                         programs cannot run as root"
                    .into(),
            });
        };
        Ok(ServerUser::System { uid, gid, switch })
    }

    /// A command that runs `program` as this user, with stdin closed, libpq's `PG*` variables
    /// removed (a developer's PGHOST or PGDATABASE must not redirect a test) and messages in
    /// English (the log is searched for "Address already in use").
    pub(crate) fn command(&self, program: &Path) -> Command {
        let mut command = match self {
            ServerUser::Current { .. } => Command::new(program),
            ServerUser::System {
                uid,
                gid,
                switch: Switch::Setpriv(setpriv),
            } => {
                let mut command = Command::new(setpriv);
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(program);
                command
            }
            ServerUser::System {
                switch: Switch::Runuser(runuser),
                ..
            } => {
                let mut command = Command::new(runuser);
                command.args(["-u", SYSTEM_USER, "--"]).arg(program);
                command
            }
        };
        for (key, _) in std::env::vars_os() {
            if key.as_bytes().starts_with(b"PG") {
                command.env_remove(key);
            }
        }
        command.env("LC_ALL", "C").stdin(Stdio::null());
        command
    }

    /// The user's id: the owner of the directories it was handed.
    pub(crate) fn uid(&self) -> u32 {
        match self {
            ServerUser::Current { uid } | ServerUser::System { uid, .. } => *uid,
        }
    }

    /// Gives the directory `path` to this user, so the server can write there (a no-op when
    /// not root: the directory is already ours).
    pub(crate) fn hand_over(&self, path: &Path) -> Result<(), Error> {
        match self {
            ServerUser::Current { .. } => Ok(()),
            ServerUser::System { uid, gid, .. } => {
                std::os::unix::fs::chown(path, Some(*uid), Some(*gid)).map_err(Error::io(format!(
                    "give {} to the postgres user",
                    path.display()
                )))
            }
        }
    }
}

/// `id ARGS`, parsed as a number; the error is what `id` said.
fn id(args: &[&str]) -> Result<u32, String> {
    let output = Command::new("id")
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("`id`: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "`id {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|error| format!("`id {}` printed no number: {error}", args.join(" ")))
}
