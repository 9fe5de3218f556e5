//! A clean-up after extraction: transposes and reshapes moved below the elementwise ops that
//! read them.
//!
//! `f(transpose(x))` and `transpose(f(x))` are equal for an elementwise `f` (the
//! `transpose-through-unary` rule) and cost the same, so extraction may return either. Only the
//! second lets `f` fuse into the kernel that produces `x` (a convolution's activation), so this
//! pass rewrites the first into the second wherever the transpose has no other reader. Reshapes
//! move the same way, below unary ops and below binary ops whose other operand is a reshape of
//! a tensor of `x`'s shape or a constant that broadcasts the same way before the reshape (a
//! scalar, or a vector along a last axis the reshape keeps): a MATMUL's `[B, M, N]` result
//! reshaped back to a convolution's `[B, H, W, N]` then keeps its requantisation in its
//! epilogue.
//!
//! Invariant: the result computes exactly what the input graph computes (the same ops, reordered
//! by those identities), keeps every graph input and output with its name, and is verified.

use kiln_ir::{Graph, IrError, Op, Tensor, ValueId};
use std::collections::{HashMap, HashSet};

fn is_unary_elementwise(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Clamp { .. } | Op::Cast { .. })
}

/// `graph` with every single-reader transpose or reshape swapped below the elementwise op
/// reading it (see the module doc), repeated until none is left (a chain sinks whole).
pub fn sink_movement(graph: &Graph) -> Result<Graph, IrError> {
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

/// An operand of a swapped elementwise op.
enum Operand {
    /// The input of the movement node at this index.
    Moved(usize),
    /// A constant reshaped to the pre-reshape rank.
    Const(Tensor),
}

/// How one elementwise node is rebuilt: its operands, then the movement op `movement` (a node
/// index) applied to its result.
struct Swap {
    operands: Vec<Operand>,
    movement: usize,
}

/// The constant `c`, read by a binary op beside `reshape(x)`, reshaped to broadcast over `x`
/// as it broadcasts over the reshape: every axis 1, or only the last axis not 1 and the reshape
/// keeping the last axis.
fn rebroadcast(c: &Tensor, from: &[usize], to: &[usize]) -> Option<Tensor> {
    let shape = c.shape();
    let ones = |s: &[usize]| s.iter().all(|&d| d == 1);
    let (last, rest) = shape.split_last()?;
    let new_shape = if ones(shape) {
        vec![1; from.len()]
    } else if ones(rest) && from.last() == Some(last) && to.last() == Some(last) {
        let mut v = vec![1; from.len()];
        *v.last_mut()? = *last;
        v
    } else {
        return None;
    };
    c.clone().reshaped(new_shape).ok()
}

/// The swap of elementwise node `n` of `g` with the movement op(s) producing its operands, if
/// there is one.
fn plan(
    g: &Graph,
    n: &kiln_ir::Node,
    producer: &HashMap<ValueId, usize>,
    readers: &HashMap<ValueId, usize>,
) -> Option<Swap> {
    let movement_of = |v: ValueId| {
        let &t = producer.get(&v)?;
        let op = &g.nodes()[t].op;
        (matches!(op, Op::Transpose { .. } | Op::Reshape { .. }) && readers[&v] == 1).then_some(t)
    };
    if is_unary_elementwise(&n.op) && n.inputs.len() == 1 {
        let t = movement_of(n.inputs[0])?;
        return Some(Swap {
            operands: vec![Operand::Moved(t)],
            movement: t,
        });
    }
    if !matches!(n.op, Op::Binary(_)) || n.inputs.len() != 2 {
        return None;
    }
    // A moved operand must not be broadcast by the op: its reshape has the result's shape.
    let out_shape = &g.ty(n.output).shape;
    let moved: Vec<Option<usize>> = n
        .inputs
        .iter()
        .map(|&v| movement_of(v).filter(|_| &g.ty(v).shape == out_shape))
        .collect();
    let reshape_input = |t: usize| {
        let m = &g.nodes()[t];
        matches!(m.op, Op::Reshape { .. }).then(|| g.ty(m.inputs[0]).shape.clone())
    };
    match (moved[0], moved[1]) {
        (Some(a), Some(b)) => {
            let (sa, sb) = (reshape_input(a)?, reshape_input(b)?);
            (sa == sb).then(|| Swap {
                operands: vec![Operand::Moved(a), Operand::Moved(b)],
                movement: a,
            })
        }
        (Some(t), None) | (None, Some(t)) => {
            let from = reshape_input(t)?;
            let other_at = usize::from(moved[0].is_some());
            let other = n.inputs[other_at];
            let &p = producer.get(&other)?;
            let Op::Const(c) = g.nodes()[p].op else {
                return None;
            };
            let c = rebroadcast(g.constant(c), &from, out_shape)?;
            let mut operands = vec![Operand::Moved(t), Operand::Const(c)];
            if other_at == 0 {
                operands.reverse();
            }
            Some(Swap {
                operands,
                movement: t,
            })
        }
        (None, None) => None,
    }
}

/// One round: every qualifying (movement, reader) pair swapped; `None` when there is none.
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
    // Reader node index -> its swap.
    let mut swaps: HashMap<usize, Swap> = HashMap::new();
    for (i, n) in g.nodes().iter().enumerate() {
        if let Some(s) = plan(g, n, &producer, &readers) {
            swaps.insert(i, s);
        }
    }
    if swaps.is_empty() {
        return Ok(None);
    }
    let moved: HashSet<usize> = swaps
        .values()
        .flat_map(|s| &s.operands)
        .filter_map(|o| match o {
            Operand::Moved(t) => Some(*t),
            _ => None,
        })
        .collect();
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
        let new = if let Some(swap) = swaps.get(&i) {
            let mut inputs = vec![];
            for o in &swap.operands {
                inputs.push(match o {
                    Operand::Moved(t) => map[&g.nodes()[*t].inputs[0]],
                    Operand::Const(c) => {
                        let c = out.add_const(c.clone());
                        out.add_node(Op::Const(c), &[], format!("{}_operand", n.name))?
                    }
                });
            }
            let inner = out.add_node(n.op.clone(), &inputs, n.name.clone())?;
            let m = &g.nodes()[swap.movement];
            out.add_node(m.op.clone(), &[inner], m.name.clone())?
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
        let after = sink_movement(&g).unwrap();
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
    fn a_reshape_sinks_below_a_quantisation_and_keeps_its_values() {
        // MATMUL's [1, H·W, C] result reshaped to [1, H, W, C], then scaled by a scalar, offset
        // by a per-channel vector (the last axis, which the reshape keeps) and cast: the reshape
        // ends up last. A vector along another axis stops it.
        let g = kiln_ir::parse_graph(
            r#"graph {
  const @0: f32[1,1,1,1] = [0.5]
  const @1: f32[1,1,1,3] = [1, -2, 3]
  const @2: f32[1,2,1,1] = [7, 9]
  input %0 "x": f32[1,4,3]
  %1: f32[1,2,2,3] = reshape(%0) {"shape":[1,2,2,3]}
  %2: f32[1,1,1,1] = const(@0)
  %3: f32[1,2,2,3] = div(%1, %2)
  %4: f32[1,1,1,3] = const(@1)
  %5: f32[1,2,2,3] = add(%4, %3)
  %6: i8[1,2,2,3] = cast(%5) {"to":"i8"}
  %7: f32[1,2,1,1] = const(@2)
  %8: f32[1,2,2,3] = cast(%6) {"to":"f32"}
  %9: f32[1,2,2,3] = mul(%8, %7)
  output %9
}"#,
        )
        .unwrap();
        let after = sink_movement(&g).unwrap();
        let ops: Vec<&str> = after
            .nodes()
            .iter()
            .map(|n| n.op.name())
            .filter(|&o| o != "const")
            .collect();
        assert_eq!(
            ops,
            ["div", "add", "cast", "cast", "reshape", "mul"],
            "{after}"
        );
        let x = kiln_ir::Tensor::new(
            vec![1, 4, 3],
            (0..12).map(|i| i as f32 * 3.7 - 20.0).collect(),
        )
        .unwrap();
        assert_eq!(
            kiln_reference::run(&g, std::slice::from_ref(&x)).unwrap(),
            kiln_reference::run(&after, &[x]).unwrap()
        );
    }

    #[test]
    fn reshapes_an_op_broadcasts_stay() {
        // An outer sum: two reshapes of one shape that the add broadcasts against each other.
        let g = kiln_ir::parse_graph(
            r#"graph {
  input %0 "x": f32[4]
  input %1 "y": f32[4]
  %2: f32[4,1] = reshape(%0) {"shape":[4,1]}
  %3: f32[1,4] = reshape(%1) {"shape":[1,4]}
  %4: f32[4,4] = add(%2, %3)
  output %4
}"#,
        )
        .unwrap();
        assert_eq!(sink_movement(&g).unwrap().to_string(), g.to_string());
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
        assert_eq!(sink_movement(&g).unwrap().to_string(), g.to_string());
    }
}
