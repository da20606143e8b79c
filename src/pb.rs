//! The `coprocess` protocol types generated from `proto/`, their canonical JSON mapping, the
//! raw-bytes Dispatcher server trait and the descriptor set served by reflection.

#![allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]

tonic::include_proto!("coprocess");
include!(concat!(env!("OUT_DIR"), "/coprocess.serde.rs"));
include!(concat!(env!("OUT_DIR"), "/coprocess.Dispatcher.rs"));

/// Every `coprocess` file descriptor, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("coprocess_descriptor");

/// The Tyk Gateway version whose protocol `proto/` matches.
pub const PROTOCOL_VERSION: &str = "tyk-5.14.0";

/// The gRPC service name.
pub const SERVICE_NAME: &str = "coprocess.Dispatcher";

impl HookType {
    /// The enum name of a raw hook type, as the proto spells it, or `None` for a value the
    /// protocol does not define.
    pub fn name_of(raw: i32) -> Option<&'static str> {
        HookType::try_from(raw).ok().map(|hook| hook.as_str_name())
    }

    /// The label of a raw hook type in metrics, spans and logs: its enum name, or `Unknown`.
    pub fn label_of(raw: i32) -> &'static str {
        Self::name_of(raw).unwrap_or("Unknown")
    }
}
