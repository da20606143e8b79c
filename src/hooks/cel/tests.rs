use std::sync::Arc;

use super::*;
use crate::{hooks::steps::tests::cx, pb};

fn scope(hook_type: HookType) -> Scope {
    Scope {
        hook_type,
        after_auth: false,
        cost_limit: DEFAULT_COST_LIMIT,
    }
}

fn compile_error(source: &str, hook_type: HookType) -> String {
    Expression::compile(source, scope(hook_type))
        .expect_err(source)
        .to_string()
}

fn object() -> pb::Object {
    pb::Object {
        request: Some(pb::MiniRequestObject {
            headers: [
                ("X-Tenant-Id", "acme"),
                ("Authorization", "Bearer secret-token"),
                ("x-lower", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            set_headers: [("X-Added".to_string(), "yes".to_string())].into(),
            delete_headers: vec!["X-Lower".into()],
            url: "/orders/42?debug=1".into(),
            params: [("debug".to_string(), "1".to_string())].into(),
            method: "POST".into(),
            scheme: "https".into(),
            raw_body: b"{\"a\":1}".to_vec().into(),
            ..Default::default()
        }),
        session: Some(pb::SessionState {
            metadata: [("tenant".to_string(), "acme".to_string())].into(),
            alias: "alice".into(),
            tags: vec!["gold".into()],
            quota_max: 100,
            ..Default::default()
        }),
        response: Some(pb::ResponseObject {
            status_code: 201,
            headers: [("Content-Type".to_string(), "text/plain".to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn eval(source: &str, hook_type: HookType) -> Result<Value, EvalError> {
    let expression = Expression::compile(source, scope(hook_type)).expect(source);
    let object = object();
    let mut cx = cx(hook_type);
    cx.config_data = Some(Arc::new(
        serde_json::json!({"tiers": ["gold", "silver"], "limit": 5}),
    ));
    expression.evaluate(&Input::new(&object, &cx, expression.variables()))
}

#[test]
fn every_variable_reads_the_call() {
    for (source, hook_type) in [
        ("request.method == 'POST'", HookType::Pre),
        ("request.path == '/orders/42'", HookType::Pre),
        ("request.url.endsWith('?debug=1')", HookType::Pre),
        ("request.headers['X-Tenant-Id'] == 'acme'", HookType::Pre),
        ("request.headers['X-Added'] == 'yes'", HookType::Pre),
        (
            "!('X-Lower' in request.headers) && !('x-lower' in request.headers)",
            HookType::Pre,
        ),
        ("request.params.debug == '1'", HookType::Pre),
        (
            "request.scheme == 'https' && request.body_size == 7",
            HookType::Pre,
        ),
        (
            "session.metadata.tenant == request.headers['X-Tenant-Id']",
            HookType::Post,
        ),
        (
            "session.alias == 'alice' && 'gold' in session.tags && session.quota_max == 100",
            HookType::PostKeyAuth,
        ),
        (
            "spec.api_id == 'api-1' && spec.org_id == 'org-1'",
            HookType::Pre,
        ),
        (
            "spec.config_data.limit == 5 && 'gold' in spec.config_data.tiers",
            HookType::Pre,
        ),
        (
            "hook.type == 'Response' && hook.name == 'test-hook'",
            HookType::Response,
        ),
        (
            "response.status == 201 && response.headers['Content-Type'] == 'text/plain'",
            HookType::Response,
        ),
        (
            "request.headers.exists(h, h.startsWith('X-Ten'))",
            HookType::Pre,
        ),
    ] {
        assert_eq!(eval(source, hook_type), Ok(Value::Bool(true)), "{source}");
    }
}

#[test]
fn errors_at_load_name_the_line_and_column() {
    assert_eq!(
        compile_error(
            "request.method == 'GET' &&\n  sesion.alias == 'a'",
            HookType::Post
        ),
        "2:3: unknown variable \"sesion\" (known: request, session, spec, hook, response)"
    );
    assert_eq!(
        compile_error("session.alias == 'a'", HookType::Pre),
        "1:1: Pre hooks have no `session` (it comes after authentication)"
    );
    assert!(
        compile_error("session.alias == 'a'", HookType::CustomKeyCheck)
            .contains("needs an auth step"),
    );
    assert_eq!(
        compile_error("response.status == 200", HookType::Post),
        "1:1: `response` is only set on Response hooks, not on Post"
    );
    assert!(
        compile_error("request.method.lowerAscii() == 'get'", HookType::Pre)
            .starts_with("1:26: unknown function \"lowerAscii\""),
    );
    let syntax = compile_error("request.method == ", HookType::Pre);
    assert!(syntax.starts_with("1:"), "{syntax}");
    assert_eq!(
        compile_error("  ", HookType::Pre),
        "the expression is empty"
    );
    let nested = compile_error(
        "request.headers.all(a, request.headers.all(b, request.headers.all(c, a == c)))",
        HookType::Pre,
    );
    assert!(nested.contains("nest deeper than 2"), "{nested}");
    let long = format!("'{}' == ''", "a".repeat(MAX_SOURCE_BYTES));
    assert!(compile_error(&long, HookType::Pre).contains("over the limit of 4096"));
}

#[test]
fn comprehension_variables_are_known_inside_only() {
    assert!(
        Expression::compile("request.headers.exists(h, h == 'A')", scope(HookType::Pre)).is_ok()
    );
    assert!(
        compile_error(
            "request.headers.exists(h, h == 'A') && h == 'B'",
            HookType::Pre
        )
        .contains("unknown variable \"h\"")
    );
}

#[test]
fn the_cost_limit_stops_evaluation_before_it_starts() {
    let source = "request.headers.all(a, request.headers.all(b, a + b != ''))";
    let tight = Expression::compile(
        source,
        Scope {
            cost_limit: 40,
            ..scope(HookType::Pre)
        },
    )
    .expect("compiles under the limit on an empty request");
    let object = object();
    let cx = cx(HookType::Pre);
    let err = tight
        .evaluate(&Input::new(&object, &cx, tight.variables()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("over the hook's cel_cost_limit of 40"),
        "{err}"
    );
    assert!(err.contains("largest collection 3"), "{err}");
    // The same expression within the default limit runs.
    assert_eq!(eval(source, HookType::Pre), Ok(Value::Bool(true)));
    // One that costs too much even on an empty request is refused at load.
    let refused = Expression::compile(
        "request.method == 'a' || request.method == 'b'",
        Scope {
            cost_limit: 3,
            ..scope(HookType::Pre)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(refused.contains("costs at least"), "{refused}");
}

#[test]
fn evaluation_errors_quote_no_request_value() {
    let err = eval("request.headers['Authorization'] > 3", HookType::Pre)
        .unwrap_err()
        .to_string();
    assert!(!err.contains("secret-token"), "{err}");
    let err = eval("request.headers['X-Missing'] == 'a'", HookType::Pre)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such key \"X-Missing\""), "{err}");
    assert_eq!(
        eval(
            "has(request.headers.Missing) || request.headers['Authorization'].startsWith('Bearer ')",
            HookType::Pre
        ),
        Ok(Value::Bool(true))
    );
}

#[test]
fn results_are_converted_or_refused() {
    let expression = Expression::compile("request.body_size", scope(HookType::Pre)).unwrap();
    let object = object();
    let cx = cx(HookType::Pre);
    let input = Input::new(&object, &cx, expression.variables());
    assert_eq!(expression.text(&input).unwrap(), "7");
    assert!(
        expression
            .holds(&input)
            .unwrap_err()
            .to_string()
            .contains("not a bool")
    );
    let list = Expression::compile("request.params", scope(HookType::Pre)).unwrap();
    assert!(
        list.text(&input)
            .unwrap_err()
            .to_string()
            .contains("not a string")
    );
}

#[test]
fn parts_follow_the_variables_read() {
    let e = Expression::compile(
        "spec.api_id == 'a' && hook.name == 'b'",
        scope(HookType::Pre),
    )
    .unwrap();
    assert_eq!(e.parts(), crate::hooks::ObjectParts::NONE);
    let e = Expression::compile("session.alias == 'a'", scope(HookType::Post)).unwrap();
    assert_eq!(e.parts(), crate::hooks::ObjectParts::SESSION);
    let e = Expression::compile(
        "request.method == 'GET' && 'X-A' in request.headers",
        scope(HookType::Pre),
    )
    .unwrap();
    use crate::hooks::ObjectParts as P;
    assert_eq!(
        e.parts(),
        P::REQUEST_METHOD
            .union(P::REQUEST_HEADERS)
            .union(P::REQUEST_HEADER_EDITS)
    );
}

#[test]
fn deep_expressions_are_refused_or_run_on_a_small_stack() {
    // Test threads have 2 MiB of stack, as runtime workers do.
    for depth in [8, 24, 32] {
        let nested = format!(
            "{}request.body_size{} == 7",
            "(".repeat(depth),
            ")".repeat(depth)
        );
        assert_eq!(
            eval(&nested, HookType::Pre),
            Ok(Value::Bool(true)),
            "{depth}"
        );
        let list = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        assert!(
            Expression::compile(&list, scope(HookType::Pre)).is_ok(),
            "{depth}"
        );
    }
    let chain = vec!["request.method == 'a'"; 40].join(" || ");
    assert_eq!(eval(&chain, HookType::Pre), Ok(Value::Bool(false)));
    let too_deep = format!("{}1{}", "(".repeat(40), ")".repeat(40));
    assert_eq!(
        compile_error(&too_deep, HookType::Pre),
        "1:35: nests deeper than 32 levels"
    );
    let too_deep = vec!["request.body_size"; 60].join(" + ") + " > 0";
    assert!(compile_error(&too_deep, HookType::Pre).contains("deeper than"));
}

#[test]
fn only_the_request_fields_read_are_built() {
    let variables = |source: &str| {
        Expression::compile(source, scope(HookType::Pre))
            .unwrap()
            .variables()
    };
    assert_eq!(
        variables("request.method == 'GET' && has(request.headers.Host)"),
        Variables::request_field("method").union(Variables::request_field("headers"))
    );
    assert_eq!(variables("size(request) > 0"), Variables::whole_request());
    assert_eq!(
        variables("[1].exists(request, request == 1)"),
        Variables::default(),
        "a comprehension's own `request` is not the variable"
    );
    // Built for `request.method` only, the headers are not there to be counted.
    let object = object();
    let cx = cx(HookType::Pre);
    let method = Input::new(&object, &cx, variables("request.method == 'GET'"));
    assert_eq!(method.size(Variables::REQUEST), (0, 4));
    let headers = Input::new(&object, &cx, variables("request.headers.size() > 0"));
    assert_eq!(headers.size(Variables::REQUEST).0, 3);
}
