//! Fuzz target `event_log`: the input goes to `tyk_dispatcher::fuzzing::run("event_log", …)`, the same
//! entry point the corpus replay test uses.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        tyk_dispatcher::fuzzing::run("event_log", data);
    });
}
