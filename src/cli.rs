//! Command-line interface: `tyk-dispatcher [serve]`, `check-config`, and the offline `test` and
//! `eval` of hook pipelines, as a function a custom server's `main` can call with its own steps
//! registered (so its cases run with them too).

use std::{path::PathBuf, process::ExitCode};

use clap::{
    Args, Parser, Subcommand,
    builder::{PossibleValuesParser, TypedValueParser},
};

use tokio_util::sync::CancellationToken;

use crate::{
    App, AppBuilder,
    app::AppError,
    config::{self, CliOverrides, Loaded, Problems, Sources},
    lifecycle, malloc_tuning, offline, pb, telemetry,
};

/// A gRPC plugin server for Tyk Gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// TOML config file (also TYK_DISPATCHER_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Settings that win over file and environment.
    #[command(flatten)]
    pub overrides: CliOverrides,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Print the effective configuration and exit 0, or list every problem and exit non-zero.
    CheckConfig,
    /// Run test cases through the configured hooks, offline, and compare what they answer.
    ///
    /// Exits 0 when every case passes, 1 when any fails, 2 when a case file is unreadable or
    /// invalid, 78 for configuration problems.
    Test(TestArgs),
    /// Print, as JSON, what the configured hooks answer to one case or Object, offline.
    ///
    /// Exits 0 with the answer, 1 when the call could not run, 2 for unreadable or invalid
    /// input, 78 for configuration problems.
    Eval(EvalArgs),
}

/// The cases `test` runs.
#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// Case files (YAML or JSON), or directories searched for *.yaml, *.yml and *.json.
    #[arg(required = true, value_name = "CASES")]
    pub cases: Vec<PathBuf>,
}

/// What `eval` runs.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// A case file, or an Object in protobuf JSON (as `log_objects` writes it); `-` for stdin.
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    /// The hook type, over what the input says.
    #[arg(long, help_heading = "Overrides", value_name = "TYPE", value_parser = hook_type_parser())]
    pub hook_type: Option<pb::HookType>,
    /// The hook name, over what the input says.
    #[arg(long, help_heading = "Overrides", value_name = "NAME")]
    pub hook_name: Option<String>,
    /// The API ID (`spec["APIID"]`), over what the input says.
    #[arg(long, help_heading = "Overrides", value_name = "ID")]
    pub api_id: Option<String>,
}

/// The hook types a call can have, by their protocol names.
fn hook_type_parser() -> impl TypedValueParser<Value = pb::HookType> {
    PossibleValuesParser::new(["Pre", "Post", "PostKeyAuth", "CustomKeyCheck", "Response"])
        .try_map(|name| pb::HookType::from_str_name(&name).ok_or("not a hook type"))
}

/// Why [`main`] stopped early.
#[derive(Debug, thiserror::Error)]
enum RunError {
    /// The app could not start, or its admin server failed.
    #[error(transparent)]
    App(#[from] AppError),
    /// Log output could not be set up.
    #[error("logs: {0}")]
    Logs(String),
    /// The async runtime could not be made.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs the command line: parse flags, load config, start logging, serve until a signal, drain,
/// exit. `customize` registers custom steps on the builder (the plain binary passes it as is).
///
/// Exit codes: 0 after a clean stop, [`config::EXIT_CONFIG`] (78) for any configuration
/// problem, [`config::EXIT_BIND`] (71) when a listener cannot be bound, 1 otherwise; `test` and
/// `eval` exit as their help says.
pub fn main(customize: impl FnOnce(AppBuilder) -> AppBuilder) -> ExitCode {
    let cli = Cli::parse();
    let sources = Sources::from_process(cli.config.clone(), cli.overrides.clone());
    // RUST_LOG is configuration too: checked with the rest, before anything starts.
    let log_filter = telemetry::log_filter().err();
    let loaded = match config::load(&sources) {
        Ok(loaded) => loaded,
        Err(Problems(mut problems)) => {
            problems.extend(log_filter);
            return config_errors(Problems(problems));
        }
    };
    let builder = customize(App::builder(loaded.config.clone()));
    match cli.command {
        Some(Command::CheckConfig) => return check_config(&loaded, &builder),
        // Offline runs write no logs: their output is the results, and `eval`'s is JSON.
        Some(Command::Test(args)) => return offline::test(builder, &args.cases),
        Some(Command::Eval(args)) => {
            let overrides = offline::EvalOverrides {
                hook_type: args.hook_type,
                hook_name: args.hook_name,
                api_id: args.api_id,
            };
            return offline::eval(builder, &args.input, &overrides);
        }
        Some(Command::Serve) | None => {}
    }
    if let Some(problem) = log_filter {
        return config_errors(Problems(vec![problem]));
    }
    match run(&loaded, builder.reload_from(sources)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::App(AppError::Config(problems))) => config_errors(problems),
        Err(err) => {
            // Display only: each message already holds its cause, once.
            eprintln!("error: {err}");
            ExitCode::from(match &err {
                RunError::App(err) => err.exit_code(),
                RunError::Logs(_) | RunError::Runtime(_) => 1,
            })
        }
    }
}

/// Prints one `config error: <key>: <problem>` line per problem.
pub(crate) fn config_errors(Problems(problems): Problems) -> ExitCode {
    for problem in problems {
        eprintln!("config error: {problem}");
    }
    ExitCode::from(config::EXIT_CONFIG)
}

/// The async runtime for `workers` threads (unset: the CPUs this process may use).
///
/// One worker runs a current-thread scheduler. Besides saving a thread, it polls tasks in the
/// order they were woken: the tasks of the streams a connection read in one go all answer
/// before the connection's task runs again, which then writes their frames in one `writev`.
/// The multi-threaded scheduler runs a woken task next (its LIFO slot), so the connection task
/// would write after every single answer.
fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().build()
}

fn run(loaded: &Loaded, builder: AppBuilder) -> Result<(), RunError> {
    // First of all: it may start the process over, with glibc's malloc tuned.
    let tuning = malloc_tuning::apply();
    let config = &loaded.config;
    let _logs =
        telemetry::init(config.log_format).map_err(|err| RunError::Logs(err.to_string()))?;
    tuning.log();
    for note in &loaded.notes {
        tracing::warn!("{note}");
    }
    // Before the app is built: its connection caps are measured against the raised limit.
    let nofile = crate::hygiene::raise_nofile_limit();
    let runtime = runtime(config.worker_threads).map_err(RunError::Runtime)?;
    runtime.block_on(async {
        let app = builder.build().await?;
        // Logged once the start is sure: a refused one prints only its problems.
        match nofile {
            Ok(limit) if limit.soft < limit.hard => tracing::warn!(
                soft = limit.soft,
                hard = limit.hard,
                "open-file limit: the soft limit could not be raised to the hard one"
            ),
            Ok(limit) => tracing::info!(
                soft_before = limit.soft_before,
                soft = limit.soft,
                hard = limit.hard,
                "open-file limit"
            ),
            Err(err) => tracing::warn!(error = %err, "cannot read the open-file limit"),
        }
        let stop = CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            // Without the handlers a SIGTERM kills the process undrained: say so, and serve on.
            if let Err(err) = lifecycle::stop_on_signals(on_signal).await {
                tracing::error!(
                    error = %err,
                    "cannot install the SIGTERM/SIGINT handlers: a signal will stop the server without draining"
                );
            }
        });
        app.run_until_stopped(stop).await
    })?;
    // Let connection tasks wind down without blocking exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// Prints the effective configuration as TOML, with notes as warnings on stderr; or, when
/// anything would refuse the start (hooks with the builder's steps, TLS files, trace export
/// included), every problem, exiting 78. Only a port that is taken goes unnoticed.
pub fn check_config(loaded: &Loaded, builder: &AppBuilder) -> ExitCode {
    let mut problems = builder.check().err().map(|p| p.0).unwrap_or_default();
    problems.extend(telemetry::log_filter().err());
    if !problems.is_empty() {
        return config_errors(Problems(problems));
    }
    for note in &loaded.notes {
        eprintln!("warning: {note}");
    }
    if let Some(file) = &loaded.file {
        println!("# from {} and the environment", file.display());
    }
    match toml::to_string(&loaded.config) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: cannot print the configuration: {err}");
            ExitCode::FAILURE
        }
    }
}
