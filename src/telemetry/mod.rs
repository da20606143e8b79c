//! Telemetry: log output, and OTLP traces per call that join the gateway's trace (with the
//! `tracing` spans of the call's steps).

mod clock;
mod export;
mod logs;
mod otlp;
mod propagation;
mod step_spans;
mod traces;

pub use logs::{init, log_filter};
pub use otlp::AttrValue;
pub use step_spans::{StepSpans, current_step_span, in_step};
pub use traces::{CallSpan, Traces};
