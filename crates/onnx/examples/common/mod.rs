//! Helpers shared by the developer examples: reading test-data folders and comparing tensors.

#![allow(dead_code)]

use kiln_ir::{Tensor, TensorData};
use std::path::Path;

/// Reads `prefix_0.pb`, `prefix_1.pb`, ... from `dir` in order.
pub fn read_numbered(dir: &Path, prefix: &str) -> Result<Vec<Tensor>, String> {
    let mut out = Vec::new();
    for i in 0.. {
        let p = dir.join(format!("{prefix}_{i}.pb"));
        if !p.exists() {
            break;
        }
        let (_, t) = kiln_onnx::read_tensor_file(&p).map_err(|e| e.to_string())?;
        out.push(t);
    }
    Ok(out)
}

/// Compares `got` with `want`: floats with `|g - w| <= atol + rtol * |w|` (NaNs must match),
/// everything else exactly. Returns a description of the first mismatch.
pub fn compare(got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Result<(), String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?} != expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    if got.dtype() != want.dtype() {
        return Err(format!(
            "dtype {} != expected {}",
            got.dtype(),
            want.dtype()
        ));
    }
    let g = got.data().to_f64_vec();
    let w = want.data().to_f64_vec();
    let float = matches!(want.data(), TensorData::F32(_) | TensorData::F16(_));
    let (rtol, atol) = if matches!(want.data(), TensorData::F16(_)) {
        (rtol.max(1e-2), atol.max(1e-2))
    } else {
        (rtol, atol)
    };
    let mut worst = None;
    let mut bad = 0;
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let ok = if float {
            (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= atol + rtol * b.abs()
        } else {
            a == b
        };
        if !ok {
            bad += 1;
            if worst.is_none() {
                worst = Some((i, a, b));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, a, b)) => Err(format!(
            "{bad}/{} elements differ, first at {i}: got {a}, expected {b}",
            w.len()
        )),
    }
}
