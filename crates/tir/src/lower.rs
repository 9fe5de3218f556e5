//! Lowering a scheduled [`ComputeDag`] to a [`PrimFunc`].
//!
//! Invariant: [`lower`] either returns a function that passes [`verify`] and computes every
//! output of the DAG as the naive schedule does, or an error naming the stage and loop it could
//! not lower; it never panics.
//!
//! Shape of the output: params are the placeholders (in DAG order) then the outputs (stages no
//! other stage reads). Packed placeholders are copied into a local `<name>_packed` buffer first;
//! intermediates computed at root get a full local buffer, stages computed at a consumer's loop a
//! `<name>_tile` buffer covering the region that loop's body reads, cache-written reductions an
//! `<name>_acc` buffer. For each stage, in DAG order (attached stages at their loop):
//!
//! * the leaf loops, outermost first, with their annotations; each root axis is rebuilt from the
//!   leaf variables through the split (`outer * factor + inner`) and fuse (`f // n`, `f % n`)
//!   relations;
//! * a reduction is split at its first reduction loop: the loops before it are shared, then an
//!   *init* nest over the remaining spatial loops stores the initial value, then the *update*
//!   nest accumulates, then (with `cache_write`) a *write-back* nest copies the accumulator out;
//! * non-dividing splits get a guard `value < extent`, and a stage computed for a region that may
//!   leave its domain gets `0 <= index < extent` guards; each guard sits just inside the deepest
//!   loop it depends on (a vectorized loop may not contain one: such schedules are rejected);
//! * compute_at regions: each index of the consumer's loads of the producer must be affine in
//!   the consumer loops inside the attach point, `base + Σ a_v v + c`, with the same `base` (an
//!   expression of outer loops) in every load; the region is `base + [min, max]`.

use crate::affine::{linearize, sum_expr, Lin};
use crate::compute::{ComputeDag, Stage};
use crate::expr::{BufferId, Expr, VarId};
use crate::schedule::{
    iter_extents, Attach, IterKind, Pack, Relation, Schedule, ScheduleError, StageSchedule,
    MAX_EXTENT,
};
use crate::stmt::{ForKind, Stmt};
use crate::tir::PrimFunc;
use crate::verify::{verify, Bounds, VerifyError};
use kiln_ir::TensorType;
use std::collections::BTreeSet;

/// Largest extent of an unrolled loop.
pub const MAX_UNROLL: usize = 64;

/// Why lowering failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LowerError {
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("stage `{stage}`, loop `{loop_}`: {reason}")]
    Illegal {
        stage: String,
        loop_: String,
        reason: String,
    },
    #[error("internal error, lowered function fails verification: {0}")]
    Verify(#[from] VerifyError),
}

fn illegal(stage: &str, loop_: &str, reason: impl Into<String>) -> LowerError {
    LowerError::Illegal {
        stage: stage.to_string(),
        loop_: loop_.to_string(),
        reason: reason.into(),
    }
}

/// The naive schedule of `dag` lowered: every stage at root, loops serial in axis order.
pub fn lower_naive(dag: &ComputeDag) -> Result<PrimFunc, LowerError> {
    lower(dag, &Schedule::naive(dag))
}

/// Lowers `dag` under `sched` (see the module doc).
pub fn lower(dag: &ComputeDag, sched: &Schedule) -> Result<PrimFunc, LowerError> {
    sched.validate(dag)?;
    let outputs = dag.outputs();
    let name = outputs
        .last()
        .and_then(|o| dag.tensor(*o))
        .map_or("empty", |t| t.name.as_str());
    let n = dag.tensors().len();
    let mut l = Lowerer {
        dag,
        sched,
        func: PrimFunc::new(name),
        var_ext: vec![],
        buf_of: vec![None; n],
        packed: vec![None; n],
        tiles: vec![None; n],
        attached: vec![vec![]; n],
        fma_update: false,
    };
    let mut body = vec![];
    for (i, t) in dag.tensors().iter().enumerate() {
        if t.stage.is_none() {
            l.buf_of[i] = Some(l.func.add_param(t.name.clone(), t.dtype, t.shape.clone()));
        }
    }
    for o in &outputs {
        let t = &dag.tensors()[o.index()];
        l.buf_of[o.index()] = Some(l.func.add_param(t.name.clone(), t.dtype, t.shape.clone()));
    }
    for (i, t) in dag.tensors().iter().enumerate() {
        let id = BufferId(i as u32);
        match sched.stage(id).map(|s| s.attach) {
            Some(Attach::Root) if l.buf_of[i].is_none() => {
                l.buf_of[i] = Some(l.func.add_local(t.name.clone(), t.dtype, t.shape.clone()));
            }
            Some(Attach::At { stage, iter }) => {
                if let Some(v) = l.attached.get_mut(stage.index()) {
                    v.push((iter, id));
                }
            }
            _ => {}
        }
        if let Some(p) = sched.pack(id) {
            body.push(l.pack_nest(id, p)?);
        }
    }
    for i in 0..n {
        let id = BufferId(i as u32);
        if sched.stage(id).is_some_and(|s| s.attach == Attach::Root) {
            body.push(l.emit_stage(id, None)?);
        }
    }
    l.func.body = Stmt::seq(body);
    let func = l.func.canonicalize();
    check_tensorized(&func, &func.body)?;
    verify(&func)?;
    Ok(func)
}

/// Checks that every tensorized region of `func` is an instance of its intrinsic.
fn check_tensorized(func: &PrimFunc, s: &Stmt) -> Result<(), LowerError> {
    let mut err = None;
    s.walk(&mut |s| {
        if let Stmt::Tensorized { intrinsic, body } = s {
            if err.is_none() {
                if let Err(e) = crate::tensorize::analyze(*intrinsic, body, func) {
                    err = Some(illegal(
                        &func.name,
                        "-",
                        format!("tensorize {}: {e}", intrinsic.name()),
                    ));
                }
            }
        }
    });
    err.map_or(Ok(()), Err)
}

/// A compute_at region: per dimension, the base expression and the extent.
type Region = Vec<(Expr, usize)>;

/// How a stage computed at a consumer loop maps the consumer's indices into its tile.
#[derive(Clone, Debug)]
struct Tile {
    /// Consumer loop variables inside the attach point.
    inner: BTreeSet<VarId>,
    /// Per dimension, the constant `min` of the region (`index - base - min` is the tile index).
    offsets: Vec<i128>,
}

struct Lowerer<'a> {
    dag: &'a ComputeDag,
    sched: &'a Schedule,
    func: PrimFunc,
    var_ext: Vec<usize>,
    buf_of: Vec<Option<BufferId>>,
    packed: Vec<Option<(BufferId, Pack)>>,
    tiles: Vec<Option<Tile>>,
    /// Per target stage: (leaf iter var, stage computed there), in DAG order.
    attached: Vec<Vec<(usize, BufferId)>>,
    /// A reduction emitted now accumulates with an explicit `fma` (it is computed inside a
    /// tensorized loop).
    fma_update: bool,
}

/// The terms of a sum (`a + b + ...`), in order.
fn flatten_sum(e: &Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::Binary {
            op: crate::expr::BinOp::Add,
            a,
            b,
        } => {
            flatten_sum(a, out);
            flatten_sum(b, out);
        }
        _ => out.push(e.clone()),
    }
}

fn and_all(conds: Vec<Expr>) -> Option<Expr> {
    conds.into_iter().reduce(Expr::and)
}

/// A loop of an emitted nest.
#[derive(Clone, Copy, Debug)]
struct Level {
    pos: usize,
    var: VarId,
    extent: usize,
    kind: ForKind,
}

/// A guard: the condition and the leaf position of the deepest loop it depends on.
#[derive(Clone, Debug)]
struct Guard {
    deepest: usize,
    spatial: bool,
    kind: GuardKind,
}

#[derive(Clone, Debug)]
enum GuardKind {
    /// `value(iter) < extent`.
    Split { iter: usize, extent: usize },
    /// `0 <= base + value(root d)` and/or `base + value(root d) < extent`.
    Domain {
        dim: usize,
        lower: bool,
        upper: bool,
        extent: usize,
    },
}

impl Lowerer<'_> {
    fn new_var(&mut self, name: &str, extent: usize) -> VarId {
        self.var_ext.push(extent);
        self.func.new_var(name)
    }

    fn bounds(&self) -> Bounds {
        let mut b = Bounds::new();
        for (i, &e) in self.var_ext.iter().enumerate() {
            b.set_loop(VarId(i as u32), e);
        }
        b
    }

    fn tensor_name(&self, id: BufferId) -> &str {
        self.dag.tensor(id).map_or("?", |t| t.name.as_str())
    }

    fn pack_nest(&mut self, id: BufferId, pack: Pack) -> Result<Stmt, LowerError> {
        let t = &self.dag.tensors()[id.index()];
        let name = t.name.clone();
        let src = self.buf_of[id.index()]
            .ok_or_else(|| illegal(&name, "-", "pack of a non-placeholder"))?;
        let pshape = pack.packed_shape(&t.shape);
        if TensorType::new(t.dtype, pshape.clone()).is_err() || !pack.fits(t.shape.len()) {
            return Err(illegal(&name, "-", "bad packing"));
        }
        let (dtype, axis_extent) = (t.dtype, t.shape[pack.axis]);
        let pbuf = self
            .func
            .add_local(format!("{name}_packed"), dtype, pshape.clone());
        let vars: Vec<VarId> = pshape
            .iter()
            .enumerate()
            .map(|(d, &e)| self.new_var(&format!("{name}_p{d}"), e))
            .collect();
        let packed: Vec<Expr> = vars.iter().map(|v| Expr::Var(*v)).collect();
        let (mut src_idx, inner, group_inner) = pack.unpacked_index(&packed);
        src_idx[pack.axis] = src_idx[pack.axis].clone() * Expr::int(pack.factor as i64) + inner;
        let mut ragged = vec![];
        if axis_extent % pack.factor != 0 {
            ragged.push((pack.axis, axis_extent));
        }
        if let (Some((g, q)), Some(gi)) = (pack.group, group_inner) {
            src_idx[g] = src_idx[g].clone() * Expr::int(q as i64) + gi;
            if !t.shape[g].is_multiple_of(q) {
                ragged.push((g, t.shape[g]));
            }
        }
        let mut value = Expr::load(src, src_idx.clone());
        for (d, extent) in ragged {
            let cond = Expr::lt(src_idx[d].clone(), Expr::int(extent as i64));
            value = Expr::select(cond, value, Expr::zero(dtype));
        }
        let mut body = Stmt::store(pbuf, vars.iter().map(|v| Expr::Var(*v)).collect(), value);
        for (v, e) in vars.iter().zip(&pshape).rev() {
            body = Stmt::for_(*v, *e, ForKind::Serial, body);
        }
        self.packed[id.index()] = Some((pbuf, pack));
        Ok(body)
    }

    /// Values of every iteration variable reachable from the given leaf bindings.
    fn values(ss: &StageSchedule, ext: &[usize], leaves: &[(usize, VarId)]) -> Vec<Option<Expr>> {
        let mut vals: Vec<Option<Expr>> = vec![None; ss.iter_vars.len()];
        for &(iv, v) in leaves {
            vals[iv] = Some(Expr::Var(v));
        }
        for r in ss.relations.iter().rev() {
            match r {
                Relation::Split {
                    parent,
                    factors,
                    children,
                } => {
                    let Some(mut acc) = vals[children[0]].clone() else {
                        continue;
                    };
                    let mut complete = true;
                    for (c, f) in children[1..].iter().zip(factors) {
                        match &vals[*c] {
                            Some(cv) => {
                                let scaled = if *f == 1 {
                                    acc
                                } else {
                                    acc * Expr::int(*f as i64)
                                };
                                acc = scaled + cv.clone();
                            }
                            None => {
                                complete = false;
                                break;
                            }
                        }
                    }
                    if complete {
                        vals[*parent] = Some(acc);
                    }
                }
                Relation::Fuse { loops, fused } => {
                    let Some(f) = vals[*fused].clone() else {
                        continue;
                    };
                    for (i, &l) in loops.iter().enumerate() {
                        // A loop of extent 1 is 0; below outer loops of extent 1 (a batch of
                        // one) `f / stride` is already less than the extent and needs no
                        // modulo. Fewer divisions for the code and plainer indices for the
                        // analyses that read them.
                        if ext[l] == 1 {
                            vals[l] = Some(Expr::int(0));
                            continue;
                        }
                        let stride: usize = loops[i + 1..].iter().map(|&x| ext[x]).product();
                        let outer: usize = loops[..i].iter().map(|&x| ext[x]).product();
                        let mut e = if stride == 1 {
                            f.clone()
                        } else {
                            Expr::floordiv(f.clone(), Expr::int(stride as i64))
                        };
                        if outer > 1 {
                            e = Expr::floormod(e, Expr::int(ext[l] as i64));
                        }
                        vals[l] = Some(e);
                    }
                }
            }
        }
        vals
    }

    /// Leaf positions below iteration variable `iv`.
    fn leaf_positions(ss: &StageSchedule, iv: usize) -> Vec<usize> {
        let mut children: Vec<Vec<usize>> = vec![vec![]; ss.iter_vars.len()];
        for r in &ss.relations {
            match r {
                Relation::Split {
                    parent,
                    children: c,
                    ..
                } => children[*parent].extend(c),
                Relation::Fuse { loops, fused } => {
                    loops.iter().for_each(|&l| children[l].push(*fused))
                }
            }
        }
        let mut out = BTreeSet::new();
        let mut todo = vec![iv];
        let mut seen = BTreeSet::new();
        while let Some(x) = todo.pop() {
            if !seen.insert(x) {
                continue;
            }
            if let Some(p) = ss.leaves.iter().position(|&l| l == x) {
                out.insert(p);
            }
            todo.extend(&children[x]);
        }
        out.into_iter().collect()
    }

    /// Substitutes axis variables by `map` and inlined stages by their bodies. Loads keep DAG
    /// tensor ids.
    fn expand(&self, e: &Expr, map: &dyn Fn(VarId) -> Option<Expr>) -> Result<Expr, LowerError> {
        match e {
            Expr::Var(v) => {
                map(*v).ok_or_else(|| illegal("?", "-", format!("unmapped axis variable {v}")))
            }
            Expr::Load { buf, indices } => {
                let idx = indices
                    .iter()
                    .map(|i| self.expand(i, map))
                    .collect::<Result<Vec<_>, _>>()?;
                let inlined = self
                    .sched
                    .stage(*buf)
                    .is_some_and(|s| s.attach == Attach::Inline);
                match self.dag.stage(*buf) {
                    Some(st) if inlined => {
                        let axes: Vec<VarId> = st.axes.iter().map(|a| a.var).collect();
                        let m =
                            |v: VarId| axes.iter().position(|a| *a == v).map(|d| idx[d].clone());
                        self.expand(&st.body, &m)
                    }
                    _ => Ok(Expr::Load {
                        buf: *buf,
                        indices: idx,
                    }),
                }
            }
            _ => e.try_map_children(&mut |c| self.expand(c, map)),
        }
    }

    /// Replaces DAG tensor loads by function buffer loads (tiles, packed layouts).
    fn resolve(&self, e: &Expr) -> Result<Expr, LowerError> {
        match e {
            Expr::Load { buf, indices } => {
                let idx = indices
                    .iter()
                    .map(|i| self.resolve(i))
                    .collect::<Result<Vec<_>, _>>()?;
                let name = self.tensor_name(*buf).to_string();
                let target = self.buf_of[buf.index()]
                    .ok_or_else(|| illegal(&name, "-", "read before it is computed"))?;
                if let Some(tile) = &self.tiles[buf.index()] {
                    let mut out = vec![];
                    for (d, i) in idx.iter().enumerate() {
                        let lin = linearize(i, &tile.inner).ok_or_else(|| {
                            illegal(&name, "-", format!("tile index {d} is not affine"))
                        })?;
                        let off = tile.offsets.get(d).copied().unwrap_or(0);
                        out.push(
                            sum_expr(&lin.coeffs, lin.c - off)
                                .ok_or_else(|| illegal(&name, "-", "tile index overflow"))?,
                        );
                    }
                    return Ok(Expr::load(target, out));
                }
                if let Some((pbuf, pack)) = self.packed[buf.index()] {
                    let a = idx
                        .get(pack.axis)
                        .cloned()
                        .ok_or_else(|| illegal(&name, "-", "pack axis"))?;
                    let outer_extent = self
                        .dag
                        .tensor(*buf)
                        .and_then(|t| t.shape.get(pack.axis))
                        .map_or(0, |d| d.div_ceil(pack.factor.max(1)));
                    let split = self.split_index(&a, pack.factor, outer_extent);
                    let group = match pack.group {
                        Some((g, q)) => {
                            let gi = idx
                                .get(g)
                                .cloned()
                                .ok_or_else(|| illegal(&name, "-", "pack group axis"))?;
                            let extent = self
                                .dag
                                .tensor(*buf)
                                .and_then(|t| t.shape.get(g))
                                .map_or(0, |d| d.div_ceil(q.max(1)));
                            Some(self.split_index(&gi, q, extent))
                        }
                        None => None,
                    };
                    return Ok(Expr::load(pbuf, pack.packed_index(&idx, split, group)));
                }
                Ok(Expr::load(target, idx))
            }
            _ => e.try_map_children(&mut |c| self.resolve(c)),
        }
    }

    /// `(a // f, a % f)`, written without division when `a` is a sum of multiples of `f` and a
    /// remainder whose range (from the loop extents) lies in `0..f`, and the quotient's range in
    /// `0..outer_extent` (the index of a tile whose split factor is the packing factor), so
    /// that the packed index stays affine.
    fn split_index(&self, a: &Expr, f: usize, outer_extent: usize) -> (Expr, Expr) {
        let general = || {
            let fe = Expr::int(f as i64);
            (
                Expr::floordiv(a.clone(), fe.clone()),
                Expr::floormod(a.clone(), fe),
            )
        };
        let mut terms = vec![];
        flatten_sum(a, &mut terms);
        let f = f as i64;
        let (mut quot, mut rem): (Vec<Expr>, Vec<Expr>) = (vec![], vec![]);
        let (mut lo, mut hi) = (0i128, 0i128);
        for t in terms {
            match &t {
                Expr::Int { value, .. } if value % f == 0 => quot.push(Expr::int(value / f)),
                Expr::Binary {
                    op: crate::expr::BinOp::Mul,
                    a: x,
                    b: k,
                } if k.as_int().is_some_and(|k| k % f == 0) => {
                    let k = k.as_int().unwrap_or(f) / f;
                    quot.push(if k == 1 {
                        (**x).clone()
                    } else {
                        (**x).clone() * Expr::int(k)
                    });
                }
                Expr::Var(v) => {
                    let e = *self.var_ext.get(v.index()).unwrap_or(&usize::MAX) as i128;
                    hi += e - 1;
                    rem.push(t.clone());
                }
                Expr::Int { value, .. } if *value >= 0 => {
                    lo += *value as i128;
                    hi += *value as i128;
                    rem.push(t.clone());
                }
                _ => return general(),
            }
        }
        if lo < 0 || hi >= f as i128 {
            return general();
        }
        let sum = |v: Vec<Expr>| v.into_iter().reduce(|x, y| x + y).unwrap_or(Expr::int(0));
        let q = sum(quot);
        match self.bounds().interval(&q) {
            Some(iv) if iv.lo >= 0 && iv.hi < outer_extent as i128 => (q, sum(rem)),
            _ => general(),
        }
    }

    /// The region of `x` that `body` reads, as `(base expression, extent)` per dimension, and
    /// the tile mapping.
    fn region(
        &self,
        body: &Expr,
        x: BufferId,
        inner: &BTreeSet<VarId>,
        at: (&str, &str),
    ) -> Result<(Region, Vec<i128>), LowerError> {
        let xname = self.tensor_name(x).to_string();
        let err = |r: String| illegal(&xname, at.1, format!("compute_at `{}`: {r}", at.0));
        let mut loads: Vec<Vec<Expr>> = vec![];
        body.walk(&mut |e| {
            if let Expr::Load { buf, indices } = e {
                if *buf == x {
                    loads.push(indices.clone());
                }
            }
        });
        let rank = self.dag.tensor(x).map_or(0, |t| t.shape.len());
        if loads.is_empty() {
            return Err(err("the consumer does not read the stage".into()));
        }
        let mut region = vec![];
        let mut offsets = vec![];
        for d in 0..rank {
            let mut base: Option<Vec<(i128, Expr)>> = None;
            let (mut lo, mut hi) = (i128::MAX, i128::MIN);
            for idx in &loads {
                let lin = linearize(&idx[d], inner).ok_or_else(|| {
                    err(format!(
                        "index {d} is not affine in the loops inside the attach point"
                    ))
                })?;
                let (mut mn, mut mx) = (lin.c, lin.c);
                for (v, a) in &lin.coeffs {
                    let span = (*self.var_ext.get(v.index()).unwrap_or(&1) as i128 - 1) * a;
                    if span < 0 {
                        mn += span
                    } else {
                        mx += span
                    }
                }
                match &base {
                    None => base = Some(lin.rest.clone()),
                    Some(b) if *b != lin.rest => {
                        return Err(err(format!("loads differ in the base of index {d}")))
                    }
                    _ => {}
                }
                lo = lo.min(mn);
                hi = hi.max(mx);
            }
            let extent = usize::try_from(hi - lo + 1)
                .ok()
                .filter(|&e| e <= MAX_EXTENT)
                .ok_or_else(|| err("region too large".into()))?;
            let rest = Lin {
                rest: base.unwrap_or_default(),
                ..Lin::default()
            }
            .rest_expr();
            let lo64 = i64::try_from(lo).map_err(|_| err("region offset overflow".into()))?;
            let base_expr = match rest {
                None => Expr::int(lo64),
                Some(r) if lo == 0 => r,
                Some(r) if lo < 0 => r - Expr::int(-lo64),
                Some(r) => r + Expr::int(lo64),
            };
            region.push((base_expr, extent));
            offsets.push(lo);
        }
        Ok((region, offsets))
    }

    /// Emits the loop nest of stage `id`, over its whole shape or over `region`.
    fn emit_stage(
        &mut self,
        id: BufferId,
        region: Option<Vec<(Expr, usize)>>,
    ) -> Result<Stmt, LowerError> {
        let dag = self.dag;
        let t = &dag.tensors()[id.index()];
        let name = t.name.as_str();
        let st: &Stage = t
            .stage
            .as_ref()
            .ok_or_else(|| illegal(name, "-", "not a stage"))?;
        let ss: &StageSchedule = self
            .sched
            .stage(id)
            .ok_or_else(|| illegal(name, "-", "no schedule"))?;
        let n_sp = st.axes.len();
        let mut roots: Vec<usize> = match &region {
            Some(r) => r.iter().map(|(_, e)| *e).collect(),
            None => t.shape.clone(),
        };
        roots.extend(st.reduce_axes.iter().map(|a| a.extent));
        let ext =
            iter_extents(ss, &roots).ok_or_else(|| illegal(name, "-", "loop extents overflow"))?;
        let leaves = &ss.leaves;
        let iv_name = |iv: usize| ss.iter_vars[iv].name.as_str();
        for &l in leaves {
            match ss.iter_vars[l].annotation {
                ForKind::Vectorized if ext[l] < 2 => {
                    return Err(illegal(
                        name,
                        iv_name(l),
                        format!("vectorized extent {} is below 2", ext[l]),
                    ));
                }
                ForKind::Unrolled if ext[l] > MAX_UNROLL => {
                    return Err(illegal(
                        name,
                        iv_name(l),
                        format!("unrolled extent {} exceeds {MAX_UNROLL}", ext[l]),
                    ));
                }
                _ => {}
            }
            if ext[l] == 0 || ext[l] > MAX_EXTENT {
                return Err(illegal(name, iv_name(l), format!("loop extent {}", ext[l])));
            }
        }
        let k = match st.reduction {
            Some(_) => leaves
                .iter()
                .position(|&l| ss.iter_vars[l].kind == IterKind::Reduce)
                .unwrap_or(leaves.len()),
            None => leaves.len(),
        };
        let is_spatial = |pos: usize| ss.iter_vars[leaves[pos]].kind == IterKind::Spatial;
        let alloc = |this: &mut Self, positions: &[usize]| -> Vec<Level> {
            positions
                .iter()
                .map(|&p| Level {
                    pos: p,
                    var: this.new_var(iv_name(leaves[p]), ext[leaves[p]]),
                    extent: ext[leaves[p]],
                    kind: ss.iter_vars[leaves[p]].annotation,
                })
                .collect()
        };
        let common = alloc(self, &(0..k).collect::<Vec<_>>());
        let update = alloc(self, &(k..leaves.len()).collect::<Vec<_>>());
        let spatial_tail: Vec<usize> = (k..leaves.len()).filter(|&p| is_spatial(p)).collect();
        let init = if st.reduction.is_some() {
            alloc(self, &spatial_tail)
        } else {
            vec![]
        };
        let wb = if ss.cache_write {
            alloc(self, &spatial_tail)
        } else {
            vec![]
        };

        let bind = |levels: &[&[Level]]| -> Vec<(usize, VarId)> {
            levels
                .iter()
                .flat_map(|ls| ls.iter().map(|l| (leaves[l.pos], l.var)))
                .collect()
        };
        let vals_update = Self::values(ss, &ext, &bind(&[&common, &update]));
        let vals_init = Self::values(ss, &ext, &bind(&[&common, &init]));
        let vals_wb = Self::values(ss, &ext, &bind(&[&common, &wb]));
        let global = |vals: &[Option<Expr>]| -> Result<Vec<Expr>, LowerError> {
            (0..n_sp)
                .map(|d| {
                    let v = vals[d]
                        .clone()
                        .ok_or_else(|| illegal(name, "-", format!("axis {d} not bound")))?;
                    Ok(match &region {
                        Some(r) if r[d].0 != Expr::int(0) => r[d].0.clone() + v,
                        _ => v,
                    })
                })
                .collect()
        };

        // Guards.
        let mut guards = vec![];
        for r in &ss.relations {
            if let Relation::Split {
                parent, factors, ..
            } = r
            {
                let prod: usize = factors.iter().product();
                if ext[*parent] % prod.max(1) != 0 {
                    let pos = Self::leaf_positions(ss, *parent);
                    guards.push(Guard {
                        deepest: pos.last().copied().unwrap_or(0),
                        spatial: ss.iter_vars[*parent].kind == IterKind::Spatial,
                        kind: GuardKind::Split {
                            iter: *parent,
                            extent: ext[*parent],
                        },
                    });
                }
            }
        }
        if let Some(r) = &region {
            let b = self.bounds();
            for (d, (base, extent)) in r.iter().enumerate() {
                let shape_d = t.shape[d] as i128;
                let (lower, upper) = match b.interval(base) {
                    Some(iv) => (iv.lo < 0, iv.hi + *extent as i128 > shape_d),
                    None => (true, true),
                };
                if lower || upper {
                    let pos = Self::leaf_positions(ss, d);
                    guards.push(Guard {
                        deepest: pos.last().copied().unwrap_or(0),
                        spatial: true,
                        kind: GuardKind::Domain {
                            dim: d,
                            lower,
                            upper,
                            extent: t.shape[d],
                        },
                    });
                }
            }
        }
        let cond = |g: &Guard, vals: &[Option<Expr>]| -> Result<Vec<Expr>, LowerError> {
            Ok(match &g.kind {
                GuardKind::Split { iter, extent } => {
                    let v = vals[*iter]
                        .clone()
                        .ok_or_else(|| illegal(name, iv_name(*iter), "guard variable not bound"))?;
                    vec![Expr::lt(v, Expr::int(*extent as i64))]
                }
                GuardKind::Domain {
                    dim,
                    lower,
                    upper,
                    extent,
                } => {
                    let g = global(vals)?.swap_remove(*dim);
                    let mut c = vec![];
                    if *lower {
                        c.push(Expr::ge(g.clone(), Expr::int(0)));
                    }
                    if *upper {
                        c.push(Expr::lt(g, Expr::int(*extent as i64)));
                    }
                    c
                }
            })
        };

        // The body of the update (or only) nest, and the stages computed inside this one.
        let axis_vars: Vec<VarId> = st.axes.iter().map(|a| a.var).collect();
        let red_vars: Vec<VarId> = st.reduce_axes.iter().map(|a| a.var).collect();
        let g_update = global(&vals_update)?;
        let body = {
            let map = |v: VarId| {
                if let Some(d) = axis_vars.iter().position(|a| *a == v) {
                    return Some(g_update[d].clone());
                }
                red_vars
                    .iter()
                    .position(|a| *a == v)
                    .and_then(|r| vals_update[n_sp + r].clone())
            };
            self.expand(&st.body, &map)?
        };
        let mut attached_stmts: Vec<(usize, Stmt)> = vec![];
        let here = self.attached[id.index()].clone();
        let all_levels: Vec<Level> = common.iter().chain(&update).copied().collect();
        for (iter, x) in here {
            let Some(p) = leaves.iter().position(|&l| l == iter) else {
                return Err(illegal(
                    self.tensor_name(x),
                    iv_name(iter),
                    "compute_at target loop is not a loop",
                ));
            };
            let inner: BTreeSet<VarId> = all_levels
                .iter()
                .filter(|l| l.pos > p)
                .map(|l| l.var)
                .collect();
            let (reg, offsets) = self.region(&body, x, &inner, (name, iv_name(iter)))?;
            let xt = &dag.tensors()[x.index()];
            let tile_shape: Vec<usize> = reg.iter().map(|(_, e)| *e).collect();
            if TensorType::new(xt.dtype, tile_shape.clone()).is_err() {
                return Err(illegal(&xt.name, iv_name(iter), "tile buffer too large"));
            }
            let tbuf = self
                .func
                .add_local(format!("{}_tile", xt.name), xt.dtype, tile_shape);
            self.buf_of[x.index()] = Some(tbuf);
            let in_tensorized = ss.tensorize.is_some_and(|(t, _)| t == iter);
            let outer_fma = std::mem::replace(&mut self.fma_update, in_tensorized);
            let s = self.emit_stage(x, Some(reg));
            self.fma_update = outer_fma;
            let s = s?;
            self.tiles[x.index()] = Some(Tile { inner, offsets });
            attached_stmts.push((p, s));
        }
        let body = self.resolve(&body)?;

        // Where results go.
        let out_buf = self.buf_of[id.index()].ok_or_else(|| illegal(name, "-", "no buffer"))?;
        let out_idx = |vals: &[Option<Expr>]| -> Result<Vec<Expr>, LowerError> {
            if region.is_some() {
                (0..n_sp)
                    .map(|d| {
                        vals[d]
                            .clone()
                            .ok_or_else(|| illegal(name, "-", "axis not bound"))
                    })
                    .collect()
            } else {
                global(vals)
            }
        };

        let guard_list = |vals: &[Option<Expr>],
                          pred: &dyn Fn(&Guard) -> bool|
         -> Result<Vec<(usize, Expr)>, LowerError> {
            let mut v = vec![];
            for g in guards.iter().filter(|g| pred(g)) {
                for c in cond(g, vals)? {
                    v.push((g.deepest, c));
                }
            }
            Ok(v)
        };

        let inner_stmt = match &st.reduction {
            None => {
                let store = Stmt::store(out_buf, out_idx(&vals_update)?, body);
                let gs = guard_list(&vals_update, &|_| true)?;
                return build(name, ss, &common, &gs, &mut attached_stmts, store);
            }
            Some(red) => {
                let acc = if ss.cache_write {
                    let shape: Vec<usize> = update
                        .iter()
                        .filter(|l| is_spatial(l.pos))
                        .map(|l| l.extent)
                        .collect();
                    Some(self.func.add_local(format!("{name}_acc"), t.dtype, shape))
                } else {
                    None
                };
                let acc_idx = |levels: &[Level]| -> Vec<Expr> {
                    levels
                        .iter()
                        .filter(|l| is_spatial(l.pos))
                        .map(|l| Expr::Var(l.var))
                        .collect()
                };
                let (init_store, upd_target) = match acc {
                    Some(a) => (
                        Stmt::store(a, acc_idx(&init), red.init.clone()),
                        (a, acc_idx(&update)),
                    ),
                    None => (
                        Stmt::store(out_buf, out_idx(&vals_init)?, red.init.clone()),
                        (out_buf, out_idx(&vals_update)?),
                    ),
                };
                let acc_now = Expr::load(upd_target.0, upd_target.1.clone());
                // Inside a tensorized loop (or when this stage's own loop is tensorized) a
                // float sum accumulates `x * y` with one rounding, as micro-kernels do.
                let own = ss.tensorize.is_some_and(|(t, _)| {
                    leaves.iter().position(|&l| l == t).is_some_and(|p| p < k)
                });
                let value = match (&body, red.kind) {
                    (
                        Expr::Binary {
                            op: crate::expr::BinOp::Mul,
                            a,
                            b,
                        },
                        crate::compute::ReduceKind::Sum,
                    ) if (self.fma_update || own || red.fused_multiply_add)
                        && t.dtype == kiln_ir::DType::F32 =>
                    {
                        Expr::call(
                            crate::expr::Intrinsic::Fma,
                            vec![(**a).clone(), (**b).clone(), acc_now],
                        )
                    }
                    _ => red.kind.combine(acc_now, body),
                };
                let upd_store = Stmt::store(upd_target.0, upd_target.1, value);
                let tail = |g: &Guard| g.deepest >= k;
                let mut no_attached = vec![];
                let init_gs = guard_list(&vals_init, &|g| g.spatial && tail(g))?;
                let init_nest = build(name, ss, &init, &init_gs, &mut no_attached, init_store)?;
                let upd_gs = guard_list(&vals_update, &tail)?;
                let mut tail_attached: Vec<(usize, Stmt)> = vec![];
                let mut head_attached: Vec<(usize, Stmt)> = vec![];
                for (p, s) in attached_stmts.drain(..) {
                    if p >= k {
                        tail_attached.push((p, s))
                    } else {
                        head_attached.push((p, s))
                    }
                }
                let upd_nest = build(name, ss, &update, &upd_gs, &mut tail_attached, upd_store)?;
                let mut parts = vec![init_nest, upd_nest];
                if let Some(a) = acc {
                    let wb_store =
                        Stmt::store(out_buf, out_idx(&vals_wb)?, Expr::load(a, acc_idx(&wb)));
                    let wb_gs = guard_list(&vals_wb, &|g| g.spatial && tail(g))?;
                    parts.push(build(name, ss, &wb, &wb_gs, &mut no_attached, wb_store)?);
                }
                attached_stmts = head_attached;
                let common_gs = guard_list(&vals_update, &|g| !tail(g))?;
                (Stmt::seq(parts), common_gs)
            }
        };
        let (inner, common_gs) = inner_stmt;
        build(name, ss, &common, &common_gs, &mut attached_stmts, inner)
    }
}

/// Wraps `inner` in the loops `levels` (outermost first), placing each guard just inside the
/// loop of its deepest position and each attached stage at the start of its loop's body.
fn build(
    stage: &str,
    ss: &StageSchedule,
    levels: &[Level],
    guards: &[(usize, Expr)],
    attached: &mut Vec<(usize, Stmt)>,
    inner: Stmt,
) -> Result<Stmt, LowerError> {
    let tensorized = ss
        .tensorize
        .and_then(|(iv, intrinsic)| Some((ss.leaves.iter().position(|&l| l == iv)?, intrinsic)));
    let mut body = inner;
    for (li, lvl) in levels.iter().enumerate().rev() {
        let next = levels.get(li + 1).map_or(usize::MAX, |l| l.pos);
        let gs: Vec<Expr> = guards
            .iter()
            .filter(|(d, _)| *d >= lvl.pos && *d < next)
            .map(|(_, c)| c.clone())
            .collect();
        let mut here = vec![];
        attached.retain(|(p, s)| {
            if *p == lvl.pos {
                here.push(s.clone());
                false
            } else {
                true
            }
        });
        let loop_name = ss
            .iter_vars
            .get(ss.leaves[lvl.pos])
            .map_or("?", |v| v.name.as_str());
        if lvl.kind == ForKind::Vectorized && (!gs.is_empty() || !here.is_empty()) {
            return Err(illegal(
                stage,
                loop_name,
                "the vectorized loop would contain a tail guard; use a dividing split factor",
            ));
        }
        here.push(body);
        body = Stmt::seq(here);
        if let Some((_, intrinsic)) = tensorized.filter(|(p, _)| *p == lvl.pos) {
            if !gs.is_empty() {
                return Err(illegal(
                    stage,
                    loop_name,
                    "the tensorized loop would contain a tail guard; use dividing split factors",
                ));
            }
            body = Stmt::Tensorized {
                intrinsic,
                body: Box::new(body),
            };
        }
        if let Some(c) = and_all(gs) {
            body = Stmt::if_then(c, body);
        }
        body = Stmt::for_(lvl.var, lvl.extent, lvl.kind, body);
    }
    let first = levels.first().map_or(usize::MAX, |l| l.pos);
    let top: Vec<Expr> = guards
        .iter()
        .filter(|(d, _)| *d < first)
        .map(|(_, c)| c.clone())
        .collect();
    if let Some(c) = and_all(top) {
        body = Stmt::if_then(c, body);
    }
    Ok(body)
}
