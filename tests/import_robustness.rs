//! The importer against hostile input: the malformed corpus and deterministic mutations of the
//! bundled models (a fixed-seed miniature of the `fuzz/` target that runs in every `cargo test`).
//!
//! Invariant: `import_bytes` never panics; it refuses every corpus file with an error, and whatever
//! it accepts from a mutated model is a graph that passes `verify`.

use kiln_onnx::{import_bytes, ImportOptions};
use kiln_tests::{bundled_models, malformed_models};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Imports `bytes`; `Err` describes a panic or an accepted graph that fails verification.
fn import_checked(bytes: &[u8]) -> Result<bool, String> {
    let r = catch_unwind(AssertUnwindSafe(|| {
        import_bytes(bytes, None, &ImportOptions::default())
    }))
    .map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
    .map_err(|msg| format!("import panicked: {msg}"))?;
    match r {
        Ok(model) => model
            .graph
            .verify()
            .map(|()| true)
            .map_err(|e| format!("imported graph fails verification: {e}")),
        Err(_) => Ok(false),
    }
}

#[test]
fn every_malformed_model_is_refused_without_panic() {
    let files = malformed_models();
    assert!(files.len() >= 10, "corpus too small: {files:?}");
    let mut problems = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        match import_checked(&bytes) {
            Ok(false) => {}
            Ok(true) => problems.push(format!("{}: accepted", f.display())),
            Err(e) => problems.push(format!("{}: {e}", f.display())),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// xorshift64: a fixed, dependency-free pseudo-random sequence.
fn rng(mut s: u64) -> impl FnMut() -> u64 {
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

#[test]
fn mutated_models_never_panic() {
    let mut problems = Vec::new();
    for m in bundled_models() {
        let good = std::fs::read(&m.model).unwrap();
        let mut next = rng(0x9E37_79B9_7F4A_7C15 ^ good.len() as u64);
        let mut check = |what: String, bytes: &[u8]| {
            if let Err(e) = import_checked(bytes) {
                problems.push(format!("{} {what}: {e}", m.name));
            }
        };
        for k in 1..64 {
            let at = good.len() * k / 64;
            check(format!("truncated at {at}"), &good[..at]);
        }
        for _ in 0..96 {
            let mut bytes = good.clone();
            let flips = 1 + next() % 4;
            for _ in 0..flips {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            check(format!("with {flips} random byte(s)"), &bytes);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
