//! MaxPool, AveragePool, LpPool and the global pools.
//!
//! Invariant: 1-D and 2-D windows map to the IR 2-D pools (1-D through a unit height axis); global
//! pools reduce every spatial axis and keep them with size 1, as ONNX does.

use crate::builder::{unsupported, Builder, NResult};
use crate::node::NodeCx;
use crate::ops::conv::{from_2d, to_2d, window};
use kiln_ir::op::{BinaryOp, PoolAttrs, ReduceOp, UnaryOp};
use kiln_ir::{Op, ValueId};

/// MaxPool, AveragePool and LpPool (`(sum over the window of |x|^p)^(1/p)`: an average pool
/// of `|x|^p` that counts the zero padding, times the window size).
pub(super) fn pool(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let mut x = cx.input(0)?;
    let lp = if cx.op_type == "LpPool" {
        match cx.int("p", 2)? {
            p if p >= 1 => Some(p),
            p => return crate::builder::invalid(format!("p must be positive, got {p}")),
        }
    } else {
        None
    };
    if let Some(p) = lp {
        let a = b.unary(UnaryOp::Abs, x)?;
        x = if p == 2 {
            b.binary(BinaryOp::Mul, a, a)?
        } else {
            b.binary_scalar(BinaryOp::Pow, a, p as f64)?
        };
    }
    if cx.wants_output(1) {
        return unsupported("the Indices output of MaxPool is not supported");
    }
    let xs = b.shape(x);
    if !(3..=4).contains(&xs.len()) {
        return unsupported(format!(
            "only 1-D and 2-D pools are supported, input is {xs:?}"
        ));
    }
    let kernel: Vec<usize> = match cx.ints_opt("kernel_shape")? {
        Some(k) if k.iter().all(|&d| d >= 1) => k.iter().map(|&d| d as usize).collect(),
        _ => return crate::builder::invalid("kernel_shape must list positive sizes"),
    };
    let ceil_mode = cx.flag("ceil_mode", false)?;
    let win = window(cx, &xs[2..], &kernel, ceil_mode)?;
    let attrs = PoolAttrs {
        kernel: win.kernel,
        stride: win.stride,
        pad: win.pad,
        dilation: win.dilation,
        ceil_mode,
        count_include_pad: lp.is_some() || cx.flag("count_include_pad", false)?,
        layout: Default::default(),
    };
    let x4 = to_2d(b, x)?;
    let op = if cx.op_type == "MaxPool" {
        Op::MaxPool2d(attrs)
    } else {
        Op::AvgPool2d(attrs)
    };
    let y = b.add(op, &[x4])?;
    let y = from_2d(b, y, xs.len() == 3)?;
    match lp {
        Some(p) => {
            let count: usize = kernel.iter().product();
            let sum = b.binary_scalar(BinaryOp::Mul, y, count as f64)?;
            if p == 1 {
                Ok(sum)
            } else {
                b.binary_scalar(BinaryOp::Pow, sum, 1.0 / p as f64)
            }
        }
        None => Ok(y),
    }
}

pub(super) fn global_pool(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let xs = b.shape(x);
    if xs.len() < 3 {
        return crate::builder::invalid(format!("input must have spatial dims, got {xs:?}"));
    }
    let axes: Vec<usize> = (2..xs.len()).collect();
    if cx.op_type == "GlobalMaxPool" {
        return b.reduce(ReduceOp::Max, x, &axes, true);
    }
    if xs.len() == 4 && b.dtype(x).is_float() && xs[2] > 0 && xs[3] > 0 {
        let attrs = PoolAttrs {
            kernel: [xs[2], xs[3]],
            stride: [1, 1],
            pad: [0; 4],
            dilation: [1, 1],
            ceil_mode: false,
            count_include_pad: false,
            layout: Default::default(),
        };
        return b.add(Op::AvgPool2d(attrs), &[x]);
    }
    let count: usize = xs[2..].iter().product();
    let s = b.reduce(ReduceOp::Sum, x, &axes, true)?;
    b.binary_scalar(BinaryOp::Div, s, count as f64)
}
