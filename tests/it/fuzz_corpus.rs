//! The fuzz corpus (`fuzz/corpus/<target>/`: seeds and every crash the fuzzer found) replayed
//! through the harness's own entry points, so `cargo test` checks it without the fuzzer.

use std::{collections::BTreeMap, panic, path::Path};

use tyk_dispatcher::fuzzing::{TARGETS, run};

#[test]
fn every_corpus_file_passes_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = BTreeMap::new();
    let mut failed = Vec::new();
    for target in TARGETS {
        let mut files: Vec<_> = std::fs::read_dir(root.join(target))
            .unwrap_or_else(|err| panic!("fuzz/corpus/{target}: {err}"))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        for file in &files {
            let data = std::fs::read(file).unwrap();
            if panic::catch_unwind(|| run(target, &data)).is_err() {
                failed.push(file.display().to_string());
            }
        }
        replayed.insert(*target, files.len());
    }
    assert!(failed.is_empty(), "corpus files that fail: {failed:?}");
    assert!(
        replayed.values().all(|&count| count > 0),
        "every target has a seed: {replayed:?}"
    );
    let dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !TARGETS.contains(&name.as_str()))
        .collect();
    assert!(dirs.is_empty(), "corpus folders of no target: {dirs:?}");
}

#[test]
fn the_reported_message_is_in_the_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let seed = std::fs::read(root.join("wire/nested-groups-20000.bin")).unwrap();
    let mut expected = vec![0x0b; 20_000];
    expected.resize(40_000, 0x0c);
    assert!(seed == expected, "the 20000-level nested-group message");
}
