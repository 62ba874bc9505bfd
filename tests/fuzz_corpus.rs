//! The fuzz targets' seed corpus and past crashes, run on every `cargo test`.
//!
//! The fuzzer itself needs cargo-fuzz and minutes (`.ci/fuzz`); this test needs neither. It feeds
//! every seed of a target (`fuzz/corpus/<target>/`, hand-made valid and near-valid inputs; for
//! `pem_import` the labelled test keys and refused PEMs of `tests/fixtures/`) and every file in
//! `fuzz/regressions/<target>/` (inputs that once made a target panic, one file each) through the
//! same `keyhost::fuzzing` function the fuzzer calls, so a fixed crash stays fixed and a seed
//! that starts to panic is caught without fuzzing. It fails when a target has no seeds, when a
//! directory names no target, or when a fuzz target in `fuzz/fuzz_targets/` is missing here.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// A fuzz target's entry point.
type EntryPoint = fn(&[u8]);

/// Every fuzz target and its entry point.
const TARGETS: &[(&str, EntryPoint)] = &[
    ("pem_import", keyhost::fuzzing::pem_import),
    ("json_body", keyhost::fuzzing::json_body),
    ("webhook_signature", keyhost::fuzzing::webhook_signature),
    ("emulator_jwt", keyhost::fuzzing::emulator_jwt),
    ("doctor_jwt", keyhost::fuzzing::doctor_jwt),
    ("config_toml", keyhost::fuzzing::config_toml),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The target whose seeds are the test fixtures: key material lives with the tests, labelled,
/// not in `fuzz/` (`.ci/fuzz` reads the same directory).
const SEEDED_BY_FIXTURES: &str = "pem_import";

/// Where the seeds of `target` are.
fn seeds_of(target: &str) -> PathBuf {
    if target == SEEDED_BY_FIXTURES {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    } else {
        fuzz_dir().join("corpus").join(target)
    }
}

/// The regular files in `dir`, sorted; a missing directory is an error.
fn files(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The names of the subdirectories of `dir`.
fn subdirectories(dir: &Path) -> Vec<String> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Runs every file of `dir` through `run`; the files that panicked, with the panic.
fn failures(dir: &Path, run: EntryPoint) -> Vec<String> {
    let mut failed = Vec::new();
    for file in files(dir) {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failed.push(format!("{}: {message}", file.display()));
        }
    }
    failed
}

fn check(target: &str) {
    let (_, run) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no entry point for {target}"));
    let corpus = seeds_of(target);
    assert!(
        files(&corpus)
            .iter()
            .any(|f| f.file_name().is_some_and(|n| n != "README.md")),
        "{} has no seed: add valid and near-valid inputs",
        corpus.display()
    );
    let mut failed = failures(&corpus, *run);
    let regressions = fuzz_dir().join("regressions").join(target);
    if regressions.exists() {
        assert!(
            !files(&regressions).is_empty(),
            "{} is empty: remove it or add the crash inputs",
            regressions.display()
        );
        failed.extend(failures(&regressions, *run));
    }
    assert!(
        failed.is_empty(),
        "inputs that panic:\n{}",
        failed.join("\n")
    );
}

#[test]
fn pem_import_seeds_and_past_crashes() {
    check("pem_import");
}

#[test]
fn json_body_seeds_and_past_crashes() {
    check("json_body");
}

#[test]
fn webhook_signature_seeds_and_past_crashes() {
    check("webhook_signature");
}

#[test]
fn emulator_jwt_seeds_and_past_crashes() {
    check("emulator_jwt");
}

#[test]
fn doctor_jwt_seeds_and_past_crashes() {
    check("doctor_jwt");
}

#[test]
fn config_toml_seeds_and_past_crashes() {
    check("config_toml");
}

/// A fuzz target, a corpus or a regression directory that the tests above would not cover is a
/// mistake: every one must name a target of [`TARGETS`], and every target must have its corpus.
/// No key material in `fuzz/`: a PEM there belongs in `tests/fixtures/`, labelled.
#[test]
fn every_fuzz_target_has_an_entry_point_and_every_directory_a_target() {
    let known: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    let mut sources: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    sources.sort();
    let mut expected: Vec<String> = known.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(
        sources, expected,
        "fuzz/fuzz_targets/*.rs and TARGETS disagree"
    );
    let mut corpora = subdirectories(&fuzz_dir().join("corpus"));
    corpora.sort();
    let in_corpus: Vec<String> = expected
        .iter()
        .filter(|t| *t != SEEDED_BY_FIXTURES)
        .cloned()
        .collect();
    assert_eq!(
        corpora, in_corpus,
        "fuzz/corpus/ needs exactly one directory per target but {SEEDED_BY_FIXTURES} (seeded by \
         tests/fixtures/)"
    );
    for dir in subdirectories(&fuzz_dir().join("corpus")) {
        for file in files(&fuzz_dir().join("corpus").join(&dir)) {
            let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
            assert!(
                !text.contains("-----BEGIN"),
                "{} holds PEM armour: put key material in tests/fixtures/ and label it",
                file.display()
            );
        }
    }
    for dir in subdirectories(&fuzz_dir().join("regressions")) {
        assert!(
            known.contains(&dir.as_str()),
            "fuzz/regressions/{dir} names no fuzz target"
        );
    }
}
