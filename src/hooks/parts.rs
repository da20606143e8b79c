//! The parts of an Object a step works on, so a hook decodes only what its steps need.
//!
//! Decoding the whole Object (every header and spec entry a string of its own), keeping a copy
//! to compare with and dropping both costs more than three header steps do. A step that says it
//! only touches, say, `request.set_headers` and `request.delete_headers` is handed an Object with
//! just those decoded; the changes it makes are edited into the original bytes as usual, and
//! everything it did not ask for travels untouched.

use bytes::BufMut;

use crate::wire::{self, Records, WireError};

/// `coprocess.Object` field numbers.
const REQUEST: u32 = 3;

/// A set of Object fields (and of `request` fields), as field-number bit masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectParts {
    /// Bit `n`: `Object` field `n` (for `request`, see `request`).
    object: u8,
    /// Bit `n`: `MiniRequestObject` field `n`.
    request: u16,
}

impl ObjectParts {
    /// The whole Object (what a step gets unless it says otherwise).
    pub const ALL: Self = Self {
        object: 0xfe,
        request: 0x7ffe,
    };
    /// Nothing.
    pub const NONE: Self = Self {
        object: 0,
        request: 0,
    };
    /// `hook_type` and `hook_name`.
    pub const HOOK: Self = Self::object_field(1).union(Self::object_field(2));
    /// The whole request.
    pub const REQUEST: Self = Self {
        object: 0,
        request: 0x7ffe,
    };
    /// `request.headers` (what the client sent; read-only for the gateway).
    pub const REQUEST_HEADERS: Self = Self::request_field(1);
    /// `request.set_headers` and `request.delete_headers`.
    pub const REQUEST_HEADER_EDITS: Self = Self::request_field(2).union(Self::request_field(3));
    /// `request.add_params` and `request.delete_params`.
    pub const REQUEST_PARAM_EDITS: Self = Self::request_field(7).union(Self::request_field(9));
    /// `request.url`.
    pub const REQUEST_URL: Self = Self::request_field(5);
    /// `request.method`.
    pub const REQUEST_METHOD: Self = Self::request_field(11);
    /// `request.params` (what the client sent).
    pub const REQUEST_PARAMS: Self = Self::request_field(6);
    /// `request.scheme`.
    pub const REQUEST_SCHEME: Self = Self::request_field(13);
    /// `request.body` and `request.raw_body`.
    pub const REQUEST_BODY: Self = Self::request_field(4).union(Self::request_field(14));
    /// `request.return_overrides`.
    pub const RETURN_OVERRIDES: Self = Self::request_field(10);
    /// `session`.
    pub const SESSION: Self = Self::object_field(4);
    /// `metadata`.
    pub const METADATA: Self = Self::object_field(5);
    /// `spec`.
    pub const SPEC: Self = Self::object_field(6);
    /// `response`.
    pub const RESPONSE: Self = Self::object_field(7);

    const fn object_field(number: u32) -> Self {
        Self {
            object: 1 << number,
            request: 0,
        }
    }

    const fn request_field(number: u32) -> Self {
        Self {
            object: 0,
            request: 1 << number,
        }
    }

    /// Both sets.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self {
            object: self.object | other.object,
            request: self.request | other.request,
        }
    }

    /// Every part not in this set.
    #[must_use]
    pub const fn complement(self) -> Self {
        Self {
            object: Self::ALL.object & !self.object,
            request: Self::ALL.request & !self.request,
        }
    }

    /// Whether this is every part.
    pub fn is_all(self) -> bool {
        self == Self::ALL
    }

    fn has_object_field(self, number: u32) -> bool {
        number < 8 && self.object & (1 << number) != 0
    }

    fn has_request_field(self, number: u32) -> bool {
        number < 16 && self.request & (1 << number) != 0
    }

    /// The records of `object` (an encoded Object) that belong to these parts, appended to
    /// `out`. A request record is always kept when any request part is asked for (possibly
    /// emptied), so a step's request edits land in the original request, not in a second one.
    ///
    /// # Errors
    /// When `object` is not well framed.
    pub fn select(self, object: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        for record in Records::new(object) {
            let record = record?;
            match record.field {
                REQUEST if self.request == Self::REQUEST.request => {
                    out.put_slice(&object[record.span.clone()]);
                }
                REQUEST if self.request != 0 => {
                    // Two passes, length first, so the records go straight into `out`.
                    let mut len = 0;
                    // The request sits at level 2: its groups get what is left of the bound.
                    for inner in Records::at_depth(record.payload, 2) {
                        let inner = inner?;
                        if self.has_request_field(inner.field) {
                            len += inner.span.len();
                        }
                    }
                    wire::put_len_prefix(out, REQUEST, len);
                    for inner in Records::at_depth(record.payload, 2).flatten() {
                        if self.has_request_field(inner.field) {
                            out.put_slice(&record.payload[inner.span]);
                        }
                    }
                }
                REQUEST => {}
                number if self.has_object_field(number) => {
                    out.put_slice(&object[record.span.clone()]);
                }
                // Fields we don't know would not be decoded anyway.
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::pb;

    fn sample() -> pb::Object {
        pb::Object {
            hook_type: pb::HookType::Pre as i32,
            hook_name: "h".into(),
            request: Some(pb::MiniRequestObject {
                headers: [("Accept".to_string(), "*/*".to_string())].into(),
                set_headers: [("X-A".to_string(), "1".to_string())].into(),
                url: "/a".into(),
                method: "GET".into(),
                ..Default::default()
            }),
            spec: [("APIID".to_string(), "api".to_string())].into(),
            ..Default::default()
        }
    }

    fn selected(parts: ObjectParts, object: &pb::Object) -> pb::Object {
        let mut out = Vec::new();
        parts.select(&object.encode_to_vec(), &mut out).unwrap();
        pb::Object::decode(out.as_slice()).unwrap()
    }

    #[test]
    fn all_parts_keep_everything() {
        assert_eq!(selected(ObjectParts::ALL, &sample()), sample());
    }

    #[test]
    fn header_edits_decode_only_those_request_fields() {
        let got = selected(ObjectParts::REQUEST_HEADER_EDITS, &sample());
        let request = got.request.expect("the request is kept, emptied");
        assert_eq!(request.set_headers.len(), 1);
        assert!(request.headers.is_empty() && request.url.is_empty());
        assert!(got.hook_name.is_empty() && got.spec.is_empty());
    }

    #[test]
    fn an_empty_request_is_still_a_request() {
        let mut object = sample();
        object.request.as_mut().unwrap().set_headers.clear();
        let got = selected(ObjectParts::REQUEST_HEADER_EDITS, &object);
        assert_eq!(got.request, Some(pb::MiniRequestObject::default()));
    }

    /// `sample()` with `groups` nested groups of an unknown field in its request (level 2).
    fn with_deep_request(groups: usize) -> Vec<u8> {
        let mut object = sample();
        let mut request = object.request.take().unwrap().encode_to_vec();
        request.extend_from_slice(&wire::tests::nested_groups(groups));
        let mut bytes = object.encode_to_vec();
        wire::put_len_record(&mut bytes, REQUEST, &request);
        bytes
    }

    #[test]
    fn nesting_up_to_the_bound_is_selected() {
        let bytes = with_deep_request(wire::MAX_DEPTH - 2);
        for parts in [ObjectParts::REQUEST_HEADER_EDITS, ObjectParts::ALL] {
            let mut out = Vec::new();
            parts.select(&bytes, &mut out).expect("within the bound");
            let got = pb::Object::decode(out.as_slice()).expect("prost agrees");
            assert_eq!(got.request.expect("request").set_headers.len(), 1);
        }
        // The whole Object at level 1 may hold one group more.
        let mut top = sample().encode_to_vec();
        top.extend_from_slice(&wire::tests::nested_groups(wire::MAX_DEPTH - 1));
        let mut out = Vec::new();
        ObjectParts::SPEC
            .select(&top, &mut out)
            .expect("within the bound");
        assert_eq!(pb::Object::decode(out.as_slice()).unwrap().spec.len(), 1);
    }

    #[test]
    fn nesting_past_the_bound_is_refused_in_the_request_and_at_the_top() {
        let bytes = with_deep_request(wire::MAX_DEPTH - 1);
        let err = ObjectParts::REQUEST_HEADER_EDITS
            .select(&bytes, &mut Vec::new())
            .unwrap_err();
        assert!(
            matches!(err, WireError::TooDeep { limit: 64, .. }),
            "{err:?}"
        );
        let mut top = sample().encode_to_vec();
        let at = top.len() + wire::MAX_DEPTH - 1;
        top.extend_from_slice(&vec![0x0b; 20_000]);
        assert_eq!(
            ObjectParts::HOOK.select(&top, &mut Vec::new()),
            Err(WireError::TooDeep {
                at,
                limit: wire::MAX_DEPTH
            })
        );
    }

    #[test]
    fn unions_combine() {
        let got = selected(
            ObjectParts::SPEC.union(ObjectParts::REQUEST_METHOD),
            &sample(),
        );
        assert_eq!(got.spec.len(), 1);
        assert_eq!(got.request.unwrap().method, "GET");
        assert!(got.hook_name.is_empty());
    }
}
