//! Files read again when their contents change: the one mechanism behind everything loaded from
//! files (the config file's hooks, the TLS certificate, the auth steps' keys and secrets).
//!
//! A loader reads its files through [`FileReads`], which remembers what each held. A background
//! task compares those files every interval and, when any changed, runs the loader again; the
//! new value is published in memory ([`Watched`]), so a request only ever loads a snapshot and
//! never touches a file. Kubernetes Secret and ConfigMap volumes swap a `..data` symlink, so
//! contents are compared, not inodes or times. A change that cannot be used (a file unreadable,
//! deleted or broken) keeps what is in force and is reported once, not at every comparison; the
//! files that load read are compared from then on, so fixing any of them is noticed.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The files one load read, each with what it held then (`None`: it could not be read).
#[derive(Debug, Default)]
pub struct FileReads {
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl FileReads {
    /// Reads `path` and remembers what it held, or that it could not be read: a later comparison
    /// notices when that changes.
    ///
    /// # Errors
    /// The read's own error.
    pub fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        let result = std::fs::read(path);
        self.files
            .push((path.to_path_buf(), result.as_ref().ok().cloned()));
        result
    }

    /// [`FileReads::read`], as UTF-8 text.
    ///
    /// # Errors
    /// The read's error, or `InvalidData` when the file is not UTF-8 (as `std::fs` says it).
    pub fn read_to_string(&mut self, path: &Path) -> io::Result<String> {
        String::from_utf8(self.read(path)?).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            )
        })
    }

    /// The first file read: the one a value is named after in log lines.
    pub fn first(&self) -> Option<&Path> {
        self.files.first().map(|(path, _)| path.as_path())
    }

    /// Whether any file holds something other than when it was read (blocking reads).
    fn changed(&self) -> bool {
        self.files
            .iter()
            .any(|(path, seen)| std::fs::read(path).ok() != *seen)
    }

    fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|(path, _)| path.as_path()).collect()
    }
}

/// What a [`FileWatch`] does when its files change: make its thing again, reading the files
/// through the given [`FileReads`], and report how that went.
type Reload = Box<dyn FnMut(&mut FileReads) + Send>;

/// A reload and the files its last run read.
struct Poll {
    reads: FileReads,
    reload: Reload,
}

impl Poll {
    fn once(&mut self) {
        if !self.reads.changed() {
            return;
        }
        // Whatever this run reads is compared next, even when it fails: a broken file is
        // reported once, and mending any file it read is noticed.
        let mut reads = FileReads::default();
        (self.reload)(&mut reads);
        self.reads = reads;
    }
}

/// Compares files and runs a reload when they changed; see the module docs.
#[derive(Clone)]
pub struct FileWatch {
    poll: Arc<Mutex<Poll>>,
}

impl fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let poll = self.poll.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("FileWatch")
            .field("files", &poll.reads.paths())
            .finish_non_exhaustive()
    }
}

impl FileWatch {
    /// Watches the files in `reads` (what is in force was made from them); `reload` runs when
    /// any of them changes.
    pub fn new(reads: FileReads, reload: impl FnMut(&mut FileReads) + Send + 'static) -> Self {
        Self {
            poll: Arc::new(Mutex::new(Poll {
                reads,
                reload: Box::new(reload),
            })),
        }
    }

    /// Compares the files now and reloads when they changed; returns once done. Reading and
    /// reloading block, so they run on the blocking pool, not on the async workers.
    pub async fn check(&self) {
        let poll = self.poll.clone();
        let done = tokio::task::spawn_blocking(move || {
            poll.lock().unwrap_or_else(PoisonError::into_inner).once();
        })
        .await;
        if let Err(err) = done
            && err.is_panic()
        {
            tracing::error!(error = %err, "reloading from changed files panicked; what is in force stays");
        }
    }

    /// Compares the files every `interval` until `stop` is cancelled.
    pub async fn run(self, interval: Duration, stop: CancellationToken) {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            self.check().await;
        }
    }
}

/// A value made from files, made again when they change and published for readers that never
/// touch the files; see the module docs.
pub struct Watched<T> {
    current: Arc<ArcSwap<T>>,
    watch: FileWatch,
    /// Set once polling starts; dropping it (with the value) ends the polling task, so a step
    /// replaced by a config reload stops watching its files.
    polling: OnceLock<DropGuard>,
}

impl<T> fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("watch", &self.watch)
            .field("polling", &self.polling.get().is_some())
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Makes the value with `load`, which reads its files through the given [`FileReads`]. Each
    /// later load's outcome goes to `report` with the files it read (the value is published after
    /// a success; a failure keeps the one in force).
    ///
    /// # Errors
    /// The first load's error.
    pub fn load<E>(
        mut load: impl FnMut(&mut FileReads) -> Result<T, E> + Send + 'static,
        report: impl Fn(Result<&T, &E>, &FileReads) + Send + 'static,
    ) -> Result<Self, E> {
        let mut reads = FileReads::default();
        let current = Arc::new(ArcSwap::from_pointee(load(&mut reads)?));
        let publish = current.clone();
        let watch = FileWatch::new(reads, move |reads| match load(reads) {
            Ok(value) => {
                report(Ok(&value), reads);
                publish.store(Arc::new(value));
            }
            Err(err) => report(Err(&err), reads),
        });
        Ok(Self {
            current,
            watch,
            polling: OnceLock::new(),
        })
    }

    /// The value in force: an in-memory snapshot, whatever the files hold now.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Compares the files every `interval` in a background task, until the value is dropped or
    /// `until` is cancelled. Needs a tokio runtime: without one (as in `check-config`) nothing is
    /// polled and this returns false. Polling starts once; later calls change nothing.
    pub fn poll(&self, interval: Duration, until: &CancellationToken) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let stop = until.child_token();
        if self.polling.set(stop.clone().drop_guard()).is_ok() {
            runtime.spawn(self.watch.clone().run(interval, stop));
        }
        true
    }

    /// [`Watched::poll`] until the value is dropped.
    pub fn poll_every(&self, interval: Duration) -> bool {
        self.poll(interval, &CancellationToken::new())
    }

    /// Compares the files now, as a poll would, and returns once any reload is done.
    #[cfg(test)]
    pub async fn check(&self) {
        self.watch.check().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value that is a file's text; a file saying "broken" cannot be used. Reports go to the
    /// returned log.
    fn text_of(path: PathBuf) -> (Watched<String>, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let reports = log.clone();
        let watched = Watched::load(
            move |reads: &mut FileReads| {
                let text = reads.read_to_string(&path).map_err(|err| err.to_string())?;
                if text == "broken" {
                    return Err("broken".to_string());
                }
                Ok(text)
            },
            move |outcome, reads| {
                assert!(
                    tokio::runtime::Handle::try_current().is_ok(),
                    "a reload runs inside the runtime: steps it builds can start their own polling"
                );
                let line = match outcome {
                    Ok(text) => format!("loaded {text} from {}", reads.first().unwrap().display()),
                    Err(err) => format!("refused: {err}"),
                };
                reports.lock().unwrap().push(line);
            },
        )
        .unwrap();
        (watched, log)
    }

    fn replace(path: &Path, text: &str) {
        // Replaced by rename, as a Secret or ConfigMap volume does.
        let staged = path.with_extension("staged");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, path).unwrap();
    }

    async fn wait_for(watched: &Watched<String>, text: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if *watched.current() == text {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_changed_file_is_published_within_the_interval_without_anyone_asking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "one").unwrap();
        let (watched, log) = text_of(path.clone());
        assert_eq!(*watched.current(), "one");
        let interval = Duration::from_millis(200);
        assert!(watched.poll_every(interval));
        replace(&path, "two");
        assert!(
            wait_for(&watched, "two", interval * 3).await,
            "not picked up: {:?}",
            watched.current()
        );
        assert_eq!(
            *log.lock().unwrap(),
            [format!("loaded two from {}", path.display())]
        );
    }

    #[tokio::test]
    async fn an_unreadable_or_broken_file_keeps_the_last_good_value_and_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "good").unwrap();
        let (watched, log) = text_of(path.clone());

        std::fs::remove_file(&path).unwrap();
        watched.check().await;
        watched.check().await;
        assert_eq!(*watched.current(), "good");
        replace(&path, "broken");
        watched.check().await;
        watched.check().await;
        assert_eq!(*watched.current(), "good");
        {
            let log = log.lock().unwrap();
            assert_eq!(log.len(), 2, "{log:?}");
            assert!(log[0].starts_with("refused: "), "{log:?}");
            assert_eq!(log[1], "refused: broken");
        }

        // Mending the file is noticed like any change.
        replace(&path, "mended");
        watched.check().await;
        assert_eq!(*watched.current(), "mended");
        // Unchanged files load nothing.
        watched.check().await;
        assert_eq!(log.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn polling_ends_when_the_value_is_dropped_or_told_to_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "one").unwrap();
        let interval = Duration::from_millis(50);

        let (dropped, dropped_log) = text_of(path.clone());
        dropped.poll_every(interval);
        let (stopped, stopped_log) = text_of(path.clone());
        let stop = CancellationToken::new();
        stopped.poll(interval, &stop);
        drop(dropped);
        stop.cancel();
        tokio::time::sleep(interval * 2).await;
        replace(&path, "two");
        tokio::time::sleep(interval * 6).await;
        assert!(dropped_log.lock().unwrap().is_empty());
        assert!(stopped_log.lock().unwrap().is_empty());
        assert_eq!(*stopped.current(), "one");
    }

    #[test]
    fn without_a_runtime_nothing_is_polled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "one").unwrap();
        let (watched, _) = text_of(path);
        assert!(!watched.poll_every(Duration::from_millis(10)));
    }
}
