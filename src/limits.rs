//! Message-size and memory budgets: the in-flight byte budget and the reply size policy.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use bytes::Bytes;

use crate::{bounds::WarnLimit, config::GATEWAY_DEFAULT_RECV_BYTES, metrics::Metrics, wire};

/// The in-flight budget cannot hold a call, with the figures that say why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetExhausted {
    /// Over its connection's fair share, while other connections share the budget.
    #[error(
        "in-flight budget exhausted: this call needs {bytes} bytes while its connection holds {held} of its fair share of {fair} bytes ({total} bytes (max_in_flight_bytes) shared by {connections} connections, at least max_recv_bytes each)"
    )]
    FairShare {
        /// What the call needs.
        bytes: usize,
        /// What its connection holds.
        held: usize,
        /// The connection's fair share.
        fair: usize,
        /// The whole budget.
        total: usize,
        /// Connections sharing it.
        connections: usize,
    },
    /// Over what the whole budget has left.
    #[error(
        "in-flight budget exhausted: this call needs {bytes} bytes while {held} of {total} bytes (max_in_flight_bytes) are held by other calls"
    )]
    Total {
        /// What the call needs.
        bytes: usize,
        /// What other calls hold.
        held: usize,
        /// The whole budget.
        total: usize,
    },
}

/// A reply that cannot be made to fit the gateway's known receive limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "reply too large: {reply_bytes} bytes{} exceeds the reply limit of {limit} bytes (max_reply_bytes or TYK_GW_COPROCESSOPTIONS_GRPCRECVMAXSIZE)",
    before_dropping.map(|b| format!(" ({b} bytes before dropping the body strings)")).unwrap_or_default()
)]
pub struct ReplyTooLarge {
    /// The reply's size as it would be sent.
    pub reply_bytes: usize,
    /// Its size before the body strings were dropped, when they were.
    pub before_dropping: Option<usize>,
    /// The limit.
    pub limit: usize,
}

/// Bytes of request messages held at once across all calls.
///
/// A gateway sets no deadline, sends 64 MiB messages and opens as many streams as it likes;
/// without a budget a burst of large bodies could run a sidecar out of memory. A call is charged
/// its message's length as soon as the 5-byte gRPC prefix has arrived, before the rest is read
/// (see `charge`), and holds it until its reply body has been handed to HTTP/2 or dropped.
#[derive(Debug, Clone)]
pub struct InFlightBudget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    held: AtomicUsize,
    total: usize,
    /// The least fair share: one largest message (`max_recv_bytes`).
    floor: usize,
    /// Open connections that have been charged for a call, among which the budget is shared.
    connections: AtomicUsize,
}

/// One connection's part of the budget.
///
/// A lone connection (the gateway keeps one) may use the whole budget. Once more than one
/// open connection has made a charged call, each is held to `total / connections`, never below
/// one largest message, so a client that floods or never reads its replies cannot starve the
/// others. Counting connections that have called, rather than those holding budget right now,
/// matters: a client making small quick calls holds nothing most of the time, and a hog would
/// otherwise take everything between two of them.
#[derive(Debug)]
pub struct ConnectionBudget {
    shared: Arc<Shared>,
    held: AtomicUsize,
    counted: AtomicBool,
}

impl Drop for ConnectionBudget {
    fn drop(&mut self) {
        if *self.counted.get_mut() {
            self.shared.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl ConnectionBudget {
    /// Takes `bytes` for a call on this connection, within its fair share and the budget.
    ///
    /// # Errors
    /// The figures, when either cannot hold `bytes` more.
    pub fn take(self: &Arc<Self>, bytes: usize) -> Result<BudgetShare, BudgetExhausted> {
        let shared = &self.shared;
        // Once per connection: the load keeps the hot path to a read.
        if !self.counted.load(Ordering::Relaxed) && !self.counted.swap(true, Ordering::AcqRel) {
            shared.connections.fetch_add(1, Ordering::AcqRel);
        }
        let connections = shared.connections.load(Ordering::Acquire).max(1);
        let before = self.held.fetch_add(bytes, Ordering::AcqRel);
        if connections > 1 {
            // Never below one call: a connection holding nothing may always make one.
            let fair = (shared.total / connections).max(shared.floor).max(bytes);
            // A share as large as the budget refuses nothing the budget itself would not, and
            // the budget's refusal says more.
            if fair < shared.total && before.saturating_add(bytes) > fair {
                self.held.fetch_sub(bytes, Ordering::AcqRel);
                return Err(BudgetExhausted::FairShare {
                    bytes,
                    held: before,
                    fair,
                    total: shared.total,
                    connections,
                });
            }
        }
        match take_from(shared, bytes) {
            Ok(()) => Ok(BudgetShare {
                shared: shared.clone(),
                connection: Some(self.clone()),
                bytes: AtomicUsize::new(bytes),
            }),
            Err(status) => {
                self.held.fetch_sub(bytes, Ordering::AcqRel);
                Err(status)
            }
        }
    }

    /// Bytes this connection's calls hold now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

fn take_from(shared: &Shared, bytes: usize) -> Result<(), BudgetExhausted> {
    let total = shared.total;
    shared
        .held
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            held.checked_add(bytes).filter(|after| *after <= total)
        })
        .map(|_| ())
        .map_err(|held| BudgetExhausted::Total { bytes, held, total })
}

/// A share of the budget, returned when dropped. It may grow (never be refused) once the call
/// has done its work, to account for an edited reply.
#[derive(Debug)]
pub struct BudgetShare {
    shared: Arc<Shared>,
    connection: Option<Arc<ConnectionBudget>>,
    bytes: AtomicUsize,
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        let bytes = *self.bytes.get_mut();
        self.shared.held.fetch_sub(bytes, Ordering::AcqRel);
        if let Some(connection) = &self.connection {
            connection.held.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

impl BudgetShare {
    /// Bytes this share holds.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// A further share of `bytes` for a copy the same call makes, taken like the first one
    /// (within the connection's fair share and the budget).
    ///
    /// # Errors
    /// The figures, when they cannot hold `bytes` more.
    pub fn take_more(&self, bytes: usize) -> Result<BudgetShare, BudgetExhausted> {
        match &self.connection {
            Some(connection) => connection.take(bytes),
            None => take_from(&self.shared, bytes).map(|()| BudgetShare {
                shared: self.shared.clone(),
                connection: None,
                bytes: AtomicUsize::new(bytes),
            }),
        }
    }

    /// Makes the share `bytes`: smaller returns the rest; larger goes over the budget if need
    /// be: the work is done, refusing now would only waste it, and later calls see the memory it
    /// holds.
    pub fn resize(&self, bytes: usize) {
        let before = self.bytes.swap(bytes, Ordering::AcqRel);
        // Most calls resize to what they hold already (a pass-through call twice a call).
        if bytes == before {
            return;
        }
        if bytes > before {
            let more = bytes - before;
            self.shared.held.fetch_add(more, Ordering::AcqRel);
            if let Some(connection) = &self.connection {
                connection.held.fetch_add(more, Ordering::AcqRel);
            }
        } else {
            let less = before - bytes;
            self.shared.held.fetch_sub(less, Ordering::AcqRel);
            if let Some(connection) = &self.connection {
                connection.held.fetch_sub(less, Ordering::AcqRel);
            }
        }
    }
}

impl InFlightBudget {
    /// A budget of `total` bytes; a connection's fair share is never below `floor`.
    pub fn new(total: usize, floor: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                held: AtomicUsize::new(0),
                total,
                floor,
                connections: AtomicUsize::new(0),
            }),
        }
    }

    /// A new connection's part of the budget.
    pub fn connection(&self) -> Arc<ConnectionBudget> {
        Arc::new(ConnectionBudget {
            shared: self.shared.clone(),
            held: AtomicUsize::new(0),
            counted: AtomicBool::new(false),
        })
    }

    /// Takes `bytes` from the budget.
    ///
    /// # Errors
    /// The figures, when the budget cannot hold `bytes` more.
    pub fn take(&self, bytes: usize) -> Result<BudgetShare, BudgetExhausted> {
        take_from(&self.shared, bytes).map(|()| BudgetShare {
            shared: self.shared.clone(),
            connection: None,
            bytes: AtomicUsize::new(bytes),
        })
    }

    /// Bytes held now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::Acquire)
    }
}

/// What the reply policy did to a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyFit {
    /// Sent as it was.
    AsIs,
    /// The `body` strings were dropped to fit.
    BodyStringsDropped,
    /// Over the gateway's default limit, but no limit is known: sent with a warning.
    OverGatewayDefault,
}

/// Keeps replies within what the gateway will accept.
#[derive(Debug, Clone)]
pub struct ReplyPolicy {
    limit: Option<usize>,
    /// Replies trimmed to what the gateway reads back (`trim_replies`).
    trim: bool,
    metrics: Metrics,
    /// Rate limits of the per-call warnings: body strings dropped, over the gateway's default
    /// (a reply refused as too large is logged with the other refusals, see `call`).
    warnings: Arc<[WarnLimit; 2]>,
}

impl ReplyPolicy {
    /// `limit`: the gateway's receive limit when known (ours or its `GRPCRECVMAXSIZE`).
    pub fn new(limit: Option<usize>, metrics: Metrics) -> Self {
        Self {
            limit,
            trim: false,
            metrics,
            warnings: Arc::default(),
        }
    }

    /// The same policy, trimming replies to what the gateway reads back when `trim` is set.
    #[must_use]
    pub fn trimming(mut self, trim: bool) -> Self {
        self.trim = trim;
        self
    }

    /// The reply of a call of `hook_type` as it will be sent: trimmed when asked for (see
    /// `trim`), then fitted to the limit ([`ReplyPolicy::fit`]).
    ///
    /// # Errors
    /// As [`ReplyPolicy::fit`].
    pub fn shape(&self, reply: Bytes, hook_type: i32) -> Result<Bytes, ReplyTooLarge> {
        let reply = if self.trim {
            // Every reply was scanned (or encoded) as an Object already: a framing error here
            // cannot happen, and would leave the reply whole.
            crate::trim::for_gateway(&reply, hook_type)
                .ok()
                .flatten()
                .unwrap_or(reply)
        } else {
            reply
        };
        self.fit(reply).map(|(reply, _)| reply)
    }

    /// Makes `reply` (an encoded Object) fit the limit: as it is when it fits; without its
    /// `body` strings (which the gateway ignores) when that makes it fit; otherwise an error
    /// naming both sizes. With no known limit, the gateway's 4 MiB default is aimed for, and a
    /// reply still over it is sent with a warning.
    ///
    /// # Errors
    /// The sizes, when a known limit cannot be met.
    pub fn fit(&self, reply: Bytes) -> Result<(Bytes, ReplyFit), ReplyTooLarge> {
        let limit = self.limit.unwrap_or(GATEWAY_DEFAULT_RECV_BYTES);
        if reply.len() <= limit {
            return Ok((reply, ReplyFit::AsIs));
        }
        let original = reply.len();
        let reply = match wire::drop_body_strings(&reply) {
            Ok(Some(smaller)) => {
                self.metrics.refusals.body_strings_dropped.inc();
                if let Some(suppressed) = self.warnings[0].permit() {
                    tracing::warn!(
                        reply_bytes = original,
                        without_body_strings = smaller.len(),
                        limit_bytes = limit,
                        suppressed,
                        "reply over the limit: body strings dropped (the gateway reads raw_body only)"
                    );
                }
                smaller
            }
            _ => reply,
        };
        let fit = if reply.len() < original {
            ReplyFit::BodyStringsDropped
        } else {
            ReplyFit::AsIs
        };
        if reply.len() <= limit {
            return Ok((reply, fit));
        }
        if self.limit.is_none() {
            self.metrics.refusals.over_gateway_default.inc();
            if let Some(suppressed) = self.warnings[1].permit() {
                tracing::warn!(
                    reply_bytes = reply.len(),
                    limit_bytes = limit,
                    suppressed,
                    "reply exceeds the gateway's default receive limit; it will refuse it unless TYK_GW_COPROCESSOPTIONS_GRPCRECVMAXSIZE is raised"
                );
            }
            return Ok((reply, ReplyFit::OverGatewayDefault));
        }
        Err(ReplyTooLarge {
            reply_bytes: reply.len(),
            before_dropping: (fit == ReplyFit::BodyStringsDropped).then_some(original),
            limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        call::{BudgetMoment, CallError},
        pb,
    };
    use prost::Message;

    /// What a caller is answered when the budget refuses it.
    fn refused(source: BudgetExhausted) -> tonic::Status {
        tonic::Status::from(&CallError::NoBudget {
            request_bytes: 0,
            moment: BudgetMoment::Whole,
            source,
        })
    }

    #[test]
    fn the_budget_refuses_what_does_not_fit_and_returns_shares() {
        let budget = InFlightBudget::new(100, 100);
        let a = budget.take(60).unwrap();
        let err = refused(budget.take(50).unwrap_err());
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message()
                .contains("needs 50 bytes while 60 of 100 bytes"),
            "{}",
            err.message()
        );
        drop(a);
        assert_eq!(budget.held(), 0);
        let b = budget.take(100).unwrap();
        // Growth after the work is done is never refused, and all of it comes back.
        b.resize(130);
        assert_eq!((b.bytes(), budget.held()), (130, 130));
        b.resize(40);
        assert_eq!((b.bytes(), budget.held()), (40, 40));
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_lone_connection_may_take_everything_two_share_it_fairly() {
        let budget = InFlightBudget::new(100, 30);
        let (a, b, c) = (
            budget.connection(),
            budget.connection(),
            budget.connection(),
        );
        let whole = a.take(100).unwrap();
        assert_eq!((a.held(), budget.held()), (100, 100));
        drop(whole);
        assert_eq!((a.held(), budget.held()), (0, 0));
        // b has called too: a is held to 100 / 2.
        let _b1 = b.take(10).unwrap();
        let _a1 = a.take(50).unwrap();
        let err = refused(a.take(1).unwrap_err());
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains(
                "needs 1 bytes while its connection holds 50 of its fair share of 50 bytes (100 bytes (max_in_flight_bytes) shared by 2 connections"
            ),
            "{}",
            err.message()
        );
        // Three connections: 100 / 3 is below the floor of one largest message.
        let _c1 = c.take(30).unwrap();
        assert_eq!(budget.held(), 90);
        let err = refused(b.take(25).unwrap_err());
        assert!(
            err.message().contains("fair share of 33 bytes"),
            "{}",
            err.message()
        );
        // A closed connection no longer counts.
        drop((_c1, c));
        let _b2 = b.take(20).unwrap();
        assert_eq!((a.held(), b.held(), budget.held()), (50, 30, 80));
    }

    fn object(body: &[u8], utf8: bool) -> Bytes {
        pb::Object {
            request: Some(pb::MiniRequestObject {
                raw_body: body.to_vec().into(),
                body: if utf8 {
                    String::from_utf8(body.to_vec()).unwrap()
                } else {
                    String::new()
                },
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    }

    #[test]
    fn body_strings_go_when_that_makes_the_reply_fit() {
        let policy = ReplyPolicy::new(Some(1500), Metrics::default());
        let reply = object(&[b'a'; 1000], true);
        let (fitted, fit) = policy.fit(reply).unwrap();
        assert_eq!(fit, ReplyFit::BodyStringsDropped);
        assert!(fitted.len() < 1100);
        assert_eq!(
            pb::Object::decode(fitted)
                .unwrap()
                .request
                .unwrap()
                .raw_body
                .len(),
            1000
        );
    }

    #[test]
    fn a_reply_that_cannot_fit_names_both_sizes() {
        let policy = ReplyPolicy::new(Some(500), Metrics::default());
        let err = tonic::Status::from(&CallError::from(
            policy.fit(object(&[0xff; 1000], false)).unwrap_err(),
        ));
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message()
                .starts_with("reply too large: 1006 bytes exceeds"),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("reply limit of 500 bytes"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn without_a_known_limit_big_replies_pass_with_a_count() {
        let metrics = Metrics::default();
        let policy = ReplyPolicy::new(None, metrics.clone());
        let (_, fit) = policy.fit(object(&vec![0xff; 5 << 20], false)).unwrap();
        assert_eq!(fit, ReplyFit::OverGatewayDefault);
        assert_eq!(metrics.refusals.over_gateway_default.get(), 1);
    }
}
