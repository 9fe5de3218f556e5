//! Operation semantics of compiled code against the interpreter: casts (NaN, inf, saturation),
//! integer wrap-around and division flavours, float specials, comparisons, intrinsics, each in
//! scalar and in vector form; `f16` loads, stores, casts and arithmetic (bit for bit);
//! division by zero; local buffers on the stack and the heap, shared
//! and private to parallel loops.

mod common;

use common::*;
use kiln_codegen::{CodegenError, CodegenOptions, JitModule, Threads};
use kiln_ir::{DType, Tensor, TensorData, TensorType};
use kiln_tir::{interp, BinOp, BufferId, CmpOp, Expr, ForKind, Intrinsic, PrimFunc, Stmt};

const N: usize = 16;

/// `out[i] = body(a[i], b[i], ...)` over `0..N`, as a serial loop or as `N/4` chunks of a
/// vectorized loop of 4.
fn elementwise(
    ins: &[DType],
    out: DType,
    vectorized: bool,
    body: &dyn Fn(&[Expr]) -> Expr,
) -> PrimFunc {
    let mut f = PrimFunc::new("ew");
    let bufs: Vec<_> = ins
        .iter()
        .enumerate()
        .map(|(k, &d)| f.add_param(format!("in{k}"), d, vec![N]))
        .collect();
    let o = f.add_param("out", out, vec![N]);
    let (idx, wrap): (Expr, Box<dyn Fn(Stmt) -> Stmt>) = if vectorized {
        let (i0, i1) = (f.new_var("i0"), f.new_var("i1"));
        (
            Expr::int(4) * Expr::var(i0) + Expr::var(i1),
            Box::new(move |s| {
                Stmt::for_(
                    i0,
                    N / 4,
                    ForKind::Serial,
                    Stmt::for_(i1, 4, ForKind::Vectorized, s),
                )
            }),
        )
    } else {
        let i = f.new_var("i");
        (
            Expr::var(i),
            Box::new(move |s| Stmt::for_(i, N, ForKind::Serial, s)),
        )
    };
    let loads: Vec<Expr> = bufs
        .iter()
        .map(|&b| Expr::load(b, vec![idx.clone()]))
        .collect();
    f.body = wrap(Stmt::store(o, vec![idx], body(&loads)));
    f
}

fn tensor(d: DType, data: TensorData) -> Tensor {
    Tensor::from_data(TensorType::new(d, vec![N]).unwrap(), data).unwrap()
}

/// Runs `f` compiled and interpreted on `inputs` (plus a zeroed output); compares everything.
/// Returns the compiled module's stats.
fn compare(f: &PrimFunc, inputs: &[Tensor], opts: &CodegenOptions) -> kiln_codegen::CompileStats {
    let out = &f.buffers[f.params[f.params.len() - 1].index()];
    let mut want: Vec<Tensor> = inputs.to_vec();
    want.push(Tensor::zeros(
        TensorType::new(out.dtype, out.shape.clone()).unwrap(),
    ));
    let mut got = want.clone();
    interp::run(f, &mut want).unwrap();
    let jit =
        JitModule::compile(std::slice::from_ref(f), opts).unwrap_or_else(|e| panic!("{e}\n{f}"));
    jit.kernel("ew").unwrap().run(&mut got).unwrap();
    assert_close(&format!("{opts:?}\n{f}"), &got, &want, 0.0);
    jit.stats()
}

/// The option sets whose results are exact (no FMA contraction).
fn opts() -> Vec<CodegenOptions> {
    option_sets()
        .into_iter()
        .filter(|o| !o.contract_fma)
        .collect()
}

const SPECIAL_F32: [f32; N] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    0.0,
    -0.0,
    1e10,
    -1e10,
    127.5,
    -128.7,
    255.9,
    -0.5,
    3.7,
    -3.7,
    2147483648.0,
    -2147483904.0,
    65535.5,
];

#[test]
fn float_to_int_casts_truncate_saturate_and_map_nan_to_zero() {
    let x = tensor(DType::F32, TensorData::F32(SPECIAL_F32.to_vec()));
    let x64 = tensor(
        DType::F64,
        TensorData::F64(SPECIAL_F32.iter().map(|&v| v as f64).collect()),
    );
    for to in INTEGERS.into_iter().chain([DType::Bool]) {
        for vectorized in [false, true] {
            for (from, x) in [(DType::F32, &x), (DType::F64, &x64)] {
                let f = elementwise(&[from], to, vectorized, &|a| Expr::cast(to, a[0].clone()));
                for o in opts() {
                    compare(&f, std::slice::from_ref(x), &o);
                }
            }
        }
    }
    // Spot-check the semantics themselves.
    let f = elementwise(&[DType::F32], DType::I32, false, &|a| {
        Expr::cast(DType::I32, a[0].clone())
    });
    let jit = JitModule::compile(&[f], &CodegenOptions::default()).unwrap();
    let mut args = vec![
        x,
        Tensor::zeros(TensorType::new(DType::I32, vec![N]).unwrap()),
    ];
    jit.kernel("ew").unwrap().run(&mut args).unwrap();
    let got = args[1].as_slice::<i32>().unwrap();
    assert_eq!(&got[..5], &[0, i32::MAX, i32::MIN, 0, 0]);
    assert_eq!(&got[11..13], &[3, -3]);
}

#[test]
fn int_casts_wrap_and_int_to_float_rounds() {
    let mut rng = Rng(7);
    for from in INTEGERS.into_iter().chain([DType::Bool]) {
        let x = tensor(from, random_data(from, N, &mut rng));
        for to in INTEGERS.into_iter().chain([
            DType::Bool,
            DType::F32,
            DType::F64,
            DType::F16,
            DType::BF16,
        ]) {
            for vectorized in [false, true] {
                let f = elementwise(&[from], to, vectorized, &|a| Expr::cast(to, a[0].clone()));
                for o in opts() {
                    compare(&f, std::slice::from_ref(&x), &o);
                }
            }
        }
    }
}

/// Every integer dtype.
const INTEGERS: [DType; 8] = [
    DType::I8,
    DType::U8,
    DType::I16,
    DType::U16,
    DType::I32,
    DType::U32,
    DType::I64,
    DType::U64,
];

/// Integer data of dtype `d` from i64 values, wrapped to the width (u64 from the bit pattern).
fn wrap_i64(d: DType, v: Vec<i64>) -> TensorData {
    match d {
        DType::I8 => TensorData::I8(v.iter().map(|&x| x as i8).collect()),
        DType::U8 => TensorData::U8(v.iter().map(|&x| x as u8).collect()),
        DType::I16 => TensorData::I16(v.iter().map(|&x| x as i16).collect()),
        DType::U16 => TensorData::U16(v.iter().map(|&x| x as u16).collect()),
        DType::I32 => TensorData::I32(v.iter().map(|&x| x as i32).collect()),
        DType::U32 => TensorData::U32(v.iter().map(|&x| x as u32).collect()),
        DType::U64 => TensorData::U64(v.iter().map(|&x| x as u64).collect()),
        _ => TensorData::I64(v),
    }
}

/// Random values with MIN, MAX, -1, 1, 7 and -7 first (for unsigned dtypes -1 and -7 wrap to
/// the top of the range, 2^63 and beyond for u64).
fn int_edge_values(d: DType, rng: &mut Rng) -> TensorData {
    let mut v = match random_data(d, N, rng) {
        TensorData::U64(u) => u.iter().map(|&x| x as i64).collect(),
        other => other.to_i64_vec(),
    };
    let (min, max) = match d {
        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
        DType::U8 => (0, u8::MAX as i64),
        DType::I16 => (i16::MIN as i64, i16::MAX as i64),
        DType::U16 => (0, u16::MAX as i64),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        DType::U32 => (0, u32::MAX as i64),
        DType::U64 => (0, -1),
        _ => (i64::MIN, i64::MAX),
    };
    v[..6].copy_from_slice(&[min, max, -1, 1, 7, -7]);
    wrap_i64(d, v)
}

/// Divisors without zero, with -1 and 1 among them.
fn divisors(d: DType, rng: &mut Rng) -> TensorData {
    let raw = match random_data(d, N, rng) {
        TensorData::U64(u) => u.iter().map(|&x| x as i64).collect(),
        other => other.to_i64_vec(),
    };
    let v: Vec<i64> = raw
        .into_iter()
        .enumerate()
        .map(|(i, x)| match i {
            0 | 5 => -1,
            1 => 1,
            2 => 3,
            3 => -4,
            _ if x == 0 => 5,
            _ => x,
        })
        .collect();
    wrap_i64(d, v)
}

#[test]
fn integer_arithmetic_wraps_and_divisions_match() {
    let mut rng = Rng(11);
    for d in INTEGERS {
        let a = tensor(d, int_edge_values(d, &mut rng));
        let b = tensor(d, divisors(d, &mut rng));
        for op in [
            BinOp::Add,
            BinOp::Sub,
            BinOp::Mul,
            BinOp::Div,
            BinOp::Rem,
            BinOp::FloorDiv,
            BinOp::FloorMod,
            BinOp::Min,
            BinOp::Max,
        ] {
            for vectorized in [false, true] {
                let f = elementwise(&[d, d], d, vectorized, &|x| {
                    Expr::binary(op, x[0].clone(), x[1].clone())
                });
                for o in opts() {
                    compare(&f, &[a.clone(), b.clone()], &o);
                }
            }
            // Constant divisors take the shift / mask / no-check paths.
            let consts: &[i64] = if d.is_unsigned() {
                &[1, 2, 4, 3, 7, 128, 255, -1]
            } else {
                &[1, 2, 4, 8, 3, 7, -1, -4, -3]
            };
            for &c in consts {
                let f = elementwise(&[d], d, false, &|x| {
                    Expr::binary(op, x[0].clone(), Expr::int_of(c, d))
                });
                compare(&f, std::slice::from_ref(&a), &opts()[0]);
            }
        }
        // Comparisons (unsigned for u8) and abs.
        for op in [
            CmpOp::Eq,
            CmpOp::Ne,
            CmpOp::Lt,
            CmpOp::Le,
            CmpOp::Gt,
            CmpOp::Ge,
        ] {
            let f = elementwise(&[d, d], DType::Bool, false, &|x| {
                Expr::cmp(op, x[0].clone(), x[1].clone())
            });
            compare(&f, &[a.clone(), b.clone()], &opts()[0]);
        }
        for vectorized in [false, true] {
            let f = elementwise(&[d], d, vectorized, &|x| {
                Expr::call(Intrinsic::Abs, vec![x[0].clone()])
            });
            for o in opts() {
                compare(&f, std::slice::from_ref(&a), &o);
            }
        }
    }
}

#[test]
fn i32_vector_ops_are_vectorized() {
    let mut rng = Rng(3);
    let a = tensor(DType::I32, random_data(DType::I32, N, &mut rng));
    let b = tensor(DType::I32, random_data(DType::I32, N, &mut rng));
    let f = elementwise(&[DType::I32, DType::I32], DType::I32, true, &|x| {
        Expr::max(
            x[0].clone() * x[1].clone() - x[0].clone(),
            Expr::int_of(-5, DType::I32),
        )
    });
    let stats = compare(&f, &[a, b], &opts()[0]);
    assert_eq!(stats.vector_loops, 1);
}

#[test]
fn eight_bit_lanes_are_vectorized() {
    // Dequantize (`i8` widened, converted), quantize (`f32` converted, saturated into `u8`),
    // requantize between the 8-bit types: each a vector loop, each exact.
    let mut rng = Rng(5);
    let q = tensor(DType::I8, random_data(DType::I8, N, &mut rng));
    let f = elementwise(&[DType::I8], DType::F32, true, &|x| {
        Expr::cast(
            DType::F32,
            Expr::cast(DType::I32, x[0].clone()) - Expr::int_of(-3, DType::I32),
        ) * Expr::f32(0.25)
    });
    assert_eq!(
        compare(&f, std::slice::from_ref(&q), &opts()[0]).vector_loops,
        1
    );
    let x = tensor(DType::F32, TensorData::F32(SPECIAL_F32.to_vec()));
    let f = elementwise(&[DType::F32], DType::U8, true, &|x| {
        Expr::cast(DType::U8, x[0].clone() + Expr::f32(128.0))
    });
    assert_eq!(
        compare(&f, std::slice::from_ref(&x), &opts()[0]).vector_loops,
        1
    );
    let f = elementwise(&[DType::I8], DType::U8, true, &|x| {
        Expr::cast(DType::U8, x[0].clone())
    });
    assert_eq!(
        compare(&f, std::slice::from_ref(&q), &opts()[0]).vector_loops,
        1
    );
}

/// `out[i] = i < split ? a[i] : b[i - split]` over `0..N` in vectorized chunks of 4 (a
/// concat): each operand is read only inside its range.
fn concat_func(split: usize) -> PrimFunc {
    let mut f = PrimFunc::new("ew");
    let a = f.add_param("a", DType::F32, vec![split]);
    let b = f.add_param("b", DType::F32, vec![N - split]);
    let o = f.add_param("out", DType::F32, vec![N]);
    let (i0, i1) = (f.new_var("i0"), f.new_var("i1"));
    let i = Expr::int(4) * Expr::var(i0) + Expr::var(i1);
    let value = Expr::select(
        Expr::cmp(CmpOp::Lt, i.clone(), Expr::int(split as i64)),
        Expr::load(a, vec![i.clone()]),
        Expr::load(b, vec![i.clone() - Expr::int(split as i64)]),
    );
    f.body = Stmt::for_(
        i0,
        N / 4,
        ForKind::Serial,
        Stmt::for_(i1, 4, ForKind::Vectorized, Stmt::store(o, vec![i], value)),
    );
    f
}

/// `out[r, i] = sqrt(|x[r, i] - m[r]|)` (or, with `split`, a concat of `a[r, i]` and
/// `b[r, i - split]`) with the `i` loop of `extent` vectorized whole.
fn ragged_func(extent: usize, split: Option<usize>) -> PrimFunc {
    const ROWS: usize = 3;
    let mut f = PrimFunc::new("ew");
    let (r, i) = (f.new_var("r"), f.new_var("i"));
    let ri = || vec![Expr::var(r), Expr::var(i)];
    let value = match split {
        None => {
            let x = f.add_param("x", DType::F32, vec![ROWS, extent]);
            let m = f.add_param("m", DType::F32, vec![ROWS]);
            let d = Expr::load(x, ri()) - Expr::load(m, vec![Expr::var(r)]);
            Expr::call(Intrinsic::Sqrt, vec![Expr::call(Intrinsic::Abs, vec![d])])
        }
        Some(split) => {
            let a = f.add_param("a", DType::F32, vec![ROWS, split]);
            let b = f.add_param("b", DType::F32, vec![ROWS, extent - split]);
            let k = Expr::int(split as i64);
            Expr::select(
                Expr::cmp(CmpOp::Lt, Expr::var(i), k.clone()),
                Expr::load(a, ri()),
                Expr::load(b, vec![Expr::var(r), Expr::var(i) - k]),
            )
        }
    };
    let o = f.add_param("out", DType::F32, vec![ROWS, extent]);
    f.body = Stmt::for_(
        r,
        ROWS,
        ForKind::Serial,
        Stmt::for_(i, extent, ForKind::Vectorized, Stmt::store(o, ri(), value)),
    );
    f
}

#[test]
fn vectorized_loops_of_any_extent_run_chunks_and_a_scalar_tail() {
    let mut rng = Rng(11);
    let mut t = |shape: Vec<usize>| {
        let n = shape.iter().product();
        Tensor::from_data(
            TensorType::new(DType::F32, shape).unwrap(),
            random_data(DType::F32, n, &mut rng),
        )
        .unwrap()
    };
    // Unrolled chunks with a tail (5, 7), a loop over chunks with (197) and without (24) one;
    // Cranelift's vector code (a host with pointwise micro-kernels calls one for 197, see
    // tests/pointwise.rs).
    for extent in [5, 7, 24, 197] {
        let f = ragged_func(extent, None);
        for o in opts() {
            let o = CodegenOptions {
                microkernels: false,
                ..o
            };
            let stats = compare(&f, &[t(vec![3, extent]), t(vec![3])], &o);
            if o.vectorize {
                assert_eq!(stats.vector_loops, 1, "extent {extent}");
            }
        }
    }
    // A concat split at a multiple of 4 inside a loop over chunks: each chunk reads one side,
    // the tail reads the second operand.
    let f = ragged_func(23, Some(8));
    let stats = compare(&f, &[t(vec![3, 8]), t(vec![3, 15])], &opts()[0]);
    assert_eq!(stats.vector_loops, 1);
}

#[test]
fn eight_bit_moves_run_sixteen_byte_lanes() {
    // The padded input copy of an int8 convolution: a border test on the outer loops between a
    // load and the zero point, channels vectorized. Extents of one vector (16), of a loop over
    // vectors with a scalar tail (90 = 5 x 16 + 10), and too short for byte lanes (12).
    for (c, byte_loops) in [(16, 1), (90, 1), (12, 0)] {
        let text = format!(
            "func @ew(%x: i8[3,{c}] param, %out: i8[5,{c}] param) {{ \
            for h in 0..5 {{ for.vectorized i in 0..{c} {{ \
            %out[h, i] = select(h - 1 >= 0 && h - 1 < 3, %x[h - 1, i], -128_i8) }} }} }}"
        );
        let f = kiln_tir::parse_func(&text).unwrap();
        let data: Vec<i8> = (0..3 * c).map(|i| (i * 37 % 256) as u8 as i8).collect();
        let x = Tensor::new(vec![3, c], data).unwrap();
        for o in opts() {
            let stats = compare(&f, std::slice::from_ref(&x), &o);
            if o.vectorize {
                assert_eq!(stats.byte_vector_loops, byte_loops, "{c} channels");
            }
        }
    }
}

#[test]
fn max_and_min_reductions_run_four_partial_lanes_exactly() {
    // A softmax's row maximum (and a minimum), rows of 37 = 9 chunks of 4 and one tail, over
    // values with NaN, signed zeros and infinities in some rows: the grouping of lanes must
    // not change a bit of the result.
    for op in ["max", "min"] {
        let text = format!(
            "func @ew(%x: f32[4,37] param, %out: f32[4] param) {{ \
            for i in 0..4 {{ %out[i] = -inf_f32 \
            for r in 0..37 {{ %out[i] = {op}(%out[i], %x[i, r]) }} }} }}"
        );
        let f = kiln_tir::parse_func(&text).unwrap();
        let mut rng = Rng(17);
        let mut v: Vec<f32> = (0..4 * 37)
            .map(|_| {
                let TensorData::F32(x) = random_data(DType::F32, 1, &mut rng) else {
                    unreachable!()
                };
                x[0]
            })
            .collect();
        v[37 + 5] = f32::NAN;
        v[2 * 37 + 3] = -0.0;
        v[2 * 37 + 30] = 0.0;
        v[3 * 37 + 36] = f32::INFINITY;
        v[3 * 37] = f32::NEG_INFINITY;
        let x = Tensor::new(vec![4, 37], v).unwrap();
        for o in opts() {
            let stats = compare(&f, std::slice::from_ref(&x), &o);
            if o.vectorize {
                assert_eq!(stats.vector_loops, 1, "{op}");
            }
        }
    }
}

#[test]
fn serial_reductions_keep_their_element_in_a_register_exactly() {
    // A softmax's denominator (a sum), an i32 sum of products and a running update reading
    // the element twice keep `out[i]` in a variable (bit for bit the loop's order); a body
    // reading `out` at another index, and a store whose index moves with the loop, do not.
    let cases = [
        (DType::F32, "%out[i] = %out[i] + %x[i, r]", 1),
        (
            DType::F32,
            "%out[i] = %out[i] * 0.5_f32 + %x[i, r] * %out[i]",
            1,
        ),
        (DType::I32, "%out[i] = %out[i] + %x[i, r] * %x[i, r]", 1),
        (DType::F32, "%out[i] = %out[i] + %out[3 - i] * %x[i, r]", 0),
        (
            DType::F32,
            "%out[(i + r) % 4] = %out[(i + r) % 4] + %x[i, r]",
            0,
        ),
    ];
    for (ty, update, carried) in cases {
        let init = if ty == DType::F32 { "1.0_f32" } else { "1_i32" };
        let text = format!(
            "func @ew(%x: {ty}[4,37] param, %out: {ty}[4] param) {{ \
            for i in 0..4 {{ %out[i] = {init} \
            for r in 0..37 {{ {update} }} }} }}"
        );
        let f = kiln_tir::parse_func(&text).unwrap();
        let mut rng = Rng(23);
        let x = Tensor::from_data(
            TensorType::new(ty, vec![4, 37]).unwrap(),
            random_data(ty, 4 * 37, &mut rng),
        )
        .unwrap();
        for o in opts() {
            let stats = compare(&f, std::slice::from_ref(&x), &o);
            assert_eq!(stats.carried_reductions, carried, "{update}");
        }
    }
}

#[test]
fn neighbouring_serial_reductions_run_interleaved_exactly() {
    // Row sums (a softmax's denominators, a layer norm's means: extent-1 loops around them)
    // run eight rows at a time, the rows left over as written, each row's operations in its
    // order; a store that does not move with the rows, or a body reading another row's
    // element, stay one row at a time.
    let cases = [
        (
            DType::F32,
            197,
            "%out[0, i, u] = %out[0, i, u] + %x[i, r]",
            1,
        ),
        (
            DType::F32,
            20,
            "%out[0, i, u] = %out[0, i, u] + %x[i, r]",
            1,
        ),
        (
            DType::I32,
            24,
            "%out[0, i, u] = %out[0, i, u] + %x[i, r] * %x[i, r]",
            1,
        ),
        (
            DType::F32,
            12,
            "%out[0, i, u] = %out[0, i, u] + %x[i, r]",
            0,
        ),
        (
            DType::F32,
            20,
            "%out[0, 0, u] = %out[0, 0, u] + %x[i, r]",
            0,
        ),
        (
            DType::F32,
            20,
            "%out[0, i, u] = %out[0, i, u] + %out[0, 19 - i, u] * %x[i, r]",
            0,
        ),
    ];
    for (ty, rows, update, jammed) in cases {
        let init = if ty == DType::F32 {
            "-0.5_f32"
        } else {
            "1_i32"
        };
        let text = format!(
            "func @ew(%x: {ty}[{rows},37] param, %out: {ty}[1,{rows},1] param) {{ \
            for i in 0..{rows} {{ for u in 0..1 {{ %out[0, i, u] = {init} \
            for r in 0..37 {{ {update} }} }} }} }}"
        );
        let f = kiln_tir::parse_func(&text).unwrap();
        let mut rng = Rng(29);
        let x = Tensor::from_data(
            TensorType::new(ty, vec![rows, 37]).unwrap(),
            random_data(ty, rows * 37, &mut rng),
        )
        .unwrap();
        for o in opts() {
            let stats = compare(&f, std::slice::from_ref(&x), &o);
            assert_eq!(stats.jammed_reductions, jammed, "{rows} rows: {update}");
        }
    }
}

#[test]
fn selects_on_an_unrolled_variable_take_one_arm() {
    // A concat along an unrolled axis (the im2col of a convolution): row 0 reads `a`, rows 1
    // and 2 read `b` at `r - 1`, which would be out of bounds for row 0.
    let text = "func @ew(%a: f32[1,8] param, %b: f32[2,8] param, %out: f32[3,8] param) { \
        for.unrolled r in 0..3 { for.vectorized i in 0..8 { \
        %out[r, i] = select(r < 1, %a[r, i], %b[r - 1, i]) } } }";
    let f = kiln_tir::parse_func(text).unwrap();
    let t = |n: usize, base: f32| {
        let v: Vec<f32> = (0..n * 8).map(|i| base + i as f32).collect();
        Tensor::new(vec![n, 8], v).unwrap()
    };
    for o in opts() {
        compare(&f, &[t(1, 100.0), t(2, -50.0)], &o);
    }
}

#[test]
fn a_select_uniform_over_each_chunk_branches_per_chunk_and_others_stay_scalar() {
    // At 8 every chunk of 4 lies on one side: vector code, each chunk reading one operand. At
    // 6 a chunk straddles the split and each lane would read out of bounds in the other
    // operand: scalar code.
    for (split, vectorized) in [(8, 1), (12, 1), (6, 0)] {
        let f = concat_func(split);
        let t = |n: usize, base: f32| {
            let v: Vec<f32> = (0..n).map(|i| base + i as f32).collect();
            Tensor::new(vec![n], v).unwrap()
        };
        let stats = compare(&f, &[t(split, 100.0), t(N - split, -50.0)], &opts()[0]);
        assert_eq!(stats.vector_loops, vectorized, "split at {split}");
    }
}

#[test]
fn integer_division_by_zero_is_an_error() {
    let a = tensor(DType::I32, TensorData::I32((0..N as i32).collect()));
    let mut bv: Vec<i32> = vec![1; N];
    bv[9] = 0;
    let b = tensor(DType::I32, TensorData::I32(bv));
    for op in [BinOp::Div, BinOp::Rem, BinOp::FloorDiv, BinOp::FloorMod] {
        let f = elementwise(&[DType::I32, DType::I32], DType::I32, false, &|x| {
            Expr::binary(op, x[0].clone(), x[1].clone())
        });
        let mut args = vec![
            a.clone(),
            b.clone(),
            Tensor::zeros(TensorType::new(DType::I32, vec![N]).unwrap()),
        ];
        assert!(interp::run(&f, &mut args.clone()).is_err());
        let jit = JitModule::compile(&[f], &CodegenOptions::default()).unwrap();
        let err = jit.kernel("ew").unwrap().run(&mut args).unwrap_err();
        assert!(matches!(err, CodegenError::DivisionByZero { .. }), "{err}");
    }
}

#[test]
fn float_arithmetic_specials_and_comparisons() {
    let a = tensor(DType::F32, TensorData::F32(SPECIAL_F32.to_vec()));
    let mut b: Vec<f32> = SPECIAL_F32.to_vec();
    b.rotate_left(3);
    let b = tensor(DType::F32, TensorData::F32(b));
    for op in [
        BinOp::Add,
        BinOp::Sub,
        BinOp::Mul,
        BinOp::Div,
        BinOp::Rem,
        BinOp::Min,
        BinOp::Max,
    ] {
        for vectorized in [false, true] {
            let f = elementwise(&[DType::F32, DType::F32], DType::F32, vectorized, &|x| {
                Expr::binary(op, x[0].clone(), x[1].clone())
            });
            for o in opts() {
                compare(&f, &[a.clone(), b.clone()], &o);
            }
        }
    }
    for op in [
        CmpOp::Eq,
        CmpOp::Ne,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
    ] {
        let f = elementwise(&[DType::F32, DType::F32], DType::Bool, false, &|x| {
            Expr::cmp(op, x[0].clone(), x[1].clone())
        });
        compare(&f, &[a.clone(), b.clone()], &opts()[0]);
        // A comparison as the condition of a select.
        let f = elementwise(&[DType::F32, DType::F32], DType::F32, false, &|x| {
            Expr::select(
                Expr::and(
                    Expr::cmp(op, x[0].clone(), x[1].clone()),
                    Expr::not(Expr::cmp(CmpOp::Eq, x[0].clone(), Expr::f32(3.7))),
                ),
                x[0].clone(),
                Expr::f32(-1.0),
            )
        });
        compare(&f, &[a.clone(), b.clone()], &opts()[0]);
    }
}

#[test]
fn intrinsics_match_the_interpreter_bit_for_bit() {
    let mut rng = Rng(5);
    let mut xs: Vec<f32> = SPECIAL_F32.to_vec();
    let wide: Vec<f32> = (0..N).map(|_| 4.0 * rng.unit()).collect();
    let x_special = tensor(DType::F32, TensorData::F32(xs.clone()));
    xs.copy_from_slice(&wide);
    let x_wide = tensor(DType::F32, TensorData::F32(xs));
    let y = tensor(
        DType::F32,
        TensorData::F32((0..N).map(|_| 2.0 * rng.unit()).collect()),
    );
    let z = tensor(
        DType::F32,
        TensorData::F32((0..N).map(|_| rng.unit()).collect()),
    );
    for f in Intrinsic::ALL {
        for x in [&x_special, &x_wide] {
            for vectorized in [false, true] {
                let func = elementwise(&[DType::F32; 3], DType::F32, vectorized, &|a| {
                    Expr::call(f, a[..f.arity()].to_vec())
                });
                for o in opts() {
                    // With fma, exp, sigmoid and erf are kiln_tir::math's approximations (checked bit
                    // for bit against it in tests/tensorized.rs, and within its ulp bounds of
                    // the exact values in kiln_tir's own tests).
                    let approx = matches!(f, Intrinsic::Exp | Intrinsic::Sigmoid | Intrinsic::Erf)
                        && o.use_fma;
                    if approx {
                        continue;
                    }
                    let stats = compare(&func, &[x.clone(), y.clone(), z.clone()], &o);
                    if vectorized && o.vectorize {
                        assert_eq!(stats.vector_loops, 1, "{}", f.name());
                    }
                }
            }
        }
        // The same in f64: IEEE instructions and the f64 math hooks (scalar code).
        let widen = |t: &Tensor| {
            tensor(
                DType::F64,
                TensorData::F64(
                    t.as_slice::<f32>()
                        .unwrap()
                        .iter()
                        .map(|&v| f64::from(v))
                        .collect(),
                ),
            )
        };
        let (y64, z64) = (widen(&y), widen(&z));
        for x in [&x_special, &x_wide] {
            let func = elementwise(&[DType::F64; 3], DType::F64, true, &|a| {
                Expr::call(f, a[..f.arity()].to_vec())
            });
            for o in opts() {
                let stats = compare(&func, &[widen(x), y64.clone(), z64.clone()], &o);
                assert_eq!(stats.vector_loops, 0, "f64 loops are scalar");
            }
        }
    }
}

/// The bits of every float of `t` (`f16` and `f32`), NaNs canonicalised when `any_nan` (the
/// payload of a NaN made by arithmetic is the hardware's choice); other data as it is.
fn float_bits(t: &Tensor, any_nan: bool) -> Result<Vec<u32>, TensorData> {
    let canon = |nan: bool, bits: u32| if nan && any_nan { u32::MAX } else { bits };
    match t.data() {
        TensorData::F16(v) => Ok(v
            .iter()
            .map(|x| canon(x.is_nan(), x.to_bits() as u32))
            .collect()),
        TensorData::BF16(v) => Ok(v
            .iter()
            .map(|x| canon(x.is_nan(), x.to_bits() as u32))
            .collect()),
        TensorData::F32(v) => Ok(v.iter().map(|x| canon(x.is_nan(), x.to_bits())).collect()),
        d => Err(d.clone()),
    }
}

/// Like [`compare`], but floats bit for bit (NaN payloads too, unless `any_nan`) under every
/// exact option set; returns the stats of each.
fn compare_bits(f: &PrimFunc, inputs: &[Tensor], any_nan: bool) -> Vec<kiln_codegen::CompileStats> {
    let out = &f.buffers[f.params[f.params.len() - 1].index()];
    let mut want: Vec<Tensor> = inputs.to_vec();
    want.push(Tensor::zeros(
        TensorType::new(out.dtype, out.shape.clone()).unwrap(),
    ));
    interp::run(f, &mut want).unwrap();
    let mut stats = vec![];
    for o in opts() {
        let mut got: Vec<Tensor> = inputs.to_vec();
        got.push(Tensor::zeros(
            TensorType::new(out.dtype, out.shape.clone()).unwrap(),
        ));
        let jit =
            JitModule::compile(std::slice::from_ref(f), &o).unwrap_or_else(|e| panic!("{e}\n{f}"));
        jit.kernel("ew").unwrap().run(&mut got).unwrap();
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                float_bits(g, any_nan),
                float_bits(w, any_nan),
                "{o:?}\n{f}\nparam {k}: got {g:?}, want {w:?}"
            );
        }
        stats.push(jit.stats());
    }
    stats
}

/// `f16` specials: NaNs (quiet, with a payload, negative), infinities, zeros, the extreme
/// normals and subnormals, and ordinary values.
fn special_f16() -> Tensor {
    let bits: [u16; N] = [
        0x7e00, 0x7d01, 0xfe00, 0x7c00, 0xfc00, 0x0000, 0x8000, 0x7bff, 0xfbff, 0x0001, 0x83ff,
        0x0400, 0x3c00, 0xc100, 0x2e66, 0x5640,
    ];
    tensor(
        DType::F16,
        TensorData::F16(bits.iter().map(|&b| half::f16::from_bits(b)).collect()),
    )
}

/// `f32` values that round to `f16` in every way: ties to even (up and down), to the largest
/// normal and past it to infinity, into the subnormals and to zero, NaN with a payload.
fn rounding_f32() -> Tensor {
    let v: [f32; N] = [
        f32::from_bits(0x7fc0_1234),
        f32::NEG_INFINITY,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        -(1.0 + 3.0 / 2048.0 + 1e-7),
        65519.0,
        65520.0,
        -1e9,
        2f32.powi(-25),
        2f32.powi(-25) * 1.0001,
        1.5 * 2f32.powi(-24),
        -2.5 * 2f32.powi(-24),
        6.1e-5,
        0.1,
        -0.0,
        2.71,
    ];
    tensor(DType::F32, TensorData::F32(v.to_vec()))
}

#[test]
fn f16_loads_stores_and_casts_round_like_the_interpreter() {
    let h = special_f16();
    let x = rounding_f32();
    for vectorized in [false, true] {
        // f16 -> f16 (load, store), f16 -> f32, f32 -> f16, f16 -> f16 through a cast.
        let copy = elementwise(&[DType::F16], DType::F16, vectorized, &|a| a[0].clone());
        for st in compare_bits(&copy, std::slice::from_ref(&h), false) {
            assert_eq!(st.vector_loops, 0, "f16 loops fall back to scalar code");
        }
        let widen = elementwise(&[DType::F16], DType::F32, vectorized, &|a| {
            Expr::cast(DType::F32, a[0].clone())
        });
        compare_bits(&widen, std::slice::from_ref(&h), false);
        let narrow = elementwise(&[DType::F32], DType::F16, vectorized, &|a| {
            Expr::cast(DType::F16, a[0].clone())
        });
        compare_bits(&narrow, std::slice::from_ref(&x), false);
        // The cast rounds at once: later f32 arithmetic sees the rounded value.
        let err = elementwise(&[DType::F32], DType::F32, vectorized, &|a| {
            Expr::cast(DType::F32, Expr::cast(DType::F16, a[0].clone())) - a[0].clone()
        });
        compare_bits(&err, std::slice::from_ref(&x), true);
        let twice = elementwise(&[DType::F16], DType::F32, vectorized, &|a| {
            Expr::cast(
                DType::F32,
                Expr::cast(
                    DType::F16,
                    a[0].clone() * Expr::float(1.0009765625, DType::F16),
                ),
            )
        });
        compare_bits(&twice, std::slice::from_ref(&h), true);
        // f16 to every integer dtype and bool (truncating, saturating, NaN to 0).
        for to in [
            DType::I8,
            DType::U8,
            DType::I16,
            DType::I32,
            DType::I64,
            DType::Bool,
        ] {
            let f = elementwise(&[DType::F16], to, vectorized, &|a| {
                Expr::cast(to, a[0].clone())
            });
            compare_bits(&f, std::slice::from_ref(&h), false);
        }
    }
}

/// `bf16` rounds like `f16` does (ties to even, NaN kept quiet) through its own loads, stores
/// and casts; arithmetic is f32 arithmetic rounded on store.
#[test]
fn bf16_loads_stores_casts_and_arithmetic_round_like_the_interpreter() {
    let x = rounding_f32();
    // bf16 ties: 1 + 2^-8 (to even, down), 1 + 3 * 2^-8 (up), and what rounding_f32 has.
    let ties = tensor(
        DType::F32,
        TensorData::F32(
            [
                1.0 + 1.0 / 256.0,
                1.0 + 3.0 / 256.0,
                -(1.0 + 1.0 / 256.0),
                3.0e38,
                -3.4e38,
            ]
            .into_iter()
            .chain(std::iter::repeat_n(0.5, N - 5))
            .collect(),
        ),
    );
    for vectorized in [false, true] {
        let narrow = elementwise(&[DType::F32], DType::BF16, vectorized, &|a| {
            Expr::cast(DType::BF16, a[0].clone())
        });
        compare_bits(&narrow, std::slice::from_ref(&x), false);
        compare_bits(&narrow, std::slice::from_ref(&ties), false);
        let h = tensor(
            DType::BF16,
            TensorData::BF16(
                x.as_slice::<f32>()
                    .unwrap()
                    .iter()
                    .map(|&v| half::bf16::from_f32(v))
                    .collect(),
            ),
        );
        let copy = elementwise(&[DType::BF16], DType::BF16, vectorized, &|a| a[0].clone());
        compare_bits(&copy, std::slice::from_ref(&h), false);
        let widen = elementwise(&[DType::BF16], DType::F32, vectorized, &|a| {
            Expr::cast(DType::F32, a[0].clone())
        });
        compare_bits(&widen, std::slice::from_ref(&h), false);
        let sum = elementwise(&[DType::BF16, DType::BF16], DType::BF16, vectorized, &|a| {
            a[0].clone() * Expr::float(1.00390625, DType::BF16) + a[1].clone()
        });
        compare_bits(&sum, &[h.clone(), h.clone()], true);
    }
}

#[test]
fn integers_and_bools_cast_to_f16_round_once() {
    let mut rng = Rng(11);
    for from in [
        DType::I8,
        DType::U8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::Bool,
    ] {
        let mut x = random_data(from, N, &mut rng);
        // Values that round (ties to even), overflow to infinity, or sit at the edge.
        let edges: [i64; 8] = [2049, 2051, -4097, 65504, 65519, 65520, -70000, i64::MIN];
        match &mut x {
            TensorData::I32(v) => v
                .iter_mut()
                .zip(edges)
                .for_each(|(s, e)| *s = e.clamp(i32::MIN as i64, i32::MAX as i64) as i32),
            TensorData::I64(v) => v.iter_mut().zip(edges).for_each(|(s, e)| *s = e),
            TensorData::I16(v) => v
                .iter_mut()
                .zip([2049, 2051, -4097])
                .for_each(|(s, e)| *s = e),
            _ => {}
        }
        let x = tensor(from, x);
        for vectorized in [false, true] {
            let f = elementwise(&[from], DType::F16, vectorized, &|a| {
                Expr::cast(DType::F16, a[0].clone())
            });
            compare_bits(&f, std::slice::from_ref(&x), false);
            let f = elementwise(&[from], DType::F32, vectorized, &|a| {
                Expr::cast(DType::F32, Expr::cast(DType::F16, a[0].clone()))
            });
            compare_bits(&f, std::slice::from_ref(&x), false);
        }
    }
}

#[test]
fn f16_arithmetic_is_f32_arithmetic_rounded_on_store() {
    let a = special_f16();
    let mut b = a.clone();
    if let TensorData::F16(v) = b.data() {
        let mut v = v.clone();
        v.rotate_left(5);
        b = tensor(DType::F16, TensorData::F16(v));
    }
    let ab = [a.clone(), b.clone()];
    for vectorized in [false, true] {
        for op in [
            BinOp::Add,
            BinOp::Sub,
            BinOp::Mul,
            BinOp::Div,
            BinOp::Rem,
            BinOp::Min,
            BinOp::Max,
        ] {
            let f = elementwise(&[DType::F16, DType::F16], DType::F16, vectorized, &|x| {
                Expr::binary(op, x[0].clone(), x[1].clone())
            });
            compare_bits(&f, &ab, true);
        }
        // The intermediate product is not rounded to f16: only the store rounds.
        let f = elementwise(&[DType::F16, DType::F16], DType::F32, vectorized, &|x| {
            Expr::cast(
                DType::F32,
                x[0].clone() * x[1].clone() + Expr::float(0.1, DType::F16),
            )
        });
        compare_bits(&f, &ab, true);
        let f = elementwise(&[DType::F16, DType::F16], DType::F16, vectorized, &|x| {
            x[0].clone() * x[0].clone() * x[1].clone() - Expr::float(1.0 / 3.0, DType::F16)
        });
        compare_bits(&f, &ab, true);
        for intrinsic in [
            Intrinsic::Sqrt,
            Intrinsic::Exp,
            Intrinsic::Abs,
            Intrinsic::Floor,
            Intrinsic::Round,
            Intrinsic::Tanh,
        ] {
            let f = elementwise(&[DType::F16], DType::F16, vectorized, &|x| {
                Expr::call(intrinsic, vec![x[0].clone()])
            });
            compare_bits(&f, std::slice::from_ref(&a), true);
        }
        for op in [CmpOp::Eq, CmpOp::Lt, CmpOp::Ge] {
            let f = elementwise(&[DType::F16, DType::F16], DType::F16, vectorized, &|x| {
                Expr::select(
                    Expr::cmp(op, x[0].clone(), x[1].clone()),
                    x[0].clone(),
                    Expr::float(-2.0, DType::F16),
                )
            });
            compare_bits(&f, &ab, false);
        }
        // f16 mixed into f32 code: a per-lane f16 load falls back to scalar code, a uniform one
        // (broadcast) stays vector code.
        let f = elementwise(&[DType::F32, DType::F16], DType::F32, vectorized, &|x| {
            x[0].clone() * Expr::cast(DType::F32, x[1].clone())
        });
        compare_bits(&f, &[x_f32(), b.clone()], true);
        let f = elementwise(&[DType::F32, DType::F16], DType::F32, vectorized, &|x| {
            let uniform = Expr::load(BufferId(1), vec![Expr::int(14)]);
            x[0].clone() * Expr::cast(DType::F32, uniform * Expr::float(1.5, DType::F16))
        });
        let stats = compare_bits(&f, &[x_f32(), b.clone()], true);
        for (st, o) in stats.iter().zip(opts()) {
            let vector = usize::from(vectorized && o.vectorize);
            assert_eq!(st.vector_loops, vector, "{o:?}");
        }
    }
}

fn x_f32() -> Tensor {
    tensor(DType::F32, TensorData::F32(SPECIAL_F32.to_vec()))
}

#[test]
fn f16_local_buffers_round_on_store_in_memory_and_in_registers() {
    // for i { t[j] = a[i, j] * 1.001 (j unrolled: t promoted); m[10k] = a[i, k] * 3 (k serial:
    //         m in memory); out[i, l] = cast<f32>(m[10l]) + cast<f32>(t[l]) (l unrolled) }
    let mut f = PrimFunc::new("ew");
    let a = f.add_param("a", DType::F16, vec![4, 4]);
    let out = f.add_param("out", DType::F32, vec![4, 4]);
    let t = f.add_local("t", DType::F16, vec![4]);
    let m = f.add_local("m", DType::F16, vec![40]);
    let (i, j, k, l) = (
        f.new_var("i"),
        f.new_var("j"),
        f.new_var("k"),
        f.new_var("l"),
    );
    let (vi, vj, vk, vl) = (Expr::var(i), Expr::var(j), Expr::var(k), Expr::var(l));
    f.body = Stmt::for_(
        i,
        4,
        ForKind::Serial,
        Stmt::seq(vec![
            Stmt::for_(
                j,
                4,
                ForKind::Unrolled,
                Stmt::store(
                    t,
                    vec![vj.clone()],
                    Expr::load(a, vec![vi.clone(), vj]) * Expr::float(1.001, DType::F16),
                ),
            ),
            Stmt::for_(
                k,
                4,
                ForKind::Serial,
                Stmt::store(
                    m,
                    vec![Expr::int(10) * vk.clone()],
                    Expr::load(a, vec![vi.clone(), vk]) * Expr::float(3.0, DType::F16),
                ),
            ),
            Stmt::for_(
                l,
                4,
                ForKind::Unrolled,
                Stmt::store(
                    out,
                    vec![vi, vl.clone()],
                    Expr::cast(DType::F32, Expr::load(m, vec![Expr::int(10) * vl.clone()]))
                        + Expr::cast(DType::F32, Expr::load(t, vec![vl])),
                ),
            ),
        ]),
    );
    kiln_tir::verify(&f).unwrap();
    let mut rng = Rng(5);
    let promoted = |st: &kiln_codegen::CompileStats| st.promoted_buffers;
    let x = Tensor::from_data(
        TensorType::new(DType::F16, vec![4, 4]).unwrap(),
        TensorData::F16(
            (0..16)
                .map(|_| half::f16::from_f32(rng.unit() * 30000.0))
                .collect(),
        ),
    )
    .unwrap();
    let stats = compare_bits(&f, &[x], true);
    assert!(stats.iter().any(|st| promoted(st) > 0), "{stats:?}");
}

#[test]
fn unverified_functions_are_rejected_not_compiled() {
    let mut f = PrimFunc::new("bad");
    let x = f.add_param("x", DType::F32, vec![4]);
    let i = f.new_var("i");
    f.body = Stmt::for_(
        i,
        5,
        ForKind::Serial,
        Stmt::store(x, vec![Expr::var(i)], Expr::f32(1.0)),
    );
    let err = JitModule::compile(&[f], &CodegenOptions::default()).unwrap_err();
    assert!(matches!(err, CodegenError::Verify { .. }), "{err}");
}

#[test]
fn bad_arguments_are_rejected_before_calling() {
    let f = elementwise(&[DType::F32], DType::F32, false, &|a| a[0].clone());
    let jit = JitModule::compile(&[f], &CodegenOptions::default()).unwrap();
    let k = jit.kernel("ew").unwrap();
    let ok = Tensor::zeros(TensorType::new(DType::F32, vec![N]).unwrap());
    let short = Tensor::zeros(TensorType::new(DType::F32, vec![N - 1]).unwrap());
    let int = Tensor::zeros(TensorType::new(DType::I32, vec![N]).unwrap());
    assert!(k.run(&mut [ok.clone()]).is_err());
    assert!(k.run(&mut [ok.clone(), short]).is_err());
    assert!(k.run(&mut [int, ok.clone()]).is_err());
    let mut small = vec![0u8; 4 * N - 1];
    let mut big = vec![0u8; 4 * N];
    assert!(k.run_bytes(&mut [&mut big.clone(), &mut small]).is_err());
    k.run_bytes(&mut [&mut big.clone(), &mut big]).unwrap();
}

/// `for.parallel i in 0..rows { tmp[j] = x[i, j] * 2 (all j); out[i, j] = tmp[cols-1-j] + 1 }`
/// where `tmp` is private to the parallel loop; plus a shared local `acc` computed after.
fn locals_func(rows: usize, cols: usize) -> PrimFunc {
    let mut f = PrimFunc::new("ew");
    let x = f.add_param("x", DType::F32, vec![rows, cols]);
    let out = f.add_param("out", DType::F32, vec![rows, cols]);
    let tmp = f.add_local("tmp", DType::F32, vec![cols]);
    let shared = f.add_local("shared", DType::F32, vec![rows, cols]);
    let (i, j, j2, a, b) = (
        f.new_var("i"),
        f.new_var("j"),
        f.new_var("j2"),
        f.new_var("a"),
        f.new_var("b"),
    );
    let (vi, vj, vj2) = (Expr::var(i), Expr::var(j), Expr::var(j2));
    let fill = Stmt::for_(
        j,
        cols,
        ForKind::Serial,
        Stmt::store(
            tmp,
            vec![vj.clone()],
            Expr::load(x, vec![vi.clone(), vj]) * Expr::f32(2.0),
        ),
    );
    let rev = Expr::int(cols as i64 - 1) - vj2.clone();
    let use_ = Stmt::for_(
        j2,
        cols,
        ForKind::Serial,
        Stmt::store(
            shared,
            vec![vi.clone(), vj2],
            Expr::load(tmp, vec![rev]) + Expr::f32(1.0),
        ),
    );
    let copy = Stmt::for_(
        a,
        rows,
        ForKind::Parallel,
        Stmt::for_(
            b,
            cols,
            ForKind::Serial,
            Stmt::store(
                out,
                vec![Expr::var(a), Expr::var(b)],
                Expr::load(shared, vec![Expr::var(a), Expr::var(b)]),
            ),
        ),
    );
    f.body = Stmt::seq(vec![
        Stmt::for_(i, rows, ForKind::Parallel, Stmt::seq(vec![fill, use_])),
        copy,
    ]);
    f
}

#[test]
fn local_buffers_on_stack_and_heap_private_and_shared() {
    // Small locals live on the stack; 40000 floats (160 KB) go to the heap.
    for (rows, cols) in [(8, 16), (3, 40000)] {
        let f = locals_func(rows, cols);
        kiln_tir::verify(&f).unwrap();
        for threads in [
            Threads::Single,
            Threads::Global,
            Threads::Pool(2),
            Threads::Pool(3),
        ] {
            let o = CodegenOptions {
                threads,
                verify_ir: true,
                ..CodegenOptions::default()
            };
            let jit = check_against_interp(&f, &o, 21);
            if threads != Threads::Single {
                assert_eq!(jit.stats().parallel_bodies, 2);
            }
        }
    }
}

#[test]
fn parallel_loop_inside_a_serial_loop_reads_the_outer_variable() {
    // for t in 0..3 { for.parallel i in 0..5 { out[t, i] = x[t, i] * t + i } }
    let mut f = PrimFunc::new("ew");
    let x = f.add_param("x", DType::F32, vec![3, 5]);
    let out = f.add_param("out", DType::F32, vec![3, 5]);
    let (t, i) = (f.new_var("t"), f.new_var("i"));
    let idx = vec![Expr::var(t), Expr::var(i)];
    f.body = Stmt::for_(
        t,
        3,
        ForKind::Serial,
        Stmt::for_(
            i,
            5,
            ForKind::Parallel,
            Stmt::store(
                out,
                idx.clone(),
                Expr::load(x, idx) * Expr::cast(DType::F32, Expr::var(t))
                    + Expr::cast(DType::F32, Expr::var(i)),
            ),
        ),
    );
    for o in opts() {
        check_against_interp(&f, &o, 5);
    }
}

/// `out[r, c] = select(1 <= r < ROWS + 1, x[r - 1, c], 0)` (a padded copy; with `nested`, the
/// two bounds as two selects with different fill values): the rows outside `x` must never read
/// it, whichever way the loop over `c` is emitted.
fn padded_rows(nested: bool) -> PrimFunc {
    const ROWS: usize = 4;
    let mut f = PrimFunc::new("ew");
    let x = f.add_param("x", DType::F32, vec![ROWS, 16]);
    let o = f.add_param("out", DType::F32, vec![ROWS + 2, 16]);
    let (r, c) = (f.new_var("r"), f.new_var("c"));
    let read = Expr::load(x, vec![Expr::var(r) - Expr::int(1), Expr::var(c)]);
    let above = Expr::cmp(CmpOp::Ge, Expr::var(r), Expr::int(1));
    let below = Expr::lt(Expr::var(r), Expr::int(ROWS as i64 + 1));
    let value = if nested {
        Expr::select(
            above,
            Expr::select(below, read, Expr::f32(1.0)),
            Expr::f32(2.0),
        )
    } else {
        Expr::select(Expr::and(above, below), read, Expr::f32(0.0))
    };
    f.body = Stmt::for_(
        r,
        ROWS + 2,
        ForKind::Serial,
        Stmt::for_(
            c,
            16,
            ForKind::Vectorized,
            Stmt::store(o, vec![Expr::var(r), Expr::var(c)], value),
        ),
    );
    f
}

#[test]
fn loop_invariant_selects_run_one_loop_per_arm() {
    let mut rng = Rng(5);
    let x = Tensor::from_data(
        TensorType::new(DType::F32, vec![4, 16]).unwrap(),
        random_data(DType::F32, 64, &mut rng),
    )
    .unwrap();
    for nested in [false, true] {
        let f = padded_rows(nested);
        for o in opts() {
            let stats = compare(&f, std::slice::from_ref(&x), &o);
            let want = if !o.vectorize {
                0
            } else if nested {
                2
            } else {
                1
            };
            assert_eq!(stats.unswitched_loops, want, "{o:?}\n{f}");
        }
    }
}
