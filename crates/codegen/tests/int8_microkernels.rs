//! 8-bit integer contraction micro-kernels against their reference: random kernels of the forms
//! the VNNI generator implements (activation quadruples broadcast per row, packed weight
//! panels, one to three reduction loops ending in the quadruple, ragged column tails; and
//! depthwise tiles, activations and weights along the columns, any zero points), random
//! zero points and signedness, and epilogues from a plain `i32` store to onnxruntime's
//! requantisation (`rne(clamp(f32(acc + bias) * scale[c])) + zp` stored as `u8`/`i8`),
//! compared byte for byte with `ContractionKernel::reference_bytes`; and f32 kernels whose
//! epilogue converts (a quantisation after a float convolution). Every x86-64 family's code is
//! generated always (AVX-512 VNNI dot products; AVX2 and AVX-512F 16-bit pair products, which
//! must refuse ragged byte tails other than a half vector) and runs where this machine can run
//! it (otherwise the test says it skipped).

use kiln_codegen::isa::microkernel::{generate, ContractionKernel, MicroIsa, OperandStrides};
use kiln_codegen::jit::run_microkernel_bytes;
use kiln_ir::DType;
use kiln_tir::{BinOp, CmpOp, Epilogue, IntContraction, Intrinsic};
use proptest::prelude::*;

/// The epilogue, its inputs' types and the output type for choice `c`.
fn epilogue(c: u8, zp: i32) -> (Epilogue, Vec<DType>, DType) {
    use Epilogue as E;
    let b = Box::new;
    let acc_bias = E::Binary(BinOp::Add, b(E::Acc), b(E::Input(0)));
    let scaled = E::Binary(
        BinOp::Mul,
        b(E::Cast(DType::F32, b(acc_bias.clone()))),
        b(E::Input(1)),
    );
    // The importer's clamp: select(x < lo, lo, select(x > hi, hi, x)).
    let clamp = |x: E, lo: f32, hi: f32| E::Select {
        op: CmpOp::Lt,
        a: b(x.clone()),
        b: b(E::Const(lo)),
        then: b(E::Const(lo)),
        otherwise: b(E::Select {
            op: CmpOp::Gt,
            a: b(x.clone()),
            b: b(E::Const(hi)),
            then: b(E::Const(hi)),
            otherwise: b(x),
        }),
    };
    let requant = |lo: f32, hi: f32, to: DType| {
        let r = E::Call(Intrinsic::Round, vec![clamp(scaled.clone(), lo, hi)]);
        let r = E::Binary(BinOp::Add, b(r), b(E::Const(zp as f32)));
        E::Cast(to, b(r))
    };
    let two = vec![DType::I32, DType::F32];
    match c % 6 {
        0 => (E::Acc, vec![], DType::I32),
        1 => (acc_bias, vec![DType::I32], DType::I32),
        2 => (
            requant(0.0 - zp as f32, 255.0 - zp as f32, DType::U8),
            two,
            DType::U8,
        ),
        3 => (
            requant(-128.0 - zp as f32, 127.0 - zp as f32, DType::I8),
            two,
            DType::I8,
        ),
        // Without the clamp: the conversion saturates (and maps NaN, from a NaN scale, to 0).
        4 => (E::Cast(DType::I8, b(scaled)), two, DType::I8),
        // f32 out, and the integer path: a wrapping product, a narrowing cast and back.
        _ => (
            E::Cast(
                DType::F32,
                b(E::Binary(
                    BinOp::Sub,
                    b(E::Cast(
                        DType::I32,
                        b(E::Cast(
                            DType::U8,
                            b(E::Binary(BinOp::Mul, b(acc_bias), b(E::Int(-3)))),
                        )),
                    )),
                    b(E::Int(27)),
                )),
            ),
            vec![DType::I32],
            DType::F32,
        ),
    }
}

#[derive(Clone, Debug)]
struct Case {
    kernel: ContractionKernel,
    seed: u64,
}

/// A depthwise tile: activations and weights contiguous along the columns, one to three tap
/// loops, any signedness and zero points.
fn depthwise_case() -> impl Strategy<Value = Case> {
    (
        1usize..=14,
        columns(),
        prop::collection::vec(1usize..=4, 1..=3),
        (any::<bool>(), any::<bool>()),
        (-140i32..140, -3i32..3),
        0u8..6,
        -20i32..20,
        any::<u64>(),
    )
        .prop_map(|(rows, cols, reduce, (ls, rs), (zl, zr), ep, zp, seed)| {
            let ty = |signed: bool| if signed { DType::I8 } else { DType::U8 };
            let clamp = |signed: bool, z: i32| {
                if signed {
                    z.clamp(-128, 127)
                } else {
                    z.clamp(0, 255)
                }
            };
            let (mut sl, mut sr) = (vec![], vec![]);
            let (mut al, mut ar) = (cols as i64 + 3, cols as i64);
            for &e in reduce.iter().rev() {
                sl.insert(0, al);
                sr.insert(0, ar);
                al *= e as i64 + 1;
                ar *= e as i64;
            }
            let (epilogue, input_types, out) = epilogue(ep, zp);
            let out_bytes = out.size_bytes() as i64;
            let kernel = ContractionKernel {
                rows,
                cols,
                reduce,
                lhs: OperandStrides {
                    row: al + 5,
                    col: 1,
                    reduce: sl,
                },
                rhs: OperandStrides {
                    row: 0,
                    col: 1,
                    reduce: sr,
                },
                out_row: out_bytes * (cols as i64 + (seed % 5) as i64),
                inputs: input_types.iter().map(|_| (0, 4)).collect(),
                epilogue,
                int8: Some(IntContraction {
                    lhs: ty(ls),
                    rhs: ty(rs),
                    lhs_zp: clamp(ls, zl),
                    rhs_zp: clamp(rs, zr + if rs { 0 } else { 128 }),
                    out,
                    inputs: input_types,
                }),
                converts: None,
            };
            Case { kernel, seed }
        })
}

/// Tile columns: any, or multiples of four (what AVX2 integer tiles take).
fn columns() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..=64, (1usize..=16).prop_map(|q| 4 * q)]
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..=14,
        columns(),
        prop::collection::vec(1usize..=4, 0..=2),
        any::<bool>(),
        -140i32..140,
        0u8..6,
        -20i32..20,
        any::<u64>(),
    )
        .prop_map(|(rows, cols, outer, signed, zl, ep, zp, seed)| {
            // Activations: `[.., channels]` rows of pixels, channel quadruples innermost, outer
            // loops over taps; weights packed `[.., quads, cols, 4]`.
            let lhs = if signed { DType::I8 } else { DType::U8 };
            let lhs_zp = if signed {
                zl.clamp(-128, 127)
            } else {
                zl.clamp(0, 255)
            };
            let mut reduce = outer;
            reduce.push(4);
            let (mut sl, mut sr) = (vec![1i64], vec![1i64]);
            let (mut al, mut ar) = (4i64, 4 * cols as i64);
            for &e in reduce[..reduce.len() - 1].iter().rev() {
                sl.insert(0, al);
                sr.insert(0, ar);
                al *= e as i64 + 1;
                ar *= e as i64;
            }
            let (epilogue, input_types, out) = epilogue(ep, zp);
            let out_bytes = out.size_bytes() as i64;
            let kernel = ContractionKernel {
                rows,
                cols,
                reduce,
                lhs: OperandStrides {
                    row: al + 8,
                    col: 0,
                    reduce: sl,
                },
                rhs: OperandStrides {
                    row: 0,
                    col: 4,
                    reduce: sr,
                },
                out_row: out_bytes * (cols as i64 + (seed % 5) as i64),
                inputs: input_types.iter().map(|_| (0, 4)).collect(),
                epilogue,
                int8: Some(IntContraction {
                    lhs,
                    rhs: DType::I8,
                    lhs_zp,
                    rhs_zp: 0,
                    out,
                    inputs: input_types,
                }),
                converts: None,
            };
            Case { kernel, seed }
        })
}

/// An f32 kernel whose epilogue converts (`ContractionKernel::converts`): onnxruntime's
/// QuantizeLinear after a float convolution (`rne(acc + bias) / scale`, clamped, plus the zero
/// point, into `i8`/`u8`), that quantisation dequantized again (`f32` out), or a plain
/// saturating conversion into `i32`.
fn converting_case() -> impl Strategy<Value = Case> {
    (
        1usize..=14,
        columns(),
        prop::collection::vec(1usize..=4, 0..=2),
        1usize..=19,
        0u8..4,
        -20i32..20,
        any::<u64>(),
    )
        .prop_map(|(rows, cols, outer, inner, ep, zp, seed)| {
            use Epilogue as E;
            let b = Box::new;
            let mut reduce = outer;
            reduce.push(inner);
            let (mut sl, mut sr) = (vec![], vec![]);
            let (mut al, mut ar) = (4i64, 4 * cols as i64);
            for &e in reduce.iter().rev() {
                sl.insert(0, al);
                sr.insert(0, ar);
                al *= e as i64 + 1;
                ar *= e as i64;
            }
            let x = E::Binary(
                BinOp::Div,
                b(E::Binary(BinOp::Add, b(E::Acc), b(E::Input(0)))),
                b(E::Input(1)),
            );
            let quantize = |lo: f32, hi: f32, to: DType| {
                let r = E::Binary(
                    BinOp::Add,
                    b(E::Call(Intrinsic::Round, vec![x.clone()])),
                    b(E::Const(zp as f32)),
                );
                let clamped = E::Select {
                    op: CmpOp::Lt,
                    a: b(r.clone()),
                    b: b(E::Const(lo)),
                    then: b(E::Const(lo)),
                    otherwise: b(E::Select {
                        op: CmpOp::Gt,
                        a: b(r.clone()),
                        b: b(E::Const(hi)),
                        then: b(E::Const(hi)),
                        otherwise: b(r),
                    }),
                };
                E::Cast(to, b(clamped))
            };
            let (epilogue, out) = match ep {
                0 => (quantize(-128.0, 127.0, DType::I8), DType::I8),
                1 => (quantize(0.0, 255.0, DType::U8), DType::U8),
                2 => {
                    let q = E::Cast(DType::I32, b(quantize(-128.0, 127.0, DType::I8)));
                    let centred = E::Binary(BinOp::Sub, b(q), b(E::Int(zp)));
                    let deq = E::Binary(
                        BinOp::Mul,
                        b(E::Cast(DType::F32, b(centred))),
                        b(E::Input(1)),
                    );
                    (deq, DType::F32)
                }
                _ => (E::Cast(DType::I32, b(x)), DType::I32),
            };
            let kernel = ContractionKernel {
                rows,
                cols,
                reduce,
                lhs: OperandStrides {
                    row: al + 8,
                    col: 0,
                    reduce: sl,
                },
                rhs: OperandStrides {
                    row: 0,
                    col: 4,
                    reduce: sr,
                },
                out_row: out.size_bytes() as i64 * (cols as i64 + (seed % 5) as i64),
                inputs: vec![(0, 4), (0, 0)],
                epilogue,
                int8: None,
                converts: Some((out, vec![DType::F32, DType::F32])),
            };
            Case { kernel, seed }
        })
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u8
        })
        .collect()
}

/// Byte buffers for each pointer, every access inside; inputs hold small `i32` biases and
/// small positive `f32` scales (a few NaN among them).
fn buffers(k: &ContractionKernel, seed: u64) -> (Vec<Vec<u8>>, Vec<usize>) {
    let input_types = match (&k.int8, &k.converts) {
        (Some(int8), _) => &int8.inputs,
        (None, Some((_, inputs))) => inputs,
        (None, None) => panic!("an integer or converting kernel"),
    };
    let mut bufs = vec![];
    let mut offs = vec![];
    for (i, (lo, hi)) in k.byte_ranges().into_iter().enumerate() {
        let off = (-lo) as usize;
        let len = (hi - lo) as usize + 3;
        let mut b = bytes(len, seed.wrapping_add(i as u64 * 7919));
        if i < 2 && k.int8.is_none() {
            // f32 operands in [-4, 4).
            for chunk in b.chunks_exact_mut(4) {
                let v = f32::from(chunk[0] as i8) / 32.0 + f32::from(chunk[1]) / 8192.0;
                chunk.copy_from_slice(&v.to_le_bytes());
            }
        }
        if i >= 3 {
            let ty = input_types[i - 3];
            for (w, chunk) in b.chunks_exact_mut(4).enumerate() {
                let v = if ty == DType::I32 {
                    (i32::from(chunk[0] as i8) * 97).to_le_bytes()
                } else if w % 23 == 5 {
                    f32::NAN.to_le_bytes()
                } else {
                    (f32::from(chunk[0]) * 2e-4 + 1e-4).to_le_bytes()
                };
                chunk.copy_from_slice(&v);
            }
        }
        bufs.push(b);
        offs.push(off);
    }
    (bufs, offs)
}

/// The families with integer (and converting) kernels, each checked where it runs (NEON's,
/// being Cranelift IR, compiled for this machine).
const FAMILIES: [MicroIsa; 4] = [
    MicroIsa::X86Avx512Vnni,
    MicroIsa::X86Avx512,
    MicroIsa::X86Avx2,
    MicroIsa::Aarch64Neon,
];

/// Whether `isa` implements `k`: everything on AVX-512; on AVX2 (and the AVX2 integer kernels
/// of AVX-512F) byte accesses of a partial vector only as a half vector; NEON
/// integer and converting tiles with columns in fours.
fn implemented(isa: MicroIsa, k: &ContractionKernel) -> bool {
    if isa == MicroIsa::Aarch64Neon {
        return k.cols.is_multiple_of(4);
    }
    let ymm_bytes = match (&k.int8, &k.converts) {
        (Some(_), _) => isa != MicroIsa::X86Avx512Vnni,
        (None, Some((out, _))) => isa == MicroIsa::X86Avx2 && out.size_bytes() == 1,
        (None, None) => false,
    };
    !ymm_bytes || matches!(k.cols % 8, 0 | 4)
}

/// Whether this machine can run `isa`'s kernels (IR families: compiled for it, given FMA).
fn runs(isa: MicroIsa) -> bool {
    isa.runs_here() || isa.is_ir() && std::arch::is_x86_feature_detected!("fma")
}

/// The instruction at the core of `isa`'s code for `k`.
fn core_instruction(isa: MicroIsa, k: &ContractionKernel) -> &'static str {
    if k.int8.is_none() {
        "vfmadd231ps"
    } else if k.lhs.col == 1 {
        "vpmulld"
    } else if isa == MicroIsa::X86Avx512Vnni {
        "vpdpbusd"
    } else {
        "vpmaddwd"
    }
}

fn check(c: &Case) -> Result<(), TestCaseError> {
    let k = &c.kernel;
    for isa in FAMILIES {
        let code = generate(isa, k);
        if !implemented(isa, k) {
            prop_assert!(code.is_err(), "{isa:?} refuses a ragged byte tail");
            continue;
        }
        let code = code.map_err(|e| TestCaseError::fail(format!("{isa:?}: {e}")))?;
        if let Some(bytes) = code.machine_code() {
            let text = kiln_codegen::isa::microkernel::disassemble(bytes);
            prop_assert!(text.contains(core_instruction(isa, k)), "{}", text);
        }
        if runs(isa) {
            run_and_compare(isa, k, c.seed)?;
        }
    }
    Ok(())
}

fn run_and_compare(isa: MicroIsa, k: &ContractionKernel, seed: u64) -> Result<(), TestCaseError> {
    let (bufs, offs) = buffers(k, seed);
    let inputs: Vec<(&[u8], usize)> = (3..bufs.len()).map(|i| (&bufs[i][..], offs[i])).collect();
    let mut want = bufs[2].clone();
    k.reference_bytes(
        (&bufs[0], offs[0]),
        (&bufs[1], offs[1]),
        (&mut want, offs[2]),
        &inputs,
    )
    .ok_or_else(|| TestCaseError::fail("reference out of range"))?;
    let mut got = bufs[2].clone();
    run_microkernel_bytes(
        isa,
        k,
        (&bufs[0], offs[0]),
        (&bufs[1], offs[1]),
        (&mut got, offs[2]),
        &inputs,
    )
    .map_err(|e| TestCaseError::fail(e.to_string()))?;
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        return Err(TestCaseError::fail(format!(
            "{isa:?}, byte {i} (output base {}): {} vs reference {}\n{k:?}",
            offs[2], got[i], want[i]
        )));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn int8_kernels_compute_their_reference(c in case()) {
        check(&c)?;
    }

    #[test]
    fn int8_depthwise_kernels_compute_their_reference(c in depthwise_case()) {
        check(&c)?;
    }

    #[test]
    fn converting_f32_kernels_compute_their_reference(c in converting_case()) {
        check(&c)?;
    }
}

#[test]
fn int8_kernels_run_here_or_say_so() {
    for isa in FAMILIES {
        if !runs(isa) {
            println!(
                "skipped: this machine cannot run {} kernels; they were only generated",
                isa.name()
            );
        }
    }
}

/// The kernel of a 1x1 QLinearConv (16 -> 16 channels, activations held as `i8` in
/// onnxruntime's uint8 domain) whose output is dequantised again inside its group, as the
/// importer builds it: `i32(i8(rne(clamp(f32(acc + bias) * scale)) + zp))`.
#[test]
fn a_requantising_convolution_tile_matches_its_reference() {
    use Epilogue as E;
    let b = Box::new;
    let scaled = || {
        E::Binary(
            BinOp::Mul,
            b(E::Cast(
                DType::F32,
                b(E::Binary(BinOp::Add, b(E::Acc), b(E::Input(0)))),
            )),
            b(E::Input(1)),
        )
    };
    let clamp = E::Select {
        op: CmpOp::Lt,
        a: b(scaled()),
        b: b(E::Const(-104.0)),
        then: b(E::Const(-104.0)),
        otherwise: b(E::Select {
            op: CmpOp::Gt,
            a: b(scaled()),
            b: b(E::Const(151.0)),
            then: b(E::Const(151.0)),
            otherwise: b(scaled()),
        }),
    };
    let epilogue = E::Cast(
        DType::I32,
        b(E::Cast(
            DType::I8,
            b(E::Binary(
                BinOp::Add,
                b(E::Call(Intrinsic::Round, vec![clamp])),
                b(E::Input(2)),
            )),
        )),
    );
    let kernel = ContractionKernel {
        rows: 8,
        cols: 16,
        reduce: vec![4, 4],
        lhs: OperandStrides {
            row: 16,
            col: 0,
            reduce: vec![4, 1],
        },
        rhs: OperandStrides {
            row: 0,
            col: 4,
            reduce: vec![64, 1],
        },
        out_row: 64,
        inputs: vec![(0, 4), (0, 4), (0, 0)],
        epilogue,
        int8: Some(IntContraction {
            lhs: DType::I8,
            rhs: DType::I8,
            lhs_zp: -128,
            rhs_zp: 0,
            out: DType::I32,
            inputs: vec![DType::I32, DType::F32, DType::F32],
        }),
        converts: None,
    };
    for seed in 0..20 {
        check(&Case {
            kernel: kernel.clone(),
            seed,
        })
        .unwrap();
    }
}
