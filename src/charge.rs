//! Charges a Dispatcher call's message to the in-flight budget from its 5-byte gRPC prefix,
//! before the rest of the message is read, and refuses it at once when it cannot be covered.
//!
//! tonic buffers a whole message before the handler runs; charging there let a flood of large
//! messages be buffered first and refused after, so memory was not bounded. Here the prefix
//! (compressed flag, big-endian length) is read, the length checked against `max_recv_bytes` and
//! taken from the budget, and only then is the body handed on. The share travels in the request's
//! extensions to the handler, which moves it to the response (see `response`), so it is held until
//! the reply has been sent. Request bodies that make no progress for `request_progress_timeout_secs`
//! are failed, which resets the stream and returns the share.

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    future::poll_fn,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes};
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};
use tonic::{Status, body::Body};
use tower::Service;

use crate::{
    call::{BudgetMoment, CallError, Refusals},
    hooks::Hooks,
    limits::{BudgetShare, ConnectionBudget, InFlightBudget},
    metrics::{Metrics, StreamReset},
};

/// The gRPC message prefix: compressed flag and a big-endian u32 length.
const PREFIX_BYTES: usize = 5;

/// The paths whose messages are charged; health and reflection messages are small and bounded
/// by the HTTP/2 header and stream limits.
const CHARGED_PATHS: [&str; 2] = [
    "/coprocess.Dispatcher/Dispatch",
    "/coprocess.Dispatcher/DispatchEvent",
];

/// What every connection's charging needs.
#[derive(Debug, Clone)]
pub struct Charger {
    budget: InFlightBudget,
    max_recv_bytes: usize,
    request_progress_timeout: Duration,
    /// Streams reset for a request body that stopped.
    stalled: Counter,
    /// Whether calls may be decoded, so the decoded copy is charged up front too: by a hook,
    /// or for the object log.
    hooks: Hooks,
    log_objects: bool,
    refusals: Refusals,
}

impl Charger {
    /// Charges `budget`, refusing messages over `max_recv_bytes` (through `refusals`).
    pub fn new(
        budget: InFlightBudget,
        max_recv_bytes: usize,
        request_progress_timeout: Duration,
        metrics: &Metrics,
        hooks: Hooks,
        log_objects: bool,
        refusals: Refusals,
    ) -> Self {
        Self {
            budget,
            max_recv_bytes,
            request_progress_timeout,
            stalled: metrics.streams_reset(StreamReset::RequestProgress),
            hooks,
            log_objects,
            refusals,
        }
    }

    /// The part of the budget of a new connection.
    pub fn connection(&self) -> Arc<ConnectionBudget> {
        self.budget.connection()
    }

    /// The charge for a message of `len` bytes on `connection`, or the refusal to answer with.
    /// While hooks may decode calls, the decoded copy is reserved with the message (twice its
    /// length); the dispatcher returns what the call turns out not to need.
    fn charge(
        &self,
        len: usize,
        connection: &Arc<ConnectionBudget>,
    ) -> Result<BudgetShare, Status> {
        if len > self.max_recv_bytes {
            return Err(self.refusals.refuse(&CallError::RequestTooLarge {
                request_bytes: len,
                limit: self.max_recv_bytes,
            }));
        }
        let need = if self.log_objects || self.hooks.may_decode() {
            len.saturating_mul(2)
        } else {
            len
        };
        connection.take(need).map_err(|source| {
            self.refusals.refuse(&CallError::NoBudget {
                request_bytes: len,
                moment: BudgetMoment::BeforeRead,
                source,
            })
        })
    }
}

/// `inner` with Dispatcher messages charged as described in the module docs.
#[derive(Debug, Clone)]
pub struct Charging<S> {
    inner: S,
    charger: Arc<Charger>,
    connection: Arc<ConnectionBudget>,
}

impl<S> Charging<S> {
    /// Wraps `inner` for one connection, charging `connection`'s part of the budget.
    pub fn new(inner: S, charger: Arc<Charger>, connection: Arc<ConnectionBudget>) -> Self {
        Self {
            inner,
            charger,
            connection,
        }
    }
}

impl<S> Service<Request<Incoming>> for Charging<S>
where
    S: Service<Request<ChargedBody>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let progress = Progress {
            timeout: self.charger.request_progress_timeout,
            stalled: self.charger.stalled.clone(),
        };
        if !CHARGED_PATHS.contains(&request.uri().path()) {
            let request = request.map(|body| ChargedBody::new(VecDeque::new(), body, progress));
            return Box::pin(self.inner.call(request));
        }
        // The service is always ready (tonic's routes are); the clone takes that readiness over.
        let mut inner = self.inner.clone();
        let charger = self.charger.clone();
        let connection = self.connection.clone();
        Box::pin(async move {
            let (mut parts, mut body) = request.into_parts();
            let mut head = VecDeque::new();
            match read_prefix(&mut body, &mut head, &progress).await {
                Err(status) => return Ok(status.into_http()),
                // The body ended before a whole prefix: tonic answers that as it always has.
                Ok(None) => {}
                Ok(Some(len)) => match charger.charge(len, &connection) {
                    Ok(share) => {
                        parts.extensions.insert(Charged(Arc::new(share)));
                    }
                    Err(status) => return Ok(status.into_http()),
                },
            }
            inner
                .call(Request::from_parts(
                    parts,
                    ChargedBody::new(head, body, progress),
                ))
                .await
        })
    }
}

/// Reads frames until the 5-byte prefix is in `head`; returns the message length, or `None` when
/// the body ended (or sent trailers) first.
async fn read_prefix(
    body: &mut Incoming,
    head: &mut VecDeque<Frame<Bytes>>,
    progress: &Progress,
) -> Result<Option<usize>, Status> {
    let mut have = 0;
    while have < PREFIX_BYTES {
        let next = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
        let frame = match tokio::time::timeout(progress.timeout, next).await {
            Err(_) => return Err(progress.stalled()),
            Ok(None) => return Ok(None),
            Ok(Some(Err(err))) => return Err(Status::from_error(Box::new(err))),
            Ok(Some(Ok(frame))) => frame,
        };
        let data_len = frame.data_ref().map(Bytes::len);
        head.push_back(frame);
        match data_len {
            Some(len) => have += len,
            None => return Ok(None),
        }
    }
    let mut prefix = [0u8; PREFIX_BYTES];
    let mut filled = 0;
    for data in head.iter().filter_map(Frame::data_ref) {
        let n = data.len().min(PREFIX_BYTES - filled);
        prefix[filled..filled + n].copy_from_slice(&data[..n]);
        filled += n;
        if filled == PREFIX_BYTES {
            break;
        }
    }
    let len = (&prefix[1..]).get_u32();
    Ok(Some(usize::try_from(len).unwrap_or(usize::MAX)))
}

/// How long a request body may make no progress, and where a stall is counted.
#[derive(Debug)]
struct Progress {
    timeout: Duration,
    stalled: Counter,
}

impl Progress {
    /// Counts a stall and says what it was.
    fn stalled(&self) -> Status {
        self.stalled.inc();
        Status::deadline_exceeded(format!(
            "request body made no progress for {} s (request_progress_timeout_secs)",
            self.timeout.as_secs_f64()
        ))
    }
}

/// A request body: the frames read for the prefix, then the rest, failed when it makes no
/// progress for the timeout (the error resets the stream; dropping the request returns its
/// share).
#[derive(Debug)]
pub struct ChargedBody {
    head: VecDeque<Frame<Bytes>>,
    body: Incoming,
    progress: Progress,
    /// Made the first time the body has to wait: a message that arrived whole needs no timer.
    due: Option<Pin<Box<Sleep>>>,
}

impl ChargedBody {
    fn new(head: VecDeque<Frame<Bytes>>, body: Incoming, progress: Progress) -> Self {
        Self {
            head,
            body,
            progress,
            due: None,
        }
    }
}

impl HttpBody for ChargedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(frame) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(due) = &mut this.due {
                    due.as_mut().reset(Instant::now() + this.progress.timeout);
                }
                Poll::Ready(frame.map(|f| f.map_err(|err| Status::from_error(Box::new(err)))))
            }
            Poll::Pending => {
                let timeout = this.progress.timeout;
                let due = this
                    .due
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(due.as_mut().poll(cx));
                Poll::Ready(Some(Err(this.progress.stalled())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.head.is_empty() {
            self.body.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

/// A call's share of the budget, carried from charging to the reply.
pub type CarriedShare = Arc<BudgetShare>;

/// What [`Charging`] leaves in a Dispatcher request's extensions: the share charged from its
/// prefix. A request without it (served some other way) is charged by the handler.
#[derive(Debug, Clone)]
pub struct Charged(pub CarriedShare);
