//! Schedules (TVM TE style): per stage a tree of iteration variables derived from the stage's
//! axes by splits and fuses, the order and annotation of its leaf loops, and where the stage is
//! computed; changed only by replaying serialisable [`Instruction`]s.
//!
//! Invariant: a [`Schedule`] is obtained only from [`Schedule::naive`] and [`Schedule::apply`] /
//! [`Trace::apply`], which check every instruction against the current state and reject illegal
//! ones with an error naming the stage and loop, leaving the schedule unchanged. A schedule
//! returned by [`Trace::apply`] has also passed [`Schedule::validate`] (end-state rules such as
//! "a vectorized loop is innermost"), so [`crate::lower()`] only has to check what depends on
//! extents derived from `compute_at` regions. No instruction, however malformed, panics.
//!
//! Legality rules:
//! * `split` a leaf loop by `factors` (each ≥ 1, product ≤ 2^32) into `1 + factors.len()` loops
//!   named `loop.0, loop.1, ...`, the outer of extent `ceil(extent / product)`. A factor product
//!   that does not divide the extent is allowed: lowering guards the body with
//!   `value < extent` (TVM does the same). Annotated loops and compute-at targets cannot be split.
//! * `reorder` a set of distinct leaf loops: they take the positions they occupied, in the given
//!   order (TVM semantics); the other loops stay in place. The reduction loops of an fma
//!   chain ([`crate::Reduction::fused_multiply_add`]) keep their relative order (their order is
//!   the rounding).
//! * `fuse` two or more leaf loops adjacent in the given order, all spatial or all reduce, none
//!   annotated or a compute-at target, into `a.b.fused`.
//! * `vectorize` / `parallel` a spatial leaf; `unroll` any leaf. At the end a vectorized loop must
//!   be the stage's innermost loop with no stage attached at it, and a parallel loop the
//!   outermost loop of a stage computed at root (no nested parallelism).
//! * `compute_at` a stage at a leaf loop of a later stage that is its only consumer (after
//!   inlining); outputs cannot be attached. The producer is computed for the region the
//!   consumer's loops inside the attach point read (lowering rejects non-affine regions).
//! * `compute_inline` a non-reduction stage that is not an output; it disappears into its
//!   consumers.
//! * `cache_write` a reduction stage: it accumulates into a local buffer covering the loops
//!   inside its outermost reduction loop and writes back after the reduction.
//! * `pack` a placeholder: dimension `axis` is split by `factor` and the inner part moved last
//!   (OIHW weights with `axis: 0, factor: oc` become `[ceil(O/oc), I, KH, KW, oc]`, zero-padded);
//!   with `outer_first` the outer part moves first (`[KH, KW, I, O]` with `axis: 3` becomes the
//!   panels `[ceil(O/oc), KH, KW, I, oc]`). A constant placeholder is packed once, when the
//!   kernel is compiled.
//! * `tensorize` a leaf loop of a stage computed at root with an intrinsic: the loop's body (the
//!   stages computed at it and the stage's inner loops) becomes a `Tensorized` statement, which
//!   lowering checks is an instance of the intrinsic (see [`crate::tensorize`]); a stage
//!   computed there accumulates with an explicit `fma`. The loop cannot be split, fused or
//!   vectorized afterwards; a stage has at most one tensorized loop.

use crate::compute::ComputeDag;
use crate::expr::BufferId;
use crate::stmt::{ForKind, TensorIntrinsic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Largest product of split factors and largest loop extent a schedule may create.
pub const MAX_EXTENT: usize = 1 << 32;

/// One scheduling decision, as recorded in tuning logs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Instruction {
    Split {
        stage: String,
        #[serde(rename = "loop")]
        loop_: String,
        factors: Vec<usize>,
    },
    Reorder {
        stage: String,
        order: Vec<String>,
    },
    Fuse {
        stage: String,
        loops: Vec<String>,
    },
    Vectorize {
        stage: String,
        #[serde(rename = "loop")]
        loop_: String,
    },
    Unroll {
        stage: String,
        #[serde(rename = "loop")]
        loop_: String,
    },
    Parallel {
        stage: String,
        #[serde(rename = "loop")]
        loop_: String,
    },
    ComputeAt {
        stage: String,
        target_stage: String,
        target_loop: String,
    },
    ComputeInline {
        stage: String,
    },
    CacheWrite {
        stage: String,
    },
    Pack {
        buffer: String,
        axis: usize,
        factor: usize,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        outer_first: bool,
        /// A second dimension split into groups placed innermost (see [`Pack`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<(usize, usize)>,
    },
    Tensorize {
        stage: String,
        #[serde(rename = "loop")]
        loop_: String,
        intrinsic: TensorIntrinsic,
    },
}

/// A sequence of instructions, replayed from the naive schedule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Trace(pub Vec<Instruction>);

/// Why an instruction or schedule was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("unknown stage `{0}`")]
    UnknownStage(String),
    #[error("stage `{stage}` has no loop `{loop_}`")]
    UnknownLoop { stage: String, loop_: String },
    #[error("stage `{stage}`, loop `{loop_}`: {reason}")]
    Illegal {
        stage: String,
        loop_: String,
        reason: String,
    },
    #[error("instruction {index}: {error}")]
    AtInstruction {
        index: usize,
        error: Box<ScheduleError>,
    },
}

fn illegal(stage: &str, loop_: &str, reason: impl Into<String>) -> ScheduleError {
    ScheduleError::Illegal {
        stage: stage.to_string(),
        loop_: loop_.to_string(),
        reason: reason.into(),
    }
}

/// Whether an iteration variable comes from spatial or reduce axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IterKind {
    Spatial,
    Reduce,
}

/// An iteration variable of a stage's schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IterVar {
    pub name: String,
    pub kind: IterKind,
    pub annotation: ForKind,
}

/// How iteration variables derive from each other (indices into the stage's `iter_vars`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Relation {
    /// `parent = Σ children[i] * Π factors[i..]`; `children[0]` has extent
    /// `ceil(parent / Π factors)`, `children[i + 1]` extent `factors[i]`.
    Split {
        parent: usize,
        factors: Vec<usize>,
        children: Vec<usize>,
    },
    /// `fused` ranges over the product of `loops`' extents, last loop fastest.
    Fuse { loops: Vec<usize>, fused: usize },
}

/// Whether the stage's reduction leaves still run in the order of its reduction axes: each
/// leaf's origin (root axis, then its position in every split or fuse on the way) is not
/// before the previous leaf's.
fn reduction_order_kept(ss: &StageSchedule) -> bool {
    let origin = |mut iv: usize| {
        let mut path = vec![];
        'up: loop {
            for rel in &ss.relations {
                match rel {
                    Relation::Split {
                        parent, children, ..
                    } => {
                        if let Some(i) = children.iter().position(|&c| c == iv) {
                            path.push(i);
                            iv = *parent;
                            continue 'up;
                        }
                    }
                    Relation::Fuse { loops, fused } if *fused == iv => {
                        path.push(0);
                        iv = loops[0];
                        continue 'up;
                    }
                    Relation::Fuse { .. } => {}
                }
            }
            path.push(iv);
            path.reverse();
            return path;
        }
    };
    let keys: Vec<Vec<usize>> = ss
        .leaves
        .iter()
        .filter(|&&iv| ss.iter_vars[iv].kind == IterKind::Reduce)
        .map(|&iv| origin(iv))
        .collect();
    keys.windows(2).all(|w| w[0] <= w[1])
}

/// Where a stage is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Attach {
    /// Its own loop nest at the top of the function.
    Root,
    /// Substituted into its consumers.
    Inline,
    /// Inside leaf loop `iter` of stage `stage`, for the region that loop's body reads.
    At { stage: BufferId, iter: usize },
}

/// The schedule of one stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSchedule {
    /// The first entries are the roots: the spatial axes then the reduce axes, in axis order.
    pub iter_vars: Vec<IterVar>,
    pub relations: Vec<Relation>,
    /// Leaf loops, outermost first.
    pub leaves: Vec<usize>,
    pub attach: Attach,
    pub cache_write: bool,
    /// The leaf loop (iteration variable) whose body is tensorized, with the intrinsic.
    #[serde(default)]
    pub tensorize: Option<(usize, TensorIntrinsic)>,
}

/// Layout packing of a placeholder: dimension `axis` split by `factor`, the inner part moved last
/// (and, with `outer_first`, the outer part moved first). With `group = (g, q)` dimension `g`
/// is split by `q` as well, its inner part placed after `axis`'s: panels of `factor` columns
/// whose elements are groups of `q` consecutive values of dimension `g` (the four bytes of the
/// reduction an int8 dot-product instruction reads per column). Split dimensions that their
/// factor does not divide are zero-padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pack {
    pub axis: usize,
    pub factor: usize,
    #[serde(default)]
    pub outer_first: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<(usize, usize)>,
}

impl Pack {
    /// Whether the packing fits a tensor of rank `rank` (its axes inside, factors non-zero).
    pub fn fits(&self, rank: usize) -> bool {
        self.axis < rank
            && self.factor > 0
            && self
                .group
                .is_none_or(|(g, q)| g < rank && g != self.axis && q > 0)
    }

    /// The packed shape of a tensor of `shape`.
    pub fn packed_shape(&self, shape: &[usize]) -> Vec<usize> {
        let mut s = shape.to_vec();
        if let Some(d) = s.get_mut(self.axis) {
            *d = d.div_ceil(self.factor.max(1));
        }
        if let Some((g, q)) = self.group {
            if let Some(d) = s.get_mut(g) {
                *d = d.div_ceil(q.max(1));
            }
        }
        if self.outer_first && self.axis < s.len() {
            let outer = s.remove(self.axis);
            s.insert(0, outer);
        }
        s.push(self.factor);
        if let Some((_, q)) = self.group {
            s.push(q);
        }
        s
    }

    /// The packed index of an element given its original index, with the packed axis already
    /// split into `(outer, inner)` and the group's dimension (if any) into `group`.
    pub fn packed_index<T: Clone>(
        &self,
        index: &[T],
        (outer, inner): (T, T),
        group: Option<(T, T)>,
    ) -> Vec<T> {
        let mut out = index.to_vec();
        if self.axis >= out.len() {
            return out;
        }
        let group = self.group.zip(group);
        if let Some(((g, _), (go, _))) = &group {
            if let Some(x) = out.get_mut(*g) {
                *x = go.clone();
            }
        }
        if self.outer_first {
            out.remove(self.axis);
            out.insert(0, outer);
        } else {
            out[self.axis] = outer;
        }
        out.push(inner);
        if let Some((_, (_, gi))) = group {
            out.push(gi);
        }
        out
    }

    /// The original index of the element at `packed`: the index with the outer parts at their
    /// dimensions, the packed axis' inner part, and the group's inner part (with a group). The
    /// original index along a split dimension is `outer * factor + inner`.
    pub fn unpacked_index<T: Clone>(&self, packed: &[T]) -> (Vec<T>, T, Option<T>) {
        let mut idx = packed.to_vec();
        let group_inner = if self.group.is_some() {
            idx.pop()
        } else {
            None
        };
        let inner = idx.pop().unwrap_or_else(|| packed[0].clone());
        if self.outer_first && !idx.is_empty() {
            let outer = idx.remove(0);
            idx.insert(self.axis.min(idx.len()), outer);
        }
        (idx, inner, group_inner)
    }

    /// `t` in the packed layout (zero-padded along the split dimensions): what the packing
    /// loop nest lowering emits computes, done once for a constant. `None` when the packing
    /// does not fit `t`'s rank or size.
    pub fn pack_tensor(&self, t: &kiln_ir::Tensor) -> Option<kiln_ir::Tensor> {
        let shape = t.shape();
        if !self.fits(shape.len()) {
            return None;
        }
        let pshape = self.packed_shape(shape);
        let ty = kiln_ir::TensorType::new(t.dtype(), pshape.clone()).ok()?;
        let n = ty.num_elements();
        // Row-major strides of the original, then per packed dimension its extent and the
        // source offset one step along it adds (the outer part of a split dimension steps
        // `factor` of its elements, the inner part one).
        let mut strides = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        let (axis, f) = (self.axis, self.factor);
        let outer_dim = (shape[axis].div_ceil(f), f * strides[axis]);
        let mut dims: Vec<(usize, usize)> = Vec::with_capacity(shape.len() + 2);
        let mut axis_outer = 0;
        let mut group_outer = 0;
        if self.outer_first {
            dims.push(outer_dim);
        }
        for d in 0..shape.len() {
            if d == axis {
                if !self.outer_first {
                    axis_outer = dims.len();
                    dims.push(outer_dim);
                }
            } else if let Some((_, q)) = self.group.filter(|(g, _)| *g == d) {
                group_outer = dims.len();
                dims.push((shape[d].div_ceil(q), q * strides[d]));
            } else {
                dims.push((shape[d], strides[d]));
            }
        }
        let axis_inner = dims.len();
        dims.push((f, strides[axis]));
        let group_inner = dims.len();
        if let Some((g, q)) = self.group {
            dims.push((q, strides[g]));
        }
        // Rows of the innermost packed dimension: where each starts in the source and how many
        // of its elements lie inside the original (the rest are padding). An odometer over the
        // outer dimensions visits the rows in packed order.
        let (&(inner, inner_stride), outer) = dims.split_last()?;
        let last = dims.len() - 1;
        let mut rows: Vec<(usize, usize)> = Vec::with_capacity(n / inner.max(1));
        let mut pos = vec![0usize; outer.len()];
        let mut src = 0usize;
        for _ in 0..n / inner.max(1) {
            // The bound a dimension split in two keeps: `outer * factor + inner < extent`.
            let room = |outer_d: usize, inner_d: usize, factor: usize, extent: usize| {
                let start = pos[outer_d] * factor;
                if inner_d == last {
                    extent.saturating_sub(start)
                } else if start + pos[inner_d] < extent {
                    usize::MAX
                } else {
                    0
                }
            };
            let mut valid = room(axis_outer, axis_inner, f, shape[axis]);
            if let Some((g, q)) = self.group {
                valid = valid.min(room(group_outer, group_inner, q, shape[g]));
            }
            rows.push((src, valid.min(inner)));
            for d in (0..outer.len()).rev() {
                pos[d] += 1;
                src += outer[d].1;
                if pos[d] < outer[d].0 {
                    break;
                }
                src -= outer[d].0 * outer[d].1;
                pos[d] = 0;
            }
        }
        let index = rows.into_iter().flat_map(|(base, valid)| {
            (0..inner).map(move |j| (j < valid).then_some(base + j * inner_stride))
        });
        kiln_ir::Tensor::from_data(ty, t.data().gather_iter(n, index)).ok()
    }
}

/// A loop as seen by schedule authors (tests, tuners).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopInfo {
    pub name: String,
    pub kind: IterKind,
    pub annotation: ForKind,
    /// The extent when the stage is computed over its whole shape.
    pub extent: usize,
}

/// The schedule of a whole DAG: one entry per tensor (`None` for placeholders), plus packing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    stages: Vec<Option<StageSchedule>>,
    packs: Vec<Option<Pack>>,
}

impl Trace {
    /// Replays the trace on the naive schedule of `dag`, then validates the end state.
    pub fn apply(&self, dag: &ComputeDag) -> Result<Schedule, ScheduleError> {
        let mut s = Schedule::naive(dag);
        for (index, inst) in self.0.iter().enumerate() {
            s.apply(dag, inst)
                .map_err(|e| ScheduleError::AtInstruction {
                    index,
                    error: Box::new(e),
                })?;
        }
        s.validate(dag)?;
        Ok(s)
    }
}

/// Computes the extent of every iteration variable of `ss` given the root extents.
pub(crate) fn iter_extents(ss: &StageSchedule, roots: &[usize]) -> Option<Vec<usize>> {
    let mut ext = vec![0usize; ss.iter_vars.len()];
    ext.get_mut(..roots.len())?.copy_from_slice(roots);
    for r in &ss.relations {
        match r {
            Relation::Split {
                parent,
                factors,
                children,
            } => {
                let prod = factors.iter().try_fold(1usize, |a, &f| a.checked_mul(f))?;
                *ext.get_mut(*children.first()?)? = ext.get(*parent)?.div_ceil(prod.max(1));
                for (c, f) in children[1..].iter().zip(factors) {
                    *ext.get_mut(*c)? = *f;
                }
            }
            Relation::Fuse { loops, fused } => {
                let prod = loops
                    .iter()
                    .try_fold(1usize, |a, &l| a.checked_mul(*ext.get(l)?))?;
                if prod > MAX_EXTENT {
                    return None;
                }
                *ext.get_mut(*fused)? = prod;
            }
        }
    }
    Some(ext)
}

impl Schedule {
    /// Every stage computed at root, its loops the spatial axes then the reduce axes, serial.
    pub fn naive(dag: &ComputeDag) -> Schedule {
        let stages = dag
            .tensors()
            .iter()
            .map(|t| {
                t.stage.as_ref().map(|s| {
                    let mut iter_vars = vec![];
                    for a in &s.axes {
                        iter_vars.push(IterVar {
                            name: a.name.clone(),
                            kind: IterKind::Spatial,
                            annotation: ForKind::Serial,
                        });
                    }
                    for a in &s.reduce_axes {
                        iter_vars.push(IterVar {
                            name: a.name.clone(),
                            kind: IterKind::Reduce,
                            annotation: ForKind::Serial,
                        });
                    }
                    StageSchedule {
                        leaves: (0..iter_vars.len()).collect(),
                        iter_vars,
                        relations: vec![],
                        attach: Attach::Root,
                        cache_write: false,
                        tensorize: None,
                    }
                })
            })
            .collect();
        Schedule {
            stages,
            packs: vec![None; dag.tensors().len()],
        }
    }

    /// The schedule of tensor `id` (`None` for placeholders).
    pub fn stage(&self, id: BufferId) -> Option<&StageSchedule> {
        self.stages.get(id.index()).and_then(Option::as_ref)
    }

    /// The packing of placeholder `id`.
    pub fn pack(&self, id: BufferId) -> Option<Pack> {
        self.packs.get(id.index()).copied().flatten()
    }

    /// Number of tensor entries (equals the DAG's tensor count).
    pub fn len(&self) -> usize {
        self.stages.len()
    }

    /// True for a schedule of an empty DAG.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// The leaf loops of stage `name`, outermost first, with extents over the full shape.
    pub fn loops(&self, dag: &ComputeDag, name: &str) -> Option<Vec<LoopInfo>> {
        let id = dag.find(name)?;
        let st = dag.stage(id)?;
        let ss = self.stage(id)?;
        let roots: Vec<usize> = st
            .axes
            .iter()
            .chain(&st.reduce_axes)
            .map(|a| a.extent)
            .collect();
        let ext = iter_extents(ss, &roots)?;
        Some(
            ss.leaves
                .iter()
                .map(|&l| LoopInfo {
                    name: ss.iter_vars[l].name.clone(),
                    kind: ss.iter_vars[l].kind,
                    annotation: ss.iter_vars[l].annotation,
                    extent: ext[l],
                })
                .collect(),
        )
    }

    fn stage_id(&self, dag: &ComputeDag, name: &str) -> Result<BufferId, ScheduleError> {
        let id = dag
            .find(name)
            .ok_or_else(|| ScheduleError::UnknownStage(name.into()))?;
        if self.stage(id).is_none() {
            return Err(illegal(name, "-", "is a placeholder, not a stage"));
        }
        Ok(id)
    }

    fn leaf(
        &self,
        id: BufferId,
        stage: &str,
        loop_: &str,
    ) -> Result<(usize, usize), ScheduleError> {
        let ss = self
            .stage(id)
            .ok_or_else(|| ScheduleError::UnknownStage(stage.into()))?;
        ss.leaves
            .iter()
            .enumerate()
            .find(|(_, &l)| ss.iter_vars[l].name == loop_)
            .map(|(pos, &l)| (pos, l))
            .ok_or_else(|| ScheduleError::UnknownLoop {
                stage: stage.into(),
                loop_: loop_.into(),
            })
    }

    fn is_attach_target(&self, id: BufferId, iter: usize) -> bool {
        self.stages
            .iter()
            .flatten()
            .any(|s| s.attach == Attach::At { stage: id, iter })
    }

    fn is_tensorized(&self, id: BufferId, iter: usize) -> bool {
        self.stage(id)
            .is_some_and(|s| s.tensorize.is_some_and(|(i, _)| i == iter))
    }

    fn ss_mut(&mut self, id: BufferId) -> Result<&mut StageSchedule, ScheduleError> {
        self.stages
            .get_mut(id.index())
            .and_then(Option::as_mut)
            .ok_or_else(|| ScheduleError::UnknownStage(format!("#{}", id.0)))
    }

    fn not_inlined(&self, id: BufferId, stage: &str) -> Result<(), ScheduleError> {
        match self.stage(id) {
            Some(s) if s.attach == Attach::Inline => {
                Err(illegal(stage, "-", "the stage is inlined"))
            }
            _ => Ok(()),
        }
    }

    /// Applies one instruction; on error the schedule is unchanged.
    pub fn apply(&mut self, dag: &ComputeDag, inst: &Instruction) -> Result<(), ScheduleError> {
        match inst {
            Instruction::Split {
                stage,
                loop_,
                factors,
            } => {
                let id = self.stage_id(dag, stage)?;
                self.not_inlined(id, stage)?;
                let (pos, iv) = self.leaf(id, stage, loop_)?;
                if factors.is_empty() {
                    return Err(illegal(stage, loop_, "split needs at least one factor"));
                }
                if factors.contains(&0) {
                    return Err(illegal(stage, loop_, "split factor 0"));
                }
                let prod = factors.iter().try_fold(1usize, |a, &f| a.checked_mul(f));
                if prod.is_none_or(|p| p > MAX_EXTENT) {
                    return Err(illegal(stage, loop_, "split factors too large"));
                }
                if self.is_attach_target(id, iv) {
                    return Err(illegal(stage, loop_, "a stage is computed at this loop"));
                }
                if self.is_tensorized(id, iv) {
                    return Err(illegal(stage, loop_, "the loop is tensorized"));
                }
                let ss = self.ss_mut(id)?;
                let var = &ss.iter_vars[iv];
                if var.annotation != ForKind::Serial {
                    return Err(illegal(
                        stage,
                        loop_,
                        "cannot split an annotated loop; annotate after splitting",
                    ));
                }
                let kind = var.kind;
                let names: Vec<String> = (0..=factors.len())
                    .map(|i| format!("{loop_}.{i}"))
                    .collect();
                if names
                    .iter()
                    .any(|n| ss.iter_vars.iter().any(|v| &v.name == n))
                {
                    return Err(illegal(
                        stage,
                        loop_,
                        "split would create a loop name that exists",
                    ));
                }
                let first = ss.iter_vars.len();
                for name in names {
                    ss.iter_vars.push(IterVar {
                        name,
                        kind,
                        annotation: ForKind::Serial,
                    });
                }
                let children: Vec<usize> = (first..ss.iter_vars.len()).collect();
                ss.leaves.splice(pos..=pos, children.iter().copied());
                ss.relations.push(Relation::Split {
                    parent: iv,
                    factors: factors.clone(),
                    children,
                });
                Ok(())
            }
            Instruction::Reorder { stage, order } => {
                let id = self.stage_id(dag, stage)?;
                self.not_inlined(id, stage)?;
                let mut found = vec![];
                for l in order {
                    let (pos, iv) = self.leaf(id, stage, l)?;
                    if found.iter().any(|&(_, v)| v == iv) {
                        return Err(illegal(stage, l, "reorder lists the loop twice"));
                    }
                    found.push((pos, iv));
                }
                let mut positions: Vec<usize> = found.iter().map(|&(p, _)| p).collect();
                positions.sort_unstable();
                let fma = dag
                    .tensor(id)
                    .and_then(|t| t.stage.as_ref())
                    .and_then(|s| s.reduction.as_ref())
                    .is_some_and(|r| r.fused_multiply_add);
                let ss = self.ss_mut(id)?;
                let before = ss.leaves.clone();
                for (p, (_, iv)) in positions.into_iter().zip(found) {
                    ss.leaves[p] = iv;
                }
                if fma && !reduction_order_kept(ss) {
                    ss.leaves = before;
                    return Err(illegal(
                        stage,
                        order.first().map_or("-", String::as_str),
                        "an fma chain's reduction loops keep their order",
                    ));
                }
                Ok(())
            }
            Instruction::Fuse { stage, loops } => {
                let id = self.stage_id(dag, stage)?;
                self.not_inlined(id, stage)?;
                if loops.len() < 2 {
                    return Err(illegal(
                        stage,
                        loops.first().map_or("-", String::as_str),
                        "fuse needs two or more loops",
                    ));
                }
                let mut found = vec![];
                for l in loops {
                    found.push(self.leaf(id, stage, l)?);
                }
                let ss = self
                    .stage(id)
                    .ok_or_else(|| ScheduleError::UnknownStage(stage.clone()))?;
                for (w, l) in found.windows(2).zip(&loops[1..]) {
                    if w[1].0 != w[0].0 + 1 {
                        return Err(illegal(
                            stage,
                            l,
                            "fused loops must be adjacent, outer first",
                        ));
                    }
                    if ss.iter_vars[w[1].1].kind != ss.iter_vars[w[0].1].kind {
                        return Err(illegal(
                            stage,
                            l,
                            "cannot fuse a spatial loop with a reduction loop",
                        ));
                    }
                }
                for ((_, iv), l) in found.iter().zip(loops) {
                    if ss.iter_vars[*iv].annotation != ForKind::Serial {
                        return Err(illegal(
                            stage,
                            l,
                            "cannot fuse an annotated loop; annotate after fusing",
                        ));
                    }
                    if self.is_attach_target(id, *iv) {
                        return Err(illegal(stage, l, "a stage is computed at this loop"));
                    }
                    if self.is_tensorized(id, *iv) {
                        return Err(illegal(stage, l, "the loop is tensorized"));
                    }
                }
                let name = format!("{}.fused", loops.join("."));
                if ss.iter_vars.iter().any(|v| v.name == name) {
                    return Err(illegal(
                        stage,
                        &name,
                        "fuse would create a loop name that exists",
                    ));
                }
                let kind = ss.iter_vars[found[0].1].kind;
                let roots: Vec<usize> = {
                    let st = dag
                        .stage(id)
                        .ok_or_else(|| ScheduleError::UnknownStage(stage.clone()))?;
                    st.axes
                        .iter()
                        .chain(&st.reduce_axes)
                        .map(|a| a.extent)
                        .collect()
                };
                let first = found[0].0;
                let ss = self.ss_mut(id)?;
                ss.iter_vars.push(IterVar {
                    name,
                    kind,
                    annotation: ForKind::Serial,
                });
                let fused = ss.iter_vars.len() - 1;
                ss.relations.push(Relation::Fuse {
                    loops: found.iter().map(|&(_, v)| v).collect(),
                    fused,
                });
                if iter_extents(ss, &roots).is_none() {
                    ss.iter_vars.pop();
                    ss.relations.pop();
                    return Err(illegal(stage, &loops[0], "fused extent too large"));
                }
                ss.leaves.splice(first..first + found.len(), [fused]);
                Ok(())
            }
            Instruction::Vectorize { stage, loop_ } => {
                let id = self.stage_id(dag, stage)?;
                let (_, iv) = self.leaf(id, stage, loop_)?;
                if self.is_tensorized(id, iv) {
                    return Err(illegal(stage, loop_, "the loop is tensorized"));
                }
                self.annotate(dag, stage, loop_, ForKind::Vectorized)
            }
            Instruction::Tensorize {
                stage,
                loop_,
                intrinsic,
            } => {
                let id = self.stage_id(dag, stage)?;
                self.not_inlined(id, stage)?;
                let (_, iv) = self.leaf(id, stage, loop_)?;
                let ss = self.ss_mut(id)?;
                if ss.tensorize.is_some() {
                    return Err(illegal(
                        stage,
                        loop_,
                        "the stage already has a tensorized loop",
                    ));
                }
                if ss.iter_vars[iv].annotation == ForKind::Vectorized {
                    return Err(illegal(
                        stage,
                        loop_,
                        "a vectorized loop cannot be tensorized",
                    ));
                }
                ss.tensorize = Some((iv, *intrinsic));
                Ok(())
            }
            Instruction::Unroll { stage, loop_ } => {
                self.annotate(dag, stage, loop_, ForKind::Unrolled)
            }
            Instruction::Parallel { stage, loop_ } => {
                self.annotate(dag, stage, loop_, ForKind::Parallel)
            }
            Instruction::ComputeAt {
                stage,
                target_stage,
                target_loop,
            } => {
                let id = self.stage_id(dag, stage)?;
                let tid = self.stage_id(dag, target_stage)?;
                if tid <= id {
                    return Err(illegal(
                        stage,
                        target_loop,
                        format!("target `{target_stage}` is not a later stage"),
                    ));
                }
                self.not_inlined(id, stage)?;
                self.not_inlined(tid, target_stage)?;
                if dag.outputs().contains(&id) {
                    return Err(illegal(
                        stage,
                        target_loop,
                        "an output stage cannot be computed at another stage",
                    ));
                }
                let (_, iv) = self.leaf(tid, target_stage, target_loop)?;
                let ss = self.ss_mut(id)?;
                if ss
                    .leaves
                    .iter()
                    .any(|&l| ss.iter_vars[l].annotation == ForKind::Parallel)
                {
                    return Err(illegal(
                        stage,
                        target_loop,
                        "a stage with a parallel loop cannot be computed inside another",
                    ));
                }
                ss.attach = Attach::At {
                    stage: tid,
                    iter: iv,
                };
                Ok(())
            }
            Instruction::ComputeInline { stage } => {
                let id = self.stage_id(dag, stage)?;
                let st = dag
                    .stage(id)
                    .ok_or_else(|| ScheduleError::UnknownStage(stage.clone()))?;
                if st.reduction.is_some() {
                    return Err(illegal(stage, "-", "a reduction cannot be inlined"));
                }
                if dag.outputs().contains(&id) {
                    return Err(illegal(stage, "-", "an output stage cannot be inlined"));
                }
                if self
                    .stages
                    .iter()
                    .flatten()
                    .any(|s| matches!(s.attach, Attach::At { stage, .. } if stage == id))
                {
                    return Err(illegal(
                        stage,
                        "-",
                        "another stage is computed at this stage",
                    ));
                }
                let ss = self.ss_mut(id)?;
                if ss.attach != Attach::Root {
                    return Err(illegal(
                        stage,
                        "-",
                        "the stage is already inlined or computed at another stage",
                    ));
                }
                ss.attach = Attach::Inline;
                Ok(())
            }
            Instruction::CacheWrite { stage } => {
                let id = self.stage_id(dag, stage)?;
                self.not_inlined(id, stage)?;
                let st = dag
                    .stage(id)
                    .ok_or_else(|| ScheduleError::UnknownStage(stage.clone()))?;
                if st.reduction.is_none() {
                    return Err(illegal(stage, "-", "cache_write needs a reduction stage"));
                }
                let ss = self.ss_mut(id)?;
                if ss.cache_write {
                    return Err(illegal(stage, "-", "cache_write applied twice"));
                }
                ss.cache_write = true;
                Ok(())
            }
            Instruction::Pack {
                buffer,
                axis,
                factor,
                outer_first,
                group,
            } => {
                let id = dag
                    .find(buffer)
                    .ok_or_else(|| ScheduleError::UnknownStage(buffer.clone()))?;
                let t = dag
                    .tensor(id)
                    .ok_or_else(|| ScheduleError::UnknownStage(buffer.clone()))?;
                if t.stage.is_some() {
                    return Err(illegal(buffer, "-", "only placeholders can be packed"));
                }
                if *axis >= t.shape.len() {
                    return Err(illegal(
                        buffer,
                        "-",
                        format!("pack axis {axis} outside rank {}", t.shape.len()),
                    ));
                }
                if *factor == 0 || *factor > MAX_EXTENT {
                    return Err(illegal(buffer, "-", format!("pack factor {factor}")));
                }
                let pack = Pack {
                    axis: *axis,
                    factor: *factor,
                    outer_first: *outer_first,
                    group: *group,
                };
                if !pack.fits(t.shape.len()) || group.is_some_and(|(_, q)| q > MAX_EXTENT) {
                    return Err(illegal(buffer, "-", format!("pack group {group:?}")));
                }
                let packed = pack.packed_shape(&t.shape);
                if kiln_ir::TensorType::new(t.dtype, packed).is_err() {
                    return Err(illegal(buffer, "-", "packed buffer too large"));
                }
                let slot = self
                    .packs
                    .get_mut(id.index())
                    .ok_or_else(|| ScheduleError::UnknownStage(buffer.clone()))?;
                if slot.is_some() {
                    return Err(illegal(buffer, "-", "buffer packed twice"));
                }
                *slot = Some(pack);
                Ok(())
            }
        }
    }

    fn annotate(
        &mut self,
        dag: &ComputeDag,
        stage: &str,
        loop_: &str,
        kind: ForKind,
    ) -> Result<(), ScheduleError> {
        let id = self.stage_id(dag, stage)?;
        self.not_inlined(id, stage)?;
        let (_, iv) = self.leaf(id, stage, loop_)?;
        let ss = self.ss_mut(id)?;
        let var = &mut ss.iter_vars[iv];
        if var.kind == IterKind::Reduce && kind != ForKind::Unrolled {
            return Err(illegal(
                stage,
                loop_,
                format!("a reduction loop cannot be {}", kind_word(kind)),
            ));
        }
        if var.annotation != ForKind::Serial {
            return Err(illegal(
                stage,
                loop_,
                format!("loop is already {}", kind_word(var.annotation)),
            ));
        }
        if kind == ForKind::Parallel && matches!(ss.attach, Attach::At { .. }) {
            return Err(illegal(
                stage,
                loop_,
                "a stage computed inside another cannot have a parallel loop",
            ));
        }
        ss.iter_vars[iv].annotation = kind;
        Ok(())
    }

    /// Tensors (placeholders and non-inlined stages) that stage `id` reads once inlined stages
    /// are substituted.
    pub fn effective_reads(&self, dag: &ComputeDag, id: BufferId) -> BTreeSet<BufferId> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<BufferId> = dag.reads(id).into_iter().collect();
        let mut seen = BTreeSet::new();
        while let Some(t) = todo.pop() {
            if !seen.insert(t) {
                continue;
            }
            match self.stage(t) {
                Some(s) if s.attach == Attach::Inline => todo.extend(dag.reads(t)),
                _ => {
                    out.insert(t);
                }
            }
        }
        out
    }

    /// Checks the rules that concern the final state (see the module doc).
    pub fn validate(&self, dag: &ComputeDag) -> Result<(), ScheduleError> {
        if self.stages.len() != dag.tensors().len() {
            return Err(ScheduleError::UnknownStage(
                "schedule does not match the DAG".into(),
            ));
        }
        for (i, ss) in self.stages.iter().enumerate() {
            let Some(ss) = ss else { continue };
            let id = BufferId(i as u32);
            let name = &dag.tensors()[i].name;
            if ss.attach == Attach::Inline {
                continue;
            }
            if let Attach::At { stage: tid, iter } = ss.attach {
                let tname = dag.tensor(tid).map_or("?", |t| t.name.as_str());
                let loop_name = self
                    .stage(tid)
                    .and_then(|t| t.iter_vars.get(iter))
                    .map_or("?", |v| v.name.as_str());
                let target = self
                    .stage(tid)
                    .ok_or_else(|| ScheduleError::UnknownStage(tname.into()))?;
                if target.attach == Attach::Inline {
                    return Err(illegal(
                        name,
                        loop_name,
                        format!("compute_at target `{tname}` is inlined"),
                    ));
                }
                if !target.leaves.contains(&iter) {
                    return Err(illegal(
                        name,
                        loop_name,
                        format!("compute_at target loop of `{tname}` was split or fused away"),
                    ));
                }
                let consumers: Vec<BufferId> = (0..self.stages.len())
                    .map(|c| BufferId(c as u32))
                    .filter(|&c| {
                        self.stage(c).is_some_and(|s| s.attach != Attach::Inline)
                            && self.effective_reads(dag, c).contains(&id)
                    })
                    .collect();
                if consumers != [tid] {
                    return Err(illegal(
                        name,
                        loop_name,
                        format!("compute_at target `{tname}` must be the only consumer"),
                    ));
                }
            }
            if let Some((iv, _)) = ss.tensorize {
                let loop_name = ss.iter_vars.get(iv).map_or("?", |v| v.name.as_str());
                if !ss.leaves.contains(&iv) {
                    return Err(illegal(
                        name,
                        loop_name,
                        "the tensorized loop is not a loop",
                    ));
                }
                if ss.attach != Attach::Root {
                    return Err(illegal(
                        name,
                        loop_name,
                        "only a stage computed at root can be tensorized",
                    ));
                }
            }
            for (pos, &l) in ss.leaves.iter().enumerate() {
                let v = &ss.iter_vars[l];
                match v.annotation {
                    ForKind::Parallel if pos != 0 || ss.attach != Attach::Root => {
                        return Err(illegal(
                            name,
                            &v.name,
                            "parallel only on the outermost loop of a stage computed at root",
                        ));
                    }
                    ForKind::Vectorized if pos + 1 != ss.leaves.len() => {
                        return Err(illegal(
                            name,
                            &v.name,
                            "a vectorized loop must be the innermost loop",
                        ));
                    }
                    ForKind::Vectorized if self.is_attach_target(id, l) => {
                        return Err(illegal(
                            name,
                            &v.name,
                            "a stage is computed inside a vectorized loop",
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

fn kind_word(k: ForKind) -> &'static str {
    match k {
        ForKind::Serial => "serial",
        ForKind::Parallel => "parallel",
        ForKind::Vectorized => "vectorized",
        ForKind::Unrolled => "unrolled",
    }
}
