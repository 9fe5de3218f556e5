//! Developer check: runs the ONNX node conformance suite through import + reference interpreter.
//!
//! `cargo run --release -p kiln-onnx --example conformance -- [SUITE_DIR] [-v] [FILTER]`
//! (SUITE_DIR defaults to /work/onnx-node-tests/node). Each case `<case>/model.onnx` is imported,
//! run on `test_data_set_0/input_N.pb` and compared with `output_N.pb` (rtol 1e-3, atol 1e-4 for
//! floats, exact otherwise). Prints pass/fail/error counts per op type; `-v` lists every
//! non-passing case with its reason.

mod common;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[derive(Default)]
struct Counts {
    pass: usize,
    frozen: usize,
    fail: usize,
    unsupported: usize,
    error: usize,
}

enum Outcome {
    Pass,
    /// Passed once the shape operands fed through inputs were frozen to constants.
    PassFrozen,
    /// Ran but produced wrong values.
    Fail(String),
    /// The importer rejected a feature (or a dtype Kiln lacks).
    Unsupported(String),
    /// Anything else: invalid node, run error, panic.
    Error(String),
}

fn main() {
    let mut dir = PathBuf::from("/work/onnx-node-tests/node");
    let mut verbose = false;
    let mut filter = None;
    for a in std::env::args().skip(1) {
        if a == "-v" {
            verbose = true;
        } else if Path::new(&a).is_dir() {
            dir = PathBuf::from(a);
        } else {
            filter = Some(a);
        }
    }
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("suite folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .filter(|p| {
            filter
                .as_ref()
                .is_none_or(|f| p.to_string_lossy().contains(f.as_str()))
        })
        .collect();
    cases.sort();
    std::panic::set_hook(Box::new(|_| {}));
    let mut per_op: BTreeMap<String, Counts> = BTreeMap::new();
    let mut total = Counts::default();
    for case in &cases {
        let name = case
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let op = op_of(case, &name);
        let outcome = catch_unwind(AssertUnwindSafe(|| run_case(case))).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Outcome::Error(format!("PANIC: {msg}"))
        });
        let c = per_op.entry(op.clone()).or_default();
        let (tag, reason) = match &outcome {
            Outcome::Pass => {
                c.pass += 1;
                total.pass += 1;
                ("pass", String::new())
            }
            Outcome::PassFrozen => {
                c.pass += 1;
                c.frozen += 1;
                total.pass += 1;
                total.frozen += 1;
                ("pass", String::new())
            }
            Outcome::Fail(r) => {
                c.fail += 1;
                total.fail += 1;
                ("FAIL", r.clone())
            }
            Outcome::Unsupported(r) => {
                c.unsupported += 1;
                total.unsupported += 1;
                ("unsup", r.clone())
            }
            Outcome::Error(r) => {
                c.error += 1;
                total.error += 1;
                ("ERROR", r.clone())
            }
        };
        if verbose && tag != "pass" {
            let short: String = reason.chars().take(300).collect();
            println!("{tag:5} {name} [{op}]: {short}");
        }
    }
    println!(
        "\n{:<28} {:>5} {:>5} {:>6} {:>6}",
        "op", "pass", "fail", "unsup", "error"
    );
    for (op, c) in &per_op {
        println!(
            "{op:<28} {:>5} {:>5} {:>6} {:>6}",
            c.pass, c.fail, c.unsupported, c.error
        );
    }
    println!(
        "\nTOTAL {} cases: {} pass ({} with shape inputs frozen), {} fail, {} unsupported, {} error",
        cases.len(),
        total.pass,
        total.frozen,
        total.fail,
        total.unsupported,
        total.error
    );
}

/// The op type a case tests: the model's op whose name matches the case name best.
fn op_of(case: &Path, name: &str) -> String {
    let bytes = std::fs::read(case.join("model.onnx")).unwrap_or_default();
    let model = <kiln_onnx::proto::ModelProto as prost::Message>::decode(bytes.as_slice())
        .unwrap_or_default();
    let key = name
        .trim_start_matches("test_")
        .replace('_', "")
        .to_lowercase();
    let mut best: Option<String> = None;
    for n in model.graph.iter().flat_map(|g| &g.node) {
        let op = n.op_type.clone().unwrap_or_default();
        if key.starts_with(&op.to_lowercase()) && best.as_ref().is_none_or(|b| b.len() < op.len()) {
            best = Some(op);
        }
    }
    let first = model
        .graph
        .iter()
        .flat_map(|g| &g.node)
        .map(|n| n.op_type.clone().unwrap_or_default())
        .next();
    let op = best.or(first).unwrap_or_else(|| "?".into());
    if name.contains("_expanded") {
        format!("{op} (expanded)")
    } else {
        op
    }
}

fn run_case(case: &Path) -> Outcome {
    let first = run_with(case, false);
    match &first {
        Outcome::Unsupported(r) if r.contains("known at import time") => match run_with(case, true)
        {
            Outcome::Pass => Outcome::PassFrozen,
            other => other,
        },
        _ => first,
    }
}

/// Runs a case; with `freeze`, every graph input but the first is bound to its test value as a
/// constant (the suite feeds shape operands such as axes and zero points through inputs).
fn run_with(case: &Path, freeze: bool) -> Outcome {
    let data = case.join("test_data_set_0");
    let mut options = kiln_onnx::ImportOptions::default();
    let mut frozen = 0;
    if freeze {
        let bytes = std::fs::read(case.join("model.onnx")).unwrap_or_default();
        let model = <kiln_onnx::proto::ModelProto as prost::Message>::decode(bytes.as_slice())
            .unwrap_or_default();
        let inits: Vec<String> = model
            .graph
            .iter()
            .flat_map(|g| &g.initializer)
            .filter_map(|t| t.name.clone())
            .collect();
        let names: Vec<String> = model
            .graph
            .iter()
            .flat_map(|g| &g.input)
            .filter_map(|i| i.name.clone())
            .filter(|n| !inits.contains(n))
            .collect();
        for (i, name) in names.iter().enumerate().skip(1) {
            if let Ok((_, t)) = kiln_onnx::read_tensor_file(&data.join(format!("input_{i}.pb"))) {
                options.constant_inputs.insert(name.clone(), t);
                frozen = i;
            }
        }
    }
    let model = match kiln_onnx::load_model(&case.join("model.onnx"), &options) {
        Ok(m) => m,
        Err(e @ kiln_onnx::ImportError::Unsupported { .. }) => {
            return Outcome::Unsupported(e.to_string())
        }
        Err(e) if e.to_string().contains("not supported by Kiln") => {
            return Outcome::Unsupported(e.to_string())
        }
        Err(e) => return Outcome::Error(format!("import: {e}")),
    };
    let inputs = match common::read_numbered(&data, "input") {
        Ok(mut i) => {
            if freeze && frozen > 0 {
                i.truncate(1);
            }
            i
        }
        Err(e) if e.contains("not supported by Kiln") => {
            return Outcome::Unsupported(format!("data: {e}"))
        }
        Err(e) => return Outcome::Error(format!("data: {e}")),
    };
    let want = match common::read_numbered(&data, "output") {
        Ok(o) => o,
        Err(e) if e.contains("not supported by Kiln") => {
            return Outcome::Unsupported(format!("data: {e}"))
        }
        Err(e) => return Outcome::Error(format!("data: {e}")),
    };
    let got = match kiln_reference::run(&model.graph, &inputs) {
        Ok(g) => g,
        Err(e) => return Outcome::Error(format!("run: {e}")),
    };
    if got.len() != want.len() {
        return Outcome::Fail(format!("{} outputs, expected {}", got.len(), want.len()));
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if let Err(e) = common::compare(g, w, 1e-3, 1e-4) {
            return Outcome::Fail(format!("output {i}: {e}"));
        }
    }
    Outcome::Pass
}
