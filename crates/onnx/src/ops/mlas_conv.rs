//! A float Conv computed in the exact order of onnxruntime's CPU kernel (MLAS, one thread), for
//! the float convolutions onnxruntime leaves between DequantizeLinear and QuantizeLinear in an
//! int8 QDQ model: their rounding decides the quantized result, so it must match bit for bit.
//!
//! onnxruntime's `Conv` lowers to im2col (`k = c·kh·kw + ky·kw + kx`, padding read as 0.0) and
//! SGEMM `C[M,N] = W[M,K] · col[K,N]` per group and image, whose kernel runs one FMA chain from
//! +0.0 over each block of `k`, adds the blocks to `C` in order (`C = acc + C`), and adds the bias
//! last (docs/onnxruntime-int8-numerics.md §3.10 has the blocking rules and their sources).
//! That chain over `k` is the chain of a direct convolution over `(c, ky, kx)`, so a convolution
//! of one group whose pixels share one sequence of `k` blocks is a CONV2D with
//! [`ConvAttrs::fma`] per block (no im2col; see [`DirectConv`] for how a block starting inside a
//! channel's taps stays exact), the blocks summed with ADD in MLAS's order and the bias added
//! at the end. A pointwise one runs channels-last as MATMULs with `fma` set; otherwise each
//! (column range, `k` block) is a MATMUL with `fma` set on the matching slices of an im2col.
//!
//! Invariant: the value built equals MLAS's result bit for bit whenever this module returns one;
//! shapes whose SGEMM would take MLAS's single-row or single-column kernels (other summation
//! orders), or weights that are not constants, return `None` and the caller imports the
//! ordinary CONV2D (correct to rounding, not bit-exact).

use crate::builder::{Builder, NResult};
use crate::node::NodeCx;
use crate::ops::conv::{from_2d, to_2d, window};
use crate::ops::matmul::matmul_nd;
use kiln_ir::op::{BinaryOp, ConvAttrs, MatMulAttrs, PadMode};
use kiln_ir::{DType, Op, ValueId};

/// One SGEMM call: `C[:, n] (+)= W[:, k] · col[k, n]`, columns `n`, reduction range `k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    n: Span,
    k: Span,
}

/// MLAS's adaptive strides for `n` columns and depth `k` (`MlasSgemmOperation`, `MlasConvOperation`).
fn strides(n: usize, k: usize) -> (usize, usize) {
    let (mut sn, mut sk) = (128usize, 128usize);
    if n >= k {
        while sk / 2 >= k {
            sn *= 2;
            sk /= 2;
        }
    } else {
        while sn > 16 && sn / 2 >= n {
            sk *= 2;
            sn /= 2;
        }
    }
    (sn, sk)
}

/// The FMA-chain blocks of `MlasSgemmOperation(M, N, K)` on columns `n0..n0+n`, depth `k0..k0+k`,
/// in execution order; `None` when MLAS would use its single-row or single-column kernel.
fn sgemm_blocks(m: usize, n0: usize, n: usize, k0: usize, k: usize, out: &mut Vec<Block>) -> bool {
    if m == 1 || n == 1 {
        return false;
    }
    let (sn, sk) = strides(n, k);
    for nb in (0..n).step_by(sn) {
        let cn = sn.min(n - nb);
        for kb in (0..k).step_by(sk) {
            let ck = sk.min(k - kb);
            out.push(Block {
                n: (n0 + nb, cn),
                k: (k0 + kb, ck),
            });
        }
    }
    true
}

/// The SGEMM blocks of one group's convolution: `direct` for a pointwise, unstrided, unpadded
/// kernel (`GemmDirect`), else `ExpandThenGemm` (`m > n`) or the segmented im2col.
fn conv_blocks(m: usize, n: usize, k: usize, direct: bool) -> Option<Vec<Block>> {
    let mut out = vec![];
    if direct || m > n {
        return sgemm_blocks(m, 0, n, 0, k, &mut out).then_some(out);
    }
    let (sn, sk) = strides(n, k);
    for nb in (0..n).step_by(sn) {
        let cn = sn.min(n - nb);
        for kb in (0..k).step_by(sk) {
            if !sgemm_blocks(m, nb, cn, kb, sk.min(k - kb), &mut out) {
                return None;
            }
        }
    }
    Some(out)
}

/// `(start, count)` along one axis.
type Span = (usize, usize);

/// Columns that share one sequence of `k` blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ColumnRun {
    columns: Span,
    k_blocks: Vec<Span>,
}

/// The blocks grouped by column range (merging adjacent ranges with equal `k` blocks), in
/// column order, each with its `k` blocks in execution order.
fn column_runs(blocks: &[Block]) -> Vec<ColumnRun> {
    let mut per_col: Vec<ColumnRun> = vec![];
    for bl in blocks {
        match per_col.iter_mut().find(|r| r.columns == bl.n) {
            Some(r) => r.k_blocks.push(bl.k),
            None => per_col.push(ColumnRun {
                columns: bl.n,
                k_blocks: vec![bl.k],
            }),
        }
    }
    per_col.sort_by_key(|r| r.columns.0);
    let mut runs: Vec<ColumnRun> = vec![];
    for r in per_col {
        match runs.last_mut() {
            Some(last)
                if last.k_blocks == r.k_blocks
                    && last.columns.0 + last.columns.1 == r.columns.0 =>
            {
                last.columns.1 += r.columns.1
            }
            _ => runs.push(r),
        }
    }
    runs
}

/// What is known of a convolution input's values (a DequantizeLinear output): all finite, and
/// each 0 or at least `min_nonzero` in magnitude.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Magnitudes {
    pub(crate) min_nonzero: f64,
}

/// `Conv` in MLAS's order, or `None` when it does not apply (see the module doc). `input`
/// bounds the input's values when they are known.
pub(crate) fn conv(
    b: &mut Builder,
    cx: &NodeCx,
    input: Option<Magnitudes>,
) -> NResult<Option<ValueId>> {
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let bias = cx.opt_input(2);
    let (xs, ws) = (b.shape(x), b.shape(w));
    if b.dtype(x) != DType::F32 || xs.len() != ws.len() || !(3..=4).contains(&xs.len()) {
        return Ok(None);
    }
    let Some(weights) = b
        .const_of(w)
        .and_then(|t| t.as_slice::<f32>())
        .map(<[f32]>::to_vec)
    else {
        return Ok(None);
    };
    if let Some(k) = cx.ints_opt("kernel_shape")? {
        if k.iter().map(|&d| d as usize).ne(ws[2..].iter().copied()) {
            return Ok(None);
        }
    }
    let one_d = xs.len() == 3;
    let win = window(cx, &xs[2..], &ws[2..], false)?;
    let group = cx.int("group", 1)?;
    let (c, o) = (xs[1], ws[0]);
    if group < 1 || !c.is_multiple_of(group as usize) || !o.is_multiple_of(group as usize) {
        return Ok(None);
    }
    let group = group as usize;
    let (cg, mg) = (c / group, o / group);
    if ws[1] != cg {
        return Ok(None);
    }
    let x4 = to_2d(b, x)?;
    let [kh, kw] = win.kernel;
    let [pt, pb, pl, pr] = win.pad;
    let s4 = b.shape(x4);
    let (batch, h, wd) = (s4[0], s4[2], s4[3]);
    let span = |size: usize, before: usize, after: usize, k: usize, s: usize, d: usize| {
        let eff = d * (k - 1) + 1;
        (size + before + after).checked_sub(eff).map(|r| r / s + 1)
    };
    let (Some(oh), Some(ow)) = (
        span(h, pt, pb, kh, win.stride[0], win.dilation[0]),
        span(wd, pl, pr, kw, win.stride[1], win.dilation[1]),
    ) else {
        return Ok(None);
    };
    let (n, k) = (oh * ow, cg * kh * kw);
    let direct = kh == 1 && kw == 1 && win.stride == [1, 1] && win.pad == [0; 4];
    let Some(blocks) = conv_blocks(mg, n, k, direct) else {
        return Ok(None);
    };
    let runs = column_runs(&blocks);
    let fma = MatMulAttrs {
        fma: true,
        ..Default::default()
    };
    if direct {
        let y = pointwise_channels_last(b, x4, &weights, bias, &runs, group, fma)?;
        return from_2d(b, y, one_d).map(Some);
    }
    if let ([run], 1) = (runs.as_slice(), group) {
        let conv = DirectConv {
            x: x4,
            weights: &weights,
            out_channels: o,
            kernel: [kh, kw],
            attrs: ConvAttrs {
                pad: win.pad,
                stride: win.stride,
                dilation: win.dilation,
                fma: true,
                ..Default::default()
            },
        };
        if let Some(y) = conv.build(b, &run.k_blocks, bias, input)? {
            return from_2d(b, y, one_d).map(Some);
        }
    }
    // im2col of the whole input: [B, C·kh·kw, OH·OW], k = c·kh·kw + ky·kw + kx.
    let col = if direct {
        b.reshape(x4, vec![batch, c, n])?
    } else {
        let padded = if win.pad == [0; 4] {
            x4
        } else {
            b.add(
                Op::Pad {
                    pads: vec![[0, 0], [0, 0], [pt, pb], [pl, pr]],
                    mode: PadMode::Constant,
                    value: kiln_ir::op::OrderedF64(0.0),
                },
                &[x4],
            )?
        };
        let ps = b.shape(padded);
        let mut taps = Vec::with_capacity(kh * kw);
        for ky in 0..kh {
            for kx in 0..kw {
                let t = b.add(
                    Op::Slice {
                        start: vec![0, 0, ky * win.dilation[0], kx * win.dilation[1]],
                        size: vec![ps[0], ps[1], oh, ow],
                        stride: vec![1, 1, win.stride[0], win.stride[1]],
                    },
                    &[padded],
                )?;
                taps.push(b.reshape(t, vec![batch, c, 1, n])?);
            }
        }
        let stacked = b.concat(&taps, 2)?;
        b.reshape(stacked, vec![batch, c * kh * kw, n])?
    };
    let mut groups = Vec::with_capacity(group);
    for g in 0..group {
        let wg = &weights[g * mg * k..][..mg * k];
        let mut columns = Vec::with_capacity(runs.len());
        for run in &runs {
            let (n0, nc) = run.columns;
            let mut acc: Option<ValueId> = None;
            for &(k0, kc) in &run.k_blocks {
                let w_blk: Vec<f32> = (0..mg)
                    .flat_map(|r| wg[r * k + k0..][..kc].iter().copied())
                    .collect();
                let w_blk = b.const_tensor(vec![mg, kc], w_blk)?;
                let x_blk = b.add(
                    Op::Slice {
                        start: vec![0, g * k + k0, n0],
                        size: vec![batch, kc, nc],
                        stride: vec![1, 1, 1],
                    },
                    &[col],
                )?;
                let part = matmul_nd(b, w_blk, x_blk, fma.clone())?;
                acc = Some(match acc {
                    None => part,
                    Some(sum) => b.binary(BinaryOp::Add, part, sum)?,
                });
            }
            columns.extend(acc);
        }
        groups.push(b.concat(&columns, 2)?);
    }
    let mut y = b.concat(&groups, 1)?;
    if let Some(bias) = bias {
        let bias = b.reshape(bias, vec![1, o, 1])?;
        y = b.binary(BinaryOp::Add, y, bias)?;
    }
    let y = b.reshape(y, vec![batch, o, oh, ow])?;
    from_2d(b, y, one_d).map(Some)
}

/// A convolution of one group whose pixels all share one sequence of `k` blocks, computed as
/// CONV2Ds with [`ConvAttrs::fma`] (no im2col): their chain over `(c, ky, kx)` is MLAS's over
/// `k = c·kh·kw + ky·kw + kx`, padding included (im2col reads 0.0 there, as they do).
struct DirectConv<'w> {
    /// NCHW input.
    x: ValueId,
    /// OIHW weights.
    weights: &'w [f32],
    out_channels: usize,
    /// `[kh, kw]`.
    kernel: [usize; 2],
    attrs: ConvAttrs,
}

/// A sum of products of two values of at least `2^-100` in magnitude never rounds a nonzero
/// exact value to zero (see [`DirectConv::build`]).
const NO_UNDERFLOW: f64 = 1.0 / (1u128 << 100) as f64;

impl DirectConv<'_> {
    /// One k block: a single CONV2D with the bias (`-0.0`, the exact identity of addition,
    /// when there is none), bit-exact with MLAS for any input. Several blocks: block `[k0,
    /// k0 + kc)` is a CONV2D over the channels holding it with the weights of other `k` set
    /// to 0, its result added to the blocks before it (`C = block + C`), the bias last. A
    /// zeroed tap adds `x·0 = ±0` to the chain, which leaves it unchanged unless `x` is not
    /// finite or the chain holds -0.0; so blocks need `input` (finite values) and weights
    /// such that every product is 0 or at least `2^-100`: an exact sum of such terms and of
    /// f32 values is 0 or at least 2^-149 in magnitude (it is a multiple of the smaller of
    /// their ulps), so no rounding reaches -0.0 (and an exact zero rounds to +0.0). `None`
    /// when blocks are needed and that does not hold.
    fn build(
        &self,
        b: &mut Builder,
        k_blocks: &[Span],
        bias: Option<ValueId>,
        input: Option<Magnitudes>,
    ) -> NResult<Option<ValueId>> {
        let o = self.out_channels;
        let neg_zero = |b: &mut Builder| b.const_tensor(vec![o], vec![-0.0f32; o]);
        if let [(0, kc)] = k_blocks {
            if *kc != self.weights.len() / o {
                return Ok(None);
            }
            let bias = match bias {
                Some(v) => v,
                None => neg_zero(b)?,
            };
            let w = self.weight_block(b, 0, self.channels(), (0, *kc))?;
            return b
                .add(Op::Conv2d(self.attrs.clone()), &[self.x, w, bias])
                .map(Some);
        }
        let min_w = self
            .weights
            .iter()
            .filter(|w| **w != 0.0)
            .fold(f64::INFINITY, |m, w| m.min(f64::from(w.abs())));
        let normal = f64::from(f32::MIN_POSITIVE);
        let safe = input.is_some_and(|i| {
            i.min_nonzero >= normal && min_w >= normal && i.min_nonzero * min_w >= NO_UNDERFLOW
        }) && self.weights.iter().all(|w| w.is_finite());
        if !safe {
            return Ok(None);
        }
        let c = self.channels();
        let mut acc: Option<ValueId> = None;
        for &(k0, kc) in k_blocks {
            let taps = self.taps();
            let (lo, hi) = (k0 / taps, (k0 + kc).div_ceil(taps));
            // A block over most channels reads the whole input (zero weights on the rest)
            // rather than a copy of its channels.
            let (lo, hi) = if (hi - lo) * 4 >= c * 3 {
                (0, c)
            } else {
                (lo, hi)
            };
            let x = if (lo, hi) == (0, c) {
                self.x
            } else {
                b.slice_axis(self.x, 1, lo, hi - lo, 1)?
            };
            let w = self.weight_block(b, lo, hi, (k0, kc))?;
            let zero = neg_zero(b)?;
            let part = b.add(Op::Conv2d(self.attrs.clone()), &[x, w, zero])?;
            acc = Some(match acc {
                None => part,
                Some(sum) => b.binary(BinaryOp::Add, part, sum)?,
            });
        }
        let Some(mut y) = acc else {
            return Ok(None);
        };
        if let Some(bias) = bias {
            let bias = b.reshape(bias, vec![1, o, 1, 1])?;
            y = b.binary(BinaryOp::Add, y, bias)?;
        }
        Ok(Some(y))
    }

    fn channels(&self) -> usize {
        self.weights.len() / (self.out_channels * self.taps())
    }

    /// `kh·kw`.
    fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    /// The weights of input channels `lo..hi` (OIHW), those outside `k` block `(k0, kc)` zero.
    fn weight_block(
        &self,
        b: &mut Builder,
        lo: usize,
        hi: usize,
        (k0, kc): Span,
    ) -> NResult<ValueId> {
        let (c, taps) = (self.channels(), self.taps());
        let w: Vec<f32> = (0..self.out_channels)
            .flat_map(|m| {
                (lo * taps..hi * taps).map(move |k| {
                    if (k0..k0 + kc).contains(&k) {
                        self.weights[m * c * taps + k]
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let [kh, kw] = self.kernel;
        b.const_tensor(vec![self.out_channels, hi - lo, kh, kw], w)
    }
}

/// A pointwise (1×1, unit stride, unpadded) convolution computed channels-last: `C^T[n, m] =
/// col^T[n, k] · W^T[k, m]` per group on the input read as `[B, H·W, C]`. Each output element is
/// the same FMA chain over the same `k` blocks as MLAS's `C = W · col` (the chain of one element
/// does not depend on how the others are laid out, and `fma(a, b, c) = fma(b, a, c)`), so the
/// value is bit for bit MLAS's. The layout conversions at both ends are plain transposes, which
/// the rewriter cancels against those of channels-last neighbours (the int8 convolutions of a
/// QDQ model run NHWC; the float 1×1 convolutions onnxruntime leaves between them then need no
/// conversion at all).
fn pointwise_channels_last(
    b: &mut Builder,
    x4: ValueId,
    weights: &[f32],
    bias: Option<ValueId>,
    runs: &[ColumnRun],
    group: usize,
    fma: MatMulAttrs,
) -> NResult<ValueId> {
    let s4 = b.shape(x4);
    let (batch, c, h, wd) = (s4[0], s4[1], s4[2], s4[3]);
    let (n, k) = (h * wd, c / group);
    let mg = weights.len() / (group * k);
    let nhwc = b.transpose(x4, vec![0, 2, 3, 1])?;
    let rows = b.reshape(nhwc, vec![batch, n, c])?;
    let mut groups = Vec::with_capacity(group);
    for g in 0..group {
        let wg = &weights[g * mg * k..][..mg * k];
        let mut columns = Vec::with_capacity(runs.len());
        for run in runs {
            let (n0, nc) = run.columns;
            let mut acc: Option<ValueId> = None;
            for &(k0, kc) in &run.k_blocks {
                // W^T of this block: element [i, r] is W[r, k0 + i].
                let w_blk: Vec<f32> = (0..kc)
                    .flat_map(|i| (0..mg).map(move |r| wg[r * k + k0 + i]))
                    .collect();
                let w_blk = b.const_tensor(vec![kc, mg], w_blk)?;
                let x_blk = b.add(
                    Op::Slice {
                        start: vec![0, n0, g * k + k0],
                        size: vec![batch, nc, kc],
                        stride: vec![1, 1, 1],
                    },
                    &[rows],
                )?;
                let part = matmul_nd(b, x_blk, w_blk, fma.clone())?;
                acc = Some(match acc {
                    None => part,
                    Some(sum) => b.binary(BinaryOp::Add, part, sum)?,
                });
            }
            columns.extend(acc);
        }
        groups.push(b.concat(&columns, 1)?);
    }
    let mut y = b.concat(&groups, 2)?;
    if let Some(bias) = bias {
        let bias = b.reshape(bias, vec![1, 1, mg * group])?;
        y = b.binary(BinaryOp::Add, y, bias)?;
    }
    let y = b.reshape(y, vec![batch, h, wd, mg * group])?;
    b.transpose(y, vec![0, 3, 1, 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_follows_mlas() {
        // One chain when k fits a stride.
        assert_eq!(strides(3136, 96), (128, 128));
        assert_eq!(strides(1024, 27), (512, 32));
        // Deep and narrow: k strides grow, n strides shrink to 16 at most.
        assert_eq!(strides(49, 960), (64, 256));
        let b = conv_blocks(64, 1024, 144, false).unwrap();
        // Segmented: n blocks of 128, k blocks 128 + 16 each.
        assert_eq!(b.len(), 16);
        assert_eq!(
            b[0],
            Block {
                n: (0, 128),
                k: (0, 128)
            }
        );
        assert_eq!(
            b[1],
            Block {
                n: (0, 128),
                k: (128, 16)
            }
        );
        let runs = column_runs(&b);
        assert_eq!(
            runs,
            vec![ColumnRun {
                columns: (0, 1024),
                k_blocks: vec![(0, 128), (128, 16)]
            }]
        );
        // Single-row and single-column SGEMMs take other kernels.
        assert!(conv_blocks(1, 100, 9, false).is_none());
        assert!(conv_blocks(16, 1, 9, true).is_none());
    }
}
