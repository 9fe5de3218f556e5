//! 8-bit activations stored with the signedness the target's dot products take.
//!
//! x86's VNNI `vpdpbusd` multiplies *unsigned* bytes by signed ones, aarch64's `sdot` signed by
//! signed. A micro-kernel given the other kind flips every activation quadruple it broadcasts
//! (an xor with 0x80 and the zero point moved by 128): one more vector instruction per dot
//! product, a third to a half of a narrow convolution's inner loop. Stored flipped once by its
//! producer instead (three integer ops fused into the producer's epilogue, per element rather
//! than per multiply), the activation costs nothing to read.
//!
//! This pass rewrites an 8-bit convolution or matmul `op(x, ..)` with `x` of the other
//! signedness into `op(cast(cast_i32(x) ± 128), ..)` with its activation zero point moved by
//! the same 128, when `x` is computed by a node (not a graph input or constant) and read by
//! nothing else, so that the conversion fuses into the kernel that computes `x`.
//!
//! Invariant: exact — `x ± 128` maps `i8` onto `u8` (and back) one to one, and `(x ± 128) -
//! (zp ± 128) = x - zp` for every product, padding included (a padded tap holds the zero
//! point); graph inputs and outputs keep their names, types and order, and the result is
//! verified.

use crate::rebuild::rebuild;
use kiln_ir::op::BinaryOp;
use kiln_ir::{DType, Graph, IrError, Op, Tensor, ValueDef, ValueId};
use std::collections::HashMap;

/// How far the zero point and every value move from the other type into `preferred`.
fn offset(preferred: DType) -> Option<i32> {
    match preferred {
        DType::U8 => Some(128),
        DType::I8 => Some(-128),
        _ => None,
    }
}

/// The activation zero point of an 8-bit contraction whose activations are stored in `other`.
fn activation_zp(op: &Op, x: DType, other: DType) -> Option<i32> {
    if x != other {
        return None;
    }
    match op {
        Op::Conv2d(a) => Some(a.input_zp),
        Op::MatMul(m) => Some(m.a_zp),
        _ => None,
    }
}

/// `op` with its activation zero point moved by `by`.
fn moved_zp(op: &Op, by: i32) -> Op {
    let mut op = op.clone();
    match &mut op {
        Op::Conv2d(a) => a.input_zp += by,
        Op::MatMul(m) => m.a_zp += by,
        _ => {}
    }
    op
}

/// The nodes whose activations to convert: 8-bit contractions reading the other type from a
/// value some node computes and nothing else reads.
fn candidates(g: &Graph, other: DType) -> Vec<usize> {
    let mut readers: HashMap<ValueId, usize> = HashMap::new();
    for n in g.nodes() {
        for &v in &n.inputs {
            *readers.entry(v).or_default() += 1;
        }
    }
    for &v in g.outputs() {
        *readers.entry(v).or_default() += 1;
    }
    g.nodes()
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            let Some(&x) = n.inputs.first() else {
                return false;
            };
            let computed = match g.value(x).def {
                ValueDef::Node(p) => !matches!(g.node(p).op, Op::Const(_)),
                _ => false,
            };
            activation_zp(&n.op, g.ty(x).dtype, other).is_some()
                && computed
                && readers.get(&x) == Some(&1)
        })
        .map(|(i, _)| i)
        .collect()
}

/// `graph` with the contractions described in the module doc reading `preferred` (`U8` or
/// `I8`) activations, or `None` when it has none to convert.
pub fn prefer_activation_type(graph: &Graph, preferred: DType) -> Result<Option<Graph>, IrError> {
    let Some(by) = offset(preferred) else {
        return Ok(None);
    };
    let other = if preferred == DType::U8 {
        DType::I8
    } else {
        DType::U8
    };
    let converted = candidates(graph, other);
    if converted.is_empty() {
        return Ok(None);
    }
    let out = rebuild(graph, |out, i, n, mut inputs| {
        if !converted.contains(&i) {
            return out.add_node(n.op.clone(), &inputs, n.name.clone());
        }
        let x = inputs[0];
        let rank = out.ty(x).shape.len();
        let wide = out.add_node(Op::Cast { to: DType::I32 }, &[x], n.name.clone())?;
        let k = out.add_const_value(
            Tensor::new(vec![1; rank], vec![by])?,
            format!("{}.activation_offset", n.name),
        );
        let moved = out.add_node(Op::Binary(BinaryOp::Add), &[wide, k], n.name.clone())?;
        inputs[0] = out.add_node(Op::Cast { to: preferred }, &[moved], n.name.clone())?;
        out.add_node(moved_zp(&n.op, by), &inputs, n.name.clone())
    })?;
    Ok(Some(out))
}
