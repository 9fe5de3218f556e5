//! MatMul (numpy semantics: 1-D operands, broadcast batch dims) and Gemm.
//!
//! Invariant: the IR MATMUL always sees rank-3 operands `[B,M,K] x [B,K,N]`; batch dims are
//! broadcast (tiled) or, when the right operand has none, folded into M, and the result is
//! reshaped to the numpy result shape.

use crate::builder::{invalid, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{BinaryOp, MatMulAttrs};
use kiln_ir::{broadcast, Op, ValueId};

pub(super) fn matmul(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    matmul_nd(b, cx.input(0)?, cx.input(1)?, MatMulAttrs::default())
}

/// Numpy matmul of `a` and `c` with the given zero points.
pub(super) fn matmul_nd(
    b: &mut Builder,
    a: ValueId,
    c: ValueId,
    attrs: MatMulAttrs,
) -> NResult<ValueId> {
    let (mut sa, mut sc) = (b.shape(a), b.shape(c));
    if sa.is_empty() || sc.is_empty() {
        return invalid("MatMul operands must have rank at least 1");
    }
    let a_vec = sa.len() == 1;
    let c_vec = sc.len() == 1;
    if a_vec {
        sa.insert(0, 1);
    }
    if c_vec {
        sc.push(1);
    }
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (k2, n) = (sc[sc.len() - 2], sc[sc.len() - 1]);
    if k != k2 {
        return invalid(format!(
            "shapes {:?} and {:?} do not multiply",
            b.shape(a),
            b.shape(c)
        ));
    }
    let ba = sa[..sa.len() - 2].to_vec();
    let bc = sc[..sc.len() - 2].to_vec();
    let r = ba.len().max(bc.len());
    let pad = |v: &[usize]| -> Vec<usize> {
        let mut p = vec![1; r - v.len()];
        p.extend_from_slice(v);
        p
    };
    let batch = broadcast("matmul", &pad(&ba), &pad(&bc))?;
    let bsize: usize = batch.iter().product();
    let y = if bc.iter().product::<usize>() == 1 && !ba.is_empty() {
        // Fold the batch of `a` into M: one [1, B*M, K] x [1, K, N].
        let a3 = b.reshape(a, vec![1, bsize * m, k])?;
        let c3 = b.reshape(c, vec![1, k, n])?;
        b.add(Op::MatMul(attrs), &[a3, c3])?
    } else {
        let mut full_a = batch.clone();
        full_a.extend([m, k]);
        let mut full_c = batch.clone();
        full_c.extend([k, n]);
        let a_shaped = b.reshape(a, [pad(&ba), vec![m, k]].concat())?;
        let c_shaped = b.reshape(c, [pad(&bc), vec![k, n]].concat())?;
        let a_full = b.broadcast_to(a_shaped, &full_a)?;
        let c_full = b.broadcast_to(c_shaped, &full_c)?;
        let a3 = b.reshape(a_full, vec![bsize, m, k])?;
        let c3 = b.reshape(c_full, vec![bsize, k, n])?;
        b.add(Op::MatMul(attrs), &[a3, c3])?
    };
    let mut out = batch;
    if !a_vec {
        out.push(m);
    }
    if !c_vec {
        out.push(n);
    }
    b.reshape(y, out)
}

pub(super) fn gemm(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (mut a, mut c) = (cx.input(0)?, cx.input(1)?);
    if b.rank(a) != 2 || b.rank(c) != 2 {
        return invalid(format!(
            "A and B must be 2-D, got {:?} and {:?}",
            b.shape(a),
            b.shape(c)
        ));
    }
    if cx.flag("transA", false)? {
        a = b.transpose(a, vec![1, 0])?;
    }
    if cx.flag("transB", false)? {
        c = b.transpose(c, vec![1, 0])?;
    }
    let alpha = cx.float("alpha", 1.0)? as f64;
    let beta = cx.float("beta", 1.0)? as f64;
    let mut y = matmul_nd(b, a, c, MatMulAttrs::default())?;
    if alpha != 1.0 {
        y = b.binary_scalar(BinaryOp::Mul, y, alpha)?;
    }
    if let Some(mut bias) = cx.opt_input(2) {
        if beta != 1.0 {
            bias = b.binary_scalar(BinaryOp::Mul, bias, beta)?;
        }
        if beta != 0.0 {
            y = b.binary(BinaryOp::Add, y, bias)?;
        }
    }
    Ok(y)
}
