//! `DispatchEvent` payloads as JSON for the log (with `log_objects`), made safe to print.
//!
//! The gateway sends `{"message":{"Type":…,"Meta":{…},"TimeStamp":…},"handler_name":…,"spec":{…}}`
//! (gateway/coprocess_events.go); for key failures `Meta` carries the raw API key (`Key`, or
//! `key` in TriggerExceeded) and `OriginatingRequest`, the base64 of the whole HTTP request as it
//! arrived, credentials included. Anywhere in the payload:
//! - a member whose name looks like a credential ([`is_secret_name`]: `Key`, `key`, `api_key`,
//!   `Authorization`, …) becomes [`REDACTED`];
//! - `OriginatingRequest` becomes `{"bytes": N, "sha256": "<hex>"}` of the decoded request, or of
//!   the text itself plus `"encoding": "not base64"` when it does not decode;
//! - any other string (member names too) over [`MAX_STRING_BYTES`] is cut on a char boundary to
//!   `"<first bytes>…[cut, <full length> bytes]"`, so it stays a string where a string was.

use base64::{Engine as _, prelude::BASE64_STANDARD};
use serde_json::{Map, Value};

use crate::object_log::{REDACTED, body_summary, is_secret_name};

/// Longest string (in bytes) printed whole.
pub const MAX_STRING_BYTES: usize = 1024;

/// The member holding the base64 dump of the request that caused the event.
const ORIGINATING_REQUEST: &str = "OriginatingRequest";

/// Why a payload is not JSON, without quoting it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{category} error at line {line} column {column}")]
pub struct NotJson {
    /// serde_json's category: `syntax`, `eof`, `data` or `io`.
    pub category: &'static str,
    /// 1-based line of the error.
    pub line: usize,
    /// 1-based column of the error.
    pub column: usize,
}

impl From<&serde_json::Error> for NotJson {
    /// Keeps only the category and position: a `data` error's text quotes the offending value
    /// (`invalid type: string "secretkey123", …`), which may be the key itself.
    fn from(err: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let category = match err.classify() {
            Category::Io => "io",
            Category::Syntax => "syntax",
            Category::Data => "data",
            Category::Eof => "eof",
        };
        Self {
            category,
            line: err.line(),
            column: err.column(),
        }
    }
}

/// Parses an event payload and makes it safe to log (see the module docs).
///
/// # Errors
/// When the payload is not JSON, or nests deeper than serde_json's limit of 128.
pub fn render(payload: &[u8]) -> Result<Value, NotJson> {
    let mut value: Value = serde_json::from_slice(payload).map_err(|err| NotJson::from(&err))?;
    redact(&mut value);
    Ok(value)
}

/// Redacts, hashes and cuts `value` in place (see the module docs).
pub fn redact(value: &mut Value) {
    walk(value, true);
}

/// Cuts every string (member names too) over [`MAX_STRING_BYTES`], redacting nothing: for JSON
/// already redacted by its own rules (the Object's, see [`crate::object_log`]).
pub fn cut_strings(value: &mut Value) {
    walk(value, false);
}

/// Cuts long strings and names everywhere in `value`, and with `redacting` also replaces the
/// members [`replace_by_name`] names (their contents are then not walked).
///
/// The walk keeps its own list of values still to visit instead of recursing, so a payload
/// uses no more stack here than it did to parse, however it nests.
fn walk(value: &mut Value, redacting: bool) {
    let mut pending: Vec<&mut Value> = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::String(text) => cut_in_place(text),
            Value::Array(items) => pending.extend(items.iter_mut()),
            Value::Object(members) => {
                cut_long_names(members, redacting);
                for (name, member) in members.iter_mut() {
                    if !(redacting && replace_by_name(name, member)) {
                        pending.push(member);
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

/// Replaces a member whose name says it is a secret or the request dump; whether it did.
fn replace_by_name(name: &str, member: &mut Value) -> bool {
    if name == ORIGINATING_REQUEST {
        *member = request_summary(member);
        true
    } else if is_secret_name(name) {
        *member = Value::from(REDACTED);
        true
    } else {
        false
    }
}

/// Length and SHA-256 of the request the gateway dumped. Go writes it with
/// `base64.StdEncoding` (internal/event/event.go `EncodeRequestToEvent`).
fn request_summary(member: &Value) -> Value {
    let Value::String(text) = member else {
        // Not what the gateway sends; nothing to hash that means anything.
        return Value::from(REDACTED);
    };
    match BASE64_STANDARD.decode(text) {
        Ok(bytes) => body_summary(&bytes),
        Err(_) => {
            let mut summary = body_summary(text.as_bytes());
            if let Value::Object(fields) = &mut summary {
                fields.insert("encoding".into(), Value::from("not base64"));
            }
            summary
        }
    }
}

/// `text` cut to at most [`MAX_STRING_BYTES`] on a char boundary, with its full length; `None`
/// when it is short enough.
fn cut(text: &str) -> Option<String> {
    match crate::bounds::cut(text, MAX_STRING_BYTES) {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(short) => Some(short),
    }
}

fn cut_in_place(text: &mut String) {
    if let Some(short) = cut(text) {
        *text = short;
    }
}

/// Member names are as hostile as values: long ones are cut too, after the name-based
/// replacements (when `redacting`) were decided on the whole name.
fn cut_long_names(members: &mut Map<String, Value>, redacting: bool) {
    let long: Vec<String> = members
        .keys()
        .filter(|name| name.len() > MAX_STRING_BYTES)
        .cloned()
        .collect();
    for name in long {
        if let Some(mut member) = members.remove(&name) {
            if redacting {
                replace_by_name(&name, &mut member);
            }
            members.insert(cut(&name).unwrap_or(name), member);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sha256_hex(bytes: &[u8]) -> String {
        crate::hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    }

    const REQUEST: &str = "GET /x HTTP/1.1\r\nHost: gw\r\nAuthorization: secretkey123\r\n\r\n";

    fn auth_failure(originating_request: &str) -> String {
        json!({
            "message": {
                "Type": "AuthFailure",
                "Meta": {
                    "Message": "Auth Failure",
                    "OriginatingRequest": originating_request,
                    "Path": "/x",
                    "Origin": "127.0.0.1",
                    "Key": "secretkey123",
                },
                "TimeStamp": "2024-01-01 00:00:00 +0000 UTC",
            },
            "handler_name": "cp_dynamic_handler",
            "spec": {"APIID": "api-1", "OrgID": "org-1"},
        })
        .to_string()
    }

    #[test]
    fn the_key_is_redacted_and_the_request_hashed() {
        let dump = BASE64_STANDARD.encode(REQUEST.as_bytes());
        let value = render(auth_failure(&dump).as_bytes()).unwrap();
        let meta = &value["message"]["Meta"];
        assert_eq!(meta["Key"], REDACTED);
        assert_eq!(
            meta["OriginatingRequest"],
            json!({"bytes": REQUEST.len(), "sha256": sha256_hex(REQUEST.as_bytes())})
        );
        // Everything else is as sent.
        assert_eq!(meta["Message"], "Auth Failure");
        assert_eq!(meta["Path"], "/x");
        assert_eq!(meta["Origin"], "127.0.0.1");
        assert_eq!(value["message"]["Type"], "AuthFailure");
        assert_eq!(value["handler_name"], "cp_dynamic_handler");
        assert_eq!(value["spec"], json!({"APIID": "api-1", "OrgID": "org-1"}));
        let text = value.to_string();
        assert!(
            !text.contains("secretkey123") && !text.contains(&dump),
            "{text}"
        );
    }

    #[test]
    fn keys_are_redacted_wherever_they_are() {
        let mut value = json!({
            "Key": "top",
            "message": {
                "Key": "flat",
                "Meta": {"key": "trigger", "org_id": "o", "api_key": {"nested": "x"}},
                "list": [{"Key": "in-list"}, "Key"],
            },
        });
        redact(&mut value);
        assert_eq!(
            value,
            json!({
                "Key": REDACTED,
                "message": {
                    "Key": REDACTED,
                    "Meta": {"key": REDACTED, "org_id": "o", "api_key": REDACTED},
                    "list": [{"Key": REDACTED}, "Key"],
                },
            })
        );
    }

    #[test]
    fn a_request_that_is_not_base64_is_hashed_as_text_and_said_so() {
        let value = render(auth_failure("GET / HTTP/1.1 not base64!").as_bytes()).unwrap();
        let text = "GET / HTTP/1.1 not base64!";
        assert_eq!(
            value["message"]["Meta"]["OriginatingRequest"],
            json!({"bytes": text.len(), "sha256": sha256_hex(text.as_bytes()), "encoding": "not base64"})
        );
        let mut odd = json!({"OriginatingRequest": 42});
        redact(&mut odd);
        assert_eq!(odd, json!({"OriginatingRequest": REDACTED}));
    }

    #[test]
    fn long_strings_are_cut_with_their_length_and_short_ones_kept() {
        let long = "a".repeat(5000);
        // '€' is three bytes: byte 1024 falls inside the 342nd.
        let accented = "€".repeat(400);
        let short = "b".repeat(MAX_STRING_BYTES);
        let long_name = "n".repeat(MAX_STRING_BYTES + 1);
        let mut value = json!({
            "Message": long,
            "list": [accented, short, 7, null, true],
            long_name.clone(): "v",
        });
        redact(&mut value);
        assert_eq!(
            value["Message"],
            format!("{}…[cut, 5000 bytes]", "a".repeat(MAX_STRING_BYTES))
        );
        assert_eq!(
            value["list"],
            json!([
                format!("{}…[cut, 1200 bytes]", "€".repeat(341)),
                short,
                7,
                null,
                true
            ])
        );
        let cut_name = format!("{}…[cut, 1025 bytes]", "n".repeat(MAX_STRING_BYTES));
        assert_eq!(value[&cut_name], "v");
        assert!(value.get(&long_name).is_none());
    }

    #[test]
    fn payloads_that_are_not_objects_are_walked_too() {
        assert_eq!(render(b"42").unwrap(), json!(42));
        assert_eq!(render(b"null").unwrap(), json!(null));
        assert_eq!(render(b"\"Key\"").unwrap(), json!("Key"));
        let long = format!("[\"{}\"]", "x".repeat(2000));
        assert_eq!(
            render(long.as_bytes()).unwrap(),
            json!([format!(
                "{}…[cut, 2000 bytes]",
                "x".repeat(MAX_STRING_BYTES)
            )])
        );
    }

    #[test]
    fn deep_nesting_is_refused_by_the_parser_and_walked_without_recursion() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            render(deep.as_bytes()).unwrap_err(),
            NotJson {
                category: "syntax",
                line: 1,
                column: 128
            }
        );
        // As deep as the parser allows: 127 levels.
        let ok = format!("{}\"Key\"{}", "[".repeat(127), "]".repeat(127));
        assert!(render(ok.as_bytes()).is_ok());
    }

    #[test]
    fn errors_name_category_and_position_never_the_content() {
        let err = serde_json::from_str::<std::collections::BTreeMap<String, u8>>(
            r#"{"a": "secretkey123"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("secretkey123"), "serde quotes it");
        let safe = NotJson::from(&err);
        assert_eq!(safe.to_string(), "data error at line 1 column 20");
        assert_eq!(
            render(b"{\"a\": secretkey123}").unwrap_err().to_string(),
            "syntax error at line 1 column 7"
        );
        assert_eq!(render(b"{\"a\"").unwrap_err().category, "eof");
    }
}
