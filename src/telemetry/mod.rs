//! Telemetry: log output, and OTLP traces per call that join the gateway's trace.

mod export;
mod logs;
mod otlp;
mod propagation;
mod traces;

pub use export::SpanSink;
pub use logs::{LogGuard, init, log_filter};
pub use otlp::AttrValue;
pub use propagation::{MetadataExtractor, parent_from_metadata};
pub use traces::{CallSpan, Traces, TracesError};
