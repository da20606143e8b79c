//! Telemetry: log output, and OTLP traces per call that join the gateway's trace.

mod export;
mod logs;
mod otlp;
mod propagation;
mod traces;

pub use logs::{init, log_filter};
pub use otlp::AttrValue;
pub use traces::{CallSpan, Traces};
