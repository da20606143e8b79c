//! Reading and editing protobuf wire bytes without decoding whole messages.
//!
//! The Dispatch hot path needs three things from an Object (hook type, hook name, API ID) and
//! otherwise sends the request's own bytes back. [`scan_object`] reads just those by walking the
//! top-level records and skipping everything else by length, so a 64 MiB body is never copied
//! or UTF-8 checked. Edits copy the records they do not touch byte for byte, so fields our
//! schema does not know survive at every level.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

/// The deepest nesting of messages and groups the server walks. The request message itself is
/// level 1, each sub-message or group inside it one level more; a record past this is refused
/// as [`WireError::TooDeep`] before anything else looks at the call.
///
/// Tyk's deepest Object path is 5 levels (Object, `session`, an `access_rights` entry,
/// `AccessDefinition`, `AccessSpec`). 64 leaves room for future schema growth yet stays below
/// prost's own recursion limit (100), so prost never refuses what the scan let through, and the
/// walks never need more than a few kilobytes of a worker's stack: groups are skipped with a
/// fixed array, not recursion, and known sub-messages are walked along the schema's fixed depth.
pub const MAX_DEPTH: usize = 64;

/// Field numbers of `coprocess.Object` and its nested messages that the server reads or edits.
pub mod field {
    /// `Object.hook_type`
    pub const HOOK_TYPE: u32 = 1;
    /// `Object.hook_name`
    pub const HOOK_NAME: u32 = 2;
    /// `Object.request` (`MiniRequestObject`)
    pub const REQUEST: u32 = 3;
    /// `Object.session` (`SessionState`)
    pub const SESSION: u32 = 4;
    /// `Object.metadata`
    pub const METADATA: u32 = 5;
    /// `Object.spec`
    pub const SPEC: u32 = 6;
    /// `Object.response` (`ResponseObject`)
    pub const RESPONSE: u32 = 7;
    /// `MiniRequestObject.body`
    pub const REQUEST_BODY: u32 = 4;
    /// `ResponseObject.body`
    pub const RESPONSE_BODY: u32 = 3;
    /// `Event.payload`
    pub const EVENT_PAYLOAD: u32 = 1;
    /// Key and value of a map entry.
    pub const MAP_KEY: u32 = 1;
    /// Key and value of a map entry.
    pub const MAP_VALUE: u32 = 2;
}

/// Why a buffer is not a well-formed protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A varint ran past the end of the buffer or over ten bytes.
    #[error("malformed varint at byte {0}")]
    Varint(usize),
    /// A record's length or fixed-size value runs past the end of its message.
    #[error("record at byte {at} needs {needed} bytes but only {left} remain")]
    Truncated {
        /// Offset of the record.
        at: usize,
        /// Bytes the record declares.
        needed: u64,
        /// Bytes left in the message.
        left: usize,
    },
    /// A wire type that protobuf does not define (6 or 7), or a stray end-group.
    #[error("invalid wire type {wire_type} at byte {at}")]
    WireType {
        /// Offset of the tag.
        at: usize,
        /// The wire type found.
        wire_type: u8,
    },
    /// Groups or messages nested deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {limit} levels at byte {at}")]
    TooDeep {
        /// Offset of the record that opens the level too many.
        at: usize,
        /// The bound ([`MAX_DEPTH`]).
        limit: usize,
    },
    /// Field number zero, which protobuf forbids.
    #[error("field number 0 at byte {0}")]
    FieldZero(usize),
    /// A known field arrived with a wire type its schema does not allow.
    #[error("field {field} of {message} has wire type {wire_type}, expected {expected}")]
    UnexpectedType {
        /// The message holding the field.
        message: &'static str,
        /// The field number.
        field: u32,
        /// The wire type found.
        wire_type: u8,
        /// The wire type the schema has.
        expected: u8,
    },
    /// A string field that is not UTF-8.
    #[error("field {field} of {message} is not valid UTF-8")]
    Utf8 {
        /// The message holding the field.
        message: &'static str,
        /// The field number.
        field: u32,
    },
}

/// Protobuf wire types.
pub mod wire_type {
    /// int32, int64, uint*, sint*, bool, enum
    pub const VARINT: u8 = 0;
    /// fixed64, sfixed64, double
    pub const I64: u8 = 1;
    /// string, bytes, messages, packed repeated fields
    pub const LEN: u8 = 2;
    /// Deprecated group start.
    pub const SGROUP: u8 = 3;
    /// Deprecated group end.
    pub const EGROUP: u8 = 4;
    /// fixed32, sfixed32, float
    pub const I32: u8 = 5;
}

/// One record (tag + value) of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Field number.
    pub field: u32,
    /// Wire type.
    pub wire_type: u8,
    /// The varint value for varint records; 0 otherwise.
    pub varint: u64,
    /// The payload of a length-delimited record; empty otherwise.
    pub payload: &'a [u8],
    /// Where the whole record (tag included) sits in the message.
    pub span: Range<usize>,
}

/// Iterates over the top-level records of one message.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
    /// Nesting level of the message walked (1: the request itself), so groups inside it are
    /// bounded by what is left of [`MAX_DEPTH`].
    depth: usize,
}

impl<'a> Records<'a> {
    /// Reads the records of `buf`, one encoded message at the top level.
    pub fn new(buf: &'a [u8]) -> Self {
        Self::at_depth(buf, 1)
    }

    /// Reads the records of `buf`, a message nested at level `depth` (1 is the top level).
    pub fn at_depth(buf: &'a [u8], depth: usize) -> Self {
        Self {
            buf,
            pos: 0,
            failed: false,
            // Level 0 would let one group more in than the stack in `skip_group` holds.
            depth: depth.max(1),
        }
    }

    fn read_varint(&mut self) -> Result<u64, WireError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(WireError::Varint(start));
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Varint(start))
    }

    fn take(&mut self, at: usize, len: u64) -> Result<&'a [u8], WireError> {
        let left = self.buf.len() - self.pos;
        if len > left as u64 {
            return Err(WireError::Truncated {
                at,
                needed: len,
                left,
            });
        }
        let start = self.pos;
        // Checked above: len fits in the buffer, so it fits in usize.
        self.pos += len as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn read_tag(&mut self) -> Result<(u32, u8), WireError> {
        let at = self.pos;
        let tag = self.read_varint()?;
        let field = u32::try_from(tag >> 3).map_err(|_| WireError::Varint(at))?;
        if field == 0 {
            return Err(WireError::FieldZero(at));
        }
        Ok((field, (tag & 7) as u8))
    }

    /// Skips a group's records up to and including its end tag.
    ///
    /// Nested groups are tracked in a fixed array rather than by recursion: a few kilobytes of
    /// start-group tags once took the whole process down with a stack overflow.
    fn skip_group(&mut self, at: usize, field: u32) -> Result<(), WireError> {
        // Field numbers of the groups still open, innermost last.
        let mut open = [0u32; MAX_DEPTH];
        let mut count = 0;
        let mut opening = Some((at, field));
        loop {
            if let Some((tag_at, field)) = opening.take() {
                // `depth + count` is the level of the records being read; a group adds one.
                if self.depth + count >= MAX_DEPTH {
                    return Err(WireError::TooDeep {
                        at: tag_at,
                        limit: MAX_DEPTH,
                    });
                }
                open[count] = field;
                count += 1;
            }
            if self.pos >= self.buf.len() {
                return Err(WireError::Truncated {
                    at,
                    needed: 1,
                    left: 0,
                });
            }
            let tag_at = self.pos;
            let (inner, wire_type) = self.read_tag()?;
            match wire_type {
                wire_type::EGROUP if inner == open[count - 1] => {
                    count -= 1;
                    if count == 0 {
                        return Ok(());
                    }
                }
                wire_type::SGROUP => opening = Some((tag_at, inner)),
                _ => self.skip_scalar(at, wire_type)?,
            }
        }
    }

    /// Skips the value of a record that is not a group start.
    fn skip_scalar(&mut self, at: usize, wt: u8) -> Result<(), WireError> {
        match wt {
            wire_type::VARINT => self.read_varint().map(drop),
            wire_type::I64 => self.take(at, 8).map(drop),
            wire_type::I32 => self.take(at, 4).map(drop),
            wire_type::LEN => {
                let len = self.read_varint()?;
                self.take(at, len).map(drop)
            }
            _ => Err(WireError::WireType { at, wire_type: wt }),
        }
    }

    fn next_record(&mut self) -> Result<Record<'a>, WireError> {
        let at = self.pos;
        let (field, wt) = self.read_tag()?;
        let mut record = Record {
            field,
            wire_type: wt,
            varint: 0,
            payload: &[],
            span: at..at,
        };
        match wt {
            wire_type::VARINT => record.varint = self.read_varint()?,
            wire_type::LEN => {
                let len = self.read_varint()?;
                record.payload = self.take(at, len)?;
            }
            wire_type::SGROUP => self.skip_group(at, field)?,
            _ => self.skip_scalar(at, wt)?,
        }
        record.span.end = self.pos;
        Ok(record)
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let record = self.next_record();
        self.failed = record.is_err();
        Some(record)
    }
}

/// Checks that every top-level record of `buf` is well framed.
///
/// # Errors
/// The first framing error found.
#[cfg(test)]
pub fn check_framing(buf: &[u8]) -> Result<(), WireError> {
    Records::new(buf).try_for_each(|record| record.map(drop))
}

fn expect_type(record: &Record<'_>, message: &'static str, expected: u8) -> Result<(), WireError> {
    if record.wire_type == expected {
        Ok(())
    } else {
        Err(WireError::UnexpectedType {
            message,
            field: record.field,
            wire_type: record.wire_type,
            expected,
        })
    }
}

fn utf8<'a>(bytes: &'a [u8], message: &'static str, field: u32) -> Result<&'a str, WireError> {
    std::str::from_utf8(bytes).map_err(|_| WireError::Utf8 { message, field })
}

/// What the hot path needs to know about an Object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectSummary<'a> {
    /// `hook_type`, raw (it may be a value our enum lacks).
    pub hook_type: i32,
    /// `hook_name`.
    pub hook_name: &'a str,
    /// `spec["APIID"]`, if present.
    pub api_id: Option<&'a str>,
    /// `spec["OrgID"]`, if present.
    pub org_id: Option<&'a str>,
    /// `spec["config_data"]` (the API's plugin settings as JSON), if present.
    pub config_data: Option<&'a str>,
}

/// Reads hook type, hook name, API/org IDs and `config_data` from an encoded Object.
///
/// Checks the framing of the Object and of its request, session and response messages on the
/// way, so malformed input is refused without a full decode.
///
/// # Errors
/// A [`WireError`] naming the first malformed record.
pub fn scan_object(buf: &[u8]) -> Result<ObjectSummary<'_>, WireError> {
    const MESSAGE: &str = "Object";
    let mut summary = ObjectSummary::default();
    for record in Records::new(buf) {
        let record = record?;
        match record.field {
            field::HOOK_TYPE => {
                expect_type(&record, MESSAGE, wire_type::VARINT)?;
                // Enums are int32 on the wire; protobuf truncates wider values the same way.
                summary.hook_type = record.varint as i32;
            }
            field::HOOK_NAME => {
                expect_type(&record, MESSAGE, wire_type::LEN)?;
                summary.hook_name = utf8(record.payload, MESSAGE, record.field)?;
            }
            field::SPEC => {
                expect_type(&record, MESSAGE, wire_type::LEN)?;
                let (key, value) = map_entry(record.payload, "Object.spec")?;
                match key {
                    b"APIID" => summary.api_id = Some(utf8(value, "Object.spec", 2)?),
                    b"OrgID" => summary.org_id = Some(utf8(value, "Object.spec", 2)?),
                    b"config_data" => {
                        summary.config_data = Some(utf8(value, "Object.spec", 2)?);
                    }
                    _ => {}
                }
            }
            field::REQUEST | field::SESSION | field::RESPONSE | field::METADATA => {
                expect_type(&record, MESSAGE, wire_type::LEN)?;
                let shape = Shape::Object.child(record.field).unwrap_or(Shape::Leaf);
                check_tree(record.payload, shape, 2)?;
            }
            _ => {}
        }
    }
    Ok(summary)
}

/// Messages of Tyk's schema, by what they hold, so the scan can walk every level that prost
/// would decode: prost skips unknown groups inside any of them, and only a scan that checked
/// each one keeps that skip within [`MAX_DEPTH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Object,
    Request,
    ReturnOverrides,
    Response,
    Session,
    /// An `access_rights` entry, whose value is an `AccessDefinition`.
    AccessEntry,
    AccessDefinition,
    /// A message without sub-messages: map entries of strings, `Header`, `AccessSpec`,
    /// `BasicAuthData`, `JWTData`, `Monitor`.
    Leaf,
}

impl Shape {
    /// The shape of field `number`, when that field holds a message (or map entries).
    fn child(self, number: u32) -> Option<Self> {
        let children: &[(u32, Self)] = match self {
            Self::Object => &[
                (field::REQUEST, Self::Request),
                (field::SESSION, Self::Session),
                (field::METADATA, Self::Leaf),
                (field::SPEC, Self::Leaf),
                (field::RESPONSE, Self::Response),
            ],
            // headers, set_headers, params, add_params, extended_params; return_overrides
            Self::Request => &[
                (1, Self::Leaf),
                (2, Self::Leaf),
                (6, Self::Leaf),
                (7, Self::Leaf),
                (8, Self::Leaf),
                (10, Self::ReturnOverrides),
            ],
            // headers
            Self::ReturnOverrides => &[(3, Self::Leaf)],
            // headers, multivalue_headers
            Self::Response => &[(4, Self::Leaf), (5, Self::Leaf)],
            // access_rights, oauth_keys, basic_auth_data, jwt_data, monitor, metadata
            Self::Session => &[
                (10, Self::AccessEntry),
                (13, Self::Leaf),
                (14, Self::Leaf),
                (15, Self::Leaf),
                (21, Self::Leaf),
                (23, Self::Leaf),
            ],
            Self::AccessEntry => &[(field::MAP_VALUE, Self::AccessDefinition)],
            // allowed_urls
            Self::AccessDefinition => &[(4, Self::Leaf)],
            Self::Leaf => &[],
        };
        children
            .iter()
            .find(|(n, _)| *n == number)
            .map(|&(_, shape)| shape)
    }
}

/// Checks the framing of `buf`, a `shape` message at level `depth`, and of every sub-message
/// the schema gives it. The recursion follows the schema (five levels at most), never the
/// input; groups inside are bounded by [`Records`].
fn check_tree(buf: &[u8], shape: Shape, depth: usize) -> Result<(), WireError> {
    for record in Records::at_depth(buf, depth) {
        let record = record?;
        // A message field with another wire type is prost's to refuse; nothing to walk here.
        if record.wire_type != wire_type::LEN {
            continue;
        }
        if let Some(child) = shape.child(record.field) {
            check_tree(record.payload, child, depth + 1)?;
        }
    }
    Ok(())
}

/// Splits one `map<string, string>` entry of a top-level map field (level 2) into key and value
/// bytes (last one wins, as in protobuf).
///
/// # Errors
/// Malformed framing or wire types.
pub fn map_entry<'a>(
    entry: &'a [u8],
    message: &'static str,
) -> Result<(&'a [u8], &'a [u8]), WireError> {
    let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
    for record in Records::at_depth(entry, 2) {
        let record = record?;
        match record.field {
            field::MAP_KEY => {
                expect_type(&record, message, wire_type::LEN)?;
                key = record.payload;
            }
            field::MAP_VALUE => {
                expect_type(&record, message, wire_type::LEN)?;
                value = record.payload;
            }
            _ => {}
        }
    }
    Ok((key, value))
}

/// Reads `Event.payload` from an encoded Event, as bytes: the server decides what to make of
/// text that is not UTF-8 or not JSON.
///
/// # Errors
/// Malformed framing.
pub fn scan_event(buf: &[u8]) -> Result<&[u8], WireError> {
    let mut payload: &[u8] = &[];
    for record in Records::new(buf) {
        let record = record?;
        if record.field == field::EVENT_PAYLOAD {
            expect_type(&record, "Event", wire_type::LEN)?;
            payload = record.payload;
        }
    }
    Ok(payload)
}

/// Appends a varint.
pub fn put_varint(out: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Appends a length-delimited record.
pub fn put_len_record(out: &mut impl BufMut, field: u32, payload: &[u8]) {
    put_len_prefix(out, field, payload.len());
    out.put_slice(payload);
}

/// Writes the tag and length of a length-delimited record whose `len` payload bytes follow.
pub fn put_len_prefix(out: &mut impl BufMut, field: u32, len: usize) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type::LEN));
    put_varint(out, len as u64);
}

/// How one record of a message is to be rewritten.
#[derive(Debug)]
pub enum Edit {
    /// Copy it unchanged.
    Keep,
    /// Leave it out.
    Drop,
    /// Replace it with a length-delimited record of the same field and this payload.
    Replace(Vec<u8>),
}

/// Copies `buf` record by record, asking `edit` about each; records it keeps are copied byte
/// for byte. Returns `None` when `edit` kept everything, so callers can reuse the original.
///
/// # Errors
/// Malformed framing.
pub fn rewrite(
    buf: &[u8],
    edit: impl FnMut(&Record<'_>) -> Result<Edit, WireError>,
) -> Result<Option<BytesMut>, WireError> {
    rewrite_at(buf, 1, edit)
}

/// [`rewrite`] of a message nested at level `depth` (see [`Records::at_depth`]).
///
/// # Errors
/// Malformed framing.
pub fn rewrite_at(
    buf: &[u8],
    depth: usize,
    mut edit: impl FnMut(&Record<'_>) -> Result<Edit, WireError>,
) -> Result<Option<BytesMut>, WireError> {
    let mut out: Option<BytesMut> = None;
    for record in Records::at_depth(buf, depth) {
        let record = record?;
        let decision = edit(&record)?;
        if matches!(decision, Edit::Keep) && out.is_none() {
            continue;
        }
        let out = out.get_or_insert_with(|| {
            let mut copy = BytesMut::with_capacity(buf.len());
            copy.put_slice(&buf[..record.span.start]);
            copy
        });
        match decision {
            Edit::Keep => out.put_slice(&buf[record.span.clone()]),
            Edit::Drop => {}
            Edit::Replace(payload) => put_len_record(out, record.field, &payload),
        }
    }
    Ok(out)
}

/// Removes the informational `body` strings (`request.body`, `response.body`) from an Object.
///
/// The gateway reads bodies only from `raw_body` and ignores the strings it gets back, so this
/// shrinks a reply by up to half without changing what the gateway does. Returns `None` when the
/// Object has no body string.
///
/// # Errors
/// Malformed framing.
pub fn drop_body_strings(object: &[u8]) -> Result<Option<Bytes>, WireError> {
    let edited = rewrite(object, |record| match record.field {
        field::REQUEST => filter_nested(record.payload, |inner| inner != field::REQUEST_BODY),
        field::RESPONSE => filter_nested(record.payload, |inner| inner != field::RESPONSE_BODY),
        _ => Ok(Edit::Keep),
    })?;
    Ok(edited.map(BytesMut::freeze))
}

/// The edit of a record holding a sub-message of the Object (`message`, at level 2) that keeps
/// only the sub-message's fields `keep` accepts: [`Edit::Keep`] when it accepts them all.
///
/// # Errors
/// Malformed framing.
pub fn filter_nested(message: &[u8], keep: impl Fn(u32) -> bool) -> Result<Edit, WireError> {
    let edited = rewrite_at(message, 2, |inner| {
        Ok(if keep(inner.field) {
            Edit::Keep
        } else {
            Edit::Drop
        })
    })?;
    Ok(edited.map_or(Edit::Keep, |bytes| Edit::Replace(bytes.to_vec())))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pb;
    use prost::Message;

    fn sample() -> pb::Object {
        pb::Object {
            hook_type: pb::HookType::Pre as i32,
            hook_name: "MyPreHook".into(),
            request: Some(pb::MiniRequestObject {
                body: "hello".into(),
                raw_body: b"hello".to_vec().into(),
                url: "/get?a=1".into(),
                ..Default::default()
            }),
            response: Some(pb::ResponseObject {
                status_code: 200,
                body: "ok".into(),
                raw_body: b"ok".to_vec().into(),
                ..Default::default()
            }),
            spec: [("APIID", "api-1"), ("OrgID", "org-1"), ("bundle_hash", "x")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn scan_reads_hook_and_ids_without_decoding() {
        let bytes = sample().encode_to_vec();
        let summary = scan_object(&bytes).expect("valid object");
        assert_eq!(summary.hook_type, 1);
        assert_eq!(summary.hook_name, "MyPreHook");
        assert_eq!(summary.api_id, Some("api-1"));
        assert_eq!(summary.org_id, Some("org-1"));
    }

    #[test]
    fn scan_of_empty_object_gives_defaults() {
        assert_eq!(
            scan_object(&[]).expect("empty is valid"),
            ObjectSummary::default()
        );
    }

    #[test]
    fn scan_refuses_garbage_with_a_position() {
        let err = scan_object(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").unwrap_err();
        assert_eq!(err, WireError::Varint(0));
        let err = scan_object(&[0x1a, 0x05, 0x01]).unwrap_err();
        assert_eq!(
            err,
            WireError::Truncated {
                at: 0,
                needed: 5,
                left: 1
            }
        );
        let err = scan_object(&[0x0f]).unwrap_err();
        assert_eq!(
            err,
            WireError::WireType {
                at: 0,
                wire_type: 7
            }
        );
        assert!(matches!(
            scan_object(&[0x0a, 0x00]),
            Err(WireError::UnexpectedType { .. })
        ));
    }

    #[test]
    fn unknown_fields_and_groups_are_skipped() {
        let mut bytes = sample().encode_to_vec();
        // field 99 varint, field 100 fixed32, field 101 group containing a varint
        bytes.extend_from_slice(&[0x98, 0x06, 0x2a]);
        bytes.extend_from_slice(&[0xa5, 0x06, 1, 2, 3, 4]);
        bytes.extend_from_slice(&[0xab, 0x06, 0x08, 0x01, 0xac, 0x06]);
        let summary = scan_object(&bytes).expect("unknown fields are fine");
        assert_eq!(summary.hook_name, "MyPreHook");
        assert_eq!(
            Records::new(&bytes).count(),
            Records::new(&sample().encode_to_vec()).count() + 3
        );
    }

    #[test]
    fn dropping_body_strings_keeps_everything_else() {
        let mut bytes = sample().encode_to_vec();
        bytes.extend_from_slice(&[0x98, 0x06, 0x2a]); // unknown field 99 survives
        let dropped = drop_body_strings(&bytes)
            .expect("valid")
            .expect("had bodies");
        assert!(dropped.ends_with(&[0x98, 0x06, 0x2a]));
        let decoded = pb::Object::decode(dropped).expect("still a valid Object");
        let mut expected = sample();
        expected.request.as_mut().expect("request").body.clear();
        expected.response.as_mut().expect("response").body.clear();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn dropping_body_strings_is_a_no_op_without_them() {
        let mut object = sample();
        object.request.as_mut().expect("request").body.clear();
        object.response = None;
        assert_eq!(
            drop_body_strings(&object.encode_to_vec()).expect("valid"),
            None
        );
    }

    #[test]
    fn event_payload_is_read_as_bytes() {
        let bytes = pb::Event {
            payload: "{\"a\":1}".into(),
        }
        .encode_to_vec();
        assert_eq!(scan_event(&bytes).expect("valid"), b"{\"a\":1}");
        // Not UTF-8: still readable, the caller decides.
        assert_eq!(
            scan_event(&[0x0a, 0x01, 0xff]).expect("valid framing"),
            &[0xff]
        );
    }

    /// `groups` groups of field 15 nested in one another, well formed: inside a message at level
    /// `n` they reach level `n + groups`.
    pub(crate) fn nested_groups(groups: usize) -> Vec<u8> {
        let mut bytes = vec![0x7b; groups];
        bytes.resize(2 * groups, 0x7c);
        bytes
    }

    #[test]
    fn groups_nested_up_to_the_bound_are_accepted_by_the_scan_and_prost() {
        let bytes = nested_groups(MAX_DEPTH - 1);
        assert_eq!(scan_object(&bytes), Ok(ObjectSummary::default()));
        assert_eq!(scan_event(&bytes), Ok(&[][..]));
        assert_eq!(Records::new(&bytes).count(), 1);
        assert_eq!(
            pb::Object::decode(bytes.as_slice()).expect("within prost's limit too"),
            pb::Object::default()
        );
    }

    #[test]
    fn groups_nested_past_the_bound_are_refused_at_the_tag_too_many() {
        let bytes = nested_groups(MAX_DEPTH);
        let expected = WireError::TooDeep {
            at: MAX_DEPTH - 1,
            limit: MAX_DEPTH,
        };
        assert_eq!(scan_object(&bytes), Err(expected.clone()));
        assert_eq!(scan_event(&bytes), Err(expected.clone()));
        assert_eq!(check_framing(&bytes), Err(expected.clone()));
        assert_eq!(drop_body_strings(&bytes), Err(expected.clone()));
        assert_eq!(
            expected.to_string(),
            "nesting deeper than 64 levels at byte 63"
        );
    }

    #[test]
    fn twenty_thousand_open_groups_are_refused_without_recursion() {
        // The report: start-group tags of field 1, never closed (and closed: same answer).
        let open = vec![0x0b; 20_000];
        let mut closed = open.clone();
        closed.resize(40_000, 0x0c);
        for bytes in [&open, &closed] {
            let expected = WireError::TooDeep { at: 63, limit: 64 };
            assert_eq!(scan_object(bytes), Err(expected.clone()));
            assert_eq!(scan_event(bytes), Err(expected.clone()));
            assert_eq!(
                rewrite(bytes, |_| Ok(Edit::Drop)).map(|_| ()),
                Err(expected)
            );
        }
        // prost's own limit (100) holds for groups of a field it does not know.
        let err = pb::Object::decode(nested_groups(20_000).as_slice()).unwrap_err();
        assert!(err.to_string().contains("recursion limit reached"), "{err}");
    }

    #[test]
    fn a_group_left_open_or_closed_by_another_field_is_still_malformed() {
        assert_eq!(
            scan_object(&[0x7b, 0x7b, 0x7c]),
            Err(WireError::Truncated {
                at: 0,
                needed: 1,
                left: 0
            })
        );
        // Field 15 opened, field 14 closed.
        assert_eq!(
            scan_object(&[0x7b, 0x74]),
            Err(WireError::WireType {
                at: 0,
                wire_type: 4
            })
        );
    }

    /// An Object whose `request.return_overrides.headers` entry (level 4) holds `groups` nested
    /// groups.
    fn deep_in_return_overrides(groups: usize) -> Vec<u8> {
        let mut entry = Vec::new();
        put_len_record(&mut entry, field::MAP_KEY, b"X-A");
        entry.extend_from_slice(&nested_groups(groups));
        let mut overrides = Vec::new();
        put_len_record(&mut overrides, 3, &entry);
        let mut request = Vec::new();
        put_len_record(&mut request, 10, &overrides);
        let mut object = Vec::new();
        put_len_record(&mut object, field::REQUEST, &request);
        object
    }

    #[test]
    fn the_scan_walks_every_level_prost_decodes_and_counts_the_levels_above() {
        let at_bound = deep_in_return_overrides(MAX_DEPTH - 4);
        assert_eq!(scan_object(&at_bound), Ok(ObjectSummary::default()));
        let decoded = pb::Object::decode(at_bound.as_slice()).expect("valid");
        let overrides = decoded.request.and_then(|r| r.return_overrides);
        assert_eq!(
            overrides.map(|o| o.headers),
            Some([("X-A".to_string(), String::new())].into())
        );
        // One more group is refused, at its offset in the entry (after the 5-byte key).
        assert_eq!(
            scan_object(&deep_in_return_overrides(MAX_DEPTH - 3)),
            Err(WireError::TooDeep {
                at: 5 + MAX_DEPTH - 4,
                limit: MAX_DEPTH
            })
        );
    }

    #[test]
    fn the_deepest_path_of_the_schema_is_walked() {
        // Object > session > access_rights entry > AccessDefinition > AccessSpec (level 5).
        let object = |groups: usize| {
            let mut spec = Vec::new();
            put_len_record(&mut spec, 1, b"/a");
            spec.extend_from_slice(&nested_groups(groups));
            let mut definition = Vec::new();
            put_len_record(&mut definition, 4, &spec);
            let mut entry = Vec::new();
            put_len_record(&mut entry, field::MAP_KEY, b"api");
            put_len_record(&mut entry, field::MAP_VALUE, &definition);
            let mut session = Vec::new();
            put_len_record(&mut session, 10, &entry);
            let mut object = Vec::new();
            put_len_record(&mut object, field::SESSION, &session);
            object
        };
        assert!(scan_object(&object(MAX_DEPTH - 5)).is_ok());
        let decoded = pb::Object::decode(object(MAX_DEPTH - 5).as_slice()).expect("valid");
        let rights = decoded.session.expect("session").access_rights;
        assert_eq!(rights["api"].allowed_urls[0].url, "/a");
        assert!(matches!(
            scan_object(&object(MAX_DEPTH - 4)),
            Err(WireError::TooDeep { limit: 64, .. })
        ));
    }

    #[test]
    fn body_strings_are_dropped_within_the_bound_and_refused_past_it() {
        let object = |groups: usize| {
            let mut request = Vec::new();
            put_len_record(&mut request, field::REQUEST_BODY, b"text");
            request.extend_from_slice(&nested_groups(groups));
            let mut object = Vec::new();
            put_len_record(&mut object, field::REQUEST, &request);
            object
        };
        // The request is level 2.
        let dropped = drop_body_strings(&object(MAX_DEPTH - 2))
            .expect("within the bound")
            .expect("had a body");
        assert!(dropped.ends_with(&nested_groups(MAX_DEPTH - 2)));
        assert!(!dropped.windows(4).any(|w| w == b"text"));
        assert!(matches!(
            drop_body_strings(&object(MAX_DEPTH - 1)),
            Err(WireError::TooDeep { limit: 64, .. })
        ));
    }

    #[test]
    fn records_at_any_level_never_index_past_their_stack() {
        let bytes = nested_groups(MAX_DEPTH - 1);
        // Level 0 is read as level 1.
        assert_eq!(Records::at_depth(&bytes, 0).count(), 1);
        assert!(Records::at_depth(&bytes, 0).all(|r| r.is_ok()));
        // A message already past the bound refuses its first group.
        assert_eq!(
            Records::at_depth(&bytes, MAX_DEPTH + 10).next(),
            Some(Err(WireError::TooDeep {
                at: 0,
                limit: MAX_DEPTH
            }))
        );
    }

    #[test]
    fn varints_round_trip() {
        for value in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            let mut records = Records::new(&buf);
            assert_eq!(records.read_varint().expect("valid"), value);
        }
    }
}
