//! The two servers' configuration files: `toml::from_str` into `ProxyConfig` and
//! `ControlPlaneConfig`, then `validate()`; and the binary's loader
//! (`keygate::config_file::load`), which reads the file and turns a TOML error into a message
//! naming the line and setting.
//!
//! Properties: never a panic; loading through the binary's loader agrees with `toml::from_str`;
//! a loader error never echoes a secret (the gateway and admin tokens of the input); `Debug`
//! of a parsed config never shows its tokens.

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use keygate::config_file;
use keygate_control_plane::ControlPlaneConfig;
use keygate_proxy::ProxyConfig;
use libfuzzer_sys::fuzz_target;

/// One scratch file per fuzzing process.
static FILE: LazyLock<PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("keygate-fuzz-config-{}.toml", std::process::id()))
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let proxy = toml::from_str::<ProxyConfig>(text);
    if let Ok(config) = &proxy {
        let _ = config.validate();
        let debug = format!("{config:?}");
        let token = config.gateway_token.expose();
        if token.len() >= 4 && !"<unset><redacted>".contains(token) {
            assert!(!debug.contains(token), "Debug shows the gateway token");
        }
    }
    let control_plane = toml::from_str::<ControlPlaneConfig>(text);
    if let Ok(config) = &control_plane {
        let _ = config.validate();
        let _ = config.tls_files();
        let _ = config.relying_party_id();
        let _ = config.relying_party_origin(([127, 0, 0, 1], 7080).into());
        let debug = format!("{config:?}");
        for token in [&config.admin_token, &config.gateway_token] {
            // Long enough not to appear in the rest of the Debug output by chance.
            if token.len() >= 16 {
                assert!(!debug.contains(token.as_str()), "Debug shows a token");
            }
        }
    }

    // The binary's loader on the same text, written to a file as an operator would.
    if std::fs::write(&*FILE, text).is_err() {
        return;
    }
    let proxy_loaded = config_file::load::<ProxyConfig>(Some(&FILE));
    assert_eq!(
        proxy_loaded.is_ok(),
        proxy.is_ok(),
        "loader and toml disagree (proxy)"
    );
    let control_plane_loaded = config_file::load::<ControlPlaneConfig>(Some(&FILE));
    assert_eq!(
        control_plane_loaded.is_ok(),
        control_plane.is_ok(),
        "loader and toml disagree (control plane)"
    );
    let messages = [
        proxy_loaded.err().map(|failure| failure.to_string()),
        control_plane_loaded
            .err()
            .map(|failure| failure.to_string()),
    ];
    // A quoted token value of 16+ characters must not come back in an error message.
    let secrets = quoted_values(text, &["admin_token", "gateway_token"]);
    for message in messages.iter().flatten() {
        for secret in secrets.iter().filter(|secret| secret.len() >= 16) {
            assert!(
                !message.contains(secret.as_str()),
                "error message echoes a token: {message}"
            );
        }
    }
});

/// The basic-string values of `name = "…"` lines, for the names given.
fn quoted_values(text: &str, names: &[&str]) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            if !names.contains(&name.trim()) {
                return None;
            }
            let value = value.trim().strip_prefix('"')?;
            let end = value.find('"')?;
            Some(value[..end].to_owned())
        })
        .collect()
}
