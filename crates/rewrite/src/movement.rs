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
use std::collections::HashMap;

fn is_unary_elementwise(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Clamp { .. } | Op::Cast { .. })
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

/// A value of the input graph that equals the movement node `node` applied to `inner` (a value
/// of the output graph), not emitted yet: it moves down while its readers are elementwise.
#[derive(Clone, Copy)]
struct Pending {
    node: usize,
    inner: ValueId,
}

/// An operand of an elementwise op computed below a pending movement.
enum Operand {
    Pending(Pending),
    Const(Tensor),
}

/// One pass over `g` in order, emitting into a new graph.
struct Sinker<'g> {
    g: &'g Graph,
    readers: HashMap<ValueId, usize>,
    /// The node defining each value.
    producer: HashMap<ValueId, usize>,
    out: Graph,
    /// Values of `g` emitted, by their value in `out`.
    map: HashMap<ValueId, ValueId>,
    pending: HashMap<ValueId, Pending>,
}

impl Sinker<'_> {
    /// The value of `g`'s `v` in the output graph, emitting its pending movement first.
    fn value(&mut self, v: ValueId) -> Result<ValueId, IrError> {
        if let Some(p) = self.pending.remove(&v) {
            let m = &self.g.nodes()[p.node];
            let new = self
                .out
                .add_node(m.op.clone(), &[p.inner], m.name.clone())?;
            if let Some(name) = &self.g.value(v).name {
                self.out.set_name(new, name.clone());
            }
            self.map.insert(v, new);
        }
        Ok(self.map[&v])
    }

    /// The operands of elementwise node `n` computed below one pending movement, if it may be.
    fn below(&self, n: &kiln_ir::Node) -> Option<Vec<Operand>> {
        let g = self.g;
        let pending = |v: &ValueId| self.pending.get(v).copied();
        if is_unary_elementwise(&n.op) && n.inputs.len() == 1 {
            return Some(vec![Operand::Pending(pending(&n.inputs[0])?)]);
        }
        if !matches!(n.op, Op::Binary(_)) || n.inputs.len() != 2 {
            return None;
        }
        // Reshapes only, of operands the op does not broadcast.
        let out_shape = &g.ty(n.output).shape;
        let reshape = |v: &ValueId| {
            pending(v).filter(|p| {
                matches!(g.nodes()[p.node].op, Op::Reshape { .. }) && &g.ty(*v).shape == out_shape
            })
        };
        let (a, b) = (reshape(&n.inputs[0]), reshape(&n.inputs[1]));
        match (a, b) {
            (Some(a), Some(b)) => (self.out.ty(a.inner).shape == self.out.ty(b.inner).shape)
                .then(|| vec![Operand::Pending(a), Operand::Pending(b)]),
            (Some(p), None) | (None, Some(p)) => {
                let other = n.inputs[usize::from(a.is_some())];
                let Op::Const(c) = g.nodes()[*self.producer.get(&other)?].op else {
                    return None;
                };
                let from = &self.out.ty(p.inner).shape;
                let c = rebroadcast(g.constant(c), from, out_shape)?;
                let mut v = vec![Operand::Pending(p), Operand::Const(c)];
                if b.is_some() {
                    v.reverse();
                }
                Some(v)
            }
            (None, None) => None,
        }
    }

    fn node(&mut self, i: usize) -> Result<(), IrError> {
        let g = self.g;
        let n = &g.nodes()[i];
        let single = self.readers.get(&n.output) == Some(&1);
        if matches!(n.op, Op::Transpose { .. } | Op::Reshape { .. }) && single {
            let inner = self.value(n.inputs[0])?;
            self.pending.insert(n.output, Pending { node: i, inner });
            return Ok(());
        }
        if let Some(operands) = self.below(n) {
            let mut inputs = vec![];
            let mut node = 0;
            for o in operands {
                inputs.push(match o {
                    Operand::Pending(p) => {
                        node = p.node;
                        p.inner
                    }
                    Operand::Const(c) => {
                        let c = self.out.add_const(c);
                        self.out
                            .add_node(Op::Const(c), &[], format!("{}_operand", n.name))?
                    }
                });
            }
            for v in &n.inputs {
                self.pending.remove(v);
            }
            let inner = self.out.add_node(n.op.clone(), &inputs, n.name.clone())?;
            // Moving on needs a single reader; otherwise the movement is emitted here.
            self.pending.insert(n.output, Pending { node, inner });
            if !single {
                self.value(n.output)?;
            }
            return Ok(());
        }
        let new = if let Op::Const(c) = n.op {
            let c = self.out.add_shared_const(g.shared_constant(c).clone());
            self.out.add_node(Op::Const(c), &[], n.name.clone())?
        } else {
            let mut inputs = vec![];
            for &v in &n.inputs {
                inputs.push(self.value(v)?);
            }
            self.out.add_node(n.op.clone(), &inputs, n.name.clone())?
        };
        if let Some(name) = &g.value(n.output).name {
            self.out.set_name(new, name.clone());
        }
        self.map.insert(n.output, new);
        Ok(())
    }
}

/// `graph` with every single-reader transpose or reshape moved below the elementwise ops that
/// read it (see the module doc), chains whole, in one pass.
pub fn sink_movement(graph: &Graph) -> Result<Graph, IrError> {
    let mut readers: HashMap<ValueId, usize> = HashMap::new();
    for n in graph.nodes() {
        for &v in &n.inputs {
            *readers.entry(v).or_default() += 1;
        }
    }
    for &v in graph.outputs() {
        *readers.entry(v).or_default() += 1;
    }
    let mut s = Sinker {
        g: graph,
        readers,
        producer: graph
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, n)| (n.output, i))
            .collect(),
        out: Graph::new(),
        map: HashMap::new(),
        pending: HashMap::new(),
    };
    for &v in graph.inputs() {
        let value = graph.value(v);
        let new = s
            .out
            .add_input(value.name.clone().unwrap_or_default(), value.ty.clone());
        s.map.insert(v, new);
    }
    for i in 0..graph.nodes().len() {
        s.node(i)?;
    }
    let mut outputs = vec![];
    for &v in graph.outputs() {
        outputs.push(s.value(v)?);
    }
    s.out.set_outputs(outputs)?;
    s.out.verify()?;
    Ok(s.out)
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
    fn a_moved_value_with_two_readers_is_emitted_once_for_both() {
        // BatchNormalization's parameters: `s · rsqrt(var + eps)` computed below its reshapes
        // and read twice.
        let g = kiln_ir::parse_graph(
            r#"graph {
  const @0: f32[1,1,1,1] = [0.00001]
  input %0 "x": f32[2,3,4,5]
  input %1 "s": f32[3]
  input %2 "mean": f32[3]
  input %3 "var": f32[3]
  %4: f32[1,3,1,1] = reshape(%1) {"shape":[1,3,1,1]}
  %5: f32[1,3,1,1] = reshape(%2) {"shape":[1,3,1,1]}
  %6: f32[1,3,1,1] = reshape(%3) {"shape":[1,3,1,1]}
  %7: f32[1,1,1,1] = const(@0)
  %8: f32[1,3,1,1] = add(%6, %7)
  %9: f32[1,3,1,1] = rsqrt(%8)
  %10: f32[1,3,1,1] = mul(%4, %9)
  %11: f32[1,3,1,1] = mul(%5, %10)
  %12: f32[2,3,4,5] = mul(%0, %10)
  %13: f32[2,3,4,5] = sub(%12, %11)
  output %13
}"#,
        )
        .unwrap();
        let after = sink_movement(&g).unwrap();
        let t = |shape: Vec<usize>, k: f32| {
            let n: usize = shape.iter().product();
            kiln_ir::Tensor::new(shape, (0..n).map(|i| i as f32 * k + 0.5).collect()).unwrap()
        };
        let inputs = [
            t(vec![2, 3, 4, 5], 0.1),
            t(vec![3], 1.5),
            t(vec![3], -0.3),
            t(vec![3], 2.0),
        ];
        assert_eq!(
            kiln_reference::run(&g, &inputs).unwrap(),
            kiln_reference::run(&after, &inputs).unwrap()
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
