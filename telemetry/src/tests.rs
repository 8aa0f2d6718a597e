//! Tests of `lib`.

use super::*;

/// A `Telemetry` dropped in async code (a test's, a `main` that returns early) flushes on
/// its own thread: blocking on the export runtime here used to panic.
#[tokio::test]
async fn dropped_inside_a_runtime_it_flushes_without_panicking() {
    let export = TraceExport::new("http://127.0.0.1:9".into(), "test", "test".into());
    let mut telemetry = init(LogFormat::Text, Some(&export)).unwrap();
    telemetry.export_metrics(Duration::from_secs(60), Box::new(Vec::new));
    drop(telemetry);
}

/// What a call costs to trace is decided where its root opens: an unsampled root, with logs
/// above `info`, must not exist at all (no registry entry, nothing entered or closed).
#[test]
fn an_unsampled_call_creates_no_span() {
    let service = Service {
        crates: Targets::new().with_target("im_telemetry", LevelFilter::INFO),
        provider: SdkTracerProvider::builder().build(),
    };
    let subscriber = subscriber(
        LogFormat::Text,
        EnvFilter::new("error"),
        &[service],
        std::io::stderr,
    );
    tracing::subscriber::with_default(subscriber, || {
        let unsampled = root_span!(false, "call", route = "r");
        assert!(unsampled.is_disabled(), "unsampled root created");
        let _in = unsampled.enter();
        assert!(
            tracing::info_span!("admission").is_disabled(),
            "child of an unsampled root created"
        );
        drop(_in);
        let sampled = root_span!(true, "call", route = "r");
        assert!(!sampled.is_disabled());
        let _in = sampled.enter();
        assert!(!tracing::info_span!("admission").is_disabled());
    });
}

/// Without export, log lines at `info` show no spans, so none is built; with `debug` somewhere
/// in the filter they show them again.
#[test]
fn logs_build_spans_only_when_debug_lines_show_them() {
    for (filter, built) in [("info", false), ("warn,im_telemetry=debug", true)] {
        let subscriber = subscriber(LogFormat::Text, EnvFilter::new(filter), &[], std::io::sink);
        // The most verbose level the filter enables caps the process's (and so `log`'s) level.
        let max = if built {
            LevelFilter::DEBUG
        } else {
            LevelFilter::INFO
        };
        assert_eq!(
            tracing::Subscriber::max_level_hint(&subscriber),
            Some(max),
            "{filter}"
        );
        tracing::subscriber::with_default(subscriber, || {
            let call = root_span!(true, "call", route = "r");
            assert_eq!(!call.is_disabled(), built, "{filter}");
            assert!(tracing::enabled!(tracing::Level::WARN), "{filter}");
        });
    }
}
