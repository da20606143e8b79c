//! Command-line interface: `tyk-dispatcher [serve]` and `tyk-dispatcher check-config`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    config::{CliOverrides, Loaded},
    hooks::{HookTable, StepRegistry},
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

/// Prints the effective configuration as TOML, with notes as warnings on stderr.
pub fn check_config(loaded: &Loaded) -> ExitCode {
    let config = &loaded.config;
    if let Err(problems) = HookTable::build(
        &config.hooks,
        config.unknown_hooks,
        &StepRegistry::builtin(),
    ) {
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
