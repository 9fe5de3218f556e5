//! Target micro-kernels against their reference: random contraction kernels (tile shapes with
//! ragged tails, operand layouts of GEMM, depthwise and NCHW convolution, one to three
//! reduction loops, random epilogues) generated for every family, compared bit for bit with
//! `ContractionKernel::reference`. x86-64 machine code is disassembled always and executed where
//! this machine runs the family (otherwise the test says it skipped); the aarch64 NEON kernels,
//! Cranelift IR, are compiled for aarch64 always and executed compiled for this host (their
//! aarch64 code runs under qemu in the AOT tests).

use kiln_codegen::isa::microkernel::{
    disassemble, generate, ContractionKernel, MicroCode, MicroIsa, OperandStrides,
};
use kiln_codegen::isa::{target_isa, IsaSpec};
use kiln_codegen::jit::{host_has_fma, run_microkernel};
use kiln_tir::{BinOp, CmpOp, Epilogue, Intrinsic};
use proptest::prelude::*;

/// How an operand moves: along rows / along columns.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Broadcast, one value per row (GEMM lhs).
    RowBcast,
    /// A vector shared by all rows (GEMM rhs, depthwise weights).
    SharedVec,
    /// A vector per row (depthwise input).
    RowVec,
    /// One value for the whole tile (per reduction step).
    Scalar,
}

fn strides(kind: Kind, row: i64, reduce: &[i64]) -> OperandStrides {
    let (row, col) = match kind {
        Kind::RowBcast => (row, 0),
        Kind::SharedVec => (0, 4),
        Kind::RowVec => (row, 4),
        Kind::Scalar => (0, 0),
    };
    OperandStrides {
        row,
        col,
        reduce: reduce.to_vec(),
    }
}

fn epilogue(choice: u8, inputs: usize) -> Epilogue {
    use Epilogue as E;
    let b = Box::new;
    // The accumulator plus input 0 and every input past 1 (input 1 is read by choice 6): up
    // to eight inputs, more than the six the x86-64 kernels keep pointers to in registers.
    let acc_bias = || {
        (0..inputs)
            .filter(|&i| i != 1)
            .fold(E::Acc, |x, i| E::Binary(BinOp::Add, b(x), b(E::Input(i))))
    };
    let x = acc_bias();
    // A select `x op c ? c : otherwise` (clamps as the importer writes them).
    let side = |op: CmpOp, x: E, c: f32, otherwise: E| E::Select {
        op,
        a: b(x),
        b: b(E::Const(c)),
        then: b(E::Const(c)),
        otherwise: b(otherwise),
    };
    match choice % 14 {
        // A clamp written upper side first, a one-sided bound, and sides that cross (c > d:
        // no clamp, selects computed as such).
        11 => side(
            CmpOp::Gt,
            x.clone(),
            0.5,
            side(CmpOp::Lt, x.clone(), -0.0, x),
        ),
        12 => side(CmpOp::Lt, x.clone(), 0.25, x),
        13 => side(
            CmpOp::Lt,
            x.clone(),
            0.5,
            side(CmpOp::Gt, x.clone(), -0.5, x),
        ),
        // GELU, as a transformer's MLP ends: x · 0.5 · (1 + erf(x · 1/√2)).
        10 => E::Binary(
            BinOp::Mul,
            b(E::Binary(BinOp::Mul, b(x.clone()), b(E::Const(0.5)))),
            b(E::Binary(
                BinOp::Add,
                b(E::Const(1.0)),
                b(E::Call(
                    Intrinsic::Erf,
                    vec![E::Binary(BinOp::Mul, b(x), b(E::Const(0.707_106_77)))],
                )),
            )),
        ),
        // swish, as efficientnet's convolutions end.
        8 => E::Binary(
            BinOp::Mul,
            b(x.clone()),
            b(E::Call(Intrinsic::Sigmoid, vec![x])),
        ),
        9 => E::Call(
            Intrinsic::Exp,
            vec![E::Binary(BinOp::Mul, b(x), b(E::Const(12.5)))],
        ),
        0 => x,
        // relu6 as the importer writes clamp: select(x < 0, 0, select(x > 6, 6, x)).
        1 => E::Select {
            op: CmpOp::Lt,
            a: b(x.clone()),
            b: b(E::Const(0.0)),
            then: b(E::Const(0.0)),
            otherwise: b(E::Select {
                op: CmpOp::Gt,
                a: b(x.clone()),
                b: b(E::Const(6.0)),
                then: b(E::Const(6.0)),
                otherwise: b(x),
            }),
        },
        2 => E::Binary(BinOp::Max, b(x), b(E::Const(0.0))),
        3 => E::Binary(
            BinOp::Min,
            b(E::Const(1.5)),
            b(E::Binary(BinOp::Mul, b(x.clone()), b(x))),
        ),
        4 => E::Call(
            Intrinsic::Fma,
            vec![x.clone(), E::Const(0.5), E::Call(Intrinsic::Abs, vec![x])],
        ),
        5 => E::Binary(
            BinOp::Div,
            b(E::Call(Intrinsic::Floor, vec![x.clone()])),
            b(E::Call(
                Intrinsic::Sqrt,
                vec![E::Binary(
                    BinOp::Add,
                    b(E::Const(2.0)),
                    b(E::Call(Intrinsic::Abs, vec![x])),
                )],
            )),
        ),
        6 => {
            let last = if inputs > 1 {
                E::Input(1)
            } else {
                E::Const(-1.0)
            };
            E::Binary(
                BinOp::Sub,
                b(E::Call(Intrinsic::Round, vec![x.clone()])),
                b(E::Binary(
                    BinOp::Max,
                    b(last),
                    b(E::Call(Intrinsic::Ceil, vec![x])),
                )),
            )
        }
        _ => E::Select {
            op: CmpOp::Ne,
            a: b(x.clone()),
            b: b(E::Const(1.0)),
            then: b(E::Binary(BinOp::Sub, b(E::Const(3.0)), b(x))),
            otherwise: b(E::Const(7.0)),
        },
    }
}

#[derive(Clone, Debug)]
struct Case {
    kernel: ContractionKernel,
    seed: u64,
}

fn kinds() -> impl Strategy<Value = (Kind, Kind)> {
    prop_oneof![
        Just((Kind::RowBcast, Kind::SharedVec)),
        Just((Kind::SharedVec, Kind::RowBcast)),
        Just((Kind::RowVec, Kind::SharedVec)),
        Just((Kind::RowVec, Kind::RowBcast)),
        Just((Kind::RowVec, Kind::RowVec)),
        Just((Kind::Scalar, Kind::RowVec)),
        Just((Kind::SharedVec, Kind::SharedVec)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..=14,
        1usize..=48,
        prop::collection::vec(1usize..=5, 0..=2),
        1usize..=19,
        kinds(),
        0u8..14,
        prop_oneof![0usize..=2, 3usize..=8],
        any::<u64>(),
    )
        .prop_map(|(rows, cols, outer, inner, (kl, kr), ep, inputs, seed)| {
            let mut reduce = outer;
            reduce.push(inner);
            // Contiguous innermost reduction, outer loops strided past it (and one going
            // backwards, as a reversed tap order would).
            let mut sl = vec![];
            let mut sr = vec![];
            let (mut al, mut ar) = (4i64, 4 * cols as i64);
            for (i, &e) in reduce.iter().enumerate().rev() {
                let sign = if i == 0 && reduce.len() > 2 { -1 } else { 1 };
                sl.insert(0, sign * al);
                sr.insert(0, sign * ar);
                al *= e as i64 + 1;
                ar *= e as i64;
            }
            let lhs_row = al + 4 * cols as i64;
            let rhs_row = ar + 4 * cols as i64;
            let kernel = ContractionKernel {
                rows,
                cols,
                reduce,
                lhs: strides(kl, lhs_row, &sl),
                rhs: strides(kr, rhs_row, &sr),
                out_row: 4 * (cols as i64 + (seed % 5) as i64),
                inputs: (0..inputs)
                    .map(|i| match i {
                        0 => (0, 4),
                        // Scalars broadcast over the whole tile (a quantisation scale).
                        _ if i % 3 == 2 => (0, 0),
                        _ => (4 * cols as i64 + 12, 4),
                    })
                    .collect(),
                epilogue: epilogue(ep, inputs),
                int8: None,
                converts: None,
            };
            Case { kernel, seed }
        })
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            if i % 97 == 13 {
                return f32::NAN;
            }
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        })
        .collect()
}

/// Buffers for each pointer with the base placed so that every access is inside; returns the
/// buffers and each base's element offset.
fn buffers(k: &ContractionKernel, seed: u64) -> (Vec<Vec<f32>>, Vec<usize>) {
    let mut bufs = vec![];
    let mut offs = vec![];
    for (i, (lo, hi)) in k.byte_ranges().into_iter().enumerate() {
        let off = (-lo / 4) as usize;
        let len = ((hi - lo) / 4) as usize + 3;
        bufs.push(values(len, seed.wrapping_add(i as u64 * 7919)));
        offs.push(off);
    }
    (bufs, offs)
}

fn same(a: &[f32], b: &[f32]) -> Result<(), String> {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()) {
            return Err(format!("element {i}: {x} vs reference {y}"));
        }
    }
    Ok(())
}

fn check(isa: MicroIsa, c: &Case) -> Result<(), TestCaseError> {
    let k = &c.kernel;
    let code = generate(isa, k).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let fmas = k.reduce.iter().product::<usize>() != 0;
    match &code {
        MicroCode::Machine(bytes) => {
            let text = disassemble(bytes);
            prop_assert!(text.contains("vfmadd231ps") || !fmas);
            prop_assert!(text.trim_end().ends_with("ret"), "{text}");
            let reg = if matches!(isa, MicroIsa::X86Avx512 | MicroIsa::X86Avx512Vnni) {
                "zmm"
            } else {
                "ymm"
            };
            prop_assert!(text.contains(reg), "no {} register:\n{}", reg, text);
        }
        MicroCode::Ir(func) => {
            let words = aarch64_code(func).map_err(TestCaseError::fail)?;
            let vector_fmla = words
                .iter()
                .any(|w| w & 0xffe0_fc00 == 0x4e20_cc00 || w & 0xffc0_f400 == 0x4f80_1000);
            prop_assert!(vector_fmla || !fmas || k.cols < 4, "no NEON fmla");
        }
    }
    if !(isa.runs_here() || isa.is_ir() && host_has_fma().unwrap_or(false)) {
        return Ok(());
    }
    let (bufs, offs) = buffers(k, c.seed);
    let inputs: Vec<(&[f32], usize)> = (3..bufs.len()).map(|i| (&bufs[i][..], offs[i])).collect();
    let mut want = bufs[2].clone();
    k.reference(
        (&bufs[0], offs[0]),
        (&bufs[1], offs[1]),
        (&mut want, offs[2]),
        &inputs,
    )
    .ok_or_else(|| TestCaseError::fail("reference out of range"))?;
    let mut got = bufs[2].clone();
    run_microkernel(
        isa,
        k,
        (&bufs[0], offs[0]),
        (&bufs[1], offs[1]),
        (&mut got, offs[2]),
        &inputs,
    )
    .map_err(|e| TestCaseError::fail(e.to_string()))?;
    same(&got, &want).map_err(|e| TestCaseError::fail(format!("{isa:?}: {e}\n{k:?}")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn generated_kernels_compute_their_reference(c in case()) {
        for isa in MicroIsa::ALL {
            check(isa, &c)?;
        }
    }
}

/// The aarch64 machine code of an IR kernel, as 32-bit instruction words.
fn aarch64_code(func: &cranelift_codegen::ir::Function) -> Result<Vec<u32>, String> {
    let spec = IsaSpec::Triple {
        triple: "aarch64-unknown-linux-gnu".into(),
        flags: vec![],
    };
    let isa = target_isa(&spec, false, true).map_err(|e| e.to_string())?;
    let mut ctx = cranelift_codegen::Context::for_function(func.clone());
    let code = ctx
        .compile(&*isa, &mut Default::default())
        .map_err(|e| format!("{e:?}"))?;
    Ok(code
        .code_buffer()
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect())
}

#[test]
fn families_this_machine_cannot_run_are_only_encoded() {
    for isa in MicroIsa::ALL {
        if isa.is_ir() && !isa.runs_here() {
            println!(
                "notice: this machine does not run {} micro-kernels; their tests compile them for \
                 their target and run their IR compiled for this machine (the AOT tests run them \
                 under qemu)",
                isa.name()
            );
        } else if !isa.runs_here() {
            println!(
                "notice: this machine does not run {} micro-kernels; their tests only encode and \
                 disassemble them",
                isa.name()
            );
        }
    }
}

#[test]
fn a_gemm_tile_uses_embedded_broadcasts_and_masks_its_tail_on_avx512() {
    let k = ContractionKernel {
        rows: 12,
        cols: 20,
        reduce: vec![64],
        lhs: strides(Kind::RowBcast, 256, &[4]),
        rhs: strides(Kind::SharedVec, 0, &[80]),
        out_row: 80,
        inputs: vec![(0, 4)],
        epilogue: epilogue(1, 1),
        int8: None,
        converts: None,
    };
    let text = disassemble(
        generate(MicroIsa::X86Avx512, &k)
            .unwrap()
            .machine_code()
            .unwrap(),
    );
    assert!(text.contains("{1to16}"), "{text}");
    assert!(text.contains("{k1}"), "{text}");
    assert!(text.contains("vzeroupper"), "{text}");
    // No callee-saved register is touched.
    for r in ["rbx", "rbp", "r12", "r13", "r14", "r15", "rsp"] {
        assert!(!text.contains(r), "{r} used:\n{text}");
    }
    let text = disassemble(
        generate(MicroIsa::X86Avx2, &k)
            .unwrap()
            .machine_code()
            .unwrap(),
    );
    assert!(text.contains("vmaskmovps"), "{text}");
    assert!(!text.contains("zmm"), "{text}");
}

#[test]
fn out_of_range_buffers_are_refused_before_running() {
    let k = ContractionKernel {
        rows: 2,
        cols: 8,
        reduce: vec![4],
        lhs: strides(Kind::RowBcast, 16, &[4]),
        rhs: strides(Kind::SharedVec, 0, &[32]),
        out_row: 32,
        inputs: vec![],
        epilogue: Epilogue::Acc,
        int8: None,
        converts: None,
    };
    let isa = MicroIsa::X86Avx2;
    if !isa.runs_here() {
        println!("notice: skipped, this machine does not run AVX2 micro-kernels");
        return;
    }
    let (lhs, rhs) = (vec![1f32; 8], vec![1f32; 31]);
    let mut out = vec![0f32; 16];
    let e = run_microkernel(isa, &k, (&lhs, 0), (&rhs, 0), (&mut out, 0), &[]).unwrap_err();
    assert!(e.to_string().contains("pointer 1"), "{e}");
    let rhs = vec![1f32; 32];
    run_microkernel(isa, &k, (&lhs, 0), (&rhs, 0), (&mut out, 0), &[]).unwrap();
    assert_eq!(out, vec![4f32; 16]);
}
