//! A clean-up after extraction: transposes moved below the unary elementwise ops that read them.
//!
//! `f(transpose(x))` and `transpose(f(x))` are equal for an elementwise `f` (the
//! `transpose-through-unary` rule) and cost the same, so extraction may return either. Only the
//! second lets `f` fuse into the kernel that produces `x` (a convolution's activation), so this
//! pass rewrites the first into the second wherever the transpose has no other reader.
//!
//! Invariant: the result computes exactly what the input graph computes (the same ops, reordered
//! by that identity), keeps every graph input and output with its name, and is verified.

use kiln_ir::{Graph, IrError, Op, ValueId};
use std::collections::HashMap;

fn is_unary_elementwise(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Clamp { .. } | Op::Cast { .. })
}

/// `graph` with every single-reader transpose swapped below the unary elementwise op reading it,
/// repeated until none is left (a transpose sinks through a whole chain).
pub fn sink_transposes(graph: &Graph) -> Result<Graph, IrError> {
    let mut g = graph.clone();
    // Each round moves each transpose one op down; chains are short.
    for _ in 0..g.nodes().len() {
        let Some(next) = sink_once(&g)? else {
            break;
        };
        g = next;
    }
    g.verify()?;
    Ok(g)
}

/// One round: every qualifying (transpose, reader) pair swapped; `None` when there is none.
fn sink_once(g: &Graph) -> Result<Option<Graph>, IrError> {
    let mut readers: HashMap<ValueId, usize> = HashMap::new();
    for n in g.nodes() {
        for &v in &n.inputs {
            *readers.entry(v).or_default() += 1;
        }
    }
    for &v in g.outputs() {
        *readers.entry(v).or_default() += 1;
    }
    let producer: HashMap<ValueId, usize> = g
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, n)| (n.output, i))
        .collect();
    // Reader node index -> transpose node index.
    let mut swaps: HashMap<usize, usize> = HashMap::new();
    for (i, n) in g.nodes().iter().enumerate() {
        if !is_unary_elementwise(&n.op) || n.inputs.len() != 1 {
            continue;
        }
        let Some(&t) = producer.get(&n.inputs[0]) else {
            continue;
        };
        if matches!(g.nodes()[t].op, Op::Transpose { .. }) && readers[&n.inputs[0]] == 1 {
            swaps.insert(i, t);
        }
    }
    if swaps.is_empty() {
        return Ok(None);
    }
    let moved: std::collections::HashSet<usize> = swaps.values().copied().collect();
    let mut out = Graph::new();
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for &v in g.inputs() {
        let value = g.value(v);
        let new = out.add_input(value.name.clone().unwrap_or_default(), value.ty.clone());
        map.insert(v, new);
    }
    for (i, n) in g.nodes().iter().enumerate() {
        if moved.contains(&i) {
            continue;
        }
        let new = if let Some(&t) = swaps.get(&i) {
            let tn = &g.nodes()[t];
            let inner = out.add_node(n.op.clone(), &[map[&tn.inputs[0]]], n.name.clone())?;
            out.add_node(tn.op.clone(), &[inner], tn.name.clone())?
        } else if let Op::Const(c) = n.op {
            let c = out.add_const(g.constant(c).clone());
            out.add_node(Op::Const(c), &[], n.name.clone())?
        } else {
            let inputs: Vec<ValueId> = n.inputs.iter().map(|v| map[v]).collect();
            out.add_node(n.op.clone(), &inputs, n.name.clone())?
        };
        if let Some(name) = &g.value(n.output).name {
            out.set_name(new, name.clone());
        }
        map.insert(n.output, new);
    }
    out.set_outputs(g.outputs().iter().map(|v| map[v]).collect())?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transpose_sinks_through_a_unary_chain_and_keeps_the_output_name() {
        let g = kiln_ir::parse_graph(
            r#"graph {
  input %0 "x": f32[1,2,3,4]
  %1: f32[1,3,4,2] = transpose(%0) {"perm":[0,2,3,1]}
  %2: f32[1,3,4,2] = clamp(%1) {"max":6.0,"min":0.0}
  %3: f32[1,3,4,2] = negate(%2)
  output %3
}"#,
        )
        .unwrap();
        let mut g = g;
        g.set_name(g.outputs()[0], "y");
        let after = sink_transposes(&g).unwrap();
        let ops: Vec<&str> = after.nodes().iter().map(|n| n.op.name()).collect();
        assert_eq!(ops, ["clamp", "negate", "transpose"], "{after}");
        assert_eq!(after.value(after.outputs()[0]).name.as_deref(), Some("y"));
        let x = kiln_ir::Tensor::new(vec![1, 2, 3, 4], (0..24).map(|i| i as f32 - 9.0).collect())
            .unwrap();
        assert_eq!(
            kiln_reference::run(&g, std::slice::from_ref(&x)).unwrap(),
            kiln_reference::run(&after, &[x]).unwrap()
        );
    }

    #[test]
    fn a_transpose_with_two_readers_stays() {
        let g = kiln_ir::parse_graph(
            r#"graph {
  input %0 "x": f32[2,3]
  %1: f32[3,2] = transpose(%0) {"perm":[1,0]}
  %2: f32[3,2] = negate(%1)
  %3: f32[3,2] = add(%1, %2)
  output %3
}"#,
        )
        .unwrap();
        assert_eq!(sink_transposes(&g).unwrap().to_string(), g.to_string());
    }
}
