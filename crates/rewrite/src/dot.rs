//! Graphviz rendering of a graph, for `--dump-graph`.
//!
//! Invariant: one dot node per graph input and per op node (constants are folded into the label
//! of the op reading them, as `@k`), one edge per operand that is not a constant, and the output
//! values marked; the text is deterministic.

use kiln_ir::{Graph, Op, ValueDef};
use std::fmt::Write as _;

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The graph as a Graphviz digraph.
pub fn to_dot(graph: &Graph) -> String {
    let mut s = String::from(
        "digraph kiln {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    for (i, &v) in graph.inputs().iter().enumerate() {
        let name = graph.value(v).name.clone().unwrap_or_default();
        let _ = writeln!(
            s,
            "  v{} [label=\"input {i} {}\\n{}\", shape=ellipse];",
            v.index(),
            escape(&name),
            graph.ty(v)
        );
    }
    for node in graph.nodes() {
        if let Op::Const(_) = node.op {
            continue;
        }
        let consts: Vec<String> = node
            .inputs
            .iter()
            .filter_map(|&v| match graph.value(v).def {
                ValueDef::Node(n) => match graph.node(n).op {
                    Op::Const(c) => Some(format!("@{}", c.index())),
                    _ => None,
                },
                ValueDef::Input(_) => None,
            })
            .collect();
        let extra = if consts.is_empty() {
            String::new()
        } else {
            format!(" ({})", consts.join(", "))
        };
        let is_output = graph.outputs().contains(&node.output);
        let _ = writeln!(
            s,
            "  v{} [label=\"{}{}\\n{}\"{}];",
            node.output.index(),
            node.op.name(),
            escape(&extra),
            graph.ty(node.output),
            if is_output { ", peripheries=2" } else { "" }
        );
        for &v in &node.inputs {
            let from_const = matches!(graph.value(v).def,
                ValueDef::Node(n) if matches!(graph.node(n).op, Op::Const(_)));
            if !from_const {
                let _ = writeln!(s, "  v{} -> v{};", v.index(), node.output.index());
            }
        }
    }
    s.push_str("}\n");
    s
}
