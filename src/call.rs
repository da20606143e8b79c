//! What one call is, whichever module handles it: how it ended ([`Outcome`]), what refuses it
//! ([`CallError`], each with its metric label, log line and gRPC status), and [`Refusals`],
//! the one place a refusal is counted, logged (rate-limited) and turned into a `tonic::Status`.

use std::sync::Arc;

use tonic::Status;

use crate::{
    bounds::WarnLimit,
    limits::{BudgetExhausted, ReplyTooLarge},
    metrics::{Metrics, Rejection},
    wire::WireError,
};

/// How a Dispatch call ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The Object went back as it came.
    Unchanged,
    /// The Object went back changed.
    Modified,
    /// A hook ended the request (a response code, or authentication refused).
    Responded,
    /// A plugin step failed and its `on_error` policy answered.
    Failed,
    /// The call failed with a non-OK gRPC status.
    Error,
}

impl Outcome {
    /// Every outcome, in label order.
    pub(crate) const ALL: [Outcome; 5] = [
        Outcome::Unchanged,
        Outcome::Modified,
        Outcome::Responded,
        Outcome::Failed,
        Outcome::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::Modified => "modified",
            Self::Responded => "responded",
            Self::Failed => "failed",
            Self::Error => "error",
        }
    }

    /// The position in [`Outcome::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why a request is not a valid `coprocess.Object`, wherever that was found: the shallow scan,
/// a part selection, or a hook's decode of a nested field.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    /// The wire scan or a part selection.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// prost's decode.
    #[error(transparent)]
    Decode(#[from] prost::DecodeError),
}

/// When a call was refused for want of budget: each moment has its own log line, so a reader
/// knows whether the message had been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetMoment {
    /// From the message's prefix, before its body was read.
    BeforeRead,
    /// Once the message was whole (served without prefix charging).
    Whole,
    /// Before the hook decoded the Object: `copy_bytes` more were needed.
    Copies {
        /// The bytes the decode would have copied beyond what was held.
        copy_bytes: usize,
    },
}

/// Why a call was refused: each knows its metric label, its log line and its gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Not a well-formed Object.
    #[error("malformed coprocess.Object: {source}")]
    Malformed {
        /// The message's length.
        request_bytes: usize,
        /// What was wrong.
        source: Malformed,
    },
    /// Over the receive limit, known from the prefix.
    #[error(
        "request of {request_bytes} bytes exceeds the receive limit of {limit} bytes (max_recv_bytes or TYK_GW_COPROCESSOPTIONS_GRPCSENDMAXSIZE)"
    )]
    RequestTooLarge {
        /// The message's length.
        request_bytes: usize,
        /// The receive limit.
        limit: usize,
    },
    /// The in-flight budget cannot hold it.
    #[error("{source}")]
    NoBudget {
        /// The message's length.
        request_bytes: usize,
        /// When it was refused.
        moment: BudgetMoment,
        /// The figures.
        source: BudgetExhausted,
    },
    /// The reply cannot be made to fit the gateway's receive limit.
    #[error(transparent)]
    ReplyTooLarge(#[from] ReplyTooLarge),
}

impl CallError {
    /// A malformed request of `request_bytes`.
    pub fn malformed(request_bytes: usize, source: impl Into<Malformed>) -> Self {
        Self::Malformed {
            request_bytes,
            source: source.into(),
        }
    }

    /// The `reason` label of `tyk_dispatcher_requests_rejected_total`.
    pub fn rejection(&self) -> Rejection {
        match self {
            Self::Malformed { .. } => Rejection::Malformed,
            Self::RequestTooLarge { .. } => Rejection::RequestTooLarge,
            Self::NoBudget { .. } => Rejection::InFlightBudget,
            Self::ReplyTooLarge(_) => Rejection::ReplyTooLarge,
        }
    }

    /// The refusal's WARN line; `suppressed`: lines of its kind left out before it.
    fn log(&self, suppressed: u64) {
        match self {
            Self::Malformed {
                request_bytes,
                source,
            } => tracing::warn!(
                request_bytes,
                error = %source,
                suppressed,
                "malformed Object refused"
            ),
            Self::RequestTooLarge { request_bytes, .. }
            | Self::NoBudget {
                request_bytes,
                moment: BudgetMoment::BeforeRead,
                ..
            } => tracing::warn!(
                request_bytes,
                reason = %self,
                suppressed,
                "call refused before its message was read"
            ),
            Self::NoBudget {
                request_bytes,
                moment: BudgetMoment::Whole,
                ..
            } => tracing::warn!(request_bytes, reason = %self, suppressed, "call refused"),
            Self::NoBudget {
                moment: BudgetMoment::Copies { copy_bytes },
                ..
            } => tracing::warn!(
                copy_bytes,
                reason = %self,
                suppressed,
                "call refused: no budget to decode its Object"
            ),
            Self::ReplyTooLarge(too_large) => tracing::warn!(
                reply_bytes = too_large.reply_bytes,
                limit_bytes = too_large.limit,
                suppressed,
                "reply too large for the gateway's receive limit"
            ),
        }
    }

    /// Which rate limit its line counts against.
    fn kind(&self) -> usize {
        match self {
            Self::Malformed { .. } => 0,
            Self::RequestTooLarge { .. }
            | Self::NoBudget {
                moment: BudgetMoment::BeforeRead,
                ..
            } => 1,
            Self::NoBudget { .. } => 2,
            Self::ReplyTooLarge(_) => 3,
        }
    }
}

impl From<&CallError> for Status {
    fn from(err: &CallError) -> Self {
        match err {
            CallError::Malformed { .. } => Status::invalid_argument(err.to_string()),
            CallError::RequestTooLarge { .. }
            | CallError::NoBudget { .. }
            | CallError::ReplyTooLarge(_) => Status::resource_exhausted(err.to_string()),
        }
    }
}

/// Counts, logs and answers refused calls. A burst of bad calls writes a line a second per
/// kind, each saying how many were suppressed before it. One pointer to clone: the routes
/// that hold it are cloned for every request.
#[derive(Debug, Clone)]
pub struct Refusals(Arc<RefusalsInner>);

#[derive(Debug)]
struct RefusalsInner {
    metrics: Metrics,
    warnings: [WarnLimit; 4],
}

impl Refusals {
    /// Refusals counted in `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self(Arc::new(RefusalsInner {
            metrics,
            warnings: Default::default(),
        }))
    }

    /// Counts `err`, logs it if its kind's rate limit allows, and gives the status to answer.
    pub fn refuse(&self, err: &CallError) -> Status {
        self.0.metrics.reject(err.rejection());
        if let Some(suppressed) = self.0.warnings[err.kind()].permit() {
            err.log(suppressed);
        }
        err.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_status_and_label() {
        let malformed = CallError::malformed(3, WireError::FieldZero(1));
        let status = Status::from(&malformed);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("malformed coprocess.Object: "),
            "{}",
            status.message()
        );
        assert_eq!(malformed.rejection(), Rejection::Malformed);

        let too_large = CallError::RequestTooLarge {
            request_bytes: 10,
            limit: 5,
        };
        let status = Status::from(&too_large);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "request of 10 bytes exceeds the receive limit of 5 bytes (max_recv_bytes or TYK_GW_COPROCESSOPTIONS_GRPCSENDMAXSIZE)"
        );
        assert_eq!(too_large.rejection(), Rejection::RequestTooLarge);
    }

    #[test]
    fn a_refusal_is_counted_once_per_call() {
        let metrics = Metrics::default();
        let refusals = Refusals::new(metrics.clone());
        for _ in 0..3 {
            let status = refusals.refuse(&CallError::malformed(1, WireError::FieldZero(0)));
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
        }
        assert_eq!(metrics.rejections(Rejection::Malformed).get(), 3);
        assert_eq!(metrics.rejections(Rejection::InFlightBudget).get(), 0);
    }
}
