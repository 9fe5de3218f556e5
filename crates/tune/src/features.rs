//! Features of a scheduled kernel (the lowered loop IR), the cost model's input.
//!
//! In the spirit of Ansor's per-store features: for every store statement, what it computes per
//! execution, how often it executes, the loop annotations around it and how it touches memory;
//! a kernel's vector describes its heaviest store (most arithmetic times executions) in detail
//! and its next heaviest (usually the epilogue) and adds totals over all stores, including how
//! much local memory codegen can keep in registers, then the knobs that scheduled it. Every
//! count is scaled by `log2(1 + |x|)`, so counts that differ by orders of magnitude stay
//! comparable for the trees.
//!
//! Invariant: [`kernel_features`] returns exactly [`FEATURE_COUNT`] finite values for any
//! function, named by [`feature_names`] in order.

use kiln_schedules::Knobs;
use kiln_tir::{BinOp, BufferId, Expr, ForKind, PrimFunc, Stmt, VarId};

/// Buffers described per store: the store's own and its three most-touched loads.
const LOADS: usize = 3;

/// The features of one store, in order (see [`feature_names`]).
const STORE_FEATURES: [&str; PER_STORE] = [
    // What it computes, per execution.
    "float_add",
    "float_mul",
    "float_div",
    "float_minmax",
    "int_arith",
    "compare",
    "select",
    "cast",
    "math_call",
    "loads",
    // How it executes.
    "executions",
    "loops",
    "innermost_extent",
    "vector_lanes",
    "unrolled_iterations",
    "parallel_iterations",
    "outer_serial_iterations",
    // Memory of its store buffer, then of its three most-touched loads.
    "store_bytes",
    "store_unique_bytes",
    "store_cache_lines",
    "store_inner_stride",
    "store_reuse_ratio",
    "store_reuse_distance",
    "load0_bytes",
    "load0_unique_bytes",
    "load0_cache_lines",
    "load0_inner_stride",
    "load0_reuse_ratio",
    "load0_reuse_distance",
    "load1_bytes",
    "load1_unique_bytes",
    "load1_cache_lines",
    "load1_inner_stride",
    "load1_reuse_ratio",
    "load1_reuse_distance",
    "load2_bytes",
    "load2_unique_bytes",
    "load2_cache_lines",
    "load2_inner_stride",
    "load2_reuse_ratio",
    "load2_reuse_distance",
    "arithmetic_intensity",
];

/// Totals over the kernel, after the per-store features.
const TOTAL_FEATURES: [&str; 7] = [
    "total_flops",
    "total_bytes",
    "total_unique_bytes",
    "stores",
    "local_buffer_bytes",
    // Local buffers only ever indexed by constants and unrolled or vectorized loops, which
    // codegen keeps in registers, and the others.
    "register_local_bytes",
    "memory_local_bytes",
];

/// Features per store.
const PER_STORE: usize = 17 + 6 * (1 + LOADS) + 1;
/// Stores described: the two heaviest (the anchor's accumulation and, usually, the epilogue).
const STORES: usize = 2;

/// The length of a feature vector.
const LOOP_FEATURE_COUNT: usize = STORES * PER_STORE + TOTAL_FEATURES.len();

/// The schedule decisions themselves, after the loop features (`log2(1 + value)` for sizes,
/// 0/1 for flags, -1 where the knob is left to the sketch's default): the loop IR shows their
/// effects only in part (a register tile's shape, a parallel grain).
const KNOB_FEATURES: [&str; 7] = [
    "knob.vector_tile",
    "knob.row_tile",
    "knob.parallel_min",
    "knob.unroll_tile",
    "knob.unroll_window",
    "knob.attach_outer",
    "knob.inner_vector",
];

/// The length of a feature vector.
pub const FEATURE_COUNT: usize = LOOP_FEATURE_COUNT + KNOB_FEATURES.len();

/// The names of the features, in order: `store0.*` for the heaviest store, `store1.*` for the
/// next, then the totals.
pub fn feature_names() -> Vec<String> {
    let mut names = vec![];
    for s in 0..STORES {
        names.extend(STORE_FEATURES.iter().map(|f| format!("store{s}.{f}")));
    }
    names.extend(TOTAL_FEATURES.iter().map(|f| f.to_string()));
    names.extend(KNOB_FEATURES.iter().map(|f| f.to_string()));
    names
}

/// The knob features of a candidate (see [`KNOB_FEATURES`]).
fn knob_features(knobs: &Knobs) -> [f32; KNOB_FEATURES.len()] {
    let size = |v: Option<usize>| v.map_or(-1.0, |v| scale(v as f64));
    let flag = |v: Option<bool>| v.map_or(-1.0, |b| f32::from(u8::from(b)));
    [
        size(knobs.vector_tile),
        size(knobs.row_tile),
        size(knobs.parallel_min),
        flag(knobs.unroll_tile),
        flag(knobs.unroll_window),
        flag(knobs.attach_outer),
        size(knobs.inner_vector),
    ]
}

#[derive(Clone, Copy)]
struct Loop {
    var: VarId,
    extent: usize,
    kind: ForKind,
}

/// Operation counts of one expression evaluation.
#[derive(Default, Clone, Copy)]
struct Ops {
    float_add: f64,
    float_mul: f64,
    float_div: f64,
    float_minmax: f64,
    int_arith: f64,
    compare: f64,
    select: f64,
    cast: f64,
    math_call: f64,
    loads: f64,
}

impl Ops {
    fn flops(&self) -> f64 {
        self.float_add + self.float_mul + self.float_div + self.float_minmax + self.math_call
    }
}

/// One memory access: its buffer and indices.
struct Access<'e> {
    buf: BufferId,
    indices: &'e [Expr],
}

fn count_ops<'e>(e: &'e Expr, func: &PrimFunc, ops: &mut Ops, loads: &mut Vec<Access<'e>>) {
    let float = |e: &Expr| {
        e.infer_dtype(&|b: BufferId| func.buffers.get(b.index()).map(|d| d.dtype))
            .is_ok_and(|d| d.is_float())
    };
    match e {
        Expr::Binary { op, a, b } => {
            let is_float = float(a);
            match (op, is_float) {
                (BinOp::Add | BinOp::Sub, true) => ops.float_add += 1.0,
                (BinOp::Mul, true) => ops.float_mul += 1.0,
                (BinOp::Div | BinOp::Rem, true) => ops.float_div += 1.0,
                (BinOp::Min | BinOp::Max, true) => ops.float_minmax += 1.0,
                _ => ops.int_arith += 1.0,
            }
            count_ops(a, func, ops, loads);
            count_ops(b, func, ops, loads);
        }
        Expr::Cmp { a, b, .. } => {
            ops.compare += 1.0;
            count_ops(a, func, ops, loads);
            count_ops(b, func, ops, loads);
        }
        Expr::And(a, b) | Expr::Or(a, b) => {
            ops.int_arith += 1.0;
            count_ops(a, func, ops, loads);
            count_ops(b, func, ops, loads);
        }
        Expr::Not(a) => {
            ops.int_arith += 1.0;
            count_ops(a, func, ops, loads);
        }
        Expr::Select {
            cond,
            then,
            otherwise,
        } => {
            ops.select += 1.0;
            count_ops(cond, func, ops, loads);
            count_ops(then, func, ops, loads);
            count_ops(otherwise, func, ops, loads);
        }
        Expr::Cast { value, .. } => {
            ops.cast += 1.0;
            count_ops(value, func, ops, loads);
        }
        Expr::Load { buf, indices } => {
            ops.loads += 1.0;
            loads.push(Access { buf: *buf, indices });
            for i in indices {
                count_ops(i, func, ops, loads);
            }
        }
        Expr::Call { args, .. } => {
            ops.math_call += 1.0;
            for a in args {
                count_ops(a, func, ops, loads);
            }
        }
        Expr::Var(_) | Expr::Int { .. } | Expr::Float { .. } | Expr::Bool(_) => {}
    }
}

/// The value of an index expression with the given loop variables set (others 0), when it is
/// plain integer arithmetic.
fn eval_index(e: &Expr, set: &[(VarId, i64)]) -> Option<i64> {
    Some(match e {
        Expr::Int { value, .. } => *value,
        Expr::Var(v) => set.iter().find(|(w, _)| w == v).map_or(0, |&(_, x)| x),
        Expr::Binary { op, a, b } => {
            let (x, y) = (eval_index(a, set)?, eval_index(b, set)?);
            match op {
                BinOp::Add => x.checked_add(y)?,
                BinOp::Sub => x.checked_sub(y)?,
                BinOp::Mul => x.checked_mul(y)?,
                BinOp::FloorDiv if y != 0 => x.div_euclid(y),
                BinOp::FloorMod if y != 0 => x.rem_euclid(y),
                BinOp::Min => x.min(y),
                BinOp::Max => x.max(y),
                _ => return None,
            }
        }
        Expr::Cast { value, .. } => eval_index(value, set)?,
        _ => return None,
    })
}

fn mentions(e: &Expr, v: VarId) -> bool {
    let mut found = false;
    e.walk(&mut |x| {
        if *x == Expr::Var(v) {
            found = true;
        }
    });
    found
}

/// Per-buffer memory features of one access under `loops` (outermost first), executed `exec`
/// times.
fn access_features(func: &PrimFunc, a: &Access, loops: &[Loop], exec: f64) -> [f64; 6] {
    let decl = &func.buffers[a.buf.index()];
    let elem = decl.dtype.size_bytes().max(1) as f64;
    let bytes = exec * elem;
    // Loops whose variable indexes the buffer multiply the distinct elements touched.
    let indexing: Vec<bool> = loops
        .iter()
        .map(|l| a.indices.iter().any(|i| mentions(i, l.var)))
        .collect();
    let unique_elems = loops
        .iter()
        .zip(&indexing)
        .filter(|(_, &ix)| ix)
        .map(|(l, _)| l.extent as f64)
        .product::<f64>()
        .min(decl.num_elements().max(1) as f64);
    let unique = unique_elems * elem;
    // Flattened element offset's change per step of the innermost loop.
    let strides: Vec<i64> = {
        let mut s = vec![1i64; decl.shape.len()];
        for d in (0..decl.shape.len().saturating_sub(1)).rev() {
            s[d] = s[d + 1].saturating_mul(decl.shape[d + 1] as i64);
        }
        s
    };
    let flat = |set: &[(VarId, i64)]| -> Option<i64> {
        a.indices
            .iter()
            .zip(&strides)
            .try_fold(0i64, |acc, (i, &s)| Some(acc + eval_index(i, set)? * s))
    };
    let inner_stride = loops.last().and_then(|l| {
        let base = flat(&[])?;
        Some((flat(&[(l.var, 1)])? - base).abs() as f64)
    });
    let inner_stride = inner_stride.unwrap_or(0.0);
    let cache_lines = if inner_stride * elem >= 64.0 {
        unique_elems
    } else {
        unique / 64.0
    };
    // Iterations between two uses of an element: the loops inside the innermost loop that
    // does not index the buffer.
    let reuse_distance = match indexing.iter().rposition(|&ix| !ix) {
        Some(p) => loops[p + 1..]
            .iter()
            .map(|l| l.extent as f64)
            .product::<f64>(),
        None => 0.0,
    };
    [
        bytes,
        unique,
        cache_lines.max(1.0),
        inner_stride,
        exec / unique_elems.max(1.0),
        reuse_distance,
    ]
}

/// One store's features before scaling, plus its weight (arithmetic times executions).
struct StoreFeatures {
    weight: f64,
    values: Vec<f64>,
    flops: f64,
    bytes: f64,
    unique: f64,
    /// Buffers it accesses, each with whether every index is a constant offset (mentions only
    /// unrolled or vectorized loops).
    accesses: Vec<(BufferId, bool)>,
}

/// Whether `indices` only mention variables of unrolled or vectorized loops in `loops`.
fn constant_offset(indices: &[Expr], loops: &[Loop]) -> bool {
    loops
        .iter()
        .filter(|l| !matches!(l.kind, ForKind::Unrolled | ForKind::Vectorized))
        .all(|l| !indices.iter().any(|i| mentions(i, l.var)))
}

fn store_features(
    func: &PrimFunc,
    buf: BufferId,
    indices: &[Expr],
    value: &Expr,
    loops: &[Loop],
) -> StoreFeatures {
    let mut ops = Ops::default();
    let mut loads = vec![];
    count_ops(value, func, &mut ops, &mut loads);
    for i in indices {
        count_ops(i, func, &mut ops, &mut loads);
    }
    let exec: f64 = loops.iter().map(|l| l.extent as f64).product();
    let product_of = |kind: ForKind| -> f64 {
        loops
            .iter()
            .filter(|l| l.kind == kind)
            .map(|l| l.extent as f64)
            .product()
    };
    let vector_lanes = loops
        .last()
        .filter(|l| l.kind == ForKind::Vectorized)
        .map_or(0.0, |l| l.extent as f64);
    let outer_serial = loops
        .iter()
        .take_while(|l| l.kind == ForKind::Serial)
        .map(|l| l.extent as f64)
        .product::<f64>();
    let mut values = vec![
        ops.float_add,
        ops.float_mul,
        ops.float_div,
        ops.float_minmax,
        ops.int_arith,
        ops.compare,
        ops.select,
        ops.cast,
        ops.math_call,
        ops.loads,
        exec,
        loops.len() as f64,
        loops.last().map_or(1.0, |l| l.extent as f64),
        vector_lanes,
        product_of(ForKind::Unrolled),
        product_of(ForKind::Parallel),
        outer_serial,
    ];
    let store = Access { buf, indices };
    let store_f = access_features(func, &store, loops, exec);
    values.extend(store_f);
    let mut per_load: Vec<[f64; 6]> = loads
        .iter()
        .map(|a| access_features(func, a, loops, exec))
        .collect();
    per_load.sort_by(|a, b| b[0].total_cmp(&a[0]));
    let load_bytes: f64 = per_load.iter().map(|f| f[0]).sum();
    let load_unique: f64 = per_load.iter().map(|f| f[1]).sum();
    per_load.resize(LOADS, [0.0; 6]);
    for f in per_load.iter().take(LOADS) {
        values.extend(f);
    }
    let mut accesses = vec![(buf, constant_offset(indices, loops))];
    accesses.extend(
        loads
            .iter()
            .map(|a| (a.buf, constant_offset(a.indices, loops))),
    );
    let bytes = store_f[0] + load_bytes;
    let unique = store_f[1] + load_unique;
    let flops = ops.flops() * exec;
    values.push(flops / unique.max(1.0));
    StoreFeatures {
        weight: (ops.flops() + ops.int_arith + ops.loads + 1.0) * exec,
        values,
        flops,
        bytes,
        unique,
        accesses,
    }
}

fn walk(func: &PrimFunc, s: &Stmt, loops: &mut Vec<Loop>, out: &mut Vec<StoreFeatures>) {
    match s {
        Stmt::For {
            var,
            extent,
            kind,
            body,
        } => {
            loops.push(Loop {
                var: *var,
                extent: *extent,
                kind: *kind,
            });
            walk(func, body, loops, out);
            loops.pop();
        }
        Stmt::Seq(stmts) => {
            for s in stmts {
                walk(func, s, loops, out);
            }
        }
        // A tensorized region is described by the loop nest it stands for.
        Stmt::Tensorized { body, .. } => walk(func, body, loops, out),
        Stmt::Store {
            buf,
            indices,
            value,
        } => out.push(store_features(func, *buf, indices, value, loops)),
        Stmt::IfThenElse {
            then, otherwise, ..
        } => {
            walk(func, then, loops, out);
            if let Some(o) = otherwise {
                walk(func, o, loops, out);
            }
        }
    }
}

/// `log2(1 + |x|)`, 0 for non-finite values.
fn scale(x: f64) -> f32 {
    if x.is_finite() {
        (1.0 + x.abs()).log2() as f32
    } else {
        0.0
    }
}

/// The feature vector of a kernel lowered with `knobs` (see the module doc).
pub fn kernel_features(func: &PrimFunc, knobs: &Knobs) -> Vec<f32> {
    let mut stores = vec![];
    walk(func, &func.body, &mut vec![], &mut stores);
    let mut order: Vec<usize> = (0..stores.len()).collect();
    order.sort_by(|&a, &b| stores[b].weight.total_cmp(&stores[a].weight));
    let mut v: Vec<f32> = Vec::with_capacity(FEATURE_COUNT);
    for k in 0..STORES {
        match order.get(k) {
            Some(&i) => v.extend(stores[i].values.iter().map(|&x| scale(x))),
            None => v.extend([0.0; PER_STORE]),
        }
    }
    let local_bytes = |id: BufferId| {
        let b = &func.buffers[id.index()];
        (b.num_elements() * b.dtype.size_bytes()) as f64
    };
    let locals: Vec<BufferId> = (0..func.buffers.len())
        .map(|i| BufferId(i as u32))
        .filter(|&b| func.buffers[b.index()].scope == kiln_tir::Scope::Local)
        .collect();
    let in_registers = |b: BufferId| {
        stores
            .iter()
            .flat_map(|s| &s.accesses)
            .filter(|(id, _)| *id == b)
            .all(|(_, constant)| *constant)
    };
    let register: f64 = locals
        .iter()
        .filter(|&&b| in_registers(b))
        .map(|&b| local_bytes(b))
        .sum();
    let all_local: f64 = locals.iter().map(|&b| local_bytes(b)).sum();
    v.extend(
        [
            stores.iter().map(|s| s.flops).sum::<f64>(),
            stores.iter().map(|s| s.bytes).sum::<f64>(),
            stores.iter().map(|s| s.unique).sum::<f64>(),
            stores.len() as f64,
            all_local,
            register,
            all_local - register,
        ]
        .map(scale),
    );
    debug_assert_eq!(v.len(), LOOP_FEATURE_COUNT);
    v.resize(LOOP_FEATURE_COUNT, 0.0);
    v.extend(knob_features(knobs));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_vector() {
        assert_eq!(feature_names().len(), FEATURE_COUNT);
    }
}
