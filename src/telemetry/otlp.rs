//! OTLP protobuf, written straight from our spans (`opentelemetry/proto/trace/v1/trace.proto`,
//! `collector/trace/v1/trace_service.proto`).
//!
//! A span is encoded as it goes: identity, name and start attributes when it starts, the rest
//! when it ends, into one buffer (protobuf lets fields come in any order). Ended spans are
//! concatenated as `ScopeSpans.spans` records, so an export request is a short prefix (resource
//! and scope, encoded once) in front of bytes that already exist: no per-span objects, no
//! conversion and no re-encoding on the way out.

use crate::wire::{put_len_prefix, put_len_record, put_varint};

/// `Span` fields.
pub mod span {
    pub const TRACE_ID: u32 = 1;
    pub const SPAN_ID: u32 = 2;
    pub const TRACE_STATE: u32 = 3;
    pub const PARENT_SPAN_ID: u32 = 4;
    pub const NAME: u32 = 5;
    pub const KIND: u32 = 6;
    pub const START_TIME: u32 = 7;
    pub const END_TIME: u32 = 8;
    pub const ATTRIBUTES: u32 = 9;
    pub const DROPPED_ATTRIBUTES_COUNT: u32 = 10;
    pub const STATUS: u32 = 15;
    /// `SpanKind`.
    pub const KIND_INTERNAL: u64 = 1;
    pub const KIND_SERVER: u64 = 2;
}

/// `ScopeSpans.spans`.
pub const SCOPE_SPANS_SPAN: u32 = 2;

/// An attribute value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrValue<'a> {
    /// `string_value`.
    Str(&'a str),
    /// `int_value`.
    Int(i64),
    /// `bool_value`.
    Bool(bool),
    /// `double_value`.
    Double(f64),
}

impl<'a> From<&'a str> for AttrValue<'a> {
    fn from(value: &'a str) -> Self {
        Self::Str(value)
    }
}

impl From<i64> for AttrValue<'_> {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

/// Bytes of `value` as a varint.
fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes of a length-delimited record of `len` payload bytes with a one-byte tag.
fn len_record_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Writes a `KeyValue` record as field `field` of the message being written.
pub fn put_attribute(out: &mut Vec<u8>, field: u32, key: &str, value: AttrValue<'_>) {
    // AnyValue: string_value = 1, bool_value = 2, int_value = 3, double_value = 4.
    let any_len = match value {
        AttrValue::Str(s) => len_record_len(s.len()),
        AttrValue::Int(i) => 1 + varint_len(i as u64),
        AttrValue::Bool(_) => 2,
        AttrValue::Double(_) => 9,
    };
    put_len_prefix(
        out,
        field,
        len_record_len(key.len()) + len_record_len(any_len),
    );
    put_len_record(out, 1, key.as_bytes());
    put_len_prefix(out, 2, any_len);
    match value {
        AttrValue::Str(s) => put_len_record(out, 1, s.as_bytes()),
        AttrValue::Int(i) => {
            put_varint(out, 3 << 3);
            put_varint(out, i as u64);
        }
        AttrValue::Bool(b) => {
            put_varint(out, 2 << 3);
            put_varint(out, u64::from(b));
        }
        AttrValue::Double(d) => put_fixed64(out, 4, d.to_bits()),
    }
}

/// Writes a varint (or enum) field.
pub fn put_varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, value);
}

/// Writes a `fixed64` field.
pub fn put_fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    put_varint(out, (u64::from(field) << 3) | 1);
    out.extend_from_slice(&value.to_le_bytes());
}

/// Writes the span's `status` as an error with `message`.
pub fn put_error_status(out: &mut Vec<u8>, message: &str) {
    // Status: message = 2, code = 3 (STATUS_CODE_ERROR = 2).
    put_len_prefix(out, span::STATUS, len_record_len(message.len()) + 2);
    put_len_record(out, 2, message.as_bytes());
    put_varint_field(out, 3, 2);
}

/// The resource and scope every export request carries, encoded once.
#[derive(Debug, Clone)]
pub struct RequestFrame {
    /// `ResourceSpans.resource` record.
    resource: Vec<u8>,
    /// `ScopeSpans.scope` record.
    scope: Vec<u8>,
}

impl RequestFrame {
    /// The frame for a resource with `attributes`, spans from the scope `name`/`version`.
    pub fn new<'a>(
        attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
        name: &str,
        version: &str,
    ) -> Self {
        let mut resource_body = Vec::new();
        for (key, value) in attributes {
            // Resource.attributes = 1.
            put_attribute(&mut resource_body, 1, key, AttrValue::Str(value));
        }
        let mut resource = Vec::new();
        put_len_record(&mut resource, 1, &resource_body);
        let mut scope_body = Vec::new();
        put_len_record(&mut scope_body, 1, name.as_bytes());
        put_len_record(&mut scope_body, 2, version.as_bytes());
        let mut scope = Vec::new();
        put_len_record(&mut scope, 1, &scope_body);
        Self { resource, scope }
    }

    /// An `ExportTraceServiceRequest` around `spans` (concatenated `ScopeSpans.spans` records).
    pub fn request(&self, spans: &[u8]) -> Vec<u8> {
        let scope_spans_len = self.scope.len() + spans.len();
        let resource_spans_len = self.resource.len() + len_record_len(scope_spans_len);
        let mut out = Vec::with_capacity(len_record_len(resource_spans_len));
        // ExportTraceServiceRequest.resource_spans = 1; ResourceSpans.scope_spans = 2.
        put_len_prefix(&mut out, 1, resource_spans_len);
        out.extend_from_slice(&self.resource);
        put_len_prefix(&mut out, 2, scope_spans_len);
        out.extend_from_slice(&self.scope);
        out.extend_from_slice(spans);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths() {
        for (value, len) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), len, "{value}");
            assert_eq!(varint_len(value), len, "{value}");
        }
    }

    #[test]
    fn a_request_decodes_as_otlp() {
        use opentelemetry_proto::tonic::{
            collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value,
        };
        use prost::Message;

        let mut body = Vec::new();
        put_len_record(&mut body, span::TRACE_ID, &[7; 16]);
        put_len_record(&mut body, span::SPAN_ID, &[8; 8]);
        put_len_record(&mut body, span::NAME, b"step log");
        put_varint_field(&mut body, span::KIND, span::KIND_INTERNAL);
        put_fixed64(&mut body, span::START_TIME, 1_000);
        put_attribute(&mut body, span::ATTRIBUTES, "s", AttrValue::Str("v"));
        put_attribute(&mut body, span::ATTRIBUTES, "i", AttrValue::Int(-3));
        put_attribute(&mut body, span::ATTRIBUTES, "b", AttrValue::Bool(true));
        put_attribute(&mut body, span::ATTRIBUTES, "d", AttrValue::Double(-2.5));
        put_error_status(&mut body, "step failed");
        put_fixed64(&mut body, span::END_TIME, 2_000);
        let mut spans = Vec::new();
        put_len_record(&mut spans, SCOPE_SPANS_SPAN, &body);
        put_len_record(&mut spans, SCOPE_SPANS_SPAN, &body);
        let frame = RequestFrame::new([("service.name", "svc")], "scope", "1.2.3");

        let request = ExportTraceServiceRequest::decode(frame.request(&spans).as_slice()).unwrap();
        let resource_spans = &request.resource_spans[0];
        let resource = resource_spans.resource.as_ref().unwrap();
        assert_eq!(resource.attributes[0].key, "service.name");
        let scope_spans = &resource_spans.scope_spans[0];
        let scope = scope_spans.scope.as_ref().unwrap();
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("scope", "1.2.3")
        );
        assert_eq!(scope_spans.spans.len(), 2);
        let span = &scope_spans.spans[0];
        assert_eq!(span.trace_id, vec![7; 16]);
        assert_eq!(span.name, "step log");
        assert_eq!(span.kind, 1);
        assert_eq!(
            (span.start_time_unix_nano, span.end_time_unix_nano),
            (1_000, 2_000)
        );
        let values: Vec<_> = span
            .attributes
            .iter()
            .map(|kv| kv.value.as_ref().and_then(|v| v.value.clone()))
            .collect();
        assert_eq!(
            values,
            [
                Some(Value::StringValue("v".into())),
                Some(Value::IntValue(-3)),
                Some(Value::BoolValue(true)),
                Some(Value::DoubleValue(-2.5)),
            ]
        );
        let status = span.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (2, "step failed"));
    }

    #[test]
    fn negative_ints_take_ten_bytes_as_protobuf_says() {
        let mut out = Vec::new();
        put_attribute(&mut out, 9, "k", AttrValue::Int(-1));
        // tag, len, key record (3), value tag, value len, int tag, 10 bytes.
        assert_eq!(out.len(), 2 + 3 + 2 + 1 + 10);
        assert_eq!(out[1] as usize, out.len() - 2);
    }
}
