//! Turns the changes steps made to a decoded Object into edits of the original wire bytes.
//!
//! Only the records of fields that changed are replaced (or dropped); records of fields we do not
//! know, and of fields nobody touched, are copied byte for byte at every nesting level. Replacing
//! rather than appending matters: repeated fields such as `multivalue_headers` would otherwise
//! duplicate, and a replaced `raw_body` would travel twice.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::{
    pb,
    wire::{self, Records, WireError},
};

/// A field's new records (possibly none), or a nested message to edit in place.
enum Change {
    Records(Vec<u8>),
    Nested(Vec<(u32, Change)>),
}

/// Encodes only the listed field of a message: every other field left at its default is
/// omitted by proto3 encoding. The new value is moved, not copied.
macro_rules! field_changes {
    ($old:expr, $new:expr, $ty:ty, [$($number:literal => $field:ident),* $(,)?]) => {{
        let (old, new): (&$ty, &mut $ty) = ($old, $new);
        let mut changes: Vec<(u32, Change)> = Vec::new();
        $(
            if old.$field != new.$field {
                let mut only = <$ty>::default();
                only.$field = std::mem::take(&mut new.$field);
                changes.push(($number, Change::Records(only.encode_to_vec())));
            }
        )*
        changes
    }};
}

fn return_overrides_changes(
    old: &pb::ReturnOverrides,
    mut new: pb::ReturnOverrides,
) -> Vec<(u32, Change)> {
    field_changes!(old, &mut new, pb::ReturnOverrides, [
        1 => response_code, 2 => response_error, 3 => headers, 4 => override_error, 5 => response_body,
    ])
}

fn request_changes(
    old: &pb::MiniRequestObject,
    mut new: pb::MiniRequestObject,
) -> Vec<(u32, Change)> {
    let mut changes = field_changes!(old, &mut new, pb::MiniRequestObject, [
        1 => headers, 2 => set_headers, 3 => delete_headers, 4 => body, 5 => url, 6 => params,
        7 => add_params, 8 => extended_params, 9 => delete_params, 11 => method, 12 => request_uri,
        13 => scheme, 14 => raw_body,
    ]);
    changes.extend(nested(
        10,
        old.return_overrides.as_ref(),
        new.return_overrides.take(),
        return_overrides_changes,
    ));
    changes
}

fn response_changes(old: &pb::ResponseObject, mut new: pb::ResponseObject) -> Vec<(u32, Change)> {
    field_changes!(old, &mut new, pb::ResponseObject, [
        1 => status_code, 2 => raw_body, 3 => body, 4 => headers, 5 => multivalue_headers,
    ])
}

fn session_changes(old: &pb::SessionState, mut new: pb::SessionState) -> Vec<(u32, Change)> {
    field_changes!(old, &mut new, pb::SessionState, [
        1 => last_check, 2 => allowance, 3 => rate, 4 => per, 5 => expires, 6 => quota_max,
        7 => quota_renews, 8 => quota_remaining, 9 => quota_renewal_rate, 10 => access_rights,
        11 => org_id, 12 => oauth_client_id, 13 => oauth_keys, 14 => basic_auth_data, 15 => jwt_data,
        16 => hmac_enabled, 17 => hmac_secret, 18 => is_inactive, 19 => apply_policy_id,
        20 => data_expires, 21 => monitor, 22 => enable_detailed_recording, 23 => metadata, 24 => tags,
        25 => alias, 26 => last_updated, 27 => id_extractor_deadline, 28 => session_lifetime,
        29 => apply_policies, 30 => certificate, 31 => max_query_depth, 32 => key_id,
        33 => post_expiry_action, 34 => post_expiry_grace_period,
    ])
}

/// The change of a nested message field, if any: edited in place when both sides exist,
/// otherwise added or removed whole. Each field is compared once, here, not first as a whole.
fn nested<T: Message + Default>(
    number: u32,
    old: Option<&T>,
    new: Option<T>,
    changes: fn(&T, T) -> Vec<(u32, Change)>,
) -> Option<(u32, Change)> {
    match (old, new) {
        (None, None) => None,
        (Some(old), Some(new)) => {
            let inner = changes(old, new);
            (!inner.is_empty()).then_some((number, Change::Nested(inner)))
        }
        (None, Some(new)) => {
            let mut out = Vec::new();
            wire::put_len_record(&mut out, number, &new.encode_to_vec());
            Some((number, Change::Records(out)))
        }
        (Some(_), None) => Some((number, Change::Records(Vec::new()))),
    }
}

/// Applies `changes` to the message `original`, nested at level `depth` (1: the Object): the
/// first record of a changed field is replaced by its new records, later ones dropped; fields
/// absent before are appended. Recursion follows `changes` (the schema), not the input.
fn apply(original: &[u8], depth: usize, changes: &[(u32, Change)]) -> Result<BytesMut, WireError> {
    let mut out = BytesMut::with_capacity(original.len() + added_len(changes));
    // Which changes were written, by index (a message has fewer than 64 fields we know).
    let mut done: u64 = 0;
    // A nested message may arrive split over several records (protobuf merges them): gather
    // its payload first (borrowed in the usual case of one record).
    let any_nested = changes.iter().any(|(_, c)| matches!(c, Change::Nested(_)));
    let mut nested_payloads: Vec<Cow<'_, [u8]>> = if any_nested {
        vec![Cow::Borrowed(&[]); changes.len()]
    } else {
        Vec::new()
    };
    for record in Records::at_depth(original, depth).take_while(|_| any_nested) {
        let record = record?;
        if let Some(i) = changes
            .iter()
            .position(|(n, c)| *n == record.field && matches!(c, Change::Nested(_)))
        {
            if nested_payloads[i].is_empty() {
                nested_payloads[i] = Cow::Borrowed(record.payload);
            } else {
                nested_payloads[i]
                    .to_mut()
                    .extend_from_slice(record.payload);
            }
        }
    }
    for record in Records::at_depth(original, depth) {
        let record = record?;
        match changes
            .iter()
            .position(|(number, _)| *number == record.field)
        {
            None => out.put_slice(&original[record.span.clone()]),
            Some(i) if done & (1 << i) != 0 => {}
            Some(i) => {
                done |= 1 << i;
                let nested_original = nested_payloads.get(i).map_or(&[][..], |p| &p[..]);
                emit(&mut out, depth, &changes[i], nested_original)?;
            }
        }
    }
    for (i, change) in changes.iter().enumerate() {
        if done & (1 << i) == 0 {
            emit(&mut out, depth, change, &[])?;
        }
    }
    Ok(out)
}

/// At most how much `changes` add to a message (new records; longer length prefixes).
fn added_len(changes: &[(u32, Change)]) -> usize {
    changes
        .iter()
        .map(|(_, change)| match change {
            Change::Records(bytes) => bytes.len(),
            Change::Nested(inner) => added_len(inner) + 10,
        })
        .sum()
}

fn emit(
    out: &mut BytesMut,
    depth: usize,
    (number, change): &(u32, Change),
    nested_original: &[u8],
) -> Result<(), WireError> {
    match change {
        Change::Records(bytes) => out.put_slice(bytes),
        Change::Nested(changes) => {
            let inner = apply(nested_original, depth + 1, changes)?;
            wire::put_len_record(out, *number, &inner);
        }
    }
    Ok(())
}

/// The reply for an Object that steps changed from `old` to `new`, made by editing `original`
/// (the request's bytes). `None` when nothing changed.
///
/// # Errors
/// When `original` is not well framed (it was scanned before, so this does not happen).
pub fn reply_bytes(
    original: &[u8],
    old: &pb::Object,
    mut new: pb::Object,
) -> Result<Option<Bytes>, WireError> {
    let mut changes = field_changes!(old, &mut new, pb::Object, [
        1 => hook_type, 2 => hook_name, 5 => metadata, 6 => spec,
    ]);
    changes.extend(nested(
        3,
        old.request.as_ref(),
        new.request.take(),
        request_changes,
    ));
    changes.extend(nested(
        4,
        old.session.as_ref(),
        new.session.take(),
        session_changes,
    ));
    changes.extend(nested(
        7,
        old.response.as_ref(),
        new.response.take(),
        response_changes,
    ));
    if changes.is_empty() {
        return Ok(None);
    }
    Ok(Some(apply(original, 1, &changes)?.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> pb::Object {
        pb::Object {
            hook_type: pb::HookType::Response as i32,
            hook_name: "h".into(),
            request: Some(pb::MiniRequestObject {
                url: "/a".into(),
                raw_body: b"body".to_vec().into(),
                return_overrides: Some(pb::ReturnOverrides {
                    response_code: -1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            response: Some(pb::ResponseObject {
                status_code: 200,
                multivalue_headers: vec![pb::Header {
                    key: "Set-Cookie".into(),
                    values: vec!["a=1".into(), "b=2".into()],
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Unknown fields at three levels: Object (99), request (77), return_overrides (55).
    fn with_unknown_fields(object: &pb::Object) -> Vec<u8> {
        let mut request = object.request.clone().unwrap_or_default();
        let overrides = request.return_overrides.take();
        let mut request_bytes = request.encode_to_vec();
        let mut overrides_bytes = overrides.unwrap_or_default().encode_to_vec();
        overrides_bytes.extend_from_slice(&[0xb8, 0x03, 0x07]); // field 55 varint 7
        wire::put_len_record(&mut request_bytes, 10, &overrides_bytes);
        request_bytes.extend_from_slice(&[0xe8, 0x04, 0x05]); // field 77 varint 5
        let mut top = pb::Object {
            request: None,
            ..object.clone()
        }
        .encode_to_vec();
        wire::put_len_record(&mut top, 3, &request_bytes);
        top.extend_from_slice(&[0x98, 0x06, 0x2a]); // field 99 varint 42
        top
    }

    #[test]
    fn nothing_changed_means_no_new_bytes() {
        let object = sample();
        assert!(
            reply_bytes(&object.encode_to_vec(), &object, object.clone())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn edits_keep_unknown_fields_at_every_level() {
        let old = sample();
        let original = with_unknown_fields(&old);
        let mut new = old.clone();
        let request = new.request.as_mut().unwrap();
        request.set_headers.insert("X-Added".into(), "1".into());
        request.return_overrides.as_mut().unwrap().response_code = 403;
        let reply = reply_bytes(&original, &old, new.clone()).unwrap().unwrap();
        let decoded = pb::Object::decode(reply.clone()).unwrap();
        assert_eq!(decoded, new);
        for unknown in [
            &[0x98u8, 0x06, 0x2a][..],
            &[0xe8, 0x04, 0x05],
            &[0xb8, 0x03, 0x07],
        ] {
            assert!(
                reply.windows(unknown.len()).any(|w| w == unknown),
                "lost {unknown:?}"
            );
        }
    }

    #[test]
    fn repeated_fields_are_replaced_not_appended() {
        let old = sample();
        let original = old.encode_to_vec();
        let mut new = old.clone();
        new.response.as_mut().unwrap().multivalue_headers[0]
            .values
            .push("c=3".into());
        let reply = reply_bytes(&original, &old, new.clone()).unwrap().unwrap();
        let decoded = pb::Object::decode(reply).unwrap();
        assert_eq!(
            decoded.response.unwrap().multivalue_headers,
            new.response.unwrap().multivalue_headers
        );
    }

    #[test]
    fn a_replaced_raw_body_travels_once() {
        let old = sample();
        let original = old.encode_to_vec();
        let mut new = old.clone();
        new.request.as_mut().unwrap().raw_body = b"new".to_vec().into();
        let reply = reply_bytes(&original, &old, new.clone()).unwrap().unwrap();
        assert!(!reply.windows(4).any(|w| w == b"body"));
        assert_eq!(pb::Object::decode(reply).unwrap(), new);
    }

    /// `sample()` with `groups` nested groups of an unknown field in its `return_overrides`
    /// (level 3).
    fn with_deep_overrides(groups: usize) -> Vec<u8> {
        let mut object = sample();
        let request = object.request.as_mut().unwrap();
        let mut overrides = request.return_overrides.take().unwrap().encode_to_vec();
        overrides.extend_from_slice(&wire::tests::nested_groups(groups));
        let mut request = object.request.take().unwrap().encode_to_vec();
        wire::put_len_record(&mut request, 10, &overrides);
        let mut bytes = object.encode_to_vec();
        wire::put_len_record(&mut bytes, 3, &request);
        bytes
    }

    fn changed_override(old: &pb::Object) -> pb::Object {
        let mut new = old.clone();
        let request = new.request.as_mut().unwrap();
        request.return_overrides.as_mut().unwrap().response_code = 403;
        new
    }

    #[test]
    fn edits_within_the_bound_keep_the_deep_unknown_field() {
        let original = with_deep_overrides(wire::MAX_DEPTH - 3);
        let old = pb::Object::decode(original.as_slice()).unwrap();
        let new = changed_override(&old);
        let reply = reply_bytes(&original, &old, new.clone()).unwrap().unwrap();
        let groups = wire::tests::nested_groups(wire::MAX_DEPTH - 3);
        assert!(reply.windows(groups.len()).any(|w| w == groups));
        assert_eq!(pb::Object::decode(reply).unwrap(), new);
    }

    #[test]
    fn edits_past_the_bound_are_refused() {
        let original = with_deep_overrides(wire::MAX_DEPTH - 2);
        // prost's limit (100) is looser than ours; the edit walk is what refuses.
        let old = pb::Object::decode(original.as_slice()).unwrap();
        let err = reply_bytes(&original, &old, changed_override(&old)).unwrap_err();
        assert!(
            matches!(err, WireError::TooDeep { limit: 64, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn added_and_removed_messages() {
        let old = pb::Object::default();
        let mut new = old.clone();
        new.session = Some(pb::SessionState {
            rate: 10.0,
            ..Default::default()
        });
        let reply = reply_bytes(&[], &old, new.clone()).unwrap().unwrap();
        assert_eq!(pb::Object::decode(reply.clone()).unwrap(), new);
        let back = reply_bytes(&reply, &new, old.clone()).unwrap().unwrap();
        assert_eq!(pb::Object::decode(back).unwrap(), old);
    }
}
