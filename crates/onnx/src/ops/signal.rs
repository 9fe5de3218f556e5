//! Signal-processing generators: HannWindow, HammingWindow and BlackmanWindow.
//!
//! Invariant: a window depends only on its (import-time) size, so it is a constant computed in
//! f64 and rounded once to `output_datatype`; `periodic` windows divide by `N`, symmetric ones
//! by `N - 1`, as the ONNX reference does.

use crate::builder::NodeError;
use crate::builder::{invalid, Builder, NResult};
use crate::node::NodeCx;
use crate::tensor_io::dtype_from_onnx;
use kiln_ir::ValueId;
use std::f64::consts::PI;

/// The `size` samples of a Hann, Hamming or Blackman window.
pub(super) fn window(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let size = match b.need_ints(cx.input(0)?, "size")?.as_slice() {
        [n] if *n >= 0 && *n <= i64::from(u32::MAX) => *n as usize,
        other => {
            return invalid(format!(
                "size must be one nonnegative integer, got {other:?}"
            ))
        }
    };
    let dtype =
        dtype_from_onnx(cx.int("output_datatype", 1)? as i32).map_err(NodeError::Unsupported)?;
    if !dtype.is_numeric() {
        return invalid(format!("output_datatype must be numeric, got {dtype}"));
    }
    let periodic = cx.flag("periodic", true)?;
    let denom = if periodic {
        size as f64
    } else {
        size as f64 - 1.0
    };
    let sample = |n: f64| -> f64 {
        let x = n / denom;
        match cx.op_type {
            "HannWindow" => (PI * x).sin().powi(2),
            "HammingWindow" => {
                let alpha = 25.0 / 46.0;
                alpha - (1.0 - alpha) * (2.0 * PI * x).cos()
            }
            _ => 0.42 - 0.5 * (2.0 * PI * x).cos() + 0.08 * (4.0 * PI * x).cos(),
        }
    };
    let values: Vec<f64> = (0..size).map(|n| sample(n as f64)).collect();
    b.const_f64(dtype, vec![size], &values)
}
