//! What a compiled expression reads and may cost, found by walking its syntax tree once at load:
//! the variables it names (an unknown one is an error there, not a silent `false` later), the
//! functions it calls, and the coefficients of its cost estimate.

use std::collections::HashSet;

use cel::{
    IdedExpr,
    common::ast::{EntryExpr, Expr},
};

use super::Variables;

/// Deepest nesting of comprehensions (`all`, `exists`, `map`, ...): each level multiplies the
/// cost by the size of a collection.
pub const MAX_COMPREHENSION_DEPTH: usize = 2;

/// Deepest syntax tree: evaluation recurses once per level, on the calling task's stack.
pub const MAX_TREE_DEPTH: usize = 48;

/// Functions (besides operators) that expressions may call: CEL's standard library as the
/// `cel` crate implements it, without time (no clock in a plugin's decision).
const FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "dyn",
];

/// Calls whose work grows with the bytes they read or build, charged per KiB of the call's
/// strings besides their one node.
const BYTE_SCANNING: &[&str] = &[
    "_+_",
    "_==_",
    "_!=_",
    "@in",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "size",
    "string",
    "bytes",
];

/// What the walk found.
#[derive(Debug, Default)]
pub struct Analysis {
    /// The top-level variables read.
    pub variables: Variables,
    /// Per comprehension depth: nodes, and byte-scanning calls.
    pub nodes: [u64; MAX_COMPREHENSION_DEPTH + 1],
    pub scans: [u64; MAX_COMPREHENSION_DEPTH + 1],
}

/// A problem found by the walk, at a node.
#[derive(Debug)]
pub struct Finding {
    pub node: u64,
    pub message: String,
}

/// Walks `root`; `known` tells whether a top-level variable may be used here (`Err` says why
/// not).
pub fn analyse(
    root: &IdedExpr,
    known: &dyn Fn(&str) -> Result<Variables, String>,
) -> Result<Analysis, Finding> {
    let mut walk = Walk {
        known,
        analysis: Analysis::default(),
        bound: Vec::new(),
        level: 0,
    };
    walk.expr(root, 0)?;
    Ok(walk.analysis)
}

struct Walk<'a> {
    known: &'a dyn Fn(&str) -> Result<Variables, String>,
    analysis: Analysis,
    /// Names bound by the comprehensions around the node being walked.
    bound: Vec<String>,
    /// How deep in the tree the node being walked is.
    level: usize,
}

impl Walk<'_> {
    fn expr(&mut self, e: &IdedExpr, depth: usize) -> Result<(), Finding> {
        if self.level >= MAX_TREE_DEPTH {
            return Err(Finding {
                node: e.id,
                message: format!("the expression nests deeper than {MAX_TREE_DEPTH} levels"),
            });
        }
        self.level += 1;
        let result = self.node(e, depth);
        self.level -= 1;
        result
    }

    fn node(&mut self, e: &IdedExpr, depth: usize) -> Result<(), Finding> {
        let at = |message: String| Finding {
            node: e.id,
            message,
        };
        self.analysis.nodes[depth] += 1;
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) => Ok(()),
            Expr::Ident(name) => {
                if self.bound.iter().any(|b| b == name) {
                    return Ok(());
                }
                let mut variables = (self.known)(name).map_err(at)?;
                if variables == Variables::REQUEST {
                    variables = Variables::whole_request();
                }
                self.analysis.variables = self.analysis.variables.union(variables);
                Ok(())
            }
            Expr::Select(select) => {
                // `request.<field>`: only that field of `request` need be built.
                if let Expr::Ident(name) = &select.operand.expr
                    && name == "request"
                    && !self.bound.iter().any(|b| b == name)
                {
                    (self.known)(name).map_err(at)?;
                    self.analysis.nodes[depth] += 1;
                    self.analysis.variables = self
                        .analysis
                        .variables
                        .union(Variables::request_field(&select.field));
                    return Ok(());
                }
                self.expr(&select.operand, depth)
            }
            Expr::Call(call) => {
                let name = call.func_name.as_str();
                let operator =
                    name.starts_with('_') || name.starts_with('@') || name.ends_with('_');
                if !operator && !FUNCTIONS.contains(&name) {
                    return Err(at(format!(
                        "unknown function {name:?} (known: {})",
                        FUNCTIONS.join(", ")
                    )));
                }
                if BYTE_SCANNING.contains(&name) {
                    self.analysis.scans[depth] += 1;
                }
                if let Some(target) = &call.target {
                    self.expr(target, depth)?;
                }
                call.args.iter().try_for_each(|arg| self.expr(arg, depth))
            }
            Expr::List(list) => list.elements.iter().try_for_each(|x| self.expr(x, depth)),
            Expr::Map(map) => map.entries.iter().try_for_each(|entry| match &entry.expr {
                EntryExpr::MapEntry(entry) => {
                    self.expr(&entry.key, depth)?;
                    self.expr(&entry.value, depth)
                }
                EntryExpr::StructField(field) => self.expr(&field.value, depth),
            }),
            Expr::Struct(_) => Err(at("message literals are not supported".into())),
            Expr::Comprehension(c) => {
                self.expr(&c.iter_range, depth)?;
                self.expr(&c.accu_init, depth)?;
                let inner = depth + 1;
                if inner > MAX_COMPREHENSION_DEPTH {
                    return Err(at(format!(
                        "comprehensions (all, exists, exists_one, map, filter) nest deeper than {MAX_COMPREHENSION_DEPTH}"
                    )));
                }
                let names: HashSet<&String> = [&c.iter_var, &c.accu_var]
                    .into_iter()
                    .chain(c.iter_var2.as_ref())
                    .collect();
                let before = self.bound.len();
                self.bound.extend(names.into_iter().cloned());
                let body = self
                    .expr(&c.loop_cond, inner)
                    .and_then(|()| self.expr(&c.loop_step, inner));
                let result = body.and_then(|()| self.expr(&c.result, depth));
                self.bound.truncate(before);
                result
            }
        }
    }
}
