//! Entry points of the fuzz harness (`fuzz/`) and of the test that replays its corpus: each
//! parser of untrusted bytes, called the way the server calls it, with the properties that
//! must hold asserted (a failed assertion is a crash to the fuzzer). Not an API.
//!
//! They live here, not in `fuzz/`, so `cargo test` checks the committed corpus through exactly
//! the code the fuzzer ran, without the fuzzer.

use std::path::PathBuf;

use bytes::Bytes;
use prost::Message;

use crate::{
    config::{self, CliOverrides, Sources},
    event_log,
    hooks::{self, ObjectParts},
    object_log, pb, wire,
};

/// The fuzz targets, each a binary of `fuzz/` and a folder of `fuzz/corpus/`.
pub const TARGETS: &[&str] = &[
    "wire",
    "wire_structured",
    "object_log",
    "event_log",
    "config",
    "keys",
];

/// Runs `target` (one of [`TARGETS`]) on `data`; `false` for an unknown target.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "wire" => {
            object(data);
            event(data);
        }
        "wire_structured" => {
            let message = generate(data);
            object(&message);
            event(&message);
        }
        "object_log" => {
            let _ = object_log::render(&Bytes::copy_from_slice(data));
        }
        "event_log" => {
            let _ = event_log::render(data);
        }
        "config" => config_file(data),
        "keys" => keys(data),
        _ => return false,
    }
    true
}

/// An Object as Dispatch handles it: scan, part selection, decoding, edits, body-string
/// dropping and logging.
///
/// # Panics
/// When a property the server relies on does not hold.
pub fn object(data: &[u8]) {
    let decoded = pb::Object::decode(data);
    if wire::scan_object(data).is_err() {
        // Refused before anything else runs; the logger still must not fall over.
        let _ = object_log::render(&Bytes::copy_from_slice(data));
        return;
    }
    if let Err(err) = &decoded {
        // The scan bounds every level prost walks, so prost's own limit is never what refuses.
        assert!(
            !err.to_string().contains("recursion limit"),
            "scanned, yet prost hit its recursion limit"
        );
    }
    let parts = [
        ObjectParts::ALL,
        ObjectParts::HOOK,
        ObjectParts::REQUEST_HEADER_EDITS,
        ObjectParts::SPEC.union(ObjectParts::REQUEST_METHOD),
        ObjectParts::RESPONSE.union(ObjectParts::SESSION),
    ];
    for parts in parts {
        let mut selected = Vec::new();
        parts
            .select(data, &mut selected)
            .expect("the parts of a scanned Object select");
        if decoded.is_ok() {
            pb::Object::decode(selected.as_slice()).expect("the parts of a valid Object decode");
        }
    }
    let dropped = wire::drop_body_strings(data).expect("a scanned Object drops its strings");
    let Ok(old) = decoded else {
        return;
    };
    if let Some(dropped) = dropped {
        let mut expected = old.clone();
        if let Some(request) = expected.request.as_mut() {
            request.body.clear();
        }
        if let Some(response) = expected.response.as_mut() {
            response.body.clear();
        }
        let got = pb::Object::decode(dropped).expect("without body strings, still an Object");
        assert_same(
            &got,
            &expected,
            "dropping body strings changed something else",
        );
    }
    object_log::render(&Bytes::copy_from_slice(data)).expect("a valid Object renders");
    edit(data, &old);
}

/// Edits the way steps do; the reply must decode to exactly what the steps made.
fn edit(data: &[u8], old: &pb::Object) {
    let mut new = old.clone();
    let request = new.request.get_or_insert_with(Default::default);
    request.set_headers.insert("X-Fuzz".into(), "1".into());
    request.url.push_str("/fuzz");
    request
        .return_overrides
        .get_or_insert_with(Default::default)
        .response_code = 403;
    if let Some(response) = new.response.as_mut() {
        response.status_code = response.status_code.wrapping_add(1);
        response.multivalue_headers.push(pb::Header {
            key: "Set-Cookie".into(),
            values: vec!["a=1".into()],
        });
    }
    if let Some(session) = new.session.as_mut() {
        session.tags.push("fuzz".into());
    }
    let reply = hooks::reply_bytes(data, old, new.clone()).expect("a scanned Object edits");
    let reply = reply.expect("the url always changes");
    let got = pb::Object::decode(reply).expect("an edited Object decodes");
    assert_same(&got, &new, "the edited bytes are not what the steps made");
}

/// Equal as encoded (maps are ordered, so encoding is canonical): a NaN double (the fuzzer
/// finds them) is not `==` to itself, yet the same value.
fn assert_same(got: &pb::Object, expected: &pb::Object, what: &str) {
    assert!(
        got.encode_to_vec() == expected.encode_to_vec(),
        "{what}: got {got:?}, expected {expected:?}"
    );
}

/// An Event as DispatchEvent handles it: scan, then the payload's redacted rendering.
pub fn event(data: &[u8]) {
    if let Ok(payload) = wire::scan_event(data) {
        let _ = event_log::render(payload);
    }
}

/// A file for a parser that reads paths: one per process and thread, so the replay test's
/// threads do not share one.
fn scratch(name: &str) -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    std::env::temp_dir().join(format!(
        "tyk-dispatcher-fuzz-{}-{thread}-{name}",
        std::process::id()
    ))
}

/// The configuration file, loaded with no environment and no flags.
fn config_file(data: &[u8]) {
    let path = scratch("config.toml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = config::load(&Sources {
        file: Some(path.clone()),
        env: Vec::new(),
        cli: CliOverrides::default(),
    });
    let _ = std::fs::remove_file(path);
}

/// The first byte picks the parser: an `api_key_auth` keys file, a `jwt_auth` keys file or a
/// JWKS document.
fn keys(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 3 == 2 {
        let _ = hooks::steps::parsers::jwks(rest);
        return;
    }
    // A keys file may name other files (`secret_file`), which an operator trusts; the fuzzer
    // would only find that /dev/zero is endless.
    if rest.windows(5).any(|w| w == b"_file") {
        return;
    }
    let path = scratch("keys.toml");
    if std::fs::write(&path, rest).is_err() {
        return;
    }
    let _ = if which % 3 == 0 {
        hooks::steps::parsers::api_keys_file(&path)
    } else {
        hooks::steps::parsers::jwt_keys_file(&path)
    };
    let _ = std::fs::remove_file(path);
}

/// Reads choices from the fuzzer's bytes; zeros once they run out, so every input generates.
#[derive(Debug)]
struct Choices<'a> {
    bytes: &'a [u8],
}

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&first, rest)) => {
                self.bytes = rest;
                first
            }
            None => 0,
        }
    }

    fn below(&mut self, n: u8) -> u8 {
        self.byte() % n
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        head
    }

    fn exhausted(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Field numbers worth trying: the schema's (at every level they mean something somewhere),
/// unknown ones and the largest.
const FIELDS: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 10, 14, 15, 21, 99, (1 << 29) - 1];

/// Map keys the scan and the steps look for.
const KEYS: &[&[u8]] = &[b"APIID", b"OrgID", b"config_data", b"Authorization", b""];

/// A protobuf message built from fuzz bytes: nested messages and groups (past the bound too),
/// strings, map entries with duplicate keys, huge length prefixes, overlong varints, wrong and
/// undefined wire types, stray end-groups.
pub fn generate(data: &[u8]) -> Vec<u8> {
    let mut choices = Choices { bytes: data };
    let mut out = Vec::new();
    message(&mut choices, 1, &mut out);
    out
}

fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    wire::put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn message(choices: &mut Choices<'_>, depth: usize, out: &mut Vec<u8>) {
    let records = choices.below(8) + 1;
    for _ in 0..records {
        if choices.exhausted() {
            return;
        }
        let field = FIELDS[usize::from(choices.below(FIELDS.len() as u8))];
        match choices.below(12) {
            0 => {
                tag(out, field, wire::wire_type::VARINT);
                let value = u64::from_le_bytes(pad8(choices.take(8)));
                wire::put_varint(out, value);
            }
            1 => {
                // Overlong: zero continuation bytes past the tenth.
                tag(out, field, wire::wire_type::VARINT);
                let extra = usize::from(choices.below(4));
                out.extend(std::iter::repeat_n(0x80, 9 + extra));
                out.push(0x01);
            }
            2 if depth < 80 => {
                let mut inner = Vec::new();
                message(choices, depth + 1, &mut inner);
                wire::put_len_record(out, field, &inner);
            }
            3 => {
                let len = usize::from(choices.byte());
                let text = choices.take(len).to_vec();
                wire::put_len_record(out, field, &text);
            }
            4 => {
                // A length far past the end of the message.
                tag(out, field, wire::wire_type::LEN);
                let len = u64::from_le_bytes(pad8(choices.take(8))) | (1 << 40);
                wire::put_varint(out, len);
                out.extend_from_slice(choices.take(4));
            }
            5 => {
                // Groups nested `levels` deep around a little content, closed by a chosen field.
                // Now and then the reported 20000 levels; mostly a few past the bound, cheaply.
                let levels =
                    usize::from(choices.byte()) + if choices.below(16) == 1 { 20_000 } else { 0 };
                for _ in 0..levels {
                    tag(out, field, wire::wire_type::SGROUP);
                }
                // The generator's own recursion stays shallow whatever the input.
                if choices.below(2) == 0 && depth < 80 {
                    let mut inner = Vec::new();
                    message(choices, depth + levels + 1, &mut inner);
                    if !inner.is_empty() {
                        wire::put_len_record(out, 15, &inner);
                    }
                }
                let closing = if choices.below(8) == 0 {
                    FIELDS[usize::from(choices.below(FIELDS.len() as u8))]
                } else {
                    field
                };
                let closed = levels - usize::from(choices.below(2)).min(levels);
                for _ in 0..closed {
                    tag(out, closing, wire::wire_type::EGROUP);
                }
            }
            6 => {
                tag(out, field, wire::wire_type::I32);
                out.extend_from_slice(&pad8(choices.take(4))[..4]);
            }
            7 => {
                tag(out, field, wire::wire_type::I64);
                out.extend_from_slice(&pad8(choices.take(8)));
            }
            8 => {
                // Map entries, often with the same key twice (the last one wins).
                let key = KEYS[usize::from(choices.below(KEYS.len() as u8))];
                for _ in 0..=choices.below(3) {
                    let mut entry = Vec::new();
                    wire::put_len_record(&mut entry, wire::field::MAP_KEY, key);
                    let len = usize::from(choices.below(16));
                    let value = choices.take(len).to_vec();
                    wire::put_len_record(&mut entry, wire::field::MAP_VALUE, &value);
                    wire::put_len_record(out, field, &entry);
                }
            }
            9 => {
                // Undefined wire types, or an end-group with nothing open.
                let wire_type = [6, 7, wire::wire_type::EGROUP][usize::from(choices.below(3))];
                tag(out, field, wire_type);
            }
            10 => {
                // Field number zero.
                out.push(choices.below(6));
            }
            _ => {
                // Raw bytes: whatever they make of the records that follow.
                let len = usize::from(choices.below(8)) + 1;
                out.extend_from_slice(choices.take(len));
            }
        }
    }
}

fn pad8(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0; 8];
    out[..bytes.len()].copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_makes_nested_groups_past_the_bound() {
        // Field choice 9 (index 9 of FIELDS: 15), kind 5 (groups), 0 levels + 20000.
        let message = generate(&[0, 9, 5, 0, 1, 1, 1]);
        assert!(message.len() > 20_000, "{}", message.len());
        assert_eq!(
            wire::scan_object(&message),
            Err(wire::WireError::TooDeep {
                at: 63,
                limit: wire::MAX_DEPTH
            })
        );
        object(&message);
        event(&message);
    }

    #[test]
    fn every_target_runs_on_empty_input() {
        for target in TARGETS {
            assert!(run(target, &[]), "{target}");
        }
        assert!(!run("nonesuch", &[]));
    }
}
