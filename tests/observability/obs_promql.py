"""A small PromQL reader: finds every vector selector (metric name and label matchers) in an
expression, so the suite can check that each one matches series in a real Prometheus.

Not a full parser. It tokenizes, skips function and aggregation calls (an identifier followed by
`(`), keyword label lists (`by (...)`, `on (...)`, `group_left (...)`...), range and subquery
brackets, numbers and durations, and reports every other identifier as a metric name, with the
`{...}` that follows it. Characters it does not know raise ValueError, so nothing slips by.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>(?:0[xX][0-9a-fA-F]+|\d*\.?\d+(?:[eE][+-]?\d+)?)[a-zA-Z0-9]*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=@])
  | (?P<range>\[[^\]]*\])
  | (?P<punct>[{}(),])
    """,
    re.VERBOSE,
)

# Followed by a parenthesised list of label names, which are not metrics.
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Aggregations: `sum by (job) (x)` puts a keyword, not `(`, after the name.
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
_OTHER_KEYWORDS = {"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"}


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str  # unquoted
    raw: str  # as written, quotes included

    def __str__(self) -> str:
        return f"{self.label}{self.op}{self.raw}"


@dataclass(frozen=True)
class Selector:
    name: str | None
    matchers: tuple[Matcher, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        inner = ",".join(str(m) for m in self.matchers)
        if self.name is None:
            return "{" + inner + "}"
        return self.name + ("{" + inner + "}" if inner else "")

    def matcher(self, label: str) -> Matcher | None:
        return next((m for m in self.matchers if m.label == label), None)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


def tokenize(expr: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"unexpected character {expr[pos]!r} at {pos} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind not in ("ws", "comment"):
            tokens.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    return tokens


def _unquote(raw: str) -> str:
    if raw.startswith("`"):
        return raw[1:-1]
    body = raw[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _skip_group(tokens: list[_Tok], i: int, open_: str, close: str) -> int:
    """tokens[i] is `open_`; returns the index after its matching `close`."""
    depth = 0
    while i < len(tokens):
        t = tokens[i].text if tokens[i].kind == "punct" else None
        if t == open_:
            depth += 1
        elif t == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced {open_!r}")


def _parse_matchers(tokens: list[_Tok], i: int, expr: str) -> tuple[tuple[Matcher, ...], int]:
    """tokens[i] is `{`; returns the matchers and the index after `}`."""
    i += 1
    matchers: list[Matcher] = []
    while True:
        if i >= len(tokens):
            raise ValueError(f"unterminated {{ in {expr!r}")
        tok = tokens[i]
        if tok.kind == "punct" and tok.text == "}":
            return tuple(matchers), i + 1
        if tok.kind == "punct" and tok.text == ",":
            i += 1
            continue
        if tok.kind == "string" and (i + 1 >= len(tokens) or tokens[i + 1].kind != "op"):
            # A quoted metric name inside the braces: {"name", ...}.
            matchers.append(Matcher("__name__", "=", _unquote(tok.text), tok.text))
            i += 1
            continue
        if tok.kind not in ("ident", "string"):
            raise ValueError(f"bad label matcher at {tok.pos} in {expr!r}")
        label = tok.text if tok.kind == "ident" else _unquote(tok.text)
        if i + 2 >= len(tokens) or tokens[i + 1].kind != "op" or tokens[i + 2].kind != "string":
            raise ValueError(f"bad label matcher after {label!r} in {expr!r}")
        op = tokens[i + 1].text
        if op not in ("=", "!=", "=~", "!~"):
            raise ValueError(f"bad matcher operator {op!r} in {expr!r}")
        raw = tokens[i + 2].text
        matchers.append(Matcher(label, op, _unquote(raw), raw))
        i += 3


def selectors(expr: str) -> list[Selector]:
    """Every vector selector in `expr`, in order of appearance."""
    # Range and subquery brackets are single tokens (they may hold Grafana variables).
    tokens = tokenize(expr)
    found: list[Selector] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.kind == "ident":
            low = tok.text.lower()
            if low in _LABEL_LIST_KEYWORDS:
                i += 1
                if nxt is not None and nxt.kind == "punct" and nxt.text == "(":
                    i = _skip_group(tokens, i, "(", ")")
                continue
            if nxt is not None and nxt.kind == "punct" and nxt.text == "(":
                i += 1  # function or aggregation call
                continue
            if low in AGGREGATIONS and nxt is not None and nxt.kind == "ident" and nxt.text.lower() in ("by", "without"):
                i += 1
                continue
            if low in _OTHER_KEYWORDS:
                i += 1
                continue
            if nxt is not None and nxt.kind == "punct" and nxt.text == "{":
                matchers, i = _parse_matchers(tokens, i + 1, expr)
                found.append(Selector(tok.text, matchers))
            else:
                found.append(Selector(tok.text))
                i += 1
            continue
        if tok.kind == "punct" and tok.text == "{":
            matchers, i = _parse_matchers(tokens, i, expr)
            name = next((m.value for m in matchers if m.label == "__name__" and m.op == "="), None)
            found.append(Selector(name, tuple(m for m in matchers if not (m.label == "__name__" and m.op == "=" and m.value == name))))
            continue
        i += 1
    return found


def metric_names(expr: str) -> set[str]:
    return {s.name for s in selectors(expr) if s.name is not None}


# Grafana's built-in variables, replaced the way Grafana would for a short range.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replaces `$name`, `${name}` and `[[name]]` by `variables` or Grafana's built-ins; raises on
    any variable left unknown."""
    values = {**GRAFANA_BUILTINS, **variables}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        name = name.split(":")[0]  # ${job:regex} and other formats
        if name not in values:
            raise ValueError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{([A-Za-z0-9_:]+)\}|\$([A-Za-z_][A-Za-z0-9_]*)|\[\[([A-Za-z0-9_:]+)\]\]", repl, expr)
