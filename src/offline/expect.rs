//! Expectations of a case and how an answer differs from them, one readable line per
//! difference (`set_headers["X-Tier"]: expected "gold", got "silver"`).
//!
//! Only what a case names is compared: map entries it lists (others may be there too), names it
//! expects deleted, the fields of `return_overrides`, `response` and `session` it gives.

use std::{collections::BTreeMap, fmt};

use serde::Deserialize;

use crate::{call::Outcome, pb};

/// What the answer to a case must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Expect {
    /// How the call ended, as the `outcome` metric label says it.
    pub outcome: Option<ExpectedOutcome>,
    /// Whether the reply is the request, byte for byte.
    pub unchanged: Option<bool>,
    /// `request.set_headers` entries (names compared without case, as HTTP does).
    pub set_headers: Option<BTreeMap<String, String>>,
    /// Names in `request.delete_headers`.
    pub delete_headers: Option<Vec<String>>,
    /// `request.add_params` entries.
    pub add_params: Option<BTreeMap<String, String>>,
    /// Names in `request.delete_params`.
    pub delete_params: Option<Vec<String>>,
    /// `request.url`.
    pub url: Option<String>,
    /// `request.method`.
    pub method: Option<String>,
    /// Fields of `request.return_overrides`.
    pub return_overrides: Option<ExpectOverrides>,
    /// Fields of `response` (Response hooks).
    pub response: Option<ExpectResponse>,
    /// The Object's `metadata` entries.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Fields of `session` (CustomKeyCheck).
    pub session: Option<ExpectSession>,
}

/// The outcomes a pipeline can end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ExpectedOutcome {
    Unchanged,
    Modified,
    Responded,
    Failed,
}

impl ExpectedOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Unchanged => Outcome::Unchanged.as_str(),
            Self::Modified => Outcome::Modified.as_str(),
            Self::Responded => Outcome::Responded.as_str(),
            Self::Failed => Outcome::Failed.as_str(),
        }
    }
}

/// Fields of `return_overrides`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpectOverrides {
    pub response_code: Option<i32>,
    pub response_error: Option<String>,
    pub response_body: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub override_error: Option<bool>,
}

/// Fields of `response`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpectResponse {
    pub status_code: Option<i32>,
    /// `raw_body` (what the gateway sends on), else `body`.
    pub body: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
}

/// Fields of `session`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpectSession {
    pub alias: Option<String>,
    pub org_id: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    /// API IDs among the keys of `access_rights`.
    pub apis: Option<Vec<String>>,
    pub apply_policies: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub rate: Option<f64>,
    pub per: Option<f64>,
    pub quota_max: Option<i64>,
    pub expires: Option<i64>,
}

/// What a case's call answered.
#[derive(Debug)]
pub(crate) struct Got<'a> {
    pub outcome: Outcome,
    /// The reply is the request, byte for byte.
    pub unchanged: bool,
    pub reply: &'a pb::Object,
}

/// One difference between an expectation and the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mismatch {
    /// Where: `set_headers["X-Tier"]`, `return_overrides.response_code`.
    pub field: String,
    /// What was expected, as the line shows it.
    pub expected: String,
    /// What came back, or `None` for nothing.
    pub got: Option<String>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: expected {}, got ", self.field, self.expected)?;
        match &self.got {
            Some(got) => f.write_str(got),
            None => f.write_str("nothing"),
        }
    }
}

/// Collects the differences, field by field.
#[derive(Default)]
struct Diff(Vec<Mismatch>);

impl Diff {
    fn push(&mut self, field: impl Into<String>, expected: String, got: Option<String>) {
        self.0.push(Mismatch {
            field: field.into(),
            expected,
            got,
        });
    }

    /// A scalar; `got` is `None` when its message is absent, and the default value of a proto3
    /// scalar reads as nothing too, since the wire cannot tell it from unset.
    fn value<T: PartialEq + fmt::Debug + Default>(
        &mut self,
        field: &str,
        expected: Option<&T>,
        got: Option<&T>,
    ) {
        let Some(expected) = expected else { return };
        let got = got.filter(|got| **got != T::default());
        if got != Some(expected) && !(got.is_none() && *expected == T::default()) {
            self.push(
                field,
                format!("{expected:?}"),
                got.map(|g| format!("{g:?}")),
            );
        }
    }

    /// Entries of a map (others may be present); header names are compared without case.
    fn entries(
        &mut self,
        field: &str,
        expected: Option<&BTreeMap<String, String>>,
        got: Option<&BTreeMap<String, String>>,
        any_case: bool,
    ) {
        let Some(expected) = expected else { return };
        for (name, value) in expected {
            let found = got.and_then(|got| {
                got.get(name).or_else(|| {
                    any_case
                        .then(|| {
                            got.iter()
                                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                                .map(|(_, v)| v)
                        })
                        .flatten()
                })
            });
            if found != Some(value) {
                self.push(
                    format!("{field}[{name:?}]"),
                    format!("{value:?}"),
                    found.map(|v| format!("{v:?}")),
                );
            }
        }
    }

    /// Names a list must include.
    fn includes(
        &mut self,
        field: &str,
        expected: Option<&Vec<String>>,
        got: Option<&[String]>,
        any_case: bool,
    ) {
        let Some(expected) = expected else { return };
        let got = got.unwrap_or_default();
        for name in expected {
            let found = got.iter().any(|g| {
                if any_case {
                    g.eq_ignore_ascii_case(name)
                } else {
                    g == name
                }
            });
            if !found {
                self.push(
                    field,
                    format!("to include {name:?}"),
                    (!got.is_empty()).then(|| format!("{got:?}")),
                );
            }
        }
    }
}

/// How `got` differs from `expect`; empty when it holds everything expected.
pub(crate) fn diff(expect: &Expect, got: &Got<'_>) -> Vec<Mismatch> {
    let mut diff = Diff::default();
    if let Some(outcome) = expect.outcome
        && outcome.label() != got.outcome.as_str()
    {
        diff.push(
            "outcome",
            outcome.label().into(),
            Some(got.outcome.as_str().into()),
        );
    }
    if let Some(unchanged) = expect.unchanged
        && unchanged != got.unchanged
    {
        let (same, edited) = (
            "the request back byte for byte".to_string(),
            "an edited reply".to_string(),
        );
        let (expected, found) = if unchanged {
            (same, edited)
        } else {
            (edited, same)
        };
        diff.push("unchanged", expected, Some(found));
    }
    request(&mut diff, expect, got.reply.request.as_ref());
    if let Some(response) = &expect.response {
        let got = got.reply.response.as_ref();
        diff.value(
            "response.status_code",
            response.status_code.as_ref(),
            got.map(|r| &r.status_code),
        );
        let body = got.map(|r| match r.raw_body.is_empty() {
            true => r.body.clone(),
            false => String::from_utf8_lossy(&r.raw_body).into_owned(),
        });
        diff.value("response.body", response.body.as_ref(), body.as_ref());
        diff.entries(
            "response.headers",
            response.headers.as_ref(),
            got.map(|r| &r.headers),
            true,
        );
    }
    diff.entries(
        "metadata",
        expect.metadata.as_ref(),
        Some(&got.reply.metadata),
        false,
    );
    if let Some(session) = &expect.session {
        self::session(&mut diff, session, got.reply.session.as_ref());
    }
    diff.0
}

fn request(diff: &mut Diff, expect: &Expect, got: Option<&pb::MiniRequestObject>) {
    diff.entries(
        "set_headers",
        expect.set_headers.as_ref(),
        got.map(|r| &r.set_headers),
        true,
    );
    diff.includes(
        "delete_headers",
        expect.delete_headers.as_ref(),
        got.map(|r| r.delete_headers.as_slice()),
        true,
    );
    diff.entries(
        "add_params",
        expect.add_params.as_ref(),
        got.map(|r| &r.add_params),
        false,
    );
    diff.includes(
        "delete_params",
        expect.delete_params.as_ref(),
        got.map(|r| r.delete_params.as_slice()),
        false,
    );
    diff.value("url", expect.url.as_ref(), got.map(|r| &r.url));
    diff.value("method", expect.method.as_ref(), got.map(|r| &r.method));
    if let Some(overrides) = &expect.return_overrides {
        let got = got.and_then(|r| r.return_overrides.as_ref());
        diff.value(
            "return_overrides.response_code",
            overrides.response_code.as_ref(),
            got.map(|o| &o.response_code),
        );
        diff.value(
            "return_overrides.response_error",
            overrides.response_error.as_ref(),
            got.map(|o| &o.response_error),
        );
        diff.value(
            "return_overrides.response_body",
            overrides.response_body.as_ref(),
            got.map(|o| &o.response_body),
        );
        diff.entries(
            "return_overrides.headers",
            overrides.headers.as_ref(),
            got.map(|o| &o.headers),
            true,
        );
        diff.value(
            "return_overrides.override_error",
            overrides.override_error.as_ref(),
            got.map(|o| &o.override_error),
        );
    }
}

fn session(diff: &mut Diff, expect: &ExpectSession, got: Option<&pb::SessionState>) {
    diff.value(
        "session.alias",
        expect.alias.as_ref(),
        got.map(|s| &s.alias),
    );
    diff.value(
        "session.org_id",
        expect.org_id.as_ref(),
        got.map(|s| &s.org_id),
    );
    diff.entries(
        "session.metadata",
        expect.metadata.as_ref(),
        got.map(|s| &s.metadata),
        false,
    );
    let apis: Option<Vec<String>> = got.map(|s| s.access_rights.keys().cloned().collect());
    diff.includes("session.apis", expect.apis.as_ref(), apis.as_deref(), false);
    diff.includes(
        "session.apply_policies",
        expect.apply_policies.as_ref(),
        got.map(|s| s.apply_policies.as_slice()),
        false,
    );
    diff.includes(
        "session.tags",
        expect.tags.as_ref(),
        got.map(|s| s.tags.as_slice()),
        false,
    );
    diff.value("session.rate", expect.rate.as_ref(), got.map(|s| &s.rate));
    diff.value("session.per", expect.per.as_ref(), got.map(|s| &s.per));
    diff.value(
        "session.quota_max",
        expect.quota_max.as_ref(),
        got.map(|s| &s.quota_max),
    );
    diff.value(
        "session.expires",
        expect.expires.as_ref(),
        got.map(|s| &s.expires),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(yaml: &str) -> Expect {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn lines(expect: &Expect, outcome: Outcome, reply: &pb::Object) -> Vec<String> {
        diff(
            expect,
            &Got {
                outcome,
                unchanged: false,
                reply,
            },
        )
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    fn with_request(request: pb::MiniRequestObject) -> pb::Object {
        pb::Object {
            request: Some(request),
            ..Default::default()
        }
    }

    #[test]
    fn matching_entries_give_no_lines_and_others_are_allowed() {
        let reply = with_request(pb::MiniRequestObject {
            set_headers: [
                ("X-Tier".into(), "gold".into()),
                ("X-Other".into(), "1".into()),
            ]
            .into(),
            delete_headers: vec!["X-Internal".into()],
            url: "/v2/orders".into(),
            ..Default::default()
        });
        let expect = expect(
            "{outcome: modified, set_headers: {x-tier: gold}, delete_headers: [x-internal], url: /v2/orders}",
        );
        assert_eq!(
            lines(&expect, Outcome::Modified, &reply),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_wrong_or_missing_entry_says_what_was_expected_and_got() {
        let reply = with_request(pb::MiniRequestObject {
            set_headers: [("X-Tier".into(), "silver".into())].into(),
            ..Default::default()
        });
        let expect = expect("{set_headers: {X-Tier: gold, X-Region: eu}, add_params: {v: '2'}}");
        assert_eq!(
            lines(&expect, Outcome::Modified, &reply),
            [
                r#"set_headers["X-Region"]: expected "eu", got nothing"#,
                r#"set_headers["X-Tier"]: expected "gold", got "silver""#,
                r#"add_params["v"]: expected "2", got nothing"#,
            ]
        );
    }

    #[test]
    fn outcome_lists_scalars_and_overrides_are_compared() {
        let reply = with_request(pb::MiniRequestObject {
            delete_params: vec!["trace".into()],
            method: "GET".into(),
            return_overrides: Some(pb::ReturnOverrides {
                response_code: 401,
                headers: [("WWW-Authenticate".into(), "Bearer".into())].into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let expect = expect(
            "{outcome: responded, delete_params: [debug], method: POST, url: /x, return_overrides: {response_code: 403, headers: {www-authenticate: Bearer}, response_body: denied}}",
        );
        assert_eq!(
            lines(&expect, Outcome::Modified, &reply),
            [
                "outcome: expected responded, got modified",
                r#"delete_params: expected to include "debug", got ["trace"]"#,
                r#"url: expected "/x", got nothing"#,
                r#"method: expected "POST", got "GET""#,
                "return_overrides.response_code: expected 403, got 401",
                r#"return_overrides.response_body: expected "denied", got nothing"#,
            ]
        );
    }

    #[test]
    fn response_metadata_and_session_are_compared() {
        let reply = pb::Object {
            response: Some(pb::ResponseObject {
                status_code: 200,
                raw_body: bytes::Bytes::from_static(b"upstream"),
                ..Default::default()
            }),
            metadata: [("token".into(), "t1".into())].into(),
            session: Some(pb::SessionState {
                alias: "team-a".into(),
                access_rights: [("orders".into(), pb::AccessDefinition::default())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let expect = expect(
            "{response: {status_code: 502, body: upstream, headers: {X-Cache: hit}}, metadata: {token: t2}, session: {alias: team-a, apis: [orders, users], metadata: {tenant: acme}}}",
        );
        assert_eq!(
            lines(&expect, Outcome::Modified, &reply),
            [
                "response.status_code: expected 502, got 200",
                r#"response.headers["X-Cache"]: expected "hit", got nothing"#,
                r#"metadata["token"]: expected "t2", got "t1""#,
                r#"session.metadata["tenant"]: expected "acme", got nothing"#,
                r#"session.apis: expected to include "users", got ["orders"]"#,
            ]
        );
    }

    #[test]
    fn no_session_or_response_reads_as_nothing() {
        let expect = expect("{session: {alias: a}, response: {status_code: 200}}");
        assert_eq!(
            lines(&expect, Outcome::Responded, &pb::Object::default()),
            [
                r#"response.status_code: expected 200, got nothing"#,
                r#"session.alias: expected "a", got nothing"#,
            ]
        );
    }

    #[test]
    fn unchanged_compares_the_bytes() {
        let expect = expect("{unchanged: true}");
        let reply = pb::Object::default();
        let got = |unchanged| Got {
            outcome: Outcome::Unchanged,
            unchanged,
            reply: &reply,
        };
        assert!(diff(&expect, &got(true)).is_empty());
        assert_eq!(
            diff(&expect, &got(false))[0].to_string(),
            "unchanged: expected the request back byte for byte, got an edited reply"
        );
    }

    #[test]
    fn an_expected_default_value_matches_an_unset_field() {
        let expect = expect("{return_overrides: {override_error: false}, url: ''}");
        assert!(lines(&expect, Outcome::Unchanged, &pb::Object::default()).is_empty());
    }
}
