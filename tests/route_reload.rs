//! Route reload on SIGHUP (DESIGN.md, "Plugging into other gateways"), with the real `keygate`
//! binary: while clients send a steady stream of requests over keep-alive connections, the
//! config file is rewritten and the gateway signalled. No request fails; a new route to a
//! second upstream is served; a changed restart-only setting is named as ignored; a broken file
//! keeps the old routes, is counted and named in the log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::processes::{
    ControlPlaneProcess, GatewayProcess, Tokens, eventually_within, sqlite_url, start_echo_upstream,
};
use support::{DEADLINE, send};
use tokio::task::JoinHandle;

/// Client tasks sending requests one after another, each over its own keep-alive connections.
const CLIENTS: usize = 4;
const OK: &str = "keygate_config_reload_total{result=\"ok\"}";
const ERROR: &str = "keygate_config_reload_total{result=\"error\"}";

/// A config file with `routes` (path prefix, upstream URL), all without authentication, and
/// any `extra` top-level settings.
fn write_config(path: &Path, extra: &str, routes: &[(&str, &str)]) {
    let mut text = format!("{extra}\n");
    for (prefix, upstream) in routes {
        text.push_str(&format!(
            "[[route]]\npath_prefix = \"{prefix}\"\nupstream = \"{upstream}\"\nauth = \"none\"\n\n"
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// Requests sent by the client tasks: answered 200, and every other outcome described.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..CLIENTS)
            .map(|_| {
                let (url, stop) = (url.clone(), Arc::clone(&stop));
                let (answered, failures) = (Arc::clone(&answered), Arc::clone(&failures));
                tokio::spawn(async move {
                    // The pooled client keeps its connection open between requests.
                    let client: Client<HttpConnector, Empty<Bytes>> =
                        Client::builder(TokioExecutor::new()).build_http();
                    while !stop.load(Ordering::Relaxed) {
                        let request = http::Request::get(&url).body(Empty::new()).unwrap();
                        let outcome = tokio::time::timeout(DEADLINE, async {
                            let response = client
                                .request(request)
                                .await
                                .map_err(|e| format!("request failed: {e:?}"))?;
                            let status = response.status();
                            let body = response
                                .into_body()
                                .collect()
                                .await
                                .map_err(|e| format!("body failed: {e}"))?;
                            if status == http::StatusCode::OK {
                                Ok(())
                            } else {
                                Err(format!("{status}: {:?}", body.to_bytes()))
                            }
                        })
                        .await
                        .unwrap_or_else(|_| Err("no answer in time".to_owned()));
                        match outcome {
                            Ok(()) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(failure) => failures.lock().unwrap().push(failure),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            answered,
            failures,
            tasks,
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits until at least `more` further requests have been answered.
    async fn progresses(&self, more: u64) {
        let target = self.answered() + more;
        eventually_within(DEADLINE, "the load to progress", || async {
            self.answered() >= target
        })
        .await;
    }

    /// Stops the clients; returns how many requests were answered and how the others failed.
    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (self.answered.load(Ordering::Relaxed), failures)
    }
}

/// The upstream (`host:port`) that answered a request for `url`, from the `Host` the echo
/// upstream received; the status when the gateway refused it.
async fn served_by(url: &str) -> Result<String, u16> {
    let reply = send("GET", url, &[], b"").await;
    if reply.status != 200 {
        return Err(reply.status);
    }
    Ok(reply.json()["headers"]["host"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_routes_under_load_and_a_bad_file_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::random();
    let control_plane =
        ControlPlaneProcess::start("cp", &sqlite_url(dir.path()), &tokens, "127.0.0.1:0").await;
    let (_first, first_url) = start_echo_upstream().await;
    let (_second, second_url) = start_echo_upstream().await;
    let first = first_url.trim_start_matches("http://").to_owned();
    let second = second_url.trim_start_matches("http://").to_owned();

    let config = dir.path().join("proxy.toml");
    write_config(&config, "", &[("/api", &first_url)]);
    let config_arg = config.to_str().unwrap();
    // `--upstream` adds the route `/` (which needs a key); it is laid over the file again on
    // every reload.
    let gateway = GatewayProcess::start(
        "reloading",
        &first_url,
        &[&control_plane.grpc],
        &tokens,
        &["--config", config_arg],
    )
    .await;
    assert_eq!(gateway.metric(OK).await, Some(0.0));
    assert_eq!(served_by(&gateway.url("/new/x")).await, Err(401));
    assert_eq!(served_by(&gateway.url("/api/x")).await, Ok(first.clone()));

    let load = Load::start(gateway.url("/api/steady"));
    load.progresses(20).await;

    // A new route to the second upstream, and a setting that only a restart changes.
    write_config(
        &config,
        "max_connections = 77",
        &[("/api", &first_url), ("/new", &second_url)],
    );
    gateway.process.signal("HUP").await;
    eventually_within(DEADLINE, "the new route to be served", || async {
        served_by(&gateway.url("/new/x")).await == Ok(second.clone())
    })
    .await;
    assert_eq!(served_by(&gateway.url("/api/x")).await, Ok(first.clone()));
    assert_eq!(served_by(&gateway.url("/other")).await, Err(401));
    assert_eq!(gateway.metric(OK).await, Some(1.0));
    assert_eq!(gateway.metric(ERROR).await, Some(0.0));
    let log = gateway.process.log_text();
    assert!(
        log.lines()
            .any(|line| line.contains("ignored until restart") && line.contains("max_connections")),
        "{log}"
    );
    load.progresses(20).await;

    // Broken files: routes that fail validation, then text that is not TOML. The routes of
    // the last good file stay.
    write_config(
        &config,
        "",
        &[("/api", &first_url), ("no-leading-slash", &second_url)],
    );
    gateway.process.signal("HUP").await;
    eventually_within(DEADLINE, "the invalid routes to be counted", || async {
        gateway.metric(ERROR).await == Some(1.0)
    })
    .await;
    std::fs::write(&config, "[[route]\npath_prefix = \"/api\"\n").unwrap();
    gateway.process.signal("HUP").await;
    eventually_within(DEADLINE, "the invalid TOML to be counted", || async {
        gateway.metric(ERROR).await == Some(2.0)
    })
    .await;
    assert_eq!(gateway.metric(OK).await, Some(1.0));
    assert_eq!(served_by(&gateway.url("/new/x")).await, Ok(second));
    assert_eq!(served_by(&gateway.url("/api/x")).await, Ok(first));
    let log = gateway.process.log_text();
    let failed: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("config reload failed"))
        .collect();
    assert_eq!(failed.len(), 2, "{log}");
    assert!(failed[0].contains("no-leading-slash"), "{}", failed[0]);
    assert!(failed[1].contains(config_arg), "{}", failed[1]);
    load.progresses(20).await;

    let (answered, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(answered >= 60, "{answered}");
    gateway.process.terminate().await;
}
