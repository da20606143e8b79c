//! The caller's trace context from gRPC metadata: W3C `traceparent`/`tracestate` (Tyk's
//! default), else B3 single (`b3`) or multi (`x-b3-*`) headers. Tyk 5.11+ sends the gateway's
//! context there; it never puts one inside the Object. OpenTelemetry's propagators read them.

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanContext, TraceContextExt, TraceFlags},
};
use opentelemetry_propagator_b3::{B3Encoding, Propagator as B3Propagator};
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
    // The propagators are asked only when their headers are there: most calls carry one
    // context or none, and an extraction costs a `Context`.
    if extractor.get("traceparent").is_some()
        && let Some(parent) = extract(&TraceContextPropagator::new(), &extractor)
    {
        return Some(parent);
    }
    if extractor.get("b3").is_none() && extractor.get("x-b3-traceid").is_none() {
        return None;
    }
    // The B3 propagator reads the sampling state as its injection encoding allows: with the
    // single header's, `b3: …-d` (debug) is understood but the legacy `x-b3-sampled: true` is
    // refused, and the other way round with the multiple headers' encoding. A caller may send
    // either, so the second reading is tried when the first finds nothing.
    let parent = extract(
        &B3Propagator::with_encoding(B3Encoding::SingleHeader),
        &extractor,
    )
    .or_else(|| extract(&B3Propagator::new(), &extractor))?;
    Some(w3c_flags(parent))
}

fn extract(
    propagator: &impl TextMapPropagator,
    extractor: &MetadataExtractor<'_>,
) -> Option<SpanContext> {
    let cx = propagator.extract_with_context(&Context::new(), extractor);
    let parent = cx.span().span_context().clone();
    parent.is_valid().then_some(parent)
}

/// B3's debug flag, which implies sampling, as the sampled flag; its "deferred" flag (no
/// sampling state sent) as not sampled. Only the sampled flag exists in W3C trace flags, and
/// the sampler reads that one.
fn w3c_flags(parent: SpanContext) -> SpanContext {
    const B3_DEBUG: TraceFlags = TraceFlags::new(0x04);
    let flags = parent.trace_flags();
    let sampled = flags.is_sampled() || flags & B3_DEBUG == B3_DEBUG;
    SpanContext::new(
        parent.trace_id(),
        parent.span_id(),
        if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        parent.trace_state().clone(),
    )
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
    fn b3_sampling_states() {
        let sampled = |pairs: &[(&'static str, &str)]| {
            let parent = parent_from_metadata(&metadata(pairs)).unwrap();
            assert_eq!(parent.span_id().to_string(), "e457b5a2e4d86bd1");
            assert!(parent.is_remote());
            parent.is_sampled()
        };
        let single = |state: &str| {
            sampled(&[(
                "b3",
                &format!("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1{state}"),
            )])
        };
        // Debug implies sampled; no state (deferred) is a context without a decision.
        assert!(single("-d"));
        assert!(single("-1"));
        assert!(!single("-0"));
        assert!(!single(""));
        let multi = |extra: &[(&'static str, &str)]| {
            let mut pairs = vec![
                ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ];
            pairs.extend_from_slice(extra);
            sampled(&pairs)
        };
        // The legacy `true`/`false` are accepted as B3 asks.
        assert!(multi(&[("x-b3-sampled", "true")]));
        assert!(!multi(&[("x-b3-sampled", "false")]));
        assert!(multi(&[("x-b3-sampled", "1")]));
        assert!(multi(&[("x-b3-flags", "1")]));
        assert!(!multi(&[]));
        // A single header that does not parse leaves the multiple headers to be read.
        assert!(multi(&[("b3", "not-a-context"), ("x-b3-sampled", "1")]));
        // Only the sampled bit of W3C's trace flags is set, whatever B3 said.
        let debug = parent_from_metadata(&metadata(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d",
        )]))
        .unwrap();
        assert_eq!(debug.trace_flags(), TraceFlags::SAMPLED);
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
        assert!(
            parent_from_metadata(&metadata(&[
                ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
                ("x-b3-spanid", "0000000000000000"),
            ]))
            .is_none()
        );
        assert!(
            parent_from_metadata(&metadata(&[
                ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
                ("x-b3-sampled", "maybe"),
            ]))
            .is_none()
        );
    }
}
