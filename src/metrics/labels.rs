//! Label values as enums: each knows its text, all its values (so every series can exist from
//! the start) and its place in an array of counters (so the hot path indexes, never searches).

use std::fmt;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

use crate::{
    call::Outcome,
    hooks::{Failure, StepOutcome},
};

/// Declares a label-value enum: its variants with their label text, `ALL` in declaration
/// order, `as_str`, `index` (the position in `ALL`) and the encoding.
macro_rules! label_values {
    ($(
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident => $text:literal,)+
        }
    )+) => {$(
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        impl $name {
            /// Every value, in label order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// The position in [`Self::ALL`] (for the labels that index counter arrays).
            #[allow(dead_code)]
            pub fn index(self) -> usize {
                self as usize
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
                self.as_str().encode(encoder)
            }
        }
    )+};
}

label_values! {
    /// Why a call was refused before any hook ran; the `reason` label of `rejected_calls`.
    pub enum Rejection {
        /// Over the in-flight byte budget.
        InFlightBudget => "in_flight_budget",
        /// Not a well-formed message.
        Malformed => "malformed",
        /// Reply over the known limit even without body strings.
        ReplyTooLarge => "reply_too_large",
        /// Request over the receive limit.
        RequestTooLarge => "request_too_large",
    }

    /// Which cap refused a connection; the `reason` label of `connections_refused`.
    pub enum RefusedBy {
        /// `max_connections`, on a gRPC listener.
        MaxConnections => "max_connections",
        /// `admin_max_connections`, on the admin port.
        AdminMaxConnections => "admin_max_connections",
    }

    /// Why a gRPC connection was closed by a timer; the `reason` label of
    /// `connections_timed_out`.
    pub enum TimedOut {
        /// TLS and HTTP/2 handshake not finished within `handshake_timeout_secs`.
        Handshake => "handshake",
        /// No call within `idle_timeout_secs`.
        Idle => "idle",
    }

    /// Why the server reset one call's stream; the `reason` label of `streams_reset`.
    pub enum StreamReset {
        /// The request body made no progress for `request_progress_timeout_secs`.
        RequestProgress => "request_progress",
        /// The reply made no send progress for `reply_progress_timeout_secs`.
        ReplyProgress => "reply_progress",
    }

    /// How one step run ended; the `outcome` label of `step_runs`.
    pub enum StepRun {
        /// Looked, changed nothing.
        Unchanged => "unchanged",
        /// Changed the Object (or accepted a credential).
        Modified => "modified",
        /// Ended the request (or refused a credential).
        Responded => "responded",
        /// Failed: the hook's `on_error` policy answered.
        Failed => "failed",
        /// Not run: its `when` did not hold.
        Skipped => "skipped",
    }

    /// An authenticating step's decision; the `decision` label of `auth_decisions`.
    pub enum AuthDecision {
        /// The credential was accepted.
        Allowed => "allowed",
        /// The credential was refused.
        Denied => "denied",
    }

    /// How a hook configuration reload ended; the `result` label of `config_reloads`.
    pub enum ReloadResult {
        /// The new hooks are in force.
        Success => "success",
        /// The file was not valid; the hooks in force stay.
        Failure => "failure",
    }
}

impl From<StepOutcome> for StepRun {
    fn from(outcome: StepOutcome) -> Self {
        match outcome {
            StepOutcome::Unchanged => Self::Unchanged,
            StepOutcome::Modified | StepOutcome::Allowed => Self::Modified,
            StepOutcome::Responded | StepOutcome::Denied => Self::Responded,
        }
    }
}

impl AuthDecision {
    /// The decision a step's outcome makes, if it makes one.
    pub fn of(outcome: StepOutcome) -> Option<Self> {
        match outcome {
            StepOutcome::Allowed => Some(Self::Allowed),
            StepOutcome::Denied => Some(Self::Denied),
            _ => None,
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        self.as_str().encode(encoder)
    }
}

impl EncodeLabelValue for Failure {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        self.label().encode(encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_the_label_order() {
        for (position, value) in StepRun::ALL.iter().enumerate() {
            assert_eq!(value.index(), position);
        }
        assert_eq!(
            Rejection::ALL
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>(),
            [
                "in_flight_budget",
                "malformed",
                "reply_too_large",
                "request_too_large"
            ]
        );
    }
}
