//! Connection hygiene against hostile or broken clients: the HTTP/2 handshake watched on the
//! wire, a connection's first call noticed, `accept` failures backed off and logged sparingly,
//! and the open-file limit raised at start.
//!
//! Every piece is per connection or per accept: nothing here runs per frame once a connection
//! has finished its handshake, and a call costs one relaxed atomic load.

use std::{
    fmt, io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::bounds::WarnLimit;

/// The client connection preface every HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
/// A frame header: 24-bit length, type, flags, stream id.
const FRAME_HEADER_LEN: usize = 9;
/// The frame type of SETTINGS.
const SETTINGS: u8 = 0x4;

/// Wraps a connection's IO and flags `done` once the client's preface and its first frame (a
/// SETTINGS frame, which must follow the preface) have been read in full.
///
/// hyper offers no handshake deadline and h2's handshake future only waits for the preface, so
/// the bytes are counted here as hyper reads them. After the handshake the wrapper only passes
/// reads through.
#[derive(Debug)]
pub struct HandshakeWatch<IO> {
    inner: IO,
    /// The first bytes: preface and the first frame's header.
    head: [u8; PREFACE_LEN + FRAME_HEADER_LEN],
    /// Bytes read so far, while not done.
    read: usize,
    finished: bool,
    done: Arc<AtomicBool>,
}

impl<IO> HandshakeWatch<IO> {
    /// Wraps `inner`; `done` is set once the handshake has arrived.
    pub fn new(inner: IO, done: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            head: [0; PREFACE_LEN + FRAME_HEADER_LEN],
            read: 0,
            finished: false,
            done,
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        let head_len = self.head.len();
        if self.read < head_len {
            let take = bytes.len().min(head_len - self.read);
            self.head[self.read..self.read + take].copy_from_slice(&bytes[..take]);
        }
        self.read = self.read.saturating_add(bytes.len());
        if self.read < head_len {
            return;
        }
        let frame = &self.head[PREFACE_LEN..];
        if frame[3] != SETTINGS {
            // Not HTTP/2: h2 refuses the connection itself; the deadline stays armed.
            return;
        }
        let length =
            usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
        if self.read >= head_len + length {
            self.finished = true;
            self.done.store(true, Ordering::Release);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for HandshakeWatch<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.finished {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.saw(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for HandshakeWatch<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A hyper service that flags `called` on its connection's first request: a connection that
/// has made a call is never closed for idleness.
#[derive(Debug, Clone)]
pub struct MarkCalls<S> {
    inner: S,
    called: Arc<AtomicBool>,
}

impl<S> MarkCalls<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, called: Arc<AtomicBool>) -> Self {
        Self { inner, called }
    }
}

impl<S: hyper::service::Service<R>, R> hyper::service::Service<R> for MarkCalls<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, request: R) -> Self::Future {
        // A load first: after the first call no store touches the shared cache line again.
        if !self.called.load(Ordering::Relaxed) {
            self.called.store(true, Ordering::Relaxed);
        }
        self.inner.call(request)
    }
}

/// The first pause after a failed `accept`.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause after failed `accept`s in a row.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What to do after `accept` failed.
#[derive(Debug)]
pub struct AcceptBackoff {
    next: Duration,
    warnings: WarnLimit,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self {
            next: ACCEPT_BACKOFF_MIN,
            warnings: WarnLimit::default(),
        }
    }
}

impl AcceptBackoff {
    /// An accept succeeded: the next failure pauses briefly again.
    pub fn succeeded(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN;
    }

    /// How long to pause after `err`, logging it within the rate limit. `None`: the error
    /// belonged to one connection (reset before it was accepted) and the next accept may go at
    /// once.
    pub fn failed(&mut self, listener: &dyn fmt::Display, err: &io::Error) -> Option<Duration> {
        if matches!(
            err.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::Interrupted
                | io::ErrorKind::WouldBlock
        ) {
            tracing::debug!(listener = %listener, error = %err, "a connection went away before accept");
            return None;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(ACCEPT_BACKOFF_MAX);
        // Out of file descriptors (EMFILE, ENFILE) or memory (ENOBUFS, ENOMEM): every retry
        // fails the same way until something closes, so pause, doubling, and log sparingly.
        if let Some(suppressed) = self.warnings.permit() {
            tracing::warn!(
                listener = %listener,
                error = %err,
                pause_ms = pause.as_millis() as u64,
                suppressed,
                "accept failed"
            );
        }
        Some(pause)
    }
}

/// The open-file limit before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit found at start.
    pub soft_before: u64,
    /// The soft limit in force now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, so connection caps and the admin port's
/// reserve are measured against all the process may open.
///
/// Logs nothing: it runs before the configuration is known to be good, and a refused start
/// prints only its problems.
///
/// # Errors
/// When the limit cannot be read. A failure to raise it leaves the soft limit as it was.
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let (soft_before, hard) = rlimit::Resource::NOFILE.get()?;
    // Refused (say, by a seccomp policy): the soft limit stays, and the caller sees soft < hard.
    let soft = if soft_before < hard && rlimit::Resource::NOFILE.set(hard, hard).is_ok() {
        hard
    } else {
        soft_before
    };
    Ok(NofileLimit {
        soft_before,
        soft,
        hard,
    })
}

/// The soft open-file limit in force (`u64::MAX` when it cannot be read: no cap from it).
pub fn nofile_soft_limit() -> u64 {
    rlimit::Resource::NOFILE.get_soft().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn watch() -> (HandshakeWatch<()>, Arc<AtomicBool>) {
        let done = Arc::new(AtomicBool::new(false));
        (HandshakeWatch::new((), done.clone()), done)
    }

    fn settings(payload: usize) -> Vec<u8> {
        let mut frame = vec![(payload >> 16) as u8, (payload >> 8) as u8, payload as u8];
        frame.extend([SETTINGS, 0, 0, 0, 0, 0]);
        frame.extend(std::iter::repeat_n(0u8, payload));
        frame
    }

    #[test]
    fn the_handshake_is_done_once_the_first_settings_frame_is_read_in_full() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(settings(12));
        bytes.extend(b"more frames");
        let handshake_len = PREFACE.len() + FRAME_HEADER_LEN + 12;
        // One byte at a time: done exactly at the SETTINGS frame's last byte.
        let (mut w, done) = watch();
        for (i, byte) in bytes.iter().enumerate() {
            w.saw(std::slice::from_ref(byte));
            assert_eq!(done.load(Ordering::Relaxed), i + 1 >= handshake_len, "{i}");
        }
        // All at once.
        let (mut w, done) = watch();
        w.saw(&bytes);
        assert!(done.load(Ordering::Relaxed));
        // An empty SETTINGS frame completes with its header.
        let (mut w, done) = watch();
        w.saw(PREFACE);
        w.saw(&settings(0));
        assert!(done.load(Ordering::Relaxed));
    }

    #[test]
    fn half_a_preface_or_a_first_frame_that_is_not_settings_is_not_a_handshake() {
        let (mut w, done) = watch();
        w.saw(&PREFACE[..10]);
        assert!(!done.load(Ordering::Relaxed));
        let (mut w, done) = watch();
        w.saw(PREFACE);
        let mut ping = settings(8);
        ping[3] = 0x6;
        w.saw(&ping);
        w.saw(&[0; 100]);
        assert!(!done.load(Ordering::Relaxed));
    }

    #[test]
    fn accept_pauses_double_up_to_a_second_and_start_over_after_a_success() {
        let mut backoff = AcceptBackoff::default();
        let emfile = io::Error::from_raw_os_error(24);
        let pauses: Vec<_> = (0..9)
            .map(|_| backoff.failed(&"test", &emfile).unwrap().as_millis())
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(
            backoff.failed(&"test", &emfile),
            Some(Duration::from_millis(10))
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.failed(&"test", &reset), None);
    }
}
