//! Developer check: imports each model `DIR/NAME.onnx`, runs it with the reference interpreter on
//! `DIR/NAME_data/input_N.pb` and compares with `output_N.pb` (rtol 1e-3, atol 1e-4).
//!
//! `cargo run -p kiln-onnx --example models -- [DIR] [NAME...]` (DIR defaults to
//! /work/shared/models).

mod common;

use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/work/shared/models".into()));
    let mut names: Vec<String> = args.collect();
    if names.is_empty() {
        let mut found: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".onnx"))
                            .map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        names = found;
    }
    let mut failed = 0;
    for name in &names {
        let t0 = Instant::now();
        let result = check(&dir, name);
        let ms = t0.elapsed().as_millis();
        match result {
            Ok(msg) => println!("PASS {name} ({ms} ms): {msg}"),
            Err(msg) => {
                failed += 1;
                println!("FAIL {name} ({ms} ms): {msg}");
            }
        }
    }
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

fn check(dir: &std::path::Path, name: &str) -> Result<String, String> {
    let model = kiln_onnx::load_model(&dir.join(format!("{name}.onnx")), &Default::default())
        .map_err(|e| format!("import: {e}"))?;
    for n in &model.notes {
        println!("  note: {n}");
    }
    let data = dir.join(format!("{name}_data"));
    let inputs = common::read_numbered(&data, "input")?;
    let want = common::read_numbered(&data, "output")?;
    let got = kiln_reference::run(&model.graph, &inputs).map_err(|e| format!("run: {e}"))?;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        common::compare(g, w, 1e-3, 1e-4).map_err(|e| format!("output {i}: {e}"))?;
    }
    Ok(format!(
        "{} nodes, {} params, {} outputs match",
        model.graph.nodes().len(),
        model.graph.parameter_count(),
        want.len()
    ))
}
