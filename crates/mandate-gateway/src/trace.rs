//! Distributed tracing: the caller's W3C trace continued through the
//! gateway and handed on to the upstream.
//!
//! The caller's trace context (`traceparent`, `tracestate`, `baggage`) is
//! read from `params._meta` first (MCP's SEP-414 keys), else from the HTTP
//! headers of the request. A malformed value is ignored, never an error.
//! Each call gets one `mandate.tool_call` span (a child of the caller's span,
//! or a root whose trace id is derived from the correlation id), with a
//! child span per pipeline phase. Only spans with [`TARGET`] are exported
//! (the binary's OpenTelemetry layer filters on it), so what is in a span is
//! exactly what this module and the pipeline put there: tool, effect,
//! reason code, decision and correlation ids; never the subject or the
//! arguments.
//!
//! Without an OpenTelemetry layer (telemetry off) the spans cost what a
//! `tracing` span costs; the upstream still gets the caller's trace (with
//! the correlation id's span id as its parent), or the correlation id's
//! trace when there is none.

use mandate_core::CorrelationId;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use std::cell::Cell;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span meant for export.
pub const TARGET: &str = "mandate::trace";

/// W3C Trace Context and Baggage keys (also the `_meta` keys of SEP-414).
pub const TRACEPARENT: &str = "traceparent";
/// The vendor-specific trace state that travels with `traceparent`.
pub const TRACESTATE: &str = "tracestate";
/// W3C Baggage.
pub const BAGGAGE: &str = "baggage";

/// Longest trace value taken from a caller (W3C Baggage allows 8192 bytes;
/// a `traceparent` is 55). Longer values are ignored.
const MAX_VALUE_BYTES: usize = 8192;

/// The trace context a caller sent with a call. `Default`: none.
#[derive(Debug, Clone, Default)]
pub struct CallerTrace {
    /// The caller's span (valid only when it sent a well-formed
    /// `traceparent`), with its `tracestate`, and its baggage.
    cx: opentelemetry::Context,
}

/// Whether a caller's value may be parsed at all: bounded, and a
/// `traceparent` of the W3C field widths (2-32-16-2 hex digits; the
/// propagator alone would take a short trace id).
fn acceptable(key: &str, value: &str) -> bool {
    if value.len() > MAX_VALUE_BYTES {
        return false;
    }
    if key != TRACEPARENT {
        return true;
    }
    let widths: Vec<usize> = value.split('-').map(str::len).collect();
    widths.starts_with(&[2, 32, 16, 2])
}

/// Reads trace fields from a JSON object (`_meta`).
struct MetaCarrier<'a>(&'a serde_json::Map<String, serde_json::Value>);

impl Extractor for MetaCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .and_then(serde_json::Value::as_str)
            .filter(|v| acceptable(key, v))
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Reads trace fields from HTTP headers.
struct HeaderCarrier<'a>(&'a http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .and_then(|v| v.to_str().ok())
            .filter(|v| acceptable(key, v))
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Collects injected fields.
#[derive(Default)]
struct Fields(Vec<(String, String)>);

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

impl CallerTrace {
    /// The caller's trace context: from `meta` when it holds a well-formed
    /// `traceparent`, else from `headers`. Baggage comes from the same
    /// place as the trace, or from wherever there is some.
    pub fn extract(
        meta: Option<&serde_json::Map<String, serde_json::Value>>,
        headers: Option<&http::HeaderMap>,
    ) -> Self {
        let tc = TraceContextPropagator::new();
        let bg = BaggagePropagator::new();
        let from_meta = meta.map(|m| tc.extract(&MetaCarrier(m)));
        let from_headers = || headers.map(|h| tc.extract(&HeaderCarrier(h)));
        let valid = |cx: &opentelemetry::Context| cx.span().span_context().is_valid();
        let (cx, meta_first) = match from_meta {
            Some(cx) if valid(&cx) => (cx, true),
            _ => match from_headers() {
                Some(cx) if valid(&cx) => (cx, false),
                _ => (opentelemetry::Context::new(), meta.is_some()),
            },
        };
        let baggage_meta = meta.map(|m| bg.extract_with_context(&cx, &MetaCarrier(m)));
        let baggage_headers = || headers.map(|h| bg.extract_with_context(&cx, &HeaderCarrier(h)));
        let has_baggage = |c: &opentelemetry::Context| !c.baggage().is_empty();
        let cx = match (meta_first, baggage_meta) {
            (true, Some(c)) if has_baggage(&c) => c,
            (_, meta_cx) => match baggage_headers() {
                Some(c) if has_baggage(&c) => c,
                _ => meta_cx.filter(has_baggage).unwrap_or(cx),
            },
        };
        Self { cx }
    }

    /// Whether the caller sent a well-formed `traceparent`.
    pub fn is_present(&self) -> bool {
        self.cx.span().span_context().is_valid()
    }

    /// The caller's trace id, as 32 hex digits.
    pub fn trace_id(&self) -> Option<String> {
        self.is_present()
            .then(|| self.cx.span().span_context().trace_id().to_string())
    }
}

thread_local! {
    /// The trace id the next root span built on this thread must take
    /// (set only while [`tool_call_span`] builds one).
    static NEXT_ROOT: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// The OpenTelemetry id generator for the gateway: random ids, except that
/// a `mandate.tool_call` span without a caller trace takes the trace id
/// derived from its correlation id (so traces and audit records correlate).
#[derive(Debug, Default)]
pub struct CorrelatedIds(opentelemetry_sdk::trace::RandomIdGenerator);

impl opentelemetry_sdk::trace::IdGenerator for CorrelatedIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_ROOT
            .with(Cell::take)
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> opentelemetry::trace::SpanId {
        self.0.new_span_id()
    }
}

/// Longest tool name put in a span (the name comes from the caller).
const MAX_TOOL_CHARS: usize = 200;

/// The span of one tool call, continuing `caller`'s trace or, without one,
/// rooted in the trace derived from `correlation`. Its `trace_id` field
/// puts the trace id on every log line of the call.
pub fn tool_call_span(
    tool: &str,
    correlation: &CorrelationId,
    caller: &CallerTrace,
) -> tracing::Span {
    let tool: String = tool.chars().take(MAX_TOOL_CHARS).collect();
    let span = tracing::info_span!(
        target: TARGET,
        "mandate.tool_call",
        otel.kind = "server",
        tool = %tool,
        correlation_id = %correlation,
        decision_id = tracing::field::Empty,
        effect = tracing::field::Empty,
        reason = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let derived = TraceId::from_hex(&correlation.trace_id()).ok();
    let built = if caller.is_present() {
        // Without the OpenTelemetry layer this does nothing (and says so).
        let _ = span.set_parent(caller.cx.clone());
        span.context()
    } else {
        // Built now, on this thread, so the id generator sees the id.
        NEXT_ROOT.with(|n| n.set(derived));
        let cx = span.context();
        NEXT_ROOT.with(|n| n.set(None));
        cx
    };
    let ctx = built.span().span_context().clone();
    let trace_id = if ctx.is_valid() {
        Some(ctx.trace_id().to_string())
    } else {
        caller.trace_id().or_else(|| derived.map(|d| d.to_string()))
    };
    if let Some(t) = trace_id {
        span.record("trace_id", t.as_str());
    }
    span
}

/// The trace fields handed on to the upstream for a call forwarded under
/// `forward` (the `forward` phase span): the gateway's span as the parent
/// when telemetry is on; else the caller's trace with the correlation id's
/// span id as the parent; else the trace derived from the correlation id.
/// Baggage, trace state and the sampled flag travel on unchanged.
pub fn outgoing(
    forward: &tracing::Span,
    caller: &CallerTrace,
    correlation: &CorrelationId,
) -> Vec<(String, String)> {
    let ours = forward.context();
    let cx = if ours.span().span_context().is_valid() {
        // Our span, with the caller's baggage.
        ours.with_baggage(caller.cx.baggage().iter().map(|(k, (v, m))| {
            opentelemetry::baggage::KeyValueMetadata::new(k.clone(), v.clone(), m.clone())
        }))
    } else if caller.is_present() {
        // No span of ours: the caller's trace, with the gateway's hop (the
        // correlation id's span id) as the parent, so the upstream never
        // gets the caller's own span id back and its records correlate.
        let theirs = caller.cx.span().span_context().clone();
        match opentelemetry::trace::SpanId::from_hex(&correlation.span_id()) {
            Ok(hop) => caller
                .cx
                .with_remote_span_context(opentelemetry::trace::SpanContext::new(
                    theirs.trace_id(),
                    hop,
                    theirs.trace_flags(),
                    true,
                    theirs.trace_state().clone(),
                )),
            Err(_) => caller.cx.clone(),
        }
    } else {
        caller.cx.clone()
    };
    let mut fields = Fields::default();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut fields);
    } else {
        fields
            .0
            .push((TRACEPARENT.to_owned(), correlation.traceparent()));
    }
    BaggagePropagator::new().inject_context(&cx, &mut fields);
    fields.0.retain(|(_, v)| !v.is_empty());
    fields.0
}

#[cfg(test)]
#[path = "trace_tests.rs"]
mod tests;
