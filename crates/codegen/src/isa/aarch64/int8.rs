//! The 8-bit integer contraction micro-kernel in Cranelift IR (NEON's 128-bit vectors): a tile
//! of `rows x cols` `i32` accumulators in `i32x4` values, then the typed epilogue per
//! accumulator and a store of the output's type. The forms are x86's (see
//! `isa/x86_64/int8.rs`), with columns in groups of four (a ragged tail is refused: the region
//! compiles as loops):
//!
//! - *Dot products of quadruples* (activation quadruples broadcast per row, packed `i8` weight
//!   quadruples with zero point 0): signed byte dot products of four, written as the IR pattern
//!   Cranelift's aarch64 backend lowers to one `sdot` when the target has the dot-product
//!   extension (`has_dotprod`) and to widening multiplies and pairwise adds otherwise (`i8 · i8`
//!   fits 16 bits, sums of four 32). Activations stored as `u8` are flipped to `i8` (xor 0x80,
//!   their zero point moved by 128); `zl·Σw` is subtracted through column sums kept beside the
//!   tile (one more dot product with ones per group and step), as on x86 with VNNI.
//! - *Lanes* (depthwise): per tap the weights of a group widened to `i32` lanes with their
//!   zero point subtracted, per row the activations widened with theirs, multiplied and added.
//!
//! Invariant: the function computes [`ContractionKernel::reference_bytes`] exactly (integer sums
//! in any order; the epilogue as [`kiln_tir::Epilogue::eval_scalar`]: wrapping `i32`, float to
//! integer truncating and saturating with NaN as 0, integer to integer wrapping), reads only the
//! bytes the reference reads and writes only the output tile.

use super::typed_epilogue::{little, TypedEpilogue};
use crate::isa::microkernel::{ContractionKernel, MicrokernelError};
use crate::kernel::mem_flags;
use cranelift_codegen::ir::{types, Function, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::{FunctionBuilder, Variable};
use kiln_ir::DType;
use kiln_tir::{BinOp, Epilogue, IntContraction};
use std::collections::HashMap;

/// Lanes of an accumulator.
const LANES: usize = 4;
/// Accumulator values live at once (of 32 vector registers; the rest hold a step's operands).
const ACCUMULATORS: usize = 24;
/// The innermost loop of this extent is one dot product of quadruples.
const QUAD: usize = 4;

fn err(s: impl Into<String>) -> MicrokernelError {
    MicrokernelError(s.into())
}

/// The tile forms (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Quad,
    Lanes,
}

/// The function of the integer contraction `k` (see the module doc): `void (const uint8_t
/// *const ptrs[])` in the System V calling convention (the caller sets its module's).
pub fn int8_contraction(k: &ContractionKernel) -> Result<Function, MicrokernelError> {
    let Some(int8) = &k.int8 else {
        return Err(err("not an integer contraction"));
    };
    let byte = |d: DType| matches!(d, DType::I8 | DType::U8);
    if !byte(int8.lhs) || !byte(int8.rhs) {
        return Err(err("8-bit operands only"));
    }
    let form = if k.lhs.col == 1 && k.rhs.col == 1 && k.rhs.row == 0 {
        Form::Lanes
    } else if k.reduce.last() == Some(&QUAD)
        && k.lhs.reduce.last() == Some(&1)
        && k.rhs.reduce.last() == Some(&1)
        && k.lhs.col == 0
        && k.rhs.col == 4
        && k.rhs.row == 0
        && int8.rhs == DType::I8
        && int8.rhs_zp == 0
    {
        Form::Quad
    } else {
        return Err(err(
            "neither broadcast activation quadruples x packed i8 weights nor a depthwise tile",
        ));
    };
    if k.rows == 0 || k.cols == 0 || !k.cols.is_multiple_of(LANES) {
        return Err(err("NEON integer tiles take columns in fours"));
    }
    if k.lhs.reduce.len() != k.reduce.len() || k.rhs.reduce.len() != k.reduce.len() {
        return Err(err("operand strides"));
    }
    if k.inputs.iter().any(|&(_, c)| c != 0 && c != 4) || k.inputs.len() != int8.inputs.len() {
        return Err(err("epilogue inputs"));
    }
    check_epilogue(&k.epilogue, k.inputs.len())?;

    let groups: Vec<usize> = (0..k.cols).step_by(LANES).collect();
    let sums = form == Form::Quad && signed_zl(int8) != 0;
    let per_chunk = groups.len().min(ACCUMULATORS / 2);
    let rows_per_chunk =
        ((ACCUMULATORS - usize::from(sums) * per_chunk) / per_chunk).clamp(1, k.rows);
    let loops = k.reduce.len() - usize::from(form == Form::Quad);
    super::kernel_function(k.inputs.len(), &mut |b, p| {
        let mut g = Gen { b, k, int8 };
        for chunk in groups.chunks(per_chunk) {
            for m0 in (0..k.rows).step_by(rows_per_chunk) {
                let rows: Vec<usize> = (m0..k.rows.min(m0 + rows_per_chunk)).collect();
                let tile = Tile::new(g.b, rows, chunk.to_vec(), sums);
                if k.reduce.iter().all(|&e| e > 0) {
                    let levels = super::levels(k, loops);
                    super::reduction_loops(
                        g.b,
                        &levels,
                        p.lhs,
                        p.rhs,
                        &mut |b, l, r| match form {
                            Form::Quad => quad_step(b, k, int8, l, r, &tile),
                            Form::Lanes => lanes_step(b, k, int8, l, r, &tile),
                        },
                    )?;
                }
                g.epilogue(&tile, p.out, &p.inputs)?;
            }
        }
        Ok(())
    })
}

/// The epilogue uses only what [`Gen::eval`] computes.
fn check_epilogue(e: &Epilogue, inputs: usize) -> Result<(), MicrokernelError> {
    let mut supported = true;
    e.walk(&mut |x| match x {
        Epilogue::Binary(op, ..) => {
            supported &= matches!(
                op,
                BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Min | BinOp::Max
            )
        }
        Epilogue::Call(f, _) => supported &= kiln_tir::tensorize::EPILOGUE_CALLS.contains(f),
        Epilogue::Input(i) => supported &= *i < inputs,
        _ => {}
    });
    if supported {
        Ok(())
    } else {
        Err(err("epilogue operation"))
    }
}

/// The accumulators of one chunk: `accs[r][g]` for `rows[r]` and the four columns from
/// `groups[g]`, and (dot products with a left zero point) the column sums of each group.
struct Tile {
    rows: Vec<usize>,
    groups: Vec<usize>,
    accs: Vec<Vec<Variable>>,
    sums: Vec<Variable>,
}

impl Tile {
    fn new(b: &mut FunctionBuilder, rows: Vec<usize>, groups: Vec<usize>, sums: bool) -> Tile {
        let zero = b.ins().iconst(types::I32, 0);
        let zero = b.ins().splat(types::I32X4, zero);
        let mut var = || {
            let v = b.declare_var(types::I32X4);
            b.def_var(v, zero);
            v
        };
        let accs = rows
            .iter()
            .map(|_| groups.iter().map(|_| var()).collect())
            .collect();
        let sums = if sums {
            groups.iter().map(|_| var()).collect()
        } else {
            vec![]
        };
        Tile {
            rows,
            groups,
            accs,
            sums,
        }
    }
}

/// `acc + Σ_{q<4} a[4i+q] · w[4i+q]` per `i32` lane `i` of `i8x16` bytes `a` and `w`, as the
/// pattern the aarch64 backend matches for `sdot`.
fn dot4(b: &mut FunctionBuilder, a: Value, w: Value, acc: Value) -> Value {
    let (al, wl) = (b.ins().swiden_low(a), b.ins().swiden_low(w));
    let lo = b.ins().imul(al, wl);
    let (ah, wh) = (b.ins().swiden_high(a), b.ins().swiden_high(w));
    let hi = b.ins().imul(ah, wh);
    let (l0, l1) = (b.ins().swiden_low(lo), b.ins().swiden_high(lo));
    let l = b.ins().iadd_pairwise(l0, l1);
    let (h0, h1) = (b.ins().swiden_low(hi), b.ins().swiden_high(hi));
    let h = b.ins().iadd_pairwise(h0, h1);
    let s = b.ins().iadd_pairwise(l, h);
    b.ins().iadd(s, acc)
}

/// The left zero point in the signed domain the dot products multiply in (`u8` activations
/// are flipped by 128).
fn signed_zl(int8: &IntContraction) -> i32 {
    int8.lhs_zp - if int8.lhs == DType::U8 { 128 } else { 0 }
}

/// Operand loads: read-only and movable (placed at their first use, see `contraction`).
fn operand_flags() -> MemFlagsData {
    mem_flags().with_readonly().with_can_move()
}

/// The 4 bytes at `base + off` in every `i32` lane, as `i8x16` bytes.
fn dword_bytes(b: &mut FunctionBuilder, base: Value, off: i64) -> Result<Value, MicrokernelError> {
    let off = i32::try_from(off).map_err(|_| err("offset beyond 32 bits"))?;
    let d = b.ins().load(types::I32, operand_flags(), base, off);
    let v = b.ins().splat(types::I32X4, d);
    Ok(b.ins().bitcast(types::I8X16, little(), v))
}

/// The 4 bytes at `base + off` widened to `i32` lanes (`signed`: sign-extended).
fn widen_dword(
    b: &mut FunctionBuilder,
    base: Value,
    off: i64,
    signed: bool,
) -> Result<Value, MicrokernelError> {
    let v = dword_bytes(b, base, off)?;
    Ok(if signed {
        let w = b.ins().swiden_low(v);
        b.ins().swiden_low(w)
    } else {
        let w = b.ins().uwiden_low(v);
        b.ins().uwiden_low(w)
    })
}

/// `n` in every byte lane.
fn splat_byte(b: &mut FunctionBuilder, n: u8) -> Value {
    let c = b.ins().iconst(types::I8, i64::from(n));
    b.ins().splat(types::I8X16, c)
}

/// One quadruple step of every accumulator (operands at `lhs`, `rhs`).
fn quad_step(
    b: &mut FunctionBuilder,
    k: &ContractionKernel,
    int8: &IntContraction,
    lhs: Value,
    rhs: Value,
    tile: &Tile,
) -> Result<(), MicrokernelError> {
    let mut weights = Vec::with_capacity(tile.groups.len());
    for &col in &tile.groups {
        let off = i32::try_from(col * 4).map_err(|_| err("offset beyond 32 bits"))?;
        weights.push(b.ins().load(types::I8X16, operand_flags(), rhs, off));
    }
    if !tile.sums.is_empty() {
        let ones = splat_byte(b, 1);
        for (&w, &var) in weights.iter().zip(&tile.sums) {
            let s = b.use_var(var);
            let s = dot4(b, ones, w, s);
            b.def_var(var, s);
        }
    }
    let flip = (int8.lhs == DType::U8).then(|| splat_byte(b, 0x80));
    for (r, &m) in tile.rows.iter().enumerate() {
        let mut x = dword_bytes(b, lhs, m as i64 * k.lhs.row)?;
        if let Some(f) = flip {
            x = b.ins().bxor(x, f);
        }
        for (gi, &w) in weights.iter().enumerate() {
            let var = tile.accs[r][gi];
            let acc = b.use_var(var);
            let acc = dot4(b, x, w, acc);
            b.def_var(var, acc);
        }
    }
    Ok(())
}

/// One tap of a depthwise tile (operands at `lhs`, `rhs`).
fn lanes_step(
    b: &mut FunctionBuilder,
    k: &ContractionKernel,
    int8: &IntContraction,
    lhs: Value,
    rhs: Value,
    tile: &Tile,
) -> Result<(), MicrokernelError> {
    let splat = |b: &mut FunctionBuilder, z: i32| {
        let c = b.ins().iconst(types::I32, i64::from(z));
        b.ins().splat(types::I32X4, c)
    };
    let zl = (int8.lhs_zp != 0).then(|| splat(b, int8.lhs_zp));
    let zr = (int8.rhs_zp != 0).then(|| splat(b, int8.rhs_zp));
    let mut weights = Vec::with_capacity(tile.groups.len());
    for &col in &tile.groups {
        let mut w = widen_dword(b, rhs, col as i64, int8.rhs == DType::I8)?;
        if let Some(z) = zr {
            w = b.ins().isub(w, z);
        }
        weights.push(w);
    }
    for (r, &m) in tile.rows.iter().enumerate() {
        for (gi, &col) in tile.groups.iter().enumerate() {
            let off = m as i64 * k.lhs.row + col as i64;
            let mut x = widen_dword(b, lhs, off, int8.lhs == DType::I8)?;
            if let Some(z) = zl {
                x = b.ins().isub(x, z);
            }
            let p = b.ins().imul(x, weights[gi]);
            let var = tile.accs[r][gi];
            let acc = b.use_var(var);
            let acc = b.ins().iadd(acc, p);
            b.def_var(var, acc);
        }
    }
    Ok(())
}

struct Gen<'a, 'f> {
    b: &'a mut FunctionBuilder<'f>,
    k: &'a ContractionKernel,
    int8: &'a IntContraction,
}

impl Gen<'_, '_> {
    /// The sums of row `r`, group `gi`, with the left zero point's correction (dot products).
    fn accumulator(&mut self, tile: &Tile, r: usize, gi: usize) -> Value {
        let acc = self.b.use_var(tile.accs[r][gi]);
        let Some(&sums) = tile.sums.get(gi) else {
            return acc;
        };
        // Σ (x - zl) w = Σ x' w - zl' Σ w in the signed domain.
        let z = self
            .b
            .ins()
            .iconst(types::I32, i64::from(signed_zl(self.int8)));
        let z = self.b.ins().splat(types::I32X4, z);
        let s = self.b.use_var(sums);
        let c = self.b.ins().imul(s, z);
        self.b.ins().isub(acc, c)
    }

    /// The epilogue of every accumulator of the tile, stored as the output's type.
    fn epilogue(
        &mut self,
        tile: &Tile,
        out: Value,
        inputs: &[Value],
    ) -> Result<(), MicrokernelError> {
        let typed = TypedEpilogue {
            k: self.k,
            acc: DType::I32,
            out: self.int8.out,
            inputs: &self.int8.inputs,
        };
        for (r, &m) in tile.rows.iter().enumerate() {
            let mut loads = HashMap::new();
            for (gi, &col) in tile.groups.iter().enumerate() {
                let acc = self.accumulator(tile, r, gi);
                typed.store(self.b, acc, &mut loads, (inputs, out), (m, col))?;
            }
        }
        Ok(())
    }
}
