//! Answers recorded for offline runs (`tyk-dispatcher test` and `eval`): a step that would call
//! the network (an OPA or HTTP decision, a JWKS URL) takes its answer from here when the call
//! carries recordings, and fails when its own is missing rather than reaching the network.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::step::StepError;

/// One recorded answer: what a request to `method` `url` got.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedAnswer {
    /// The request's method (default POST, what decision calls use).
    #[serde(default = "default_method")]
    pub method: String,
    /// The request's URL, as the step's settings name it.
    pub url: String,
    /// The answer's status.
    #[serde(default = "default_status")]
    pub status: u16,
    /// The answer's headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The answer's body: a string as it is, anything else as JSON.
    #[serde(default)]
    pub body: serde_json::Value,
}

fn default_method() -> String {
    "POST".into()
}

fn default_status() -> u16 {
    200
}

impl RecordedAnswer {
    /// The body's bytes.
    pub fn body_bytes(&self) -> Vec<u8> {
        match &self.body {
            serde_json::Value::String(text) => text.clone().into_bytes(),
            serde_json::Value::Null => Vec::new(),
            other => other.to_string().into_bytes(),
        }
    }
}

/// The recorded answers of one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    answers: Vec<RecordedAnswer>,
}

impl Recorded {
    /// Recordings made of `answers`.
    pub fn new(answers: Vec<RecordedAnswer>) -> Self {
        Self { answers }
    }

    /// The answer recorded for `method` `url`.
    ///
    /// # Errors
    /// None is recorded for it: the step fails (offline runs never reach the network).
    pub fn answer(&self, method: &str, url: &str) -> Result<&RecordedAnswer, StepError> {
        self.answers
            .iter()
            .find(|a| a.method.eq_ignore_ascii_case(method) && a.url == url)
            .ok_or_else(|| {
                StepError::new(format!(
                    "no answer recorded for {method} {url} (offline runs do not reach the network)"
                ))
            })
    }
}
