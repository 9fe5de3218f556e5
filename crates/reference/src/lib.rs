//! Kiln's reference interpreter: evaluates any verified graph node by node with the operator
//! library's reference semantics. Simple and obviously right; the oracle for every later stage.
//!
//! Invariant: [`run`] either returns one tensor per graph output, of exactly the output's recorded
//! type, or an error naming the node that failed. Values are dropped after their last use.

use kiln_ir::{Graph, Op, Tensor, ValueId};
use kiln_operators::OpError;

/// Why a graph could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("the graph has {expected} inputs but {got} were given")]
    InputCount { expected: usize, got: usize },
    #[error("input {index} (`{name}`) must be {expected}, got {got}")]
    InputType {
        index: usize,
        name: String,
        expected: String,
        got: String,
    },
    #[error("node `{node}` ({op}): {source}")]
    Op {
        node: String,
        op: &'static str,
        source: OpError,
    },
    #[error("node `{node}` ({op}) produced {got} instead of {expected}")]
    WrongResult {
        node: String,
        op: &'static str,
        expected: String,
        got: String,
    },
}

/// Runs `graph` on `inputs` (one per graph input, in order) and returns its outputs.
pub fn run(graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, ReferenceError> {
    if inputs.len() != graph.inputs().len() {
        return Err(ReferenceError::InputCount {
            expected: graph.inputs().len(),
            got: inputs.len(),
        });
    }
    for (index, (&v, t)) in graph.inputs().iter().zip(inputs).enumerate() {
        if t.ty() != graph.ty(v) {
            return Err(ReferenceError::InputType {
                index,
                name: graph.value(v).name.clone().unwrap_or_default(),
                expected: graph.ty(v).to_string(),
                got: t.ty().to_string(),
            });
        }
    }
    let last_use = last_uses(graph);
    let mut slots: Vec<Option<Tensor>> = vec![None; graph.values().len()];
    for (&v, t) in graph.inputs().iter().zip(inputs) {
        slots[v.index()] = Some(t.clone());
    }
    for (i, node) in graph.nodes().iter().enumerate() {
        let result = match node.op {
            Op::Const(c) => graph.constant(c).clone(),
            ref op => {
                let args: Vec<&Tensor> = node
                    .inputs
                    .iter()
                    .map(|v| slots[v.index()].as_ref().expect("verified graph"))
                    .collect();
                kiln_operators::evaluate(op, &args).map_err(|source| ReferenceError::Op {
                    node: node.name.clone(),
                    op: op.name(),
                    source,
                })?
            }
        };
        let expected = graph.ty(node.output);
        if result.ty() != expected {
            return Err(ReferenceError::WrongResult {
                node: node.name.clone(),
                op: node.op.name(),
                expected: expected.to_string(),
                got: result.ty().to_string(),
            });
        }
        slots[node.output.index()] = Some(result);
        for v in &node.inputs {
            if last_use[v.index()] == Some(i) {
                slots[v.index()] = None;
            }
        }
    }
    Ok(graph
        .outputs()
        .iter()
        .map(|&v| output_value(graph, &slots, v))
        .collect())
}

fn output_value(graph: &Graph, slots: &[Option<Tensor>], v: ValueId) -> Tensor {
    // Outputs are never freed (see `last_uses`), so the slot is always filled.
    match &slots[v.index()] {
        Some(t) => t.clone(),
        None => Tensor::zeros(graph.ty(v).clone()),
    }
}

/// For each value, the index of the last node reading it; `None` for graph outputs (kept alive)
/// and for values never read.
fn last_uses(graph: &Graph) -> Vec<Option<usize>> {
    let mut last = vec![None; graph.values().len()];
    for (i, node) in graph.nodes().iter().enumerate() {
        for v in &node.inputs {
            last[v.index()] = Some(i);
        }
    }
    for &v in graph.outputs() {
        last[v.index()] = None;
    }
    last
}
