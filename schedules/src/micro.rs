//! Sketches for targets with micro-kernels: the register tile of a convolution or matmul is a
//! tensorized region (see `kiln_tir::tensorize`), sized for the target's vector registers.
//!
//! Invariant: a tensorized sketch either records a complete trace (output tiled by dividing
//! factors, the anchor reduction computed in the tile with its reduction loops outside the tile
//! loops, its constant operand along the tile columns packed into panels of the tile's width,
//! the tile loop tensorized, the outer loops parallel) or leaves the recorder exactly as it
//! found it, so the caller falls back to the Cranelift sketch. Tiles always divide the axes
//! they split, so no tensorized region contains a tail guard.

use crate::sketch::{output_is_channels_last, Recorder};
use kiln_tir::{BufferId, ComputeDag, Instruction, IterKind, TensorIntrinsic};
use serde::{Deserialize, Serialize};

/// What sketches know about the machine they schedule for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SketchTarget {
    /// The shape of the target's micro-kernels; `None` when it has none (the sketches then
    /// schedule for Cranelift's 128-bit vector code).
    pub microkernels: Option<MicroShape>,
}

/// The register file the target's micro-kernels tile for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MicroShape {
    /// f32 lanes per vector register.
    pub lanes: usize,
    /// Vector registers.
    pub registers: usize,
    /// The target has 8-bit integer contraction kernels (dot products of byte quadruples and
    /// depthwise tiles: x86-64 with AVX2 or AVX-512, aarch64 NEON).
    #[serde(default)]
    pub int8: bool,
    /// The f32 kernels' epilogues may convert into an integer output (a quantisation fused
    /// after a float convolution: x86-64).
    #[serde(default)]
    pub converting: bool,
    /// Elementwise loops of at least [`crate::sketch::POINTWISE_MIN`] elements run as calls of
    /// pointwise micro-kernels, a whole register wide (x86-64), so the sketch vectorizes them
    /// in long runs.
    #[serde(default)]
    pub pointwise: bool,
}

/// Most tile rows ever chosen by default (longer rows add little once loads are amortised).
const MAX_ROWS: usize = 14;
/// Scratch registers the micro-kernels keep besides accumulators and hoisted operands.
const SCRATCH: usize = 2;
/// Bytes after which the set index of the L1 data cache repeats: 64 sets of 64-byte lines, as
/// every x86-64 core of the last decade has (32 KiB 8-way, 48 KiB 12-way).
const L1_ALIAS_BYTES: u64 = 4096;
/// Most tile rows whose operand lines may share one L1 set. A micro-kernel keeps one line per
/// tile row live through the reduction; rows whose operands lie a multiple of
/// [`L1_ALIAS_BYTES`] apart all map to one set, and more of them than its ways evict each other
/// at every step (ResNet-50's 1x1 convolutions over 1,024 channels, 4 KiB per pixel: 14-row
/// tiles ran at 45% of the FMA peak on Zen 4, 7-row tiles at 96%).
const ROWS_PER_L1_SET: usize = 7;

impl MicroShape {
    /// Most tile rows that keep a tile of `vecs` vectors per row, one hoisted operand row and
    /// the scratch registers in the register file.
    pub fn max_rows(&self, vecs: usize) -> usize {
        (self.registers.saturating_sub(vecs + SCRATCH) / vecs.max(1)).clamp(1, MAX_ROWS)
    }

    /// The default column tile (output channels, matmul columns) for an axis of `n`: among its
    /// divisors up to four vectors, the best lane utilisation times load/fma balance, then two
    /// vectors, three, one, four.
    pub fn cols_for(&self, n: usize) -> usize {
        let l = self.lanes;
        let rank = |vecs: usize| match vecs {
            2 => 0,
            3 => 1,
            1 => 2,
            _ => 3,
        };
        (1..=n.min(4 * l))
            .filter(|d| n.is_multiple_of(*d))
            .map(|d| {
                let vecs = d.div_ceil(l);
                let rows = self.max_rows(vecs);
                let util = d as f64 / (vecs * l) as f64;
                let fmas = (rows * vecs) as f64;
                let balance = fmas / fmas.max((rows + vecs) as f64);
                (util * balance, std::cmp::Reverse(rank(vecs)), d)
            })
            .max_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal))
            .map_or(n.min(l), |(_, _, d)| d)
    }

    /// The default row tile for an axis of `m` under a column tile of `cols`, the tile rows'
    /// operand `row_bytes` apart (when known): as few tiles as the register file and the L1
    /// sets allow (see [`ROWS_PER_L1_SET`]), of equal rows where a divisor of `m` gives that
    /// many tiles, else balanced (`ceil(m / tiles)` rows, the last tile ragged: a micro-kernel
    /// of its own).
    pub fn rows_for(&self, m: usize, cols: usize, row_bytes: Option<i64>) -> usize {
        let most = self
            .max_rows(cols.div_ceil(self.lanes))
            .min(l1_set_rows(row_bytes))
            .min(m)
            .max(1);
        let balanced = m.div_ceil(m.div_ceil(most));
        (balanced..=most)
            .find(|d| m.is_multiple_of(*d))
            .unwrap_or(balanced)
    }
}

/// Most tile rows `row_bytes` apart that keep [`ROWS_PER_L1_SET`] or fewer in any L1 set.
fn l1_set_rows(row_bytes: Option<i64>) -> usize {
    let Some(s) = row_bytes.map(i64::unsigned_abs) else {
        return usize::MAX;
    };
    // Rows on one line, or not line-aligned (their lines drift through the sets): no limit.
    if s == 0 || !s.is_multiple_of(64) {
        return usize::MAX;
    }
    let sets = L1_ALIAS_BYTES / 64;
    let step = (s / 64) % sets;
    let distinct = if step == 0 { 1 } else { sets / gcd(step, sets) };
    ROWS_PER_L1_SET * distinct as usize
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The largest byte stride along `axis` of anchor `a` among its f32 loads of computed (not
/// constant) tensors: how far apart the activations of two tile rows lie.
fn row_bytes(dag: &ComputeDag, a: BufferId, axis: usize) -> Option<i64> {
    let stage = dag.stage(a)?;
    let var = stage.axes.get(axis)?.var;
    let mut most: Option<i64> = None;
    stage.body.walk(&mut |e| {
        if let kiln_tir::Expr::Load { buf, indices } = e {
            if let Some(t) = dag.tensor(*buf).filter(|t| !t.constant) {
                if let Some(s) = kiln_tir::linear_stride(&t.shape, indices, var) {
                    let bytes = s.saturating_mul(4);
                    if most.is_none_or(|m| bytes.abs() > m.abs()) {
                        most = Some(bytes);
                    }
                }
            }
        }
    });
    most
}

/// Runs `f` on the recorder; when it returns `false`, restores the recorder to its state
/// before.
fn transaction(r: &mut Recorder, f: impl FnOnce(&mut Recorder) -> bool) -> bool {
    let saved = r.checkpoint();
    let ok = f(r);
    if !ok {
        r.restore(saved);
    }
    ok
}

/// The tile `(rows, cols)` for a `m x n` output of anchor `a` whose rows run along its axis
/// `row_axis`: knobs first, else the defaults; `None` when the column knob does not divide its
/// axis or the row knob exceeds its axis (rows need not divide theirs: the last tile is ragged).
fn tile(
    r: &Recorder,
    shape: MicroShape,
    (a, row_axis): (BufferId, usize),
    m: usize,
    n: usize,
) -> Option<(usize, usize)> {
    let cols = r.knobs.vector_tile.unwrap_or_else(|| shape.cols_for(n));
    let rows = r
        .knobs
        .row_tile
        .unwrap_or_else(|| shape.rows_for(m, cols, row_bytes(r.dag, a, row_axis)));
    (cols > 0 && rows > 0 && n.is_multiple_of(cols) && rows <= m).then_some((rows, cols))
}

/// Packs the constant operand of anchor `a` that runs along its output axis `axis` (the
/// weights: their last dimension is that axis) into panels of `cols` columns, outer part first,
/// so that a micro-kernel streams each panel contiguously. Nothing to pack is no failure.
/// With `group`, the weights' second-to-last dimension (the reduction's input channels or
/// `k`) in groups of that many, placed innermost (int8 dot-product quadruples).
fn pack_panel(
    r: &mut Recorder,
    a: BufferId,
    axis: usize,
    cols: usize,
    group: Option<usize>,
) -> bool {
    let dag = r.dag;
    let Some((buf, rank)) = constant_panel(r, a, axis) else {
        return true;
    };
    let Some(name) = dag.tensor(buf).map(|t| t.name.clone()) else {
        return true;
    };
    r.apply(Instruction::Pack {
        buffer: name,
        axis: rank - 1,
        factor: cols,
        outer_first: true,
        group: group.filter(|_| rank >= 2).map(|q| (rank - 2, q)),
    });
    true
}

fn tensorize(r: &mut Recorder, stage: &str, loop_: &str) -> bool {
    r.apply(Instruction::Tensorize {
        stage: stage.into(),
        loop_: loop_.into(),
        intrinsic: TensorIntrinsic::Contraction,
    })
}

/// A channels-last convolution anchor `a` (`*_conv_nhwc`, direct or depthwise) under a
/// channels-last output `o`: `n, oc.o, oh, ow.o | ow.i x oc.i` (with `attach_outer`: `n, oh,
/// ow.o, oc.o | ...`) with the anchor computed at the last outer loop (reduction loops `ry, rx, rc`, the
/// input's contiguous channels innermost; an fma chain keeps its `rc, ry, rx`) and that loop
/// tensorized.
pub(crate) fn conv_nhwc(r: &mut Recorder, shape: MicroShape, o: BufferId, a: BufferId) -> bool {
    let dag = r.dag;
    let Some(t) = dag.tensor(o) else {
        return false;
    };
    if t.shape.len() != 4
        || !output_is_channels_last(dag, a)
        || !epilogue_fits_registers(dag, a, o, shape)
    {
        return false;
    }
    let (ow, oc) = (t.shape[2], t.shape[3]);
    // An 8-bit integer anchor (an i32 accumulator) tensorizes only on targets with integer
    // kernels: a direct convolution whose input channels come in quadruples (dot products of
    // quadruples), or a depthwise one (no channel reduction: lanes times lanes).
    let int8 = dag
        .tensor(a)
        .is_some_and(|t| t.dtype == kiln_ir::DType::I32);
    let channels = channel_reduction(r, a);
    let quads = int8 && channels.is_some_and(|c| c.is_multiple_of(4));
    if int8 && !(shape.int8 && (quads || channels.is_none())) {
        return false;
    }
    let Some((rows, cols)) = tile(r, shape, (a, 2), ow, oc) else {
        return false;
    };
    let oname = t.name.clone();
    let aname = dag.tensor(a).map(|t| t.name.clone()).unwrap_or_default();
    // Channel blocks outside the pixels (a weight panel stays in cache while the image
    // streams), or, with `attach_outer`, inside them (every pixel's channels are read
    // contiguously; measured no faster for mobilenet_v2's depthwise convolutions).
    let channels_inner = r.knobs.attach_outer.unwrap_or(false);
    let (order, at) = if channels_inner {
        (["i0", "i1", "i2.0", "i3.0", "i2.1", "i3.1"], "i3.0")
    } else {
        (["i0", "i3.0", "i1", "i2.0", "i2.1", "i3.1"], "i2.0")
    };
    transaction(r, |r| {
        if !r.split(&oname, "i3", cols) || !r.split(&oname, "i2", rows) {
            return false;
        }
        if !r.reorder(&oname, &order.map(String::from)) {
            return false;
        }
        if r.attach_anchor(&aname, &oname, at.into()).is_none() {
            return false;
        }
        // Integer kernels take the input channels four at a time (one dword per step).
        if quads && !r.split(&aname, "rc", 4) {
            return false;
        }
        // The taps outside the channels (weights and a pixel's input channels stream) unless
        // the anchor is an fma chain, whose order (`rc, ry, rx`) is its meaning.
        let order = if fma_chain(dag, a) {
            ["rc", "rc.0", "rc.1", "ry", "rx"]
        } else {
            ["ry", "rx", "rc", "rc.0", "rc.1"]
        };
        let reduce: Vec<String> = order
            .iter()
            .filter(|n| {
                r.loops(&aname)
                    .iter()
                    .any(|l| l.0 == **n && l.1 == IterKind::Reduce)
            })
            .map(|n| n.to_string())
            .collect();
        if reduce.len() > 1 && !r.reorder(&aname, &reduce) {
            return false;
        }
        pack_panel(r, a, 3, cols, quads.then_some(4));
        if !tensorize(r, &oname, at) {
            return false;
        }
        r.parallel_outer(&oname);
        true
    })
}

/// Whether stage `a` accumulates as one fma chain in the order of its reduce axes.
fn fma_chain(dag: &ComputeDag, a: BufferId) -> bool {
    dag.stage(a)
        .and_then(|s| s.reduction.as_ref())
        .is_some_and(|r| r.fused_multiply_add)
}

/// The extent of anchor `a`'s reduction over input channels (`rc`: a direct convolution;
/// `None` for a depthwise one).
fn channel_reduction(r: &Recorder, a: BufferId) -> Option<usize> {
    let name = r.dag.tensor(a).map(|t| t.name.clone())?;
    r.loops(&name)
        .iter()
        .find(|l| l.0 == "rc" && l.1 == IterKind::Reduce)
        .map(|l| l.2)
}

/// The constant placeholder stage `a` reads with axis `axis`'s variable as its last index and
/// nowhere else (the weight panel a micro-kernel streams), with its rank.
fn constant_panel(r: &Recorder, a: BufferId, axis: usize) -> Option<(BufferId, usize)> {
    let dag = r.dag;
    let col_var = dag.stage(a)?.axes.get(axis)?.var;
    let mut found = None;
    dag.stage(a)?.body.walk(&mut |e| {
        if let kiln_tir::Expr::Load { buf, indices } = e {
            let last = indices.last() == Some(&kiln_tir::Expr::Var(col_var));
            let elsewhere = indices[..indices.len().saturating_sub(1)]
                .iter()
                .any(|i| i.any(&|x| *x == kiln_tir::Expr::Var(col_var)));
            if last && !elsewhere && dag.tensor(*buf).is_some_and(|t| t.constant) {
                found = Some((*buf, indices.len()));
            }
        }
    });
    found
}

/// Whether matmul stage `stage` reduces over `k` in a multiple of 4 (int8 quadruples).
fn k_in_quads(r: &Recorder, stage: &str) -> bool {
    r.loops(stage)
        .iter()
        .any(|l| l.0 == "k" && l.1 == IterKind::Reduce && l.2.is_multiple_of(4))
}

/// The outer tile loops of a `[B, M, N]` matmul, outermost first: row tiles `i1.0` outside
/// column panels `i2.0`, or the panels outside (each panel stays in cache while the rows
/// stream) when [`crate::Knobs::attach_outer`] asks or when one row tile covers `M` (a
/// matrix-vector product: the panels are its only parallelism).
fn tile_loop_order(r: &Recorder, m: usize, rows: usize) -> (&'static str, &'static str) {
    if r.knobs.attach_outer.unwrap_or(m <= rows) {
        ("i2.0", "i1.0")
    } else {
        ("i1.0", "i2.0")
    }
}

/// A matmul anchor `a` under an elementwise output `o` (`[B, M, N]`): `b, i.o, j.o | i.i x j.i`
/// (or `j.o` outside `i.o` when [`crate::Knobs::attach_outer`] asks for the weight panel to
/// stay in cache), the anchor computed at the inner outer loop with `k` outside the tile, and
/// that loop tensorized.
pub(crate) fn matmul(r: &mut Recorder, shape: MicroShape, o: BufferId, a: BufferId) -> bool {
    let dag = r.dag;
    let Some(t) = dag.tensor(o) else {
        return false;
    };
    if !epilogue_fits_registers(dag, a, o, shape) {
        return false;
    }
    if t.shape.len() != 3 {
        return false;
    }
    let (m, n) = (t.shape[1], t.shape[2]);
    let Some((rows, cols)) = tile(r, shape, (a, 1), m, n) else {
        return false;
    };
    let oname = t.name.clone();
    let aname = dag.tensor(a).map(|t| t.name.clone()).unwrap_or_default();
    // An 8-bit integer matmul (an i32 accumulator) takes `k` four at a time against weights
    // packed in quadruples, on targets with integer kernels.
    let int8 = dag
        .tensor(a)
        .is_some_and(|t| t.dtype == kiln_ir::DType::I32);
    let quads = int8 && k_in_quads(r, &aname);
    if int8 && !(shape.int8 && quads) {
        return false;
    }
    // The integer kernels read weights packed in quadruples, which only a constant can be
    // (packed when the kernel is compiled): a product of two activations takes another sketch.
    if quads && constant_panel(r, a, 2).is_none() {
        return false;
    }
    let (first, second) = tile_loop_order(r, m, rows);
    transaction(r, |r| {
        if !r.split(&oname, "i1", rows) || !r.split(&oname, "i2", cols) {
            return false;
        }
        let order = ["i0", first, second, "i1.1", "i2.1"].map(String::from);
        if !r.reorder(&oname, &order) || r.attach_anchor(&aname, &oname, second.into()).is_none() {
            return false;
        }
        if quads && !r.split(&aname, "k", 4) {
            return false;
        }
        pack_panel(r, a, 2, cols, quads.then_some(4));
        if !tensorize(r, &oname, second) {
            return false;
        }
        r.parallel_outer(&oname);
        true
    })
}

/// True when every stage but the anchor `a` calls only intrinsics a micro-kernel epilogue
/// computes in registers ([`kiln_tir::tensorize::EPILOGUE_CALLS`]) and, for an f32 anchor,
/// neither converts nor writes a non-f32 output `o` unless the target's epilogues convert; an
/// `erf` (GELU) or `tanh` epilogue does not fit, and the matmul then runs tensorized at root
/// with the epilogue as a loop.
pub(crate) fn epilogue_fits_registers(
    dag: &ComputeDag,
    a: BufferId,
    o: BufferId,
    shape: MicroShape,
) -> bool {
    let dtype = |b: BufferId| dag.tensor(b).map(|t| t.dtype);
    let float = dtype(a) == Some(kiln_ir::DType::F32);
    if float && dtype(o) != Some(kiln_ir::DType::F32) && !shape.converting {
        return false;
    }
    let mut fits = true;
    for (i, t) in dag.tensors().iter().enumerate() {
        let Some(stage) = t.stage.as_ref().filter(|_| i != a.index()) else {
            continue;
        };
        stage.body.walk(&mut |e| match e {
            kiln_tir::Expr::Call { intrinsic, .. } => {
                fits &= kiln_tir::tensorize::EPILOGUE_CALLS.contains(intrinsic);
            }
            // A quantise-dequantise round trip after a float anchor converts in its epilogue.
            kiln_tir::Expr::Cast { .. } => fits &= !float || shape.converting,
            _ => {}
        });
    }
    fits
}

/// A matmul that is itself the output: tiled like [`matmul`], accumulating in a
/// `cache_write` tile, the inner outer loop tensorized.
pub(crate) fn matmul_root(r: &mut Recorder, shape: MicroShape, o: BufferId) -> bool {
    let dag = r.dag;
    let Some(t) = dag.tensor(o) else {
        return false;
    };
    if t.shape.len() != 3 {
        return false;
    }
    let (m, n) = (t.shape[1], t.shape[2]);
    let Some((rows, cols)) = tile(r, shape, (o, 1), m, n) else {
        return false;
    };
    let name = t.name.clone();
    let (first, second) = tile_loop_order(r, m, rows);
    // 8-bit integers: `k` four at a time against weights packed in quadruples (see `matmul`).
    let int8 = t.dtype == kiln_ir::DType::I32;
    let quads = int8 && k_in_quads(r, &name);
    if int8 && !(shape.int8 && quads) {
        return false;
    }
    if quads && constant_panel(r, o, 2).is_none() {
        return false;
    }
    transaction(r, |r| {
        if !r.split(&name, "i1", rows) || !r.split(&name, "i2", cols) {
            return false;
        }
        if quads && !r.split(&name, "k", 4) {
            return false;
        }
        let reduce: &[&str] = if quads { &["k.0", "k.1"] } else { &["k"] };
        let order: Vec<String> = ["i0", first, second]
            .iter()
            .chain(reduce)
            .chain(&["i1.1", "i2.1"])
            .map(|s| s.to_string())
            .collect();
        pack_panel(r, o, 2, cols, quads.then_some(4));
        if !r.reorder(&name, &order)
            || !r.apply(Instruction::CacheWrite {
                stage: name.clone(),
            })
            || !tensorize(r, &name, second)
        {
            return false;
        }
        r.parallel_outer(&name);
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVX512: MicroShape = MicroShape {
        lanes: 16,
        registers: 32,
        int8: false,
        converting: true,
        pointwise: true,
    };
    const AVX2: MicroShape = MicroShape {
        lanes: 8,
        registers: 16,
        int8: false,
        converting: false,
        pointwise: true,
    };

    #[test]
    fn column_tiles_prefer_two_full_vectors_then_lane_utilisation() {
        assert_eq!(AVX512.cols_for(64), 32);
        assert_eq!(AVX512.cols_for(96), 32);
        assert_eq!(AVX512.cols_for(144), 48);
        assert_eq!(AVX512.cols_for(24), 24);
        assert_eq!(AVX512.cols_for(1000), 40);
        assert_eq!(AVX2.cols_for(64), 16);
        assert_eq!(AVX2.cols_for(24), 24);
        assert_eq!(AVX2.cols_for(3), 3);
    }

    #[test]
    fn row_tiles_are_few_fit_the_registers_and_divide_where_that_costs_no_tile() {
        assert_eq!(AVX512.max_rows(2), 14);
        assert_eq!(AVX2.max_rows(2), 6);
        assert_eq!(AVX512.rows_for(112, 32, None), 14);
        assert_eq!(AVX512.rows_for(7, 32, None), 7);
        // 3 tiles of at most 14 rows: 11, 11, 10.
        assert_eq!(AVX512.rows_for(32, 32, None), 11);
        // 4 tiles (14, 14, 14, 13) rather than the divisor 11's 5.
        assert_eq!(AVX512.rows_for(55, 32, None), 14);
        // 2 tiles of at most 9 (three vectors): 7 and 6.
        assert_eq!(AVX512.max_rows(3), 9);
        assert_eq!(AVX512.rows_for(13, 48, None), 7);
        // 10 tiles of at most 6: 6 rows, a tail of 2.
        assert_eq!(AVX2.rows_for(56, 16, None), 6);
        // 3 tiles: 5, 5, 3.
        assert_eq!(AVX2.rows_for(13, 16, None), 5);
        assert_eq!(AVX2.rows_for(12, 16, None), 6);
        assert_eq!(AVX2.rows_for(1, 16, None), 1);
    }

    #[test]
    fn rows_whose_operands_share_an_l1_set_are_at_most_seven() {
        // 1,024 channels of f32 per pixel: every row's line maps to one set.
        assert_eq!(AVX512.rows_for(14, 32, Some(4096)), 7);
        assert_eq!(AVX512.rows_for(28, 32, Some(-8192)), 7);
        // 56 rows: 8 tiles of 7 (a divisor).
        assert_eq!(AVX512.rows_for(56, 32, Some(4096)), 7);
        // Two sets (2 KiB apart), or lines drifting through the sets: the registers decide.
        assert_eq!(AVX512.rows_for(14, 32, Some(2048)), 14);
        assert_eq!(AVX512.rows_for(14, 32, Some(3840)), 14);
        assert_eq!(AVX512.rows_for(14, 32, Some(4100)), 14);
        // Rows on one line (a broadcast operand).
        assert_eq!(AVX512.rows_for(14, 32, Some(0)), 14);
        assert_eq!(l1_set_rows(Some(4096 * 3)), 7);
        assert_eq!(l1_set_rows(Some(1024)), 28);
    }
}
