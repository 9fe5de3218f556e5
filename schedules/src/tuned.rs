//! The files of `schedules/tuned/`, embedded: what ships with the compiler so that compiles,
//! tuning and prediction start from knowledge rather than from nothing.
//!
//! Invariant: these are the bytes of the files in the repository at build time, untouched;
//! their users parse and check them (`kiln_tune::pretrained`).

/// `schedules/tuned/cost-model.json`: the pretrained latency model (XGBoost's JSON; see
/// `schedules/tuned/README.md` for what it was trained on).
pub const COST_MODEL: Option<&[u8]> = Some(include_bytes!("../tuned/cost-model.json"));

/// `schedules/tuned/records/<target>.jsonl`: pre-tuned records (tuning-log lines) per built-in
/// target, each naming the CPU it was measured on.
pub const RECORDS: [(&str, &str); 5] = [
    (
        "x86_64-linux-gnu",
        include_str!("../tuned/records/x86_64-linux-gnu.jsonl"),
    ),
    (
        "x86_64-linux-gnu-avx2",
        include_str!("../tuned/records/x86_64-linux-gnu-avx2.jsonl"),
    ),
    (
        "x86_64-linux-gnu-avx512",
        include_str!("../tuned/records/x86_64-linux-gnu-avx512.jsonl"),
    ),
    (
        "aarch64-linux-gnu",
        include_str!("../tuned/records/aarch64-linux-gnu.jsonl"),
    ),
    (
        "aarch64-linux-gnu-dotprod",
        include_str!("../tuned/records/aarch64-linux-gnu-dotprod.jsonl"),
    ),
];
