//! `[telemetry]`: OpenTelemetry traces over OTLP/HTTP (protobuf).
//!
//! Off unless an endpoint is configured (`otlp_endpoint` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`): then no exporter and no OpenTelemetry
//! layer exist. On, spans go through a bounded batch queue (a full queue
//! drops spans, which the SDK logs with a count; a call never waits for
//! the exporter) and are flushed when the process stops. Only the spans
//! of `mandate_gateway::trace::TARGET` are exported, never log events (see
//! docs/OBSERVABILITY.md, "Traces").

use crate::env;
use anyhow::{Result, anyhow, bail};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use serde::Deserialize;
use std::time::Duration;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The `[telemetry]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
    sample_ratio: Option<f64>,
    batch_delay_ms: Option<u64>,
    max_queue_spans: Option<usize>,
}

/// Where and how traces are exported; `None` in [`crate::config::Config`]
/// when telemetry is off.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// The OTLP/HTTP traces URL (`{endpoint}/v1/traces`).
    pub traces_url: String,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Share of new traces sampled (a caller's sampling decision is kept).
    pub sample_ratio: f64,
    /// Longest a finished span waits in the queue before it is exported.
    pub batch_delay: Duration,
    /// Most spans queued for export; past it new spans are dropped.
    pub max_queue_spans: usize,
}

/// Default `service.name`.
const DEFAULT_SERVICE: &str = "mandate";
/// Default and bounds of the export queue.
const DEFAULT_QUEUE: usize = 2048;
const MAX_QUEUE: usize = 65_536;
/// The SDK's default batch delay.
const DEFAULT_DELAY_MS: u64 = 5000;

impl TelemetrySection {
    /// The settings, with the standard `OTEL_*` variables taking precedence
    /// over the file; `None` without an endpoint.
    pub fn settings(&self) -> Result<Option<TelemetrySettings>> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let Some(endpoint) = var(env::OTEL_ENDPOINT).or_else(|| self.otlp_endpoint.clone()) else {
            if self.sample_ratio.is_some()
                || self.service_name.is_some()
                || self.batch_delay_ms.is_some()
                || self.max_queue_spans.is_some()
            {
                bail!("[telemetry] is configured but has no otlp_endpoint");
            }
            return Ok(None);
        };
        let endpoint = endpoint.trim().trim_end_matches('/');
        let url = reqwest::Url::parse(endpoint)
            .map_err(|e| anyhow!("telemetry.otlp_endpoint {endpoint:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            bail!("telemetry.otlp_endpoint {endpoint:?} must be an http(s) URL");
        }
        let service_name = var(env::OTEL_SERVICE_NAME)
            .or_else(|| self.service_name.clone())
            .unwrap_or_else(|| DEFAULT_SERVICE.to_owned());
        if service_name.trim().is_empty() {
            bail!("telemetry.service_name must not be empty");
        }
        let sample_ratio = match var(env::OTEL_SAMPLER_ARG) {
            Some(v) => v
                .trim()
                .parse::<f64>()
                .map_err(|_| anyhow!("{} {v:?} is not a number", env::OTEL_SAMPLER_ARG))?,
            None => self.sample_ratio.unwrap_or(1.0),
        };
        if !(0.0..=1.0).contains(&sample_ratio) {
            bail!("telemetry.sample_ratio must be between 0 and 1");
        }
        let delay = self.batch_delay_ms.unwrap_or(DEFAULT_DELAY_MS);
        if !(1..=60_000).contains(&delay) {
            bail!("telemetry.batch_delay_ms must be between 1 and 60000");
        }
        let max_queue_spans = self.max_queue_spans.unwrap_or(DEFAULT_QUEUE);
        if !(1..=MAX_QUEUE).contains(&max_queue_spans) {
            bail!("telemetry.max_queue_spans must be between 1 and {MAX_QUEUE}");
        }
        Ok(Some(TelemetrySettings {
            traces_url: format!("{endpoint}/v1/traces"),
            service_name,
            sample_ratio,
            batch_delay: Duration::from_millis(delay),
            max_queue_spans,
        }))
    }
}

/// The running exporter; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Telemetry {
    /// Builds the exporter and its batch processor.
    pub fn start(s: &TelemetrySettings) -> Result<Self> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(s.traces_url.as_str())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| anyhow!("telemetry: cannot build the OTLP exporter: {e}"))?;
        let batch = opentelemetry_sdk::trace::BatchConfigBuilder::default()
            .with_max_queue_size(s.max_queue_spans)
            .with_max_export_batch_size(s.max_queue_spans.min(512))
            .with_scheduled_delay(s.batch_delay)
            .build();
        let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let sampler = opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(s.sample_ratio),
        ));
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(s.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_id_generator(mandate_gateway::trace::CorrelatedIds::default())
            .with_resource(resource)
            .build();
        Ok(Self { provider })
    }

    /// The layer that turns the gateway's trace spans (and nothing else:
    /// no log events, no other crate's spans) into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("mandate"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span() && meta.target() == mandate_gateway::trace::TARGET
            }))
    }

    /// Exports what is queued and stops the exporter (blocking up to the
    /// export timeout; run off the async workers).
    pub async fn shutdown(self) {
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "telemetry: flushing spans at shutdown failed")
            }
            Err(e) => tracing::warn!(error = %e, "telemetry: flushing spans at shutdown failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> TelemetrySection {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn off_without_an_endpoint() {
        // The OTEL_* variables are not set in the test environment.
        assert_eq!(section("").settings().unwrap(), None);
        assert!(section("sample_ratio = 0.5").settings().is_err());
    }

    #[test]
    fn settings_are_checked() {
        let s = section("otlp_endpoint = \"http://127.0.0.1:4318/\"\nsample_ratio = 0.25")
            .settings()
            .unwrap()
            .unwrap();
        assert_eq!(s.traces_url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(s.service_name, "mandate");
        assert_eq!(s.max_queue_spans, 2048);
        assert!((s.sample_ratio - 0.25).abs() < f64::EPSILON);
        for bad in [
            "otlp_endpoint = \"ftp://x\"",
            "otlp_endpoint = \"not a url\"",
            "otlp_endpoint = \"http://x\"\nsample_ratio = 1.5",
            "otlp_endpoint = \"http://x\"\nmax_queue_spans = 0",
            "otlp_endpoint = \"http://x\"\nbatch_delay_ms = 0",
            "otlp_endpoint = \"http://x\"\nservice_name = \" \"",
        ] {
            assert!(section(bad).settings().is_err(), "{bad}");
        }
        assert!(toml::from_str::<TelemetrySection>("endpoint = \"x\"").is_err());
    }
}
