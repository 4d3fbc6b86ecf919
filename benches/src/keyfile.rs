//! Key files: one plaintext key per line. The synthetic control plane writes them, the load
//! generator reads them, and the side-by-side script turns them into nginx and HAProxy maps.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::Context;

/// File names inside a key directory.
pub const VALID: &str = "valid.txt";
pub const DISABLED: &str = "disabled.txt";
pub const EXPIRED: &str = "expired.txt";
pub const UNKNOWN: &str = "unknown.txt";
pub const MALFORMED: &str = "malformed.txt";

/// Reads every non-empty line of `path`.
pub fn read(path: &Path) -> anyhow::Result<Vec<String>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut keys = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let line = line.trim();
        if !line.is_empty() {
            keys.push(line.to_owned());
        }
    }
    Ok(keys)
}

/// Writes `keys`, one per line.
pub fn write<'a>(path: &Path, keys: impl IntoIterator<Item = &'a str>) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for key in keys {
        writeln!(out, "{key}").with_context(|| format!("cannot write {}", path.display()))?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}
