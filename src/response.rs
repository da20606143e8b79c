//! The last step of every gRPC response: a request over the receive limit is reported as
//! RESOURCE_EXHAUSTED (what gRPC specifies; tonic says OUT_OF_RANGE), and a call's share of the
//! in-flight byte budget is held until its reply has been sent, not just built; the reply goes to
//! HTTP/2 in chunks, each counted as send progress.
//!
//! A Dispatch reply is spliced in here rather than encoded by tonic: tonic's encoder copies the
//! message into its own buffer, a second copy of every reply (up to 64 MiB each) that the budget
//! does not see and the hot path does not need. The handler answers an empty message with the
//! reply's bytes in [`HeldReply`] (see [`dispatch_reply`]); tonic's frame for the empty message
//! is replaced by the reply's own 5-byte prefix and then the bytes themselves, uncopied.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::{body::Body, service::Routes};
use tower::Service;

use crate::{
    call::{CallError, Refusals},
    charge::CarriedShare,
    codec::RawMessage,
    stream_watch::{self, StreamProgress},
};

/// tonic's message for a request over `max_decoding_message_size`.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// Put in every request's extensions by [`FinishedRoutes`]: its responses may carry their
/// reply in [`HeldReply`].
#[derive(Debug, Clone, Copy)]
pub struct SplicedReplies;

/// What a Dispatch handler leaves in its response's extensions for [`FinishedRoutes`]: the
/// call's share of the budget, held until the reply has been sent, and the reply itself when it
/// is spliced in place of the response's own (empty) message.
#[derive(Debug, Clone)]
pub struct HeldReply {
    share: CarriedShare,
    spliced: Option<Bytes>,
}

/// The response to a Dispatch call: `reply` spliced when the request came through
/// [`FinishedRoutes`] (`splice`, from [`SplicedReplies`]), encoded by tonic otherwise; `share`
/// held until the reply has been sent either way.
pub fn dispatch_reply(
    splice: bool,
    reply: Bytes,
    share: CarriedShare,
) -> tonic::Response<RawMessage> {
    let (message, spliced) = if splice {
        (RawMessage::default(), Some(reply))
    } else {
        (RawMessage::new(reply), None)
    };
    let mut response = tonic::Response::new(message);
    response
        .extensions_mut()
        .insert(HeldReply { share, spliced });
    response
}

/// The gRPC routes with responses finished as described in the module docs.
#[derive(Debug, Clone)]
pub struct FinishedRoutes {
    routes: Routes,
    refusals: Refusals,
}

impl FinishedRoutes {
    /// Wraps `routes`; requests tonic refuses for size are counted and logged by `refusals`.
    pub fn new(routes: Routes, refusals: Refusals) -> Self {
        Self { routes, refusals }
    }
}

impl<B> Service<Request<B>> for FinishedRoutes
where
    Routes: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    <Routes as Service<Request<B>>>::Future: Unpin,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Finishing<<Routes as Service<Request<B>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request<B>>::poll_ready(&mut self.routes, cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request.extensions_mut().insert(SplicedReplies);
        Finishing {
            inner: self.routes.call(request),
            refusals: self.refusals.clone(),
        }
    }
}

/// The future of [`FinishedRoutes`].
#[derive(Debug)]
pub struct Finishing<F> {
    inner: F,
    refusals: Refusals,
}

impl<F> Future for Finishing<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        Pin::new(&mut this.inner)
            .poll(cx)
            .map_ok(|response| finish(response, &this.refusals))
    }
}

fn finish(mut response: Response<Body>, refusals: &Refusals) -> Response<Body> {
    if let Some(HeldReply { share, spliced }) = response.extensions_mut().remove::<HeldReply>() {
        let reply = stream_watch::reply_progress();
        return response.map(|body| {
            Body::new(HoldingBody {
                body,
                spliced,
                rest: Bytes::new(),
                reply,
                _share: share,
            })
        });
    }
    let headers = response.headers_mut();
    let oversize = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .map(|m| percent_encoding::percent_decode(m.as_bytes()).decode_utf8_lossy())
            .is_some_and(|m| m.starts_with(TONIC_TOO_LARGE));
    if oversize {
        let err = headers
            .get("grpc-message")
            .map(|m| too_large(&percent_encoding::percent_decode(m.as_bytes()).decode_utf8_lossy()))
            .unwrap_or(CallError::RequestTooLarge {
                request_bytes: 0,
                limit: 0,
            });
        let status = refusals.refuse(&err).into_http::<()>();
        for name in ["grpc-status", "grpc-message"] {
            if let Some(value) = status.headers().get(name) {
                headers.insert(name, value.clone());
            }
        }
    }
    response
}

/// "Error, decoded message length too large: found N bytes, the limit is: M bytes" → ours
/// (0 for a figure tonic did not give).
fn too_large(tonic_message: &str) -> CallError {
    let mut numbers = tonic_message
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse::<usize>().ok());
    CallError::RequestTooLarge {
        request_bytes: numbers.next().unwrap_or(0),
        limit: numbers.next().unwrap_or(0),
    }
}

/// Largest data frame a reply body hands to HTTP/2 at once (cut from the encoded reply without
/// copying). hyper polls a body again only once HTTP/2 has sent what it was given (up to the
/// client's window), so each poll is send progress; a whole 64 MiB frame would show none until
/// all of it had gone. A reply stalls, for `reply_progress_timeout_secs`, when less than this
/// was taken in that time.
const REPLY_CHUNK_BYTES: usize = 64 * 1024;

/// A response body that keeps a budget share until it is dropped (fully sent or abandoned), and
/// reports each poll as send progress of its stream (see `stream_watch`).
struct HoldingBody {
    body: Body,
    /// The reply to send in place of the body's empty message, until that message comes.
    spliced: Option<Bytes>,
    /// What is left of a data frame cut into chunks.
    rest: Bytes,
    reply: Option<Arc<StreamProgress>>,
    _share: CarriedShare,
}

impl HttpBody for HoldingBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if let Some(reply) = &this.reply {
            reply.progressed();
        }
        if !this.rest.is_empty() {
            let chunk = cut(&mut this.rest);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        Poll::Ready(frame.map(|frame| {
            frame.map(|frame| match frame.into_data() {
                Ok(data) if data[..] == EMPTY_MESSAGE && this.spliced.is_some() => {
                    let reply = this.spliced.take().unwrap_or_default();
                    this.rest = reply;
                    Frame::data(message_prefix(this.rest.len()))
                }
                Ok(mut data) => {
                    let chunk = cut(&mut data);
                    this.rest = data;
                    Frame::data(chunk)
                }
                Err(frame) => frame,
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.body.size_hint();
        let rest = u64::try_from(self.rest.len()).unwrap_or(u64::MAX);
        hint.set_lower(hint.lower() + rest);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

/// An empty gRPC message as tonic frames it: uncompressed, length 0.
const EMPTY_MESSAGE: [u8; 5] = [0; 5];

/// The 5-byte gRPC prefix of an uncompressed message of `len` bytes (replies are bounded by
/// `max_reply_bytes`, far below 4 GiB).
fn message_prefix(len: usize) -> Bytes {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    let mut prefix = [0u8; 5];
    prefix[1..].copy_from_slice(&len.to_be_bytes());
    Bytes::copy_from_slice(&prefix)
}

/// The first [`REPLY_CHUNK_BYTES`] of `data`, leaving the rest in it.
fn cut(data: &mut Bytes) -> Bytes {
    data.split_to(data.len().min(REPLY_CHUNK_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_size_error_is_rephrased_with_both_numbers() {
        let tonic_message = "Error, decoded message length too large: found 102456 bytes, the limit is: 65536 bytes";
        assert_eq!(
            tonic::Status::from(&too_large(tonic_message)).message(),
            "request of 102456 bytes exceeds the receive limit of 65536 bytes (max_recv_bytes or TYK_GW_COPROCESSOPTIONS_GRPCSENDMAXSIZE)"
        );
    }
}
