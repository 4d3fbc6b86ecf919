//! The crate's temporary directories: where they go, their names, and removing the ones that
//! processes which are gone left behind.
//!
//! Copying the template means creating about 1,300 files, which on an ext4 root took 0.35 s of
//! kernel time per server where tmpfs took 0.03 s; so servers live in `/dev/shm` when it is a
//! tmpfs with room to spare (at least 1 GiB free: a container's 64 MB `/dev/shm` does not
//! qualify), else in the system temp dir. An explicit `TMPDIR` always wins. The template stays
//! in the system temp dir: it outlives its process (statics are never dropped), and a leftover
//! there costs disk, not memory.
//!
//! Every name carries the process id (`keygate-pg-<pid>-*`, `keygate-pg-template-<pid>-*`). A
//! process whose tests were interrupted (Ctrl-C, a CI timeout) cannot delete its directories,
//! nor can any process delete its template, so the next process that makes a template removes
//! the directories whose process is gone, when they belong to the server user and no server
//! runs in them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use tempfile::TempDir;

use crate::Error;

const PREFIX: &str = "keygate-pg-";
const TEMPLATE_PREFIX: &str = "template-";

const SHM: &str = "/dev/shm";

/// The free space `/dev/shm` needs to be used, in KiB: room for dozens of 35 MB servers.
const SHM_MIN_FREE_KIB: u64 = 1 << 20;

/// A new directory for the process's template, in the system temp dir.
pub(crate) fn template_dir() -> Result<TempDir, Error> {
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{TEMPLATE_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(Error::io("create the template's temporary directory"))
}

/// A new directory for one server, in [`server_base`].
pub(crate) fn server_dir() -> Result<TempDir, Error> {
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir_in(server_base())
        .map_err(Error::io("create a server's temporary directory"))
}

/// Removes the directories of processes that are gone, owned by `owner` (the server user's
/// uid), with no server running in them. Only on Linux, where `/proc` says which processes
/// exist; failures are ignored (this is housekeeping).
pub(crate) fn remove_leftovers(owner: u32) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let mut bases = vec![std::env::temp_dir(), server_base().to_path_buf()];
    bases.dedup();
    for base in bases {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Some(pid) = entry.file_name().to_str().and_then(owning_pid) else {
                continue;
            };
            let path = entry.path();
            if is_leftover(&path, pid, owner) {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

/// The process id in one of this crate's directory names.
fn owning_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let rest = rest.strip_prefix(TEMPLATE_PREFIX).unwrap_or(rest);
    rest.split_once('-')?.0.parse().ok()
}

fn is_leftover(path: &Path, pid: u32, owner: u32) -> bool {
    use std::os::unix::fs::MetadataExt;

    let owned =
        std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir() && meta.uid() == owner);
    // The first line of postmaster.pid is the server's pid; the file stays after a crash.
    let server_runs =
        std::fs::read_to_string(path.join("data/postmaster.pid")).is_ok_and(|pid_file| {
            pid_file
                .lines()
                .next()
                .and_then(|line| line.trim().parse().ok())
                .is_some_and(process_exists)
        });
    owned && pid != std::process::id() && !process_exists(pid) && !server_runs
}

fn process_exists(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The directory the servers' directories are made in, chosen once per process.
fn server_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        if std::env::var_os("TMPDIR").is_none() && is_roomy_tmpfs(SHM) {
            PathBuf::from(SHM)
        } else {
            std::env::temp_dir()
        }
    })
}

fn is_roomy_tmpfs(path: &str) -> bool {
    let is_tmpfs = std::fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            fields.next() == Some(path) && fields.next() == Some("tmpfs")
        })
    });
    is_tmpfs && free_kib(path).is_some_and(|free| free >= SHM_MIN_FREE_KIB)
}

/// Free KiB on `path`'s file system (`df -Pk`: std has no statvfs, and the workspace forbids
/// the unsafe code a libc call needs).
fn free_kib(path: &str) -> Option<u64> {
    let output = Command::new("df")
        .args(["-P", "-k", path])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "Filesystem 1024-blocks Used Available Capacity Mounted on", then one line per file system.
    text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_owning_process() {
        assert_eq!(owning_pid("keygate-pg-1234-AbCdEf"), Some(1234));
        assert_eq!(owning_pid("keygate-pg-template-99-x1y2z3"), Some(99));
        assert_eq!(owning_pid("keygate-pg-template-AbCdEf"), None);
        assert_eq!(owning_pid("keygate-pgstore-dev"), None);
        assert_eq!(owning_pid("other-1234-x"), None);
    }

    #[test]
    fn removes_only_what_a_gone_process_left() {
        let base = tempfile::tempdir().expect("base");
        let own_uid =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(base.path()).expect("metadata"));
        // A pid above the kernel's limit (2^22) belongs to no process.
        let gone = base.path().join("keygate-pg-4999999-gone");
        let mine = base
            .path()
            .join(format!("keygate-pg-{}-mine", std::process::id()));
        for dir in [&gone, &mine] {
            std::fs::create_dir_all(dir.join("data")).expect("create");
        }
        assert!(is_leftover(&gone, 4_999_999, own_uid));
        assert!(
            !is_leftover(&gone, 4_999_999, own_uid + 1),
            "someone else's"
        );
        assert!(
            !is_leftover(&mine, std::process::id(), own_uid),
            "this process's"
        );
        // A server still running there (this process stands in for it).
        std::fs::write(
            gone.join("data/postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .expect("write");
        assert!(
            !is_leftover(&gone, 4_999_999, own_uid),
            "a server runs there"
        );
    }
}
