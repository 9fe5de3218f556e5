//! Elementwise f32 loops as calls of the target's pointwise micro-kernel (x86-64: 8 or 16 lanes
//! where Cranelift's vector code has 4, and an `exp` or `erf` in registers the whole way):
//! `for.vectorized v in 0..n { out[I(v)] = e }` with `out` contiguous in `v` and f32 (or `i32`,
//! `i8`, `u8` after the expression's conversion: a quantisation), every load
//! in `e` an f32 (or i32) buffer read contiguously in `v` or at indices without `v`, and `e` an epilogue
//! expression (f32 arithmetic, NaN-propagating `min`/`max`, selects on one comparison, the
//! epilogue intrinsics; `v` nowhere but in load indices). A softmax's `exp(x - max)` runs this
//! way.
//!
//! Invariant: taken only for a loop [`crate::vector::vectorizable`] accepts (a stored buffer is
//! read only at the stored indices) that touches no register-promoted buffer and whose buffers
//! all have a base pointer here. The micro-kernel computes each element as the vector code
//! does, bit for bit (both perform the interpreter's operations one by one, `exp`, `sigmoid`
//! and `erf` as the specified approximations), so taking it changes no result. A loop of more
//! than `2 · chunk` elements calls the kernel of `chunk` elements in a loop, then the kernel of
//! the rest once.

use crate::isa::microkernel::{generate_pointwise, MicroIsa, PointwiseKernel};
use crate::kernel::FnLowerer;
use crate::vector::{contiguous, mentions};
use crate::CodegenError;
use cranelift_codegen::ir::{types, InstBuilder, StackSlotData, StackSlotKind, Value};
use cranelift_module::{FuncId, Module};
use kiln_ir::DType;
use kiln_tir::{BufferId, Epilogue, Expr, Intrinsic, PrimFunc, Stmt, TensorizeError, VarId};

/// Loops shorter than this stay Cranelift vector code: below it a call costs more than its
/// wider vectors save (an SE block's `x · s` over 16 channels a call ran 25% slower)...
const MIN_EXTENT: usize = 64;
/// ...unless the expression evaluates an `exp`, `sigmoid` or `erf` (some 50 vector operations
/// per 4 lanes in Cranelift's code).
const MIN_EXTENT_LONG: usize = 8;
/// Vectors per call of the kernel a long loop repeats.
const CHUNK_VECTORS: usize = 16;

/// A loop the pointwise kernel computes: the store's buffer and indices, each distinct load
/// (an input of the kernel), and the expression over those inputs.
pub(crate) struct PointwiseLoop {
    out: (BufferId, Vec<Expr>),
    out_type: DType,
    loads: Vec<(BufferId, Vec<Expr>)>,
    contiguous: Vec<bool>,
    input_types: Vec<DType>,
    epilogue: Epilogue,
}

/// The pointwise form of `for.vectorized v in 0..extent { body }`, where it has one (see the
/// module doc; the caller checks the rest of the invariant).
pub(crate) fn pointwise_loop(
    f: &PrimFunc,
    v: VarId,
    extent: usize,
    body: &Stmt,
) -> Option<PointwiseLoop> {
    let Stmt::Store {
        buf,
        indices,
        value,
    } = body
    else {
        return None;
    };
    let out = f.buffer(*buf)?.dtype;
    let stored = matches!(out, DType::F32 | DType::I32 | DType::I8 | DType::U8);
    if extent < MIN_EXTENT_LONG || !stored || !contiguous(indices, v) {
        return None;
    }
    let mut loads: Vec<(BufferId, Vec<Expr>)> = vec![];
    let mut flags = vec![];
    let mut types = vec![];
    let epilogue = Epilogue::of_expr(value, &mut |b, idx| {
        let fail = |what: &str| Err(TensorizeError(what.into()));
        let dtype = f.buffer(b).map(|d| d.dtype);
        if !matches!(dtype, Some(DType::F32 | DType::I32)) {
            return fail("a load of another type than f32 or i32");
        }
        let along = contiguous(idx, v);
        if !along && idx.iter().any(|i| mentions(i, v)) {
            return fail("a strided load");
        }
        let k = match loads.iter().position(|(b2, i2)| *b2 == b && i2 == idx) {
            Some(k) => k,
            None => {
                loads.push((b, idx.to_vec()));
                flags.push(along);
                types.extend(dtype);
                loads.len() - 1
            }
        };
        Ok(Epilogue::Input(k))
    })
    .ok()?;
    let mut long = false;
    epilogue.walk(&mut |e| {
        long |= matches!(
            e,
            Epilogue::Call(Intrinsic::Exp | Intrinsic::Sigmoid | Intrinsic::Erf, _)
        )
    });
    if extent < MIN_EXTENT && !long {
        return None;
    }
    Some(PointwiseLoop {
        out: (*buf, indices.clone()),
        out_type: out,
        loads,
        contiguous: flags,
        input_types: types,
        epilogue,
    })
}

impl<M: Module> FnLowerer<'_, '_, '_, M> {
    /// Emits `for.vectorized var in 0..extent { body }` as pointwise micro-kernel calls when
    /// the target has them and the loop qualifies; `false` (nothing emitted) otherwise.
    pub(crate) fn pointwise(
        &mut self,
        var: VarId,
        extent: usize,
        body: &Stmt,
    ) -> Result<bool, CodegenError> {
        let Some(isa) = self.em.host.micro.filter(|_| self.em.opts.microkernels) else {
            return Ok(false);
        };
        let Some(p) = pointwise_loop(self.f, var, extent, body) else {
            return Ok(false);
        };
        let buffers = std::iter::once(p.out.0).chain(p.loads.iter().map(|l| l.0));
        if buffers.clone().any(|b| {
            self.promo.contains_key(&b) || self.bases.get(b.index()).is_none_or(Option::is_none)
        }) {
            return Ok(false);
        }
        let chunk = CHUNK_VECTORS * isa.f32_lanes();
        let (full, rest) = if extent <= 2 * chunk {
            (0, extent)
        } else {
            (extent / chunk, extent % chunk)
        };
        let Some(full_kernel) = self.pointwise_kernel(isa, &p, full.min(1) * chunk)? else {
            return Ok(false);
        };
        let Some(rest_kernel) = self.pointwise_kernel(isa, &p, rest)? else {
            return Ok(false);
        };
        // The addresses of the elements at `var = 0`.
        let v = self.var(var);
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.def_var(v, zero);
        self.consts[var.index()] = Some(0);
        let mut bases = vec![(self.address(p.out.0, &p.out.1)?, true)];
        for ((b, idx), &along) in p.loads.iter().zip(&p.contiguous) {
            bases.push((self.address(*b, idx)?, along));
        }
        self.consts[var.index()] = None;
        let ptr = self.em.host.ptr;
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            8 * bases.len() as u32,
            3,
        ));
        // Stores the pointers of the elements at `var = first` and calls `kernel`.
        let out_bytes = p.out_type.size_bytes() as i64;
        let call = |lw: &mut Self, kernel: FuncId, first: Value| {
            for (i, &(base, along)) in bases.iter().enumerate() {
                let addr = if along {
                    let size = if i == 0 { out_bytes } else { 4 };
                    let bytes = lw.b.ins().imul_imm_s(first, size);
                    lw.b.ins().iadd(base, bytes)
                } else {
                    base
                };
                lw.b.ins().stack_store(ptr, addr, slot, 8 * i as i32);
            }
            let args = lw.b.ins().stack_addr(ptr, slot, 0);
            let r = lw.func_ref(kernel);
            lw.b.ins().call(r, &[args]);
        };
        if let Some(kernel) = full_kernel {
            self.chunk_loop(var, full, chunk, &mut |lw| {
                let first = lw.b.use_var(v);
                call(lw, kernel, first);
                Ok(())
            })?;
        }
        if let Some(kernel) = rest_kernel {
            let first = self.b.ins().iconst(types::I64, (full * chunk) as i64);
            call(self, kernel, first);
        }
        self.em.stats.pointwise_loops += 1;
        Ok(true)
    }

    /// The kernel of `p` over `cols` elements: `Some(None)` for none, `None` when the target
    /// cannot generate it.
    fn pointwise_kernel(
        &mut self,
        isa: MicroIsa,
        p: &PointwiseLoop,
        cols: usize,
    ) -> Result<Option<Option<FuncId>>, CodegenError> {
        if cols == 0 {
            return Ok(Some(None));
        }
        let kernel = PointwiseKernel {
            cols,
            contiguous: p.contiguous.clone(),
            epilogue: p.epilogue.clone(),
            input_types: p.input_types.clone(),
            out: p.out_type,
        };
        let Ok(code) = generate_pointwise(isa, &kernel) else {
            return Ok(None);
        };
        let name = self.f.name.clone();
        self.em
            .define_microkernel(isa, code, &kernel, &name)
            .map(|id| Some(Some(id)))
    }
}
