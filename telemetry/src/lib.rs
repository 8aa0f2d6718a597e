//! Logging and trace export for every process of the system (DESIGN §11): the gateway, the
//! backends and the launcher call [`init`] once, after their configuration is read.
//!
//! - Logs: on stderr, filtered by `RUST_LOG` (default `info`), as text or as JSON lines
//!   ([`LogFormat`]: `--log-format`, or `IM_LOG_FORMAT`, since logging starts before any config
//!   file is read); a JSON line inside a call carries the call's `request_id` and `trace_id`.
//!   Lines leave the caller's thread at once: a bounded queue to a writer thread that writes them
//!   in order, batched while lines keep coming, and flushed whenever the queue runs empty (as
//!   nginx's `buffer=`). A writer that falls behind (a slow pipe) drops lines and counts them
//!   ([`Telemetry::dropped_log_lines`]); the request path never waits on stderr.
//!   [`Telemetry::shutdown`] (and its drop) writes out every queued line.
//! - Traces: with an OTLP endpoint, every `info` span of this workspace's crates becomes an
//!   OpenTelemetry span exported over OTLP/gRPC in batches, with parent-based sampling (a
//!   caller's sampled flag decides; a new trace is sampled at `sample_ratio`), decided where a
//!   root span opens ([`root_span!`]) so unsampled calls build nothing for export. The exporter lives
//!   on a runtime of its own: the batch processor's thread needs one for tonic, and the gateway's
//!   main thread (Pingora) has none. [`Telemetry::shutdown`] flushes what is still queued.
//! - Metrics: with an OTLP endpoint, [`Telemetry::export_metrics`] sends what the process's
//!   Prometheus registries gather every interval, and once more at shutdown ([`metrics`]).
//! - [`traceparent`]: W3C trace context in and out (HTTP headers, frame fields, gRPC metadata).

mod collector;
mod line_format;
mod log_writer;
pub mod metrics;
pub mod settings;
mod span_export;
mod trace_export;
pub mod traceparent;

pub use line_format::write_u64 as write_decimal;
pub use trace_export::{ClientTls, TraceExport};

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{dynamic_filter_fn, filter_fn, FilterExt, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The crates whose spans are exported (others, e.g. h2's, stay logs only).
const TRACED_CRATES: [&str; 4] = ["im_gateway", "im_backends", "im_launcher", "im_telemetry"];

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line, with the fields of the current span (`request_id`, `trace_id`).
    Json,
}

impl LogFormat {
    /// `flag` (`--log-format`) if given, else `IM_LOG_FORMAT`, else text; an unknown value is an
    /// error naming both.
    pub fn choose(flag: Option<&str>) -> Result<Self, String> {
        let env = std::env::var("IM_LOG_FORMAT").ok();
        match flag.or(env.as_deref()) {
            None | Some("text") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(other) => Err(format!(
                "log format `{other}` (--log-format or IM_LOG_FORMAT): use text or json"
            )),
        }
    }
}

/// The last segment of a sampled root span's target ([`root_span!`]): the only spans exported
/// without an exported parent.
pub const TRACED: &str = "::traced";

#[doc(hidden)]
pub use tracing as __tracing;

/// A root span (one that starts or continues a trace here: a call, a Push, a node hop, a backend
/// handler) opened on one of two callsites by `$sampled` ([`traceparent::sampled`]): the
/// module's target plus [`TRACED`], which the exporter takes as a root, or the module's own
/// target, which it never exports, nor anything opened inside it. Deciding before the span exists
/// is what makes an unsampled call cheap: none of its spans is built for export (and with logs
/// above `info` it is not built at all). Logs see both alike.
#[macro_export]
macro_rules! root_span {
    ($sampled:expr, $name:expr, $($fields:tt)*) => {
        if $sampled {
            $crate::__tracing::info_span!(
                target: concat!(module_path!(), "::traced"),
                $name,
                $($fields)*
            )
        } else {
            $crate::__tracing::info_span!($name, $($fields)*)
        }
    };
}

/// Bytes of log lines the writer thread may have waiting at most; past it lines are dropped and
/// counted.
const LOG_QUEUE_BYTES: usize = 4 << 20;

/// The running log writer and export (nothing when export is off); flush both with
/// [`Telemetry::shutdown`].
pub struct Telemetry {
    export: Option<Export>,
    /// `None` when another `init` installed the process's logging first.
    log: Option<LogWriter>,
}

struct LogWriter {
    /// Dropped: the writer thread writes what is buffered and ends.
    _flush: log_writer::LogWriter,
    queue: log_writer::LogQueue,
}

/// How many log lines were dropped because the writer fell behind.
#[derive(Clone, Default)]
pub struct LogDrops(Option<log_writer::LogQueue>);

impl LogDrops {
    pub fn count(&self) -> u64 {
        self.0.as_ref().map_or(0, log_writer::LogQueue::dropped)
    }
}

struct Export {
    /// One per `service.name` ([`TraceExport::crate_services`]), each with the crates it exports.
    services: Vec<Service>,
    runtime: tokio::runtime::Runtime,
    /// The collector, for spans and metrics.
    collector: collector::Collector,
    /// `service.name` and `service.instance.id`, as OTLP attributes for metrics.
    resource: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
    metrics: Option<MetricsTask>,
}

/// The spans of some crates, exported under one `service.name`.
struct Service {
    crates: Targets,
    provider: SdkTracerProvider,
}

/// What the process's registries gather, called on the export runtime.
pub type Gather = Box<dyn Fn() -> Vec<prometheus::proto::MetricFamily> + Send + Sync>;

struct MetricsTask {
    /// Dropped or sent: export once more and stop.
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

/// Logs before the configuration is read, on this thread, until the guard drops (written
/// straight to stderr: start-up errors must not wait in a queue).
pub fn early(format: LogFormat) -> tracing::subscriber::DefaultGuard {
    let subscriber =
        tracing_subscriber::registry().with(log_layer(format, env_filter(), true, std::io::stderr));
    tracing::subscriber::set_default(subscriber)
}

/// The log lines, in `format`, filtered by `RUST_LOG`, written to `writer`; with `spans`, each
/// line shows the spans it was written in.
fn log_layer<S, W>(
    format: LogFormat,
    filter: EnvFilter,
    spans: bool,
    writer: W,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // Colours only for a person at a terminal: escape codes in a log file or a collector's
    // pipe are noise (and were two fifths of every access line's bytes).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let filter = filter.and(filter_fn(move |meta| spans || !meta.is_span()));
    if !spans {
        // No span context to show: lines in the library's shape, written by hand.
        let json = format == LogFormat::Json;
        return tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .event_format(line_format::LineFormat { json })
            .with_filter(filter)
            .boxed();
    }
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    }
}

fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the process's logging and, with `export`, trace export. Once per process (a second
/// call leaves the first in place); an exporter that cannot be built is an error naming it.
pub fn init(format: LogFormat, export: Option<&TraceExport>) -> Result<Telemetry, String> {
    let export = export.map(start_export).transpose()?;
    let services = export.as_ref().map_or(&[][..], |e| &e.services[..]);
    let (queue, flush) = log_writer::start(std::io::stderr(), LOG_QUEUE_BYTES)
        .map_err(|e| format!("cannot start the log writer thread: {e}"))?;
    let installed = subscriber(format, env_filter(), services, queue.clone())
        .try_init()
        .is_ok();
    Ok(Telemetry {
        export,
        log: installed.then_some(LogWriter {
            _flush: flush,
            queue,
        }),
    })
}

/// The registry with one exporting layer per service and the log layer, whose lines
/// `log_filter` selects.
fn subscriber<W>(
    format: LogFormat,
    log_filter: EnvFilter,
    services: &[Service],
    writer: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let traced = TRACED_CRATES.iter().fold(Targets::new(), |t, name| {
        t.with_target(*name, LevelFilter::INFO)
    });
    // A span (or event) no layer wants must not exist at all. Per-layer filters alone do not get
    // there: the registry creates a span unless every one of its 64 filter slots said no, so an
    // unsampled call's spans were built, entered and closed for nobody (22,000 instructions a
    // request, `bench/telemetry_instructions.py`). This global gate says no first: below the
    // log filter's most verbose level and not exported.
    let log_level = log_filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    // Log lines show the spans they are in (`call{…}:upstream{…}:`) only when `RUST_LOG` asks
    // for `debug` somewhere. At `info` (the default) every call's spans would be built, their
    // fields formatted and kept, for lines that are almost never written: 1.21x the CPU of a
    // bridge request (`bench/telemetry_cost.py`, "no access log (info)"). The lines a call
    // writes at `info` and above carry its `request_id` and `trace_id` as fields instead.
    let log_spans = log_level >= LevelFilter::DEBUG;
    let logged = move |meta: &tracing::Metadata<'_>| {
        *meta.level() <= log_level && (log_spans || !meta.is_span())
    };
    // Without export the gate looks at the callsite alone, so its answer is cached and a span
    // the logs do not show costs one branch; with export it must also see the span stack.
    // The level hint matters as much: without one the process's maximum level is TRACE, and
    // every `log` record of Pingora's (`debug!` on the request path) is offered to the
    // subscriber instead of stopping at `log`'s own level check.
    let (static_gate, dynamic_gate) = if services.is_empty() {
        (Some(filter_fn(logged).with_max_level_hint(log_level)), None)
    } else {
        let roots = traced.clone();
        let gate = dynamic_filter_fn(move |meta, cx| logged(meta) || exported(&roots, meta, cx))
            .with_max_level_hint(LevelFilter::INFO.max(log_level));
        (None, Some(gate))
    };
    let otel: Vec<_> = services
        .iter()
        .map(|service| {
            // The static part first: it answers per callsite once and caps the level (so the
            // other crates' debug and trace callsites cost nothing); the dynamic part looks at
            // the span stack only for what passes it.
            let roots = service.crates.clone();
            // Off: per-span source locations, thread and target attributes, busy/idle timing
            // and context activation, which cost work on every span (the last two on every
            // poll of an instrumented future) and answer nothing the dashboards ask.
            tracing_opentelemetry::layer()
                .with_tracer(service.provider.tracer("im"))
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_context_activation(false)
                .with_filter(
                    service
                        .crates
                        .clone()
                        .and(dynamic_filter_fn(move |meta, cx| {
                            exported(&roots, meta, cx)
                        })),
                )
        })
        .collect();
    tracing_subscriber::registry()
        .with(otel)
        .with(log_layer(format, log_filter, log_spans, writer))
        .with(static_gate)
        .with(dynamic_gate)
}

/// Whether the exporter sees a span (or event): one of this workspace's crates at `info` or
/// above, and either a sampled root ([`TRACED`] target, [`root_span!`]) or opened inside an
/// exported span (so nothing under an unsampled root is built for export, whether or not the
/// logs keep that root).
fn exported<S>(traced: &Targets, meta: &tracing::Metadata<'_>, cx: &Context<'_, S>) -> bool
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if !traced.would_enable(meta.target(), meta.level()) {
        return false;
    }
    if meta.is_span() && meta.target().ends_with(TRACED) {
        return true;
    }
    match cx.current_span().id() {
        None => false,
        Some(current) => cx.lookup_current().is_some_and(|s| s.id() == *current),
    }
}

fn start_export(cfg: &TraceExport) -> Result<Export, String> {
    cfg.validate()
        .map_err(|(field, fix)| format!("{field}: {fix}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otel-export")
        .enable_all()
        .build()
        .map_err(|e| format!("telemetry: cannot start the export runtime: {e}"))?;
    // One connection to the collector for spans and metrics, made inside the runtime: its I/O
    // runs there, whichever thread exports.
    let collector = {
        let _in = runtime.enter();
        collector::Collector::connect(cfg)?
    };
    // The process's own service exports every traced crate but those named for another.
    let own = cfg.crate_services.iter().fold(
        TRACED_CRATES.iter().fold(Targets::new(), |t, name| {
            t.with_target(*name, LevelFilter::INFO)
        }),
        |t, (name, _)| t.with_target(*name, LevelFilter::OFF),
    );
    let mut services = vec![(own, cfg.service_name.as_str())];
    services.extend(cfg.crate_services.iter().map(|(name, service)| {
        (
            Targets::new().with_target(*name, LevelFilter::INFO),
            service.as_str(),
        )
    }));
    let services = services
        .into_iter()
        .map(|(crates, service_name)| Service {
            crates,
            provider: provider(cfg, service_name, &runtime, &collector),
        })
        .collect();
    Ok(Export {
        services,
        runtime,
        collector,
        resource: [
            ("service.name", cfg.service_name.as_str()),
            ("service.instance.id", cfg.instance_id.as_str()),
        ]
        .into_iter()
        .chain(
            cfg.resource_attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .map(|(k, v)| metrics::resource_attr(k, v))
        .collect(),
        metrics: None,
    })
}

/// A provider whose spans name `service_name` and go to `collector` in batches.
fn provider(
    cfg: &TraceExport,
    service_name: &str,
    runtime: &tokio::runtime::Runtime,
    collector: &collector::Collector,
) -> SdkTracerProvider {
    let exporter = span_export::SpanSender::new(runtime.handle().clone(), collector.clone());
    let attributes = cfg
        .resource_attributes
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
    let resource = Resource::builder()
        .with_attributes(attributes)
        .with_service_name(service_name.to_owned())
        .with_attribute(KeyValue::new(
            "service.instance.id",
            cfg.instance_id.clone(),
        ))
        .build();
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // Roots are decided before they exist (`root_span!`, `traceparent::sampled` at
        // `sample_ratio`): whatever reaches the exporter as a root is kept.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource)
        .build()
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.export.is_some()
    }

    /// Exports what is queued, writes out the queued log lines and stops (at shutdown: spans
    /// and lines still queued would be lost).
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// The count of log lines dropped because the writer fell behind (for a metric).
    pub fn dropped_log_lines(&self) -> LogDrops {
        LogDrops(self.log.as_ref().map(|l| l.queue.clone()))
    }

    /// Sends what `gather` returns over OTLP every `interval` and at shutdown, when export is on
    /// (a second call replaces the first). A collector that does not answer costs a warning per
    /// failed export, never the caller's time: gathering and sending run on the export runtime.
    pub fn export_metrics(&mut self, interval: Duration, gather: Gather) {
        let Some(export) = self.export.as_mut() else {
            return;
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let sender = metrics::Sender::new(&export.collector, export.resource.clone(), gather);
        let done = export.runtime.spawn(sender.run(interval, stopped));
        export.metrics = Some(MetricsTask { stop, done });
    }

    fn stop(&mut self) {
        if let Some(export) = self.export.take() {
            // On a thread of its own: waiting on the export runtime (and shutting it down) from
            // inside another runtime, as a drop in async code does, would panic.
            let flushing = std::thread::Builder::new()
                .name("otel-flush".into())
                .spawn(move || export.flush());
            match flushing.map(std::thread::JoinHandle::join) {
                Ok(Ok(())) => {}
                Ok(Err(_)) => eprintln!("telemetry: flushing the export failed"),
                Err(e) => eprintln!("telemetry: cannot start the thread that flushes: {e}"),
            }
        }
        // Last, so what the export's flush logged is written too.
        self.log = None;
    }
}

impl Export {
    /// The last metrics report and the queued spans, sent; then the export runtime stops.
    fn flush(self) {
        if let Some(task) = self.metrics {
            let _ = task.stop.send(());
            let flushed = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(3), task.done).await });
            if flushed.is_err() {
                eprintln!("telemetry: the last metrics export did not finish within 3 s");
            }
        }
        for service in &self.services {
            if let Err(e) = service.provider.shutdown() {
                eprintln!("telemetry: flushing spans at shutdown failed: {e}");
            }
        }
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
