//! `kiln inspect`: what a model looks like once imported.
//!
//! Invariant: everything printed is read from the imported, verified IR graph (plus the import's
//! notes and opset), so it describes exactly what every backend will execute.

use crate::error::CliError;
use crate::load;
use crate::shapes::ImportArgs;
use kiln_ir::{Graph, ValueId};
use std::collections::BTreeMap;
use std::path::Path;

/// Imports `path` and prints its summary.
pub fn inspect(path: &Path, import: &ImportArgs) -> Result<(), CliError> {
    let model = load(path, import)?;
    let g = &model.graph;
    println!("model: {}", path.display());
    println!("opset: {}", model.opset);
    print_values(g, "inputs", g.inputs());
    print_values(g, "outputs", g.outputs());
    println!("parameters: {}", g.parameter_count());
    println!("nodes: {}", g.nodes().len());
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for node in g.nodes() {
        *ops.entry(node.op.name()).or_default() += 1;
    }
    let mut ops: Vec<_> = ops.into_iter().collect();
    ops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    println!("ops (IR):");
    for (op, n) in ops {
        println!("  {op:<20} {n}");
    }
    if !model.notes.is_empty() {
        println!("notes:");
        for note in &model.notes {
            println!("  {note}");
        }
    }
    Ok(())
}

fn print_values(g: &Graph, title: &str, values: &[ValueId]) {
    println!("{title}:");
    for (i, &v) in values.iter().enumerate() {
        let name = g.value(v).name.as_deref().unwrap_or("");
        println!("  {i}: `{name}` {}", g.ty(v));
    }
}
