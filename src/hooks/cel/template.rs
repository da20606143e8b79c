//! A value written in the config either as it is (`"gold"`) or as an expression computed per
//! call (`{ cel = "session.metadata.tier" }`).

use std::{borrow::Cow, collections::BTreeMap};

use serde::Deserialize;

use super::{CompileError, EvalError, Expression, Input, Scope, Variables};
use crate::hooks::step::BuildError;

/// A value as the config writes it.
#[derive(Debug, Clone)]
pub enum TemplateSetting {
    /// The value itself.
    Literal(String),
    /// An expression whose result (a string, number or boolean) is the value.
    Cel {
        /// The expression.
        cel: String,
    },
}

impl<'de> Deserialize<'de> for TemplateSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = TemplateSetting;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, or a table { cel = \"<expression>\" }")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(TemplateSetting::Literal(text.to_string()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut cel = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "cel" || cel.is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "unexpected key {key:?}: a computed value is {{ cel = \"<expression>\" }}"
                        )));
                    }
                    cel = Some(map.next_value::<String>()?);
                }
                cel.map(|cel| TemplateSetting::Cel { cel })
                    .ok_or_else(|| serde::de::Error::custom("a computed value needs `cel`"))
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

/// A value, fixed or computed.
#[derive(Debug)]
pub enum Template {
    /// Fixed.
    Literal(String),
    /// Computed per call.
    Cel(Expression),
}

impl Template {
    /// Compiles the expression of `setting`, if it has one.
    ///
    /// # Errors
    /// The expression's [`CompileError`].
    pub fn build(setting: TemplateSetting, scope: Scope) -> Result<Self, CompileError> {
        match setting {
            TemplateSetting::Literal(text) => Ok(Self::Literal(text)),
            TemplateSetting::Cel { cel } => Expression::compile(&cel, scope).map(Self::Cel),
        }
    }

    /// The variables it reads (none when fixed).
    pub fn variables(&self) -> Variables {
        match self {
            Self::Literal(_) => Variables::default(),
            Self::Cel(expression) => expression.variables(),
        }
    }

    /// The value for this call.
    ///
    /// # Errors
    /// The expression's [`EvalError`].
    pub fn render(&self, input: &Input<'_>) -> Result<Cow<'_, str>, EvalError> {
        match self {
            Self::Literal(text) => Ok(Cow::Borrowed(text)),
            Self::Cel(expression) => expression.text(input).map(Cow::Owned),
        }
    }
}

/// A map of names to values (headers, parameters) of which some may be computed: the fixed ones
/// are kept as they are, so a step with none computed does what it did before expressions.
#[derive(Debug, Default)]
pub struct ComputedMap {
    fixed: BTreeMap<String, String>,
    computed: Vec<(String, Expression)>,
}

impl ComputedMap {
    /// Builds `settings`, each name through `name` (say, made canonical); a problem is reported
    /// at `<setting>.<name>`.
    ///
    /// # Errors
    /// The first expression that does not compile.
    pub fn build(
        settings: BTreeMap<String, TemplateSetting>,
        scope: Scope,
        setting: &str,
        name: impl Fn(&str) -> String,
    ) -> Result<Self, BuildError> {
        let mut map = Self::default();
        for (key, value) in settings {
            match Template::build(value, scope) {
                Ok(Template::Literal(text)) => {
                    map.fixed.insert(name(&key), text);
                }
                Ok(Template::Cel(expression)) => map.computed.push((name(&key), expression)),
                Err(err) => {
                    return Err(BuildError::at(format!("{setting}.{key}"), err.to_string()));
                }
            }
        }
        Ok(map)
    }

    /// Whether it has no entry.
    pub fn is_empty(&self) -> bool {
        self.fixed.is_empty() && self.computed.is_empty()
    }

    /// The variables its expressions read.
    pub fn variables(&self) -> Variables {
        self.computed
            .iter()
            .fold(Variables::default(), |v, (_, e)| v.union(e.variables()))
    }

    /// The entries for this call: the fixed ones, and the computed ones evaluated on `input`.
    ///
    /// # Errors
    /// The first expression that fails.
    pub fn render(
        &self,
        input: &Input<'_>,
    ) -> Result<Cow<'_, BTreeMap<String, String>>, EvalError> {
        if self.computed.is_empty() {
            return Ok(Cow::Borrowed(&self.fixed));
        }
        let mut entries = self.fixed.clone();
        for (name, expression) in &self.computed {
            entries.insert(name.clone(), expression.text(input)?);
        }
        Ok(Cow::Owned(entries))
    }
}
