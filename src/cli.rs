//! Command-line interface: `tyk-dispatcher [serve]` and `tyk-dispatcher check-config`, as a
//! function a custom server's `main` can call with its own steps registered.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use tokio_util::sync::CancellationToken;

use crate::{
    App, AppBuilder,
    config::{self, CliOverrides, Loaded, Problems, Sources},
    lifecycle, telemetry,
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
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Print the effective configuration and exit 0, or list every problem and exit non-zero.
    CheckConfig,
}

/// Runs the command line: parse flags, load config, start logging, serve until a signal, drain,
/// exit. `customize` registers custom steps on the builder (the plain binary passes it as is).
pub fn main(customize: impl FnOnce(AppBuilder) -> AppBuilder) -> ExitCode {
    let cli = Cli::parse();
    let sources = Sources::from_process(cli.config.clone(), cli.overrides.clone());
    let loaded = match config::load(&sources) {
        Ok(loaded) => loaded,
        Err(Problems(problems)) => {
            for problem in problems {
                eprintln!("config error: {problem}");
            }
            return ExitCode::from(config::EXIT_CONFIG);
        }
    };
    let builder = customize(App::builder(loaded.config.clone()));
    if matches!(cli.command, Some(Command::CheckConfig)) {
        return check_config(&loaded, &builder);
    }
    match run(&loaded, builder.reload_from(sources)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(loaded: &Loaded, builder: AppBuilder) -> anyhow::Result<()> {
    let config = &loaded.config;
    let _logs = telemetry::init(config.log_format)?;
    for note in &loaded.notes {
        tracing::warn!("{note}");
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads);
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async {
        let app = builder.build().await?;
        let stop = CancellationToken::new();
        tokio::spawn(lifecycle::stop_on_signals(stop.clone()));
        app.run_until_stopped(stop).await?;
        anyhow::Ok(())
    })?;
    // Let connection tasks wind down without blocking exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// Prints the effective configuration as TOML, with notes as warnings on stderr; hooks are
/// checked with the builder's steps.
pub fn check_config(loaded: &Loaded, builder: &AppBuilder) -> ExitCode {
    if let Err(problems) = builder.check_hooks() {
        for problem in problems {
            eprintln!("config error: hooks: {problem}");
        }
        return ExitCode::from(crate::config::EXIT_CONFIG);
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
