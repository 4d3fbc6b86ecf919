//! The `keygate` binary as an operator runs it against a control plane: with `--json` it prints
//! exactly one JSON object on stdout, and a refusal is one line on stderr.

use std::process::{Command, Output};

use serde_json::Value;

use super::Cluster;

/// The `keygate` command line, pointed at one control plane's admin endpoint.
pub struct Cli {
    /// The admin endpoint (`KEYGATE_ENDPOINT`); empty for commands that need none.
    pub endpoint: String,
    /// The admin token (`KEYGATE_TOKEN`).
    pub token: String,
}

impl Cli {
    /// The command line of the cluster's operator.
    pub fn admin(cluster: &Cluster) -> Self {
        Self {
            endpoint: format!("http://{}", cluster.grpc_addr),
            token: cluster.admin_token.clone(),
        }
    }

    /// A command line with no control plane, for commands that need none (`store copy`).
    pub fn offline() -> Self {
        Self {
            endpoint: String::new(),
            token: String::new(),
        }
    }

    /// Runs `keygate args…` (without logging) and returns how it ended.
    pub async fn run(&self, args: &[&str]) -> Output {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let (endpoint, token) = (self.endpoint.clone(), self.token.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_keygate"))
                .args(&args)
                .env("KEYGATE_ENDPOINT", &endpoint)
                .env("KEYGATE_TOKEN", &token)
                .env_remove("KEYGATE_LOG")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }

    /// Runs with `--json`, expects success and exactly one JSON object on stdout.
    pub async fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.run(&args).await;
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
        let value: Value = serde_json::from_str(&stdout).unwrap();
        assert!(value.is_object(), "{stdout}");
        value
    }

    /// Runs and expects a failure with one line on stderr; returns that line.
    pub async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        stderr
    }

    /// Runs and expects a failure with exit code `code`, one line on stderr and nothing on
    /// stdout; returns that line.
    pub async fn fails_with(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
        stderr
    }
}
