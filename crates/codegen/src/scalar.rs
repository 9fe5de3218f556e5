//! Scalar expression lowering: one [`Expr`] to Cranelift values of its dtype, with the
//! semantics the [`crate::kernel`] module doc states (wrapping integers, truncating and flooring
//! division with a zero divisor leaving the function, NaN-propagating float min/max, saturating
//! float-to-int casts, `f16` and `bf16` held in `f32`, unsigned integers compared, divided and
//! widened as unsigned, `select` evaluating only the chosen branch).
//!
//! Invariant: every method emits code computing what [`kiln_tir::interp`] computes for the same
//! expression, and the free functions ([`int_cc`], [`float_cc`], [`fma_parts`],
//! [`speculatable`]) answer the same question for the vector and micro-kernel code.

use crate::kernel::{clif_type, unsigned, FnLowerer};
use crate::runtime::{self, names};
use crate::{CodegenError, STATUS_DIV_BY_ZERO};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, BlockArg, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::Module;
use kiln_ir::DType;
use kiln_tir::{BinOp, CmpOp, Expr, Intrinsic};

impl<M: Module> FnLowerer<'_, '_, '_, M> {
    pub(crate) fn iconst_of(&mut self, d: DType, value: i64) -> Value {
        let ty = clif_type(d);
        let bits = ty.bits();
        let masked = if bits >= 64 {
            value
        } else {
            (value as u64 & ((1u64 << bits) - 1)) as i64
        };
        self.b.ins().iconst(ty, masked)
    }

    pub fn expr(&mut self, e: &Expr) -> Result<Value, CodegenError> {
        Ok(match e {
            Expr::Var(v) => {
                let var = self.var(*v);
                self.b.use_var(var)
            }
            Expr::Int { value, dtype } => self.iconst_of(*dtype, *value),
            Expr::Float { value, dtype } => {
                let x = *value as f32;
                // Rounded at compile time exactly as the runtime rounds.
                let x = match dtype {
                    DType::F64 => return Ok(self.b.ins().f64const(*value)),
                    DType::F16 => runtime::kiln_f16_to_f32(runtime::kiln_f32_to_f16(x)),
                    DType::BF16 => half::bf16::from_f32(x).to_f32(),
                    _ => x,
                };
                self.b.ins().f32const(x)
            }
            Expr::Bool(b) => self.b.ins().iconst(types::I8, i64::from(*b)),
            Expr::Binary { op, a, b } if self.contracts(*op, a, b) => {
                let (x, y, c) = fma_parts(a, b).ok_or_else(|| self.err_internal("fma form"))?;
                let (x, y, c) = (self.expr(x)?, self.expr(y)?, self.expr(c)?);
                self.b.ins().fma(x, y, c)
            }
            Expr::Binary { op, a, b } => {
                let d = self.dtype(a)?;
                let (a, b) = (self.expr(a)?, self.expr(b)?);
                if d.is_float() {
                    self.float_binary(*op, a, b)?
                } else {
                    self.int_binary(*op, d, a, b)
                }
            }
            Expr::Cmp { op, a, b } => {
                let d = self.dtype(a)?;
                let (a, b) = (self.expr(a)?, self.expr(b)?);
                if d.is_float() {
                    let cc = float_cc(*op);
                    self.b.ins().fcmp(cc, a, b)
                } else {
                    self.b.ins().icmp(int_cc(*op, unsigned(d)), a, b)
                }
            }
            Expr::And(a, b) => {
                let (a, b) = (self.expr(a)?, self.expr(b)?);
                self.b.ins().band(a, b)
            }
            Expr::Or(a, b) => {
                let (a, b) = (self.expr(a)?, self.expr(b)?);
                self.b.ins().bor(a, b)
            }
            Expr::Not(a) => {
                let a = self.expr(a)?;
                self.b.ins().bxor_imm_s(a, 1)
            }
            Expr::Select {
                cond,
                then,
                otherwise,
            } => {
                let c = self.expr(cond)?;
                if speculatable(then) && speculatable(otherwise) {
                    let (t, o) = (self.expr(then)?, self.expr(otherwise)?);
                    self.b.ins().select(c, t, o)
                } else {
                    let ty = self.value_type(e)?;
                    self.branch_select(c, ty, |lw| lw.expr(then), |lw| lw.expr(otherwise))?
                }
            }
            Expr::Cast { dtype, value } => {
                let from = self.dtype(value)?;
                let v = self.expr(value)?;
                self.cast(from, *dtype, v)?
            }
            Expr::Load { buf, indices }
                if self.carried.as_ref().is_some_and(|c| c.is(*buf, indices)) =>
            {
                let var = self.carried.as_ref().map(|c| c.var);
                self.b
                    .use_var(var.ok_or_else(|| self.err_internal("carried element"))?)
            }
            Expr::Load { buf, indices } if self.promo.contains_key(buf) => {
                let var = self.promoted_var(*buf, indices, 1)?;
                self.b.use_var(var)
            }
            Expr::Load { buf, indices } => {
                let dtype = self.f.buffers[buf.index()].dtype;
                let addr = self.address(*buf, indices)?;
                let flags = self.load_flags(*buf);
                if dtype == DType::F16 {
                    let bits = self.b.ins().load(types::I16, flags, addr, 0);
                    return self.call_hook(names::F16_TO_F32, &[bits]);
                }
                if dtype == DType::BF16 {
                    let bits = self.b.ins().load(types::I16, flags, addr, 0);
                    return Ok(self.bf16_to_f32(bits));
                }
                let v = self.b.ins().load(clif_type(dtype), flags, addr, 0);
                if dtype == DType::Bool {
                    // Normalise: any non-zero byte is `true`.
                    self.b.ins().icmp_imm_s(IntCC::NotEqual, v, 0)
                } else {
                    v
                }
            }
            Expr::Call { intrinsic, args } => {
                let d = match args.first() {
                    Some(a) => self.dtype(a)?,
                    None => return Err(self.err_internal("intrinsic without arguments")),
                };
                let vals = args
                    .iter()
                    .map(|a| self.expr(a))
                    .collect::<Result<Vec<_>, _>>()?;
                self.call(*intrinsic, d, &vals)?
            }
        })
    }

    /// Whether `a op b` is an f32 `x * y + c` (or `c + x * y`) to contract into an FMA.
    pub fn contracts(&self, op: BinOp, a: &Expr, b: &Expr) -> bool {
        op == BinOp::Add
            && self.em.opts.contract_fma
            && self.em.host.has_fma
            && fma_parts(a, b).is_some()
            && self.dtype(a).ok() == Some(DType::F32)
    }

    /// The Cranelift type of `e`'s value.
    pub fn value_type(&self, e: &Expr) -> Result<Type, CodegenError> {
        Ok(clif_type(self.dtype(e)?))
    }

    /// `if c { then() } else { otherwise() }` as a value of type `ty`.
    pub fn branch_select(
        &mut self,
        c: Value,
        ty: Type,
        then: impl FnOnce(&mut Self) -> Result<Value, CodegenError>,
        otherwise: impl FnOnce(&mut Self) -> Result<Value, CodegenError>,
    ) -> Result<Value, CodegenError> {
        // A condition of constants (a loop variable fixed by unrolling) takes one arm.
        match self.const_condition(c) {
            Some(true) => return then(self),
            Some(false) => return otherwise(self),
            None => {}
        }
        let (tb, eb, join) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        let r = self.b.append_block_param(join, ty);
        self.b.ins().brif(c, tb, &[], eb, &[]);
        self.guarded += 1;
        self.b.switch_to_block(tb);
        let t = then(self);
        let t = t.inspect_err(|_| self.guarded -= 1)?;
        self.b.ins().jump(join, &[BlockArg::Value(t)]);
        self.b.switch_to_block(eb);
        let o = otherwise(self);
        self.guarded -= 1;
        let o = o?;
        self.b.ins().jump(join, &[BlockArg::Value(o)]);
        self.b.switch_to_block(join);
        Ok(r)
    }

    pub(crate) fn float_binary(
        &mut self,
        op: BinOp,
        a: Value,
        b: Value,
    ) -> Result<Value, CodegenError> {
        if let Some(v) = float_arith(&mut self.b, op, a, b) {
            return Ok(v);
        }
        let double = self.b.func.dfg.value_type(a) == types::F64;
        match op {
            BinOp::Rem if double => self.call_hook(names::FMOD64, &[a, b]),
            BinOp::Rem => self.call_hook(names::FMOD, &[a, b]),
            _ => Err(self.err_internal(format!("{op:?} on floats"))),
        }
    }

    /// Calls a one-result runtime hook.
    pub fn call_hook(&mut self, name: &'static str, args: &[Value]) -> Result<Value, CodegenError> {
        let r = self.hook_ref(name)?;
        let call = self.b.ins().call(r, args);
        Ok(self.b.inst_results(call)[0])
    }

    pub(crate) fn min_max(&mut self, cc: IntCC, a: Value, b: Value) -> Value {
        let c = self.b.ins().icmp(cc, a, b);
        self.b.ins().select(c, a, b)
    }

    pub(crate) fn int_binary(&mut self, op: BinOp, d: DType, a: Value, b: Value) -> Value {
        let unsigned = unsigned(d);
        match op {
            BinOp::Add => self.b.ins().iadd(a, b),
            BinOp::Sub => self.b.ins().isub(a, b),
            BinOp::Mul => self.b.ins().imul(a, b),
            BinOp::Min => {
                let cc = if unsigned {
                    IntCC::UnsignedLessThan
                } else {
                    IntCC::SignedLessThan
                };
                self.min_max(cc, a, b)
            }
            BinOp::Max => {
                let cc = if unsigned {
                    IntCC::UnsignedGreaterThan
                } else {
                    IntCC::SignedGreaterThan
                };
                self.min_max(cc, a, b)
            }
            BinOp::Div | BinOp::Rem | BinOp::FloorDiv | BinOp::FloorMod => {
                self.int_div(op, d, unsigned, a, b)
            }
        }
    }

    /// Integer division and remainder with the interpreter's semantics.
    pub(crate) fn int_div(
        &mut self,
        op: BinOp,
        d: DType,
        unsigned: bool,
        a: Value,
        b: Value,
    ) -> Value {
        let ty = self.b.func.dfg.value_type(a);
        let divisor = self.const_value(b);
        // Floor division by a positive power of two: a shift / a mask, exactly.
        if let Some(c) = divisor.filter(|&c| c > 0 && (c as u64).is_power_of_two()) {
            let k = c.trailing_zeros() as i64;
            match (op, unsigned) {
                (BinOp::FloorDiv, false) => return self.b.ins().sshr_imm_s(a, k),
                (BinOp::FloorDiv | BinOp::Div, true) => return self.b.ins().ushr_imm_s(a, k),
                (BinOp::FloorMod, _) | (BinOp::Rem, true) => {
                    let m = self.iconst_of(d, c - 1);
                    return self.b.ins().band(a, m);
                }
                _ => {}
            }
        }
        if divisor.is_none_or(|c| c == 0) {
            let zero = self.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
            self.leave_if(zero, STATUS_DIV_BY_ZERO);
        }
        if unsigned {
            // Truncation and flooring agree on non-negative values.
            return match op {
                BinOp::Div | BinOp::FloorDiv => self.b.ins().udiv(a, b),
                _ => self.b.ins().urem(a, b),
            };
        }
        // Signed: `MIN / -1` wraps to `MIN` (quotient) and 0 (remainder) instead of trapping.
        let (q, r) = if divisor.is_some_and(|c| c != -1) {
            (self.b.ins().sdiv(a, b), self.b.ins().srem(a, b))
        } else {
            let m1 = self.iconst_of(d, -1);
            let is_m1 = self.b.ins().icmp(IntCC::Equal, b, m1);
            let one = self.b.ins().iconst(ty, 1);
            let safe = self.b.ins().select(is_m1, one, b);
            let q = self.b.ins().sdiv(a, safe);
            let neg = self.b.ins().ineg(a);
            let q = self.b.ins().select(is_m1, neg, q);
            let r = self.b.ins().srem(a, safe);
            let zero = self.b.ins().iconst(ty, 0);
            let r = self.b.ins().select(is_m1, zero, r);
            (q, r)
        };
        match op {
            BinOp::Div => q,
            BinOp::Rem => r,
            _ => {
                // Floor: adjust when the remainder is non-zero and its sign differs from b's.
                let nonzero = self.b.ins().icmp_imm_s(IntCC::NotEqual, r, 0);
                let x = self.b.ins().bxor(r, b);
                let signs_differ = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, x, 0);
                let adjust = self.b.ins().band(nonzero, signs_differ);
                if op == BinOp::FloorDiv {
                    let qm1 = self.b.ins().iadd_imm_s(q, -1);
                    self.b.ins().select(adjust, qm1, q)
                } else {
                    let rb = self.b.ins().iadd(r, b);
                    self.b.ins().select(adjust, rb, r)
                }
            }
        }
    }

    /// The value of a condition computed from constants: an `iconst`, or an integer comparison
    /// of two of them (`None` otherwise).
    pub(crate) fn const_condition(&self, c: Value) -> Option<bool> {
        use cranelift_codegen::ir::InstructionData;
        if let Some(v) = self.const_value(c) {
            return Some(v != 0);
        }
        let dfg = &self.b.func.dfg;
        let inst = dfg.value_def(c).inst()?;
        let (cond, a, b) = match dfg.insts[inst] {
            InstructionData::IntCompare { cond, args, .. } => {
                (cond, self.const_value(args[0])?, self.const_value(args[1])?)
            }
            _ => return None,
        };
        Some(match cond {
            IntCC::Equal => a == b,
            IntCC::NotEqual => a != b,
            IntCC::SignedLessThan => a < b,
            IntCC::SignedLessThanOrEqual => a <= b,
            IntCC::SignedGreaterThan => a > b,
            IntCC::SignedGreaterThanOrEqual => a >= b,
            _ => return None,
        })
    }

    /// The constant an `iconst` value holds (sign-extended from its width).
    pub(crate) fn const_value(&self, v: Value) -> Option<i64> {
        let dfg = &self.b.func.dfg;
        let inst = dfg.value_def(v).inst()?;
        match dfg.insts[inst] {
            cranelift_codegen::ir::InstructionData::UnaryImm { imm, .. } => {
                let bits = dfg.value_type(v).bits();
                let raw: i64 = imm.into();
                Some(if bits >= 64 {
                    raw
                } else {
                    (raw << (64 - bits)) >> (64 - bits)
                })
            }
            _ => None,
        }
    }

    /// Integer clamp to `lo..=hi` (signed).
    pub(crate) fn clamp(&mut self, v: Value, lo: i64, hi: i64) -> Value {
        let ty = self.b.func.dfg.value_type(v);
        let (l, h) = (self.b.ins().iconst(ty, lo), self.b.ins().iconst(ty, hi));
        let v = self.min_max(IntCC::SignedLessThan, v, h);
        self.min_max(IntCC::SignedGreaterThan, v, l)
    }

    /// `x` (an `f32`) rounded to the nearest `f16` (ties to even), widened back to `f32`.
    pub fn round_f16(&mut self, x: Value) -> Result<Value, CodegenError> {
        let bits = self.call_hook(names::F32_TO_F16, &[x])?;
        self.call_hook(names::F16_TO_F32, &[bits])
    }

    /// `x` (an `f32`) rounded to the precision of a half dtype `d` (held in `f32`); other
    /// dtypes unchanged.
    pub fn round_half(&mut self, d: DType, x: Value) -> Result<Value, CodegenError> {
        Ok(match d {
            DType::F16 => self.round_f16(x)?,
            DType::BF16 => {
                let bits = self.f32_to_bf16(x);
                self.bf16_to_f32(bits)
            }
            _ => x,
        })
    }

    /// The bits of a `bf16` (an `i16`) widened to the `f32` they are the top half of.
    pub fn bf16_to_f32(&mut self, bits: Value) -> Value {
        let w = self.b.ins().uextend(types::I32, bits);
        let w = self.b.ins().ishl_imm_s(w, 16);
        self.b
            .ins()
            .bitcast(types::F32, cranelift_codegen::ir::MemFlagsData::new(), w)
    }

    /// `x` (an `f32`) rounded to the nearest `bf16` (ties to even; NaN stays a quiet NaN of
    /// the same sign), as the bits of an `i16`: what `half::bf16::from_f32` computes.
    pub fn f32_to_bf16(&mut self, x: Value) -> Value {
        let ins = self.b.ins();
        let bits = ins.bitcast(types::I32, cranelift_codegen::ir::MemFlagsData::new(), x);
        let ins = self.b.ins();
        let lsb = ins.ushr_imm_s(bits, 16);
        let ins = self.b.ins();
        let lsb = ins.band_imm_s(lsb, 1);
        let ins = self.b.ins();
        let bias = ins.iadd_imm_s(lsb, 0x7fff);
        let ins = self.b.ins();
        let rounded = ins.iadd(bits, bias);
        let ins = self.b.ins();
        let rounded = ins.ushr_imm_s(rounded, 16);
        let ins = self.b.ins();
        let quiet = ins.ushr_imm_s(bits, 16);
        let ins = self.b.ins();
        let quiet = ins.bor_imm_s(quiet, 0x40);
        let ins = self.b.ins();
        let nan = ins.fcmp(FloatCC::Unordered, x, x);
        let ins = self.b.ins();
        let r = ins.select(nan, quiet, rounded);
        self.b.ins().ireduce(types::I16, r)
    }

    /// A conversion with the semantics of `Expr::Cast`.
    pub fn cast(&mut self, from: DType, to: DType, v: Value) -> Result<Value, CodegenError> {
        if to.is_half() && from != DType::Bool {
            // Through `f32` (exact for every `f16`/`bf16` value, and for integers no double
            // rounding: those beyond `f32`'s exact range are beyond `f16`'s finite range too;
            // `f64` values round twice, as the interpreter rounds them), then rounded, as the
            // interpreter does; `bool` gives 0 or 1 exactly.
            let x = self.cast(from, DType::F32, v)?;
            return self.round_half(to, x);
        }
        // `f16` and `bf16` values are held in `f32`: every other cast from or to them is the
        // `f32` one.
        let (from, to) = (f16_as_f32(from), f16_as_f32(to));
        if from == to {
            return Ok(v);
        }
        let tt = clif_type(to);
        Ok(match (from, to) {
            (_, DType::Bool) => {
                if from == DType::F64 {
                    let z = self.b.ins().f64const(0.0);
                    self.b.ins().fcmp(FloatCC::NotEqual, v, z)
                } else if from.is_float() {
                    let z = self.b.ins().f32const(0.0);
                    self.b.ins().fcmp(FloatCC::NotEqual, v, z)
                } else {
                    self.b.ins().icmp_imm_s(IntCC::NotEqual, v, 0)
                }
            }
            (DType::F32, DType::F64) => self.b.ins().fpromote(types::F64, v),
            (DType::F64, DType::F32) => self.b.ins().fdemote(types::F32, v),
            (DType::F32 | DType::F64, DType::I32 | DType::I64) => {
                self.b.ins().fcvt_to_sint_sat(tt, v)
            }
            (DType::F32 | DType::F64, DType::U32 | DType::U64) => {
                self.b.ins().fcvt_to_uint_sat(tt, v)
            }
            (DType::F32 | DType::F64, _) => {
                // i8 / u8 / i16 / u16: saturate to i32, clamp, then narrow (same as saturating
                // directly, since truncation and clamping are both monotone).
                let w = self.b.ins().fcvt_to_sint_sat(types::I32, v);
                let (lo, hi) = match to {
                    DType::I8 => (i8::MIN as i64, i8::MAX as i64),
                    DType::U8 => (0, u8::MAX as i64),
                    DType::U16 => (0, u16::MAX as i64),
                    _ => (i16::MIN as i64, i16::MAX as i64),
                };
                let c = self.clamp(w, lo, hi);
                self.b.ins().ireduce(tt, c)
            }
            (_, DType::F32 | DType::F64) => {
                // From an integer or bool: widened to 64 bits (exact), converted once.
                let w = match clif_type(from) {
                    types::I64 => v,
                    _ if unsigned(from) => self.b.ins().uextend(types::I64, v),
                    _ => self.b.ins().sextend(types::I64, v),
                };
                if from == DType::U64 {
                    self.b.ins().fcvt_from_uint(tt, w)
                } else {
                    self.b.ins().fcvt_from_sint(tt, w)
                }
            }
            _ => {
                // Integer (or bool) to integer: two's complement wrap.
                let tf = clif_type(from);
                if tf.bits() == tt.bits() {
                    v
                } else if tf.bits() > tt.bits() {
                    self.b.ins().ireduce(tt, v)
                } else if unsigned(from) {
                    self.b.ins().uextend(tt, v)
                } else {
                    self.b.ins().sextend(tt, v)
                }
            }
        })
    }

    /// A scalar intrinsic call on values of dtype `d`.
    pub fn call(&mut self, f: Intrinsic, d: DType, args: &[Value]) -> Result<Value, CodegenError> {
        let arg = |i: usize| args.get(i).copied();
        let (Some(x), y, z) = (arg(0), arg(1), arg(2)) else {
            return Err(self.err_internal(format!("{} without arguments", f.name())));
        };
        let need = |v: Option<Value>, lw: &Self| {
            v.ok_or_else(|| lw.err_internal(format!("{} with too few arguments", f.name())))
        };
        if f == Intrinsic::Abs && !d.is_float() {
            if unsigned(d) {
                return Ok(x);
            }
            let neg = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, x, 0);
            let nx = self.b.ins().ineg(x);
            return Ok(self.b.ins().select(neg, nx, x));
        }
        let host = self.em.host;
        if d == DType::F32 && host.has_fma && self.em.opts.use_fma && host.has_vector_round {
            match f {
                Intrinsic::Exp => return Ok(crate::approx::exp(&mut self.b, x, false)),
                Intrinsic::Sigmoid => return Ok(crate::approx::sigmoid(&mut self.b, x, false)),
                Intrinsic::Erf => return Ok(crate::approx::erf(&mut self.b, x, false)),
                _ => {}
            }
        }
        let double = d == DType::F64;
        if let Some(hook) = math_hook(f, double) {
            let arity = f.arity();
            let mut operands = vec![x];
            for v in [y, z].into_iter().take(arity - 1) {
                operands.push(need(v, self)?);
            }
            return self.call_hook(hook, &operands);
        }
        Ok(match f {
            Intrinsic::Sqrt => self.b.ins().sqrt(x),
            // f64: `1 / sqrt(x)` in f64, as the interpreter computes it (no wider type).
            Intrinsic::Rsqrt if double => {
                let s = self.b.ins().sqrt(x);
                let one = self.b.ins().f64const(1.0);
                self.b.ins().fdiv(one, s)
            }
            Intrinsic::Rsqrt => {
                let w = self.b.ins().fpromote(types::F64, x);
                let s = self.b.ins().sqrt(w);
                let one = self.b.ins().f64const(1.0);
                let r = self.b.ins().fdiv(one, s);
                self.b.ins().fdemote(types::F32, r)
            }
            Intrinsic::Floor => self.b.ins().floor(x),
            Intrinsic::Ceil => self.b.ins().ceil(x),
            Intrinsic::Round => self.b.ins().nearest(x),
            Intrinsic::Abs => self.b.ins().fabs(x),
            Intrinsic::Fma => {
                let (y, z) = (need(y, self)?, need(z, self)?);
                if self.em.host.has_fma && self.em.opts.use_fma {
                    self.b.ins().fma(x, y, z)
                } else {
                    let hook = if double { names::FMA64 } else { names::FMA };
                    self.call_hook(hook, &[x, y, z])?
                }
            }
            other => return Err(self.err_internal(format!("{} has no lowering", other.name()))),
        })
    }
}

/// The runtime hook computing intrinsic `f` on `f32` (or, with `double`, `f64`) values, for
/// those without an IEEE instruction.
fn math_hook(f: Intrinsic, double: bool) -> Option<&'static str> {
    use names::*;
    let (single, wide) = match f {
        Intrinsic::Exp => (EXP, EXP64),
        Intrinsic::Log => (LOG, LOG64),
        Intrinsic::Tanh => (TANH, TANH64),
        Intrinsic::Sigmoid => (SIGMOID, SIGMOID64),
        Intrinsic::Erf => (ERF, ERF64),
        Intrinsic::Sin => (SIN, SIN64),
        Intrinsic::Cos => (COS, COS64),
        Intrinsic::Pow => (POW, POW64),
        _ => return None,
    };
    Some(if double { wide } else { single })
}

/// `d`, with `f16` and `bf16` (held in `f32`) as `f32`.
pub(crate) fn f16_as_f32(d: DType) -> DType {
    if d.is_half() {
        DType::F32
    } else {
        d
    }
}

/// `(x, y, c)` when `a + b` is `x * y + c` or `c + x * y`.
pub fn fma_parts<'e>(a: &'e Expr, b: &'e Expr) -> Option<(&'e Expr, &'e Expr, &'e Expr)> {
    match (a, b) {
        (
            Expr::Binary {
                op: BinOp::Mul,
                a: x,
                b: y,
            },
            c,
        )
        | (
            c,
            Expr::Binary {
                op: BinOp::Mul,
                a: x,
                b: y,
            },
        ) => Some((x, y, c)),
        _ => None,
    }
}

/// The ordered float comparison `op` is (`Ne` unordered: true when either side is NaN), as the
/// interpreter compares.
pub(crate) fn float_cc(op: CmpOp) -> FloatCC {
    match op {
        CmpOp::Eq => FloatCC::Equal,
        CmpOp::Ne => FloatCC::NotEqual,
        CmpOp::Lt => FloatCC::LessThan,
        CmpOp::Le => FloatCC::LessThanOrEqual,
        CmpOp::Gt => FloatCC::GreaterThan,
        CmpOp::Ge => FloatCC::GreaterThanOrEqual,
    }
}

/// The integer condition code of `op`.
pub fn int_cc(op: CmpOp, unsigned: bool) -> IntCC {
    match (op, unsigned) {
        (CmpOp::Eq, _) => IntCC::Equal,
        (CmpOp::Ne, _) => IntCC::NotEqual,
        (CmpOp::Lt, false) => IntCC::SignedLessThan,
        (CmpOp::Le, false) => IntCC::SignedLessThanOrEqual,
        (CmpOp::Gt, false) => IntCC::SignedGreaterThan,
        (CmpOp::Ge, false) => IntCC::SignedGreaterThanOrEqual,
        (CmpOp::Lt, true) => IntCC::UnsignedLessThan,
        (CmpOp::Le, true) => IntCC::UnsignedLessThanOrEqual,
        (CmpOp::Gt, true) => IntCC::UnsignedGreaterThan,
        (CmpOp::Ge, true) => IntCC::UnsignedGreaterThanOrEqual,
    }
}

/// True when evaluating `e` unconditionally is safe and cheap: no loads (a guarded load may be
/// out of bounds), no integer division (may leave the function), no runtime calls.
pub fn speculatable(e: &Expr) -> bool {
    !e.any(&|x| match x {
        Expr::Load { .. } => true,
        Expr::Binary { op, .. } => matches!(
            op,
            BinOp::Div | BinOp::Rem | BinOp::FloorDiv | BinOp::FloorMod
        ),
        Expr::Call { .. } => true,
        _ => false,
    })
}

/// `a op b` for the float operations that are one IEEE instruction (`Add`, `Sub`, `Mul`, `Div`,
/// and `Min`/`Max`, which propagate NaN as the interpreter's do); `None` for the others. Scalar
/// and vector operands alike.
pub(crate) fn float_arith(b: &mut FunctionBuilder, op: BinOp, x: Value, y: Value) -> Option<Value> {
    let ins = b.ins();
    Some(match op {
        BinOp::Add => ins.fadd(x, y),
        BinOp::Sub => ins.fsub(x, y),
        BinOp::Mul => ins.fmul(x, y),
        BinOp::Div => ins.fdiv(x, y),
        BinOp::Min => ins.fmin(x, y),
        BinOp::Max => ins.fmax(x, y),
        _ => return None,
    })
}
