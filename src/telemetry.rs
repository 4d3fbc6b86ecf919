//! Logging (tracing to stderr), span export over OTLP (`--otlp-endpoint`), and the
//! process-wide Prometheus recorder.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

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

/// How long one export to the collector may take before it is abandoned (the spans in it are
/// dropped; serving never waits for the collector).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Logging, and span export when it was asked for; [`Telemetry::shutdown`] flushes the spans
/// still queued.
#[must_use = "shut down at exit, or queued spans are lost"]
pub struct Telemetry {
    spans: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (servers then create them; see `keygate_proxy::spans`).
    pub fn exports_spans(&self) -> bool {
        self.spans.is_some()
    }

    /// Exports the spans still queued (each export bounded by its timeout) and stops.
    pub fn shutdown(self) {
        if let Some(provider) = self.spans
            && let Err(error) = provider.shutdown()
        {
            eprintln!("warning: spans not exported at shutdown: {error}");
        }
    }
}

/// Logs to stderr in `format`, filtered by `KEYGATE_LOG` (e.g. `debug`, `keygate_proxy=trace`);
/// servers log at `info` by default, operator commands only warnings. With `otlp` (servers
/// only), the spans of [`keygate_proxy::spans::TARGET`] are also exported there over OTLP/gRPC
/// (batched, in the background); they are kept out of the log lines. Must be called inside
/// the Tokio runtime: the exporter's channel lives on it.
pub fn init(server: bool, format: LogFormat, otlp: Option<&str>) -> Result<Telemetry, String> {
    let default = if server { "info" } else { "warn" };
    let log_filter = EnvFilter::try_from_env("KEYGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(default))
        .add_directive(
            format!("{}=off", keygate_proxy::spans::TARGET)
                .parse()
                .map_err(|error| format!("span target filter: {error}"))?,
        );
    let log = match format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    }
    .with_filter(log_filter);
    let provider = match otlp {
        Some(endpoint) if server => Some(span_provider(endpoint)?),
        _ => None,
    };
    let export = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("keygate"))
            .with_filter(
                Targets::new().with_target(keygate_proxy::spans::TARGET, tracing::Level::INFO),
            )
    });
    // A second initialisation (tests) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(export)
        .try_init();
    Ok(Telemetry { spans: provider })
}

/// Logs only, as [`init`] without span export (operator commands, tests).
pub fn init_logging(server: bool, format: LogFormat) {
    // Without an endpoint nothing can fail.
    let _ = init(server, format, None);
}

/// The tracer provider exporting to `endpoint` (`http://` or `https://`, the system's roots),
/// in batches from a background thread. Sampling and batching follow the standard
/// `OTEL_TRACES_SAMPLER`(`_ARG`) and `OTEL_BSP_*` variables (default: a child of a sampled
/// trace is sampled, a new trace always); the service is `keygate` unless `OTEL_SERVICE_NAME`
/// says otherwise.
fn span_provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
    let scheme = endpoint.split_once("://").map_or("", |(scheme, _)| scheme);
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT);
    match scheme {
        "http" => {}
        "https" => {
            exporter = exporter
                .with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
        }
        other => {
            return Err(format!(
                "--otlp-endpoint {endpoint:?}: give an http:// or https:// URL (OTLP over gRPC), not {other:?}"
            ));
        }
    }
    let exporter = exporter
        .build()
        .map_err(|error| format!("--otlp-endpoint {endpoint:?}: {error}"))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("keygate");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
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
