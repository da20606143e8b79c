//! The Object as protobuf's canonical JSON (what Python's `MessageToJson` prints), with secrets
//! redacted and bodies reduced to their length and SHA-256.
//!
//! Redacted: credential-like headers (Authorization, Cookie, Set-Cookie, Proxy-Authorization,
//! anything naming a key, token, secret, password, session or signature), credential-like
//! metadata (such as `token`), every query value (in `url`, `request_uri` and the param maps),
//! `spec["config_data"]`, and session secrets (`hmac_secret`, `basic_auth_data`, `jwt_data`,
//! `oauth_keys`, `certificate`, `key_id`). Then every string (member names too) over
//! [`crate::event_log::MAX_STRING_BYTES`] is cut as event payloads are: a 4 MiB hook name or
//! header must not become a 4 MiB log line.

use bytes::Bytes;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::pb;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Whether a header or metadata name looks like it carries a credential.
pub fn is_secret_name(name: &str) -> bool {
    const MARKERS: &[&str] = &[
        "auth",
        "cookie",
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "session",
        "signature",
        "credential",
        "jwt",
    ];
    let lower = name.to_ascii_lowercase();
    MARKERS.iter().any(|marker| lower.contains(marker))
}

/// `{"bytes": N, "sha256": "<hex>"}`: what stands in for a body (or a request dump).
pub(crate) fn body_summary(bytes: &[u8]) -> Value {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    json!({ "bytes": bytes.len(), "sha256": crate::hex::encode(digest.as_ref()) })
}

fn redact_named(map: Option<&mut Value>) {
    if let Some(Value::Object(map)) = map {
        for (name, value) in map.iter_mut() {
            if is_secret_name(name) {
                *value = Value::from(REDACTED);
            }
        }
    }
}

fn redact_all_values(map: Option<&mut Value>) {
    if let Some(Value::Object(map)) = map {
        for value in map.values_mut() {
            *value = Value::from(REDACTED);
        }
    }
}

fn redact_fields(object: Option<&mut Value>, fields: &[&str]) {
    if let Some(Value::Object(object)) = object {
        for field in fields {
            if let Some(value) = object.get_mut(*field) {
                *value = Value::from(REDACTED);
            }
        }
    }
}

/// Replaces each query value in a URL or request URI.
pub fn redact_query(url: &str) -> String {
    let Some((path, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => format!("{name}={REDACTED}"),
            None => pair.to_string(),
        })
        .collect();
    let mut out = format!("{path}?{}", redacted.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

fn redact_url_field(request: &mut Map<String, Value>, field: &str) {
    if let Some(Value::String(url)) = request.get_mut(field) {
        *url = redact_query(url);
    }
}

/// Decodes `bytes` as an Object and renders it as redacted canonical JSON.
///
/// # Errors
/// When the bytes are not a valid Object.
pub fn render(bytes: &Bytes) -> Result<Value, prost::DecodeError> {
    // From `Bytes`, the bodies are shared, not copied: they are only hashed.
    Ok(render_object(&mut pb::Object::decode(bytes.clone())?))
}

/// Renders a decoded Object as redacted canonical JSON. The bodies (and a hook type our enum
/// lacks) are lent out while the rest is serialised and given back after, so a body is hashed,
/// never copied: a log of a 64 MiB Object costs the JSON of its small fields.
pub fn render_object(object: &mut pb::Object) -> Value {
    // pbjson cannot name a hook type our enum lacks; canonical JSON writes it as a number.
    let unknown_hook_type = pb::HookType::try_from(object.hook_type)
        .is_err()
        .then(|| std::mem::take(&mut object.hook_type));
    let request_bodies = object
        .request
        .as_mut()
        .map(|r| (std::mem::take(&mut r.body), std::mem::take(&mut r.raw_body)));
    let response_bodies = object
        .response
        .as_mut()
        .map(|r| (std::mem::take(&mut r.body), std::mem::take(&mut r.raw_body)));
    // pbjson's output for generated types is always serialisable.
    let mut value = serde_json::to_value(&*object).unwrap_or(Value::Null);
    if let Value::Object(root) = &mut value {
        redact(
            root,
            unknown_hook_type,
            request_bodies.as_ref(),
            response_bodies.as_ref(),
        );
    }
    crate::event_log::cut_strings(&mut value);
    if let Some(raw) = unknown_hook_type {
        object.hook_type = raw;
    }
    if let (Some(request), Some((body, raw))) = (object.request.as_mut(), request_bodies) {
        (request.body, request.raw_body) = (body, raw);
    }
    if let (Some(response), Some((body, raw))) = (object.response.as_mut(), response_bodies) {
        (response.body, response.raw_body) = (body, raw);
    }
    value
}

/// Secrets redacted and bodies summarised in the rendering of an Object.
fn redact(
    root: &mut Map<String, Value>,
    unknown_hook_type: Option<i32>,
    request_bodies: Option<&(String, Bytes)>,
    response_bodies: Option<&(String, Bytes)>,
) {
    if let Some(raw) = unknown_hook_type {
        root.insert("hookType".into(), Value::from(raw));
    }

    if let Some(Value::Object(request)) = root.get_mut("request") {
        if let Some((body, raw)) = request_bodies {
            request.insert("body".into(), body_summary(body.as_bytes()));
            request.insert("rawBody".into(), body_summary(raw));
        }
        for headers in ["headers", "setHeaders"] {
            redact_named(request.get_mut(headers));
        }
        if let Some(Value::Object(overrides)) = request.get_mut("returnOverrides") {
            redact_named(overrides.get_mut("headers"));
        }
        for params in ["params", "addParams", "extendedParams"] {
            redact_all_values(request.get_mut(params));
        }
        redact_url_field(request, "url");
        redact_url_field(request, "requestUri");
    }
    if let Some(Value::Object(response)) = root.get_mut("response") {
        if let Some((body, raw)) = response_bodies {
            response.insert("body".into(), body_summary(body.as_bytes()));
            response.insert("rawBody".into(), body_summary(raw));
        }
        redact_named(response.get_mut("headers"));
        if let Some(Value::Array(headers)) = response.get_mut("multivalueHeaders") {
            for header in headers {
                let secret = header
                    .get("key")
                    .and_then(Value::as_str)
                    .is_some_and(is_secret_name);
                if secret && let Some(Value::Array(values)) = header.get_mut("values") {
                    values.iter_mut().for_each(|v| *v = Value::from(REDACTED));
                }
            }
        }
    }
    redact_named(root.get_mut("metadata"));
    if let Some(Value::Object(spec)) = root.get_mut("spec")
        && let Some(config_data) = spec.get_mut("config_data")
    {
        *config_data = Value::from(REDACTED);
    }
    if let Some(Value::Object(session)) = root.get_mut("session") {
        redact_named(session.get_mut("metadata"));
        redact_all_values(session.get_mut("oauthKeys"));
        redact_fields(session.get_mut("basicAuthData"), &["password", "hash"]);
        redact_fields(session.get_mut("jwtData"), &["secret"]);
        for field in ["hmacSecret", "certificate", "keyId"] {
            if let Some(value) = session.get_mut(field) {
                *value = Value::from(REDACTED);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_values_are_redacted() {
        assert_eq!(
            redact_query("/a?key=s3cr3t&x=1#frag"),
            "/a?key=[REDACTED]&x=[REDACTED]#frag"
        );
        assert_eq!(redact_query("/plain"), "/plain");
        assert_eq!(redact_query("/a?flag"), "/a?flag");
    }

    #[test]
    fn canonical_json_uses_proto_names_and_enum_names() {
        let object = pb::Object {
            hook_type: pb::HookType::Pre as i32,
            hook_name: "MyPre".into(),
            request: Some(pb::MiniRequestObject {
                return_overrides: Some(pb::ReturnOverrides {
                    response_code: -1,
                    ..Default::default()
                }),
                method: "GET".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = render(&object.encode_to_vec().into()).unwrap();
        assert_eq!(value["hookType"], "Pre");
        assert_eq!(value["hookName"], "MyPre");
        assert_eq!(value["request"]["returnOverrides"]["responseCode"], -1);
        assert_eq!(value["request"]["method"], "GET");
    }

    #[test]
    fn long_strings_and_names_are_cut_with_their_length() {
        let long_header = "H".repeat(2000);
        let object = pb::Object {
            hook_name: "n".repeat(4 << 20),
            request: Some(pb::MiniRequestObject {
                headers: [(long_header.clone(), "v".repeat(1025))].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = render(&object.encode_to_vec().into()).unwrap();
        let cut = |c: &str, full: usize| format!("{}…[cut, {full} bytes]", c.repeat(1024));
        assert_eq!(value["hookName"], cut("n", 4 << 20));
        assert_eq!(value["request"]["headers"][cut("H", 2000)], cut("v", 1025));
        assert!(value.to_string().len() < 8 * 1024);
    }

    #[test]
    fn rendering_lends_the_bodies_and_gives_them_back() {
        let mut object = pb::Object {
            hook_type: 42,
            request: Some(pb::MiniRequestObject {
                body: "request body".into(),
                raw_body: Bytes::from_static(b"raw request body"),
                ..Default::default()
            }),
            response: Some(pb::ResponseObject {
                body: "response body".into(),
                raw_body: Bytes::from_static(b"raw response body"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let before = object.clone();
        let raw_body_at = object.request.as_ref().unwrap().raw_body.as_ptr();
        let value = render_object(&mut object);
        assert_eq!(value["hookType"], 42);
        assert_eq!(value["request"]["body"]["bytes"], 12);
        assert_eq!(value["response"]["rawBody"]["bytes"], 17);
        assert_eq!(object, before);
        assert_eq!(
            object.request.unwrap().raw_body.as_ptr(),
            raw_body_at,
            "moved back, not copied"
        );
    }

    #[test]
    fn secrets_never_reach_the_rendering() {
        let secrets = [
            "Basic ZGV2QHR5ay5pbzpwYXN0cnk=",
            "sessionid=abc123",
            "apikey-123",
            "tok-999",
            "q-secret",
            "cfg-secret",
            "hmac-xyz",
            "pw-1",
            "hash-1",
            "jwt-secret",
            "oauth-secret",
            "setcookie-secret",
            "proxy-secret",
            "raw body text",
        ];
        let object = pb::Object {
            hook_type: pb::HookType::Response as i32,
            hook_name: "MyResponse".into(),
            request: Some(pb::MiniRequestObject {
                headers: map(&[
                    ("Authorization", secrets[0]),
                    ("Cookie", secrets[1]),
                    ("X-Api-Key", secrets[2]),
                    ("Proxy-Authorization", secrets[12]),
                    ("Accept", "*/*"),
                ]),
                url: format!("/get?key={}", secrets[4]),
                request_uri: format!("/get?key={}", secrets[4]),
                params: map(&[("key", secrets[4])]),
                body: secrets[13].into(),
                raw_body: secrets[13].as_bytes().to_vec().into(),
                ..Default::default()
            }),
            metadata: map(&[("token", secrets[3])]),
            spec: map(&[("config_data", secrets[5]), ("APIID", "api")]),
            session: Some(pb::SessionState {
                hmac_secret: secrets[6].into(),
                basic_auth_data: Some(pb::BasicAuthData {
                    password: secrets[7].into(),
                    hash: secrets[8].into(),
                }),
                jwt_data: Some(pb::JwtData {
                    secret: secrets[9].into(),
                }),
                oauth_keys: map(&[("client", secrets[10])]),
                metadata: map(&[("token", secrets[3])]),
                ..Default::default()
            }),
            response: Some(pb::ResponseObject {
                status_code: 200,
                headers: map(&[("Set-Cookie", secrets[11])]),
                multivalue_headers: vec![pb::Header {
                    key: "Set-Cookie".into(),
                    values: vec![secrets[11].into()],
                }],
                raw_body: secrets[13].as_bytes().to_vec().into(),
                ..Default::default()
            }),
        };
        let text = render(&object.encode_to_vec().into()).unwrap().to_string();
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("\"Accept\":\"*/*\""), "{text}");
        assert!(text.contains("\"APIID\":\"api\""), "{text}");
        // "raw body text" is 13 bytes.
        assert!(
            text.contains("\"rawBody\":{\"bytes\":13,\"sha256\":\""),
            "{text}"
        );
    }
}
