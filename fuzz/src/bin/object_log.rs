//! Fuzz target `object_log`: the input goes to `tyk_dispatcher::fuzzing::run("object_log", …)`, the same
//! entry point the corpus replay test uses.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        tyk_dispatcher::fuzzing::run("object_log", data);
    });
}
