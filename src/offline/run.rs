//! One request Object through the hooks, as the Dispatcher runs a call: encoded, scanned, routed
//! and run, with recorded answers in place of the network; the reply decoded.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use tonic::metadata::MetadataMap;

use crate::{
    call::{CallError, Outcome},
    dispatcher::DISPATCH_SPAN,
    hooks::{
        Hooks,
        recorded::{Recorded, RecordedAnswer},
    },
    pb,
    telemetry::Traces,
    wire,
};

/// What the hooks answered.
#[derive(Debug)]
pub(crate) struct Ran {
    pub outcome: Outcome,
    pub response_code: Option<i32>,
    /// The reply is the request, byte for byte.
    pub unchanged: bool,
    pub reply: pb::Object,
    /// Why no pipeline ran, when no hook matched the call.
    pub unmatched: Option<String>,
}

/// Why a case could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// The call was refused, as the server would refuse it.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The hooks' reply does not decode (a defect: replies are built from decoded Objects).
    #[error("the reply is not a coprocess.Object: {0}")]
    Reply(prost::DecodeError),
}

/// Runs `request` through `hooks`; steps that would call the network answer from `recorded`.
///
/// # Errors
/// When the call is refused or its reply does not decode.
pub(crate) async fn run(
    hooks: &Hooks,
    request: &pb::Object,
    recorded: Vec<RecordedAnswer>,
) -> Result<Ran, RunError> {
    let bytes = Bytes::from(request.encode_to_vec());
    let summary =
        wire::scan_object(&bytes).map_err(|err| CallError::malformed(bytes.len(), err))?;
    let unmatched = hooks
        .current()
        .find(
            summary.hook_type,
            summary.hook_name,
            summary.api_id.unwrap_or(""),
        )
        .is_none()
        .then(|| unmatched(hooks, request));
    // A span that is never exported: steps get the same context type as in a served call.
    let span = Traces::disabled().start(DISPATCH_SPAN, &MetadataMap::new(), &[]);
    let answer = hooks
        .route(&bytes, &summary)?
        .run_with(&span, Some(Arc::new(Recorded::new(recorded))))
        .await?;
    let reply = pb::Object::decode(answer.reply.clone()).map_err(RunError::Reply)?;
    Ok(Ran {
        outcome: answer.outcome,
        response_code: answer.response_code,
        unchanged: answer.reply == bytes,
        reply,
        unmatched,
    })
}

/// Says that no hook matched `request` and which policy answered it instead.
fn unmatched(hooks: &Hooks, request: &pb::Object) -> String {
    let policy = match hooks.current().unknown() {
        crate::hooks::UnknownHooks::Pass => "pass",
        crate::hooks::UnknownHooks::Reject => "reject",
    };
    let api = request
        .spec
        .get("APIID")
        .map(|id| format!(" for API {id:?}"))
        .unwrap_or_default();
    format!(
        "no hook is declared as {} {:?}{api}: answered by unknown_hooks = \"{policy}\"",
        pb::HookType::label_of(request.hook_type),
        request.hook_name,
    )
}
