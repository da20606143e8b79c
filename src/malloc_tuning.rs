//! glibc's malloc tuned so that memory freed after a burst of large calls goes back to the
//! system.
//!
//! Out of the box glibc raises its mmap threshold each time a large mmapped block is freed, so
//! after one burst of 20 MiB messages every later large buffer comes from the heap arenas, which
//! keep what is freed: RSS stayed at about 330 MiB after a burst, against 14 MiB idle
//! (`bench/allocator.sh`). A fixed mmap threshold, a trim threshold and two arenas bring it back
//! to within 2 MiB of idle at the same CPU per call. glibc reads its tunables only when a
//! process starts, and setting them from inside would take `mallopt` (unsafe code, which this
//! crate forbids), so the binary re-executes itself once with `GLIBC_TUNABLES` set. A
//! `GLIBC_TUNABLES` already in the environment, even empty, is left as it is: the operator's
//! choice wins.

/// The environment variable glibc reads its tunables from.
pub const VAR: &str = "GLIBC_TUNABLES";

/// Buffers from 128 KiB up are mmapped and unmapped when freed; free heap memory over 1 MiB
/// is trimmed (at 128 KiB, busy traffic made the heap's top shrink and grow again some 3 400
/// times a second, a page fault every four calls); two arenas, so worker threads do not each
/// keep one.
pub const TUNABLES: &str = "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=1048576:glibc.malloc.arena_max=2";

/// What was done about the tunables, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tuning {
    /// Running with [`TUNABLES`], set by the re-execution.
    Applied,
    /// `GLIBC_TUNABLES` was set by whoever started the process: left alone.
    LeftToOperator(String),
    /// Not a glibc build: nothing to tune.
    NotGlibc,
    /// The re-execution failed (e.g. the binary was replaced on disk); running untuned.
    Failed(String),
}

/// Re-executes the running program with [`TUNABLES`] unless `GLIBC_TUNABLES` is set; returns
/// only when it does not (or could not), saying why.
pub fn apply() -> Tuning {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return Tuning::NotGlibc;
    }
    match std::env::var_os(VAR) {
        // glibc (before 2.39) cuts the variable at the first ':' in place as it reads it.
        Some(value)
            if !value.is_empty() && value.to_str().is_some_and(|v| TUNABLES.starts_with(v)) =>
        {
            Tuning::Applied
        }
        Some(value) => Tuning::LeftToOperator(value.to_string_lossy().into_owned()),
        None => Tuning::Failed(reexec().to_string()),
    }
}

#[cfg(unix)]
fn reexec() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => return err,
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    // Returns only on failure.
    command.args(args).env(VAR, TUNABLES).exec()
}

#[cfg(not(unix))]
fn reexec() -> std::io::Error {
    std::io::Error::other("not supported on this platform")
}

impl Tuning {
    /// Logs what was done, once logging is up.
    pub fn log(&self) {
        match self {
            Self::Applied => tracing::debug!(glibc_tunables = TUNABLES, "malloc tuned"),
            Self::LeftToOperator(value) => tracing::info!(
                glibc_tunables = %value,
                "GLIBC_TUNABLES set at start: malloc tuning left as given"
            ),
            Self::NotGlibc => {}
            Self::Failed(err) => tracing::warn!(
                error = %err,
                "could not re-execute with malloc tuning: memory freed after large calls may not return to the system"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunables_name_what_glibc_reads() {
        for tunable in TUNABLES.split(':') {
            let (name, value) = tunable.split_once('=').expect("name=value");
            assert!(name.starts_with("glibc.malloc."), "{name}");
            assert!(value.parse::<u64>().is_ok(), "{value}");
        }
    }
}
