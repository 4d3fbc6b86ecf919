//! Logging (tracing to stderr) and the process-wide Prometheus recorder.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line (`timestamp`, `level`, `target`, `fields.message` and the event's
    /// other fields, and the spans it is in), for log shippers.
    Json,
}

/// Logs to stderr in `format`, filtered by `KEYGATE_LOG` (e.g. `debug`, `keygate_proxy=trace`);
/// servers log at `info` by default, operator commands only warnings.
pub fn init_logging(server: bool, format: LogFormat) {
    let default = if server { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("KEYGATE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is harmless: the first subscriber stays.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// How often histogram samples are folded into their buckets when nobody scrapes `/metrics`.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The handle that renders `/metrics`. The recorder is installed once per process; the control
/// plane and gateways of `keygate dev` (and of in-process tests) share it.
///
/// The exporter keeps every histogram sample until it is drained into buckets, which a scrape
/// does; a gateway nobody scrapes would grow by 16 bytes per request. A background thread
/// drains them every few seconds, whatever runtime (if any) is running.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Histogram buckets suited to the gateway's and the control plane's latencies.
            let builder = keygate_proxy::metrics::prometheus_builder();
            let recorder = keygate_control_plane::metrics::with_buckets(builder).build_recorder();
            let handle = recorder.handle();
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("keygate-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "cannot start the metrics upkeep thread; histogram samples are drained only when /metrics is scraped");
            }
            // Fails only if another recorder was installed first; metrics then go there and
            // this handle renders an empty page, which is visible rather than fatal.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
