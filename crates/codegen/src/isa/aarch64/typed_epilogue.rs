//! The typed epilogue of NEON micro-kernels whose accumulator or output is not plain f32: an
//! integer contraction's (an `i32` accumulator) and a converting f32 contraction's (a
//! quantisation after a float convolution), on groups of four columns, stored as the output's
//! type.
//!
//! Invariant: per lane it computes [`kiln_tir::Epilogue::eval_scalar`]: `i32` arithmetic wraps,
//! float to integer truncates and saturates with NaN as 0, integer to integer wraps (narrow
//! values held sign- or zero-extended in `i32` lanes), f32 operations one IEEE operation each
//! (`min`/`max` propagating NaN, `exp`/`sigmoid`/`erf` by [`crate::approx`]); an 8-bit output
//! is stored by saturating narrows, exact on values already of its type.

use super::contraction::value;
use crate::isa::microkernel::{ContractionKernel, MicrokernelError};
use crate::kernel::mem_flags;
use crate::scalar::{float_arith, float_cc};
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
use kiln_ir::DType;
use kiln_tir::{BinOp, Epilogue, Intrinsic};
use std::collections::HashMap;

fn err(s: impl Into<String>) -> MicrokernelError {
    MicrokernelError(s.into())
}

/// Flags of bitcasts between vectors of different lanes: little-endian lane order.
pub(super) fn little() -> MemFlagsData {
    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
}

/// A typed epilogue value.
type Typed = (Value, DType);

/// Operand loads of one tile row, keyed by operand, byte offset and width.
pub(super) type Loads = HashMap<(u8, i64, bool), Value>;

/// The types an epilogue computes with.
pub(super) struct TypedEpilogue<'a> {
    pub k: &'a ContractionKernel,
    /// The accumulator's type (`i32` or `f32`).
    pub acc: DType,
    pub out: DType,
    /// The epilogue inputs' types.
    pub inputs: &'a [DType],
}

impl TypedEpilogue<'_> {
    /// Computes the epilogue of accumulator `acc` (four lanes: row `m`, columns `col..col + 4`)
    /// and stores it as the output's type; `inputs` are the epilogue inputs' pointers, `out`
    /// the output's.
    pub fn store(
        &self,
        fb: &mut FunctionBuilder,
        acc: Value,
        loads: &mut Loads,
        (inputs, out): (&[Value], Value),
        (m, col): (usize, usize),
    ) -> Result<(), MicrokernelError> {
        let (v, ty) = self.eval(fb, &self.k.epilogue, acc, loads, inputs, (m, col))?;
        if ty != self.out {
            return Err(err("the epilogue's type is not the output's"));
        }
        let off = m as i64 * self.k.out_row + (self.out.size_bytes() * col) as i64;
        let off = i32::try_from(off).map_err(|_| err("output offset"))?;
        let v = match self.out {
            DType::I8 | DType::U8 => {
                let w = fb.ins().snarrow(v, v);
                let n = if self.out == DType::I8 {
                    fb.ins().snarrow(w, w)
                } else {
                    fb.ins().unarrow(w, w)
                };
                let d = fb.ins().bitcast(types::I32X4, little(), n);
                fb.ins().extractlane(d, 0)
            }
            _ => v,
        };
        fb.ins().store(mem_flags(), v, out, off);
        Ok(())
    }

    fn eval(
        &self,
        fb: &mut FunctionBuilder,
        e: &Epilogue,
        acc: Value,
        loads: &mut Loads,
        inputs: &[Value],
        (m, col): (usize, usize),
    ) -> Result<Typed, MicrokernelError> {
        macro_rules! ev {
            ($e:expr) => {
                self.eval(fb, $e, acc, loads, inputs, (m, col))?
            };
        }
        Ok(match e {
            Epilogue::Acc => (acc, self.acc),
            Epilogue::Const(c) => (crate::approx::f32_const(fb, *c, true), DType::F32),
            Epilogue::Int(i) => {
                let c = fb.ins().iconst(types::I32, i64::from(*i));
                (fb.ins().splat(types::I32X4, c), DType::I32)
            }
            Epilogue::Input(i) => {
                let (row, c) = self.k.inputs[*i];
                let ty = self.inputs[*i];
                let off = m as i64 * row + c * col as i64;
                let which = u8::try_from(2 + i).map_err(|_| err("epilogue inputs"))?;
                // Loaded as f32 lanes; an integer input's bits are reinterpreted.
                let v = value(fb, loads, which, inputs[*i], off, c != 0, true)?;
                if ty == DType::F32 {
                    (v, DType::F32)
                } else {
                    let flags = little();
                    (fb.ins().bitcast(types::I32X4, flags, v), DType::I32)
                }
            }
            Epilogue::Binary(op, a, b) => {
                let ((a, ta), (b, tb)) = (ev!(a), ev!(b));
                let ins = fb.ins();
                match (ta, tb) {
                    (DType::F32, DType::F32) => (
                        float_arith(fb, *op, a, b).ok_or_else(|| err("epilogue operation"))?,
                        DType::F32,
                    ),
                    (DType::I32, DType::I32) => (
                        match op {
                            BinOp::Add => ins.iadd(a, b),
                            BinOp::Sub => ins.isub(a, b),
                            BinOp::Mul => ins.imul(a, b),
                            BinOp::Min => ins.smin(a, b),
                            BinOp::Max => ins.smax(a, b),
                            other => return Err(err(format!("integer epilogue {other:?}"))),
                        },
                        DType::I32,
                    ),
                    (x, y) => return Err(err(format!("epilogue {op:?} of {x} and {y}"))),
                }
            }
            Epilogue::Cast(to, x) => {
                let (x, from) = ev!(x);
                (Self::convert(fb, *to, from, x)?, *to)
            }
            Epilogue::Select {
                op,
                a,
                b,
                then,
                otherwise,
            } => {
                let (a, b, t, o) = (ev!(a), ev!(b), ev!(then), ev!(otherwise));
                if [a.1, b.1, t.1, o.1].iter().any(|&d| d != DType::F32) {
                    return Err(err("an epilogue select on integers"));
                }
                let c = fb.ins().fcmp(float_cc(*op), a.0, b.0);
                let flags = little();
                let mask = fb.ins().bitcast(types::F32X4, flags, c);
                (fb.ins().bitselect(mask, t.0, o.0), DType::F32)
            }
            Epilogue::Call(f, args) => {
                let mut x = Vec::with_capacity(args.len());
                for a in args {
                    let (v, t) = ev!(a);
                    if t != DType::F32 {
                        return Err(err("an epilogue call on integers"));
                    }
                    x.push(v);
                }
                let v = match (f, x.as_slice()) {
                    (Intrinsic::Abs, &[a]) => fb.ins().fabs(a),
                    (Intrinsic::Sqrt, &[a]) => fb.ins().sqrt(a),
                    (Intrinsic::Floor, &[a]) => fb.ins().floor(a),
                    (Intrinsic::Ceil, &[a]) => fb.ins().ceil(a),
                    (Intrinsic::Round, &[a]) => fb.ins().nearest(a),
                    (Intrinsic::Fma, &[a, y, c]) => fb.ins().fma(a, y, c),
                    (Intrinsic::Exp, &[a]) => crate::approx::exp(fb, a, true),
                    (Intrinsic::Sigmoid, &[a]) => crate::approx::sigmoid(fb, a, true),
                    (Intrinsic::Erf, &[a]) => crate::approx::erf(fb, a, true),
                    _ => return Err(err("epilogue call")),
                };
                (v, DType::F32)
            }
        })
    }

    /// `to(x)` for `x` of type `from`, as the interpreter converts (narrow integers held
    /// sign- or zero-extended in `i32` lanes).
    fn convert(
        fb: &mut FunctionBuilder,
        to: DType,
        from: DType,
        x: Value,
    ) -> Result<Value, MicrokernelError> {
        let int = |t: DType| matches!(t, DType::I32 | DType::I8 | DType::U8);
        let ins = fb.ins();
        Ok(match (from, to) {
            (DType::F32, DType::F32) => x,
            (f, DType::I32) if int(f) => x,
            (f, DType::F32) if int(f) => ins.fcvt_from_sint(types::F32X4, x),
            (DType::F32, t) if int(t) => {
                // Truncating, saturating at i32's range, NaN as 0; then into the type's.
                let v = ins.fcvt_to_sint_sat(types::I32X4, x);
                let bounds = match t {
                    DType::I8 => Some((-128, 127)),
                    DType::U8 => Some((0, 255)),
                    _ => None,
                };
                match bounds {
                    None => v,
                    Some((lo, hi)) => {
                        let lo = fb.ins().iconst(types::I32, lo);
                        let lo = fb.ins().splat(types::I32X4, lo);
                        let hi = fb.ins().iconst(types::I32, hi);
                        let hi = fb.ins().splat(types::I32X4, hi);
                        let v = fb.ins().smax(v, lo);
                        fb.ins().smin(v, hi)
                    }
                }
            }
            (f, t) if int(f) && matches!(t, DType::I8 | DType::U8) => {
                let v = ins.ishl_imm_u(x, 24);
                if t == DType::I8 {
                    fb.ins().sshr_imm_u(v, 24)
                } else {
                    fb.ins().ushr_imm_u(v, 24)
                }
            }
            (f, t) => return Err(err(format!("epilogue conversion from {f} to {t}"))),
        })
    }
}
