//! Extraction and injection of the W3C trace context.

use super::*;
use serde_json::json;

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const OTHER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn meta(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, http::HeaderValue::from_str(v).unwrap());
    }
    h
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[test]
fn meta_traceparent_wins_over_headers() {
    let m = meta(json!({"traceparent": CALLER, "tracestate": "vendor=a"}));
    let h = headers(&[("traceparent", OTHER)]);
    let t = CallerTrace::extract(Some(&m), Some(&h));
    assert_eq!(
        t.trace_id().as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
}

#[test]
fn headers_are_used_when_meta_has_no_trace() {
    let m = meta(json!({"progressToken": 1}));
    let h = headers(&[("traceparent", OTHER), ("tracestate", "v=1")]);
    let t = CallerTrace::extract(Some(&m), Some(&h));
    assert_eq!(
        t.trace_id().as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
}

#[test]
fn malformed_traceparent_is_ignored_not_an_error() {
    for bad in [
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6-00f067aa0ba902b7-01",
    ] {
        let m = meta(json!({ "traceparent": bad }));
        let t = CallerTrace::extract(Some(&m), None);
        assert!(!t.is_present(), "{bad} was taken as a trace");
    }
    // A malformed `_meta` value falls back to a good header.
    let m = meta(json!({"traceparent": "garbage"}));
    let h = headers(&[("traceparent", OTHER)]);
    let t = CallerTrace::extract(Some(&m), Some(&h));
    assert_eq!(
        t.trace_id().as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
    // Not a string at all.
    let m = meta(json!({"traceparent": 17}));
    assert!(!CallerTrace::extract(Some(&m), None).is_present());
}

#[test]
fn oversized_values_are_ignored() {
    let huge = format!("k={}", "v".repeat(MAX_VALUE_BYTES));
    let m = meta(json!({"traceparent": CALLER, "baggage": huge}));
    let t = CallerTrace::extract(Some(&m), None);
    let corr = CorrelationId::new();
    let out = outgoing(&tracing::Span::none(), &t, &corr);
    assert_eq!(field(&out, BAGGAGE), None);
    assert!(field(&out, TRACEPARENT).unwrap().contains(&corr.span_id()));
}

#[test]
fn without_telemetry_the_callers_trace_goes_on_with_the_gateways_hop() {
    let m = meta(json!({
        "traceparent": CALLER,
        "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        "baggage": "tenant=acme,region=eu",
    }));
    let t = CallerTrace::extract(Some(&m), None);
    let corr = CorrelationId::new();
    let out = outgoing(&tracing::Span::none(), &t, &corr);
    let expected = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", corr.span_id());
    assert_eq!(field(&out, TRACEPARENT), Some(expected.as_str()));
    assert_eq!(
        field(&out, TRACESTATE),
        Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    );
    let baggage = field(&out, BAGGAGE).unwrap();
    let mut items: Vec<&str> = baggage.split(',').collect();
    items.sort_unstable();
    assert_eq!(items, ["region=eu", "tenant=acme"]);
}

#[test]
fn baggage_from_headers_when_meta_has_none() {
    let m = meta(json!({"traceparent": CALLER}));
    let h = headers(&[("baggage", "tenant=acme")]);
    let t = CallerTrace::extract(Some(&m), Some(&h));
    let out = outgoing(&tracing::Span::none(), &t, &CorrelationId::new());
    assert_eq!(field(&out, BAGGAGE), Some("tenant=acme"));
    assert!(
        field(&out, TRACEPARENT)
            .unwrap()
            .contains("4bf92f3577b34da6a3ce929d0e0e4736")
    );
}

#[test]
fn without_a_caller_trace_the_correlation_trace_is_used() {
    let corr = CorrelationId::new();
    let out = outgoing(&tracing::Span::none(), &CallerTrace::default(), &corr);
    assert_eq!(out, vec![(TRACEPARENT.to_owned(), corr.traceparent())]);
}

/// With an OpenTelemetry layer (telemetry on): the call's span continues
/// the caller's trace, the upstream gets the forward span as its parent,
/// and a call without a caller trace is rooted in the correlation's trace.
#[test]
fn with_telemetry_the_forward_span_is_the_upstreams_parent() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .with_id_generator(CorrelatedIds::default())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let m = meta(json!({"traceparent": CALLER, "tracestate": "v=1", "baggage": "a=b"}));
        let caller = CallerTrace::extract(Some(&m), None);
        let corr = CorrelationId::new();
        let call = tool_call_span("rec.lookup", &corr, &caller);
        let forward = tracing::debug_span!(target: TARGET, parent: &call, "forward");
        let out = outgoing(&forward, &caller, &corr);
        let tp = field(&out, TRACEPARENT).unwrap();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(
            parts[2], "00f067aa0ba902b7",
            "the gateway's span is the parent"
        );
        assert_eq!(field(&out, TRACESTATE), Some("v=1"));
        assert_eq!(field(&out, BAGGAGE), Some("a=b"));
        drop(forward);
        drop(call);

        let corr = CorrelationId::new();
        let root = tool_call_span("rec.lookup", &corr, &CallerTrace::default());
        drop(root);
        let spans = exporter.get_finished_spans().unwrap();
        let root = spans
            .iter()
            .find(|s| s.span_context.trace_id().to_string() == corr.trace_id());
        let root = root.unwrap();
        assert_eq!(root.parent_span_id, opentelemetry::trace::SpanId::INVALID);
        assert_eq!(root.name, "mandate.tool_call");
    });
}

#[test]
fn the_callers_sampling_decision_travels_on() {
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let m = meta(json!({ "traceparent": unsampled }));
    let t = CallerTrace::extract(Some(&m), None);
    assert!(t.is_present());
    let out = outgoing(&tracing::Span::none(), &t, &CorrelationId::new());
    assert!(
        field(&out, TRACEPARENT).unwrap().ends_with("-00"),
        "{out:?}"
    );
}
