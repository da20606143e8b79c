//! The `test` and `eval` commands: what they print and how they exit.
//!
//! `test` prints `ok   <file>: <case>` or `FAIL <file>: <case>` with one indented line per
//! difference, then `N passed, M failed`; it exits 0 when every case passes, 1 otherwise.
//! `eval` prints `{"outcome", "response_code", "reply"}` as JSON. Both exit
//! [`config::EXIT_CONFIG`] for configuration problems and [`EXIT_CASES`] for input that cannot
//! be read or is invalid, having run nothing.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
};

use serde::Serialize;

use super::{
    EXIT_CASES,
    cases::{self, CaseError, Loaded},
    expect::{Got, diff},
    logs::Caught,
    run::{Ran, run},
};
use crate::{AppBuilder, hooks::Hooks, pb};

/// What `eval`'s flags set on the Object, over what the input says.
#[derive(Debug, Clone, Default)]
pub(crate) struct EvalOverrides {
    pub hook_type: Option<pb::HookType>,
    pub hook_name: Option<String>,
    pub api_id: Option<String>,
}

/// `tyk-dispatcher test CASES…`: runs every case of every file and compares expectations.
pub(crate) fn test(builder: AppBuilder, paths: &[PathBuf]) -> ExitCode {
    let hooks = match hooks(builder) {
        Ok(hooks) => hooks,
        Err(code) => return code,
    };
    // Every file is read before any case runs, so each mistake in them is reported at once.
    let files = match load_files(paths) {
        Ok(files) => files,
        Err(errors) => return case_errors(&errors),
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let (mut passed, mut failed) = (0, 0);
    for (file, cases) in files {
        for Loaded { label, case, .. } in cases {
            let request = case.request();
            let (ran, logged) =
                Caught::during(|| runtime.block_on(run(&hooks, &request, case.recorded)));
            let mut problems = match &ran {
                Ok(ran) => {
                    let expect = case.expect.unwrap_or_default();
                    diff(&expect, &got(ran))
                        .iter()
                        .map(ToString::to_string)
                        .collect()
                }
                Err(err) => vec![format!("could not run: {err}")],
            };
            if !problems.is_empty() {
                problems.extend(explanation(ran.as_ref().ok(), logged));
            }
            if problems.is_empty() {
                passed += 1;
                println!("ok   {file}: {label}");
            } else {
                failed += 1;
                println!("FAIL {file}: {label}");
                for line in problems {
                    println!("    {line}");
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `tyk-dispatcher eval INPUT`: the answer to one case or Object, as JSON on stdout.
pub(crate) fn eval(builder: AppBuilder, input: &Path, overrides: &EvalOverrides) -> ExitCode {
    let hooks = match hooks(builder) {
        Ok(hooks) => hooks,
        Err(code) => return code,
    };
    let stdin = input == Path::new("-");
    let file = if stdin {
        "<stdin>".to_string()
    } else {
        input.display().to_string()
    };
    let text = if stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map(|_| text)
            .map_err(|err| format!("cannot read: {err}"))
    } else {
        std::fs::read_to_string(input).map_err(|err| format!("cannot read: {err}"))
    };
    let text = match text {
        Ok(text) => text,
        Err(reason) => return case_errors(&[CaseError::File { file, reason }]),
    };
    let loaded = cases::bare_object(&file, input, &text)
        .unwrap_or_else(|| cases::read_text(&file, input, &text));
    let mut cases = match loaded {
        Ok(cases) if cases.len() == 1 => cases,
        Ok(cases) => {
            let reason = format!("holds {} cases; eval runs one", cases.len());
            return case_errors(&[CaseError::File { file, reason }]);
        }
        Err(errors) => return case_errors(&errors),
    };
    let Some(Loaded { case, .. }) = cases.pop() else {
        return ExitCode::FAILURE;
    };
    let mut request = case.request();
    if let Some(hook_type) = overrides.hook_type {
        request.hook_type = hook_type as i32;
    }
    if let Some(name) = &overrides.hook_name {
        request.hook_name.clone_from(name);
    }
    if let Some(api_id) = &overrides.api_id {
        request.spec.insert("APIID".into(), api_id.clone());
    }
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let (ran, logged) = Caught::during(|| runtime.block_on(run(&hooks, &request, case.recorded)));
    for line in explanation(ran.as_ref().ok(), logged) {
        eprintln!("{line}");
    }
    let ran = match ran {
        Ok(ran) => ran,
        Err(err) => {
            eprintln!("error: {file}: could not run: {err}");
            return ExitCode::FAILURE;
        }
    };
    let output = Evaluated {
        outcome: ran.outcome.as_str(),
        response_code: ran.response_code,
        reply: &ran.reply,
    };
    match serde_json::to_string_pretty(&output) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: cannot print the reply: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `eval`'s output, in this field order.
#[derive(Serialize)]
struct Evaluated<'a> {
    outcome: &'static str,
    response_code: Option<i32>,
    reply: &'a pb::Object,
}

/// What explains an answer: that no hook matched (the routing's own warning is shown once per
/// name, this note for every case), else what the run logged (why a hook failed).
fn explanation(ran: Option<&Ran>, logged: Vec<String>) -> Vec<String> {
    match ran.and_then(|ran| ran.unmatched.as_ref()) {
        Some(note) => vec![format!("note: {note}")],
        None => logged
            .into_iter()
            .map(|line| format!("log: {line}"))
            .collect(),
    }
}

fn got(ran: &Ran) -> Got<'_> {
    Got {
        outcome: ran.outcome,
        unchanged: ran.unchanged,
        reply: &ran.reply,
    }
}

/// The hooks as the server would build them, or the exit code after printing why not.
fn hooks(builder: AppBuilder) -> Result<Hooks, ExitCode> {
    builder.offline_hooks().map_err(crate::cli::config_errors)
}

/// Every case of every file, each labelled by its file as given; or every problem found.
fn load_files(paths: &[PathBuf]) -> Result<Vec<(String, Vec<Loaded>)>, Vec<CaseError>> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in cases::discover(paths).map_err(|err| vec![err])? {
        let file = path.display().to_string();
        match cases::read(&path) {
            Ok(cases) => {
                // Without expectations a case would pass whatever its hooks answered.
                for loaded in cases.iter().filter(|l| l.case.expect.is_none()) {
                    errors.push(CaseError::Case {
                        file: file.clone(),
                        case: loaded.numbered.clone(),
                        reason: "expect: missing (a test case says what its answer must hold)"
                            .into(),
                    });
                }
                files.push((file, cases));
            }
            Err(found) => errors.extend(found),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors)
    }
}

fn case_errors(errors: &[CaseError]) -> ExitCode {
    for error in errors {
        eprintln!("error: {error}");
    }
    ExitCode::from(EXIT_CASES)
}

/// One thread is plenty for cases run one after another.
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| eprintln!("error: runtime: {err}"))
        .ok()
}
