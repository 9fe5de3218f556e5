//! Register promotion of small local buffers (accumulator tiles of `cache_write`).
//!
//! Invariant: a local buffer is promoted in a function only when *every* access to it in the
//! program lies in the statement that function emits and has an element offset known at code
//! generation time: its indices mention only variables of loops that codegen fully unrolls
//! (`unrolled` loops, and `vectorized` loops emitted as scalars) and, for a 4-lane access inside
//! a vectorized loop emitted as vector code, the vector variable as the contiguous last index.
//! All accesses of a promoted buffer have one width: scalar (one Cranelift variable per element)
//! or 4 lanes (one vector variable per aligned group of 4 elements, every vector access aligned
//! to such a group). Then each access is a `use_var`/`def_var` of the variable for its offset,
//! which is exactly the memory semantics, and Cranelift's SSA construction keeps the tile in
//! registers across the loops that reduce into it.

use crate::kernel::MAX_UNROLL;
use crate::vector::{contiguous, vectorizable, LANES};
use kiln_ir::DType;
use kiln_tir::{BinOp, BufferId, Expr, ForKind, PrimFunc, Stmt, VarId};
use std::collections::{BTreeSet, HashMap};

/// Most variables a promoted buffer may become (vector or scalar), to bound register pressure.
pub const MAX_PROMOTED_VARS: usize = 16;
/// Most offset evaluations the analysis spends on one access.
const MAX_ENUMERATION: usize = 4096;

/// How a promoted buffer is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Promotion {
    /// 1 (scalar variables) or [`LANES`] (vector variables).
    pub lanes: usize,
}

/// Evaluates an index expression with the given constant variables.
pub(crate) fn eval(e: &Expr, consts: &dyn Fn(VarId) -> Option<i64>) -> Option<i64> {
    Some(match e {
        Expr::Int { value, .. } => *value,
        Expr::Var(v) => consts(*v)?,
        Expr::Binary { op, a, b } => {
            let (a, b) = (eval(a, consts)?, eval(b, consts)?);
            match op {
                BinOp::Add => a.wrapping_add(b),
                BinOp::Sub => a.wrapping_sub(b),
                BinOp::Mul => a.wrapping_mul(b),
                BinOp::Min => a.min(b),
                BinOp::Max => a.max(b),
                BinOp::Div if b != 0 => a.wrapping_div(b),
                BinOp::Rem if b != 0 => a.wrapping_rem(b),
                BinOp::FloorDiv if b != 0 => {
                    let q = a.wrapping_div(b);
                    if a.wrapping_rem(b) != 0 && ((a < 0) != (b < 0)) {
                        q.wrapping_sub(1)
                    } else {
                        q
                    }
                }
                BinOp::FloorMod if b != 0 => {
                    let r = a.wrapping_rem(b);
                    if r != 0 && ((r < 0) != (b < 0)) {
                        r + b
                    } else {
                        r
                    }
                }
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// The row-major element offset of `indices` in a buffer of `shape`.
pub(crate) fn offset(
    shape: &[usize],
    indices: &[Expr],
    consts: &dyn Fn(VarId) -> Option<i64>,
) -> Option<i64> {
    let mut off = 0i64;
    for (i, &d) in indices.iter().zip(shape) {
        off = off.checked_mul(d as i64)?.checked_add(eval(i, consts)?)?;
    }
    Some(off)
}

/// What the walk knows of a candidate: the access widths and offsets seen so far, or `None`
/// once it is known not to be promotable.
type Seen = Option<(BTreeSet<usize>, BTreeSet<i64>)>;

struct Walk<'a> {
    f: &'a PrimFunc,
    vectorize: bool,
    /// Loop variables with a constant value per emitted copy, and their extents.
    unrolled: Vec<(VarId, usize)>,
    /// The variable of the enclosing vectorized loop emitted as vector code.
    vector: Option<VarId>,
    /// Whether parallel loops are outlined (their bodies are other functions).
    outlining: bool,
    inside_parallel: bool,
    /// Extents of the enclosing vectorized loops emitted as vector code.
    vector_extent_of: Vec<(VarId, usize)>,
    /// Loads met in the expression being walked.
    pending: Vec<(BufferId, Vec<Expr>)>,
    /// Per candidate: widths seen, keys seen, or `None` once it is known not promotable.
    state: HashMap<BufferId, Seen>,
}

impl Walk<'_> {
    fn reject(&mut self, b: BufferId) {
        if let Some(s) = self.state.get_mut(&b) {
            *s = None;
        }
    }

    fn access(&mut self, b: BufferId, indices: &[Expr]) {
        if !self.state.get(&b).is_some_and(Option::is_some) {
            return;
        }
        if self.inside_parallel && self.outlining {
            return self.reject(b);
        }
        let Some(decl) = self.f.buffer(b) else {
            return self.reject(b);
        };
        let shape = decl.shape.clone();
        let mentions = |v: VarId| {
            indices
                .iter()
                .any(|i| i.any(&|x| matches!(x, Expr::Var(w) if *w == v)))
        };
        let vector = self.vector.filter(|&v| mentions(v));
        if vector.is_some_and(|v| !contiguous(indices, v)) {
            return self.reject(b);
        }
        let lanes = if vector.is_some() { LANES } else { 1 };
        let vars: Vec<(VarId, usize)> = self
            .unrolled
            .iter()
            .copied()
            .filter(|&(v, _)| mentions(v))
            .collect();
        let mut keys = vec![];
        let mut values = vec![0i64; vars.len()];
        let total: usize = vars.iter().map(|&(_, e)| e).product();
        if total > MAX_ENUMERATION {
            return self.reject(b);
        }
        for mut n in 0..total {
            for (slot, &(_, e)) in values.iter_mut().zip(&vars) {
                *slot = (n % e) as i64;
                n /= e;
            }
            let lookup = |v: VarId| {
                if Some(v) == vector {
                    return Some(0);
                }
                vars.iter().position(|&(w, _)| w == v).map(|p| values[p])
            };
            match offset(&shape, indices, &lookup) {
                Some(o) if lanes == 1 || o % LANES as i64 == 0 => keys.push(o),
                _ => return self.reject(b),
            }
        }
        if let Some(extent) = vector.and_then(|v| self.vector_extent(v)) {
            let base = keys.clone();
            keys.clear();
            for k in base {
                keys.extend((0..extent / LANES).map(|c| k + (c * LANES) as i64));
            }
        }
        if let Some(Some((widths, set))) = self.state.get_mut(&b) {
            widths.insert(lanes);
            set.extend(keys);
            if widths.len() > 1 || set.len() > MAX_PROMOTED_VARS {
                self.reject(b);
            }
        }
    }

    fn vector_extent(&self, v: VarId) -> Option<usize> {
        self.vector_extent_of
            .iter()
            .find(|(w, _)| *w == v)
            .map(|&(_, e)| e)
    }

    fn expr(&mut self, e: &Expr) {
        e.walk(&mut |x| {
            if let Expr::Load { buf, indices } = x {
                self.pending.push((*buf, indices.clone()));
            }
        });
        for (b, i) in std::mem::take(&mut self.pending) {
            self.access(b, &i);
        }
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::For {
                var,
                extent,
                kind,
                body,
            } => {
                let (mut pushed, mut vec, mut par) = (false, false, false);
                match kind {
                    // A ragged vectorized loop with a promoted buffer runs as scalar code
                    // (`FnLowerer::for_loop`): it is seen as unrolled here.
                    ForKind::Vectorized
                        if self.vectorize
                            && extent.is_multiple_of(LANES)
                            && vectorizable(self.f, *var, *extent, body) =>
                    {
                        self.vector = Some(*var);
                        self.vector_extent_of.push((*var, *extent));
                        vec = true;
                    }
                    ForKind::Vectorized | ForKind::Unrolled if *extent <= MAX_UNROLL => {
                        self.unrolled.push((*var, *extent));
                        pushed = true;
                    }
                    ForKind::Parallel => {
                        par = !self.inside_parallel;
                        self.inside_parallel = true;
                    }
                    _ => {}
                }
                self.stmt(body);
                if pushed {
                    self.unrolled.pop();
                }
                if vec {
                    self.vector = None;
                    self.vector_extent_of.pop();
                }
                if par {
                    self.inside_parallel = false;
                }
            }
            Stmt::Seq(v) => v.iter().for_each(|s| self.stmt(s)),
            // Accesses of a micro-kernel call are through memory: the tile may still be
            // promoted (the call never touches it, a loop-nest fallback uses the variables),
            // but the operands are read through their base pointers (see `crate::tensorized`).
            Stmt::Tensorized { body, .. } => self.stmt(body),
            Stmt::Store {
                buf,
                indices,
                value,
            } => {
                self.access(*buf, indices);
                indices.iter().for_each(|i| self.expr(i));
                self.expr(value);
            }
            Stmt::IfThenElse {
                cond,
                then,
                otherwise,
            } => {
                self.expr(cond);
                self.stmt(then);
                if let Some(o) = otherwise {
                    self.stmt(o);
                }
            }
        }
    }
}

/// The candidates (local buffers used only by `root`) that can be promoted in the function
/// emitting `root`; `outlining` says whether parallel loops inside `root` become other functions.
pub(crate) fn promotable(
    f: &PrimFunc,
    root: &Stmt,
    candidates: &[BufferId],
    vectorize: bool,
    outlining: bool,
) -> HashMap<BufferId, Promotion> {
    let mut w = Walk {
        f,
        vectorize,
        unrolled: vec![],
        vector: None,
        vector_extent_of: vec![],
        outlining,
        inside_parallel: false,
        pending: vec![],
        state: candidates
            .iter()
            .map(|&b| (b, Some((BTreeSet::new(), BTreeSet::new()))))
            .collect(),
    };
    w.stmt(root);
    w.state
        .into_iter()
        .filter_map(|(b, s)| {
            let (widths, keys) = s?;
            let lanes = *widths.iter().next()?;
            // Vector code holds 8-bit lanes widened in i32x4 registers, never as i8x4.
            let narrow = matches!(f.buffers[b.index()].dtype, DType::I8 | DType::U8);
            let keep = !keys.is_empty() && (lanes == 1 || !narrow);
            keep.then_some((b, Promotion { lanes }))
        })
        .collect()
}
