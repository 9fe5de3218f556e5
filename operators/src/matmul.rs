//! MATMUL: `[B,M,K] x [B,K,N] -> [B,M,N]`.
//!
//! Invariant: floats accumulate in f32 (f16 and bf16 widened, rounded once at the end; f64 in
//! f64), in `k` order from 0, each `a * b` rounded before the add, or with `fma` set (f32) one
//! `mul_add` per step; integers
//! accumulate `(a - a_zp) * (b - b_zp)` in wrapping i32 (an i32/i64 right operand is first
//! narrowed to i32 with wrapping). The inner loop runs over contiguous rows of `b` and the output.

use crate::util::{fail_named, float_data, float_vec, int_vec_minus, Acc};
use crate::OpError;
use kiln_ir::op::MatMulAttrs;
use kiln_ir::{Tensor, TensorData, TensorType};

fn kernel<T: Acc>(a: &[T], b: &[T], batch: usize, m: usize, k: usize, n: usize) -> Vec<T> {
    kernel_with(a, b, (batch, m, k, n), |acc, x, y| acc.mac(x, y))
}

/// [`kernel`] for f32 with one rounding per multiply-add (`MatMulAttrs::fma`).
fn fma_kernel(a: &[f32], b: &[f32], batch: usize, m: usize, k: usize, n: usize) -> Vec<f32> {
    kernel_with(a, b, (batch, m, k, n), |acc, x, y| x.mul_add(y, acc))
}

/// `out[b, i, j] = mac(.. mac(0, a[b, i, 0], b[b, 0, j]) .., a[b, i, k-1], b[b, k-1, j])`.
fn kernel_with<T: Acc>(
    a: &[T],
    b: &[T],
    (batch, m, k, n): (usize, usize, usize, usize),
    mac: impl Fn(T, T, T) -> T,
) -> Vec<T> {
    let mut out = vec![T::default(); batch * m * n];
    if out.is_empty() {
        return out;
    }
    for (bi, out_b) in out.chunks_exact_mut(m * n).enumerate() {
        let a_b = &a[bi * m * k..][..m * k];
        let b_b = &b[bi * k * n..][..k * n];
        for (row, out_row) in out_b.chunks_exact_mut(n).enumerate() {
            for (kk, &av) in a_b[row * k..][..k].iter().enumerate() {
                for (o, &bv) in out_row.iter_mut().zip(&b_b[kk * n..][..n]) {
                    *o = mac(*o, av, bv);
                }
            }
        }
    }
    out
}

/// MATMUL producing data of type `out`.
pub fn matmul(
    attrs: &MatMulAttrs,
    a: &Tensor,
    b: &Tensor,
    out: &TensorType,
) -> Result<TensorData, OpError> {
    let bad = || {
        fail_named(
            "matmul",
            format!("unsupported dtypes {} and {}", a.dtype(), b.dtype()),
        )
    };
    let (batch, m, k) = (a.shape()[0], a.shape()[1], a.shape()[2]);
    let n = out.shape[2];
    if let (TensorData::F64(x), TensorData::F64(y)) = (a.data(), b.data()) {
        return Ok(TensorData::F64(kernel(x, y, batch, m, k, n)));
    }
    if let (true, TensorData::F32(x), TensorData::F32(y)) = (attrs.fma, a.data(), b.data()) {
        return Ok(TensorData::F32(fma_kernel(x, y, batch, m, k, n)));
    }
    if a.dtype().is_float() {
        let x = float_vec(a.data()).ok_or_else(bad)?;
        let y = float_vec(b.data()).ok_or_else(bad)?;
        Ok(float_data(kernel(&x, &y, batch, m, k, n), a.dtype()))
    } else {
        let x = int_vec_minus(a.data(), attrs.a_zp).ok_or_else(bad)?;
        let y = int_vec_minus(b.data(), attrs.b_zp).ok_or_else(bad)?;
        Ok(TensorData::I32(kernel(&x, &y, batch, m, k, n)))
    }
}
