//! f32 math in Cranelift IR by the specified approximations of [`kiln_tir::math`], shared by the
//! scalar and vector lowering and the Cranelift-IR micro-kernels.
//!
//! Invariant: each function emits [`kiln_tir::math`]'s algorithm operation by operation
//! (Cranelift's `fmin`/`fmax` keep a NaN operand, as the specification's clamp does), so on an
//! ISA with FMA scalar, vector and micro-kernel code agree with it bit for bit.

use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;

/// An f32 constant, splat to four lanes for vector code.
pub(crate) fn f32_const(b: &mut FunctionBuilder, x: f32, vector: bool) -> Value {
    let c = b.ins().f32const(x);
    if vector {
        b.ins().splat(types::F32X4, c)
    } else {
        c
    }
}

/// `exp(x)` of an f32 (or f32x4) by [`kiln_tir::math::exp`]'s algorithm.
pub(crate) fn exp(b: &mut FunctionBuilder, x: Value, vector: bool) -> Value {
    use kiln_tir::math;
    let (fty, ity) = if vector {
        (types::F32X4, types::I32X4)
    } else {
        (types::F32, types::I32)
    };
    let lo = f32_const(b, math::CLAMP_LO, vector);
    let hi = f32_const(b, math::CLAMP_HI, vector);
    let x = b.ins().fmin(x, hi);
    let x = b.ins().fmax(x, lo);
    let log2e = f32_const(b, math::LOG2E, vector);
    let t = b.ins().fmul(x, log2e);
    let n = b.ins().nearest(t);
    let c1 = f32_const(b, -math::C1, vector);
    let c2 = f32_const(b, -math::C2, vector);
    let r = b.ins().fma(n, c1, x);
    let r = b.ins().fma(n, c2, r);
    let mut p = f32_const(b, math::P[0], vector);
    for &c in &math::P[1..] {
        let c = f32_const(b, c, vector);
        p = b.ins().fma(p, r, c);
    }
    let r2 = b.ins().fmul(r, r);
    let y = b.ins().fma(p, r2, r);
    let one = f32_const(b, 1.0, vector);
    let y = b.ins().fadd(y, one);
    let ni = b.ins().fcvt_to_sint_sat(ity, n);
    let k1 = b.ins().sshr_imm_u(ni, 1);
    let k2 = b.ins().isub(ni, k1);
    let bias = b.ins().iconst(types::I32, 127);
    let bias = if vector {
        b.ins().splat(ity, bias)
    } else {
        bias
    };
    let mut scaled = y;
    for k in [k1, k2] {
        let e = b.ins().iadd(k, bias);
        let e = b.ins().ishl_imm_u(e, 23);
        let s = b.ins().bitcast(fty, MemFlagsData::new(), e);
        scaled = b.ins().fmul(scaled, s);
    }
    scaled
}

/// `erf(x)` of an f32 (or f32x4) by [`kiln_tir::math::erf`]'s algorithm.
pub(crate) fn erf(b: &mut FunctionBuilder, x: Value, vector: bool) -> Value {
    use kiln_tir::math;
    let a = b.ins().fabs(x);
    let t = b.ins().fmul(x, x);
    let mut p = f32_const(b, math::ERF_SMALL[math::ERF_SMALL.len() - 1], vector);
    for &c in math::ERF_SMALL[..math::ERF_SMALL.len() - 1].iter().rev() {
        let c = f32_const(b, c, vector);
        p = b.ins().fma(p, t, c);
    }
    let small = b.ins().fmul(x, p);
    let clamp = f32_const(b, math::ERF_CLAMP, vector);
    let ac = b.ins().fmin(a, clamp);
    let mut q = f32_const(b, math::ERF_LARGE[math::ERF_LARGE.len() - 1], vector);
    for &c in math::ERF_LARGE[..math::ERF_LARGE.len() - 1].iter().rev() {
        let c = f32_const(b, c, vector);
        q = b.ins().fma(q, ac, c);
    }
    let e = exp(b, q, vector);
    let one = f32_const(b, 1.0, vector);
    let m = b.ins().fsub(one, e);
    // `copysign(m, x)` for `m >= 0` (x86-64 has no vector `fcopysign` in Cranelift): or in
    // the sign bit of `x`.
    let (fty, ity) = if vector {
        (types::F32X4, types::I32X4)
    } else {
        (types::F32, types::I32)
    };
    let flags = MemFlagsData::new();
    let xi = b.ins().bitcast(ity, flags, x);
    let mi = b.ins().bitcast(ity, flags, m);
    let sign_bit = b.ins().iconst(types::I32, i64::from(i32::MIN));
    let sign_bit = if vector {
        b.ins().splat(ity, sign_bit)
    } else {
        sign_bit
    };
    let sign = b.ins().band(xi, sign_bit);
    let li = b.ins().bor(mi, sign);
    let large = b.ins().bitcast(fty, flags, li);
    let split = f32_const(b, math::ERF_SPLIT, vector);
    let is_small = b.ins().fcmp(
        cranelift_codegen::ir::condcodes::FloatCC::LessThan,
        a,
        split,
    );
    if vector {
        // The lane mask (all ones where true) chooses bit by bit.
        let mask = b.ins().bitcast(types::F32X4, MemFlagsData::new(), is_small);
        b.ins().bitselect(mask, small, large)
    } else {
        b.ins().select(is_small, small, large)
    }
}

/// `1 / (1 + exp(-x))` with [`exp`].
pub(crate) fn sigmoid(b: &mut FunctionBuilder, x: Value, vector: bool) -> Value {
    let neg = b.ins().fneg(x);
    let e = exp(b, neg, vector);
    let one = f32_const(b, 1.0, vector);
    let den = b.ins().fadd(one, e);
    b.ins().fdiv(one, den)
}
