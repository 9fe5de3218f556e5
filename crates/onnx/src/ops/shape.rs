//! Shape and data-movement ops: constants, Shape/Size, Reshape, Flatten, Squeeze/Unsqueeze,
//! Expand, Transpose, Concat, Split, Slice, Pad, Tile, Gather, GatherElements, Dropout,
//! DepthToSpace/SpaceToDepth, Trilu, EyeLike, Range.
//!
//! Invariant: every shape-like operand (target shapes, axes, starts, pads, repeats) must be a
//! constant at import time, after folding; the resulting IR shapes are fully static. Opset
//! differences (attribute vs input) are resolved here.

use crate::builder::{invalid, norm_axes, norm_axis, unsupported, Builder, NResult};
use crate::node::NodeCx;
use crate::tensor_io::{decode_tensor, dtype_from_onnx};
use kiln_ir::op::PadMode;
use kiln_ir::{DType, Op, OrderedF64, Tensor, TensorData, TensorType, ValueId};

pub(super) fn dropout(b: &mut Builder, cx: &NodeCx) -> NResult<Vec<ValueId>> {
    let x = cx.input(0)?;
    if let Some(t) = cx.opt_input(2) {
        match b.const_ints(t) {
            Some(v) if v.iter().all(|&m| m == 0) => {}
            Some(_) => return unsupported("training_mode=true is not supported (inference only)"),
            None => return unsupported("training_mode must be a constant false (inference only)"),
        }
    }
    let y = b.add(Op::Identity, &[x])?;
    let mut outs = vec![y];
    if cx.wants_output(1) {
        let n = b.ty(x).num_elements();
        let mask = Tensor::new(b.shape(x), vec![true; n])?;
        outs.push(b.konst(mask));
    }
    Ok(outs)
}

fn decode(t: &crate::proto::TensorProto) -> NResult<Tensor> {
    decode_tensor(t, None).map_err(crate::builder::NodeError::Unsupported)
}

pub(super) fn constant(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let attr = match cx.attributes() {
        [a] => a,
        other => return invalid(format!("needs exactly one attribute, has {}", other.len())),
    };
    let name = attr.name.as_deref().unwrap_or("");
    let t = match name {
        "value" => match cx.tensor_opt("value")? {
            Some(t) => decode(t)?,
            None => return invalid("`value` holds no tensor"),
        },
        "value_float" => Tensor::scalar(cx.float("value_float", 0.0)?),
        "value_floats" => {
            let v = cx.floats_opt("value_floats")?.unwrap_or_default();
            Tensor::new(vec![v.len()], v)?
        }
        "value_int" => Tensor::scalar(cx.int("value_int", 0)?),
        "value_ints" => {
            let v = cx.ints_opt("value_ints")?.unwrap_or_default();
            Tensor::new(vec![v.len()], v)?
        }
        other => {
            return unsupported(format!(
                "Constant with attribute `{other}` is not supported"
            ))
        }
    };
    Ok(b.konst(t))
}

pub(super) fn constant_of_shape(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let shape = to_dims(&b.need_ints(cx.input(0)?, "the shape")?)?;
    let (dtype, v) = match cx.tensor_opt("value")? {
        Some(t) => {
            let t = decode(t)?;
            if t.ty().num_elements() != 1 {
                return invalid("`value` must hold one element");
            }
            (t.dtype(), t.data().to_f64_vec()[0])
        }
        None => (DType::F32, 0.0),
    };
    let ty = TensorType::new(dtype, shape)?;
    let n = ty.num_elements();
    let t = Tensor::from_data(ty, TensorData::from_f64(dtype, std::iter::repeat_n(v, n)))?;
    Ok(b.konst(t))
}

fn to_dims(v: &[i64]) -> NResult<Vec<usize>> {
    v.iter()
        .map(|&d| usize::try_from(d).or_else(|_| invalid(format!("negative dimension in {v:?}"))))
        .collect()
}

pub(super) fn shape(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let s: Vec<i64> = b.shape(cx.input(0)?).iter().map(|&d| d as i64).collect();
    let r = s.len() as i64;
    let clampi = |v: i64| if v < 0 { (v + r).clamp(0, r) } else { v.clamp(0, r) } as usize;
    let start = clampi(cx.int("start", 0)?);
    let end = match cx.int_opt("end")? {
        Some(e) => clampi(e),
        None => s.len(),
    };
    let part = if start < end { &s[start..end] } else { &[][..] };
    Ok(b.const_i64(part))
}

pub(super) fn size(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let n = b.ty(cx.input(0)?).num_elements() as i64;
    Ok(b.konst(Tensor::scalar(n)))
}

pub(super) fn range(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (s, l, d) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let dt = b.dtype(s);
    let get = |b: &Builder, v: ValueId, what: &str| -> NResult<f64> {
        match b.const_floats(v).as_deref() {
            Some([x]) => Ok(*x),
            Some(_) => invalid(format!("{what} must be a scalar")),
            None => crate::builder::not_static(what),
        }
    };
    let (start, limit, delta) = (
        get(b, s, "start")?,
        get(b, l, "limit")?,
        get(b, d, "delta")?,
    );
    if delta == 0.0 {
        return invalid("delta must not be zero");
    }
    let n = ((limit - start) / delta).ceil().max(0.0);
    if n > 1e9 {
        return invalid(format!("range of {n} elements is too large"));
    }
    let n = n as usize;
    let vals: Vec<f64> = if dt.is_float() {
        // Accumulate in f32 like the ONNX reference does for float32.
        (0..n)
            .map(|i| (start as f32 + i as f32 * delta as f32) as f64)
            .collect()
    } else {
        (0..n).map(|i| start + i as f64 * delta).collect()
    };
    b.const_f64(dt, vec![n], &vals)
}

/// The `i`-th input if present, else the attribute `name` (opset-dependent operands).
fn ints_from(
    b: &Builder,
    cx: &NodeCx,
    input: usize,
    attr: &str,
    from_input: bool,
) -> NResult<Option<Vec<i64>>> {
    if from_input {
        match cx.opt_input(input) {
            Some(v) => Ok(Some(b.need_ints(v, attr)?)),
            None => Ok(None),
        }
    } else {
        cx.ints_opt(attr)
    }
}

pub(super) fn reshape(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let target = if cx.opset >= 5 {
        b.need_ints(cx.input(1)?, "the target shape")?
    } else {
        cx.ints_opt("shape")?.unwrap_or_default()
    };
    let allowzero = cx.flag("allowzero", false)?;
    let s = b.shape(x);
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => match s.get(i) {
                Some(&v) => out.push(v),
                None => {
                    return invalid(format!(
                        "0 at position {i} copies a dim the input {s:?} lacks"
                    ))
                }
            },
            d if d >= 0 => out.push(d as usize),
            _ => return invalid(format!("invalid target shape {target:?}")),
        }
    }
    let total = b.ty(x).num_elements();
    if let Some(i) = infer {
        let rest: usize = out
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, &d)| d)
            .product();
        if rest == 0 || !total.is_multiple_of(rest) {
            return invalid(format!("cannot reshape {s:?} to {target:?}"));
        }
        out[i] = total / rest;
    }
    if out.iter().product::<usize>() != total {
        return invalid(format!("cannot reshape {s:?} to {target:?}"));
    }
    b.add(Op::Reshape { shape: out }, &[x])
}

pub(super) fn flatten(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    let r = s.len() as i64;
    let a = cx.int("axis", 1)?;
    let axis = if a < 0 { a + r } else { a };
    if !(0..=r).contains(&axis) {
        return invalid(format!("axis {a} is out of range for rank {r}"));
    }
    let axis = axis as usize;
    let rows: usize = s[..axis].iter().product();
    let cols: usize = s[axis..].iter().product();
    b.add(
        Op::Reshape {
            shape: vec![rows, cols],
        },
        &[x],
    )
}

pub(super) fn squeeze(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    let axes = match ints_from(b, cx, 1, "axes", cx.opset >= 13)? {
        Some(a) => norm_axes(&a, s.len())?,
        None => (0..s.len()).filter(|&i| s[i] == 1).collect(),
    };
    for &a in &axes {
        if s[a] != 1 {
            return invalid(format!("cannot squeeze axis {a} of size {}", s[a]));
        }
    }
    let out: Vec<usize> = s
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect();
    b.add(Op::Reshape { shape: out }, &[x])
}

pub(super) fn unsqueeze(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    let axes = match ints_from(b, cx, 1, "axes", cx.opset >= 13)? {
        Some(a) => a,
        None => return invalid("axes are required"),
    };
    let r = s.len() + axes.len();
    let axes = norm_axes(&axes, r)?;
    let mut out = Vec::with_capacity(r);
    let mut it = s.iter();
    for i in 0..r {
        if axes.contains(&i) {
            out.push(1);
        } else {
            out.push(
                *it.next()
                    .ok_or(crate::builder::NodeError::Invalid("bad axes".into()))?,
            );
        }
    }
    b.add(Op::Reshape { shape: out }, &[x])
}

pub(super) fn expand(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let target = to_dims(&b.need_ints(cx.input(1)?, "the target shape")?)?;
    let s = b.shape(x);
    let r = s.len().max(target.len());
    let pad = |v: &[usize]| [vec![1; r - v.len()], v.to_vec()].concat();
    let out = kiln_ir::broadcast("expand", &pad(&s), &pad(&target))?;
    let y = b.broadcast_to(x, &out)?;
    if y == x {
        return b.add(Op::Identity, &[x]);
    }
    Ok(y)
}

pub(super) fn transpose(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let r = b.rank(x);
    let perm = match cx.ints_opt("perm")? {
        Some(p) => {
            if p.len() != r {
                return invalid(format!("perm {p:?} does not match rank {r}"));
            }
            p.iter()
                .map(|&a| norm_axis(a, r))
                .collect::<NResult<Vec<_>>>()?
        }
        None => (0..r).rev().collect(),
    };
    b.add(Op::Transpose { perm }, &[x])
}

pub(super) fn concat(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let vs = cx.present_inputs();
    let first = *vs
        .first()
        .ok_or(crate::builder::NodeError::Invalid("needs inputs".into()))?;
    let axis = norm_axis(
        cx.int_opt("axis")?
            .ok_or(crate::builder::NodeError::Invalid(
                "axis is required".into(),
            ))?,
        b.rank(first),
    )?;
    let nonempty: Vec<ValueId> = vs
        .iter()
        .copied()
        .filter(|&v| b.ty(v).num_elements() > 0)
        .collect();
    let parts = if nonempty.is_empty() {
        vec![first]
    } else {
        nonempty
    };
    if parts.len() == 1 {
        let total: usize = vs
            .iter()
            .map(|&v| b.shape(v).get(axis).copied().unwrap_or(0))
            .sum();
        if b.shape(parts[0])[axis] == total {
            return b.add(Op::Identity, &[parts[0]]);
        }
    }
    b.add(Op::Concat { axis }, &parts)
}

pub(super) fn split(b: &mut Builder, cx: &NodeCx) -> NResult<Vec<ValueId>> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    let axis = norm_axis(cx.int("axis", 0)?, s.len())?;
    let dim = s[axis];
    let sizes = match ints_from(b, cx, 1, "split", cx.opset >= 13)? {
        Some(v) if !v.is_empty() => to_dims(&v)?,
        _ => {
            let n = match cx.int_opt("num_outputs")? {
                Some(n) if n >= 1 => n as usize,
                Some(n) => return invalid(format!("num_outputs must be positive, got {n}")),
                None => cx.num_outputs.max(1),
            };
            if cx.int_opt("num_outputs")?.is_some() {
                let chunk = dim.div_ceil(n);
                (0..n)
                    .map(|i| chunk.min(dim.saturating_sub(i * chunk)))
                    .collect()
            } else {
                if !dim.is_multiple_of(n) {
                    return invalid(format!("dim {dim} does not split into {n} equal parts"));
                }
                vec![dim / n; n]
            }
        }
    };
    if sizes.iter().sum::<usize>() != dim {
        return invalid(format!("split sizes {sizes:?} do not sum to dim {dim}"));
    }
    let mut outs = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for &sz in &sizes {
        let v = b.slice_axis(x, axis, start, sz, 1)?;
        let v = if v == x {
            b.add(Op::Identity, &[x])?
        } else {
            v
        };
        outs.push(v);
        start += sz;
    }
    Ok(outs)
}

pub(super) fn slice(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    let r = s.len();
    let (starts, ends, axes, steps) = if cx.opset >= 10 {
        (
            b.need_ints(cx.input(1)?, "starts")?,
            b.need_ints(cx.input(2)?, "ends")?,
            ints_from(b, cx, 3, "axes", true)?,
            ints_from(b, cx, 4, "steps", true)?,
        )
    } else {
        (
            cx.ints_opt("starts")?.unwrap_or_default(),
            cx.ints_opt("ends")?.unwrap_or_default(),
            cx.ints_opt("axes")?,
            None,
        )
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return invalid("starts, ends, axes and steps must have equal lengths");
    }
    let mut start = vec![0usize; r];
    let mut size = s.clone();
    let mut stride = vec![1usize; r];
    let mut reverse = Vec::new();
    let mut seen = Vec::new();
    for i in 0..starts.len() {
        let a = norm_axis(axes[i], r)?;
        if seen.contains(&a) {
            return invalid(format!("axis {a} is repeated"));
        }
        seen.push(a);
        let d = s[a] as i64;
        let step = steps[i];
        if step == 0 {
            return invalid("steps must not be zero");
        }
        let fix = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
        let (st, en) = (fix(starts[i]), fix(ends[i]));
        if step > 0 {
            let st = st.clamp(0, d);
            let en = en.clamp(0, d);
            let n = if en > st {
                (en - st + step - 1) / step
            } else {
                0
            };
            start[a] = if n == 0 { 0 } else { st as usize };
            size[a] = n as usize;
            stride[a] = step as usize;
        } else {
            let st = st.clamp(0, d - 1);
            let en = en.clamp(-1, d - 1);
            let m = -step;
            let n = if st > en { (st - en + m - 1) / m } else { 0 };
            // Read the same elements with a positive stride, then reverse the axis.
            let lo = st - (n - 1).max(0) * m;
            start[a] = if n == 0 { 0 } else { lo as usize };
            size[a] = n as usize;
            stride[a] = m as usize;
            if n > 1 {
                reverse.push(a);
            }
        }
        if size[a] <= 1 {
            stride[a] = 1;
        }
    }
    let mut y = if start.iter().all(|&v| v == 0) && size == s && stride.iter().all(|&v| v == 1) {
        b.add(Op::Identity, &[x])?
    } else {
        b.add(
            Op::Slice {
                start,
                size,
                stride,
            },
            &[x],
        )?
    };
    for a in reverse {
        y = b.add(Op::Reverse { axis: a }, &[y])?;
    }
    Ok(y)
}

pub(super) fn pad(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    let r = s.len();
    let mode_name = cx.string("mode", "constant")?;
    let mode = match mode_name.as_str() {
        "constant" | "wrap" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        other => return unsupported(format!("pad mode `{other}` is not supported")),
    };
    let (pads, value, axes) = if cx.opset >= 11 {
        let pads = b.need_ints(cx.input(1)?, "pads")?;
        let value = match cx.opt_input(2) {
            Some(v) => match b.const_floats(v).as_deref() {
                Some([x]) => *x,
                Some([]) => 0.0,
                Some(_) => return invalid("constant_value must be a scalar"),
                None => return crate::builder::not_static("constant_value"),
            },
            None => 0.0,
        };
        let axes = ints_from(b, cx, 3, "axes", true)?;
        (pads, value, axes)
    } else {
        let pads = cx
            .ints_opt("pads")?
            .or(cx.ints_opt("paddings")?)
            .unwrap_or_default();
        (pads, cx.float("value", 0.0)? as f64, None)
    };
    let axes = match axes {
        Some(a) => a
            .iter()
            .map(|&v| norm_axis(v, r))
            .collect::<NResult<Vec<_>>>()?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return invalid(format!(
            "pads {pads:?} must have {} entries",
            2 * axes.len()
        ));
    }
    let mut before = vec![0i64; r];
    let mut after = vec![0i64; r];
    for (i, &a) in axes.iter().enumerate() {
        before[a] = pads[i];
        after[a] = pads[i + axes.len()];
    }
    // Negative pads crop: slice first, then pad the rest.
    let mut y = x;
    if before.iter().chain(&after).any(|&p| p < 0) {
        let mut start = vec![0usize; r];
        let mut size = s.clone();
        for a in 0..r {
            let cb = (-before[a]).max(0) as usize;
            let ca = (-after[a]).max(0) as usize;
            if cb + ca > s[a] {
                return invalid(format!("negative pads remove more than axis {a} holds"));
            }
            start[a] = cb;
            size[a] = s[a] - cb - ca;
        }
        y = b.add(
            Op::Slice {
                start,
                size,
                stride: vec![1; r],
            },
            &[y],
        )?;
    }
    let padv: Vec<[usize; 2]> = (0..r)
        .map(|a| [before[a].max(0) as usize, after[a].max(0) as usize])
        .collect();
    if padv.iter().all(|p| p == &[0, 0]) && y != x {
        return Ok(y);
    }
    if mode_name == "wrap" {
        return wrap_pad(b, y, &padv);
    }
    b.add(
        Op::Pad {
            pads: padv,
            mode,
            value: OrderedF64(value),
        },
        &[y],
    )
}

/// Circular padding: output index `i` of an axis of length `n` reads `x[(i - before) mod n]`,
/// built as a TILE of enough copies followed by a SLICE starting at the right phase.
fn wrap_pad(b: &mut Builder, x: ValueId, pads: &[[usize; 2]]) -> NResult<ValueId> {
    let s = b.shape(x);
    if s.iter().zip(pads).any(|(&n, p)| n == 0 && p != &[0, 0]) {
        return invalid("wrap padding needs non-empty axes");
    }
    let multiples: Vec<usize> = s
        .iter()
        .zip(pads)
        .map(|(&n, p)| {
            if n == 0 {
                1
            } else {
                (p[0] + p[1]).div_ceil(n) + 2
            }
        })
        .collect();
    let tiled = b.add(
        Op::Tile {
            multiples: multiples.clone(),
        },
        &[x],
    )?;
    let start = s
        .iter()
        .zip(pads)
        .map(|(&n, p)| if n == 0 { 0 } else { (n - p[0] % n) % n })
        .collect();
    let size = s.iter().zip(pads).map(|(&n, p)| n + p[0] + p[1]).collect();
    b.add(
        Op::Slice {
            start,
            size,
            stride: vec![1; s.len()],
        },
        &[tiled],
    )
}

pub(super) fn tile(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let reps = to_dims(&b.need_ints(cx.input(1)?, "repeats")?)?;
    if reps.len() != b.rank(x) {
        return invalid(format!("repeats {reps:?} must have rank {}", b.rank(x)));
    }
    b.add(Op::Tile { multiples: reps }, &[x])
}

pub(super) fn gather(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (x, idx) = (cx.input(0)?, cx.input(1)?);
    let axis = norm_axis(cx.int("axis", 0)?, b.rank(x))?;
    check_indices(b, idx, b.shape(x)[axis])?;
    b.add(Op::Gather { axis }, &[x, idx])
}

pub(super) fn gather_elements(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (x, idx) = (cx.input(0)?, cx.input(1)?);
    let axis = norm_axis(cx.int("axis", 0)?, b.rank(x))?;
    check_indices(b, idx, b.shape(x)[axis])?;
    b.add(Op::GatherElements { axis }, &[x, idx])
}

/// Constant indices must lie in `[-dim, dim)`.
fn check_indices(b: &Builder, idx: ValueId, dim: usize) -> NResult<()> {
    if let Some(v) = b.const_ints(idx) {
        let d = dim as i64;
        if let Some(bad) = v.iter().find(|&&i| i < -d || i >= d) {
            return invalid(format!("index {bad} is out of range for a dim of {dim}"));
        }
    }
    Ok(())
}

pub(super) fn depth_space(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    if s.len() != 4 {
        return invalid(format!("input must be 4-D, got {s:?}"));
    }
    let bs = cx.int("blocksize", 0)?;
    if bs < 1 {
        return invalid("blocksize must be positive");
    }
    let k = bs as usize;
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    if cx.op_type == "DepthToSpace" {
        if c % (k * k) != 0 {
            return invalid(format!("{c} channels do not divide by blocksize^2"));
        }
        let oc = c / (k * k);
        let (shape, perm) = if cx.string("mode", "DCR")? == "CRD" {
            (vec![n, oc, k, k, h, w], vec![0, 1, 4, 2, 5, 3])
        } else {
            (vec![n, k, k, oc, h, w], vec![0, 3, 4, 1, 5, 2])
        };
        let y = b.reshape(x, shape)?;
        let y = b.transpose(y, perm)?;
        b.reshape(y, vec![n, oc, h * k, w * k])
    } else {
        if h % k != 0 || w % k != 0 {
            return invalid(format!(
                "spatial dims {h}x{w} do not divide by blocksize {k}"
            ));
        }
        let y = b.reshape(x, vec![n, c, h / k, k, w / k, k])?;
        let perm = if cx.string("mode", "DCR")? == "CRD" {
            vec![0, 1, 3, 5, 2, 4]
        } else {
            vec![0, 3, 5, 1, 2, 4]
        };
        let y = b.transpose(y, perm)?;
        b.reshape(y, vec![n, c * k * k, h / k, w / k])
    }
}

pub(super) fn trilu(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    if s.len() < 2 {
        return invalid("input must have rank at least 2");
    }
    let k = match cx.opt_input(1) {
        Some(v) => *b.need_ints(v, "k")?.first().unwrap_or(&0),
        None => 0,
    };
    let upper = cx.flag("upper", true)?;
    let (rows, cols) = (s[s.len() - 2], s[s.len() - 1]);
    let mut mask = Vec::with_capacity(rows * cols);
    for i in 0..rows as i64 {
        for j in 0..cols as i64 {
            mask.push(if upper { j - i >= k } else { j - i <= k });
        }
    }
    let m = b.const_tensor(vec![rows, cols], mask)?;
    let zero = b.scalar(b.dtype(x), 0.0);
    b.select(m, x, zero)
}

pub(super) fn eye_like(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    if s.len() != 2 {
        return invalid("input must be 2-D");
    }
    let dt = match cx.int_opt("dtype")? {
        Some(c) => dtype_from_onnx(c as i32).map_err(crate::builder::NodeError::Unsupported)?,
        None => b.dtype(x),
    };
    let k = cx.int("k", 0)?;
    let vals: Vec<f64> = (0..s[0] as i64)
        .flat_map(|i| (0..s[1] as i64).map(move |j| if j - i == k { 1.0 } else { 0.0 }))
        .collect();
    b.const_f64(dt, s, &vals)
}
