//! A value loaded from files and loaded again when any of them changes, checked at most every
//! few seconds from the request path. Kubernetes Secret and ConfigMap volumes swap a `..data`
//! symlink, so contents are compared, not inodes. A broken edit keeps the value in force.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

/// How often the files are compared.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// When the files were last compared, which files are watched and their contents then.
#[derive(Debug)]
struct Seen {
    at: Instant,
    files: Vec<PathBuf>,
    contents: Vec<Option<Vec<u8>>>,
}

fn snapshot(paths: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    paths.iter().map(|p| std::fs::read(p).ok()).collect()
}

/// See the module docs.
#[derive(Debug)]
pub struct Reloading<T> {
    current: ArcSwap<T>,
    /// When the files are next due for a comparison, in nanoseconds after `born`: read without
    /// the lock, so the calls in between only load an atomic.
    due: AtomicU64,
    born: Instant,
    seen: Mutex<Seen>,
    /// What the value is, for log lines (`"API keys"`).
    what: &'static str,
}

impl<T> Reloading<T> {
    /// A value loaded from `files`.
    pub fn new(value: T, files: Vec<PathBuf>, what: &'static str) -> Self {
        let born = Instant::now();
        Self {
            current: ArcSwap::from_pointee(value),
            due: AtomicU64::new(nanos(RELOAD_EVERY)),
            born,
            seen: Mutex::new(Seen {
                at: Instant::now(),
                contents: snapshot(&files),
                files,
            }),
            what,
        }
    }

    /// The value in force.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Compares the files (at most every [`RELOAD_EVERY`]) and, when they changed, calls `load`
    /// for the new value and the files it was made from.
    pub fn refresh(&self, load: impl FnOnce() -> Result<(T, Vec<PathBuf>), String>) {
        let now = nanos(self.born.elapsed());
        if now < self.due.load(Ordering::Relaxed) {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.at.elapsed() < RELOAD_EVERY {
            return;
        }
        seen.at = Instant::now();
        self.due
            .store(now.saturating_add(nanos(RELOAD_EVERY)), Ordering::Relaxed);
        let current = snapshot(&seen.files);
        if current == seen.contents {
            return;
        }
        seen.contents = current;
        match load() {
            Ok((value, files)) => {
                tracing::info!(what = self.what, file = %files.first().map(|f| f.display().to_string()).unwrap_or_default(), "reloaded");
                self.current.store(Arc::new(value));
                seen.contents = snapshot(&files);
                seen.files = files;
            }
            Err(err) => {
                tracing::warn!(what = self.what, error = %err, "file changed but cannot be used; keeping the value in force")
            }
        }
    }

    /// Makes the next [`Reloading::refresh`] compare the files at once.
    #[cfg(test)]
    pub fn expire(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.at = seen.at.checked_sub(RELOAD_EVERY).unwrap_or(seen.at);
        self.due.store(0, Ordering::Relaxed);
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
