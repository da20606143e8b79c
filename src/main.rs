//! The `tyk-dispatcher` binary: the server with its built-in steps (see `cli::main`).

use std::process::ExitCode;

fn main() -> ExitCode {
    tyk_dispatcher::cli::main(|builder| builder)
}
