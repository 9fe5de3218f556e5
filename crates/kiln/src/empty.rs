//! Folding of empty tensors before lowering.
//!
//! A tensor with zero elements has exactly one possible value, so every zero-element value (a
//! graph input included) is replaced by a constant, and every node whose operands then are all
//! constants is evaluated with the operator library. Loop nests never see an empty tensor.
//!
//! Invariant: the rewritten graph has the same inputs (names, types, order) and outputs (types,
//! order) as the original and computes the same values.

use kiln_ir::{Graph, IrError, Op, Tensor, ValueDef, ValueId};
use std::collections::HashMap;

/// The graph with empty tensors folded away, or `None` when it has none.
pub(crate) fn fold_empty_tensors(graph: &Graph) -> Result<Option<Graph>, IrError> {
    if graph.values().iter().all(|v| v.ty.num_elements() > 0) {
        return Ok(None);
    }
    let mut out = Graph::new();
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for &v in graph.inputs() {
        let value = graph.value(v);
        let new = out.add_input(value.name.clone().unwrap_or_default(), value.ty.clone());
        // An empty input is still an input; its readers see the (only possible) constant.
        map.insert(v, new);
    }
    let mut constant: HashMap<ValueId, Tensor> = HashMap::new();
    for &v in graph.inputs() {
        if graph.ty(v).num_elements() == 0 {
            constant.insert(v, Tensor::zeros(graph.ty(v).clone()));
        }
    }
    for node in graph.nodes() {
        let ty = graph.ty(node.output);
        let folded = if let Op::Const(c) = node.op {
            Some(graph.constant(c).clone())
        } else if ty.num_elements() == 0 {
            Some(Tensor::zeros(ty.clone()))
        } else if node.inputs.iter().all(|i| constant.contains_key(i))
            && node.inputs.iter().any(|i| graph.ty(*i).num_elements() == 0)
        {
            let args: Vec<&Tensor> = node.inputs.iter().map(|i| &constant[i]).collect();
            Some(
                kiln_operators::evaluate(&node.op, &args)
                    .map_err(|e| IrError::Invalid(format!("folding `{}`: {e}", node.name)))?,
            )
        } else {
            None
        };
        let new = match folded {
            Some(t) => {
                constant.insert(node.output, t.clone());
                out.add_const_value(t, node.name.clone())
            }
            None => {
                let inputs: Vec<ValueId> = node
                    .inputs
                    .iter()
                    .map(|i| materialize(graph, &mut out, &mut map, &constant, *i))
                    .collect();
                out.add_node(node.op.clone(), &inputs, node.name.clone())?
            }
        };
        if let Some(name) = &graph.value(node.output).name {
            out.set_name(new, name.clone());
        }
        map.insert(node.output, new);
    }
    let outputs = graph
        .outputs()
        .iter()
        .map(|&v| materialize(graph, &mut out, &mut map, &constant, v))
        .collect();
    out.set_outputs(outputs)?;
    out.verify()?;
    Ok(Some(out))
}

/// The new value standing for `v`: a constant for an empty graph input, its mapping otherwise.
fn materialize(
    graph: &Graph,
    out: &mut Graph,
    map: &mut HashMap<ValueId, ValueId>,
    constant: &HashMap<ValueId, Tensor>,
    v: ValueId,
) -> ValueId {
    match (graph.value(v).def, constant.get(&v)) {
        (ValueDef::Input(_), Some(t)) => out.add_const_value(t.clone(), "empty"),
        _ => map[&v],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::op::ReduceOp;
    use kiln_ir::{DType, TensorType};

    #[test]
    fn reduction_of_an_empty_input_becomes_its_identity() {
        let mut g = Graph::new();
        let x = g.add_input("x", TensorType::new(DType::F32, vec![2, 0, 4]).unwrap());
        let y = g
            .add_node(
                Op::Reduce {
                    kind: ReduceOp::Max,
                    axis: 1,
                },
                &[x],
                "r",
            )
            .unwrap();
        g.set_outputs(vec![y]).unwrap();
        let folded = fold_empty_tensors(&g)
            .unwrap()
            .expect("has an empty tensor");
        assert_eq!(folded.inputs().len(), 1);
        let t = folded
            .const_of(folded.outputs()[0])
            .expect("folded to a constant");
        assert_eq!(t.shape(), &[2, 1, 4]);
        assert!(t
            .data()
            .to_f64_vec()
            .iter()
            .all(|&v| v == f64::NEG_INFINITY));
    }

    #[test]
    fn graphs_without_empty_tensors_are_left_alone() {
        let mut g = Graph::new();
        let x = g.add_input("x", TensorType::new(DType::F32, vec![2]).unwrap());
        g.set_outputs(vec![x]).unwrap();
        assert!(fold_empty_tensors(&g).unwrap().is_none());
    }
}
