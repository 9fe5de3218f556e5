//! Fusion groups: a partition of a verified graph's nodes into groups that each become one
//! compute DAG (one loop nest).
//!
//! Invariant: [`partition`] puts every non-`Const` node in exactly one group; within a group the
//! nodes are in graph order and every value produced inside the group is read only by later
//! nodes of the group (it is not a graph output; the partition rule makes chains, the e-graph's
//! fusion may also give a value two readers of the group), so only a group's last value
//! escapes; the groups are returned in an order in which every external input of a group is a
//! graph input, a constant, or produced by an earlier group.
//!
//! The rule:
//! * an *anchor* (conv2d, depthwise_conv2d, transpose_conv2d, matmul) starts a group and absorbs
//!   the chain of *epilogue* ops (unary, binary, clamp, cast, rescale, select, identity, table)
//!   that follows it while the current tail value has exactly one consumer and is not a graph
//!   output; the epilogue's other operands (bias, residual, constants) become group inputs;
//! * a pure chain of epilogue ops fuses the same way without an anchor;
//! * everything else (pools, reductions, data movement) stands alone; a reshape (or identity)
//!   of a row-major tensor is a no-op *alias* the runtime may skip.

use crate::schedule::OpClass;
use kiln_ir::{Graph, NodeId, Op, ValueDef, ValueId};
use serde::{Deserialize, Serialize};

/// A group of nodes lowered together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Nodes in graph order; the last one produces the group's output.
    pub nodes: Vec<NodeId>,
    /// The anchor node, if the group has one.
    pub anchor: Option<NodeId>,
    /// Picks the default schedule.
    pub class: OpClass,
    /// The group only copies its input unchanged (reshape/identity): the runtime may alias it.
    pub alias: bool,
}

/// True for the ops an anchor (or an elementwise chain) absorbs.
pub fn is_epilogue(op: &Op) -> bool {
    matches!(
        op,
        Op::Identity
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Clamp { .. }
            | Op::Cast { .. }
            | Op::Rescale(_)
            | Op::Select
            | Op::MulAdd
            | Op::Table
    )
}

/// The class of a lone op.
pub fn class_of(op: &Op) -> OpClass {
    match op {
        Op::Conv2d(_) | Op::TransposeConv2d(_) => OpClass::Conv,
        Op::DepthwiseConv2d(_) => OpClass::Depthwise,
        Op::MatMul(_) => OpClass::MatMul,
        Op::AvgPool2d(_) | Op::MaxPool2d(_) => OpClass::Pool,
        Op::Reduce { .. } | Op::ArgMax { .. } => OpClass::Reduction,
        Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Concat { .. }
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Tile { .. }
        | Op::Reverse { .. }
        | Op::Gather { .. }
        | Op::GatherElements { .. }
        | Op::Resize(_) => OpClass::Movement,
        _ => OpClass::Elementwise,
    }
}

/// Uses of each value: (consuming nodes, whether it is a graph output).
pub fn consumers(graph: &Graph) -> Vec<(Vec<NodeId>, bool)> {
    let mut uses = vec![(Vec::new(), false); graph.values().len()];
    for (i, n) in graph.nodes().iter().enumerate() {
        for &v in &n.inputs {
            if let Some(u) = uses.get_mut(v.index()) {
                if !u.0.contains(&NodeId(i as u32)) {
                    u.0.push(NodeId(i as u32));
                }
            }
        }
    }
    for &o in graph.outputs() {
        if let Some(u) = uses.get_mut(o.index()) {
            u.1 = true;
        }
    }
    uses
}

/// Partitions the graph's nodes into groups (see the module doc).
pub fn partition(graph: &Graph) -> Vec<Group> {
    let uses = consumers(graph);
    let nodes = graph.nodes();
    let mut taken = vec![false; nodes.len()];
    let mut groups = vec![];
    for (i, n) in nodes.iter().enumerate() {
        if taken[i] || matches!(n.op, Op::Const(_)) {
            continue;
        }
        taken[i] = true;
        let class = class_of(&n.op);
        let anchor = matches!(class, OpClass::Conv | OpClass::Depthwise | OpClass::MatMul);
        let mut group = Group {
            nodes: vec![NodeId(i as u32)],
            anchor: anchor.then_some(NodeId(i as u32)),
            class,
            alias: matches!(n.op, Op::Reshape { .. } | Op::Identity),
        };
        if anchor || is_epilogue(&n.op) {
            let mut tail: ValueId = n.output;
            loop {
                let (cons, is_out) = &uses[tail.index()];
                if *is_out || cons.len() != 1 {
                    break;
                }
                let next = cons[0];
                let nn = graph.node(next);
                if taken[next.index()] || !is_epilogue(&nn.op) {
                    break;
                }
                // The chain value must be read by the consumer only through inputs defined
                // before it (always true in a topologically ordered graph).
                taken[next.index()] = true;
                group.nodes.push(next);
                group.alias = false;
                tail = nn.output;
            }
        }
        groups.push(group);
    }
    // Run each group at its last node: all its external inputs are defined before that.
    groups.sort_by_key(|g| g.nodes.last().map_or(0, |n| n.index()));
    groups
}

/// The value a group produces (its last node's output).
pub fn group_output(graph: &Graph, g: &Group) -> Option<ValueId> {
    g.nodes.last().map(|&n| graph.node(n).output)
}

/// External inputs of a group, in first-use order: values not produced inside the group.
pub fn group_inputs(graph: &Graph, g: &Group) -> Vec<ValueId> {
    let inside: Vec<ValueId> = g.nodes.iter().map(|&n| graph.node(n).output).collect();
    let mut out = vec![];
    for &n in &g.nodes {
        for &v in &graph.node(n).inputs {
            if !inside.contains(&v) && !out.contains(&v) {
                out.push(v);
            }
        }
    }
    out
}

/// Whether `v` is defined by a CONST node.
pub fn is_const_value(graph: &Graph, v: ValueId) -> bool {
    matches!(graph.value(v).def, ValueDef::Node(n) if matches!(graph.node(n).op, Op::Const(_)))
}
