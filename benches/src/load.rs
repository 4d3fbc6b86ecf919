//! The load generator: HTTP/1.1 over raw per-connection hyper clients (no pool, no extra
//! task per request), in one of two modes.
//!
//! - **Open loop** (constant rate), as wrk2 does it: connection k of C owns the send slots
//!   `start + (k + j·C) / rate`. It sends each request at its slot, or at once if the previous
//!   response came back late, and measures latency from the slot (the *intended* send time), so
//!   a stall of the target is charged to every request it delayed (corrected for coordinated
//!   omission). Slots are waited for with the async runtime's timer, whose 1 ms granularity
//!   adds up to 1 ms (0.5 ms on average) to every latency alike; compare open-loop figures with
//!   the direct-upstream baseline of the same run. Pacing costs one timer per request and no
//!   cross-thread hand-off, so the generator stays cheap at the rates it offers.
//! - **Closed loop** (maximum throughput): each connection sends its next request as soon as the
//!   previous response is read.
//!
//! A warm-up precedes the measured window; only requests intended inside the window count. CPU
//! of watched processes (the proxy under test) and of the generator itself is read at the
//! window's edges.
//!
//! `https://` URLs go over TLS ([`crate::tls`]: rustls, TLS 1.3, ALPN `http/1.1`, no session
//! resumption). Connections are kept alive, or with [`LoadSpec::new_connection_per_request`]
//! each request gets a connection of its own (`Connection: close`), so over TLS every request
//! is a full handshake; its service time then includes the connect and the handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{AUTHORIZATION, CONNECTION, HOST};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::cpu::{self, CpuSample};
use crate::mix::KeyMix;
use crate::report::{self, CpuUse, LatencySummary, LoadReport, TlsReport};
use crate::tls::{self, TlsClient, TlsOptions};

/// Longest wait for one response before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an open-loop run may overrun its window to finish late requests.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Latencies above this are recorded as this (ns).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Constant rate, requests per second.
    Open { rate: f64 },
    /// Back to back on every connection.
    Closed,
}

/// One run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub label: String,
    /// `http://host:port/path`.
    pub url: String,
    pub pace: Pace,
    pub connections: usize,
    /// Measured window.
    pub duration: Duration,
    /// Load sent before the window, not measured.
    pub warmup: Duration,
    /// Closed loop only: stop after this many requests instead of after the window (no warm-up).
    pub requests: Option<u64>,
    /// Processes whose CPU time is read at the window's edges.
    pub cpu_pids: Vec<u32>,
    pub seed: u64,
    /// Required for `https://` URLs.
    pub tls: Option<TlsOptions>,
    /// One request per connection (`Connection: close`, a new connect for each request)
    /// instead of keep-alive.
    pub new_connection_per_request: bool,
    /// The request method (GET for proxied requests; POST for the verify endpoint).
    pub method: Method,
}

/// Where requests go.
struct Target {
    addr: SocketAddr,
    authority: HeaderValue,
    path: Uri,
    /// `https://`: the client that wraps each connection.
    tls: Option<TlsClient>,
}

impl Target {
    async fn resolve(url: &str, tls: Option<&TlsOptions>) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => anyhow::bail!("only http:// and https:// URLs are supported, got {url:?}"),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("{url:?} has no host"))?;
        let tls = match (secure, tls) {
            (false, None) => None,
            (false, Some(_)) => anyhow::bail!("TLS options given for the plain URL {url:?}"),
            (true, None) => anyhow::bail!("{url:?} needs a CA file (--tls-ca)"),
            (true, Some(options)) => Some(TlsClient::new(options, authority.host())?),
        };
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .with_context(|| format!("cannot resolve {}", authority.host()))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{} resolves to nothing", authority.host()))?;
        let path = uri
            .path_and_query()
            .map(|path| path.as_str())
            .unwrap_or("/")
            .parse()
            .context("invalid path")?;
        Ok(Self {
            addr,
            authority: HeaderValue::from_str(authority.as_str()).context("invalid host")?,
            path,
            tls,
        })
    }
}

/// What the connections record into.
struct Recorder {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    codes: HashMap<(u16, Option<String>), u64>,
    requests: u64,
}

impl Recorder {
    fn new() -> anyhow::Result<Self> {
        let histogram = || Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3);
        Ok(Self {
            latency: histogram()?,
            service: histogram()?,
            codes: HashMap::new(),
            requests: 0,
        })
    }
}

struct Shared {
    target: Target,
    method: Method,
    mix: Arc<KeyMix>,
    /// Open loop: time between slots, and the start of the first.
    pacing: Option<(Duration, Instant)>,
    connections: usize,
    /// Closed loop: requests still to send when counting.
    budget: AtomicU64,
    stop: AtomicBool,
    measure_from: Instant,
    measure_until: Instant,
    hard_stop: Instant,
    recorder: Mutex<Recorder>,
    errors: AtomicU64,
    /// Open loop: slots of the window never reached before the run ended.
    unsent: AtomicU64,
    seed: u64,
    fresh_connections: bool,
    /// Connections opened (successfully), warm-up included.
    connects: AtomicU64,
    /// TLS handshakes by kind: full, full after a HelloRetryRequest, resumed, unknown.
    handshakes: [AtomicU64; 4],
}

impl Shared {
    /// Records this connection's slots from `slot` (intended at `intended`) to the end of the
    /// window as never sent, each with the time it has waited.
    fn charge_unsent(&self, mut intended: Instant, interval: Duration, mut slot: u64) {
        let now = Instant::now();
        let mut recorder = self.lock();
        while intended < self.measure_until {
            if intended >= self.measure_from {
                self.unsent.fetch_add(1, Ordering::Relaxed);
                recorder
                    .latency
                    .saturating_record(nanos(now.saturating_duration_since(intended)));
            }
            slot += self.connections as u64;
            let Some(next) = self
                .pacing
                .map(|(_, first)| first + interval * u32::try_from(slot).unwrap_or(u32::MAX))
            else {
                return;
            };
            intended = next;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorder> {
        self.recorder
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs `spec` with credentials from `mix`; returns what it measured.
pub async fn run(spec: &LoadSpec, mix: Arc<KeyMix>) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(spec.connections > 0, "at least one connection is needed");
    if let Pace::Open { rate } = spec.pace {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "the rate must be positive, got {rate}"
        );
    }
    let target = Target::resolve(&spec.url, spec.tls.as_ref()).await?;
    // Fail fast on a target that is not there (or whose certificate does not verify).
    let described = probe(&target)
        .await
        .with_context(|| format!("cannot connect to {}", spec.url))?;

    let counting = spec.requests.is_some() && spec.pace == Pace::Closed;
    let warmup = if counting {
        Duration::ZERO
    } else {
        spec.warmup
    };
    let start = Instant::now();
    let measure_from = start + warmup;
    let measure_until = if counting {
        // Everything counts; the window ends when the budget is spent.
        start + Duration::from_secs(365 * 24 * 3600)
    } else {
        measure_from + spec.duration
    };
    let pacing = match spec.pace {
        Pace::Open { rate } => Some((Duration::from_secs_f64(1.0 / rate), start)),
        Pace::Closed => None,
    };
    let shared = Arc::new(Shared {
        target,
        method: spec.method.clone(),
        mix,
        pacing,
        connections: spec.connections,
        budget: AtomicU64::new(spec.requests.filter(|_| counting).unwrap_or(u64::MAX)),
        stop: AtomicBool::new(false),
        measure_from,
        measure_until,
        hard_stop: measure_until + DRAIN_GRACE,
        recorder: Mutex::new(Recorder::new()?),
        errors: AtomicU64::new(0),
        unsent: AtomicU64::new(0),
        seed: spec.seed,
        fresh_connections: spec.new_connection_per_request,
        connects: AtomicU64::new(0),
        handshakes: Default::default(),
    });

    // The generator's own CPU is read too (last), to show it was not the bottleneck.
    let mut watched = spec.cpu_pids.clone();
    watched.push(std::process::id());
    let cpu_watch = tokio::spawn(watch_cpu(
        watched.clone(),
        measure_from,
        (!counting).then_some(measure_until),
    ));
    let cores_watch = (!counting).then(|| tokio::spawn(watch_cores(measure_from, measure_until)));
    let workers: Vec<_> = (0..spec.connections)
        .map(|index| tokio::spawn(connection(Arc::clone(&shared), index)))
        .collect();
    if !counting && spec.pace == Pace::Closed {
        tokio::time::sleep_until(measure_until).await;
        shared.stop.store(true, Ordering::Relaxed);
    }
    for worker in workers {
        worker.await.context("a connection task panicked")?;
    }
    let finished = Instant::now();
    let cpu_before_after = if counting {
        let before = cpu_watch.await.context("CPU watcher panicked")??;
        let after = read_cpu(&watched)?;
        (before.0, after)
    } else {
        let (before, after) = cpu_watch.await.context("CPU watcher panicked")??;
        (before, after.unwrap_or_default())
    };

    let core_busy = match cores_watch {
        Some(watch) => watch.await.context("core watcher panicked")??,
        None => Vec::new(),
    };

    let recorder = shared.lock();
    let unsent = shared.unsent.load(Ordering::Relaxed);
    let window = if counting {
        finished.saturating_duration_since(start)
    } else {
        spec.duration
    };
    let duration_s = window.as_secs_f64();
    let requests = recorder.requests;
    let mut cpu: Vec<CpuUse> = watched
        .iter()
        .zip(cpu_before_after.0.iter().zip(&cpu_before_after.1))
        .map(|(&pid, (before, after))| {
            let (cpu_s, cpu_ticks_s) = after.seconds_since(before);
            CpuUse {
                pid,
                cpu_s,
                cpu_ticks_s,
                us_per_request: if requests > 0 {
                    cpu_s * 1e6 / requests as f64
                } else {
                    0.0
                },
                utilisation: cpu_s / duration_s.max(1e-9),
                system_share: after.system_share_since(before),
            }
        })
        .collect();
    let generator_utilisation = cpu.pop().map_or(0.0, |own| own.utilisation);
    let codes = recorder
        .codes
        .iter()
        .map(|((status, code), count)| {
            let name = match code {
                Some(code) => format!("{status} {code}"),
                None => status.to_string(),
            };
            (name, *count)
        })
        .collect();
    Ok(LoadReport {
        label: spec.label.clone(),
        url: spec.url.clone(),
        mode: match spec.pace {
            Pace::Open { .. } => "open",
            Pace::Closed => "closed",
        }
        .to_owned(),
        offered_rps: match spec.pace {
            Pace::Open { rate } => Some(rate),
            Pace::Closed => None,
        },
        connections: spec.connections,
        duration_s,
        requests,
        rps: requests as f64 / duration_s.max(1e-9),
        errors: shared.errors.load(Ordering::Relaxed),
        unsent,
        latency: LatencySummary::of(&recorder.latency),
        service: LatencySummary::of(&recorder.service),
        curve: report::curve(&recorder.latency),
        codes,
        cpu,
        generator_utilisation,
        core_busy,
        connects: shared.connects.load(Ordering::Relaxed),
        new_connection_per_request: spec.new_connection_per_request,
        tls: described.map(|description| {
            let count = |kind: usize| shared.handshakes[kind].load(Ordering::Relaxed);
            TlsReport {
                description,
                full: count(0),
                full_hello_retry: count(1),
                resumed: count(2),
            }
        }),
    })
}

type CpuSamples = Vec<CpuSample>;

/// Reads the watched processes' CPU at `from` and (if given) at `until`.
async fn watch_cpu(
    pids: Vec<u32>,
    from: Instant,
    until: Option<Instant>,
) -> anyhow::Result<(CpuSamples, Option<CpuSamples>)> {
    tokio::time::sleep_until(from).await;
    let before = read_cpu(&pids)?;
    let Some(until) = until else {
        return Ok((before, None));
    };
    tokio::time::sleep_until(until).await;
    Ok((before, Some(read_cpu(&pids)?)))
}

/// Share of each core that was busy (by anyone) between `from` and `until`.
async fn watch_cores(from: Instant, until: Instant) -> anyhow::Result<Vec<f64>> {
    tokio::time::sleep_until(from).await;
    let before = cpu::core_ticks().context("cannot read /proc/stat")?;
    tokio::time::sleep_until(until).await;
    let after = cpu::core_ticks().context("cannot read /proc/stat")?;
    Ok(cpu::core_busy_since(&before, &after))
}

fn read_cpu(pids: &[u32]) -> anyhow::Result<CpuSamples> {
    pids.iter()
        .map(|&pid| CpuSample::read(pid).with_context(|| format!("cannot read CPU of pid {pid}")))
        .collect()
}

/// One connection's loop: take the next request, send it, record the answer.
async fn connection(shared: Arc<Shared>, index: usize) {
    let mut rng = StdRng::seed_from_u64(shared.seed.wrapping_add(index as u64));
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    let mut slot = index as u64;
    loop {
        let intended = match shared.pacing {
            Some((interval, first)) => {
                let intended = first + interval * u32::try_from(slot).unwrap_or(u32::MAX);
                slot += shared.connections as u64;
                if intended >= shared.measure_until {
                    return;
                }
                if Instant::now() >= shared.hard_stop {
                    // The target could not keep up: charge this and every later slot of the
                    // window the time it has waited.
                    shared.charge_unsent(intended, interval, slot - shared.connections as u64);
                    return;
                }
                tokio::time::sleep_until(intended).await;
                intended
            }
            None => {
                if shared.stop.load(Ordering::Relaxed)
                    || shared
                        .budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                            left.checked_sub(1)
                        })
                        .is_err()
                {
                    return;
                }
                Instant::now()
            }
        };
        // One request per connection: the connect (and handshake) is part of its service time.
        let connect_started = if shared.fresh_connections {
            sender = None;
            Some(Instant::now())
        } else {
            None
        };
        let ready = match sender.as_mut() {
            Some(open) if !open.is_closed() => open,
            _ => match tokio::time::timeout(REQUEST_TIMEOUT, connect(&shared)).await {
                Ok(Ok(open)) => sender.insert(open),
                Ok(Err(_)) | Err(_) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    sender = None;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let (credential, _category) = shared.mix.pick(&mut rng);
        let mut request = Request::builder()
            .method(shared.method.clone())
            .uri(shared.target.path.clone())
            .header(HOST, shared.target.authority.clone())
            .body(Empty::<Bytes>::new())
            .unwrap_or_default();
        if let Some(credential) = credential {
            request
                .headers_mut()
                .insert(AUTHORIZATION, credential.clone());
        }
        if connect_started.is_some() {
            request
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let sent = connect_started.unwrap_or_else(Instant::now);
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, exchange(ready, request)).await;
        let done = Instant::now();
        let measured = intended >= shared.measure_from && intended < shared.measure_until;
        match outcome {
            Ok(Ok(answer)) => {
                if measured {
                    let mut recorder = shared.lock();
                    recorder
                        .latency
                        .saturating_record(nanos(done.saturating_duration_since(intended)));
                    recorder
                        .service
                        .saturating_record(nanos(done.saturating_duration_since(sent)));
                    recorder.requests += 1;
                    *recorder.codes.entry(answer).or_insert(0) += 1;
                }
            }
            Ok(Err(_)) | Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                sender = None;
            }
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos())
        .unwrap_or(u64::MAX)
        .min(MAX_LATENCY_NS)
}

/// Opens one connection of the run and counts it (and its handshake's kind).
async fn connect(shared: &Shared) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(shared.target.addr).await?;
    stream.set_nodelay(true)?;
    let sender = match &shared.target.tls {
        None => {
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            sender
        }
        Some(client) => {
            let stream = client
                .connector
                .connect(client.server_name.clone(), stream)
                .await?;
            let kind = match stream.get_ref().1.handshake_kind() {
                Some(rustls::HandshakeKind::Full) => 0,
                Some(rustls::HandshakeKind::FullWithHelloRetryRequest) => 1,
                Some(rustls::HandshakeKind::Resumed) => 2,
                None => 3,
            };
            shared.handshakes[kind].fetch_add(1, Ordering::Relaxed);
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            sender
        }
    };
    shared.connects.fetch_add(1, Ordering::Relaxed);
    Ok(sender)
}

/// Connects once before the run: an error if the target is not there; over TLS, what the
/// handshake negotiated.
async fn probe(target: &Target) -> anyhow::Result<Option<String>> {
    let stream = TcpStream::connect(target.addr).await?;
    let Some(client) = &target.tls else {
        return Ok(None);
    };
    let stream = client
        .connector
        .connect(client.server_name.clone(), stream)
        .await
        .context("TLS handshake failed")?;
    Ok(Some(tls::describe(stream.get_ref().1)))
}

/// Sends one request and reads the whole response: (status, keygate error code if any).
async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    request: Request<Empty<Bytes>>,
) -> anyhow::Result<(u16, Option<String>)> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    let code = (status >= 300).then(|| error_code(&body)).flatten();
    Ok((status, code))
}

/// The `code` of keygate's error body `{"error":{"code":"…",…},…}`; `None` for other bodies
/// (nginx's and HAProxy's HTML pages).
pub fn error_code(body: &[u8]) -> Option<String> {
    const MARKER: &[u8] = b"\"code\":\"";
    let start = body
        .windows(MARKER.len())
        .position(|window| window == MARKER)?
        + MARKER.len();
    let length = body[start..].iter().position(|&byte| byte == b'"')?;
    let code = std::str::from_utf8(&body[start..start + length]).ok()?;
    (!code.is_empty() && code.len() <= 40).then(|| code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keygate_error_codes_only() {
        let body = br#"{"error":{"code":"MALFORMED","message":"bad"},"requestId":"x"}"#;
        assert_eq!(error_code(body).as_deref(), Some("MALFORMED"));
        assert_eq!(error_code(b"<html>401 Authorization Required</html>"), None);
        assert_eq!(error_code(b"\"code\":\""), None);
    }
}
