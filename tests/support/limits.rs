//! Limits end to end (DESIGN.md, "Limits and permissions per key"): a deployment of real
//! `keygate` processes — one control plane (or several replicas sharing a throwaway
//! PostgreSQL), N gateways whose config adds a route that needs a
//! permission and one whose requests cost 5, the echo upstream — and load that records every
//! answer: which gateway gave it, when the request left and when the answer came back (Unix
//! ms, the clock the gateways' rate-limit windows are aligned to), its status, verdict code and
//! rate-limit headers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate_proto::time::now_unix_ms;
use keygate_test_postgres::TestPostgres;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::DEADLINE;
use super::processes::{
    CliOutput, ControlPlaneProcess, GatewayProcess, Process, Tokens, eventually_within,
    keygate_cli, sqlite_url, start_echo_upstream,
};

/// A path on the `/` route: no permissions, cost 1.
pub const PLAIN: &str = "/plain";
/// A path on the route that requires the permission [`ORDERS_READ`].
pub const ORDERS: &str = "/orders/1";
pub const ORDERS_READ: &str = "orders.read";
/// A path on the route whose requests cost [`COST`].
pub const EXPENSIVE: &str = "/expensive/1";
pub const COST: u64 = 5;

/// A key as `keys create` issued it.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub id: String,
    /// The plaintext.
    pub key: String,
}

/// A control plane, gateways `gw-0…` and the echo upstream, as processes killed on drop.
pub struct LimitsDeployment {
    pub tokens: Tokens,
    /// `None` once killed.
    pub control_plane: Option<ControlPlaneProcess>,
    /// The control plane's gRPC URL (kept after it is killed, for the CLI's error paths).
    pub grpc: String,
    pub http: String,
    pub gateways: Vec<GatewayProcess>,
    /// The replicas after the first, when several share PostgreSQL.
    _replicas: Vec<ControlPlaneProcess>,
    _upstream: Process,
    _data: tempfile::TempDir,
    _config: tempfile::TempDir,
    /// Last, so it stops after the control planes that use it.
    _postgres: Option<TestPostgres>,
}

impl LimitsDeployment {
    /// Starts everything; returns once every gateway is ready.
    pub async fn start(gateways: usize) -> Self {
        Self::start_with(gateways, 1).await
    }

    /// `replicas` control planes sharing one throwaway PostgreSQL (one on SQLite when
    /// `replicas` is 1); gateway `i` syncs from replica `i mod replicas`. The CLI speaks to
    /// the first.
    pub async fn start_with(gateways: usize, replicas: usize) -> Self {
        let data = tempfile::tempdir().unwrap();
        let tokens = Tokens::random();
        let postgres = if replicas > 1 {
            let postgres = tokio::task::spawn_blocking(TestPostgres::start)
                .await
                .unwrap()
                .expect("PostgreSQL starts (tests/postgres/setup.sh installs it)");
            Some(postgres)
        } else {
            None
        };
        let database = match &postgres {
            Some(postgres) => postgres.url(),
            None => sqlite_url(data.path()),
        };
        let mut control_planes = Vec::with_capacity(replicas);
        for index in 0..replicas.max(1) {
            let name = if replicas > 1 {
                format!("cp-{index}")
            } else {
                "cp".to_owned()
            };
            control_planes
                .push(ControlPlaneProcess::start(&name, &database, &tokens, "127.0.0.1:0").await);
        }
        let grpcs: Vec<String> = control_planes.iter().map(|cp| cp.grpc.clone()).collect();
        let mut control_planes = control_planes.into_iter();
        let control_plane = control_planes.next().expect("at least one control plane");
        let (upstream_process, upstream) = start_echo_upstream().await;
        let config = tempfile::tempdir().unwrap();
        let file = config.path().join("gateway.toml");
        std::fs::write(
            &file,
            format!(
                "[[route]]\npath_prefix = \"/orders/\"\nupstream = \"{upstream}\"\n\
                 permissions = [\"{ORDERS_READ}\"]\n\n\
                 [[route]]\npath_prefix = \"/expensive/\"\nupstream = \"{upstream}\"\n\
                 cost = {COST}\n"
            ),
        )
        .unwrap();
        let mut started = Vec::with_capacity(gateways);
        for index in 0..gateways {
            started.push(
                GatewayProcess::start(
                    &format!("gw-{index}"),
                    &upstream,
                    &[&grpcs[index % grpcs.len()]],
                    &tokens,
                    &["--config", file.to_str().unwrap()],
                )
                .await,
            );
        }
        Self {
            tokens,
            grpc: control_plane.grpc.clone(),
            http: control_plane.http.clone(),
            control_plane: Some(control_plane),
            gateways: started,
            _replicas: control_planes.collect(),
            _upstream: upstream_process,
            _data: data,
            _config: config,
            _postgres: postgres,
        }
    }

    /// `keygate args… --json` as the operator.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        keygate_cli(&self.grpc, &self.tokens, args).await
    }

    /// `keygate args… --json`, which must succeed; its JSON.
    pub async fn cli_ok(&self, args: &[&str]) -> Value {
        let out = self.cli(args).await;
        assert_eq!(out.code, 0, "keygate {args:?}: {}", out.stderr);
        out.json
    }

    /// `keygate keys create --owner OWNER flags…`, then waits until every gateway has it.
    pub async fn create_key(&self, owner: &str, flags: &[&str]) -> CreatedKey {
        let mut args = vec!["keys", "create", "--owner", owner];
        args.extend(flags);
        let created = self.cli_ok(&args).await;
        let key = CreatedKey {
            id: created["keyId"].as_str().expect("keyId").to_owned(),
            key: created["key"].as_str().expect("key").to_owned(),
        };
        self.wait_applied(created["revision"].as_u64().expect("revision"))
            .await;
        key
    }

    /// Waits until every gateway has applied `revision` (no request is spent on finding out).
    pub async fn wait_applied(&self, revision: u64) {
        for gateway in &self.gateways {
            eventually_within(
                DEADLINE,
                &format!("{} applied r{revision}", gateway.id),
                || async {
                    gateway.readiness().await.1["appliedRevision"]
                        .as_u64()
                        .is_some_and(|applied| applied >= revision)
                },
            )
            .await;
        }
    }

    /// The URL of `path` at every gateway, in gateway order.
    pub fn urls(&self, path: &str) -> Vec<String> {
        self.gateways.iter().map(|g| g.url(path)).collect()
    }

    /// SIGKILL to the control plane: no shutdown path runs, its streams are reset.
    pub async fn kill_control_plane(&mut self) {
        self.control_plane
            .take()
            .expect("control plane running")
            .process
            .kill()
            .await;
    }
}

/// The client the load is sent with: keep-alive connections, `TCP_NODELAY`.
pub type LoadClient = Client<HttpConnector, Empty<Bytes>>;

pub fn load_client() -> LoadClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// `"NAME";q=LIMIT;w=WINDOW` (the `RateLimit-Policy` header) or `"NAME";r=REMAINING;t=RESET`
/// (the `RateLimit` header), parsed strictly: a quoted name, then `;key=integer` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitField {
    pub name: String,
    pub params: Vec<(String, u64)>,
}

impl LimitField {
    /// Parses one header value of draft-ietf-httpapi-ratelimit-headers with one item; `None`
    /// when it is not that syntax.
    pub fn parse(value: &str) -> Option<Self> {
        let rest = value.trim().strip_prefix('"')?;
        let (name, rest) = rest.split_once('"')?;
        if name.is_empty() || name.contains(['\\', ',']) {
            return None;
        }
        let mut params = Vec::new();
        for param in rest.strip_prefix(';')?.split(';') {
            let (key, number) = param.split_once('=')?;
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase()) {
                return None;
            }
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            params.push((key.to_owned(), number.parse().ok()?));
        }
        Some(Self {
            name: name.to_owned(),
            params,
        })
    }

    /// The integer parameter `key`.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// One answer of a gateway to a request of the load.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Index of the gateway in the deployment.
    pub gateway: usize,
    /// Which of the load's keys was sent.
    pub key: usize,
    /// Unix ms when the request was about to be sent and when the answer's head arrived.
    pub sent_ms: i64,
    pub answered_ms: i64,
    pub status: u16,
    /// `error.code` of a refusal; "VALID" for a 200.
    pub code: String,
    pub retry_after: Option<String>,
    pub policy: Option<String>,
    pub ratelimit: Option<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.status == 200
    }

    /// The window of `window_ms` this request was admitted in, when its send and its answer
    /// fall in the same one (the admission happened between the two); `None` otherwise.
    pub fn window(&self, window_ms: i64) -> Option<i64> {
        let start = self.sent_ms - self.sent_ms.rem_euclid(window_ms);
        (self.answered_ms - self.answered_ms.rem_euclid(window_ms) == start).then_some(start)
    }
}

/// GET `url` with `Authorization: Bearer <key>`; the answer as an [`Outcome`].
pub async fn request(
    client: &LoadClient,
    gateway: usize,
    key: usize,
    url: &str,
    credential: &str,
) -> Outcome {
    let request = http::Request::get(url)
        .header("authorization", format!("Bearer {credential}"))
        .body(Empty::new())
        .unwrap();
    let sent_ms = now_unix_ms();
    let response = tokio::time::timeout(DEADLINE, client.request(request))
        .await
        .unwrap_or_else(|_| panic!("{url}: no answer within {DEADLINE:?}"))
        .unwrap_or_else(|error| panic!("{url}: {error}"));
    let answered_ms = now_unix_ms();
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("an ASCII header").to_owned())
    };
    let (retry_after, policy, ratelimit) = (
        header("retry-after"),
        header("ratelimit-policy"),
        header("ratelimit"),
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let code = if status == 200 {
        "VALID".to_owned()
    } else {
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("not a keygate refusal: {}", String::from_utf8_lossy(&body)))
    };
    Outcome {
        gateway,
        key,
        sent_ms,
        answered_ms,
        status,
        code,
        retry_after,
        policy,
        ratelimit,
    }
}

/// Load over every gateway, recording every answer until stopped.
pub struct Load {
    stop: watch::Sender<bool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: JoinSet<()>,
}

impl Load {
    /// Closed loop: `connections` senders per gateway, each sending the next request when the
    /// last one is answered, cycling through `keys` (sender i starts at key i).
    pub fn closed(urls: &[String], keys: &[String], connections: usize) -> Self {
        Self::spawn(urls, keys, connections, None)
    }

    /// Open loop: `rate` requests per second at each gateway, from `senders` senders per
    /// gateway spread evenly; a sender whose answer is late sends late, never more.
    pub fn paced(urls: &[String], keys: &[String], rate: f64, senders: usize) -> Self {
        let period = Duration::from_secs_f64(senders as f64 / rate);
        Self::spawn(urls, keys, senders, Some(period))
    }

    fn spawn(urls: &[String], keys: &[String], senders: usize, period: Option<Duration>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let keys: Arc<[String]> = keys.into();
        let mut tasks = JoinSet::new();
        for (gateway, url) in urls.iter().enumerate() {
            for sender in 0..senders {
                let (url, keys, outcomes) = (url.clone(), Arc::clone(&keys), Arc::clone(&outcomes));
                let mut stopped = stopped.clone();
                tasks.spawn(async move {
                    let client = load_client();
                    let mut tick = period.map(|period| {
                        let offset = period.mul_f64(sender as f64 / senders as f64);
                        let mut tick =
                            tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        tick
                    });
                    let mut next_key = sender;
                    loop {
                        if let Some(tick) = &mut tick {
                            tokio::select! {
                                _ = tick.tick() => {}
                                _ = stopped.wait_for(|s| *s) => return,
                            }
                        }
                        if *stopped.borrow() {
                            return;
                        }
                        let key = next_key % keys.len();
                        next_key += 1;
                        let outcome = request(&client, gateway, key, &url, &keys[key]).await;
                        outcomes.lock().unwrap().push(outcome);
                    }
                });
            }
        }
        Self {
            stop,
            outcomes,
            tasks,
        }
    }

    /// Every answer so far.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// Stops the senders, waits for their last answers; every answer.
    pub async fn stop(mut self) -> Vec<Outcome> {
        let _ = self.stop.send(true);
        while let Some(task) = self.tasks.join_next().await {
            task.expect("a sender panicked");
        }
        Arc::try_unwrap(self.outcomes)
            .expect("senders done")
            .into_inner()
            .unwrap()
    }

    /// Runs for `duration` (the length of the experiment, not a wait for anything), then
    /// stops; every answer.
    pub async fn run_for(self, duration: Duration) -> Vec<Outcome> {
        tokio::time::sleep(duration).await;
        self.stop().await
    }
}

/// Answers that are not 200 nor one of `allowed` codes, described (at most 5).
pub fn unexpected(outcomes: &[Outcome], allowed: &[&str]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| !o.passed() && !allowed.contains(&o.code.as_str()))
        .take(5)
        .map(|o| format!("gw-{}: {} {}", o.gateway, o.status, o.code))
        .collect()
}
