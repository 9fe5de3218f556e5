//! LSTM, GRU and RNN, unrolled over the static sequence length with IR matmuls and elementwise
//! ops; forward, reverse and bidirectional; both layouts; ONNX default activations.
//!
//! Invariant: the input projection of all time steps is one matmul per direction; each step adds
//! the recurrent projection and applies the cell's gate equations exactly as the ONNX operator
//! spec writes them (gate order LSTM `iofc`, GRU `zrh`). Outputs have the ONNX shapes.

use crate::builder::{invalid, unsupported, Builder, NResult};
use crate::node::NodeCx;
use crate::ops::matmul::matmul_nd;
use kiln_ir::op::{BinaryOp, MatMulAttrs, UnaryOp};
use kiln_ir::ValueId;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cell {
    Lstm,
    Gru,
    Rnn,
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
            Cell::Rnn => 1,
        }
    }
    fn default_activations(self) -> &'static [&'static str] {
        match self {
            Cell::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            Cell::Gru => &["Sigmoid", "Tanh"],
            Cell::Rnn => &["Tanh"],
        }
    }
}

/// An activation function with its alpha and beta.
#[derive(Clone, Debug)]
struct Act {
    name: String,
    alpha: Option<f64>,
    beta: Option<f64>,
}

impl Act {
    fn apply(&self, b: &mut Builder, x: ValueId) -> NResult<ValueId> {
        let dt = b.dtype(x);
        match self.name.to_ascii_lowercase().as_str() {
            "sigmoid" => b.unary(UnaryOp::Sigmoid, x),
            "tanh" => b.unary(UnaryOp::Tanh, x),
            "relu" => b.clamp(x, 0.0, f64::INFINITY),
            "affine" => {
                let y = b.binary_scalar(BinaryOp::Mul, x, self.alpha.unwrap_or(1.0))?;
                b.binary_scalar(BinaryOp::Add, y, self.beta.unwrap_or(0.0))
            }
            "leakyrelu" => {
                let neg = b.binary_scalar(BinaryOp::Mul, x, self.alpha.unwrap_or(0.01))?;
                let zero = b.scalar(dt, 0.0);
                let is_neg = b.binary(BinaryOp::Greater, zero, x)?;
                b.select(is_neg, neg, x)
            }
            "hardsigmoid" => {
                let y = b.binary_scalar(BinaryOp::Mul, x, self.alpha.unwrap_or(0.2))?;
                let y = b.binary_scalar(BinaryOp::Add, y, self.beta.unwrap_or(0.5))?;
                b.clamp(y, 0.0, 1.0)
            }
            "scaledtanh" => {
                let y = b.binary_scalar(BinaryOp::Mul, x, self.beta.unwrap_or(1.0))?;
                let y = b.unary(UnaryOp::Tanh, y)?;
                b.binary_scalar(BinaryOp::Mul, y, self.alpha.unwrap_or(1.0))
            }
            "softsign" => {
                let a = b.unary(UnaryOp::Abs, x)?;
                let d = b.binary_scalar(BinaryOp::Add, a, 1.0)?;
                b.binary(BinaryOp::Div, x, d)
            }
            "softplus" => {
                let e = b.unary(UnaryOp::Exp, x)?;
                let e = b.binary_scalar(BinaryOp::Add, e, 1.0)?;
                b.unary(UnaryOp::Log, e)
            }
            other => unsupported(format!("activation `{other}`")),
        }
    }
}

pub(super) fn lstm(b: &mut Builder, cx: &NodeCx) -> NResult<Vec<ValueId>> {
    recurrent(b, cx, Cell::Lstm)
}

pub(super) fn gru(b: &mut Builder, cx: &NodeCx) -> NResult<Vec<ValueId>> {
    recurrent(b, cx, Cell::Gru)
}

pub(super) fn rnn(b: &mut Builder, cx: &NodeCx) -> NResult<Vec<ValueId>> {
    recurrent(b, cx, Cell::Rnn)
}

fn recurrent(b: &mut Builder, cx: &NodeCx, cell: Cell) -> NResult<Vec<ValueId>> {
    let g = cell.gates();
    let dirs: Vec<bool> = match cx.string("direction", "forward")?.as_str() {
        "forward" => vec![false],
        "reverse" => vec![true],
        "bidirectional" => vec![false, true],
        other => return invalid(format!("unknown direction `{other}`")),
    };
    let nd = dirs.len();
    let layout = cx.int("layout", 0)?;
    let mut x = cx.input(0)?;
    if b.rank(x) != 3 {
        return invalid(format!("X must be 3-D, got {:?}", b.shape(x)));
    }
    if layout == 1 {
        x = b.transpose(x, vec![1, 0, 2])?;
    }
    let xs = b.shape(x);
    let (seq, batch, input) = (xs[0], xs[1], xs[2]);
    let w = cx.input(1)?;
    let r = cx.input(2)?;
    let ws = b.shape(w);
    if ws.len() != 3 || ws[0] != nd || !ws[1].is_multiple_of(g) || ws[2] != input {
        return invalid(format!(
            "W {ws:?} does not fit {nd} directions, {g} gates and input size {input}"
        ));
    }
    let hidden = ws[1] / g;
    if let Some(h) = cx.int_opt("hidden_size")? {
        if h != hidden as i64 {
            return invalid(format!("hidden_size {h} does not match W {ws:?}"));
        }
    }
    if b.shape(r) != [nd, g * hidden, hidden] {
        return invalid(format!(
            "R {:?} must be [{nd}, {}, {hidden}]",
            b.shape(r),
            g * hidden
        ));
    }
    if let Some(sl) = cx.opt_input(4) {
        let lens = b.need_ints(sl, "sequence_lens")?;
        if lens.iter().any(|&l| l != seq as i64) {
            return unsupported("sequence_lens shorter than the sequence are not supported");
        }
    }
    if cx.flag("input_forget", false)? {
        return unsupported("input_forget=1 is not supported");
    }
    let clip = cx.float_opt("clip")?.map(|c| c as f64);
    let lbr = cx.flag("linear_before_reset", false)?;
    let acts = activations(cx, cell, nd)?;
    let dt = b.dtype(x);
    let (mut ys, mut hs, mut cs) = (Vec::new(), Vec::new(), Vec::new());
    for (d, &reverse) in dirs.iter().enumerate() {
        // Per-direction weights, transposed for x @ W^T.
        let wd = b.slice_axis(w, 0, d, 1, 1)?;
        let wd = b.reshape(wd, vec![g * hidden, input])?;
        let wt = b.transpose(wd, vec![1, 0])?;
        let rd = b.slice_axis(r, 0, d, 1, 1)?;
        let rd = b.reshape(rd, vec![g * hidden, hidden])?;
        let rt = b.transpose(rd, vec![1, 0])?;
        let (wb, rb) = match cx.opt_input(3) {
            Some(bias) => {
                let bd = b.slice_axis(bias, 0, d, 1, 1)?;
                let bd = b.reshape(bd, vec![2 * g * hidden])?;
                (
                    Some(b.slice_axis(bd, 0, 0, g * hidden, 1)?),
                    Some(b.slice_axis(bd, 0, g * hidden, g * hidden, 1)?),
                )
            }
            None => (None, None),
        };
        // Input projection of all steps: [S*B, I] x [I, G*H] + biases.
        let x2 = b.reshape(x, vec![seq * batch, input])?;
        let mut xp = matmul_nd(b, x2, wt, MatMulAttrs::default())?;
        if let Some(wb) = wb {
            xp = b.binary(BinaryOp::Add, xp, wb)?;
        }
        // The recurrent bias joins the input projection except for GRU's h gate with
        // linear_before_reset, where it stays inside the reset product.
        let mut rb_h = None;
        if let Some(rb) = rb {
            if cell == Cell::Gru && lbr {
                let zr = b.slice_axis(rb, 0, 0, 2 * hidden, 1)?;
                let zeros = b.const_f64(dt, vec![hidden], &vec![0.0; hidden])?;
                let padded = b.concat(&[zr, zeros], 0)?;
                xp = b.binary(BinaryOp::Add, xp, padded)?;
                rb_h = Some(b.slice_axis(rb, 0, 2 * hidden, hidden, 1)?);
            } else {
                xp = b.binary(BinaryOp::Add, xp, rb)?;
            }
        }
        let xp = b.reshape(xp, vec![seq, batch, g * hidden])?;
        let init = |b: &mut Builder, i: usize| -> NResult<ValueId> {
            match cx.opt_input(i) {
                Some(v) => {
                    let s = b.slice_axis(v, 0, d, 1, 1)?;
                    b.reshape(s, vec![batch, hidden])
                }
                None => b.const_f64(dt, vec![batch, hidden], &vec![0.0; batch * hidden]),
            }
        };
        let mut h = init(b, 5)?;
        let mut c = if cell == Cell::Lstm {
            Some(init(b, 6)?)
        } else {
            None
        };
        let peep = match (cell, cx.opt_input(7)) {
            (Cell::Lstm, Some(p)) => {
                let pd = b.slice_axis(p, 0, d, 1, 1)?;
                let pd = b.reshape(pd, vec![3 * hidden])?;
                Some([
                    b.slice_axis(pd, 0, 0, hidden, 1)?,
                    b.slice_axis(pd, 0, hidden, hidden, 1)?,
                    b.slice_axis(pd, 0, 2 * hidden, hidden, 1)?,
                ])
            }
            _ => None,
        };
        let a = &acts[d];
        let mut steps = vec![None; seq];
        for step in 0..seq {
            let t = if reverse { seq - 1 - step } else { step };
            let xt = b.slice_axis(xp, 0, t, 1, 1)?;
            let xt = b.reshape(xt, vec![batch, g * hidden])?;
            let gate =
                |b: &mut Builder, v: ValueId, k: usize| b.slice_axis(v, 1, k * hidden, hidden, 1);
            let clipped = |b: &mut Builder, v: ValueId| match clip {
                Some(cl) => b.clamp(v, -cl, cl),
                None => Ok(v),
            };
            match cell {
                Cell::Rnn => {
                    let hr = matmul_nd(b, h, rt, MatMulAttrs::default())?;
                    let s = b.binary(BinaryOp::Add, xt, hr)?;
                    let s = clipped(b, s)?;
                    h = a[0].apply(b, s)?;
                }
                Cell::Lstm => {
                    let hr = matmul_nd(b, h, rt, MatMulAttrs::default())?;
                    let s = b.binary(BinaryOp::Add, xt, hr)?;
                    let cprev = c.ok_or(crate::builder::NodeError::Invalid(
                        "missing cell state".into(),
                    ))?;
                    let mut gi = gate(b, s, 0)?;
                    let mut go = gate(b, s, 1)?;
                    let mut gf = gate(b, s, 2)?;
                    let gc = gate(b, s, 3)?;
                    if let Some([pi, _, pf]) = peep {
                        let t1 = b.binary(BinaryOp::Mul, cprev, pi)?;
                        gi = b.binary(BinaryOp::Add, gi, t1)?;
                        let t2 = b.binary(BinaryOp::Mul, cprev, pf)?;
                        gf = b.binary(BinaryOp::Add, gf, t2)?;
                    }
                    let gi = clipped(b, gi)?;
                    let gf = clipped(b, gf)?;
                    let gc = clipped(b, gc)?;
                    let i_t = a[0].apply(b, gi)?;
                    let f_t = a[0].apply(b, gf)?;
                    let c_t = a[1].apply(b, gc)?;
                    let fc = b.binary(BinaryOp::Mul, f_t, cprev)?;
                    let ic = b.binary(BinaryOp::Mul, i_t, c_t)?;
                    let cn = b.binary(BinaryOp::Add, fc, ic)?;
                    if let Some([_, po, _]) = peep {
                        let t3 = b.binary(BinaryOp::Mul, cn, po)?;
                        go = b.binary(BinaryOp::Add, go, t3)?;
                    }
                    let go = clipped(b, go)?;
                    let o_t = a[0].apply(b, go)?;
                    let hc = a[2].apply(b, cn)?;
                    h = b.binary(BinaryOp::Mul, o_t, hc)?;
                    c = Some(cn);
                }
                Cell::Gru => {
                    let rt_zr = b.slice_axis(rt, 1, 0, 2 * hidden, 1)?;
                    let rt_h = b.slice_axis(rt, 1, 2 * hidden, hidden, 1)?;
                    let hzr = matmul_nd(b, h, rt_zr, MatMulAttrs::default())?;
                    let xzr = b.slice_axis(xt, 1, 0, 2 * hidden, 1)?;
                    let szr = b.binary(BinaryOp::Add, xzr, hzr)?;
                    let gz = gate(b, szr, 0)?;
                    let gr = gate(b, szr, 1)?;
                    let gz = clipped(b, gz)?;
                    let gr = clipped(b, gr)?;
                    let z = a[0].apply(b, gz)?;
                    let rg = a[0].apply(b, gr)?;
                    let xh = gate(b, xt, 2)?;
                    let inner = if lbr {
                        let mut hh = matmul_nd(b, h, rt_h, MatMulAttrs::default())?;
                        if let Some(rbh) = rb_h {
                            hh = b.binary(BinaryOp::Add, hh, rbh)?;
                        }
                        b.binary(BinaryOp::Mul, rg, hh)?
                    } else {
                        let rh = b.binary(BinaryOp::Mul, rg, h)?;
                        matmul_nd(b, rh, rt_h, MatMulAttrs::default())?
                    };
                    let sh = b.binary(BinaryOp::Add, xh, inner)?;
                    let sh = clipped(b, sh)?;
                    let hn = a[1].apply(b, sh)?;
                    // H = (1 - z) * hn + z * h = hn + z * (h - hn).
                    let diff = b.binary(BinaryOp::Sub, h, hn)?;
                    let zd = b.binary(BinaryOp::Mul, z, diff)?;
                    h = b.binary(BinaryOp::Add, hn, zd)?;
                }
            }
            steps[t] = Some(b.reshape(h, vec![1, 1, batch, hidden])?);
        }
        let steps: Vec<ValueId> = steps.into_iter().flatten().collect();
        if !steps.is_empty() {
            ys.push(b.concat(&steps, 0)?);
        }
        hs.push(b.reshape(h, vec![1, batch, hidden])?);
        if let Some(c) = c {
            cs.push(b.reshape(c, vec![1, batch, hidden])?);
        }
    }
    if ys.len() != nd {
        return unsupported("an empty sequence is not supported");
    }
    let mut y = b.concat(&ys, 1)?;
    let mut yh = b.concat(&hs, 0)?;
    let mut yc = if cs.is_empty() {
        None
    } else {
        Some(b.concat(&cs, 0)?)
    };
    if layout == 1 {
        y = b.transpose(y, vec![2, 0, 1, 3])?;
        yh = b.transpose(yh, vec![1, 0, 2])?;
        yc = match yc {
            Some(v) => Some(b.transpose(v, vec![1, 0, 2])?),
            None => None,
        };
    }
    let mut outs = vec![y, yh];
    outs.extend(yc);
    Ok(outs)
}

/// The activations of each direction, with their alpha/beta values consumed in order.
fn activations(cx: &NodeCx, cell: Cell, nd: usize) -> NResult<Vec<Vec<Act>>> {
    let per_dir = cell.default_activations().len();
    let names: Vec<String> = match cx
        .node
        .attribute
        .iter()
        .find(|a| a.name.as_deref() == Some("activations"))
    {
        Some(a) => a
            .strings
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
        None => (0..nd)
            .flat_map(|_| cell.default_activations().iter().map(|s| s.to_string()))
            .collect(),
    };
    if names.len() != per_dir * nd {
        return invalid(format!(
            "activations {names:?} must list {per_dir} functions per direction"
        ));
    }
    let alphas = cx.floats_opt("activation_alpha")?.unwrap_or_default();
    let betas = cx.floats_opt("activation_beta")?.unwrap_or_default();
    let acts: Vec<Act> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Act {
            name: n.clone(),
            alpha: alphas.get(i).map(|&v| v as f64),
            beta: betas.get(i).map(|&v| v as f64),
        })
        .collect();
    Ok(acts.chunks(per_dir).map(|c| c.to_vec()).collect())
}
