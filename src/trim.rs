//! Trimmed replies (`trim_replies`, off by default): the reply carries only what the gateway
//! reads back, so the gateway parses less. The one exception to byte-for-byte replies.
//!
//! What Tyk 5.x reads back from a reply (protocol reference §3.3-§3.7), and so what stays:
//!
//! | part | kept |
//! | --- | --- |
//! | `request` | always (the gateway dereferences it): `raw_body` (request hooks), `set_headers`, `delete_headers`, `add_params`, `delete_params`, `url`, `method`, `return_overrides` |
//! | `session`, `metadata` | on `CustomKeyCheck` only: the gateway ignores them after the other hooks |
//! | `response` | on `Response` hooks, without its `body` string (the gateway reads `raw_body`) |
//!
//! Dropped: `hook_type` and `hook_name` (the gateway knows what it called), `spec`, the
//! request's `headers`, `params` and `extended_params` (read-only for the gateway), its `body`
//! string, `request_uri` and `scheme`, and on a `Response` hook the request's `raw_body`, which
//! the gateway does not read after the upstream answered. Unknown fields are dropped too.

use bytes::{Bytes, BytesMut};

use crate::{
    pb::HookType,
    wire::{self, Edit, WireError, field},
};

/// `MiniRequestObject` fields the gateway reads back from request hooks.
const REQUEST_READ_BACK: &[u32] = &[
    2,  // set_headers
    3,  // delete_headers
    5,  // url
    7,  // add_params
    9,  // delete_params
    10, // return_overrides
    11, // method
    14, // raw_body
];

/// The same for `Response` hooks: the request's edits are no longer applied, but the message
/// stays a well-formed request.
const REQUEST_KEPT_ON_RESPONSE: &[u32] = &[5, 10, 11];

/// The reply of a call of `hook_type` trimmed to what the gateway reads back; `None` when
/// nothing would be dropped.
///
/// # Errors
/// Malformed framing (never for a reply that was scanned or encoded by us).
pub fn for_gateway(reply: &[u8], hook_type: i32) -> Result<Option<Bytes>, WireError> {
    let hook = HookType::try_from(hook_type).ok();
    let request_kept = if hook == Some(HookType::Response) {
        REQUEST_KEPT_ON_RESPONSE
    } else {
        REQUEST_READ_BACK
    };
    let trimmed = wire::rewrite(reply, |record| match record.field {
        field::REQUEST => {
            wire::filter_nested(record.payload, |inner| request_kept.contains(&inner))
        }
        field::SESSION | field::METADATA if hook == Some(HookType::CustomKeyCheck) => {
            Ok(Edit::Keep)
        }
        field::RESPONSE if hook == Some(HookType::Response) => {
            wire::filter_nested(record.payload, |inner| inner != field::RESPONSE_BODY)
        }
        _ => Ok(Edit::Drop),
    })?;
    Ok(trimmed.map(BytesMut::freeze))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::pb;

    fn strings(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    /// An Object with every part the gateway sends filled in.
    fn full(hook_type: pb::HookType) -> pb::Object {
        pb::Object {
            hook_type: hook_type as i32,
            hook_name: "hook".into(),
            request: Some(pb::MiniRequestObject {
                headers: strings(&[("Accept", "*/*")]),
                set_headers: strings(&[("X-Set", "1")]),
                delete_headers: vec!["X-Gone".into()],
                body: "hello".into(),
                url: "/get?a=1".into(),
                params: strings(&[("a", "1")]),
                add_params: strings(&[("b", "2")]),
                extended_params: Default::default(),
                delete_params: vec!["c".into()],
                return_overrides: Some(pb::ReturnOverrides {
                    response_code: -1,
                    ..Default::default()
                }),
                method: "POST".into(),
                request_uri: "/get?a=1".into(),
                scheme: "http".into(),
                raw_body: b"hello".to_vec().into(),
            }),
            session: Some(pb::SessionState {
                rate: 10.0,
                ..Default::default()
            }),
            metadata: strings(&[("token", "t")]),
            spec: strings(&[("APIID", "api"), ("OrgID", "org")]),
            response: Some(pb::ResponseObject {
                status_code: 200,
                raw_body: b"ok".to_vec().into(),
                body: "ok".into(),
                headers: strings(&[("Content-Type", "text/plain")]),
                ..Default::default()
            }),
        }
    }

    fn trimmed(object: &pb::Object) -> pb::Object {
        let bytes = object.encode_to_vec();
        let trimmed = for_gateway(&bytes, object.hook_type)
            .expect("well-formed")
            .expect("something to drop");
        assert!(trimmed.len() < bytes.len());
        pb::Object::decode(trimmed).expect("a trimmed reply is an Object")
    }

    #[test]
    fn request_hooks_keep_the_requests_edits_and_nothing_else() {
        for hook in [
            pb::HookType::Pre,
            pb::HookType::PostKeyAuth,
            pb::HookType::Post,
        ] {
            let sent = full(hook);
            let reply = trimmed(&sent);
            let (request, kept) = (sent.request.unwrap(), reply.request.unwrap());
            assert_eq!(kept.set_headers, request.set_headers);
            assert_eq!(kept.delete_headers, request.delete_headers);
            assert_eq!(kept.add_params, request.add_params);
            assert_eq!(kept.delete_params, request.delete_params);
            assert_eq!(kept.url, request.url);
            assert_eq!(kept.method, request.method);
            assert_eq!(kept.return_overrides, request.return_overrides);
            assert_eq!(kept.raw_body, request.raw_body);
            assert!(kept.headers.is_empty() && kept.params.is_empty() && kept.body.is_empty());
            assert!(kept.request_uri.is_empty() && kept.scheme.is_empty());
            assert_eq!(reply.session, None, "{hook:?}");
            assert!(reply.metadata.is_empty() && reply.spec.is_empty());
            assert_eq!(reply.response, None);
            assert_eq!((reply.hook_type, reply.hook_name.as_str()), (0, ""));
        }
    }

    #[test]
    fn custom_key_check_keeps_the_session_and_metadata() {
        let sent = full(pb::HookType::CustomKeyCheck);
        let reply = trimmed(&sent);
        assert_eq!(reply.session, sent.session);
        assert_eq!(reply.metadata, sent.metadata);
        assert_eq!(
            reply.request.unwrap().return_overrides,
            sent.request.unwrap().return_overrides
        );
    }

    #[test]
    fn response_hooks_keep_the_response_without_its_body_string() {
        let sent = full(pb::HookType::Response);
        let reply = trimmed(&sent);
        let (response, kept) = (sent.response.unwrap(), reply.response.unwrap());
        assert_eq!(kept.status_code, response.status_code);
        assert_eq!(kept.raw_body, response.raw_body);
        assert_eq!(kept.headers, response.headers);
        assert_eq!(kept.body, "");
        let request = reply.request.expect("the request stays");
        assert!(
            request.raw_body.is_empty(),
            "not read after the upstream answered"
        );
        assert_eq!(request.url, "/get?a=1");
        assert_eq!(reply.session, None);
    }

    #[test]
    fn a_reply_with_nothing_to_drop_is_left_as_it_is() {
        let bare = pb::Object {
            request: Some(pb::MiniRequestObject {
                url: "/".into(),
                method: "GET".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(for_gateway(&bare.encode_to_vec(), 0), Ok(None));
        assert!(for_gateway(&[0x1a, 0x05, 0x01], 1).is_err(), "truncated");
    }
}
