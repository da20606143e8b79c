//! The `tyk-dispatcher` binary: the server with its built-in steps (see `cli::main`).

use std::process::ExitCode;

/// With the `mimalloc` feature, for the allocator comparison in `bench/allocator.sh`.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tyk_dispatcher::cli::main(|builder| builder)
}
