//! The last step of every gRPC response: a request over the receive limit is reported as
//! RESOURCE_EXHAUSTED (what gRPC specifies; tonic says OUT_OF_RANGE), and a call's share of the
//! in-flight byte budget is held until its reply has been sent, not just built.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tonic::{body::Body, service::Routes};
use tower::Service;

use crate::limits::BudgetShare;

/// tonic's message for a request over `max_decoding_message_size`.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// The gRPC routes with responses finished as described in the module docs.
#[derive(Debug, Clone)]
pub struct FinishedRoutes {
    routes: Routes,
    too_large: Counter,
}

impl FinishedRoutes {
    /// Wraps `routes`; `too_large` counts requests refused for size.
    pub fn new(routes: Routes, too_large: Counter) -> Self {
        Self { routes, too_large }
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

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Finishing {
            inner: self.routes.call(request),
            too_large: self.too_large.clone(),
        }
    }
}

/// The future of [`FinishedRoutes`].
#[derive(Debug)]
pub struct Finishing<F> {
    inner: F,
    too_large: Counter,
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
            .map_ok(|response| finish(response, &this.too_large))
    }
}

fn finish(mut response: Response<Body>, too_large: &Counter) -> Response<Body> {
    if let Some(share) = response.extensions_mut().remove::<Arc<BudgetShare>>() {
        return response.map(|body| {
            Body::new(HoldingBody {
                body,
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
        too_large.inc();
        let message = headers
            .get("grpc-message")
            .map(|m| {
                rephrase_too_large(
                    &percent_encoding::percent_decode(m.as_bytes()).decode_utf8_lossy(),
                )
            })
            .unwrap_or_default();
        tracing::warn!(reason = %message, "request refused");
        let status = tonic::Status::resource_exhausted(message).into_http::<()>();
        for name in ["grpc-status", "grpc-message"] {
            if let Some(value) = status.headers().get(name) {
                headers.insert(name, value.clone());
            }
        }
    }
    response
}

/// "Error, decoded message length too large: found N bytes, the limit is: M bytes" → ours.
fn rephrase_too_large(tonic_message: &str) -> String {
    let numbers: Vec<&str> = tonic_message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .collect();
    match numbers.as_slice() {
        [found, limit, ..] => format!(
            "request of {found} bytes exceeds the receive limit of {limit} bytes (max_recv_bytes or TYK_GW_COPROCESSOPTIONS_GRPCSENDMAXSIZE)"
        ),
        _ => "request exceeds the receive limit (max_recv_bytes)".to_string(),
    }
}

/// A response body that keeps a budget share until it is dropped (fully sent or abandoned).
struct HoldingBody {
    body: Body,
    _share: Arc<BudgetShare>,
}

impl HttpBody for HoldingBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_size_error_is_rephrased_with_both_numbers() {
        let tonic_message = "Error, decoded message length too large: found 102456 bytes, the limit is: 65536 bytes";
        assert_eq!(
            rephrase_too_large(tonic_message),
            "request of 102456 bytes exceeds the receive limit of 65536 bytes (max_recv_bytes or TYK_GW_COPROCESSOPTIONS_GRPCSENDMAXSIZE)"
        );
    }
}
