//! CEL (Common Expression Language) in hook configs: step conditions (`when = "…"`), computed
//! header, parameter and body values (`{ cel = "…" }`) and the `authorize` step.
//!
//! Expressions are compiled and checked when the config loads: a syntax error, an unknown
//! variable or function, or a variable the hook type does not have (`session` on Pre, `response`
//! on request hooks) is a config problem naming the hook, the step, the setting and the line and
//! column. Evaluation reads the call's Object in place (strings are borrowed, not copied) and is
//! bounded by a cost estimate checked before it starts (see [`Expression::estimate`]).
//!
//! The variables:
//!
//! | name | fields |
//! |---|---|
//! | `request` | `method`, `path`, `url`, `headers` (canonical names, earlier steps' edits applied), `params`, `scheme`, `body_size` |
//! | `session` | `metadata`, `alias`, `org_id`, `tags`, `rate`, `per`, `expires`, `quota_max`, `quota_remaining`, `quota_renews`, `quota_renewal_rate`, `apply_policies` (PostKeyAuth, Post, Response; CustomKeyCheck after an auth step) |
//! | `spec` | `api_id`, `org_id`, `config_data` (the API's `config_data` as JSON, `null` when absent or not JSON) |
//! | `hook` | `type`, `name` |
//! | `response` | `status`, `headers`, `body_size` (Response hooks) |

mod analysis;
mod input;
mod template;

use std::sync::{Arc, LazyLock};

use cel::{Context, Env, Program, Value};

use super::parts::ObjectParts;
use crate::pb::HookType;

pub use input::Input;
pub use template::{ComputedMap, Template, TemplateSetting};

/// The default cost limit of one evaluation (see [`Expression::estimate`]).
pub const DEFAULT_COST_LIMIT: u64 = 100_000;
/// Longest expression source, in bytes.
pub const MAX_SOURCE_BYTES: usize = 4096;
/// Deepest nesting the parser accepts (evaluation recurses as deep).
const MAX_PARSE_DEPTH: u16 = 32;

/// The standard environment, shared: compiling and evaluating do not change it.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// The variables an expression reads: the top-level ones, and which fields of `request` (the one
/// variable worth building in part: its headers are a map of their own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Variables {
    top: u8,
    request: u8,
}

impl Variables {
    pub const REQUEST: Self = Self::top(1);
    pub const SESSION: Self = Self::top(2);
    pub const SPEC: Self = Self::top(4);
    pub const HOOK: Self = Self::top(8);
    pub const RESPONSE: Self = Self::top(16);

    /// The fields of `request`, in [`Variables::request_field`]'s order.
    pub const REQUEST_FIELDS: [&str; 7] = [
        "method",
        "path",
        "url",
        "headers",
        "params",
        "scheme",
        "body_size",
    ];

    const fn top(bit: u8) -> Self {
        Self {
            top: bit,
            request: 0,
        }
    }

    /// `request` as a whole: every field.
    pub const fn whole_request() -> Self {
        Self {
            top: 1,
            request: u8::MAX,
        }
    }

    /// `request.<field>` only; a field `request` lacks reads it whole (the error comes at
    /// evaluation, as CEL's).
    pub fn request_field(field: &str) -> Self {
        match Self::REQUEST_FIELDS.iter().position(|f| *f == field) {
            Some(i) => Self {
                top: 1,
                request: 1 << i,
            },
            None => Self::whole_request(),
        }
    }

    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self {
            top: self.top | other.top,
            request: self.request | other.request,
        }
    }

    pub const fn has(self, other: Self) -> bool {
        self.top & other.top != 0
    }

    /// Whether a field of `request` (by its index in [`Variables::REQUEST_FIELDS`]) is read.
    pub fn reads_request_field(self, index: usize) -> bool {
        self.request & (1 << index) != 0
    }

    /// Whether everything `other` reads, these read too.
    pub fn covers(self, other: Self) -> bool {
        self.top & other.top == other.top && self.request & other.request == other.request
    }

    /// The Object parts these variables read (`spec` and `hook` come from the call's context).
    pub fn parts(self) -> ObjectParts {
        // Each field of `request` from the Object fields it is made of.
        const REQUEST_PARTS: [ObjectParts; 7] = [
            ObjectParts::REQUEST_METHOD,
            ObjectParts::REQUEST_URL,
            ObjectParts::REQUEST_URL,
            ObjectParts::REQUEST_HEADERS.union(ObjectParts::REQUEST_HEADER_EDITS),
            ObjectParts::REQUEST_PARAMS,
            ObjectParts::REQUEST_SCHEME,
            ObjectParts::REQUEST_BODY,
        ];
        let mut parts = ObjectParts::NONE;
        if self.has(Self::REQUEST) {
            for (i, field) in REQUEST_PARTS.into_iter().enumerate() {
                if self.reads_request_field(i) {
                    parts = parts.union(field);
                }
            }
        }
        if self.has(Self::SESSION) {
            parts = parts.union(ObjectParts::SESSION);
        }
        if self.has(Self::RESPONSE) {
            parts = parts.union(ObjectParts::RESPONSE);
        }
        parts
    }
}

/// Where an expression is compiled: what the hook has to offer it.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    /// The hook type.
    pub hook_type: HookType,
    /// Whether an authenticating step runs before (on CustomKeyCheck, the session comes from
    /// it).
    pub after_auth: bool,
    /// The hook's cost limit.
    pub cost_limit: u64,
}

impl Scope {
    /// The variable `name`, if this scope has it; why not otherwise.
    fn variable(self, name: &str) -> Result<Variables, String> {
        let hook = self.hook_type.as_str_name();
        match name {
            "request" => Ok(Variables::REQUEST),
            "spec" => Ok(Variables::SPEC),
            "hook" => Ok(Variables::HOOK),
            "session" => match self.hook_type {
                HookType::Pre => Err("Pre hooks have no `session` (it comes after authentication)".into()),
                HookType::CustomKeyCheck if !self.after_auth => Err(
                    "`session` on a CustomKeyCheck hook needs an auth step (api_key_auth, jwt_auth) before this one".into(),
                ),
                _ => Ok(Variables::SESSION),
            },
            "response" if self.hook_type == HookType::Response => Ok(Variables::RESPONSE),
            "response" => Err(format!("`response` is only set on Response hooks, not on {hook}")),
            _ => Err(format!(
                "unknown variable {name:?} (known: request, session, spec, hook, response)"
            )),
        }
    }
}

/// An expression could not be compiled: the message names the line and column.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(String);

/// An evaluation failed (the hook's `on_error` answers); the message names no request value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(String);

/// A compiled, checked expression.
pub struct Expression {
    source: Arc<str>,
    program: Program,
    variables: Variables,
    /// Nodes and byte-scanning calls per comprehension depth.
    nodes: [u64; analysis::MAX_COMPREHENSION_DEPTH + 1],
    scans: [u64; analysis::MAX_COMPREHENSION_DEPTH + 1],
    cost_limit: u64,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expression").field(&self.source).finish()
    }
}

impl Expression {
    /// Compiles and checks `source` for `scope`.
    ///
    /// # Errors
    /// A syntax error, an unknown or unavailable variable, an unknown function, comprehensions
    /// nested too deep, or a cost over the limit even on an empty request; with the line and
    /// column.
    pub fn compile(source: &str, scope: Scope) -> Result<Self, CompileError> {
        if source.trim().is_empty() {
            return Err(CompileError("the expression is empty".into()));
        }
        if source.len() > MAX_SOURCE_BYTES {
            return Err(CompileError(format!(
                "the expression is {} bytes, over the limit of {MAX_SOURCE_BYTES}",
                source.len()
            )));
        }
        let program = parse(source)?;
        let found = analysis::analyse(program.expression(), &|name| scope.variable(name)).map_err(
            |finding| {
                let position = program
                    .source_info()
                    .offset_for(finding.node)
                    .map(|(start, _)| line_column(source, start as usize));
                CompileError(match position {
                    Some((line, column)) => format!("{line}:{column}: {}", finding.message),
                    None => finding.message,
                })
            },
        )?;
        let expression = Self {
            source: Arc::from(source),
            program,
            variables: found.variables,
            nodes: found.nodes,
            scans: found.scans,
            cost_limit: scope.cost_limit,
        };
        let least = expression.estimate(1, 0);
        if least > scope.cost_limit {
            return Err(CompileError(format!(
                "the expression costs at least {least}, over the hook's cel_cost_limit of {}",
                scope.cost_limit
            )));
        }
        Ok(expression)
    }

    /// The source, as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The top-level variables it reads.
    pub fn variables(&self) -> Variables {
        self.variables
    }

    /// The Object parts it reads.
    pub fn parts(&self) -> ObjectParts {
        self.variables.parts()
    }

    /// The estimated cost of one evaluation on a call whose largest collection has `items`
    /// entries and whose strings hold `bytes` in all: every node evaluated counts 1, and a call
    /// that scans or builds strings (`+`, `==`, `contains`, `matches`, ...) 1 more per KiB of
    /// them; the body of a comprehension counts once per item, nested ones per item squared.
    pub fn estimate(&self, items: u64, bytes: u64) -> u64 {
        let per_scan = 1 + bytes / 1024;
        let mut cost = 0u64;
        let mut repeat = 1u64;
        for (nodes, scans) in self.nodes.iter().zip(&self.scans) {
            let level = nodes.saturating_add(scans.saturating_mul(per_scan));
            cost = cost.saturating_add(level.saturating_mul(repeat));
            repeat = repeat.saturating_mul(items.max(1));
        }
        cost
    }

    /// Evaluates on `input`.
    ///
    /// # Errors
    /// The estimated cost is over the limit, or evaluation failed (a missing key, a type
    /// mismatch, ...), in words that quote no value of the request.
    pub fn evaluate(&self, input: &Input<'_>) -> Result<Value, EvalError> {
        if !input.reads().covers(self.variables) {
            // Made for other expressions: this one gets variables of its own.
            return self.evaluate(&Input::new(input.object(), input.context(), self.variables));
        }
        let (items, bytes) = input.size(self.variables);
        let cost = self.estimate(items, bytes);
        if cost > self.cost_limit {
            return Err(EvalError(format!(
                "{:?}: estimated cost {cost} over the hook's cel_cost_limit of {} (largest collection {items}, {bytes} bytes of strings)",
                self.source, self.cost_limit
            )));
        }
        let mut context = Context::with_env(ENV.clone());
        context.set_variable_resolver(input);
        self.program
            .execute(&context)
            .map_err(|err| EvalError(format!("{:?}: {}", self.source, describe(&err))))
    }

    /// Evaluates to a boolean.
    ///
    /// # Errors
    /// As [`Expression::evaluate`], or the result is not a boolean.
    pub fn holds(&self, input: &Input<'_>) -> Result<bool, EvalError> {
        match self.evaluate(input)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError(format!(
                "{:?}: evaluated to a {}, not a bool",
                self.source,
                other.type_of()
            ))),
        }
    }

    /// Evaluates to a string: strings as they are, numbers and booleans written out.
    ///
    /// # Errors
    /// As [`Expression::evaluate`], or the result is a list, map, null or bytes.
    pub fn text(&self, input: &Input<'_>) -> Result<String, EvalError> {
        match self.evaluate(input)? {
            Value::String(s) => Ok(Arc::unwrap_or_clone(s)),
            Value::Int(i) => Ok(i.to_string()),
            Value::UInt(u) => Ok(u.to_string()),
            Value::Float(f) => Ok(f.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(EvalError(format!(
                "{:?}: evaluated to a {}, not a string",
                self.source,
                other.type_of()
            ))),
        }
    }
}

/// An evaluation error in words that quote no request value (`cel`'s own messages print the
/// values involved, which may be credentials).
fn describe(err: &cel::ExecutionError) -> String {
    use cel::ExecutionError as E;
    match err {
        E::NoSuchKey(key) => format!("no such key {:?}", crate::bounds::log(key)),
        E::UndeclaredReference(name) => format!("undeclared reference to {name:?}"),
        E::UnexpectedType { got, want } => format!("unexpected type: got {got}, want {want}"),
        E::DivisionByZero(_) => "division by zero".into(),
        E::RemainderByZero(_) => "remainder by zero".into(),
        E::Overflow(op, ..) => format!("overflow in {op}"),
        E::IndexOutOfBounds(_) => "index out of bounds".into(),
        E::NoSuchOverload(_)
        | E::UnsupportedBinaryOperator(..)
        | E::UnsupportedTargetType { .. }
        | E::NotSupportedAsMethod { .. }
        | E::UnsupportedIndex(..)
        | E::UnsupportedKeyType(_) => "no function or operator for these argument types".into(),
        E::InvalidArgumentCount { expected, actual } => {
            format!("expected {expected} arguments, got {actual}")
        }
        E::FunctionError { function, .. } => format!("{function} failed"),
        E::ValuesNotComparable(..) => "values that cannot be compared".into(),
        _ => "evaluation failed".into(),
    }
}

/// Stack of the thread that parses: the generated parser recurses deeply per nesting level
/// (over 100 KiB a level in debug builds), more than a runtime worker's stack allows.
const PARSE_STACK_BYTES: usize = 64 << 20;

/// Parses `source` on a thread of its own with a large stack, within our nesting bound.
fn parse(source: &str) -> Result<Program, CompileError> {
    let parse = || {
        // The environment's own parser has the default depth bound; a first parse applies ours.
        ENV.parser()
            .max_recursion_depth(MAX_PARSE_DEPTH)
            .parse(source)
            .map_err(|errors| CompileError(syntax_message(&errors)))?;
        ENV.compile(source)
            .map_err(|errors| CompileError(syntax_message(&errors)))
    };
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("cel-parse".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, parse)
            .map_err(|err| CompileError(format!("could not start the parser thread: {err}")))?
            .join()
            .unwrap_or_else(|_| Err(CompileError("the parser panicked".into())))
    })
}

/// The first parse error, as `line:column: message`.
fn syntax_message(errors: &cel::ParseErrors) -> String {
    // The first error is the one to fix: the parser's recovery reports consequences after it.
    let Some(first) = errors.errors.first() else {
        return "syntax error".into();
    };
    let message = if first.msg.contains("Recursion limit") {
        format!("nests deeper than {MAX_PARSE_DEPTH} levels")
    } else {
        first.msg.clone()
    };
    format!("{}:{}: {message}", first.pos.0, first.pos.1 + 1)
}

/// The 1-based line and column of byte `offset` of `source`.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
