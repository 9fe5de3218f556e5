//! The latency model end to end through the binary: `kiln tune` writes a log, `kiln cost-model
//! train` learns from it (and scores itself on held-out workloads), `kiln predict` sums its
//! predictions over the schedules a compile would use, and `kiln tune --cost-model` starts
//! the search from it; bad combinations are explained.
//!
//! Invariant: nothing here asserts a timing or an accuracy (the log is tiny and the machine
//! shared); the tests check what is predicted for what, and that it is consistent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn dscnn() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/models/dscnn_kws.onnx")
}

fn kiln(args: &[&str]) -> Output {
    Command::new(KILN)
        .args(args)
        .output()
        .expect("cannot start kiln")
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", show(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn usage_error(o: Output) -> String {
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn measures(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(r#""kind":"measure""#))
        .count()
}

#[test]
fn train_predict_and_tune_from_a_latency_model() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let model = dscnn();
    let model = model.to_str().unwrap();
    let fast = [
        "--repeat-ms",
        "0.2",
        "--batch",
        "4",
        "--threads",
        "1",
        "--confirm",
        "0",
    ];
    let (log, cost) = (p("log.jsonl"), p("latency.json"));

    let mut args = vec![
        "tune",
        model,
        "--trials",
        "40",
        "--no-pretrained",
        "--log",
        &log,
    ];
    args.extend(fast);
    ok(kiln(&args));
    assert_eq!(measures(Path::new(&log)), 40);

    let out = ok(kiln(&[
        "cost-model",
        "train",
        "--log",
        &log,
        "--model",
        model,
        "-o",
        &cost,
        "--evaluate",
        "3",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["folds"], 3);
    assert!(report["samples"].as_u64().unwrap() > 30, "{report}");
    assert!(report["tasks"].as_u64().unwrap() >= 5, "{report}");

    // Prediction with the log's schedules: every task once, tuned where the log has records,
    // the total the weighted sum.
    let predict = |extra: &[&str]| {
        let mut args = vec!["predict", model, "--cost-model", &cost, "--threads", "1"];
        args.extend(extra);
        ok(kiln(&args))
    };
    let json = |text: String| -> serde_json::Value { serde_json::from_str(&text).unwrap() };
    let p1 = json(predict(&["--tuning-log", &log, "--json"]));
    let kernels = p1["kernels"].as_array().unwrap();
    assert!(kernels.len() >= 5, "{p1}");
    assert!(kernels.iter().any(|k| k["schedule"] == "tuned"), "{p1}");
    let sum: f64 = kernels
        .iter()
        .map(|k| k["ms"].as_f64().unwrap() * k["weight"].as_f64().unwrap())
        .sum();
    let total = p1["total_ms"].as_f64().unwrap();
    assert!(total > 0.0 && (total - sum).abs() <= 1e-9 * sum, "{p1}");
    // Without the log (nor pre-tuned records), every schedule is the default.
    let p2 = json(predict(&["--no-pretuned", "--json"]));
    assert!(p2["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["schedule"] == "default"));
    // The table names the total.
    let out = predict(&[]);
    assert!(out.contains("predicted "), "{out}");

    // Tuning from the latency model: the search uses it from the first trial.
    let log2 = p("log2.jsonl");
    let mut args = vec![
        "tune",
        model,
        "--trials",
        "12",
        "--cost-model",
        &cost,
        "--log",
        &log2,
    ];
    args.extend(fast);
    let out = ok(kiln(&args));
    assert!(out.contains("pretrained latency model"), "{out}");
    assert_eq!(measures(Path::new(&log2)), 12);

    // Explained refusals.
    let mut args = vec![
        "tune",
        model,
        "--trials",
        "2",
        "--cost-model",
        &cost,
        "--no-pretrained",
        "--log",
    ];
    let log3 = p("log3.jsonl");
    args.push(&log3);
    assert!(usage_error(kiln(&args)).contains("contradict"));
    // A ranking model (the file tuning keeps beside a --no-pretrained log) is not a latency
    // model.
    let ranking = format!("{log}.model.json");
    let err = usage_error(kiln(&["predict", model, "--cost-model", &ranking]));
    assert!(err.contains("retrain"), "{err}");
    let err = usage_error(kiln(&[
        "predict",
        model,
        "--cost-model",
        &cost,
        "--target",
        "aarch64-linux-gnu",
    ]));
    assert!(err.contains("--device FILE"), "{err}");
    let err = usage_error(kiln(&[
        "cost-model",
        "train",
        "--log",
        &log,
        "--model",
        model,
    ]));
    assert!(err.contains("nothing to do"), "{err}");
    // A device description for another thread count is refused.
    let device = p("device.json");
    let out = ok(kiln(&["device", "--threads", "2", "--json"]));
    std::fs::write(&device, out).unwrap();
    let err = usage_error(kiln(&[
        "predict",
        model,
        "--cost-model",
        &cost,
        "--threads",
        "1",
        "--device",
        &device,
    ]));
    assert!(err.contains("2 thread(s)"), "{err}");
}
