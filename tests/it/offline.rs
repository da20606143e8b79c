//! `tyk-dispatcher test` and `eval`: the case files under `tests/cases/` run through the real
//! binary against the hooks of [`write_config`] (`tenant_check` on Pre, `key_check` on
//! CustomKeyCheck, `stamp` on Response): `pass/` passes, `fail/` has wrong expectations,
//! `invalid/` a misspelt field, `objects/` a logged Object for `eval`.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::helpers::run_binary;

/// The SHA-256 of the key `k1`, the one key of the keys file.
const K1_SHA256: &str = "6ab9f1eb8f7d3388f4f9d586f66e99fd54080df2c446f0e58668b09c08a16dd0";

/// A config of built-in steps (and the files its `api_key_auth` step reads) in `dir`.
fn write_config(dir: &Path) -> String {
    std::fs::write(dir.join("secret"), "a-token-secret-of-enough-length").unwrap();
    std::fs::write(
        dir.join("keys.toml"),
        format!(
            "[[keys]]\nsha256 = \"{K1_SHA256}\"\nname = \"team-a\"\napis = [\"orders-api\"]\nmetadata = {{ team = \"a\" }}\n"
        ),
    )
    .unwrap();
    let config = format!(
        r#"
[[hooks]]
name = "tenant_check"
type = "Pre"

[[hooks.steps]]
kind = "respond"
status = 400
body = "tenant required"
when = {{ header_absent = "X-Tenant" }}

[[hooks.steps]]
kind = "set_headers"
headers = {{ X-Method = {{ cel = "request.method" }}, X-Api = {{ cel = "spec.api_id" }} }}

[[hooks.steps]]
kind = "set_headers"
headers = {{ X-Tier = "gold" }}
when = "request.headers['X-Tenant'] == 'acme'"

[[hooks.steps]]
kind = "delete_headers"
names = ["X-Internal"]

[[hooks.steps]]
kind = "rewrite_url"
pattern = "^/v1/(.*)"
replacement = "/v2/$1"

[[hooks]]
name = "key_check"
type = "CustomKeyCheck"

[[hooks.steps]]
kind = "api_key_auth"
keys_file = "{keys}"
secret_file = "{secret}"

[[hooks]]
name = "stamp"
type = "Response"

[[hooks.steps]]
kind = "set_response_headers"
headers = {{ X-Served-By = "dispatcher" }}
"#,
        keys = dir.join("keys.toml").display(),
        secret = dir.join("secret").display(),
    );
    let path = dir.join("dispatcher.toml");
    std::fs::write(&path, config).unwrap();
    path.display().to_string()
}

/// Runs `program` to completion in the crate's root (so case paths print as given), with
/// `stdin` as its input.
fn run_with_stdin(program: &Path, args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `tyk-dispatcher test --config <config> <cases…>`: the exit code, stdout and stderr.
fn run_test(config: &str, cases: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<&str> = ["test", "--config", config]
        .into_iter()
        .chain(cases.iter().copied())
        .collect();
    run_binary(&[], &args)
}

/// Writes `text` to `name` in `dir`; its path.
fn written(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tyk-dispatcher"))
}

/// An example built by `cargo test` beside the test binary.
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    deps.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name)
}

#[test]
fn passing_cases_print_one_ok_line_each_and_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let (code, stdout, stderr) = run_test(&config, &["tests/cases/pass"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "\
ok   tests/cases/pass/auth_and_response.json: a known key gets its session
ok   tests/cases/pass/auth_and_response.json: a request without a key is refused
ok   tests/cases/pass/auth_and_response.json: responses are stamped
ok   tests/cases/pass/tenant.yaml: acme is tagged gold
ok   tests/cases/pass/tenant.yaml: other tenants are not tagged
ok   tests/cases/pass/tenant.yaml: no tenant is a bad request
ok   tests/cases/pass/tenant.yaml: an undeclared hook passes the request back untouched
7 passed, 0 failed
"
    );
}

#[test]
fn a_wrong_expectation_fails_with_one_readable_line_per_difference() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let (code, stdout, stderr) = run_test(
        &config,
        &[
            "tests/cases/fail/wrong_tier.yaml",
            "tests/cases/pass/tenant.yaml",
        ],
    );
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let expected = "\
FAIL tests/cases/fail/wrong_tier.yaml: globex is gold (it is not)
    set_headers[\"X-Method\"]: expected \"POST\", got \"GET\"
    set_headers[\"X-Tier\"]: expected \"gold\", got nothing
    url: expected \"/orders/2\", got \"/orders/1\"
ok   tests/cases/pass/tenant.yaml: acme is tagged gold
";
    assert!(stdout.starts_with(expected), "{stdout}");
    assert!(stdout.ends_with("\n4 passed, 1 failed\n"), "{stdout}");
}

#[test]
fn a_failed_hook_shows_why_it_failed() {
    let dir = tempfile::tempdir().unwrap();
    let config = written(
        dir.path(),
        "dispatcher.toml",
        "[[hooks]]\nname = \"fragile\"\ntype = \"Pre\"\n[[hooks.steps]]\nkind = \"set_headers\"\nheaders = { X-A = \"b\" }\nwhen = \"request.headers['X-Missing'] == 'x'\"\n",
    );
    let cases = written(
        dir.path(),
        "cases.yaml",
        "name: tagged\nhook_type: Pre\nhook_name: fragile\nexpect: {outcome: modified, set_headers: {X-A: b}}\n",
    );
    let (code, stdout, stderr) = run_test(&config, &[&cases]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[1], "    outcome: expected modified, got failed",
        "{stdout}"
    );
    assert_eq!(
        lines[2], "    set_headers[\"X-A\"]: expected \"b\", got nothing",
        "{stdout}"
    );
    assert!(
        lines[3].starts_with("    log: hook failed hook_name=fragile")
            && lines[3].contains("X-Missing"),
        "the step's error is shown: {stdout}"
    );
}

#[test]
fn a_misspelt_case_exits_2_naming_file_case_and_field_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let (code, stdout, stderr) = run_test(&config, &["tests/cases/pass", "tests/cases/invalid"]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "nothing ran: {stdout}");
    assert!(
        stderr.starts_with(
            "error: tests/cases/invalid/misspelt.yaml: case 2 (\"wrong tenant\"): object.request: unknown field `hedaers`"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let (code, _, stderr) = run_test(&config, &["tests/cases/none.yaml"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with("error: tests/cases/none.yaml: cannot read:"),
        "{stderr}"
    );
}

#[test]
fn config_problems_exit_78_before_any_case_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = written(
        dir.path(),
        "dispatcher.toml",
        "[[hooks]]\nname = \"tenant_check\"\ntype = \"Pre\"\n[[hooks.steps]]\nkind = \"no_such_step\"\n",
    );
    let (code, stdout, stderr) = run_test(&config, &["tests/cases/pass"]);
    assert_eq!(code, Some(78), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with("config error: hooks[0].steps[0]"),
        "{stderr}"
    );
}

#[test]
fn eval_prints_the_answer_to_a_logged_object() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let (code, stdout, stderr) = run_binary(
        &[],
        &[
            "eval",
            "--config",
            &config,
            "tests/cases/objects/pre_acme.json",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let answer: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["outcome"], "modified");
    assert_eq!(answer["response_code"], Value::Null);
    let request = &answer["reply"]["request"];
    assert_eq!(request["setHeaders"]["X-Tier"], "gold");
    assert_eq!(request["setHeaders"]["X-Api"], "orders-api");
    assert_eq!(request["deleteHeaders"][0], "X-Internal");
    assert_eq!(request["url"], "/v2/orders/7");
    assert_eq!(answer["reply"]["hookType"], "Pre");
    // The output's fields come in the documented order.
    let outcome = stdout.find("\"outcome\"").unwrap();
    let code_at = stdout.find("\"response_code\"").unwrap();
    assert!(outcome < code_at && code_at < stdout.find("\"reply\"").unwrap());
}

#[test]
fn eval_reads_stdin_and_its_flags_win_over_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let object = r#"{"hookType": "Post", "hookName": "elsewhere", "request": {"url": "/orders", "method": "GET"}}"#;
    let (code, stdout, stderr) = run_with_stdin(
        &binary(),
        &[
            "eval",
            "--config",
            &config,
            "--hook-type",
            "Pre",
            "--hook-name",
            "tenant_check",
            "--api-id",
            "orders-api",
            "-",
        ],
        object,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let answer: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["outcome"], "responded");
    assert_eq!(answer["response_code"], 400);
    let overrides = &answer["reply"]["request"]["returnOverrides"];
    assert_eq!(overrides["responseCode"], 400);
    assert_eq!(overrides["responseBody"], "tenant required");
    assert_eq!(answer["reply"]["spec"]["APIID"], "orders-api");

    // A case on stdin (YAML), its expectations ignored; an undeclared hook is said so.
    let case = "hook_type: Pre\nhook_name: nobody\nobject: {request: {url: /x}}\nexpect: {outcome: modified}\n";
    let (code, stdout, stderr) =
        run_with_stdin(&binary(), &["eval", "--config", &config, "-"], case);
    assert_eq!(code, Some(0), "{stderr}");
    let answer: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["outcome"], "unchanged");
    assert!(
        stderr.contains("note: no hook is declared as Pre \"nobody\""),
        "{stderr}"
    );

    let (code, stdout, stderr) = run_with_stdin(
        &binary(),
        &["eval", "--config", &config, "-"],
        "{\"request\": 3}",
    );
    assert_eq!(code, Some(2), "{stdout}");
    assert!(
        stderr.starts_with("error: <stdin>: not an Object: request:"),
        "{stderr}"
    );
}

#[test]
fn custom_steps_registered_by_a_custom_main_run_in_cases() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        crate::helpers::custom_auth_config(dir.path(), "a-signing-secret-of-enough-length");
    let cases = written(
        dir.path(),
        "signed.yaml",
        "cases:\n  - name: unsigned\n    hook_type: CustomKeyCheck\n    hook_name: Signed\n    object: {request: {url: /x, method: GET}}\n    expect: {outcome: responded, return_overrides: {response_code: 401}}\n",
    );
    let args = ["test", "--config", config.to_str().unwrap(), &cases];
    let (code, stdout, stderr) = run_with_stdin(&example("custom_auth"), &args, "");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.ends_with("1 passed, 0 failed\n"), "{stdout}");
    // The stock binary lacks the step: a config problem.
    let (code, _, stderr) = run_with_stdin(&binary(), &args, "");
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("signed_request_auth"), "{stderr}");
}

#[test]
fn the_recipes_pass_their_cases() {
    for (recipe, cases) in [("tenant", 5), ("claim-routing", 4), ("opa", 4)] {
        let config = format!("examples/recipes/{recipe}/dispatcher.toml");
        let dir = format!("examples/recipes/{recipe}");
        let (code, stdout, stderr) = run_test(&config, &[&dir]);
        assert_eq!(code, Some(0), "{recipe}: {stdout}{stderr}");
        assert!(
            stdout.ends_with(&format!("{cases} passed, 0 failed\n")),
            "{recipe}: {stdout}"
        );
    }
}

#[test]
fn a_network_step_without_its_recorded_answer_fails_its_case() {
    let dir = tempfile::tempdir().unwrap();
    let cases = written(
        dir.path(),
        "cases.yaml",
        "cases:\n  - name: nothing recorded\n    hook_type: Pre\n    hook_name: policyAuthz\n    object:\n      request: {url: /orders/1, method: GET}\n    expect: {outcome: modified}\n",
    );
    let (code, stdout, _) = run_test("examples/recipes/opa/dispatcher.toml", &[&cases]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("    outcome: expected modified, got failed\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "no answer recorded for POST http://127.0.0.1:8181/v1/data/tyk/authz/decision (offline runs do not reach the network)"
        ),
        "{stdout}"
    );
}
