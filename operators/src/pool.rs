//! AVG_POOL2D and MAX_POOL2D over NCHW input, with padding, dilation and `ceil_mode`.
//!
//! Invariant: windows never read padding. MAX_POOL2D takes the maximum of the window positions
//! inside the input (NaN propagates; a window with none gives -inf, or the dtype minimum for
//! integers). AVG_POOL2D sums those positions in f32 and divides by their count, or, with
//! `count_include_pad`, by the count of positions inside the padded input (positions that
//! `ceil_mode` adds past the bottom/right padding never count); an empty count gives NaN.

use crate::conv::valid_range;
use crate::util::{fail_named, float_data, float_vec, is_nan};
use crate::OpError;
use kiln_ir::op::PoolAttrs;
use kiln_ir::{Element, Tensor, TensorData, TensorType};

/// For each output position along one axis: the kernel taps `[lo, hi)` inside the input, and the
/// number of taps inside the padded input.
fn axis_taps(p: &PoolAttrs, ax: usize, input: usize, out: usize) -> Vec<(usize, usize, usize)> {
    let (k, s, d) = (p.kernel[ax], p.stride[ax], p.dilation[ax]);
    let before = p.pad[2 * ax] as isize;
    let padded_end = input as isize + p.pad[2 * ax + 1] as isize;
    (0..out)
        .map(|o| {
            let start = (o * s) as isize - before;
            let (lo, hi) = valid_range(start, d, input, k);
            let padded = (0..k)
                .filter(|&t| {
                    start + (t * d) as isize >= -before && start + ((t * d) as isize) < padded_end
                })
                .count();
            (lo, hi, padded)
        })
        .collect()
}

struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    rows: Vec<(usize, usize, usize)>,
    cols: Vec<(usize, usize, usize)>,
    dy: usize,
    dx: usize,
    sy: usize,
    sx: usize,
    pt: usize,
    pl: usize,
}

fn geometry(p: &PoolAttrs, x: &Tensor, out: &TensorType) -> Geometry {
    let s = x.shape();
    let (oh, ow) = (out.shape[2], out.shape[3]);
    Geometry {
        n: s[0],
        c: s[1],
        h: s[2],
        w: s[3],
        oh,
        ow,
        rows: axis_taps(p, 0, s[2], oh),
        cols: axis_taps(p, 1, s[3], ow),
        dy: p.dilation[0],
        dx: p.dilation[1],
        sy: p.stride[0],
        sx: p.stride[1],
        pt: p.pad[0],
        pl: p.pad[2],
    }
}

/// Applies `f(tap reader, row taps, column taps)` to every output position, in row-major order.
type Taps = (usize, usize, usize);

fn pool_map<T: Copy, O>(
    g: &Geometry,
    x: &[T],
    f: impl Fn(&dyn Fn(usize, usize) -> T, Taps, Taps) -> O,
) -> Vec<O> {
    let mut out = Vec::with_capacity(g.n * g.c * g.oh * g.ow);
    let hw = g.h * g.w;
    for pc in 0..g.n * g.c {
        let plane = &x[pc * hw..(pc + 1) * hw];
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let at = |ty: usize, tx: usize| {
                    let iy = oy * g.sy + ty * g.dy - g.pt;
                    let ix = ox * g.sx + tx * g.dx - g.pl;
                    plane[iy * g.w + ix]
                };
                out.push(f(&at, g.rows[oy], g.cols[ox]));
            }
        }
    }
    out
}

fn max_vec<T: Element>(g: &Geometry, x: &[T], empty: T) -> Vec<T> {
    pool_map(g, x, |at, (ylo, yhi, _), (xlo, xhi, _)| {
        let mut best: Option<T> = None;
        for ty in ylo..yhi {
            for tx in xlo..xhi {
                let v = at(ty, tx);
                best = match best {
                    Some(b) if is_nan(&b) || !(v > b || is_nan(&v)) => Some(b),
                    _ => Some(v),
                };
            }
        }
        best.unwrap_or(empty)
    })
}

/// MAX_POOL2D.
pub fn max_pool(p: &PoolAttrs, x: &Tensor, out: &TensorType) -> Result<TensorData, OpError> {
    let g = geometry(p, x, out);
    Ok(match x.data() {
        TensorData::F32(v) => TensorData::F32(max_vec(&g, v, f32::NEG_INFINITY)),
        TensorData::F16(v) => TensorData::F16(max_vec(&g, v, half::f16::NEG_INFINITY)),
        TensorData::I8(v) => TensorData::I8(max_vec(&g, v, i8::MIN)),
        TensorData::U8(v) => TensorData::U8(max_vec(&g, v, u8::MIN)),
        TensorData::I16(v) => TensorData::I16(max_vec(&g, v, i16::MIN)),
        TensorData::I32(v) => TensorData::I32(max_vec(&g, v, i32::MIN)),
        TensorData::I64(v) => TensorData::I64(max_vec(&g, v, i64::MIN)),
        TensorData::F64(v) => TensorData::F64(max_vec(&g, v, f64::NEG_INFINITY)),
        TensorData::BF16(v) => TensorData::BF16(max_vec(&g, v, half::bf16::NEG_INFINITY)),
        TensorData::U16(v) => TensorData::U16(max_vec(&g, v, u16::MIN)),
        TensorData::U32(v) => TensorData::U32(max_vec(&g, v, u32::MIN)),
        TensorData::U64(v) => TensorData::U64(max_vec(&g, v, u64::MIN)),
        TensorData::Bool(_) => return Err(fail_named("max_pool2d", "does not accept bool")),
    })
}

/// AVG_POOL2D (floats only).
pub fn avg_pool(p: &PoolAttrs, x: &Tensor, out: &TensorType) -> Result<TensorData, OpError> {
    let g = geometry(p, x, out);
    let v = float_vec(x.data())
        .ok_or_else(|| fail_named("avg_pool2d", format!("does not accept {}", x.dtype())))?;
    let res = pool_map(&g, &v, |at, (ylo, yhi, py), (xlo, xhi, px)| {
        let mut sum = 0.0f32;
        for ty in ylo..yhi {
            for tx in xlo..xhi {
                sum += at(ty, tx);
            }
        }
        let count = if p.count_include_pad {
            py * px
        } else {
            (yhi - ylo) * (xhi - xlo)
        };
        sum / count as f32
    });
    Ok(float_data(res, x.dtype()))
}
