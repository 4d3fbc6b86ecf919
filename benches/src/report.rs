//! What one load run measured, as text for people and JSON for the side-by-side summary and
//! the chart. Latencies are in microseconds.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Percentiles drawn as the latency curve (100 = max).
pub const CURVE: [f64; 11] = [
    0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
];

/// Result of one run against one URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    /// Free text naming what was measured (e.g. `nginx`).
    pub label: String,
    pub url: String,
    /// `open` (constant rate) or `closed` (back to back).
    pub mode: String,
    /// Requests per second offered (open loop only).
    pub offered_rps: Option<f64>,
    pub connections: usize,
    /// Length of the measured window, seconds (after the warm-up).
    pub duration_s: f64,
    /// Responses received for requests of the measured window.
    pub requests: u64,
    /// `requests / duration_s`.
    pub rps: f64,
    /// Requests that failed below HTTP (connect, reset, timeout).
    pub errors: u64,
    /// Open loop: requests of the window never sent before the run ended (the target could not
    /// keep up); counted in `latency` with the time they had waited.
    pub unsent: u64,
    /// Open loop: from the *intended* send time (corrected for coordinated omission); closed
    /// loop: from the actual send time.
    pub latency: LatencySummary,
    /// From the actual send time (what a closed-loop tool would report).
    pub service: LatencySummary,
    /// `[percentile, µs]` of `latency`, at [`CURVE`].
    pub curve: Vec<[f64; 2]>,
    /// Responses by `"STATUS"` or `"STATUS CODE"` (keygate's JSON error code).
    pub codes: BTreeMap<String, u64>,
    /// CPU used by the watched processes during the measured window.
    pub cpu: Vec<CpuUse>,
    /// Cores the load generator itself kept busy during the window.
    #[serde(default)]
    pub generator_utilisation: f64,
    /// Share of each core (cpu0, cpu1, …) busy during the window, by any process: the proxy's
    /// core busier than the proxy itself means something else ran there (not measured in
    /// closed-loop runs that count requests).
    #[serde(default)]
    pub core_busy: Vec<f64>,
    /// Connections opened over the whole run (warm-up included).
    #[serde(default)]
    pub connects: u64,
    /// Whether every request had a connection of its own.
    #[serde(default)]
    pub new_connection_per_request: bool,
    /// Over TLS: what was negotiated, and the handshakes by kind (whole run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsReport>,
}

/// The TLS side of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsReport {
    /// Version, cipher suite, key exchange group, ALPN of the first handshake.
    pub description: String,
    /// Full handshakes.
    pub full: u64,
    /// Full handshakes that needed a HelloRetryRequest (the server wanted another key share).
    pub full_hello_retry: u64,
    /// Resumed handshakes (should be 0: the client keeps no sessions).
    pub resumed: u64,
}

/// Latency percentiles, µs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencySummary {
    /// From a histogram of nanoseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            p50: us(histogram.value_at_quantile(0.5)),
            p90: us(histogram.value_at_quantile(0.9)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            max: us(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }
}

/// `[percentile, µs]` points of a histogram of nanoseconds.
pub fn curve(histogram: &Histogram<u64>) -> Vec<[f64; 2]> {
    if histogram.is_empty() {
        return Vec::new();
    }
    CURVE
        .iter()
        .map(|&p| {
            let ns = if p >= 100.0 {
                histogram.max()
            } else {
                histogram.value_at_quantile(p / 100.0)
            };
            [p, ns as f64 / 1000.0]
        })
        .collect()
}

/// CPU one process used during the measured window.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuUse {
    pub pid: u32,
    /// Seconds on CPU (sum over threads, from schedstat).
    pub cpu_s: f64,
    /// The same from utime + stime (10 ms ticks; includes exited threads).
    pub cpu_ticks_s: f64,
    /// `cpu_s` per response, µs.
    pub us_per_request: f64,
    /// `cpu_s / duration_s`: cores kept busy.
    pub utilisation: f64,
    /// Share of the CPU time spent in the kernel (system time), from the ticks.
    #[serde(default)]
    pub system_share: f64,
}

impl LoadReport {
    /// CPU µs per request summed over the watched processes (e.g. nginx's workers).
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        (!self.cpu.is_empty()).then(|| self.cpu.iter().map(|cpu| cpu.us_per_request).sum())
    }

    /// CPU µs per request summed over the watched processes, split into (user, kernel) by each
    /// process's share of `stime` in its `utime + stime`.
    pub fn cpu_split_us_per_request(&self) -> Option<(f64, f64)> {
        (!self.cpu.is_empty()).then(|| {
            self.cpu.iter().fold((0.0, 0.0), |(user, kernel), cpu| {
                (
                    user + cpu.us_per_request * (1.0 - cpu.system_share),
                    kernel + cpu.us_per_request * cpu.system_share,
                )
            })
        })
    }

    /// One line of text.
    pub fn line(&self) -> String {
        let ms = |us: f64| format!("{:.3} ms", us / 1000.0);
        let mut text = format!(
            "{}: {:.0} req/s ({}{}, {} conns, {:.1} s), latency p50 {} p90 {} p99 {} p99.9 {} max {}",
            self.label,
            self.rps,
            self.mode,
            self.offered_rps
                .map(|rate| format!(" at {rate:.0}/s"))
                .unwrap_or_default(),
            self.connections,
            self.duration_s,
            ms(self.latency.p50),
            ms(self.latency.p90),
            ms(self.latency.p99),
            ms(self.latency.p999),
            ms(self.latency.max),
        );
        let codes: Vec<String> = self
            .codes
            .iter()
            .map(|(code, count)| format!("{code}: {count}"))
            .collect();
        text.push_str(&format!("; responses {{{}}}", codes.join(", ")));
        if self.errors > 0 || self.unsent > 0 {
            text.push_str(&format!("; errors {} unsent {}", self.errors, self.unsent));
        }
        if let Some(tls) = &self.tls {
            text.push_str(&format!(
                "; {}, handshakes full {} (+{} after HRR), resumed {}",
                tls.description, tls.full, tls.full_hello_retry, tls.resumed
            ));
        }
        if self.new_connection_per_request {
            text.push_str(&format!("; {} connections", self.connects));
        }
        text.push_str(&format!(
            "; generator {:.0} % of a core",
            self.generator_utilisation * 100.0
        ));
        if !self.core_busy.is_empty() {
            let cores: Vec<String> = self
                .core_busy
                .iter()
                .map(|busy| format!("{:.0}", busy * 100.0))
                .collect();
            text.push_str(&format!("; cores busy {} %", cores.join("/")));
        }
        if let Some(cpu) = self.cpu_us_per_request() {
            let utilisation: f64 = self.cpu.iter().map(|cpu| cpu.utilisation).sum();
            let system =
                self.cpu.iter().map(|cpu| cpu.system_share).sum::<f64>() / self.cpu.len() as f64;
            let (user, kernel) = self.cpu_split_us_per_request().unwrap_or_default();
            text.push_str(&format!(
                "; proxy CPU {cpu:.2} µs/req (user {user:.2}, kernel {kernel:.2}; {:.0} % of a core, {:.0} % in the kernel)",
                utilisation * 100.0,
                system * 100.0
            ));
        }
        text
    }
}
