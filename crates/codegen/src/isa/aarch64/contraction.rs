//! The contraction micro-kernel in Cranelift IR: a tile of `rows x cols` f32 accumulators held
//! in `f32x4` values (a ragged last column group as single `f32` lanes), the reduction loops as
//! counted loops whose operand addresses step by their strides, and the epilogue applied to
//! each accumulator before its store.
//!
//! Register pressure decides the shape of the code: operand loads are pure (read-only, movable)
//! so that Cranelift places each at its first use, and reduction loops are not unrolled. (Loads
//! with effects stay in program order while the pure `fma`s sink to the loop's back edge, so an
//! unrolled step would hold every load of the iteration live at once and spill accumulators;
//! for the same reason a step's loads, elaborated per accumulator chain, must stay few.)
//!
//! Invariant: for each accumulator the function performs exactly the fused multiply-adds of
//! [`ContractionKernel::reference`] in the same order (a tile larger than [`ACCUMULATORS`]
//! values is computed in chunks of rows and column groups, each running the whole reduction),
//! then the epilogue operation by operation (`fmin`/`fmax` propagate NaN, `exp` and `sigmoid`
//! by [`crate::approx`]; a converting epilogue as [`super::typed_epilogue`] computes it, stored
//! as the output's type); it reads only bytes the reference reads and writes only the output
//! tile.

use super::typed_epilogue::TypedEpilogue;
use crate::isa::microkernel::{ContractionKernel, MicrokernelError, OperandStrides};
use crate::kernel::mem_flags;
use crate::scalar::{float_arith, float_cc};
use cranelift_codegen::ir::{types, Function, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::{FunctionBuilder, Variable};
use kiln_tir::{BinOp, Epilogue, Intrinsic};
use std::collections::HashMap;

/// f32 lanes of a vector.
const LANES: usize = 4;
/// Accumulators live at once: of NEON's 32 vector registers, the rest hold a step's operands
/// (the schedules' register tiles for 4 lanes and 32 registers fit).
const ACCUMULATORS: usize = 28;

fn err(s: impl Into<String>) -> MicrokernelError {
    MicrokernelError(s.into())
}

/// A group of tile columns one accumulator holds: four lanes, or one column of a ragged tail.
#[derive(Clone, Copy, Debug)]
struct Group {
    col: usize,
    vector: bool,
}

impl Group {
    fn ty(self) -> Type {
        if self.vector {
            types::F32X4
        } else {
            types::F32
        }
    }
}

/// The function of `k` (see the module doc): `void (const uint8_t *const ptrs[])` in the
/// System V calling convention (the caller sets its module's).
pub fn contraction(k: &ContractionKernel) -> Result<Function, MicrokernelError> {
    check(k)?;
    if k.int8.is_some() {
        return Err(err(
            "no 8-bit integer NEON kernels yet (the region compiles as loops)",
        ));
    }
    if k.converts.is_some() && !k.cols.is_multiple_of(LANES) {
        return Err(err(
            "NEON converting epilogues take columns in fours (the region compiles as loops)",
        ));
    }
    let full = k.cols / LANES * LANES;
    let groups: Vec<Group> = (0..full)
        .step_by(LANES)
        .map(|col| Group { col, vector: true })
        .chain((full..k.cols).map(|col| Group { col, vector: false }))
        .collect();
    let per_chunk = groups.len().min(ACCUMULATORS);
    let rows_per_chunk = (ACCUMULATORS / per_chunk).clamp(1, k.rows);
    super::kernel_function(k.inputs.len(), &mut |b, p| {
        let mut g = Gen { b, k };
        for chunk in groups.chunks(per_chunk) {
            for m0 in (0..k.rows).step_by(rows_per_chunk) {
                let rows: Vec<usize> = (m0..k.rows.min(m0 + rows_per_chunk)).collect();
                let tile = Tile::new(g.b, rows, chunk.to_vec());
                // An empty reduction reads no operand: the accumulators stay zero.
                if k.reduce.iter().all(|&e| e > 0) {
                    let levels = super::levels(k, k.reduce.len());
                    super::reduction_loops(g.b, &levels, p.lhs, p.rhs, &mut |b, l, r| {
                        step(b, k, l, r, &tile)
                    })?;
                }
                g.epilogue(&tile, p.out, &p.inputs)?;
            }
        }
        Ok(())
    })
}

fn check(k: &ContractionKernel) -> Result<(), MicrokernelError> {
    if k.rows == 0 || k.cols == 0 {
        return Err(err("empty tile"));
    }
    for o in [&k.lhs, &k.rhs] {
        if o.col != 0 && o.col != 4 || o.reduce.len() != k.reduce.len() {
            return Err(err("operand strides"));
        }
    }
    if k.inputs.iter().any(|&(_, c)| c != 0 && c != 4) {
        return Err(err("epilogue input strides"));
    }
    let mut supported = true;
    k.epilogue.walk(&mut |e| match e {
        Epilogue::Binary(op, ..) => {
            supported &= matches!(
                op,
                BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Min | BinOp::Max
            )
        }
        Epilogue::Call(f, _) => supported &= kiln_tir::tensorize::EPILOGUE_CALLS.contains(f),
        Epilogue::Input(i) => supported &= *i < k.inputs.len(),
        _ => {}
    });
    if !supported {
        return Err(err("epilogue operation"));
    }
    Ok(())
}

/// One reduction step: `acc = fma(lhs, rhs, acc)` for every accumulator of the tile.
fn step(
    b: &mut FunctionBuilder,
    k: &ContractionKernel,
    lhs: Value,
    rhs: Value,
    tile: &Tile,
) -> Result<(), MicrokernelError> {
    let mut loads = HashMap::new();
    for (r, &m) in tile.rows.iter().enumerate() {
        for (gi, &g) in tile.groups.iter().enumerate() {
            let x = operand(b, &mut loads, 0, lhs, &k.lhs, m, g)?;
            let y = operand(b, &mut loads, 1, rhs, &k.rhs, m, g)?;
            let acc = b.use_var(tile.accs[r][gi]);
            let acc = b.ins().fma(x, y, acc);
            b.def_var(tile.accs[r][gi], acc);
        }
    }
    Ok(())
}

/// Operand `o` (at `base`) for row `m` and column group `g`, each distinct load once per
/// step (keyed by operand, byte offset and type).
fn operand(
    b: &mut FunctionBuilder,
    loads: &mut HashMap<(u8, i64, bool), Value>,
    which: u8,
    base: Value,
    o: &OperandStrides,
    m: usize,
    g: Group,
) -> Result<Value, MicrokernelError> {
    let off = m as i64 * o.row + o.col * g.col as i64;
    value(b, loads, which, base, off, o.col != 0, g.vector)
}

/// The f32 at `base + off` (a contiguous vector when `contiguous` and `vector`), splat to
/// four lanes when `vector` and not `contiguous`.
pub(super) fn value(
    b: &mut FunctionBuilder,
    loads: &mut HashMap<(u8, i64, bool), Value>,
    which: u8,
    base: Value,
    off: i64,
    contiguous: bool,
    vector: bool,
) -> Result<Value, MicrokernelError> {
    if let Some(&v) = loads.get(&(which, off, vector)) {
        return Ok(v);
    }
    let offset = i32::try_from(off).map_err(|_| err("offset beyond 32 bits"))?;
    // The operands are never written by the kernel; epilogue inputs may alias the output
    // element for element (in-place residual adds), so their loads keep their place.
    let flags = if which < 2 {
        mem_flags().with_readonly().with_can_move()
    } else {
        mem_flags()
    };
    let v = if vector && contiguous {
        b.ins().load(types::F32X4, flags, base, offset)
    } else {
        let s = match loads.get(&(which, off, false)) {
            Some(&s) => s,
            None => {
                let s = b.ins().load(types::F32, flags, base, offset);
                loads.insert((which, off, false), s);
                s
            }
        };
        if vector {
            b.ins().splat(types::F32X4, s)
        } else {
            s
        }
    };
    loads.insert((which, off, vector), v);
    Ok(v)
}

/// The accumulators of one chunk: `accs[r][g]` for `rows[r]` and `groups[g]`.
struct Tile {
    rows: Vec<usize>,
    groups: Vec<Group>,
    accs: Vec<Vec<Variable>>,
}

impl Tile {
    /// Accumulators set to zero.
    fn new(b: &mut FunctionBuilder, rows: Vec<usize>, groups: Vec<Group>) -> Tile {
        let zero = b.ins().f32const(0.0);
        let zero4 = b.ins().splat(types::F32X4, zero);
        let accs = rows
            .iter()
            .map(|_| {
                groups
                    .iter()
                    .map(|g| {
                        let v = b.declare_var(g.ty());
                        b.def_var(v, if g.vector { zero4 } else { zero });
                        v
                    })
                    .collect()
            })
            .collect();
        Tile { rows, groups, accs }
    }
}

struct Gen<'a, 'f> {
    b: &'a mut FunctionBuilder<'f>,
    k: &'a ContractionKernel,
}

impl Gen<'_, '_> {
    /// The epilogue of every accumulator of the tile, stored to the output (a converting
    /// epilogue through [`TypedEpilogue`], as the output's type).
    fn epilogue(
        &mut self,
        tile: &Tile,
        out: Value,
        inputs: &[Value],
    ) -> Result<(), MicrokernelError> {
        let typed = self
            .k
            .converts
            .as_ref()
            .map(|(out, input_types)| TypedEpilogue {
                k: self.k,
                acc: kiln_ir::DType::F32,
                out: *out,
                inputs: input_types,
            });
        for (r, &m) in tile.rows.iter().enumerate() {
            let mut loads = HashMap::new();
            for (gi, &g) in tile.groups.iter().enumerate() {
                let acc = self.b.use_var(tile.accs[r][gi]);
                if let Some(t) = &typed {
                    t.store(self.b, acc, &mut loads, (inputs, out), (m, g.col))?;
                    continue;
                }
                let v = self.eval(&self.k.epilogue, acc, &mut loads, inputs, m, g)?;
                let off = m as i64 * self.k.out_row + 4 * g.col as i64;
                let off = i32::try_from(off).map_err(|_| err("output offset"))?;
                self.b.ins().store(mem_flags(), v, out, off);
            }
        }
        Ok(())
    }

    fn eval(
        &mut self,
        e: &Epilogue,
        acc: Value,
        loads: &mut HashMap<(u8, i64, bool), Value>,
        inputs: &[Value],
        m: usize,
        g: Group,
    ) -> Result<Value, MicrokernelError> {
        let vector = g.vector;
        macro_rules! ev {
            ($e:expr) => {
                self.eval($e, acc, loads, inputs, m, g)?
            };
        }
        Ok(match e {
            Epilogue::Int(_) | Epilogue::Cast(..) => {
                return Err(err("NEON kernels compute f32 epilogues only"))
            }
            Epilogue::Acc => acc,
            Epilogue::Const(c) => crate::approx::f32_const(self.b, *c, vector),
            Epilogue::Input(i) => {
                let (row, col) = self.k.inputs[*i];
                let off = m as i64 * row + col * g.col as i64;
                let which = u8::try_from(2 + i).map_err(|_| err("epilogue inputs"))?;
                value(self.b, loads, which, inputs[*i], off, col != 0, vector)?
            }
            Epilogue::Binary(op, a, b) => {
                let (a, b) = (ev!(a), ev!(b));
                float_arith(self.b, *op, a, b).ok_or_else(|| err("epilogue operation"))?
            }
            Epilogue::Select {
                op,
                a,
                b,
                then,
                otherwise,
            } => {
                let (a, b) = (ev!(a), ev!(b));
                let (t, o) = (ev!(then), ev!(otherwise));
                let c = self.b.ins().fcmp(float_cc(*op), a, b);
                if vector {
                    let mask = self.b.ins().bitcast(types::F32X4, MemFlagsData::new(), c);
                    self.b.ins().bitselect(mask, t, o)
                } else {
                    self.b.ins().select(c, t, o)
                }
            }
            Epilogue::Call(f, args) => {
                let mut x = Vec::with_capacity(args.len());
                for a in args {
                    x.push(ev!(a));
                }
                let ins = self.b.ins();
                match (f, x.as_slice()) {
                    (Intrinsic::Abs, &[a]) => ins.fabs(a),
                    (Intrinsic::Sqrt, &[a]) => ins.sqrt(a),
                    (Intrinsic::Floor, &[a]) => ins.floor(a),
                    (Intrinsic::Ceil, &[a]) => ins.ceil(a),
                    (Intrinsic::Round, &[a]) => ins.nearest(a),
                    (Intrinsic::Fma, &[a, b, c]) => ins.fma(a, b, c),
                    (Intrinsic::Exp, &[a]) => crate::approx::exp(self.b, a, vector),
                    (Intrinsic::Sigmoid, &[a]) => crate::approx::sigmoid(self.b, a, vector),
                    (Intrinsic::Erf, &[a]) => crate::approx::erf(self.b, a, vector),
                    _ => return Err(err("epilogue call")),
                }
            }
        })
    }
}
