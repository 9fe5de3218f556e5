//! Every op family lowered alone, naively and with its default schedule, run by the TIR
//! interpreter and compared with `kiln_operators::evaluate` on random small shapes and data.

mod lowering_common;

use kiln_ir::op::*;
use kiln_ir::{DType, Op, OrderedF64, Tensor};
use kiln_operators::schedule::OpClass;
use lowering_common::*;

const REL: f64 = 1e-5;

fn f(v: f64) -> OrderedF64 {
    OrderedF64(v)
}

#[test]
fn unary_ops() {
    let mut rng = Rng(1);
    use UnaryOp::*;
    for u in [
        Abs, Negate, Exp, Log, Reciprocal, Rsqrt, Sqrt, Floor, Ceil, Round, Sin, Cos, Erf, Sigmoid,
        Tanh, Sign, IsNan, IsInf,
    ] {
        for dt in [DType::F32, DType::F16] {
            let mut x = rand_default(&mut rng, dt, &[2, 3, 8]);
            if let kiln_ir::TensorData::F32(v) = &mut x.clone().data().clone() {
                v[0] = f32::NAN;
                v[1] = f32::INFINITY;
                v[2] = -0.0;
                x = Tensor::new(vec![2, 3, 8], v.clone()).unwrap();
            }
            check_op(
                &Op::Unary(u),
                &[x],
                OpClass::Elementwise,
                if dt == DType::F16 { 1e-3 } else { REL },
            );
        }
    }
    for dt in [DType::I8, DType::U8, DType::I16, DType::I32, DType::I64] {
        for u in [Abs, Negate, Sign, BitwiseNot] {
            let x = rand_default(&mut rng, dt, &[3, 5]);
            check_op(&Op::Unary(u), &[x], OpClass::Elementwise, 0.0);
        }
    }
    let b = rand_default(&mut rng, DType::Bool, &[4, 4]);
    check_op(&Op::Unary(LogicalNot), &[b], OpClass::Elementwise, 0.0);
}

#[test]
fn binary_float_ops_broadcast() {
    let mut rng = Rng(2);
    use BinaryOp::*;
    for op in [
        Add,
        Sub,
        Mul,
        Div,
        Mod,
        Pow,
        Maximum,
        Minimum,
        Equal,
        Greater,
        GreaterEqual,
    ] {
        let a = rand_default(&mut rng, DType::F32, &[2, 1, 8]);
        let b = rand_default(&mut rng, DType::F32, &[1, 3, 8]);
        check_op(&Op::Binary(op), &[a, b], OpClass::Elementwise, REL);
    }
}

#[test]
fn binary_int_ops_exact() {
    let mut rng = Rng(3);
    use BinaryOp::*;
    for dt in [DType::I8, DType::U8, DType::I16, DType::I32, DType::I64] {
        let (lo, hi) = int_range(dt);
        for op in [
            Add,
            Sub,
            Mul,
            Div,
            Mod,
            Maximum,
            Minimum,
            Equal,
            Greater,
            GreaterEqual,
            BitwiseAnd,
            BitwiseOr,
            BitwiseXor,
        ] {
            let a = rand(&mut rng, dt, &[3, 4], lo, hi);
            let b = rand(&mut rng, dt, &[3, 1], lo.max(-3), hi.min(3));
            check_op(&Op::Binary(op), &[a, b], OpClass::Elementwise, 0.0);
        }
        let amax = if dt == DType::U8 { 70 } else { 70.min(hi) };
        let amin = if dt == DType::U8 { 0 } else { -3 };
        for op in [LogicalLeftShift, LogicalRightShift, ArithmeticRightShift] {
            let a = rand(&mut rng, dt, &[4, 8], lo, hi);
            let b = rand(&mut rng, dt, &[4, 8], amin, amax);
            check_op(&Op::Binary(op), &[a, b], OpClass::Elementwise, 0.0);
        }
        let a = rand(&mut rng, dt, &[2, 6], lo.max(-5), hi.min(5));
        let b = rand(&mut rng, dt, &[2, 6], lo.max(-3), hi.min(12));
        check_op(&Op::Binary(Pow), &[a, b], OpClass::Elementwise, 0.0);
    }
    for op in [LogicalAnd, LogicalOr, LogicalXor, Equal] {
        let a = rand_default(&mut rng, DType::Bool, &[2, 4]);
        let b = rand_default(&mut rng, DType::Bool, &[2, 4]);
        check_op(&Op::Binary(op), &[a, b], OpClass::Elementwise, 0.0);
    }
}

#[test]
fn clamp_select_cast() {
    let mut rng = Rng(4);
    let x = rand_default(&mut rng, DType::F32, &[2, 8]);
    let clamp = Op::Clamp {
        min: f(-1.0),
        max: f(1.5),
    };
    check_op(&clamp, &[x], OpClass::Elementwise, REL);
    let x = rand_default(&mut rng, DType::I8, &[2, 8]);
    let clamp = Op::Clamp {
        min: f(-1000.0),
        max: f(7.0),
    };
    check_op(&clamp, &[x], OpClass::Elementwise, 0.0);
    let c = rand_default(&mut rng, DType::Bool, &[2, 1]);
    let a = rand_default(&mut rng, DType::I32, &[2, 8]);
    let b = rand_default(&mut rng, DType::I32, &[1, 8]);
    check_op(&Op::Select, &[c, a, b], OpClass::Elementwise, 0.0);
    let big = Tensor::new(
        vec![8],
        vec![1e10f32, -1e10, f32::NAN, 3.7, -3.7, 127.9, -128.9, 0.5],
    )
    .unwrap();
    for to in DType::ALL {
        check_op(
            &Op::Cast { to },
            std::slice::from_ref(&big),
            OpClass::Elementwise,
            1e-3,
        );
        let i = rand_default(&mut rng, DType::I32, &[8]);
        check_op(&Op::Cast { to }, &[i], OpClass::Elementwise, 1e-3);
        let bb = rand_default(&mut rng, DType::Bool, &[8]);
        check_op(&Op::Cast { to }, &[bb], OpClass::Elementwise, 0.0);
    }
    let x = rand_default(&mut rng, DType::F32, &[3, 4]);
    check_op(&Op::Identity, &[x], OpClass::Elementwise, 0.0);
}

fn conv_case(rng: &mut Rng, depthwise: bool, dt: DType, a: ConvAttrs, c: usize, o: usize) {
    let (x, w, b) = if dt.is_float() {
        (
            rand_default(rng, dt, &a.layout.shape([1, c, 7, 8])),
            rand_default(rng, dt, &[o, if depthwise { 1 } else { c }, 3, 3]),
            rand_default(rng, dt, &[o]),
        )
    } else {
        (
            rand(rng, dt, &a.layout.shape([2, c, 7, 8]), -128, 127),
            rand(
                rng,
                DType::I8,
                &[o, if depthwise { 1 } else { c }, 3, 3],
                -128,
                127,
            ),
            rand(rng, DType::I32, &[1], -1000, 1000),
        )
    };
    let op = if depthwise {
        Op::DepthwiseConv2d(a)
    } else {
        Op::Conv2d(a)
    };
    let class = if depthwise {
        OpClass::Depthwise
    } else {
        OpClass::Conv
    };
    check_op(&op, &[x, w, b], class, 1e-4);
}

#[test]
fn convolutions() {
    let mut rng = Rng(5);
    let base = ConvAttrs {
        pad: [1, 1, 1, 1],
        stride: [1, 1],
        dilation: [1, 1],
        input_zp: 0,
        weight_zp: 0,
        layout: DataLayout::Nchw,
        fma: false,
    };
    conv_case(&mut rng, false, DType::F32, base.clone(), 3, 4);
    let strided = ConvAttrs {
        pad: [0, 2, 1, 0],
        stride: [2, 1],
        dilation: [1, 2],
        ..base.clone()
    };
    conv_case(&mut rng, false, DType::F32, strided.clone(), 2, 5);
    let zp = ConvAttrs {
        input_zp: -3,
        weight_zp: 2,
        ..base.clone()
    };
    conv_case(&mut rng, false, DType::I8, zp.clone(), 3, 4);
    conv_case(&mut rng, true, DType::F32, base.clone(), 4, 8);
    conv_case(&mut rng, true, DType::I8, zp, 2, 4);
    conv_case(&mut rng, true, DType::F32, strided, 3, 3);
    let t = TransposeConvAttrs {
        pad: [1, 0, 0, 1],
        out_pad: [1, 0],
        stride: [2, 2],
        dilation: [1, 1],
        input_zp: 0,
        weight_zp: 0,
    };
    let x = rand_default(&mut rng, DType::F32, &[1, 3, 4, 5]);
    let w = rand_default(&mut rng, DType::F32, &[3, 2, 3, 3]);
    let b = rand_default(&mut rng, DType::F32, &[2]);
    check_op(
        &Op::TransposeConv2d(t.clone()),
        &[x, w, b],
        OpClass::Conv,
        1e-4,
    );
    let t8 = TransposeConvAttrs {
        input_zp: 5,
        weight_zp: -1,
        dilation: [2, 1],
        ..t
    };
    let x = rand_default(&mut rng, DType::I8, &[1, 2, 4, 4]);
    let w = rand_default(&mut rng, DType::I8, &[2, 4, 2, 3]);
    let b = rand(&mut rng, DType::I32, &[4], -100, 100);
    check_op(&Op::TransposeConv2d(t8), &[x, w, b], OpClass::Conv, 0.0);
}

/// Channels-last convolutions: the compiled kernels (channels-last accumulator paths for f32
/// with output channels a multiple of 4, the generic path otherwise and for integers) against
/// the reference, and the reference against the NCHW reference of the transposed input.
#[test]
fn channels_last_convolutions() {
    let mut rng = Rng(15);
    let nhwc = |a: ConvAttrs| ConvAttrs {
        layout: DataLayout::Nhwc,
        ..a
    };
    let padded = nhwc(ConvAttrs {
        pad: [1, 1, 1, 1],
        stride: [1, 1],
        dilation: [1, 1],
        ..ConvAttrs::default()
    });
    let strided = ConvAttrs {
        pad: [0, 2, 1, 0],
        stride: [2, 1],
        dilation: [1, 2],
        ..padded.clone()
    };
    let unpadded = ConvAttrs {
        pad: [0; 4],
        ..padded.clone()
    };
    let zp = ConvAttrs {
        input_zp: -3,
        weight_zp: 2,
        ..padded.clone()
    };
    for a in [&padded, &strided, &unpadded] {
        conv_case(&mut rng, false, DType::F32, a.clone(), 3, 8);
        conv_case(&mut rng, false, DType::F32, a.clone(), 3, 5);
        conv_case(&mut rng, true, DType::F32, a.clone(), 8, 8);
        conv_case(&mut rng, true, DType::F32, a.clone(), 3, 6);
    }
    conv_case(&mut rng, false, DType::I8, zp.clone(), 3, 4);
    conv_case(&mut rng, true, DType::I8, zp.clone(), 4, 4);
    // Input channels in quadruples: the 8-bit integer micro-kernel form (reduction split by
    // 4, weights packed in panels of quadruples), padded or strided, ragged column tiles.
    for a in [&zp, &strided, &unpadded] {
        conv_case(&mut rng, false, DType::I8, a.clone(), 8, 16);
        conv_case(&mut rng, false, DType::I8, a.clone(), 4, 24);
    }

    for (a, depthwise) in [(&strided, false), (&padded, true)] {
        let x = rand_default(&mut rng, DType::F32, &[1, 4, 7, 8]);
        let w = rand_default(
            &mut rng,
            DType::F32,
            &[4, if depthwise { 1 } else { 4 }, 3, 3],
        );
        let b = rand_default(&mut rng, DType::F32, &[4]);
        let (nchw, nhwc) = if depthwise {
            (
                Op::DepthwiseConv2d(ConvAttrs {
                    layout: DataLayout::Nchw,
                    ..a.clone()
                }),
                Op::DepthwiseConv2d(a.clone()),
            )
        } else {
            (
                Op::Conv2d(ConvAttrs {
                    layout: DataLayout::Nchw,
                    ..a.clone()
                }),
                Op::Conv2d(a.clone()),
            )
        };
        let transpose = |t: &Tensor, perm: [usize; 4]| {
            kiln_operators::evaluate(
                &Op::Transpose {
                    perm: perm.to_vec(),
                },
                &[t],
            )
            .unwrap()
        };
        let want = kiln_operators::evaluate(&nchw, &[&x, &w, &b]).unwrap();
        let xt = transpose(&x, [0, 2, 3, 1]);
        let got = kiln_operators::evaluate(&nhwc, &[&xt, &w, &b]).unwrap();
        let want_t = transpose(&want, [0, 2, 3, 1]);
        assert_eq!(got, want_t, "{nhwc:?}");
    }
}

#[test]
fn matmuls() {
    let mut rng = Rng(6);
    let a = rand_default(&mut rng, DType::F32, &[2, 5, 7]);
    let b = rand_default(&mut rng, DType::F32, &[2, 7, 8]);
    check_op(
        &Op::MatMul(MatMulAttrs::default()),
        &[a, b],
        OpClass::MatMul,
        1e-4,
    );
    let a = rand_default(&mut rng, DType::F32, &[1, 8, 3]);
    let b = rand_default(&mut rng, DType::F32, &[1, 3, 4]);
    check_op(
        &Op::MatMul(MatMulAttrs::default()),
        &[a, b],
        OpClass::MatMul,
        1e-4,
    );
    let a = rand_default(&mut rng, DType::I8, &[1, 4, 9]);
    let b = rand_default(&mut rng, DType::U8, &[1, 9, 8]);
    let attrs = MatMulAttrs {
        a_zp: 3,
        b_zp: 128,
        ..Default::default()
    };
    check_op(&Op::MatMul(attrs), &[a, b], OpClass::MatMul, 0.0);
    // `k` in quadruples: the 8-bit micro-kernel form (k split by 4, weights packed in panels
    // of quadruples), one row (a classifier) and several.
    for m in [1, 6] {
        let a = rand_default(&mut rng, DType::I8, &[1, m, 12]);
        let b = rand_default(&mut rng, DType::I8, &[1, 12, 40]);
        let attrs = MatMulAttrs {
            a_zp: -128,
            ..Default::default()
        };
        check_op(&Op::MatMul(attrs), &[a, b], OpClass::MatMul, 0.0);
    }
    let a = rand_default(&mut rng, DType::F16, &[1, 4, 6]);
    let b = rand_default(&mut rng, DType::F16, &[1, 6, 4]);
    check_op(
        &Op::MatMul(MatMulAttrs::default()),
        &[a, b],
        OpClass::MatMul,
        1e-3,
    );
}

#[test]
fn pools() {
    let mut rng = Rng(7);
    let cases = [
        PoolAttrs {
            kernel: [3, 3],
            stride: [2, 2],
            pad: [1, 1, 1, 1],
            dilation: [1, 1],
            ceil_mode: false,
            count_include_pad: false,
            layout: Default::default(),
        },
        PoolAttrs {
            kernel: [2, 3],
            stride: [2, 2],
            pad: [0, 1, 1, 0],
            dilation: [1, 1],
            ceil_mode: true,
            count_include_pad: true,
            layout: Default::default(),
        },
        PoolAttrs {
            kernel: [2, 2],
            stride: [1, 3],
            pad: [1, 0, 0, 1],
            dilation: [2, 1],
            ceil_mode: true,
            count_include_pad: false,
            layout: Default::default(),
        },
    ];
    for p in cases {
        let x = rand_default(&mut rng, DType::F32, &[2, 3, 7, 8]);
        check_op(
            &Op::AvgPool2d(p.clone()),
            std::slice::from_ref(&x),
            OpClass::Pool,
            REL,
        );
        check_op(&Op::MaxPool2d(p.clone()), &[x], OpClass::Pool, 0.0);
        let x = rand_default(&mut rng, DType::I8, &[1, 2, 6, 8]);
        check_op(&Op::MaxPool2d(p), &[x], OpClass::Pool, 0.0);
    }
}

#[test]
fn reductions_and_argmax() {
    let mut rng = Rng(8);
    use ReduceOp::*;
    for axis in 0..3 {
        for kind in [Sum, Max, Min, Product] {
            let x = rand_default(&mut rng, DType::F32, &[3, 4, 8]);
            check_op(&Op::Reduce { kind, axis }, &[x], OpClass::Reduction, 1e-4);
            let x = rand_default(&mut rng, DType::I32, &[3, 4, 8]);
            check_op(&Op::Reduce { kind, axis }, &[x], OpClass::Reduction, 0.0);
        }
        for kind in [All, Any] {
            let x = rand_default(&mut rng, DType::Bool, &[3, 2, 4]);
            check_op(&Op::Reduce { kind, axis }, &[x], OpClass::Reduction, 0.0);
        }
        let x = rand(&mut rng, DType::I8, &[3, 5, 4], -3, 3);
        check_op(&Op::ArgMax { axis }, &[x], OpClass::Reduction, 0.0);
        let mut v: Vec<f32> = (0..60).map(|_| rng.float()).collect();
        v[7] = f32::NAN;
        v[30] = 5.0;
        let x = Tensor::new(vec![3, 5, 4], v).unwrap();
        check_op(&Op::ArgMax { axis }, &[x], OpClass::Reduction, 0.0);
    }
    let x = rand_default(&mut rng, DType::F16, &[2, 16]);
    check_op(
        &Op::Reduce { kind: Sum, axis: 1 },
        &[x],
        OpClass::Reduction,
        1e-3,
    );
    let x = rand_default(&mut rng, DType::F32, &[6]);
    check_op(&Op::ArgMax { axis: 0 }, &[x], OpClass::Reduction, 0.0);
}

#[test]
fn data_movement() {
    let mut rng = Rng(9);
    let x = rand_default(&mut rng, DType::F32, &[2, 3, 4]);
    let ops = [
        Op::Reshape { shape: vec![4, 6] },
        Op::Reshape { shape: vec![24] },
        Op::Transpose {
            perm: vec![2, 0, 1],
        },
        Op::Slice {
            start: vec![0, 1, 1],
            size: vec![2, 2, 2],
            stride: vec![1, 1, 2],
        },
        Op::Pad {
            pads: vec![[1, 0], [0, 2], [3, 1]],
            mode: PadMode::Constant,
            value: f(2.5),
        },
        Op::Pad {
            pads: vec![[1, 0], [0, 2], [3, 1]],
            mode: PadMode::Edge,
            value: f(0.0),
        },
        Op::Pad {
            pads: vec![[1, 0], [0, 2], [3, 1]],
            mode: PadMode::Reflect,
            value: f(0.0),
        },
        Op::Tile {
            multiples: vec![2, 1, 3],
        },
        Op::Reverse { axis: 1 },
    ];
    for op in &ops {
        check_op(op, std::slice::from_ref(&x), OpClass::Movement, 0.0);
    }
    let xi = rand_default(&mut rng, DType::I8, &[2, 3, 4]);
    check_op(
        &Op::Pad {
            pads: vec![[0, 0], [1, 1], [0, 0]],
            mode: PadMode::Constant,
            value: f(-300.0),
        },
        &[xi],
        OpClass::Movement,
        0.0,
    );
    let y = rand_default(&mut rng, DType::F32, &[2, 5, 4]);
    let z = rand_default(&mut rng, DType::F32, &[2, 1, 4]);
    check_op(
        &Op::Concat { axis: 1 },
        &[x.clone(), y, z],
        OpClass::Movement,
        0.0,
    );
    let idx = Tensor::new(vec![2, 2], vec![0i64, -1, 2, -3]).unwrap();
    check_op(
        &Op::Gather { axis: 1 },
        &[x.clone(), idx],
        OpClass::Movement,
        0.0,
    );
    let idx = Tensor::new(vec![3], vec![1i32, 0, 1]).unwrap();
    check_op(
        &Op::Gather { axis: 0 },
        &[x.clone(), idx],
        OpClass::Movement,
        0.0,
    );
    let idx = Tensor::scalar(2i32);
    check_op(
        &Op::Gather { axis: 2 },
        &[x.clone(), idx],
        OpClass::Movement,
        0.0,
    );
    let idx = rand(&mut rng, DType::I64, &[2, 2, 4], -3, 2);
    check_op(
        &Op::GatherElements { axis: 1 },
        &[x, idx],
        OpClass::Movement,
        0.0,
    );
}

#[test]
fn rescale_and_table() {
    let mut rng = Rng(10);
    let x = rand(&mut rng, DType::I32, &[2, 3, 4], -100_000, 100_000);
    let cases = [
        RescaleAttrs {
            to: DType::I8,
            multiplier: vec![1_395_864_371],
            shift: vec![38],
            input_zp: 0,
            output_zp: -5,
            scale32: true,
            rounding: RoundingMode::Single,
            channel_axis: None,
        },
        RescaleAttrs {
            to: DType::I8,
            multiplier: vec![1 << 30, 1_500_000_000, 987_654_321],
            shift: vec![31, 35, 12],
            input_zp: 7,
            output_zp: 3,
            scale32: true,
            rounding: RoundingMode::Double,
            channel_axis: Some(1),
        },
        RescaleAttrs {
            to: DType::U8,
            multiplier: vec![20_000],
            shift: vec![20],
            input_zp: -3,
            output_zp: 128,
            scale32: false,
            rounding: RoundingMode::Single,
            channel_axis: None,
        },
        RescaleAttrs {
            to: DType::I32,
            multiplier: vec![-2_000_000_000],
            shift: vec![5],
            input_zp: 0,
            output_zp: 0,
            scale32: true,
            rounding: RoundingMode::Double,
            channel_axis: None,
        },
        RescaleAttrs {
            to: DType::I16,
            multiplier: vec![1_073_741_824, 5, 100, 2_000_000_000],
            shift: vec![62, 2, 14, 40],
            input_zp: 1,
            output_zp: 0,
            scale32: true,
            rounding: RoundingMode::Double,
            channel_axis: Some(2),
        },
    ];
    for r in cases {
        check_op(
            &Op::Rescale(r),
            std::slice::from_ref(&x),
            OpClass::Elementwise,
            0.0,
        );
    }
    let big = Tensor::new(vec![4], vec![i32::MIN, i32::MAX, -1, 0]).unwrap();
    let r = RescaleAttrs {
        to: DType::I32,
        multiplier: vec![i32::MAX],
        shift: vec![3],
        input_zp: 1,
        output_zp: 0,
        scale32: true,
        rounding: RoundingMode::Double,
        channel_axis: None,
    };
    check_op(&Op::Rescale(r), &[big], OpClass::Elementwise, 0.0);
    let x8 = rand_default(&mut rng, DType::I8, &[4, 8]);
    let r = RescaleAttrs {
        to: DType::I8,
        multiplier: vec![1 << 30],
        shift: vec![30],
        input_zp: -128,
        output_zp: 0,
        scale32: true,
        rounding: RoundingMode::Single,
        channel_axis: None,
    };
    check_op(
        &Op::Rescale(r),
        std::slice::from_ref(&x8),
        OpClass::Elementwise,
        0.0,
    );
    let table = rand_default(&mut rng, DType::I8, &[256]);
    check_op(&Op::Table, &[x8, table], OpClass::Elementwise, 0.0);
}

#[test]
fn resizes() {
    let mut rng = Rng(11);
    let x = rand_default(&mut rng, DType::F32, &[1, 2, 4, 5]);
    let mut cases = vec![];
    for mode in [ResizeMode::Nearest, ResizeMode::Linear, ResizeMode::Cubic] {
        for ct in [
            CoordinateTransform::HalfPixel,
            CoordinateTransform::AlignCorners,
            CoordinateTransform::Asymmetric,
            CoordinateTransform::PytorchHalfPixel,
            CoordinateTransform::HalfPixelSymmetric,
        ] {
            cases.push(ResizeAttrs {
                size: vec![1, 2, 7, 3],
                scales: vec![1.0, 1.0, 7.0 / 4.0, 3.0 / 5.0],
                mode,
                coordinate_transform: ct,
                nearest_rounding: NearestRounding::RoundPreferFloor,
                cubic_coeff_a: -0.75,
                exclude_outside: mode == ResizeMode::Cubic && ct == CoordinateTransform::HalfPixel,
                extrapolation_value: 0.0,
                roi: vec![],
            });
        }
        cases.push(ResizeAttrs {
            size: vec![1, 2, 6, 6],
            scales: vec![1.0, 1.0, 1.5, 1.2],
            mode,
            coordinate_transform: CoordinateTransform::TfCropAndResize,
            nearest_rounding: NearestRounding::Ceil,
            cubic_coeff_a: -0.5,
            exclude_outside: false,
            extrapolation_value: 9.0,
            roi: vec![0.0, 0.0, -0.2, 0.1, 1.0, 1.0, 1.1, 0.9],
        });
    }
    for r in cases {
        check_op(
            &Op::Resize(r),
            std::slice::from_ref(&x),
            OpClass::Movement,
            1e-4,
        );
    }
    let xi = rand_default(&mut rng, DType::U8, &[1, 1, 3, 3]);
    let r = ResizeAttrs {
        size: vec![1, 1, 6, 5],
        scales: vec![1.0, 1.0, 2.0, 5.0 / 3.0],
        mode: ResizeMode::Nearest,
        ..Default::default()
    };
    check_op(&Op::Resize(r), &[xi], OpClass::Movement, 0.0);
}

/// The default schedules really tile, vectorize and parallelise the anchor classes (kernels
/// with enough work to pay for a thread: tiny ones stay serial).
#[test]
fn default_schedules_are_not_trivial() {
    use kiln_tir::Instruction as I;
    let mut rng = Rng(12);
    let has = |t: &kiln_tir::Trace, f: &dyn Fn(&I) -> bool| t.0.iter().any(f);
    let a = ConvAttrs {
        pad: [1, 1, 1, 1],
        stride: [1, 1],
        dilation: [1, 1],
        ..Default::default()
    };
    // 16 x 16 x 16 outputs of 72 taps: above kiln_schedules::SERIAL_WORK.
    let x = rand_default(&mut rng, DType::F32, &[1, 8, 16, 16]);
    let w = rand_default(&mut rng, DType::F32, &[16, 8, 3, 3]);
    let b = rand_default(&mut rng, DType::F32, &[16]);
    let t = check_op(&Op::Conv2d(a.clone()), &[x, w, b], OpClass::Conv, 1e-4);
    assert!(has(&t, &|i| matches!(i, I::ComputeAt { .. })), "{t:?}");
    assert!(has(&t, &|i| matches!(i, I::Vectorize { .. })), "{t:?}");
    assert!(has(&t, &|i| matches!(i, I::Parallel { .. })), "{t:?}");
    // 8 x 8 x 8 outputs of 27 taps: serial.
    let x = rand_default(&mut rng, DType::F32, &[1, 3, 8, 8]);
    let w = rand_default(&mut rng, DType::F32, &[8, 3, 3, 3]);
    let b = rand_default(&mut rng, DType::F32, &[8]);
    let t = check_op(&Op::Conv2d(a), &[x.clone(), w, b], OpClass::Conv, 1e-4);
    assert!(has(&t, &|i| matches!(i, I::Vectorize { .. })), "{t:?}");
    assert!(!has(&t, &|i| matches!(i, I::Parallel { .. })), "{t:?}");
    // Channels-last output: the output's channel axis (i3) is split and its inner part vectorized
    // (contiguous stores).
    let xt = rand_default(&mut rng, DType::F32, &[1, 8, 8, 3]);
    let w = rand_default(&mut rng, DType::F32, &[8, 3, 3, 3]);
    let b = rand_default(&mut rng, DType::F32, &[8]);
    let a = ConvAttrs {
        pad: [1, 1, 1, 1],
        stride: [1, 1],
        dilation: [1, 1],
        layout: DataLayout::Nhwc,
        ..Default::default()
    };
    let t = check_op(&Op::Conv2d(a), &[xt, w, b], OpClass::Conv, 1e-4);
    assert!(has(&t, &|i| matches!(i, I::ComputeAt { .. })), "{t:?}");
    assert!(
        has(
            &t,
            &|i| matches!(i, I::Vectorize { stage, loop_ } if stage.ends_with("bias") && loop_ == "i3.1")
        ),
        "{t:?}"
    );
    let a = rand_default(&mut rng, DType::F32, &[1, 8, 5]);
    let bm = rand_default(&mut rng, DType::F32, &[1, 5, 8]);
    let t = check_op(
        &Op::MatMul(MatMulAttrs::default()),
        &[a, bm],
        OpClass::MatMul,
        1e-4,
    );
    assert!(has(&t, &|i| matches!(i, I::CacheWrite { .. })), "{t:?}");
    assert!(has(&t, &|i| matches!(i, I::Vectorize { .. })), "{t:?}");
    let p = PoolAttrs {
        kernel: [2, 2],
        stride: [2, 2],
        dilation: [1, 1],
        ..Default::default()
    };
    let big = rand_default(&mut rng, DType::F32, &[1, 32, 128, 128]);
    let t = check_op(&Op::MaxPool2d(p), &[big], OpClass::Pool, 0.0);
    assert!(has(&t, &|i| matches!(i, I::Parallel { .. })), "{t:?}");
    let t = check_op(&Op::Unary(UnaryOp::Exp), &[x], OpClass::Elementwise, REL);
    assert!(has(&t, &|i| matches!(i, I::Vectorize { .. })), "{t:?}");
}

/// Transposes large enough for tiles (layout conversions collapse to 2-D ones) run in square
/// tiles of their two inner axes and compute the reference's values (f32, i32, a 3-D one
/// swapping its inner axes, a ragged size that takes the untiled schedule).
#[test]
fn large_transposes_run_in_square_tiles() {
    let mut rng = Rng(11);
    let tiled = |trace: &kiln_tir::Trace| {
        trace
            .0
            .iter()
            .any(|i| matches!(i, kiln_tir::Instruction::Reorder { .. }))
    };
    for (dt, shape, perm, tiles) in [
        (DType::F32, vec![64, 48], vec![1, 0], true),
        (DType::I32, vec![32, 64], vec![1, 0], true),
        (DType::F32, vec![2, 32, 48], vec![0, 2, 1], true),
        (DType::F32, vec![40, 33], vec![1, 0], false),
    ] {
        let x = rand_default(&mut rng, dt, &shape);
        let trace = check_op(&Op::Transpose { perm }, &[x], OpClass::Movement, 0.0);
        assert_eq!(tiled(&trace), tiles, "{shape:?}: {trace:?}");
    }
}

/// Loops are unrolled for the `select`s that unrolling decides at compile time (a concat along
/// a short axis: each copy reads one operand), not for a select on a value loaded per
/// iteration (a per-channel rescale's table entry): sixteen copies of that body decided
/// nothing and took seconds to compile.
#[test]
fn only_selects_on_the_loop_variable_unroll_its_loop() {
    let mut rng = Rng(12);
    let unrolled = |trace: &kiln_tir::Trace| {
        trace
            .0
            .iter()
            .any(|i| matches!(i, kiln_tir::Instruction::Unroll { .. }))
    };
    let parts = [
        rand_default(&mut rng, DType::F32, &[2, 3, 32]),
        rand_default(&mut rng, DType::F32, &[2, 5, 32]),
    ];
    let trace = check_op(&Op::Concat { axis: 1 }, &parts, OpClass::Movement, 0.0);
    assert!(unrolled(&trace), "{trace:?}");
    let x = rand(&mut rng, DType::I32, &[1, 16, 4, 32], -100_000, 100_000);
    let per_channel = RescaleAttrs {
        to: DType::I8,
        multiplier: (0..16).map(|c| 1_000_000 + 97_531 * c).collect(),
        shift: (0..16).map(|c| 30 + c % 8).collect(),
        input_zp: 0,
        output_zp: -3,
        scale32: true,
        rounding: RoundingMode::Double,
        channel_axis: Some(1),
    };
    let trace = check_op(&Op::Rescale(per_channel), &[x], OpClass::Elementwise, 0.0);
    assert!(!unrolled(&trace), "{trace:?}");
}
