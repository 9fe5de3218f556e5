//! Target micro-kernels: the one interface between code generation and the per-ISA kernel
//! generators (`x86_64`: AVX2+FMA and AVX-512F machine code encoded with iced-x86; `aarch64`:
//! NEON register tiles written in Cranelift IR, whose `f32x4` is NEON's native width).
//!
//! A micro-kernel is defined into the same Cranelift module as the kernels that call it, so the
//! JIT and AOT libraries run identical code: x86-64 machine code with
//! `Module::define_function_bytes`, aarch64 IR compiled by the module's ISA. Either is a leaf
//! function with the C signature
//!
//! ```c
//! void microkernel(const uint8_t *const ptrs[]);  /* lhs, rhs, out, epilogue inputs... */
//! ```
//!
//! where each pointer is the address of its access at `m = n = r = 0`. The x86-64 machine code
//! is frameless, touches no callee-saved register, keeps its constants inside its own bytes
//! (addressed RIP-relative, so it needs no relocation), and ends with `vzeroupper`.
//!
//! Invariant: [`generate`] returns code only for a kernel it implements completely, and that code
//! computes exactly what [`ContractionKernel::reference`] computes (which is what the
//! `Tensorized` loop nest it came from computes): accumulation by fused multiply-add in the
//! kernel's reduction order, then the epilogue operation by operation, NaN-propagating
//! `min`/`max` included.

use cranelift_codegen::ir::Function;
use kiln_ir::DType;
use kiln_tir::{Contraction, ContractionKind, Epilogue, IntContraction, Scalar};

/// A family of target micro-kernels, chosen from the target's ISA flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MicroIsa {
    /// x86-64 AVX2 + FMA: 8 f32 lanes, 16 vector registers.
    X86Avx2,
    /// x86-64 AVX-512F: 16 f32 lanes, 32 vector registers, mask registers for ragged tails.
    X86Avx512,
    /// x86-64 AVX-512F with VNNI (`vpdpbusd`): the AVX-512 kernels, and 8-bit integer
    /// contractions (Intel Cascade Lake, Ice Lake and later; AMD Zen 4 and later).
    X86Avx512Vnni,
    /// aarch64 NEON (baseline ARMv8-A): 4 f32 lanes, 32 vector registers; Cranelift IR.
    Aarch64Neon,
}

impl MicroIsa {
    /// Every family.
    pub const ALL: [MicroIsa; 4] = [
        MicroIsa::X86Avx2,
        MicroIsa::X86Avx512,
        MicroIsa::X86Avx512Vnni,
        MicroIsa::Aarch64Neon,
    ];

    /// A short name (`avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            MicroIsa::X86Avx2 => "avx2",
            MicroIsa::X86Avx512 => "avx512",
            MicroIsa::X86Avx512Vnni => "avx512vnni",
            MicroIsa::Aarch64Neon => "neon",
        }
    }

    /// f32 lanes per vector register.
    pub fn f32_lanes(self) -> usize {
        match self {
            MicroIsa::X86Avx2 => 8,
            MicroIsa::X86Avx512 | MicroIsa::X86Avx512Vnni => 16,
            MicroIsa::Aarch64Neon => 4,
        }
    }

    /// The 8-bit activation type the family's integer dot products take without converting
    /// (`None`: both cost the same): VNNI's `vpdpbusd` multiplies unsigned activations by
    /// signed weights, NEON's `sdot` signed by signed; AVX2 widens either kind to 16 bits.
    pub fn int8_activations(self) -> Option<kiln_ir::DType> {
        match self {
            MicroIsa::X86Avx512Vnni => Some(kiln_ir::DType::U8),
            MicroIsa::Aarch64Neon => Some(kiln_ir::DType::I8),
            MicroIsa::X86Avx2 | MicroIsa::X86Avx512 => None,
        }
    }

    /// Vector registers.
    pub fn vector_registers(self) -> usize {
        match self {
            MicroIsa::X86Avx2 => 16,
            MicroIsa::X86Avx512 | MicroIsa::X86Avx512Vnni | MicroIsa::Aarch64Neon => 32,
        }
    }

    /// The CPU features the kernels execute, as GCC's `__builtin_cpu_supports` names them:
    /// a library containing such kernels checks them when a context is created.
    pub fn cpu_features(self) -> &'static [&'static str] {
        match self {
            MicroIsa::X86Avx2 => &["avx", "avx2", "fma"],
            MicroIsa::X86Avx512 => &["avx", "avx2", "fma", "avx512f"],
            MicroIsa::X86Avx512Vnni => &["avx", "avx2", "fma", "avx512f", "avx512vnni"],
            MicroIsa::Aarch64Neon => &[],
        }
    }

    /// Whether the family's kernels are Cranelift IR (which any Cranelift ISA with FMA also
    /// compiles: tests run them on the host) rather than machine code.
    pub fn is_ir(self) -> bool {
        self == MicroIsa::Aarch64Neon
    }

    /// Whether this machine can execute the kernels as the target does.
    pub fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let base = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            match self {
                MicroIsa::X86Avx2 => base,
                MicroIsa::X86Avx512 => base && std::arch::is_x86_feature_detected!("avx512f"),
                MicroIsa::X86Avx512Vnni => {
                    base && std::arch::is_x86_feature_detected!("avx512f")
                        && std::arch::is_x86_feature_detected!("avx512vnni")
                }
                MicroIsa::Aarch64Neon => false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            self == MicroIsa::Aarch64Neon
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            false
        }
    }

    /// The family a target with these Cranelift ISA flags runs (`None`: no micro-kernels; its
    /// tensorized regions compile as ordinary loops).
    pub fn for_target(arch: &str, flag: &dyn Fn(&str) -> bool) -> Option<MicroIsa> {
        if arch == "aarch64" {
            return Some(MicroIsa::Aarch64Neon);
        }
        if arch != "x64" || !flag("has_fma") || !flag("has_avx2") {
            return None;
        }
        Some(match (flag("has_avx512f"), flag("has_avx512vnni")) {
            (true, true) => MicroIsa::X86Avx512Vnni,
            (true, false) => MicroIsa::X86Avx512,
            _ => MicroIsa::X86Avx2,
        })
    }

    /// Whether the family has 8-bit integer contraction kernels (AVX-512 VNNI dot products;
    /// AVX-512F and AVX2 widening to 16-bit pairs, `vpmaddwd`; NEON byte dot products, `sdot`
    /// where the target has the dot-product extension).
    pub fn int8(self) -> bool {
        true
    }

    /// Whether the family's f32 kernels have converting epilogues (integer outputs, see
    /// [`ContractionKernel::converts`]).
    pub fn converting_epilogues(self) -> bool {
        true
    }

    /// Whether the family has pointwise kernels ([`generate_pointwise`]): x86-64's, whose
    /// vectors are wider than Cranelift's.
    pub fn pointwise_kernels(self) -> bool {
        self != MicroIsa::Aarch64Neon
    }
}

/// How a contraction operand is addressed, in bytes from its pointer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OperandStrides {
    pub row: i64,
    /// 0 (broadcast along the tile's columns) or 4 (contiguous f32).
    pub col: i64,
    /// Per reduction loop, outermost first.
    pub reduce: Vec<i64>,
}

/// A contraction micro-kernel: [`kiln_tir::Contraction`] with byte strides and no base
/// expressions (the caller passes the base addresses).
#[derive(Clone, Debug, PartialEq)]
pub struct ContractionKernel {
    pub rows: usize,
    pub cols: usize,
    pub reduce: Vec<usize>,
    pub lhs: OperandStrides,
    pub rhs: OperandStrides,
    /// Byte stride of the output per tile row (columns are contiguous).
    pub out_row: i64,
    /// Epilogue inputs: `(row, col)` byte strides, `col` 0 or 4.
    pub inputs: Vec<(i64, i64)>,
    pub epilogue: Epilogue,
    /// The types and zero points of an 8-bit integer contraction (`None`: f32 operands).
    pub int8: Option<IntContraction>,
    /// The output's and the epilogue inputs' types of an f32 contraction whose epilogue
    /// converts (a quantisation after a float convolution, maybe back to f32); `None` when
    /// everything is f32 and nothing converts, and for integer contractions (whose types are in
    /// `int8`).
    pub converts: Option<(DType, Vec<DType>)>,
}

/// Why a kernel was not generated (the caller compiles the loop nest instead).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("micro-kernel not generated: {0}")]
pub struct MicrokernelError(pub String);

impl ContractionKernel {
    /// The kernel of a contraction (byte strides from the buffers' element sizes).
    pub fn of(c: &Contraction) -> ContractionKernel {
        let (int8, converts) = match &c.kind {
            ContractionKind::F32 { out, inputs } => {
                let mut plain = *out == DType::F32 && inputs.iter().all(|&d| d == DType::F32);
                c.epilogue.walk(&mut |e| {
                    plain &= !matches!(e, Epilogue::Cast(..) | Epilogue::Int(_));
                });
                (None, (!plain).then(|| (*out, inputs.clone())))
            }
            ContractionKind::Int8(i) => (Some(i.clone()), None),
        };
        let (operand_bytes, out_bytes) = match (&int8, &converts) {
            (Some(i), _) => (1, i.out.size_bytes() as i64),
            (None, Some((out, _))) => (4, out.size_bytes() as i64),
            (None, None) => (4, 4),
        };
        let operand = |a: &kiln_tir::Access| OperandStrides {
            row: a.row * operand_bytes,
            col: a.col * operand_bytes,
            reduce: a.reduce.iter().map(|s| s * operand_bytes).collect(),
        };
        ContractionKernel {
            rows: c.rows,
            cols: c.cols,
            reduce: c.reduce.clone(),
            lhs: operand(&c.lhs),
            rhs: operand(&c.rhs),
            out_row: c.out.row * out_bytes,
            inputs: c.inputs.iter().map(|a| (a.row * 4, a.col * 4)).collect(),
            epilogue: c.epilogue.clone(),
            int8,
            converts,
        }
    }

    /// Per reduction step, in accumulation order, the offset of operand `s` from its tile
    /// position (in the strides' unit).
    fn steps(&self, s: &OperandStrides) -> Vec<i64> {
        let a = kiln_tir::Access {
            buf: kiln_tir::BufferId(0),
            base: kiln_tir::Expr::int(0),
            row: s.row,
            col: s.col,
            reduce: s.reduce.clone(),
        };
        kiln_tir::tensorize::reduce_offsets(&a, &self.reduce)
    }

    /// Bytes per element of the operands and of the output.
    fn element_bytes(&self) -> (i64, i64) {
        match (&self.int8, &self.converts) {
            (Some(i), _) => (1, i.out.size_bytes() as i64),
            (None, Some((out, _))) => (4, out.size_bytes() as i64),
            (None, None) => (4, 4),
        }
    }

    /// The byte range `[lo, hi)` each pointer's accesses cover, in ABI order (lhs, rhs, out,
    /// inputs), relative to the pointer.
    pub fn byte_ranges(&self) -> Vec<(i64, i64)> {
        let (rows, cols) = (self.rows as i64 - 1, self.cols as i64 - 1);
        let (operand_bytes, out_bytes) = self.element_bytes();
        let range = |terms: &[(i64, i64)], size: i64| {
            let (mut lo, mut hi) = (0i64, size);
            for &(stride, n) in terms {
                let span = stride.saturating_mul(n);
                if span < 0 {
                    lo = lo.saturating_add(span);
                } else {
                    hi = hi.saturating_add(span);
                }
            }
            (lo, hi)
        };
        let operand = |o: &OperandStrides| {
            let mut t = vec![(o.row, rows), (o.col, cols)];
            t.extend(
                o.reduce
                    .iter()
                    .zip(&self.reduce)
                    .map(|(&s, &e)| (s, e as i64 - 1)),
            );
            range(&t, operand_bytes)
        };
        let mut out = vec![
            operand(&self.lhs),
            operand(&self.rhs),
            range(&[(self.out_row, rows), (out_bytes, cols)], out_bytes),
        ];
        out.extend(
            self.inputs
                .iter()
                .map(|&(row, col)| range(&[(row, rows), (col, cols)], 4)),
        );
        out
    }

    /// Reads the f32 at byte offset `off` from element `base` of `buf` (`None` outside).
    fn read((buf, base): Slot, off: i64) -> Option<f32> {
        if off % 4 != 0 {
            return None;
        }
        let i = i64::try_from(base).ok()?.checked_add(off / 4)?;
        buf.get(usize::try_from(i).ok()?).copied()
    }

    /// What the kernel computes. Each buffer is a slice with the element index of its access's
    /// base; returns `None` when an access leaves its slice (tests compare generated code with
    /// this).
    pub fn reference(
        &self,
        lhs: Slot,
        rhs: Slot,
        (out, out_base): (&mut [f32], usize),
        inputs: &[Slot],
    ) -> Option<()> {
        let (ls, rs) = (self.steps(&self.lhs), self.steps(&self.rhs));
        for m in 0..self.rows as i64 {
            for n in 0..self.cols as i64 {
                let mut acc = 0f32;
                for (l, r) in ls.iter().zip(&rs) {
                    let x = Self::read(lhs, m * self.lhs.row + n * self.lhs.col + l)?;
                    let y = Self::read(rhs, m * self.rhs.row + n * self.rhs.col + r)?;
                    acc = x.mul_add(y, acc);
                }
                let vals = self
                    .inputs
                    .iter()
                    .zip(inputs)
                    .map(|(&(row, col), &slot)| Self::read(slot, m * row + n * col))
                    .collect::<Option<Vec<f32>>>()?;
                let v = self.epilogue.eval(acc, &|i| vals[i]);
                let i = i64::try_from(out_base).ok()? + (m * self.out_row) / 4 + n;
                *out.get_mut(usize::try_from(i).ok()?)? = v;
            }
        }
        Some(())
    }
}

/// A buffer and the element index of an access's base in it.
pub type Slot<'a> = (&'a [f32], usize);

/// A buffer as raw bytes and the byte offset of an access's base in it.
pub type ByteSlot<'a> = (&'a [u8], usize);

impl ContractionKernel {
    /// What an 8-bit integer kernel or a converting f32 kernel computes (see
    /// [`ContractionKernel::reference`]), over raw little-endian bytes: `Σ (lhs - lhs_zp) ·
    /// (rhs - rhs_zp)` in wrapping `i32` (f32 operands: one fma chain from +0.0), then the
    /// epilogue over typed values, stored as the output's type. `None` for an all-f32 kernel or
    /// when an access leaves its slice.
    pub fn reference_bytes(
        &self,
        lhs: ByteSlot,
        rhs: ByteSlot,
        (out, out_base): (&mut [u8], usize),
        inputs: &[ByteSlot],
    ) -> Option<()> {
        let (out_type, input_types) = match (&self.int8, &self.converts) {
            (Some(i), _) => (i.out, &i.inputs),
            (None, Some((out, inputs))) => (*out, inputs),
            (None, None) => return None,
        };
        let at = |(buf, base): ByteSlot, off: i64, n: usize| -> Option<Vec<u8>> {
            let i = usize::try_from(i64::try_from(base).ok()?.checked_add(off)?).ok()?;
            buf.get(i..i.checked_add(n)?).map(<[u8]>::to_vec)
        };
        let byte = |slot: ByteSlot, off: i64, d: kiln_ir::DType| -> Option<i32> {
            let b = at(slot, off, 1)?[0];
            Some(if d == kiln_ir::DType::I8 {
                i32::from(b as i8)
            } else {
                i32::from(b)
            })
        };
        let word =
            |slot: ByteSlot, off: i64| -> Option<[u8; 4]> { at(slot, off, 4)?.try_into().ok() };
        let (ls, rs) = (self.steps(&self.lhs), self.steps(&self.rhs));
        let out_bytes = out_type.size_bytes() as i64;
        for m in 0..self.rows as i64 {
            for n in 0..self.cols as i64 {
                let (lo, ro) = (
                    m * self.lhs.row + n * self.lhs.col,
                    m * self.rhs.row + n * self.rhs.col,
                );
                let acc = match &self.int8 {
                    Some(int8) => {
                        let mut acc = 0i32;
                        for (l, r) in ls.iter().zip(&rs) {
                            let x = byte(lhs, lo + l, int8.lhs)?;
                            let y = byte(rhs, ro + r, int8.rhs)?;
                            acc = acc.wrapping_add((x - int8.lhs_zp).wrapping_mul(y - int8.rhs_zp));
                        }
                        Scalar::I32(acc)
                    }
                    None => {
                        let mut acc = 0f32;
                        for (l, r) in ls.iter().zip(&rs) {
                            let x = f32::from_le_bytes(word(lhs, lo + l)?);
                            let y = f32::from_le_bytes(word(rhs, ro + r)?);
                            acc = x.mul_add(y, acc);
                        }
                        Scalar::F32(acc)
                    }
                };
                let vals = self
                    .inputs
                    .iter()
                    .zip(inputs)
                    .zip(input_types)
                    .map(|((&(row, col), &slot), &d)| {
                        let w = word(slot, m * row + n * col)?;
                        Some(if d == kiln_ir::DType::F32 {
                            Scalar::F32(f32::from_le_bytes(w))
                        } else {
                            Scalar::I32(i32::from_le_bytes(w))
                        })
                    })
                    .collect::<Option<Vec<Scalar>>>()?;
                let v = self.epilogue.eval_scalar(acc, &|i| vals[i]);
                let bytes: Vec<u8> = match (out_type, v) {
                    (kiln_ir::DType::F32, v) => v.as_f32().to_le_bytes().to_vec(),
                    (kiln_ir::DType::I32, v) => v.as_i32().to_le_bytes().to_vec(),
                    (_, v) => vec![v.as_i32() as u8],
                };
                let i = i64::try_from(out_base).ok()? + m * self.out_row + n * out_bytes;
                let i = usize::try_from(i).ok()?;
                out.get_mut(i..i + bytes.len())?.copy_from_slice(&bytes);
            }
        }
        Some(())
    }
}

/// The code of a micro-kernel, with the signature of the module doc.
#[derive(Clone, Debug)]
pub enum MicroCode {
    /// Machine code (x86-64), defined as bytes.
    Machine(Vec<u8>),
    /// A Cranelift function (aarch64) in the System V calling convention: the module it is
    /// defined in sets its own and compiles it.
    Ir(Box<Function>),
}

impl MicroCode {
    /// The machine code, for code that is machine code.
    pub fn machine_code(&self) -> Option<&[u8]> {
        match self {
            MicroCode::Machine(b) => Some(b),
            MicroCode::Ir(_) => None,
        }
    }

    /// Bytes that are equal exactly when two kernels' code is (to define each once).
    pub fn key(&self) -> Vec<u8> {
        match self {
            MicroCode::Machine(b) => b.clone(),
            MicroCode::Ir(f) => f.display().to_string().into_bytes(),
        }
    }
}

/// The code of `kernel` for `isa`.
pub fn generate(isa: MicroIsa, kernel: &ContractionKernel) -> Result<MicroCode, MicrokernelError> {
    use super::x86_64::{contraction, int8_contraction, Int8Isa, VecIsa};
    if kernel.int8.is_some() {
        return match isa {
            MicroIsa::X86Avx512Vnni => Ok(MicroCode::Machine(int8_contraction(
                Int8Isa::Avx512Vnni,
                kernel,
            )?)),
            MicroIsa::X86Avx512 | MicroIsa::X86Avx2 => {
                Ok(MicroCode::Machine(int8_contraction(Int8Isa::Avx2, kernel)?))
            }
            MicroIsa::Aarch64Neon => Ok(MicroCode::Ir(Box::new(super::aarch64::int8_contraction(
                kernel,
            )?))),
        };
    }
    Ok(match isa {
        MicroIsa::X86Avx2 => MicroCode::Machine(contraction(VecIsa::Avx2, kernel)?),
        MicroIsa::X86Avx512 | MicroIsa::X86Avx512Vnni => {
            MicroCode::Machine(contraction(VecIsa::Avx512, kernel)?)
        }
        MicroIsa::Aarch64Neon => MicroCode::Ir(Box::new(super::aarch64::contraction(kernel)?)),
    })
}

/// A pointwise micro-kernel: `out[j] = epilogue(inputs at j)` for `j in 0..cols`, 32-bit
/// inputs, each input contiguous (read at `j`) or broadcast (read at 0). The ABI's pointer array holds
/// the output's pointer, then the inputs'. The epilogue reads no accumulator.
#[derive(Clone, Debug, PartialEq)]
pub struct PointwiseKernel {
    pub cols: usize,
    /// Per input: contiguous (`true`) or broadcast.
    pub contiguous: Vec<bool>,
    pub epilogue: Epilogue,
    /// Per input: its type, `f32` or `i32`.
    pub input_types: Vec<kiln_ir::DType>,
    /// The output's type: `f32`, or `i32`, `i8` or `u8` after the expression's conversion
    /// (a quantisation).
    pub out: kiln_ir::DType,
}

impl PointwiseKernel {
    /// What the kernel computes (all f32); `None` when an access leaves its slice or a type
    /// is not f32.
    pub fn reference(&self, out: &mut [f32], inputs: &[&[f32]]) -> Option<()> {
        let f32s = |d: &kiln_ir::DType| *d == kiln_ir::DType::F32;
        if !f32s(&self.out) || !self.input_types.iter().all(f32s) {
            return None;
        }
        for j in 0..self.cols {
            let vals = self
                .contiguous
                .iter()
                .zip(inputs)
                .map(|(&c, x)| x.get(if c { j } else { 0 }).copied())
                .collect::<Option<Vec<f32>>>()?;
            *out.get_mut(j)? = self.epilogue.eval(0.0, &|i| vals[i]);
        }
        Some(())
    }
}

/// The code of pointwise kernel `kernel` for `isa` (x86-64 families; NEON's 4 lanes are what
/// Cranelift's own vector code already runs, so it has none).
pub fn generate_pointwise(
    isa: MicroIsa,
    kernel: &PointwiseKernel,
) -> Result<MicroCode, MicrokernelError> {
    use super::x86_64::{pointwise, VecIsa};
    let v = match isa {
        MicroIsa::X86Avx2 => VecIsa::Avx2,
        MicroIsa::X86Avx512 | MicroIsa::X86Avx512Vnni => VecIsa::Avx512,
        MicroIsa::Aarch64Neon => {
            return Err(MicrokernelError("no pointwise kernels on NEON".into()))
        }
    };
    Ok(MicroCode::Machine(pointwise(v, kernel)?))
}

/// Machine code of `void f(const void *)` that runs `iterations` rounds of 12 independent
/// fused multiply-adds on full vectors of `isa` (`24 * lanes * iterations` flops): what peak
/// measurements time (x86-64 families; kiln runs on x86-64 hosts only).
pub fn peak_loop(isa: MicroIsa, iterations: u32) -> Result<Vec<u8>, MicrokernelError> {
    let v = match isa {
        MicroIsa::X86Avx2 => super::x86_64::VecIsa::Avx2,
        MicroIsa::X86Avx512 | MicroIsa::X86Avx512Vnni => super::x86_64::VecIsa::Avx512,
        MicroIsa::Aarch64Neon => {
            return Err(MicrokernelError(
                "no peak loop for NEON (kiln runs on x86-64 hosts)".into(),
            ));
        }
    };
    super::x86_64::peak_loop(v, iterations).map_err(MicrokernelError)
}

/// The instructions of x86-64 machine code `bytes`, one per line (Intel syntax): for tests and
/// dumps of kernels this machine may not be able to run.
pub fn disassemble(bytes: &[u8]) -> String {
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
    let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    let mut f = IntelFormatter::new();
    let mut out = String::new();
    let mut line = String::new();
    for ins in &mut d {
        line.clear();
        f.format(&ins, &mut line);
        out.push_str(&line);
        out.push('\n');
        if ins.mnemonic() == iced_x86::Mnemonic::Ret {
            break;
        }
    }
    out
}
