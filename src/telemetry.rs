//! OpenTelemetry trace export: the session spans, sent to an OTLP/HTTP collector.
//!
//! # What it owns
//!
//! [`Telemetry`] is the exporter side of tracing: built once from the environment before the
//! log subscriber is installed, it hands [`crate::server`] a [`tracing_subscriber::Layer`]
//! (see [`Telemetry::layer`]) and is shut down after the server has stopped, which exports the
//! spans still queued (the last sessions').
//!
//! With the cargo feature `otel` and `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, spans go as OTLP protobuf over HTTP, through a
//! batch processor, to that collector; `service.name` is `OTEL_SERVICE_NAME`, or `voxroute`.
//! The other standard variables apply (`OTEL_BSP_SCHEDULE_DELAY`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_RESOURCE_ATTRIBUTES`, ...). With no endpoint set there
//! is no exporter and no layer: nothing is spent. Built without the feature, an endpoint set
//! only earns one warning at start.
//!
//! # What is exported
//!
//! Only the per-session span (named [`SESSION_SPAN`], target under [`SESSION_SPAN_TARGET`]),
//! with its fields (`session_id`, `transport`, `provider`) and the timing and code location
//! `tracing-opentelemetry` adds. Log events, inside sessions or not, and every other span (of
//! this crate or of a library) stay out of the export, whatever `RUST_LOG` says: `RUST_LOG`
//! filters the log lines only.
//!
//! # Never in the way of calls
//!
//! Finished spans are handed to the batch processor without blocking (when its queue is full
//! they are dropped); the processor exports from its own thread with a blocking HTTP client
//! built off any async runtime, so a slow or unreachable collector costs a failed export on
//! that thread, never a stalled session. Shutdown waits for the last export at most
//! [`SHUTDOWN_TIMEOUT`].
//!
//! # What callers must keep
//!
//! - The session span keeps its name and target, or it stops being exported.
//! - Its fields stay free of audio, transcripts, keys and full IP addresses: everything on it
//!   leaves the process.
//! - [`Telemetry::from_env`] runs before the actor system starts and [`Telemetry::shutdown`]
//!   after it has stopped (both block; neither may run inside an async runtime).

use std::time::Duration;

use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The name of the per-session span (created by the session actor of [`crate::edge`]).
pub const SESSION_SPAN: &str = "session";

/// The module path under which the session span is created.
pub const SESSION_SPAN_TARGET: &str = "voxroute::edge";

/// How long shutdown waits for the last spans to reach the collector.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The variables that name a collector; either one turns the export on.
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// The `service.name` when `OTEL_SERVICE_NAME` is unset or empty.
pub const DEFAULT_SERVICE_NAME: &str = "voxroute";

/// Why the trace export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter rejected its configuration (an endpoint that is not a URL, say).
    #[cfg(feature = "otel")]
    #[error("cannot set up the OTLP trace exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The trace export of one `voxroute serve`: off, or a tracer provider with its batch
/// processor. See the [module documentation](self).
#[derive(Debug, Default)]
pub struct Telemetry {
    /// The collector's variable and value, when one is named.
    endpoint: Option<(&'static str, String)>,
    /// The provider whose tracer feeds the layer; `None` when the export is off.
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

/// The first endpoint variable set to something other than blanks, with its value.
fn endpoint_from_env() -> Option<(&'static str, String)> {
    ENDPOINT_VARS.iter().find_map(|&name| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
            .map(|value| (name, value))
    })
}

/// `endpoint` without user info or query (where a credential could hide), for the logs.
fn redacted(endpoint: &str) -> String {
    let endpoint = endpoint.split(['?', '#']).next().unwrap_or_default();
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return endpoint.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

/// `OTEL_SERVICE_NAME` when set and not blank, else [`DEFAULT_SERVICE_NAME`].
pub fn service_name_from_env() -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned())
}

impl Telemetry {
    /// Reads the environment and, with the `otel` feature and a collector named, builds the
    /// exporter and its batch processor (which starts its own thread). Does not log: the
    /// subscriber is not installed yet; [`Telemetry::log_status`] says what was set up.
    ///
    /// # Errors
    /// [`TelemetryError`] (with `otel` only) when the exporter's configuration is invalid. A
    /// collector that does not answer is not an error: exports fail later, on its own thread.
    pub fn from_env() -> Result<Telemetry, TelemetryError> {
        let endpoint = endpoint_from_env();
        #[cfg(feature = "otel")]
        let provider = match endpoint {
            Some(_) => Some(build_provider(service_name_from_env())?),
            None => None,
        };
        Ok(Telemetry {
            endpoint,
            #[cfg(feature = "otel")]
            provider,
        })
    }

    /// Whether spans are exported.
    pub fn is_exporting(&self) -> bool {
        #[cfg(feature = "otel")]
        {
            self.provider.is_some()
        }
        #[cfg(not(feature = "otel"))]
        {
            false
        }
    }

    /// The layer that turns session spans into OpenTelemetry spans for the exporter, filtered
    /// to those spans alone; `None` when the export is off (an absent layer costs nothing).
    pub fn layer<S>(&self) -> Option<Box<dyn Layer<S> + Send + Sync + 'static>>
    where
        S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        #[cfg(feature = "otel")]
        {
            use opentelemetry::trace::TracerProvider as _;
            let tracer = self.provider.as_ref()?.tracer("voxroute");
            let only_sessions = tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span()
                    && meta.name() == SESSION_SPAN
                    && meta.target().starts_with(SESSION_SPAN_TARGET)
            });
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_threads(false)
                    .with_filter(only_sessions)
                    .boxed(),
            )
        }
        #[cfg(not(feature = "otel"))]
        {
            None
        }
    }

    /// Logs, once the subscriber is installed, where spans go, or (built without `otel`) that
    /// a collector was named in vain.
    pub fn log_status(&self) {
        let Some((variable, endpoint)) = &self.endpoint else {
            return;
        };
        if self.is_exporting() {
            tracing::info!(
                endpoint = %redacted(endpoint),
                service_name = %service_name_from_env(),
                "exporting session spans to an OpenTelemetry collector (OTLP/HTTP)"
            );
        } else {
            tracing::warn!(
                "{variable} is set but this binary was built without the `otel` feature: no \
                 spans are exported (build with `cargo build --release --features otel`)"
            );
        }
    }

    /// Exports the spans still queued and stops the processor's thread, waiting at most
    /// [`SHUTDOWN_TIMEOUT`]; a collector that does not take them is logged, not fatal. Blocks:
    /// call it outside any async runtime.
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            tracing::warn!(%error, "the last spans may not have reached the OpenTelemetry collector");
        }
    }
}

/// The tracer provider: the OTLP/HTTP protobuf exporter (endpoint, headers and timeout from the
/// standard variables) behind a batch processor (its settings from `OTEL_BSP_*`).
#[cfg(feature = "otel")]
fn build_provider(
    service_name: String,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn the_logged_endpoint_loses_user_info_and_query() {
        assert_eq!(redacted("http://collector:4318"), "http://collector:4318");
        assert_eq!(
            redacted("https://user:secret@collector:4318/otlp?token=x"),
            "https://collector:4318/otlp"
        );
        assert_eq!(redacted("collector:4318"), "collector:4318");
    }
}
