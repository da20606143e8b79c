//! Fuzz target `wire_structured`: the input goes to `tyk_dispatcher::fuzzing::run("wire_structured", …)`, the same
//! entry point the corpus replay test uses.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        tyk_dispatcher::fuzzing::run("wire_structured", data);
    });
}
