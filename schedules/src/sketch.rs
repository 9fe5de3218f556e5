//! Default schedules per op class, produced as serialisable [`Trace`]s.
//!
//! Invariant: [`default_schedule`] returns a trace that replays legally on the DAG
//! ([`Trace::apply`]) together with the function [`kiln_tir::lower()`] makes of it; every
//! instruction is checked against the schedule state as it is recorded, and if lowering rejects
//! the whole, simpler traces are tried down to the naive one, so a default schedule always
//! exists and computes what the naive schedule computes.
//!
//! Rules (all stages):
//! * every non-output, non-reduction stage not marked *keep* is inlined;
//! * elementwise / data-movement outputs: the innermost axis is split by the widest of 16, 8, 4
//!   that divides it twice and vectorized, the outermost axis is parallel (fused with the following loops while it has
//!   fewer than 8 iterations);
//! * channels-last conv / depthwise anchors (the operator library's `conv_nhwc` stages, every f32
//!   convolution with constant weights): the NCHW output is tiled
//!   `n, oc.o, oh, ow.o, ow.i(4..7, unrolled), oc.i(8 or 4, vectorized)` and the anchor computed
//!   at `ow.o` into an `ow.i x oc.i` tile held in registers (reduction loops outside the tile,
//!   one-iteration window loops unrolled, channels vectorized); kept `pad` stages run at root;
//! * other conv / depthwise anchors: the output is tiled `n, oc.o, oh, ow.o, oc.i(4),
//!   ow.i(8 or 4)` with the conv reduction computed at `ow.o`, reduction loops outside the
//!   tile loops, the tile's rows unrolled and its `ow` vectorized;
//! * matmul anchors: `b, i.o, j.o, k, i.i(4), j.i(8 or 4)`, the accumulator tile computed at
//!   `j.o` (or `cache_write` when the matmul is itself the output), its row loop unrolled so
//!   that codegen keeps it in registers;
//! * other reductions (pools, reduce, argmax) at root: the innermost divisible spatial axis split
//!   by 16, 8 or 4 (the widest that divides), its inner part moved inside the reduction loops
//!   and vectorized, accumulating in a
//!   `cache_write` vector (kept in registers), the outermost spatial loop parallel.

use crate::micro::{self, MicroShape, SketchTarget};
use kiln_tir::{
    lower, BufferId, ComputeDag, Instruction, IterKind, LowerError, PrimFunc, Schedule, Trace,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The name of the channels-last accumulator stage the operator library gives a float
/// convolution (`*_conv_nhwc`); its sketch differs from other convolutions'.
pub const NHWC_STAGE: &str = "conv_nhwc";

/// The class of a fused group, which picks its default schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpClass {
    Conv,
    Depthwise,
    MatMul,
    Pool,
    Reduction,
    Elementwise,
    Movement,
}

/// The decisions a sketch leaves open. `None` takes the hand-written default rule (see the
/// module doc), so `Knobs::default()` is the default schedule; the auto-tuner fills them in
/// (see [`crate::space`]). Every value is legal: a knob that does not fit the DAG (a tile that
/// does not divide, a loop that is not there) makes the sketch skip that step.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
    /// Inner tile of the output's vectorized axis (conv and matmul output channels / columns),
    /// a multiple of 4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector_tile: Option<usize>,
    /// Inner tile of the register-blocked axis (conv output columns or channels, matmul rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row_tile: Option<usize>,
    /// Outer loops are fused into the parallel loop until it has this many iterations; 0 runs
    /// the stage without a parallel loop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_min: Option<usize>,
    /// Unroll the register tile's loop of the output (so the tile stays in registers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unroll_tile: Option<bool>,
    /// Unroll the anchor's one-iteration window loops and tile loops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unroll_window: Option<bool>,
    /// Compute the anchor one loop further out (for a whole row of tiles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_outer: Option<bool>,
    /// Split factor of the vectorized inner loop of elementwise stages and reductions at root
    /// (a multiple of 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inner_vector: Option<usize>,
}

/// Records instructions that apply legally, skipping the others.
pub(crate) struct Recorder<'a> {
    pub(crate) dag: &'a ComputeDag,
    pub(crate) knobs: &'a Knobs,
    sched: Schedule,
    trace: Vec<Instruction>,
}

/// A recorder's state, to return to (see [`Recorder::checkpoint`]).
pub(crate) struct Checkpoint {
    sched: Schedule,
    len: usize,
}

impl<'a> Recorder<'a> {
    /// The current state.
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            sched: self.sched.clone(),
            len: self.trace.len(),
        }
    }

    /// Returns to a state taken by [`Recorder::checkpoint`].
    pub(crate) fn restore(&mut self, c: Checkpoint) {
        self.sched = c.sched;
        self.trace.truncate(c.len);
    }

    fn new(dag: &'a ComputeDag, knobs: &'a Knobs) -> Self {
        Recorder {
            dag,
            knobs,
            sched: Schedule::naive(dag),
            trace: vec![],
        }
    }

    /// Applies `inst` when legal; returns whether it was.
    pub(crate) fn apply(&mut self, inst: Instruction) -> bool {
        let ok = self.sched.apply(self.dag, &inst).is_ok();
        if ok {
            self.trace.push(inst);
        }
        ok
    }

    pub(crate) fn loops(&self, stage: &str) -> Vec<(String, IterKind, usize)> {
        self.sched
            .loops(self.dag, stage)
            .unwrap_or_default()
            .into_iter()
            .map(|l| (l.name, l.kind, l.extent))
            .collect()
    }

    pub(crate) fn split(&mut self, stage: &str, loop_: &str, f: usize) -> bool {
        self.apply(Instruction::Split {
            stage: stage.into(),
            loop_: loop_.into(),
            factors: vec![f],
        })
    }

    pub(crate) fn reorder(&mut self, stage: &str, order: &[String]) -> bool {
        self.apply(Instruction::Reorder {
            stage: stage.into(),
            order: order.to_vec(),
        })
    }

    fn vectorize(&mut self, stage: &str, loop_: &str) -> bool {
        self.apply(Instruction::Vectorize {
            stage: stage.into(),
            loop_: loop_.into(),
        })
    }

    fn parallel(&mut self, stage: &str, loop_: &str) -> bool {
        self.apply(Instruction::Parallel {
            stage: stage.into(),
            loop_: loop_.into(),
        })
    }

    fn fuse(&mut self, stage: &str, loops: &[String]) -> Option<String> {
        let name = format!("{}.fused", loops.join("."));
        self.apply(Instruction::Fuse {
            stage: stage.into(),
            loops: loops.to_vec(),
        })
        .then_some(name)
    }

    /// Parallelises the outermost spatial loop, fused with the following spatial loops while it
    /// has fewer than 8 iterations ([`Knobs::parallel_min`]; the innermost loop is kept unless
    /// the prefix has only 1). By default a kernel with less than [`SERIAL_WORK`] work stays
    /// serial: waking another thread costs more than it saves.
    pub(crate) fn parallel_outer(&mut self, stage: &str) {
        let min_iters = match self.knobs.parallel_min {
            Some(m) => m,
            None if dag_work(self.dag) < SERIAL_WORK => return,
            None => 8,
        };
        if min_iters == 0 {
            return;
        }
        let loops = self.loops(stage);
        let Some((first, kind, ext)) = loops.first().cloned() else {
            return;
        };
        if kind != IterKind::Spatial {
            return;
        }
        let mut prefix = vec![first.clone()];
        let mut total = ext;
        for (i, (name, kind, e)) in loops.iter().enumerate().skip(1) {
            let last = i + 1 == loops.len();
            if total >= min_iters || *kind != IterKind::Spatial || (last && total > 1) {
                break;
            }
            prefix.push(name.clone());
            total *= e;
        }
        let mut target = first;
        while prefix.len() > 1 {
            if let Some(f) = self.fuse(stage, &prefix) {
                target = f;
                break;
            }
            prefix.pop();
        }
        let total = self.loops(stage).first().map_or(1, |l| l.2);
        if total > 1 {
            self.parallel(stage, &target);
        }
    }

    /// Computes the anchor stage `a` at loop `target` of `o`, its reduction loops outside its
    /// spatial (tile) loops, which keep their order; returns the anchor's loops as they were
    /// before the reorder, or `None` when the compute-at is illegal.
    pub(crate) fn attach_anchor(
        &mut self,
        a: &str,
        o: &str,
        target: String,
    ) -> Option<Vec<(String, IterKind, usize)>> {
        let attached = self.apply(Instruction::ComputeAt {
            stage: a.to_string(),
            target_stage: o.to_string(),
            target_loop: target,
        });
        if !attached {
            return None;
        }
        let loops = self.loops(a);
        let order: Vec<String> = [IterKind::Reduce, IterKind::Spatial]
            .iter()
            .flat_map(|&kind| loops.iter().filter(move |l| l.1 == kind))
            .map(|l| l.0.clone())
            .collect();
        self.reorder(a, &order);
        Some(loops)
    }

    fn trace(self) -> Trace {
        Trace(self.trace)
    }
}

/// Names of the stages and whether each is a reduction.
/// Work (see [`dag_work`]) below which a kernel's default schedule stays serial: on the order
/// of 10 µs of compute, what waking a pool thread costs on a loaded machine.
pub const SERIAL_WORK: u64 = 1 << 18;

/// A kernel's work: per stage, its elements times its reduction's extent (multiply-adds for a
/// convolution or matmul, element operations for the rest), summed.
pub fn dag_work(dag: &ComputeDag) -> u64 {
    dag.tensors()
        .iter()
        .filter_map(|t| {
            let stage = t.stage.as_ref()?;
            let elements: u64 = t.shape.iter().map(|&d| d as u64).product();
            let reduce: u64 = stage.reduce_axes.iter().map(|a| a.extent as u64).product();
            Some(elements.saturating_mul(reduce))
        })
        .fold(0, u64::saturating_add)
}

fn stage_name(dag: &ComputeDag, id: BufferId) -> String {
    dag.tensor(id).map(|t| t.name.clone()).unwrap_or_default()
}

pub(crate) fn is_reduction(dag: &ComputeDag, id: BufferId) -> bool {
    dag.stage(id).is_some_and(|s| s.reduction.is_some())
}

/// The full default trace for `target` (before any fallback), see the module doc.
pub fn default_trace(
    dag: &ComputeDag,
    class: OpClass,
    keep: &BTreeSet<BufferId>,
    target: &SketchTarget,
) -> Trace {
    let level = if target.microkernels.is_some() {
        Level::Tensorized
    } else {
        Level::Full
    };
    build(dag, class, keep, level, &Knobs::default(), target)
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Level {
    /// Inline only.
    Inline,
    /// Inline, parallel and vectorized loops, reductions at root.
    Simple,
    /// Everything, including compute_at tiling of anchors.
    Full,
    /// Everything, the register tiles of anchors tensorized for the target's micro-kernels.
    Tensorized,
}

fn build(
    dag: &ComputeDag,
    class: OpClass,
    keep: &BTreeSet<BufferId>,
    level: Level,
    knobs: &Knobs,
    target: &SketchTarget,
) -> Trace {
    let micro = target.microkernels.filter(|_| level == Level::Tensorized);
    let mut r = Recorder::new(dag, knobs);
    let outputs = dag.outputs();
    let ids: Vec<BufferId> = (0..dag.tensors().len())
        .map(|i| BufferId(i as u32))
        .filter(|&id| dag.stage(id).is_some())
        .collect();
    for &id in &ids {
        if !outputs.contains(&id) && !is_reduction(dag, id) && !keep.contains(&id) {
            r.apply(Instruction::ComputeInline {
                stage: stage_name(dag, id),
            });
        }
    }
    if level == Level::Inline {
        return r.trace();
    }
    let mut attached = BTreeSet::new();
    if level >= Level::Full && matches!(class, OpClass::Conv | OpClass::Depthwise | OpClass::MatMul)
    {
        for &o in &outputs {
            let reads = r.sched.effective_reads(dag, o);
            let anchor = reads
                .iter()
                .copied()
                .find(|&t| is_reduction(dag, t) && !outputs.contains(&t));
            if let Some(a) = anchor {
                let matmul_micro = micro.filter(|_| class == OpClass::MatMul);
                if tile_anchor(&mut r, class, o, a, micro) {
                    attached.insert(a);
                    attached.insert(o);
                } else if matmul_micro.is_some_and(|m| micro::matmul_root(&mut r, m, a)) {
                    // An epilogue the micro-kernels cannot compute in registers (GELU's erf):
                    // the matmul runs tensorized into its own buffer, the epilogue as a loop.
                    attached.insert(a);
                }
            } else if class == OpClass::MatMul
                && is_reduction(dag, o)
                && (micro.is_some_and(|m| micro::matmul_root(&mut r, m, o))
                    || matmul_root(&mut r, o))
            {
                attached.insert(o);
            }
        }
    }
    for &id in &ids {
        if attached.contains(&id) {
            continue;
        }
        let inlined = r
            .sched
            .stage(id)
            .is_some_and(|s| s.attach == kiln_tir::Attach::Inline);
        if inlined {
            continue;
        }
        let name = stage_name(dag, id);
        if is_reduction(dag, id) {
            reduction_root(&mut r, &name);
        } else {
            elementwise(&mut r, &name, micro);
        }
    }
    r.trace()
}

/// Splits the innermost loop by 4 ([`Knobs::inner_vector`]) and vectorizes it when divisible
/// (an axis no width divides is vectorized whole: vector chunks and a scalar tail); parallel
/// outer loops.
fn elementwise(r: &mut Recorder, stage: &str, micro: Option<MicroShape>) {
    if transpose_tiles(r, stage) || pointwise_runs(r, stage, micro) {
        return;
    }
    let mut loops = r.loops(stage);
    // An innermost axis too short for a vector (the 3 channels of an image turned
    // channels-last) swaps with the one before it: vectors along that axis, stores strided.
    if loops.len() >= 2 && loops[loops.len() - 1].2 < 4 && loops[loops.len() - 2].2 >= 8 {
        let n = loops.len();
        let mut order: Vec<String> = loops.iter().map(|l| l.0.clone()).collect();
        order.swap(n - 1, n - 2);
        if r.reorder(stage, &order) {
            loops = r.loops(stage);
        }
    }
    let Some((inner, _, ext)) = loops.last().cloned() else {
        return;
    };
    // The widest vector (16, 8 or 4 lanes) that divides the innermost axis: per-vector index
    // arithmetic and guards are shared by more lanes. An axis that is one such vector (the 16
    // channels of a padded copy) is vectorized whole.
    let f = r.knobs.inner_vector.unwrap_or_else(|| {
        [16, 8, 4]
            .into_iter()
            .find(|&w| ext.is_multiple_of(w))
            .unwrap_or(4)
    });
    let mut vec_loop = None;
    if ext == f && loops.len() > 1 {
        vec_loop = Some(inner.clone());
    } else if ext % f == 0 && ext >= 2 * f && r.split(stage, &inner, f) {
        vec_loop = Some(format!("{inner}.1"));
    } else if (ext >= 4 && r.knobs.inner_vector.is_none() || [4, 8, 16].contains(&ext))
        && loops.len() > 1
    {
        // The whole axis as one vectorized loop: chunks of 4 lanes and a scalar tail
        // (rows of 197 attention scores).
        vec_loop = Some(inner);
    }
    r.parallel_outer(stage);
    if let Some(v) = vec_loop {
        r.vectorize(stage, &v);
    }
    unroll_selected_axes(r, stage);
}

/// Elementwise runs shorter than this stay Cranelift's vector code on targets with pointwise
/// micro-kernels (below it a call costs more than the wider vectors save; the code generator's
/// own threshold).
pub const POINTWISE_MIN: usize = 64;

/// On a target with pointwise micro-kernels ([`MicroShape::pointwise`]), an elementwise stage
/// reading only f32 and i32 data into an f32 or 32/8-bit integer output whose innermost axis (merged
/// by the operator library where it could) has at least [`POINTWISE_MIN`] elements is
/// vectorized along that whole axis, one micro-kernel loop per run; when that axis is the only
/// loop of a kernel that runs parallel, it is split into 8 or more runs of a multiple of 16
/// elements, at least [`POINTWISE_MIN`] each, for the threads. Whether it did.
fn pointwise_runs(r: &mut Recorder, stage: &str, micro: Option<MicroShape>) -> bool {
    use kiln_ir::DType;
    if !micro.is_some_and(|m| m.pointwise) || r.knobs.inner_vector.is_some() {
        return false;
    }
    let Some(id) = r.dag.find(stage) else {
        return false;
    };
    let dtype = |b: BufferId| r.dag.tensor(b).map(|t| t.dtype);
    let stored = matches!(
        dtype(id),
        Some(DType::F32 | DType::I32 | DType::I8 | DType::U8)
    );
    let reads_words = r
        .sched
        .effective_reads(r.dag, id)
        .iter()
        .all(|&b| matches!(dtype(b), Some(DType::F32 | DType::I32)));
    let loops = r.loops(stage);
    let Some((inner, _, ext)) = loops.last().cloned() else {
        return false;
    };
    if !stored || !reads_words || ext < POINTWISE_MIN {
        return false;
    }
    let parallel = match r.knobs.parallel_min {
        Some(m) => m > 0,
        None => dag_work(r.dag) >= SERIAL_WORK,
    };
    let outer: usize = loops[..loops.len() - 1].iter().map(|l| l.2).product();
    let vec_loop = if outer > 1 {
        r.parallel_outer(stage);
        inner
    } else if parallel {
        let Some(run) = (8..=256)
            .filter(|p| ext % p == 0)
            .map(|p| ext / p)
            .find(|&run| run % 16 == 0 && run >= POINTWISE_MIN)
        else {
            return false;
        };
        if !r.split(stage, &inner, run) {
            return false;
        }
        r.parallel_outer(stage);
        format!("{inner}.1")
    } else {
        inner
    };
    r.vectorize(stage, &vec_loop);
    unroll_selected_axes(r, stage);
    true
}

/// Side of the square tiles a transposing stage is computed in.
const TRANSPOSE_TILE: usize = 16;

/// A stage that reads some operand across its innermost axis (`out[i, j] = x[j, i]`: a
/// transpose, or a layout conversion collapsed to one) runs in square tiles of its two inner
/// axes, vectorized along the innermost: a tile's reads touch `TRANSPOSE_TILE` cache lines of
/// the operand that stay in cache for the whole tile, where row by row every lane's read is
/// another line. Returns whether it did.
fn transpose_tiles(r: &mut Recorder, stage: &str) -> bool {
    let Some(st) = r.dag.find(stage).and_then(|id| r.dag.stage(id)) else {
        return false;
    };
    let n = st.axes.len();
    if n < 2 {
        return false;
    }
    let (inner, outer) = (st.axes[n - 1].var, st.axes[n - 2].var);
    let uses = |e: &kiln_tir::Expr, v: kiln_tir::VarId| {
        let mut found = false;
        e.walk(&mut |x| found |= matches!(x, kiln_tir::Expr::Var(w) if *w == v));
        found
    };
    let mut transposed = false;
    st.body.walk(&mut |e| {
        if let kiln_tir::Expr::Load { indices, .. } = e {
            if let Some((last, rest)) = indices.split_last() {
                transposed |=
                    !uses(last, inner) && uses(last, outer) && rest.iter().any(|i| uses(i, inner));
            }
        }
    });
    let loops = r.loops(stage);
    let t = TRANSPOSE_TILE;
    let fits = |l: &(String, IterKind, usize)| l.2 >= 2 * t && l.2.is_multiple_of(t);
    if !transposed || loops.len() != n || !fits(&loops[n - 1]) || !fits(&loops[n - 2]) {
        return false;
    }
    let (a, b) = (loops[n - 2].0.clone(), loops[n - 1].0.clone());
    let cp = r.checkpoint();
    let mut order: Vec<String> = loops[..n - 2].iter().map(|l| l.0.clone()).collect();
    order.extend([
        format!("{a}.0"),
        format!("{b}.0"),
        format!("{a}.1"),
        format!("{b}.1"),
    ]);
    let done = r.split(stage, &b, t) && r.split(stage, &a, t) && r.reorder(stage, &order);
    if !done {
        r.restore(cp);
        return false;
    }
    r.parallel_outer(stage);
    r.vectorize(stage, &format!("{b}.1"));
    true
}

/// Most iterations of a loop unrolled so that the `select`s testing its variable are decided
/// at compile time.
const SELECT_UNROLL: usize = 16;

/// Unrolls the short outer loops of `stage` whose variable a `select` condition tests (a concat
/// along that axis: the im2col of a convolution): each copy of the body then takes one operand,
/// decided when the code is generated, instead of testing the chain per vector.
fn unroll_selected_axes(r: &mut Recorder, stage: &str) {
    let Some(st) = r.dag.find(stage).and_then(|id| r.dag.stage(id)) else {
        return;
    };
    let mut tested = std::collections::BTreeSet::new();
    st.body.walk(&mut |e| {
        if let kiln_tir::Expr::Select { cond, .. } = e {
            vars_outside_loads(cond, &mut tested);
        }
    });
    let names: Vec<String> = st
        .axes
        .iter()
        .filter(|a| tested.contains(&a.var))
        .map(|a| a.name.clone())
        .collect();
    let loops = r.loops(stage);
    for (i, (name, kind, ext)) in loops.iter().enumerate() {
        let inner = i + 1 == loops.len();
        if !inner && *kind == IterKind::Spatial && *ext <= SELECT_UNROLL && names.contains(name) {
            r.apply(Instruction::Unroll {
                stage: stage.into(),
                loop_: name.clone(),
            });
        }
    }
}

/// The variables `e` mentions outside the indices of its loads: those whose value decides it
/// once the loop is unrolled (a condition on a loaded value, such as a per-channel table
/// entry, stays a run-time test however far its index's loop is unrolled).
fn vars_outside_loads(e: &kiln_tir::Expr, out: &mut std::collections::BTreeSet<kiln_tir::VarId>) {
    match e {
        kiln_tir::Expr::Var(v) => {
            out.insert(*v);
        }
        kiln_tir::Expr::Load { .. } => {}
        _ => e
            .children()
            .into_iter()
            .for_each(|c| vars_outside_loads(c, out)),
    }
}

/// A reduction at root: vectorize a spatial axis inside the reduction loops, parallel outside.
fn reduction_root(r: &mut Recorder, stage: &str) {
    let loops = r.loops(stage);
    let spatial: Vec<(String, usize)> = loops
        .iter()
        .filter(|l| l.1 == IterKind::Spatial)
        .map(|l| (l.0.clone(), l.2))
        .collect();
    let mut vec_loop = None;
    let widest = |ext: usize| {
        [16, 8, 4]
            .into_iter()
            .find(|w| ext.is_multiple_of(*w))
            .unwrap_or(4)
    };
    if let Some((name, ext)) = spatial.last().cloned() {
        // As wide as divides (up to 16 lanes, four f32x4 registers): the window's index
        // arithmetic and bounds tests are shared by more lanes.
        let f = r.knobs.inner_vector.unwrap_or_else(|| widest(ext));
        if ext % f == 0 && spatial.len() > 1 && r.split(stage, &name, f) {
            let inner = format!("{name}.1");
            let mut order: Vec<String> = r
                .loops(stage)
                .into_iter()
                .map(|l| l.0)
                .filter(|n| *n != inner)
                .collect();
            order.push(inner.clone());
            if r.reorder(stage, &order) {
                vec_loop = Some(inner);
                // The vector of partial results stays in registers across the reduction
                // instead of making a store-to-load round trip through the output per step.
                r.apply(Instruction::CacheWrite {
                    stage: stage.into(),
                });
            }
        }
    }
    r.parallel_outer(stage);
    if let Some(v) = vec_loop {
        r.vectorize(stage, &v);
    }
}

/// A matmul that is itself the output: tiled `b, i.o, j.o, k, i.i(4, unrolled), j.i(8 or 4,
/// vectorized)` with `cache_write`.
fn matmul_root(r: &mut Recorder, o: BufferId) -> bool {
    let stage = stage_name(r.dag, o);
    let Some(t) = r.dag.tensor(o) else {
        return false;
    };
    let (m, n) = (t.shape[1], t.shape[2]);
    let ti = r.knobs.row_tile.unwrap_or(if m % 4 == 0 { 4 } else { 1 });
    if n % 4 != 0 {
        return false;
    }
    let mut order = vec!["i0".to_string()];
    let mut inner = vec![];
    if ti > 1 && r.split(&stage, "i1", ti) {
        order.push("i1.0".into());
        inner.push("i1.1".to_string());
    } else {
        order.push("i1".into());
    }
    let tj = r
        .knobs
        .vector_tile
        .unwrap_or(if n.is_multiple_of(8) { 8 } else { 4 });
    if !r.split(&stage, "i2", tj) {
        return false;
    }
    order.push("i2.0".into());
    order.push("k".into());
    inner.push("i2.1".into());
    order.extend(inner);
    r.reorder(&stage, &order);
    r.apply(Instruction::CacheWrite {
        stage: stage.clone(),
    });
    // The accumulator's row loop unrolled: every access has a constant offset, so codegen
    // keeps the `ti x tj` accumulator in registers.
    if r.knobs.unroll_tile.unwrap_or(true) {
        r.apply(Instruction::Unroll {
            stage: stage.clone(),
            loop_: "i1.1".into(),
        });
    }
    r.parallel_outer(&stage);
    r.vectorize(&stage, "i2.1");
    true
}

/// Tile sizes `(output columns, output channels)` of a channels-last conv anchor for an output
/// of `oc` channels and `ow` columns: channels by 8 (two vectors) when they divide, else 4;
/// columns by a divisor of `ow` in `4..=6` when there is one (at most 12 accumulator vectors,
/// which Cranelift keeps in the 16 xmm registers without spilling), else by the largest divisor
/// up to 7 (7- and 14-wide rows: 14 vectors, a few spilled, still better than narrower tiles).
fn nhwc_tile(oc: usize, ow: usize) -> (usize, usize) {
    let toc = if oc.is_multiple_of(8) { 8 } else { 4 };
    let max_cols = (4 * 14 / toc).min(8);
    let largest = |lo: usize, hi: usize| (lo..=hi.min(ow)).rev().find(|t| ow.is_multiple_of(*t));
    let tw = largest(4, 4 * 12 / toc)
        .or_else(|| largest(1, max_cols))
        .unwrap_or(1);
    (tw, toc)
}

/// A channels-last conv anchor `a` ([`NHWC_STAGE`]) under an NCHW output `o`:
/// the output is tiled `n, oc.o, oh, ow.o, ow.i, oc.i` and the anchor computed at `ow.o` into a
/// `ow.i x oc.i` register tile, its reduction loops outside the (unrolled) tile columns, window
/// loops of one iteration unrolled, and the channels vectorized; the epilogue vectorizes
/// channels too (strided stores).
fn tile_conv_nhwc(r: &mut Recorder, o: BufferId, a: BufferId) -> bool {
    let dag = r.dag;
    let (oname, aname) = (stage_name(dag, o), stage_name(dag, a));
    let Some(t) = dag.tensor(o) else {
        return false;
    };
    if t.shape.len() != 4 {
        return false;
    }
    // Output axes (channels, rows, columns): NCHW, or NHWC like the accumulator.
    let (ch, row, col) = if output_is_channels_last(dag, a) {
        (3, 1, 2)
    } else {
        (1, 2, 3)
    };
    if !t.shape[ch].is_multiple_of(4) {
        return false;
    }
    let (tw, toc) = nhwc_tile(t.shape[ch], t.shape[col]);
    let (tw, toc) = (
        r.knobs.row_tile.unwrap_or(tw),
        r.knobs.vector_tile.unwrap_or(toc),
    );
    let (ch, row, col) = (format!("i{ch}"), format!("i{row}"), format!("i{col}"));
    if !r.split(&oname, &ch, toc) || !r.split(&oname, &col, tw) {
        return false;
    }
    let (ch_o, ch_i) = (format!("{ch}.0"), format!("{ch}.1"));
    let (col_o, col_i) = (format!("{col}.0"), format!("{col}.1"));
    let order = vec![
        "i0".to_string(),
        ch_o,
        row.clone(),
        col_o.clone(),
        col_i.clone(),
        ch_i.clone(),
    ];
    if !r.reorder(&oname, &order) {
        return false;
    }
    let attach = if r.knobs.attach_outer.unwrap_or(false) {
        row
    } else {
        col_o
    };
    let Some(aloops) = r.attach_anchor(&aname, &oname, attach) else {
        return false;
    };
    // Window loops of one iteration (1x1 kernels) unrolled away; longer ones stay loops
    // (unrolling 3x3 windows measured slower: the 9x larger body hurts more than it saves).
    if r.knobs.unroll_window.unwrap_or(true) {
        for l in aloops
            .iter()
            .filter(|l| l.1 == IterKind::Reduce && l.2 == 1 && l.0 != "rc")
        {
            r.apply(Instruction::Unroll {
                stage: aname.clone(),
                loop_: l.0.clone(),
            });
        }
        for l in ["i0", "i1", "i2"] {
            r.apply(Instruction::Unroll {
                stage: aname.clone(),
                loop_: l.into(),
            });
        }
    }
    r.vectorize(&aname, "i3");
    if r.knobs.unroll_tile.unwrap_or(true) {
        r.apply(Instruction::Unroll {
            stage: oname.clone(),
            loop_: col_i,
        });
    }
    r.parallel_outer(&oname);
    r.vectorize(&oname, &ch_i);
    true
}

/// Whether the stages reading the channels-last accumulator `a` load it at their own axes in
/// order, i.e. the convolution's output is channels-last too (an NCHW output reads it
/// transposed).
pub(crate) fn output_is_channels_last(dag: &ComputeDag, a: BufferId) -> bool {
    let mut in_order = None;
    for t in dag.tensors() {
        let Some(stage) = &t.stage else { continue };
        stage.body.walk(&mut |e| {
            if let kiln_tir::Expr::Load { buf, indices } = e {
                if *buf == a {
                    let own = indices.len() == stage.axes.len()
                        && indices
                            .iter()
                            .zip(&stage.axes)
                            .all(|(i, ax)| *i == kiln_tir::Expr::Var(ax.var));
                    in_order = Some(in_order.unwrap_or(true) && own);
                }
            }
        });
    }
    in_order.unwrap_or(false)
}

/// Tiles the output `o` and computes the anchor reduction `a` at its tile loop (a tensorized
/// tile when the target has micro-kernels and the tile fits one).
fn tile_anchor(
    r: &mut Recorder,
    class: OpClass,
    o: BufferId,
    a: BufferId,
    micro: Option<MicroShape>,
) -> bool {
    let dag = r.dag;
    let (oname, aname) = (stage_name(dag, o), stage_name(dag, a));
    if let Some(m) = micro {
        let done = match class {
            OpClass::Conv | OpClass::Depthwise if aname.ends_with(NHWC_STAGE) => {
                micro::conv_nhwc(r, m, o, a)
            }
            OpClass::MatMul => micro::matmul(r, m, o, a),
            _ => false,
        };
        if done {
            return true;
        }
        if class == OpClass::MatMul && !micro::epilogue_fits_registers(dag, a, o, m) {
            // Leave it to the tensorized matmul at root (see `build`).
            return false;
        }
    }
    if matches!(class, OpClass::Conv | OpClass::Depthwise) && aname.ends_with(NHWC_STAGE) {
        return tile_conv_nhwc(r, o, a);
    }
    let Some(t) = dag.tensor(o) else {
        return false;
    };
    let shape = t.shape.clone();
    // (channel-like axis, innermost axis) to tile by 4.
    let (row_axis, col_axis) = match (class, shape.len()) {
        (OpClass::MatMul, 3) => (1, 2),
        (OpClass::Conv, 4) => (1, 3),
        (OpClass::Depthwise, 4) => (2, 3),
        _ => return false,
    };
    let row = format!("i{row_axis}");
    let col = format!("i{col_axis}");
    let col_factor = r
        .knobs
        .vector_tile
        .unwrap_or(if shape[col_axis].is_multiple_of(8) {
            8
        } else {
            4
        });
    let row_factor = r.knobs.row_tile.unwrap_or(4);
    let split_row = row_factor > 1
        && shape[row_axis].is_multiple_of(row_factor)
        && r.split(&oname, &row, row_factor);
    let split_col = shape[col_axis].is_multiple_of(4)
        && col_factor.is_multiple_of(4)
        && r.split(&oname, &col, col_factor);
    if !split_col {
        return false;
    }
    // Outer loops in axis order, then the tile loops.
    let mut outer = vec![];
    for d in 0..shape.len() {
        let n = format!("i{d}");
        if (d == row_axis && split_row) || d == col_axis {
            outer.push(format!("{n}.0"));
        } else {
            outer.push(n);
        }
    }
    let attach = outer[outer.len() - 1].clone();
    let mut order = outer.clone();
    if split_row {
        order.push(format!("{row}.1"));
    }
    order.push(format!("{col}.1"));
    if !r.reorder(&oname, &order) {
        return false;
    }
    // Anchor: reduction loops outside its (tile-sized) spatial loops, the column vectorized.
    let Some(aloops) = r.attach_anchor(&aname, &oname, attach) else {
        return false;
    };
    // The tile's other spatial loops unrolled: every tile access has a constant offset, so
    // codegen keeps the tile in registers.
    if r.knobs.unroll_window.unwrap_or(true) {
        for l in aloops
            .iter()
            .filter(|l| l.1 == IterKind::Spatial && l.0 != col)
        {
            r.apply(Instruction::Unroll {
                stage: aname.clone(),
                loop_: l.0.clone(),
            });
        }
    }
    r.vectorize(&aname, &col);
    if split_row && r.knobs.unroll_tile.unwrap_or(true) {
        r.apply(Instruction::Unroll {
            stage: oname.clone(),
            loop_: format!("{row}.1"),
        });
    }
    // Output: parallel outside, vectorized tile column.
    r.parallel_outer(&oname);
    r.vectorize(&oname, &format!("{col}.1"));
    true
}

/// The default schedule of `dag` for `class` on `target`: the trace and the lowered function.
/// Falls back to simpler traces when lowering rejects one (see the module doc).
pub fn default_schedule(
    dag: &ComputeDag,
    class: OpClass,
    keep: &BTreeSet<BufferId>,
    target: &SketchTarget,
) -> Result<(Trace, PrimFunc), LowerError> {
    schedule_with(dag, class, keep, &Knobs::default(), target)
}

/// The sketch of `class` filled in with `knobs` for `target`: the trace and the lowered
/// function, falling back to simpler traces (with the same knobs: untensorized, then without
/// tiling, then inline-only, then naive) when lowering rejects one.
pub fn schedule_with(
    dag: &ComputeDag,
    class: OpClass,
    keep: &BTreeSet<BufferId>,
    knobs: &Knobs,
    target: &SketchTarget,
) -> Result<(Trace, PrimFunc), LowerError> {
    let mut last = None;
    let levels: &[Level] = if target.microkernels.is_some() {
        &[Level::Tensorized, Level::Full, Level::Simple, Level::Inline]
    } else {
        &[Level::Full, Level::Simple, Level::Inline]
    };
    for &level in levels {
        let trace = build(dag, class, keep, level, knobs, target);
        match lower_trace(dag, &trace) {
            Ok(f) => return Ok((trace, f)),
            Err(e) => last = Some(e),
        }
    }
    let trace = Trace::default();
    match kiln_tir::lower_naive(dag) {
        Ok(f) => Ok((trace, f)),
        Err(e) => Err(last.unwrap_or(e)),
    }
}

/// Replays `trace` on `dag` and lowers it.
pub fn lower_trace(dag: &ComputeDag, trace: &Trace) -> Result<PrimFunc, LowerError> {
    let sched = trace.apply(dag)?;
    lower(dag, &sched)
}
