//! The variables an expression reads, made from the call's Object on first use and borrowing its
//! strings: a condition on one header does not copy the others.

use std::{collections::HashMap, sync::OnceLock};

use cel::{
    common::{
        types::{CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString},
        value::{CowVal, Val},
    },
    context::VariableResolver,
};

use super::Variables;
use crate::{
    hooks::{step::StepContext, steps::upstream_headers},
    pb,
};

type Boxed<'a> = Box<dyn Val + 'a>;

/// One variable, built, with its size for the cost estimate.
struct Built<'a> {
    value: Boxed<'a>,
    /// Entries of its largest collection.
    items: u64,
    /// Bytes of its strings.
    bytes: u64,
}

/// Sizes gathered while building a variable.
#[derive(Default)]
struct Sizes {
    items: u64,
    bytes: u64,
}

impl Sizes {
    fn text<'a>(&mut self, text: &'a str) -> Boxed<'a> {
        self.bytes += text.len() as u64;
        Box::new(CelString::from(text))
    }

    fn collection(&mut self, len: usize) {
        self.items = self.items.max(len as u64);
    }

    /// A map of strings to strings.
    fn strings<'a>(
        &mut self,
        map: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
    ) -> Boxed<'a> {
        self.collection(map.len());
        let entries = map
            .map(|(k, v)| {
                self.bytes += k.len() as u64;
                (CelMapKey::from(k.as_str()), self.text(v))
            })
            .collect::<HashMap<_, _>>();
        Box::new(CelMap::from(entries))
    }

    /// A list of strings.
    fn list<'a>(&mut self, items: &'a [String]) -> Boxed<'a> {
        self.collection(items.len());
        let list: Vec<Boxed<'a>> = items.iter().map(|s| self.text(s)).collect();
        Box::new(CelList::from(list))
    }

    /// A JSON document.
    fn json<'a>(&mut self, value: &'a serde_json::Value) -> Boxed<'a> {
        match value {
            serde_json::Value::Null => Box::new(CelNull),
            serde_json::Value::Bool(b) => Box::new(CelBool::from(*b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Box::new(CelInt::from(i)),
                None => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
            },
            serde_json::Value::String(s) => self.text(s),
            serde_json::Value::Array(items) => {
                self.collection(items.len());
                let list: Vec<Boxed<'a>> = items.iter().map(|v| self.json(v)).collect();
                Box::new(CelList::from(list))
            }
            serde_json::Value::Object(map) => {
                self.collection(map.len());
                let entries = map
                    .iter()
                    .map(|(k, v)| {
                        self.bytes += k.len() as u64;
                        (CelMapKey::from(k.as_str()), self.json(v))
                    })
                    .collect::<HashMap<_, _>>();
                Box::new(CelMap::from(entries))
            }
        }
    }

    fn done(self, value: Boxed<'_>) -> Built<'_> {
        Built {
            value,
            items: self.items,
            bytes: self.bytes,
        }
    }
}

/// A record: fixed field names to values.
fn record<'a>(fields: Vec<(&'static str, Boxed<'a>)>) -> Boxed<'a> {
    let entries = fields
        .into_iter()
        .map(|(name, value)| (CelMapKey::from(name), value))
        .collect::<HashMap<_, _>>();
    Box::new(CelMap::from(entries))
}

fn int<'a>(value: i64) -> Boxed<'a> {
    Box::new(CelInt::from(value))
}

fn double<'a>(value: f64) -> Boxed<'a> {
    Box::new(CelDouble::from(value))
}

fn len_int<'a>(len: usize) -> Boxed<'a> {
    int(i64::try_from(len).unwrap_or(i64::MAX))
}

/// The variables of one evaluation (or of several, while the Object does not change).
pub struct Input<'a> {
    object: &'a pb::Object,
    cx: &'a StepContext,
    /// What may be built: the variables (and `request` fields) the expressions read.
    reads: Variables,
    request: OnceLock<Built<'a>>,
    session: OnceLock<Built<'a>>,
    spec: OnceLock<Built<'a>>,
    hook: OnceLock<Built<'a>>,
    response: OnceLock<Built<'a>>,
}

impl std::fmt::Debug for Input<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input").finish_non_exhaustive()
    }
}

impl<'a> Input<'a> {
    /// The variables `reads` names, of a call whose Object is `object`.
    pub fn new(object: &'a pb::Object, cx: &'a StepContext, reads: Variables) -> Self {
        Self {
            object,
            cx,
            reads,
            request: OnceLock::new(),
            session: OnceLock::new(),
            spec: OnceLock::new(),
            hook: OnceLock::new(),
            response: OnceLock::new(),
        }
    }

    /// What this input was made for.
    pub fn reads(&self) -> Variables {
        self.reads
    }

    /// The Object it reads.
    pub fn object(&self) -> &'a pb::Object {
        self.object
    }

    /// The call's context.
    pub fn context(&self) -> &'a StepContext {
        self.cx
    }

    /// The largest collection and the bytes of strings of `variables` (built now if they were
    /// not).
    pub fn size(&self, variables: Variables) -> (u64, u64) {
        [
            (Variables::REQUEST, "request"),
            (Variables::SESSION, "session"),
            (Variables::SPEC, "spec"),
            (Variables::HOOK, "hook"),
            (Variables::RESPONSE, "response"),
        ]
        .into_iter()
        .filter(|(v, _)| variables.has(*v))
        .filter_map(|(_, name)| self.variable(name))
        .fold((0, 0), |(items, bytes), built| {
            (items.max(built.items), bytes + built.bytes)
        })
    }

    fn variable(&self, name: &str) -> Option<&Built<'a>> {
        let (cell, build): (_, fn(&Self) -> Built<'a>) = match name {
            "request" => (&self.request, Self::request),
            "session" => (&self.session, Self::session),
            "spec" => (&self.spec, Self::spec),
            "hook" => (&self.hook, Self::hook),
            "response" => (&self.response, Self::response),
            _ => return None,
        };
        Some(cell.get_or_init(|| build(self)))
    }

    fn request(&self) -> Built<'a> {
        let mut sizes = Sizes::default();
        let Some(request) = self.object.request.as_ref() else {
            return sizes.done(record(Vec::new()));
        };
        let mut fields = Vec::with_capacity(Variables::REQUEST_FIELDS.len());
        for (i, name) in Variables::REQUEST_FIELDS.into_iter().enumerate() {
            if !self.reads.reads_request_field(i) {
                continue;
            }
            let value = match name {
                "method" => sizes.text(&request.method),
                "path" => sizes.text(request.url.split('?').next().unwrap_or("")),
                "url" => sizes.text(&request.url),
                "headers" => request_headers(request, &mut sizes),
                "params" => sizes.strings(request.params.iter()),
                "scheme" => sizes.text(&request.scheme),
                _ => len_int(if request.raw_body.is_empty() {
                    request.body.len()
                } else {
                    request.raw_body.len()
                }),
            };
            fields.push((name, value));
        }
        sizes.done(record(fields))
    }

    fn session(&self) -> Built<'a> {
        let mut sizes = Sizes::default();
        let empty: &'static pb::SessionState = empty_session();
        let session = self.object.session.as_ref().unwrap_or(empty);
        let value = record(vec![
            ("metadata", sizes.strings(session.metadata.iter())),
            ("alias", sizes.text(&session.alias)),
            ("org_id", sizes.text(&session.org_id)),
            ("tags", sizes.list(&session.tags)),
            ("apply_policies", sizes.list(&session.apply_policies)),
            ("rate", double(session.rate)),
            ("per", double(session.per)),
            ("expires", int(session.expires)),
            ("quota_max", int(session.quota_max)),
            ("quota_remaining", int(session.quota_remaining)),
            ("quota_renews", int(session.quota_renews)),
            ("quota_renewal_rate", int(session.quota_renewal_rate)),
        ]);
        sizes.done(value)
    }

    fn spec(&self) -> Built<'a> {
        let mut sizes = Sizes::default();
        let config_data = match self.cx.config_data.as_deref() {
            Some(value) => sizes.json(value),
            None => Box::new(CelNull),
        };
        let value = record(vec![
            ("api_id", sizes.text(&self.cx.api_id)),
            ("org_id", sizes.text(&self.cx.org_id)),
            ("config_data", config_data),
        ]);
        sizes.done(value)
    }

    fn hook(&self) -> Built<'a> {
        let mut sizes = Sizes::default();
        let value = record(vec![
            ("type", sizes.text(self.cx.hook_type.as_str_name())),
            ("name", sizes.text(&self.cx.hook_name)),
        ]);
        sizes.done(value)
    }

    fn response(&self) -> Built<'a> {
        let mut sizes = Sizes::default();
        let Some(response) = self.object.response.as_ref() else {
            return sizes.done(record(Vec::new()));
        };
        let body_size = if response.raw_body.is_empty() {
            response.body.len()
        } else {
            response.raw_body.len()
        };
        let value = record(vec![
            ("status", int(i64::from(response.status_code))),
            ("headers", sizes.strings(response.headers.iter())),
            ("body_size", len_int(body_size)),
        ]);
        sizes.done(value)
    }
}

/// The request's headers as the upstream would get them: canonical names, with the edits of
/// earlier steps (`set_headers`, `delete_headers`) applied.
fn request_headers<'a>(request: &'a pb::MiniRequestObject, sizes: &mut Sizes) -> Boxed<'a> {
    let mut headers: HashMap<CelMapKey<'a>, Boxed<'a>> =
        HashMap::with_capacity(request.headers.len() + request.set_headers.len());
    for (name, value) in upstream_headers(request) {
        sizes.bytes += name.len() as u64;
        headers.insert(CelMapKey::String(CelString::from(name)), sizes.text(value));
    }
    sizes.collection(headers.len());
    Box::new(CelMap::from(headers))
}

fn empty_session() -> &'static pb::SessionState {
    static EMPTY: OnceLock<pb::SessionState> = OnceLock::new();
    EMPTY.get_or_init(pb::SessionState::default)
}

impl VariableResolver for Input<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        self.variable(variable)
            .map(|built| CowVal::Borrowed(built.value.as_ref()))
    }
}
