//! A graph copied node by node with some nodes replaced: the frame of the passes that run on
//! the extracted graph ([`crate::padding`], [`crate::signedness`]).
//!
//! Invariant: the copy has the original's inputs (names, types, order), constants and value
//! names; each non-constant node is whatever the caller builds for it from its operands' new
//! values; the outputs are the new values of the original outputs, and the copy is verified.

use kiln_ir::{Graph, IrError, Node, Op, ValueId};
use std::collections::HashMap;

/// A copy of `graph` in which `node(out, i, n, operands)` adds the replacement of its `i`-th
/// node `n` (not a constant) to `out`, given the new values of `n`'s operands, and returns the
/// value that replaces `n`'s result.
pub fn rebuild(
    graph: &Graph,
    mut node: impl FnMut(&mut Graph, usize, &Node, Vec<ValueId>) -> Result<ValueId, IrError>,
) -> Result<Graph, IrError> {
    let mut out = Graph::new();
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for &v in graph.inputs() {
        let value = graph.value(v);
        let new = out.add_input(value.name.clone().unwrap_or_default(), value.ty.clone());
        map.insert(v, new);
    }
    for (i, n) in graph.nodes().iter().enumerate() {
        let new = if let Op::Const(c) = n.op {
            let c = out.add_shared_const(graph.shared_constant(c).clone());
            out.add_node(Op::Const(c), &[], n.name.clone())?
        } else {
            let inputs: Vec<ValueId> = n.inputs.iter().map(|v| map[v]).collect();
            node(&mut out, i, n, inputs)?
        };
        if let Some(name) = &graph.value(n.output).name {
            out.set_name(new, name.clone());
        }
        map.insert(n.output, new);
    }
    out.set_outputs(graph.outputs().iter().map(|v| map[v]).collect())?;
    out.verify()?;
    Ok(out)
}
