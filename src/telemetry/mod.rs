//! Telemetry: log output, and OTLP traces per call that join the gateway's trace.

mod export;
mod logs;
mod propagation;
mod traces;

pub use export::CountingBatchProcessor;
pub use logs::{LogGuard, init};
pub use propagation::{MetadataExtractor, parent_from_metadata};
pub use traces::{CallSpan, Traces, TracesError};
