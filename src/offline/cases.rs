//! Case files: YAML or JSON holding `cases: [...]` or one case, each a request Object (protobuf
//! JSON, camelCase or snake_case names) with shortcuts for the hook and API, recorded answers for
//! network-backed steps and expectations. Invalid input is reported per case, by field.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::expect::Expect;
use crate::{
    hooks::{HookTypeName, recorded::RecordedAnswer},
    pb,
};

/// One case: a request and what its answer is expected to hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Case {
    /// Shown on the case's result line.
    #[serde(default)]
    pub name: Option<String>,
    /// Overrides `object.hookType`.
    #[serde(default)]
    pub hook_type: Option<HookTypeName>,
    /// Overrides `object.hookName`.
    #[serde(default)]
    pub hook_name: Option<String>,
    /// `spec["APIID"]`.
    #[serde(default)]
    pub api_id: Option<String>,
    /// `spec["OrgID"]`.
    #[serde(default)]
    pub org_id: Option<String>,
    /// `spec["config_data"]`: a string as it is (the gateway's JSON text, or text that is not
    /// JSON), anything else written as JSON.
    #[serde(default)]
    pub config_data: Option<Value>,
    /// The Object as the gateway would send it.
    #[serde(default)]
    pub object: pb::Object,
    /// Answers for steps that would call the network.
    #[serde(default)]
    pub recorded: Vec<RecordedAnswer>,
    /// What the answer must hold (`test` requires it, `eval` ignores it).
    #[serde(default)]
    pub expect: Option<Expect>,
}

impl Case {
    /// The Object to send: `object` with the shortcuts applied and `return_overrides` filled in
    /// as the gateway always sends it (`response_code = -1`), so cases can leave it out.
    pub fn request(&self) -> pb::Object {
        let mut object = self.object.clone();
        if let Some(hook_type) = self.hook_type {
            object.hook_type = pb::HookType::from(hook_type) as i32;
        }
        if let Some(name) = &self.hook_name {
            object.hook_name.clone_from(name);
        }
        for (key, value) in [("APIID", &self.api_id), ("OrgID", &self.org_id)] {
            if let Some(value) = value {
                object.spec.insert(key.into(), value.clone());
            }
        }
        let config_data = match &self.config_data {
            Some(Value::String(text)) => Some(text.clone()),
            Some(value) => Some(value.to_string()),
            None => None,
        };
        if let Some(config_data) = config_data {
            object.spec.insert("config_data".into(), config_data);
        }
        let request = object.request.get_or_insert_with(Default::default);
        request
            .return_overrides
            .get_or_insert_with(|| pb::ReturnOverrides {
                response_code: -1,
                ..Default::default()
            });
        object
    }
}

/// A case as read, with where it came from.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The case's label on result lines: its name, or `case N`.
    pub label: String,
    /// The case's label in errors: `case N` or `case N ("its name")`, counted from 1.
    pub numbered: String,
    pub case: Case,
}

/// Why a case file (or one of its cases) cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaseError {
    /// The file cannot be read, or a directory holds no case file.
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    /// One case is invalid.
    #[error("{file}: {case}: {reason}")]
    Case {
        file: String,
        /// `case N` or `case N ("its name")`, counted from 1.
        case: String,
        reason: String,
    },
}

/// How a file's text is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Json,
    Yaml,
}

impl Syntax {
    /// By extension; otherwise (stdin, other names) JSON when the text starts as JSON does.
    fn of(path: &Path, text: &str) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Self::Json,
            Some("yaml" | "yml") => Self::Yaml,
            _ if text.trim_start().starts_with('{') => Self::Json,
            _ => Self::Yaml,
        }
    }
}

/// The case files named by `paths`: files as given, directories searched (recursively) for
/// `*.yaml`, `*.yml` and `*.json`, sorted.
///
/// # Errors
/// A path that cannot be read, or a directory without case files.
pub(crate) fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CaseError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let before = files.len();
            walk(path, &mut files)?;
            files[before..].sort();
            if files.len() == before {
                return Err(CaseError::File {
                    file: path.display().to_string(),
                    reason: "no *.yaml, *.yml or *.json files in this directory".into(),
                });
            }
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), CaseError> {
    let unreadable = |err: std::io::Error| CaseError::File {
        file: dir.display().to_string(),
        reason: format!("cannot read: {err}"),
    };
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(path);
        }
    }
    Ok(())
}

/// Reads the cases of the file at `path`.
///
/// # Errors
/// The file cannot be read or parsed, or any of its cases is invalid (each one reported).
pub(crate) fn read(path: &Path) -> Result<Vec<Loaded>, Vec<CaseError>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| {
        vec![CaseError::File {
            file: file.clone(),
            reason: format!("cannot read: {err}"),
        }]
    })?;
    read_text(&file, path, &text)
}

/// Reads the cases of `text`, parsed as `path`'s extension says (`-`, stdin: by its first
/// character), labelled `file` in errors.
///
/// # Errors
/// As [`read`].
pub(crate) fn read_text(
    file: &str,
    path: &Path,
    text: &str,
) -> Result<Vec<Loaded>, Vec<CaseError>> {
    parse(file, Syntax::of(path, text), text)
}

fn parse(file: &str, syntax: Syntax, text: &str) -> Result<Vec<Loaded>, Vec<CaseError>> {
    let file_error = |reason: String| {
        vec![CaseError::File {
            file: file.to_string(),
            reason,
        }]
    };
    let document: Value = match syntax {
        Syntax::Json => serde_json::from_str(text).map_err(|err| file_error(err.to_string()))?,
        Syntax::Yaml => serde_yaml::from_str(text).map_err(|err| file_error(err.to_string()))?,
    };
    let values = case_values(document).map_err(file_error)?;
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        let number = index + 1;
        // From the raw value: the case is named in its errors even when its name is all that
        // deserializes.
        let numbered = match value.get("name").and_then(Value::as_str) {
            Some(name) => format!("case {number} ({name:?})"),
            None => format!("case {number}"),
        };
        match case_of(value) {
            Ok(case) => cases.push(Loaded {
                label: case
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("case {number}")),
                numbered,
                case,
            }),
            Err(reason) => errors.push(CaseError::Case {
                file: file.to_string(),
                case: numbered,
                reason,
            }),
        }
    }
    if errors.is_empty() {
        Ok(cases)
    } else {
        Err(errors)
    }
}

/// The cases of a document: its `cases` list, or the document itself as one case.
fn case_values(document: Value) -> Result<Vec<Value>, String> {
    match document {
        Value::Object(mut map) => match map.remove("cases") {
            Some(Value::Array(cases)) if map.is_empty() => Ok(cases),
            Some(Value::Array(_)) => Err(format!(
                "unknown field `{}` beside `cases` (each setting belongs in a case)",
                map.keys().next().map_or("", String::as_str)
            )),
            Some(_) => Err("cases: expected a list of cases".into()),
            None => Ok(vec![Value::Object(map)]),
        },
        _ => Err("expected a mapping: `cases: [...]`, or one case".into()),
    }
}

/// Deserializes one case, naming the field at fault.
fn case_of(mut value: Value) -> Result<Case, String> {
    accept_logged_bodies(&mut value);
    serde_path_to_error::deserialize(value).map_err(at_field)
}

/// `<path>: <message>`; an unknown field is reported at the mapping that holds it, since the
/// message names it already.
fn at_field<E: std::fmt::Display>(err: serde_path_to_error::Error<E>) -> String {
    let path = err.path().to_string();
    let message = err.into_inner().to_string();
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    let path = match unknown {
        Some(name) if path == name => "",
        Some(name) => path
            .strip_suffix(name)
            .and_then(|parent| parent.strip_suffix('.'))
            .unwrap_or(&path),
        None if path == "." => "",
        None => &path,
    };
    if path.is_empty() {
        message
    } else {
        format!("{path}: {message}")
    }
}

/// An Object copied from the server's `log_objects` output has each body replaced by
/// `{"bytes": N, "sha256": "…"}`; such a body is taken as empty, so the Object still runs.
fn accept_logged_bodies(case: &mut Value) {
    let Some(object) = case.get_mut("object") else {
        return;
    };
    for part in ["request", "response"] {
        if let Some(Value::Object(part)) = object.get_mut(part) {
            for field in ["body", "rawBody", "raw_body"] {
                if part
                    .get(field)
                    .is_some_and(|body| body.get("sha256").is_some())
                {
                    part.remove(field);
                }
            }
        }
    }
}

/// Reads one Object in protobuf JSON (as `log_objects` writes it) as a case without
/// expectations, when `text` is not a case file: a mapping with none of a case's own keys.
pub(crate) fn bare_object(
    file: &str,
    path: &Path,
    text: &str,
) -> Option<Result<Vec<Loaded>, Vec<CaseError>>> {
    const CASE_KEYS: &[&str] = &[
        "cases",
        "name",
        "api_id",
        "org_id",
        "config_data",
        "object",
        "recorded",
        "expect",
    ];
    let document: Value = match Syntax::of(path, text) {
        Syntax::Json => serde_json::from_str(text).ok()?,
        Syntax::Yaml => serde_yaml::from_str(text).ok()?,
    };
    let map = document.as_object()?;
    if map.keys().any(|key| CASE_KEYS.contains(&key.as_str())) {
        return None;
    }
    let mut case = serde_json::json!({ "object": document });
    accept_logged_bodies(&mut case);
    let object = case.get_mut("object").map(Value::take).unwrap_or_default();
    Some(
        serde_path_to_error::deserialize::<_, pb::Object>(object)
            .map(|object| {
                vec![Loaded {
                    label: "object".into(),
                    numbered: "object".into(),
                    case: Case {
                        name: None,
                        hook_type: None,
                        hook_name: None,
                        api_id: None,
                        org_id: None,
                        config_data: None,
                        object,
                        recorded: Vec::new(),
                        expect: None,
                    },
                }]
            })
            .map_err(|err| {
                vec![CaseError::File {
                    file: file.to_string(),
                    reason: format!("not an Object: {}", at_field(err)),
                }]
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<String> {
        match parse("x.yaml", Syntax::Yaml, text) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_misspelt_field_names_the_file_the_case_and_the_field() {
        let text = "cases:\n  - name: fine\n    expect: {}\n  - name: wrong tenant\n    object: {request: {hedaers: {}}}\n";
        let errors = errors_of(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "x.yaml: case 2 (\"wrong tenant\"): object.request: unknown field `hedaers`"
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn an_unknown_expectation_is_an_error() {
        let errors = errors_of("expect: {outcom: modified}\n");
        assert!(
            errors[0].starts_with("x.yaml: case 1: expect: unknown field `outcom`"),
            "{errors:?}"
        );
        let errors = errors_of("nmae: x\n");
        assert!(
            errors[0].starts_with("x.yaml: case 1: unknown field `nmae`"),
            "{errors:?}"
        );
        let errors = errors_of("name: x\nexpect: {set_headers: {X-Count: 2}}\n");
        assert!(
            errors[0].starts_with(
                "x.yaml: case 1 (\"x\"): expect.set_headers.X-Count: invalid type: integer `2`"
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn the_shortcuts_and_the_gateway_defaults_shape_the_request() {
        let text = "hook_type: Pre\nhook_name: tenant\napi_id: orders\nconfig_data: {tiers: [gold]}\nobject: {hookName: other, request: {headers: {X-Tier: gold}}}\n";
        let cases = parse("x.yaml", Syntax::Yaml, text).unwrap();
        let request = cases[0].case.request();
        assert_eq!(request.hook_type, pb::HookType::Pre as i32);
        assert_eq!(request.hook_name, "tenant");
        assert_eq!(request.spec["APIID"], "orders");
        assert_eq!(request.spec["config_data"], r#"{"tiers":["gold"]}"#);
        let request = request.request.unwrap();
        assert_eq!(request.headers["X-Tier"], "gold");
        assert_eq!(request.return_overrides.unwrap().response_code, -1);
        assert_eq!(cases[0].label, "case 1");
        let cases = parse("x.yaml", Syntax::Yaml, "config_data: 'not json'\n").unwrap();
        assert_eq!(cases[0].case.request().spec["config_data"], "not json");
    }

    #[test]
    fn snake_case_object_fields_are_accepted() {
        let text = r#"{"object": {"hook_type": "Response", "hook_name": "h", "request": {"set_headers": {"A": "b"}}}}"#;
        let cases = parse("x.json", Syntax::Json, text).unwrap();
        let request = cases[0].case.request();
        assert_eq!(request.hook_type, pb::HookType::Response as i32);
        assert_eq!(request.request.unwrap().set_headers["A"], "b");
    }

    #[test]
    fn a_logged_object_reads_as_a_bare_object_with_empty_bodies() {
        let logged = r#"{"hookType": "Pre", "hookName": "h", "request": {"body": {"bytes": 3, "sha256": "ab"}, "rawBody": {"bytes": 3, "sha256": "ab"}, "url": "/x"}}"#;
        let cases = bare_object("-", Path::new("-"), logged).unwrap().unwrap();
        let request = cases[0].case.request();
        assert_eq!(request.hook_name, "h");
        assert_eq!(request.request.unwrap().url, "/x");
        // A case is not a bare Object.
        assert!(bare_object("-", Path::new("-"), "{\"object\": {}}").is_none());
    }

    #[test]
    fn settings_beside_cases_are_refused() {
        let errors = errors_of("hook_name: h\ncases: []\n");
        assert_eq!(
            errors,
            ["x.yaml: unknown field `hook_name` beside `cases` (each setting belongs in a case)"]
        );
    }
}
