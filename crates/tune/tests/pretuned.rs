//! Pre-tuned records: which built-in target's records a target takes, that a record applies
//! only to its own workload, target and thread count, that this CPU's records win, and that
//! exporting a tuning log adds its best records append-only.

use kiln_schedules::Knobs;
use kiln_tir::Trace;
use kiln_tune::log::{read_log, LogContents, MeasureRecord, Record};
use kiln_tune::pretrained::{export, export_candidates, records_target};
use kiln_tune::TuneError;

fn record(workload: &str, target: &str, threads: usize, ms: f64, device: Option<&str>) -> Record {
    Record::Measure(MeasureRecord {
        workload: workload.into(),
        target: target.into(),
        threads,
        knobs: Knobs {
            vector_tile: Some(if ms < 1.0 { 8 } else { 16 }),
            ..Knobs::default()
        },
        trace: Trace::default(),
        times_ms: vec![ms],
        error: None,
        timestamp: 1,
        device: device.map(String::from),
    })
}

fn default_record(workload: &str, threads: usize, ms: f64, device: Option<&str>) -> Record {
    let mut r = record(workload, "x86_64-linux-gnu", threads, ms, device);
    if let Record::Measure(m) = &mut r {
        m.knobs = Knobs::default();
    }
    r
}

/// Exports every candidate of `log` (no check inside the model).
fn export_all(
    log: &LogContents,
    target: &kiln::Target,
    cpu: &str,
    dir: &std::path::Path,
) -> Result<usize, TuneError> {
    export(&export_candidates(log, target, cpu), target, cpu, dir)
}

#[test]
fn host_takes_the_records_of_the_built_in_target_that_schedules_like_it() {
    let host = kiln::Target::host();
    match records_target(&host) {
        Some(name) => {
            let t = kiln::Target::named(&name).unwrap();
            assert!(t.runs_natively());
            assert_eq!(t.sketch_target(), host.sketch_target());
            println!("host takes the records of {name}");
        }
        None => println!("notice: no built-in target schedules like this host; none apply"),
    }
    let baseline = kiln::Target::named("x86_64-linux-gnu").unwrap();
    assert_eq!(
        records_target(&baseline).as_deref(),
        Some("x86_64-linux-gnu")
    );
    let arm = kiln::Target::named("aarch64-linux-gnu").unwrap();
    assert_eq!(records_target(&arm).as_deref(), Some("aarch64-linux-gnu"));
}

#[test]
fn export_adds_the_best_per_workload_threads_and_cpu_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let target = kiln::Target::named("x86_64-linux-gnu").unwrap();
    let log = LogContents {
        records: vec![
            default_record("w1", 1, 1.0, None),
            default_record("w1", 2, 1.0, None),
            default_record("w2", 1, 4.0, Some("Board A (aarch64) @ 10.0.0.2:9190")),
            // Within noise of its default: not shipped.
            default_record("w3", 1, 1.0, None),
            record("w3", "x86_64-linux-gnu", 1, 0.95, None),
            record("w1", "x86_64-linux-gnu", 1, 2.0, None),
            record("w1", "x86_64-linux-gnu", 1, 0.5, None),
            record("w1", "x86_64-linux-gnu", 2, 0.7, None),
            record("w1", "x86_64-linux-gnu-avx2", 1, 0.1, None),
            record(
                "w2",
                "x86_64-linux-gnu",
                1,
                3.0,
                Some("Board A (aarch64) @ 10.0.0.2:9190"),
            ),
        ],
        skipped_lines: vec![],
    };
    let n = export_all(&log, &target, "CPU X (x86_64)", dir.path()).unwrap();
    assert_eq!(
        n, 3,
        "w1 on 1 and 2 threads, w2 on the board; not the avx2 record, not w3 (within noise)"
    );
    let file = dir.path().join("x86_64-linux-gnu.jsonl");
    let written = read_log(&file).unwrap();
    let w1: Vec<&MeasureRecord> = written
        .measures()
        .filter(|m| m.workload == "w1" && m.threads == 1)
        .collect();
    assert_eq!(w1.len(), 1);
    assert_eq!(w1[0].median_ms(), Some(0.5));
    assert_eq!(w1[0].device.as_deref(), Some("CPU X (x86_64)"));
    let w2 = written.measures().find(|m| m.workload == "w2").unwrap();
    assert_eq!(w2.device.as_deref(), Some("Board A (aarch64)"));
    // Exporting again adds nothing (nothing faster); a faster record is appended.
    assert_eq!(
        export_all(&log, &target, "CPU X (x86_64)", dir.path()).unwrap(),
        0
    );
    let faster = LogContents {
        records: vec![
            default_record("w1", 1, 1.0, None),
            record("w1", "x86_64-linux-gnu", 1, 0.25, None),
        ],
        skipped_lines: vec![],
    };
    assert_eq!(
        export_all(&faster, &target, "CPU X (x86_64)", dir.path()).unwrap(),
        1
    );
    assert_eq!(read_log(&file).unwrap().measures().count(), 4);
    assert!(read_log(&file)
        .unwrap()
        .measures()
        .all(|m| m.workload != "w3" && m.knobs != Knobs::default()));
    // Another CPU's record of the same workload is kept beside it.
    assert_eq!(
        export_all(&log, &target, "CPU Y (x86_64)", dir.path()).unwrap(),
        2
    );
    // Only the candidates the caller keeps (its check inside the model) are written.
    assert_eq!(
        export(
            &export_candidates(&log, &target, "CPU Z (x86_64)")
                .into_iter()
                .filter(|(r, _)| r.threads == 1)
                .collect::<Vec<_>>(),
            &target,
            "CPU Z (x86_64)",
            dir.path()
        )
        .unwrap(),
        1
    );
    // A target file has no built-in records to join.
    let custom = dir.path().join("custom.toml");
    std::fs::write(
        &custom,
        "name = \"custom\"\ndescription = \"x\"\ntriple = \"x86_64-unknown-linux-gnu\"\nlinker = \"cc\"\nvector_bits = 128\n",
    )
    .unwrap();
    if let Ok(t) = kiln::Target::from_file(&custom) {
        let err = export_all(&log, &t, "CPU X (x86_64)", dir.path()).unwrap_err();
        assert!(err.to_string().contains("built-in target"), "{err}");
    }
}
