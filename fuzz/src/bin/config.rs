//! Fuzz target `config`: the input goes to `tyk_dispatcher::fuzzing::run("config", …)`, the same
//! entry point the corpus replay test uses.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        tyk_dispatcher::fuzzing::run("config", data);
    });
}
