//! The `tyk-dispatcher` binary: parse flags, load config, start logging, run the server until a
//! signal, drain, exit.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tyk_dispatcher::{App, cli, config, lifecycle, telemetry};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let sources = config::Sources::from_process(cli.config.clone(), cli.overrides.clone());
    let loaded = match config::load(&sources) {
        Ok(loaded) => loaded,
        Err(config::Problems(problems)) => {
            for problem in problems {
                eprintln!("config error: {problem}");
            }
            return ExitCode::from(config::EXIT_CONFIG);
        }
    };
    if matches!(cli.command, Some(cli::Command::CheckConfig)) {
        return cli::check_config(&loaded);
    }
    match run(loaded, sources) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(loaded: config::Loaded, sources: config::Sources) -> anyhow::Result<()> {
    let config = loaded.config;
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
        let app = App::builder(config).reload_from(sources).build().await?;
        let stop = CancellationToken::new();
        tokio::spawn(lifecycle::stop_on_signals(stop.clone()));
        app.run_until_stopped(stop).await?;
        anyhow::Ok(())
    })?;
    // Let connection tasks wind down without blocking exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}
