//! One `write` for the answers of many streams: a connection's small writes are gathered and
//! sent on the connection task's next turn.
//!
//! h2 flushes its frame buffer before it queues any DATA frame of 256 bytes or more (it keeps
//! such payloads out of its buffer and writes them as a separate slice), so a connection
//! answering eight calls made eight `writev`s, each a trip through the loopback TCP stack and
//! a wake-up of the reader. This wrapper takes those writes into its own buffer and answers a
//! flush by waking its task instead of writing: the task runs again after the tasks already
//! queued, which are the connection's other streams finishing their answers, and the first
//! thing it does then (h2 reads before it writes) sends the whole batch. An idle connection
//! pays one extra poll per batch; a busy one makes one `writev` per batch.
//!
//! Bounds: at most [`BATCH_BYTES`] are held per connection; a write that would pass it sends
//! what is held first, and a write of more than that goes out as it is, uncopied (the chunks
//! of a large body). A buffer that grew past [`KEPT_CAPACITY`] is released once sent, so idle
//! connections hold none of it.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held for one write at most.
pub const BATCH_BYTES: usize = 32 * 1024;

/// Capacity a connection keeps between batches; a larger buffer is freed once sent.
const KEPT_CAPACITY: usize = 8 * 1024;

/// A connection's IO whose small writes are sent together; see the module docs.
#[derive(Debug)]
pub struct WriteBatch<IO> {
    inner: IO,
    /// Bytes taken and not sent yet; `buf[sent..]` is what is left of them.
    buf: Vec<u8>,
    sent: usize,
    /// A flush was put off and the task woken to do it.
    flush_due: bool,
}

impl<IO> WriteBatch<IO> {
    pub fn new(inner: IO) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            sent: 0,
            flush_due: false,
        }
    }

    fn held(&self) -> usize {
        self.buf.len() - self.sent
    }

    fn take(&mut self, bufs: &[IoSlice<'_>]) -> usize {
        let mut taken = 0;
        for slice in bufs {
            self.buf.extend_from_slice(slice);
            taken += slice.len();
        }
        taken
    }
}

impl<IO: AsyncWrite + Unpin> WriteBatch<IO> {
    /// Sends everything held; `Pending` (with the task registered for writability) while the
    /// socket takes no more.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        if self.buf.capacity() > KEPT_CAPACITY {
            self.buf = Vec::new();
        }
        self.flush_due = false;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for WriteBatch<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flush_due {
            // The turn the flush was put off to. A full socket leaves the batch held, with the
            // task registered for writability; reading goes on meanwhile.
            if let Poll::Ready(Err(err)) = this.poll_send_held(cx) {
                return Poll::Ready(Err(err));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteBatch<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = bufs.iter().map(|slice| slice.len()).sum();
        if this.held() + len > BATCH_BYTES {
            ready!(this.poll_send_held(cx))?;
            if len > BATCH_BYTES {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            }
        }
        Poll::Ready(Ok(this.take(bufs)))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held() == 0 {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if !this.flush_due {
            // Other streams of this connection may be finishing their answers in tasks queued
            // before this one: send on the next turn, with theirs.
            this.flush_due = true;
            cx.waker().wake_by_ref();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::Wake,
    };

    use super::*;

    /// A socket that records each write and takes at most `room` bytes before it is full.
    #[derive(Default)]
    struct Socket {
        writes: Vec<Vec<u8>>,
        room: Option<usize>,
        shut: bool,
    }

    impl AsyncRead for Socket {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = this.room.map_or(buf.len(), |room| room.min(buf.len()));
            if n == 0 {
                return Poll::Pending;
            }
            if let Some(room) = &mut this.room {
                *room -= n;
            }
            this.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().shut = true;
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn write(io: &mut WriteBatch<Socket>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<usize> {
        Pin::new(io).poll_write(cx, bytes).map(Result::unwrap)
    }

    fn flush(io: &mut WriteBatch<Socket>, cx: &mut Context<'_>) {
        assert!(Pin::new(io).poll_flush(cx).is_ready());
    }

    fn read(io: &mut WriteBatch<Socket>, cx: &mut Context<'_>) {
        let mut space = [0; 8];
        let _ = Pin::new(io).poll_read(cx, &mut ReadBuf::new(&mut space));
    }

    #[test]
    fn answers_flushed_in_one_turn_go_out_in_one_write_on_the_next() {
        let wakes = Arc::new(CountWakes::default());
        let waker = wakes.clone().into();
        let mut cx = Context::from_waker(&waker);
        let mut io = WriteBatch::new(Socket::default());
        for answer in [&b"first"[..], b"second", b"third"] {
            assert_eq!(write(&mut io, &mut cx, answer), Poll::Ready(answer.len()));
            flush(&mut io, &mut cx);
        }
        assert!(
            io.inner.writes.is_empty(),
            "nothing is sent during the turn"
        );
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            1,
            "one wake-up for the put-off flush"
        );
        read(&mut io, &mut cx);
        assert_eq!(io.inner.writes, [b"firstsecondthird".to_vec()]);
        // Nothing held: a flush flushes and wakes no one.
        flush(&mut io, &mut cx);
        read(&mut io, &mut cx);
        assert_eq!(io.inner.writes.len(), 1);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_write_past_the_batch_sends_what_is_held_and_a_large_one_goes_out_uncopied() {
        let wakes = Arc::new(CountWakes::default());
        let waker = wakes.clone().into();
        let mut cx = Context::from_waker(&waker);
        let mut io = WriteBatch::new(Socket::default());
        let small = vec![1; BATCH_BYTES - 10];
        assert!(write(&mut io, &mut cx, &small).is_ready());
        let chunk = vec![2; 20];
        assert!(write(&mut io, &mut cx, &chunk).is_ready());
        assert_eq!(io.inner.writes.len(), 1);
        assert_eq!(io.inner.writes[0], small, "the held bytes went first");
        let large = vec![3; BATCH_BYTES + 1];
        assert_eq!(write(&mut io, &mut cx, &large), Poll::Ready(large.len()));
        assert_eq!(io.inner.writes, [small, chunk, large]);
        assert!(
            io.buf.capacity() <= KEPT_CAPACITY,
            "a grown buffer is released once sent"
        );
    }

    #[test]
    fn a_full_socket_keeps_the_batch_until_it_drains_and_shutdown_sends_it() {
        let wakes = Arc::new(CountWakes::default());
        let waker = wakes.clone().into();
        let mut cx = Context::from_waker(&waker);
        let mut io = WriteBatch::new(Socket {
            room: Some(4),
            ..Socket::default()
        });
        assert!(write(&mut io, &mut cx, b"abcdefgh").is_ready());
        flush(&mut io, &mut cx);
        read(&mut io, &mut cx);
        assert_eq!(io.inner.writes, [b"abcd".to_vec()]);
        assert!(io.flush_due, "the rest is still due");
        io.inner.room = Some(100);
        assert!(Pin::new(&mut io).poll_shutdown(&mut cx).is_ready());
        assert_eq!(io.inner.writes, [b"abcd".to_vec(), b"efgh".to_vec()]);
        assert!(io.inner.shut);
    }
}
