//! Integration tests: the server started on loopback ports (in-process or as the real binary)
//! and driven by real clients.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod binary;
mod bounds;
mod dispatch;
mod fuzz_corpus;
mod grpcurl;
mod helpers;
mod hooks;
mod hygiene;
mod lifecycle;
mod limits;
mod memory;
mod offline;
mod policy;
mod tls;
mod traces;
mod unix;
