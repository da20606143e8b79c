//! The caller's trace context from gRPC metadata: W3C `traceparent`/`tracestate` (Tyk's
//! default), else B3 single (`b3`) or multi (`x-b3-*`) headers. Tyk 5.11+ sends the gateway's
//! context there; it never puts one inside the Object.

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::MetadataMap;

/// Reads gRPC metadata for a propagator.
#[derive(Debug)]
pub struct MetadataExtractor<'a>(pub &'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The remote parent named by `metadata`, if any valid one is there.
pub fn parent_from_metadata(metadata: &MetadataMap) -> Option<SpanContext> {
    let extractor = MetadataExtractor(metadata);
    if extractor.get("traceparent").is_some() {
        let cx = TraceContextPropagator::new().extract(&extractor);
        let parent = cx.span().span_context().clone();
        if parent.is_valid() {
            return Some(parent);
        }
    }
    extractor
        .get("b3")
        .and_then(parse_b3_single)
        .or_else(|| parse_b3_multi(&extractor))
}

fn trace_id(hex: &str) -> Option<TraceId> {
    // B3 allows 64-bit trace IDs; they are the low half of a 128-bit one.
    let id = match hex.len() {
        16 => TraceId::from_hex(&format!("{hex:0>32}")).ok()?,
        32 => TraceId::from_hex(hex).ok()?,
        _ => return None,
    };
    (id != TraceId::INVALID).then_some(id)
}

fn span_id(hex: &str) -> Option<SpanId> {
    let id = (hex.len() == 16)
        .then(|| SpanId::from_hex(hex).ok())
        .flatten()?;
    (id != SpanId::INVALID).then_some(id)
}

fn flags(sampled: Option<&str>, debug: bool) -> TraceFlags {
    if debug || matches!(sampled, Some("1" | "d" | "true")) {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    }
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`; the sampling-only forms carry no context.
fn parse_b3_single(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let trace = trace_id(parts.next()?)?;
    let span = span_id(parts.next()?)?;
    let sampled = parts.next();
    Some(SpanContext::new(
        trace,
        span,
        flags(sampled, sampled == Some("d")),
        true,
        TraceState::default(),
    ))
}

fn parse_b3_multi(extractor: &MetadataExtractor<'_>) -> Option<SpanContext> {
    let trace = trace_id(extractor.get("x-b3-traceid")?.trim())?;
    let span = span_id(extractor.get("x-b3-spanid")?.trim())?;
    let debug = extractor.get("x-b3-flags").map(str::trim) == Some("1");
    Some(SpanContext::new(
        trace,
        span,
        flags(extractor.get("x-b3-sampled").map(str::trim), debug),
        true,
        TraceState::default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (key, value) in pairs {
            map.insert(*key, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn w3c_traceparent_wins() {
        let parent = parent_from_metadata(&metadata(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=1"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]))
        .unwrap();
        assert_eq!(
            parent.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parent.is_sampled() && parent.is_remote());
        assert_eq!(parent.trace_state().header(), "vendor=1");
    }

    #[test]
    fn b3_single_and_multi_are_understood() {
        let single = parent_from_metadata(&metadata(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]))
        .unwrap();
        assert_eq!(
            single.trace_id().to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert_eq!(single.span_id().to_string(), "e457b5a2e4d86bd1");
        assert!(single.is_sampled());
        let multi = parent_from_metadata(&metadata(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        assert_eq!(
            multi.trace_id().to_string(),
            "0000000000000000a3ce929d0e0e4736"
        );
        assert!(!multi.is_sampled());
    }

    #[test]
    fn invalid_or_absent_context_gives_none() {
        assert!(parent_from_metadata(&metadata(&[])).is_none());
        assert!(parent_from_metadata(&metadata(&[("traceparent", "garbage")])).is_none());
        assert!(parent_from_metadata(&metadata(&[("b3", "1")])).is_none());
        assert!(
            parent_from_metadata(&metadata(&[(
                "b3",
                "00000000000000000000000000000000-e457b5a2e4d86bd1"
            )]))
            .is_none()
        );
    }
}
