//! The e-class analysis: every class knows its tensor type and, when all of its value is known
//! at compile time, that value (so constant subgraphs fold into constants).
//!
//! Invariant: all e-nodes of a class compute the same tensor, so they have the same type; a class
//! whose value is known holds a `(const k)` node of the pool with exactly that value (added by
//! [`GraphAnalysis::modify`]), which the extractor picks since constants cost nothing. Leaf
//! classes (op and index leaves, the root) have no type.

use crate::lang::{index_of, op_of, Node};
use egg::{Analysis, DidMerge, EGraph, Id};
use kiln_ir::{Tensor, TensorType};
use std::sync::Arc;

/// The e-graph of a graph.
pub type GraphEGraph = EGraph<Node, GraphAnalysis>;

/// The analysis state: the graph's input types and the constant pool.
#[derive(Debug, Default)]
pub struct GraphAnalysis {
    /// Types of the graph inputs, by index.
    pub inputs: Vec<TensorType>,
    /// Constants by pool index: the graph's own, then every folded one.
    pub pool: Vec<Arc<Tensor>>,
    /// Largest constant (in elements) the analysis computes at compile time.
    pub fold_limit: usize,
    /// For the class of each value of the original graph (as added), how many graph nodes read
    /// it, plus one when it is a graph output. Classes made by rules have no entry.
    pub readers: Vec<(Id, usize)>,
}

impl GraphAnalysis {
    /// The readers recorded for class `id` (0 when none were).
    pub fn readers_of(egraph: &GraphEGraph, id: Id) -> usize {
        let id = egraph.find(id);
        egraph
            .analysis
            .readers
            .iter()
            .find(|(c, _)| egraph.find(*c) == id)
            .map_or(0, |&(_, n)| n)
    }
}

/// What the analysis knows about a class.
#[derive(Debug, Clone, Default)]
pub struct ClassData {
    /// The tensor type (`None` for leaves and the root).
    pub ty: Option<TensorType>,
    /// The value, when known at compile time.
    pub value: Option<Arc<Tensor>>,
}

/// The type and constant value `node` has in `egraph`.
pub fn node_data(egraph: &GraphEGraph, node: &Node) -> ClassData {
    match node {
        Node::Input([i]) => ClassData {
            ty: index_of(egraph, *i).and_then(|i| egraph.analysis.inputs.get(i as usize).cloned()),
            value: None,
        },
        Node::Const([k]) => {
            let t = index_of(egraph, *k).and_then(|k| egraph.analysis.pool.get(k as usize));
            ClassData {
                ty: t.map(|t| t.ty().clone()),
                value: t.cloned(),
            }
        }
        Node::Apply(children) => {
            let Some((&op_id, operands)) = children.split_first() else {
                return ClassData::default();
            };
            let Some(op) = op_of(egraph, op_id) else {
                return ClassData::default();
            };
            let types: Option<Vec<&TensorType>> = operands
                .iter()
                .map(|&c| egraph[c].data.ty.as_ref())
                .collect();
            let Some(ty) = types.and_then(|t| kiln_ir::infer_type(op, &t).ok()) else {
                return ClassData::default();
            };
            let values: Option<Vec<&Tensor>> = operands
                .iter()
                .map(|&c| egraph[c].data.value.as_deref())
                .collect();
            let value = values
                .filter(|_| ty.num_elements() <= egraph.analysis.fold_limit)
                .and_then(|v| kiln_operators::evaluate(op, &v).ok())
                .filter(|t| t.ty() == &ty)
                .map(Arc::new);
            ClassData {
                ty: Some(ty),
                value,
            }
        }
        Node::Kernel([x]) => egraph[*x].data.clone(),
        Node::Outputs(_) | Node::Index(_) | Node::Op(_) => ClassData::default(),
    }
}

impl GraphAnalysis {
    /// Adds `value` to the pool and returns the class of its `(const k)` node.
    pub fn add_constant(egraph: &mut GraphEGraph, value: Arc<Tensor>) -> Id {
        egraph.analysis.pool.push(value);
        let k = egraph.add(Node::Index(crate::lang::Index(
            egraph.analysis.pool.len() as u32 - 1,
        )));
        egraph.add(Node::Const([k]))
    }
}

impl Analysis<Node> for GraphAnalysis {
    type Data = ClassData;

    fn make(egraph: &mut GraphEGraph, enode: &Node, _id: Id) -> ClassData {
        node_data(egraph, enode)
    }

    fn merge(&mut self, a: &mut ClassData, b: ClassData) -> DidMerge {
        let mut changed_a = false;
        let mut changed_b = false;
        match (&a.ty, b.ty) {
            (None, Some(t)) => {
                a.ty = Some(t);
                changed_a = true;
            }
            (Some(_), None) => changed_b = true,
            _ => {}
        }
        match (&a.value, b.value) {
            (None, Some(v)) => {
                a.value = Some(v);
                changed_a = true;
            }
            (Some(_), None) => changed_b = true,
            _ => {}
        }
        DidMerge(changed_a, changed_b)
    }

    fn modify(egraph: &mut GraphEGraph, id: Id) {
        let Some(value) = egraph[id].data.value.clone() else {
            return;
        };
        if egraph[id].nodes.iter().any(|n| matches!(n, Node::Const(_))) {
            return;
        }
        let c = GraphAnalysis::add_constant(egraph, value);
        egraph.union(id, c);
    }
}
