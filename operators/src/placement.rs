//! Output placement: the kernel producing a padded window op's input writes straight into the
//! padded tensor, so the window op reads it without a padded copy or bounds tests.
//!
//! [`place_padding`] rewrites a grouped graph: for every channels-last convolution (or
//! depthwise convolution) padded with its input zero point (0 for floats; 8-bit inputs where
//! the convolution needs no channel padding) and float max pool (padded with -inf) whose input
//! is the output of another group
//! and read by nothing else, it inserts a constant `pad` after the producer (as the last node
//! of the producer's group) and gives the window op padding 0. A group ending in such a `pad`
//! is lowered without it and then *placed* ([`place_output`]): its output buffer is the padded
//! tensor, its stores move by the padding, and it writes the border value itself.
//!
//! Invariant: the rewritten graph computes what the original computes (a convolution's padding
//! is its input zero point; a max pool skips its padded taps, and -inf, max's identity, changes no window),
//! its groups satisfy the invariant of [`crate::fusion`] (the pad reads its group's
//! previous value, its output leaves the group), and a placed function writes every element of
//! its output buffer: the interior through the original stores, the border with the value.

use crate::fusion::Group;
use kiln_ir::op::{ConvAttrs, DataLayout, OrderedF64, PadMode, PoolAttrs};
use kiln_ir::{DType, Graph, NodeId, Op, ValueId};
use kiln_tir::{Expr, ForKind, PrimFunc, Stmt};
use std::collections::HashMap;

/// The constant padding a group's output is placed in: `[before, after]` per axis, and the
/// border's value.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputPlacement {
    pub pads: Vec<[usize; 2]>,
    pub value: f64,
}

/// The placement a group ends with: its last node is a constant `pad` of the value its
/// previous node computes.
pub fn group_placement(graph: &Graph, g: &Group) -> Option<OutputPlacement> {
    let (&last, rest) = g.nodes.split_last()?;
    let &prev = rest.last()?;
    let node = graph.node(last);
    match &node.op {
        Op::Pad {
            pads,
            mode: PadMode::Constant,
            value,
        } if node.inputs == [graph.node(prev).output] => Some(OutputPlacement {
            pads: pads.clone(),
            value: value.0,
        }),
        _ => None,
    }
}

/// The padding `[top, bottom, left, right]` of a channels-last window op that reads its input
/// through a border, and the border's value (a convolution's input zero point: 0 for floats).
fn padded_window(op: &Op) -> Option<([usize; 4], f64)> {
    match op {
        Op::Conv2d(a) | Op::DepthwiseConv2d(a)
            if a.layout == DataLayout::Nhwc && a.pad != [0; 4] =>
        {
            Some((a.pad, f64::from(a.input_zp)))
        }
        Op::MaxPool2d(p) if p.layout == DataLayout::Nhwc && p.pad != [0; 4] => {
            Some((p.pad, f64::NEG_INFINITY))
        }
        _ => None,
    }
}

/// Whether window op `op`'s input `x` may come padded from its producer: f32, or 8-bit for a
/// depthwise convolution or one whose input channels come in quadruples (an integer
/// convolution's own padded copy would also pad its channels to 4 for its dot products).
fn placeable(graph: &Graph, op: &Op, x: ValueId) -> bool {
    let ty = graph.ty(x);
    match (ty.dtype, op) {
        (DType::F32, _) => true,
        (DType::I8 | DType::U8, Op::DepthwiseConv2d(_)) => true,
        (DType::I8 | DType::U8, Op::Conv2d(_)) => ty.shape.last().is_some_and(|c| c % 4 == 0),
        _ => false,
    }
}

/// `graph` and `groups` with the padding of qualifying convolutions moved into their input's
/// producer (see the module doc); `None` when no convolution qualifies.
pub fn place_padding(graph: &Graph, groups: &[Group]) -> Option<(Graph, Vec<Group>)> {
    let group_of: HashMap<NodeId, usize> = groups
        .iter()
        .enumerate()
        .flat_map(|(i, g)| g.nodes.iter().map(move |&n| (n, i)))
        .collect();
    let readers = |v: ValueId| {
        graph
            .nodes()
            .iter()
            .filter(|n| n.inputs.contains(&v))
            .count()
    };
    // Producer node -> the padded window op reading its value.
    let mut moves: HashMap<NodeId, NodeId> = HashMap::new();
    for (i, node) in graph.nodes().iter().enumerate() {
        if padded_window(&node.op).is_none() {
            continue;
        }
        let x = node.inputs[0];
        if !placeable(graph, &node.op, x) || graph.outputs().contains(&x) || readers(x) != 1 {
            continue;
        }
        let kiln_ir::ValueDef::Node(p) = graph.value(x).def else {
            continue;
        };
        let (Some(&gp), Some(&gc)) = (group_of.get(&p), group_of.get(&NodeId(i as u32))) else {
            continue;
        };
        let producer = &groups[gp];
        let ends_there = producer.nodes.last() == Some(&p);
        if gp == gc || !ends_there || producer.alias || matches!(graph.node(p).op, Op::Const(_)) {
            continue;
        }
        moves.insert(p, NodeId(i as u32));
    }
    if moves.is_empty() {
        return None;
    }
    // Rebuild: the same nodes in order, a pad after each producer, the convolutions unpadded.
    let mut out = Graph::new();
    let mut value: HashMap<ValueId, ValueId> = HashMap::new();
    let mut node_of: HashMap<NodeId, NodeId> = HashMap::new();
    let mut pad_after: HashMap<NodeId, NodeId> = HashMap::new();
    for &v in graph.inputs() {
        let nv = out.add_input(
            graph.value(v).name.clone().unwrap_or_default(),
            graph.ty(v).clone(),
        );
        value.insert(v, nv);
    }
    let consts: Vec<_> = graph.consts().to_vec();
    for c in consts {
        out.add_shared_const(c);
    }
    let padded_input: HashMap<NodeId, ValueId> = moves
        .iter()
        .map(|(&p, &c)| (c, graph.node(p).output))
        .collect();
    for (i, node) in graph.nodes().iter().enumerate() {
        let id = NodeId(i as u32);
        let inputs: Vec<ValueId> = node.inputs.iter().map(|v| value[v]).collect();
        let op = match (&node.op, padded_input.contains_key(&id)) {
            (Op::Conv2d(a), true) => Op::Conv2d(ConvAttrs {
                pad: [0; 4],
                ..a.clone()
            }),
            (Op::DepthwiseConv2d(a), true) => Op::DepthwiseConv2d(ConvAttrs {
                pad: [0; 4],
                ..a.clone()
            }),
            (Op::MaxPool2d(p), true) => Op::MaxPool2d(PoolAttrs {
                pad: [0; 4],
                ..p.clone()
            }),
            (op, _) => op.clone(),
        };
        let nv = out.add_node(op, &inputs, node.name.clone()).ok()?;
        if let Some(name) = &graph.value(node.output).name {
            out.set_name(nv, name.clone());
        }
        node_of.insert(id, NodeId(out.nodes().len() as u32 - 1));
        value.insert(node.output, nv);
        if let Some(&c) = moves.get(&id) {
            let (pad, border) = padded_window(&graph.node(c).op)?;
            let pads = vec![[0, 0], [pad[0], pad[1]], [pad[2], pad[3]], [0, 0]];
            let padded = out
                .add_node(
                    Op::Pad {
                        pads,
                        mode: PadMode::Constant,
                        value: OrderedF64(border),
                    },
                    &[nv],
                    format!("{}.pad", node.name),
                )
                .ok()?;
            pad_after.insert(id, NodeId(out.nodes().len() as u32 - 1));
            value.insert(node.output, padded);
        }
    }
    let outputs: Vec<ValueId> = graph.outputs().iter().map(|v| value[v]).collect();
    out.set_outputs(outputs).ok()?;
    out.verify().ok()?;
    let groups = groups
        .iter()
        .map(|g| {
            let mut nodes: Vec<NodeId> = g.nodes.iter().map(|n| node_of[n]).collect();
            if let Some(&p) = g.nodes.last().and_then(|l| pad_after.get(l)) {
                nodes.push(p);
            }
            Group {
                nodes,
                anchor: g.anchor.map(|a| node_of[&a]),
                class: g.class,
                alias: g.alias,
            }
        })
        .collect();
    Some((out, groups))
}

/// Places `f`'s output (its last param) in the padding `pads`: the buffer grows by the
/// padding, every access to it moves by the padding before, and nests writing the border value
/// come first.
pub fn place_output(f: &mut PrimFunc, placement: &OutputPlacement) {
    let Some(&out) = f.params.last() else {
        return;
    };
    let pads = &placement.pads;
    let old = f.buffers[out.index()].shape.clone();
    if pads.len() != old.len() {
        return;
    }
    let new: Vec<usize> = old
        .iter()
        .zip(pads)
        .map(|(&d, p)| d + p[0] + p[1])
        .collect();
    f.buffers[out.index()].shape = new.clone();
    let shift = |indices: &mut Vec<Expr>| {
        for (i, p) in indices.iter_mut().zip(pads) {
            if p[0] > 0 {
                *i = i.clone() + Expr::int(p[0] as i64);
            }
        }
    };
    shift_accesses(&mut f.body, out, &shift);
    // The border: for each padded axis, the slabs before and after the interior (corners are
    // written twice, with the same value).
    let dtype = f.buffers[out.index()].dtype;
    let border = crate::compute::expr::constant(placement.value, dtype);
    let mut fills = vec![];
    for (axis, p) in pads.iter().enumerate() {
        for (start, len) in [(0, p[0]), (p[0] + old[axis], p[1])] {
            if len == 0 {
                continue;
            }
            let vars: Vec<_> = new
                .iter()
                .enumerate()
                .map(|(d, _)| f.new_var(format!("pad{axis}_{d}")))
                .collect();
            let index: Vec<Expr> = vars
                .iter()
                .enumerate()
                .map(|(d, &v)| {
                    if d == axis && start > 0 {
                        Expr::Var(v) + Expr::int(start as i64)
                    } else {
                        Expr::Var(v)
                    }
                })
                .collect();
            // The innermost axis (channels, when it is not the padded one) in vectors where
            // it divides.
            let last = new.len() - 1;
            let lanes = [16, 8, 4]
                .into_iter()
                .find(|&w| last != axis && new[last].is_multiple_of(w))
                .unwrap_or(1);
            let mut index = index;
            let mut vector = None;
            if lanes > 1 {
                let lane = f.new_var(format!("pad{axis}_lane"));
                index[last] = index[last].clone() * Expr::int(lanes as i64) + Expr::Var(lane);
                vector = Some(lane);
            }
            let mut s = Stmt::store(out, index, border.clone());
            if let Some(lane) = vector {
                s = Stmt::for_(lane, lanes, ForKind::Vectorized, s);
            }
            for (d, &v) in vars.iter().enumerate().rev() {
                let mut extent = if d == axis { len } else { new[d] };
                if d == last {
                    extent /= lanes;
                }
                s = Stmt::for_(v, extent, ForKind::Serial, s);
            }
            fills.push(s);
        }
    }
    let body = std::mem::replace(&mut f.body, Stmt::Seq(vec![]));
    fills.push(body);
    f.body = Stmt::seq(fills);
}

/// Applies `shift` to the indices of every load and store of `buf` in `s`.
fn shift_accesses(s: &mut Stmt, buf: kiln_tir::BufferId, shift: &dyn Fn(&mut Vec<Expr>)) {
    fn expr(e: &Expr, buf: kiln_tir::BufferId, shift: &dyn Fn(&mut Vec<Expr>)) -> Expr {
        match e {
            Expr::Load { buf: b, indices } => {
                let mut idx: Vec<Expr> = indices.iter().map(|i| expr(i, buf, shift)).collect();
                if *b == buf {
                    shift(&mut idx);
                }
                Expr::Load {
                    buf: *b,
                    indices: idx,
                }
            }
            _ => {
                let r: Result<Expr, std::convert::Infallible> =
                    e.try_map_children(&mut |c| Ok(expr(c, buf, shift)));
                match r {
                    Ok(x) => x,
                    Err(never) => match never {},
                }
            }
        }
    }
    match s {
        Stmt::For { body, .. } | Stmt::Tensorized { body, .. } => shift_accesses(body, buf, shift),
        Stmt::Seq(v) => v.iter_mut().for_each(|s| shift_accesses(s, buf, shift)),
        Stmt::Store {
            buf: b,
            indices,
            value,
        } => {
            *value = expr(value, buf, shift);
            let mut idx: Vec<Expr> = indices.iter().map(|i| expr(i, buf, shift)).collect();
            if *b == buf {
                shift(&mut idx);
            }
            *indices = idx;
        }
        Stmt::IfThenElse {
            cond,
            then,
            otherwise,
        } => {
            *cond = expr(cond, buf, shift);
            shift_accesses(then, buf, shift);
            if let Some(o) = otherwise {
                shift_accesses(o, buf, shift);
            }
        }
    }
}
