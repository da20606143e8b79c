//! Header steps. Request headers change through `set_headers`/`delete_headers`, which is what the
//! gateway applies (the `headers` map it sends is read-only). Response headers are written to
//! both `headers` and `multivalue_headers`, which the gateway rebuilds the response from, so
//! multi-value headers such as Set-Cookie survive, and a step can set or add several values.
//!
//! How the gateway (v5.14.0, gateway/coprocess.go: `CustomMiddlewareResponseHook.HandleResponse`
//! and `syncHeadersAndMultiValueHeaders` beside it) turns the reply into headers: it deletes every
//! upstream header; if the returned `headers` map differs from the one it sent, it reconciles
//! `multivalue_headers` with it (for each map entry, the entry of exactly that key gets its
//! first value replaced by the map's value, or is added with that one value; entries whose key
//! is not in the map are dropped); then it writes every value of every `multivalue_headers`
//! entry with `Header.Add` (gateway/reverse_proxy.go `setCustomHeaderMultipleValues`), one
//! header line per value. So `multivalue_headers` is what is sent, and the map only matters
//! when it changed. The steps below therefore keep one entry per name under the same key in
//! both views, with the map holding the entry's first value: the reconciliation is then a
//! no-op and the entry's values are exactly the header lines sent.

use std::{borrow::Cow, collections::BTreeMap};

use serde::Deserialize;

use super::{delete_entries, response_of, set_entries, settings};
use crate::{
    hooks::{
        cel::{ComputedMap, Input, Scope, TemplateSetting},
        config::StepConfig,
        parts::ObjectParts,
        step::{BuildError, Step, StepContext, StepError, StepOutcome},
    },
    pb,
};

/// Whether `name` is already in Go's canonical form (what the gateway sends): checked without
/// allocating, so the common case costs no copy.
pub fn is_canonical_header_name(name: &str) -> bool {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        // Left as it is by canonical_header_name.
        return true;
    }
    let mut upper = true;
    name.bytes().all(|b| {
        let ok = if upper {
            !b.is_ascii_lowercase()
        } else {
            !b.is_ascii_uppercase()
        };
        upper = b == b'-';
        ok
    })
}

/// The request's headers as the upstream will get them, by canonical name (borrowed when the
/// gateway sent it canonical): what the client sent, then the `set_headers` of earlier steps (a
/// later entry of a name wins in a map), without the names `delete_headers` lists.
pub(crate) fn upstream_headers(
    request: &pb::MiniRequestObject,
) -> impl Iterator<Item = (Cow<'_, str>, &String)> {
    request
        .headers
        .iter()
        .chain(&request.set_headers)
        .filter(|(name, _)| {
            !request
                .delete_headers
                .iter()
                .any(|deleted| deleted.eq_ignore_ascii_case(name))
        })
        .map(|(name, value)| {
            let name = if is_canonical_header_name(name) {
                Cow::Borrowed(name.as_str())
            } else {
                Cow::Owned(canonical_header_name(name))
            };
            (name, value)
        })
}

/// Go's canonical form of a header name (`content-type` → `Content-Type`), as the gateway uses.
/// Names with characters outside a token are left as they are, as Go does.
pub fn canonical_header_name(name: &str) -> String {
    // Also true for a name outside a token, which stays as it is.
    if is_canonical_header_name(name) {
        return name.to_string();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// A request header by name: its Go canonical form first, then any case.
pub fn request_header<'a>(request: &'a pb::MiniRequestObject, name: &str) -> Option<&'a String> {
    request
        .headers
        .get(&canonical_header_name(name))
        .or_else(|| {
            request
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
}

fn canonical_names(names: Vec<String>) -> Result<Vec<String>, BuildError> {
    if names.is_empty() {
        return Err("needs at least one name".into());
    }
    Ok(names.iter().map(|n| canonical_header_name(n)).collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderNames {
    names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComputedHeaderValues {
    headers: BTreeMap<String, TemplateSetting>,
}

/// `set_headers`: `headers = { Name = "value", X-Tier = { cel = "session.metadata.tier" } }`.
#[derive(Debug)]
pub struct SetHeaders {
    headers: ComputedMap,
}

impl SetHeaders {
    pub(super) fn build(config: &StepConfig, scope: Scope) -> Result<Self, BuildError> {
        let ComputedHeaderValues { headers } = settings(config)?;
        if headers.is_empty() {
            return Err("needs at least one header".into());
        }
        Ok(Self {
            headers: ComputedMap::build(headers, scope, "headers", canonical_header_name)?,
        })
    }
}

#[async_trait::async_trait]
impl Step for SetHeaders {
    fn parts(&self) -> ObjectParts {
        ObjectParts::REQUEST_HEADER_EDITS.union(self.headers.variables().parts())
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let headers = self
            .headers
            .render(&Input::new(object, cx, self.headers.variables()));
        let headers = headers.map_err(|err| StepError::new(err.to_string()))?;
        let request = object.request.get_or_insert_with(Default::default);
        set_entries(
            &mut request.set_headers,
            &mut request.delete_headers,
            &headers,
        );
        Ok(StepOutcome::Modified)
    }
}

/// `delete_headers`: `names = ["X-Internal"]`.
#[derive(Debug)]
pub struct DeleteHeaders {
    names: Vec<String>,
}

impl DeleteHeaders {
    pub(super) fn build(config: &StepConfig) -> Result<Self, BuildError> {
        let HeaderNames { names } = settings(config)?;
        Ok(Self {
            names: canonical_names(names)?,
        })
    }
}

#[async_trait::async_trait]
impl Step for DeleteHeaders {
    fn parts(&self) -> ObjectParts {
        ObjectParts::REQUEST_HEADER_EDITS
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        _cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let request = object.request.get_or_insert_with(Default::default);
        delete_entries(
            &mut request.set_headers,
            &mut request.delete_headers,
            &self.names,
        );
        Ok(StepOutcome::Modified)
    }
}

/// Sets `name` to one `value` in both response header views.
pub(crate) fn set_response_header(response: &mut pb::ResponseObject, name: &str, value: &str) {
    set_response_values(response, name, std::slice::from_ref(&value.to_string()));
}

/// Makes `values` the only values of `name` (any case) in both response header views: one
/// `multivalue_headers` entry keyed `name` (where the first old one was) and `headers[name]` =
/// its first value (see the module docs for why). No values removes the name.
pub(crate) fn set_response_values(
    response: &mut pb::ResponseObject,
    name: &str,
    values: &[String],
) {
    response
        .headers
        .retain(|key, _| !key.eq_ignore_ascii_case(name));
    let at = response
        .multivalue_headers
        .iter()
        .position(|h| h.key.eq_ignore_ascii_case(name));
    // Every entry of the name goes, not just the first: a second one would add its lines too.
    response
        .multivalue_headers
        .retain(|h| !h.key.eq_ignore_ascii_case(name));
    let Some(first) = values.first() else {
        return;
    };
    response.headers.insert(name.to_string(), first.clone());
    let header = pb::Header {
        key: name.to_string(),
        values: values.to_vec(),
    };
    // Entries before the first removed one were kept, so its index is still in range.
    match at {
        Some(index) => response.multivalue_headers.insert(index, header),
        None => response.multivalue_headers.push(header),
    }
}

/// Appends `values` after the values `name` (any case) already has.
fn add_response_values(response: &mut pb::ResponseObject, name: &str, values: &[String]) {
    let mut all: Vec<String> = response
        .multivalue_headers
        .iter()
        .filter(|h| h.key.eq_ignore_ascii_case(name))
        .flat_map(|h| h.values.iter().cloned())
        .collect();
    if all.is_empty() {
        // A gateway older than 5.2 sends only the map (one value per name).
        all.extend(
            response
                .headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.clone()),
        );
    }
    all.extend_from_slice(values);
    set_response_values(response, name, &all);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseHeaderSettings {
    headers: BTreeMap<String, serde_json::Value>,
}

/// `headers = { Name = "value", Other = ["a", "b"] }`, by Go canonical name. Errors name the
/// header as configured.
fn response_header_values(
    config: &StepConfig,
) -> Result<BTreeMap<String, Vec<String>>, BuildError> {
    let ResponseHeaderSettings { headers } = settings(config)?;
    if headers.is_empty() {
        return Err("needs at least one header".into());
    }
    let mut out: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for (name, value) in headers {
        let values = match value {
            serde_json::Value::String(value) => vec![value],
            serde_json::Value::Array(items) if items.is_empty() => {
                return Err(format!("header {name:?}: needs at least one value").into());
            }
            serde_json::Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    serde_json::Value::String(value) => Ok(value),
                    _ => Err(format!("header {name:?}: value {i} is not a string")),
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(
                    format!("header {name:?}: expected a string or an array of strings").into(),
                );
            }
        };
        let canonical = canonical_header_name(&name);
        // Two spellings of one name would silently lose one set of values.
        if let Some((first, _)) = out.get(&canonical) {
            return Err(
                format!("header {canonical:?} is given twice ({first:?} and {name:?})").into(),
            );
        }
        out.insert(canonical, (name, values));
    }
    Ok(out
        .into_iter()
        .map(|(canonical, (_, values))| (canonical, values))
        .collect())
}

/// `set_response_headers` and `add_response_headers`: `headers = { Name = "value" }` or
/// `{ Name = ["a", "b"] }`. `set_` replaces every value of the name; `add_` puts the values after
/// those the name already has (a step's Set-Cookie beside the upstream's own).
#[derive(Debug)]
pub struct ResponseHeaders {
    headers: BTreeMap<String, Vec<String>>,
    append: bool,
}

impl ResponseHeaders {
    pub(super) fn build_set(config: &StepConfig) -> Result<Self, BuildError> {
        Ok(Self {
            headers: response_header_values(config)?,
            append: false,
        })
    }

    pub(super) fn build_add(config: &StepConfig) -> Result<Self, BuildError> {
        Ok(Self {
            headers: response_header_values(config)?,
            append: true,
        })
    }
}

#[async_trait::async_trait]
impl Step for ResponseHeaders {
    fn parts(&self) -> ObjectParts {
        ObjectParts::RESPONSE
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        _cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let response = response_of(object)?;
        let edit = if self.append {
            add_response_values
        } else {
            set_response_values
        };
        for (name, values) in &self.headers {
            edit(response, name, values);
        }
        Ok(StepOutcome::Modified)
    }
}

/// `delete_response_headers`: `names = ["Server"]`.
#[derive(Debug)]
pub struct DeleteResponseHeaders {
    names: Vec<String>,
}

impl DeleteResponseHeaders {
    pub(super) fn build(config: &StepConfig) -> Result<Self, BuildError> {
        let HeaderNames { names } = settings(config)?;
        Ok(Self {
            names: canonical_names(names)?,
        })
    }
}

#[async_trait::async_trait]
impl Step for DeleteResponseHeaders {
    fn parts(&self) -> ObjectParts {
        ObjectParts::RESPONSE
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        _cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let response = response_of(object)?;
        let before = response.multivalue_headers.len() + response.headers.len();
        response
            .headers
            .retain(|name, _| !self.names.iter().any(|n| n.eq_ignore_ascii_case(name)));
        response
            .multivalue_headers
            .retain(|h| !self.names.iter().any(|n| n.eq_ignore_ascii_case(&h.key)));
        Ok(
            if before == response.multivalue_headers.len() + response.headers.len() {
                StepOutcome::Unchanged
            } else {
                StepOutcome::Modified
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::steps::tests::{cx, run_step, scope, step_config};

    #[test]
    fn a_canonical_name_is_recognised_without_a_copy() {
        for name in [
            "X-Tenant-Id",
            "x-tenant-id",
            "X-TENANT",
            "Content-Type",
            "a",
            "A",
            "-x",
            "X-",
            "bad name",
            "",
            "X_Y",
            "Www-Authenticate",
        ] {
            assert_eq!(
                is_canonical_header_name(name),
                canonical_header_name(name) == name,
                "{name:?}"
            );
        }
    }

    #[test]
    fn canonical_names_follow_go() {
        for (name, canonical) in [
            ("content-type", "Content-Type"),
            ("X-API-KEY", "X-Api-Key"),
            ("set-cookie", "Set-Cookie"),
            ("x_under", "X_under"),
            ("bad name", "bad name"),
        ] {
            assert_eq!(canonical_header_name(name), canonical);
        }
    }

    #[tokio::test]
    async fn request_header_steps_go_through_set_and_delete_lists() {
        let mut object = pb::Object::default();
        let set = SetHeaders::build(
            &step_config(
                "set_headers",
                serde_json::json!({"headers": {"x-team": "payments"}}),
            ),
            scope(pb::HookType::Pre),
        )
        .unwrap();
        let delete = DeleteHeaders::build(&step_config(
            "delete_headers",
            serde_json::json!({"names": ["x-internal"]}),
        ))
        .unwrap();
        assert_eq!(
            run_step(&set, &mut object, &cx(pb::HookType::Pre)).await,
            StepOutcome::Modified
        );
        assert_eq!(
            run_step(&delete, &mut object, &cx(pb::HookType::Pre)).await,
            StepOutcome::Modified
        );
        let request = object.request.unwrap();
        assert_eq!(
            request.set_headers.get("X-Team").map(String::as_str),
            Some("payments")
        );
        assert_eq!(request.delete_headers, vec!["X-Internal".to_string()]);
        assert!(
            request.headers.is_empty(),
            "the read-only map is left alone"
        );
    }

    #[tokio::test]
    async fn response_header_steps_keep_multi_values_of_other_names() {
        let mut object = pb::Object {
            response: Some(pb::ResponseObject {
                headers: [
                    ("Set-Cookie".to_string(), "a=1".to_string()),
                    ("Server".to_string(), "x".to_string()),
                ]
                .into(),
                multivalue_headers: vec![
                    pb::Header {
                        key: "Set-Cookie".into(),
                        values: vec!["a=1".into(), "b=2".into()],
                    },
                    pb::Header {
                        key: "Server".into(),
                        values: vec!["x".into()],
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let set = ResponseHeaders::build_set(&step_config(
            "set_response_headers",
            serde_json::json!({"headers": {"x-frame-options": "DENY"}}),
        ))
        .unwrap();
        let delete = DeleteResponseHeaders::build(&step_config(
            "delete_response_headers",
            serde_json::json!({"names": ["server"]}),
        ))
        .unwrap();
        run_step(&set, &mut object, &cx(pb::HookType::Response)).await;
        run_step(&delete, &mut object, &cx(pb::HookType::Response)).await;
        let response = object.response.unwrap();
        assert_eq!(
            response.headers.get("X-Frame-Options").map(String::as_str),
            Some("DENY")
        );
        assert!(!response.headers.contains_key("Server"));
        let cookies = response
            .multivalue_headers
            .iter()
            .find(|h| h.key == "Set-Cookie")
            .unwrap();
        assert_eq!(cookies.values, vec!["a=1", "b=2"]);
        assert!(
            response
                .multivalue_headers
                .iter()
                .all(|h| h.key != "Server")
        );
    }

    #[test]
    fn settings_are_checked() {
        assert!(
            SetHeaders::build(
                &step_config("set_headers", serde_json::json!({"headers": {}})),
                scope(pb::HookType::Pre)
            )
            .is_err()
        );
        let err = SetHeaders::build(
            &step_config("set_headers", serde_json::json!({"header": {"a": "b"}})),
            scope(pb::HookType::Pre),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `header`"), "{err}");
        // A bad value names the setting it is in.
        let err = SetHeaders::build(
            &step_config("set_headers", serde_json::json!({"headers": {"X-Id": 7}})),
            scope(pb::HookType::Pre),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("headers.X-Id: invalid type: integer `7`"),
            "{err}"
        );
    }

    fn header(key: &str, values: &[&str]) -> pb::Header {
        pb::Header {
            key: key.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// An upstream response as the gateway sends it: the map holds each name's first value.
    fn upstream(headers: &[pb::Header]) -> pb::Object {
        pb::Object {
            response: Some(pb::ResponseObject {
                status_code: 200,
                headers: headers
                    .iter()
                    .map(|h| (h.key.clone(), h.values[0].clone()))
                    .collect(),
                multivalue_headers: headers.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The header lines the gateway sends for a Response hook's reply, by canonical name: a
    /// model of gateway/coprocess.go (v5.14.0) after the hook returns, including
    /// `syncHeadersAndMultiValueHeaders`, then `Header.Add` of every value.
    fn gateway_headers(
        sent: &pb::ResponseObject,
        reply: &pb::ResponseObject,
    ) -> BTreeMap<String, Vec<String>> {
        let mut multivalue = reply.multivalue_headers.clone();
        if sent.headers != reply.headers {
            let mut synced = Vec::new();
            for (key, value) in &reply.headers {
                match multivalue.iter_mut().find(|h| &h.key == key) {
                    Some(h) => {
                        if let Some(first) = h.values.first_mut() {
                            first.clone_from(value);
                        }
                    }
                    None => synced.push(header(key, &[value])),
                }
            }
            synced.extend(
                multivalue
                    .into_iter()
                    .filter(|h| reply.headers.contains_key(&h.key)),
            );
            multivalue = synced;
        }
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for h in multivalue {
            out.entry(canonical_header_name(&h.key))
                .or_default()
                .extend(h.values);
        }
        out
    }

    fn lines(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect()
    }

    async fn run_response_step(
        kind: &str,
        settings: serde_json::Value,
        object: &mut pb::Object,
    ) -> StepOutcome {
        let step = super::super::StepRegistry::builtin()
            .build(&step_config(kind, settings), pb::HookType::Response)
            .unwrap();
        run_step(step.as_ref(), object, &cx(pb::HookType::Response)).await
    }

    #[tokio::test]
    async fn set_response_headers_replaces_every_value_with_the_listed_ones() {
        // Lower-case keys, as a gateway with `ignore_canonical_mime_header_key` may send.
        let mut object = upstream(&[
            header("set-cookie", &["up=1", "up=2"]),
            header("Server", &["x"]),
        ]);
        let sent = object.response.clone().unwrap();
        let outcome = run_response_step(
            "set_response_headers",
            serde_json::json!({"headers": {"Set-Cookie": ["a=1; Path=/", "b=2"]}}),
            &mut object,
        )
        .await;
        assert_eq!(outcome, StepOutcome::Modified);
        let response = object.response.unwrap();
        assert_eq!(
            response.multivalue_headers,
            vec![
                header("Set-Cookie", &["a=1; Path=/", "b=2"]),
                header("Server", &["x"])
            ]
        );
        assert_eq!(
            response.headers,
            BTreeMap::from([
                ("Server".to_string(), "x".to_string()),
                ("Set-Cookie".to_string(), "a=1; Path=/".to_string()),
            ])
        );
        assert_eq!(
            gateway_headers(&sent, &response),
            lines(&[("Server", &["x"]), ("Set-Cookie", &["a=1; Path=/", "b=2"])])
        );
    }

    #[tokio::test]
    async fn add_response_headers_appends_after_the_upstream_values() {
        let mut object = upstream(&[
            header("Set-Cookie", &["up=1", "up=2"]),
            header("Server", &["x"]),
        ]);
        let sent = object.response.clone().unwrap();
        let outcome = run_response_step(
            "add_response_headers",
            serde_json::json!({"headers": {"set-cookie": ["a=1", "b=2"], "X-New": "n"}}),
            &mut object,
        )
        .await;
        assert_eq!(outcome, StepOutcome::Modified);
        let response = object.response.unwrap();
        assert_eq!(
            response.multivalue_headers,
            vec![
                header("Set-Cookie", &["up=1", "up=2", "a=1", "b=2"]),
                header("Server", &["x"]),
                header("X-New", &["n"]),
            ]
        );
        assert_eq!(
            response.headers.get("Set-Cookie").map(String::as_str),
            Some("up=1"),
            "the map keeps the first value, so the gateway sees it unchanged"
        );
        assert_eq!(
            gateway_headers(&sent, &response),
            lines(&[
                ("Server", &["x"]),
                ("Set-Cookie", &["up=1", "up=2", "a=1", "b=2"]),
                ("X-New", &["n"]),
            ])
        );
    }

    #[tokio::test]
    async fn add_response_headers_matches_names_in_any_case_and_uses_the_map_alone() {
        let mut object = upstream(&[header("x-trace", &["t1"])]);
        run_response_step(
            "add_response_headers",
            serde_json::json!({"headers": {"X-Trace": "t2"}}),
            &mut object,
        )
        .await;
        let response = object.response.unwrap();
        assert_eq!(
            response.multivalue_headers,
            vec![header("X-Trace", &["t1", "t2"])]
        );
        assert_eq!(
            response.headers,
            BTreeMap::from([("X-Trace".to_string(), "t1".to_string())])
        );

        // Only the map (a gateway before multivalue_headers existed).
        let mut object = upstream(&[]);
        let response = object.response.as_mut().unwrap();
        response.headers.insert("Vary".into(), "Accept".into());
        run_response_step(
            "add_response_headers",
            serde_json::json!({"headers": {"vary": "Origin"}}),
            &mut object,
        )
        .await;
        assert_eq!(
            object.response.unwrap().multivalue_headers,
            vec![header("Vary", &["Accept", "Origin"])]
        );
    }

    #[tokio::test]
    async fn one_string_still_sets_one_value() {
        let mut object = upstream(&[header("Cache-Control", &["no-cache", "private"])]);
        let sent = object.response.clone().unwrap();
        run_response_step(
            "set_response_headers",
            serde_json::json!({"headers": {"cache-control": "no-store"}}),
            &mut object,
        )
        .await;
        let response = object.response.unwrap();
        assert_eq!(
            response.multivalue_headers,
            vec![header("Cache-Control", &["no-store"])]
        );
        assert_eq!(
            gateway_headers(&sent, &response),
            lines(&[("Cache-Control", &["no-store"])])
        );
    }

    #[tokio::test]
    async fn without_a_response_the_steps_fail() {
        let step = ResponseHeaders::build_add(&step_config(
            "add_response_headers",
            serde_json::json!({"headers": {"a": "b"}}),
        ))
        .unwrap();
        let err = step
            .run(&mut pb::Object::default(), &cx(pb::HookType::Response))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "the Object has no response");
    }

    #[test]
    fn response_header_settings_are_checked_and_errors_name_the_header() {
        let registry = super::super::StepRegistry::builtin();
        for kind in ["set_response_headers", "add_response_headers"] {
            for (settings, expected) in [
                (
                    serde_json::json!({"headers": {"Set-Cookie": []}}),
                    "header \"Set-Cookie\": needs at least one value",
                ),
                (
                    serde_json::json!({"headers": {"Set-Cookie": ["a", 1]}}),
                    "header \"Set-Cookie\": value 1 is not a string",
                ),
                (
                    serde_json::json!({"headers": {"X-A": 5}}),
                    "header \"X-A\": expected a string or an array of strings",
                ),
                (
                    serde_json::json!({"headers": {"set-cookie": "a", "Set-Cookie": "b"}}),
                    "header \"Set-Cookie\" is given twice (\"Set-Cookie\" and \"set-cookie\")",
                ),
                (
                    serde_json::json!({"headers": {}}),
                    "needs at least one header",
                ),
            ] {
                let err = registry
                    .build(&step_config(kind, settings), pb::HookType::Response)
                    .unwrap_err()
                    .to_string();
                assert_eq!(err, format!("step \"{kind}\": {expected}"));
            }
        }
        let err = registry
            .build(
                &step_config(
                    "add_response_headers",
                    serde_json::json!({"headers": {"a": "b"}}),
                ),
                pb::HookType::Post,
            )
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "step \"add_response_headers\" cannot act on Post hooks (only on Response)"
        );
        assert_eq!(
            ResponseHeaders::build_add(&step_config(
                "add_response_headers",
                serde_json::json!({"headers": {"a": "b"}}),
            ))
            .unwrap()
            .parts(),
            ObjectParts::RESPONSE
        );
    }
}
