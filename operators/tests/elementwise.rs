mod common;
use common::*;
use half::f16;
use kiln_ir::op::{BinaryOp as B, UnaryOp as U};
use kiln_ir::{DType, Op, OrderedF64};

fn bin<T: kiln_ir::Element>(op: B, a: Vec<T>, b: Vec<T>) -> kiln_ir::Tensor {
    let n = a.len();
    run(&Op::Binary(op), &[&t(&[n], a), &t(&[n], b)])
}

#[test]
fn int_division_truncates_and_tolerates_zero() {
    let r = bin(
        B::Div,
        vec![-7i32, 7, 7, i32::MIN, 5],
        vec![2, -2, 0, -1, 3],
    );
    assert_eq!(vals::<i32>(&r), vec![-3, -3, 0, i32::MIN, 1]);
}

#[test]
fn int_mod_takes_divisor_sign_float_mod_is_fmod() {
    let r = bin(B::Mod, vec![-7i8, 7, 7, -7, 3], vec![2, -2, 2, -2, 0]);
    assert_eq!(vals::<i8>(&r), vec![1, -1, 1, -1, 0]);
    let r = bin(B::Mod, vec![-7.5f32, 7.5], vec![2.0, -2.0]);
    assert_eq!(vals::<f32>(&r), vec![-1.5, 1.5]);
}

#[test]
fn int_arithmetic_wraps() {
    let r = bin(B::Add, vec![127i8, -128], vec![1, -1]);
    assert_eq!(vals::<i8>(&r), vec![-128, 127]);
    let r = bin(B::Mul, vec![200u8], vec![2]);
    assert_eq!(vals::<u8>(&r), vec![144]);
    let r = bin(
        B::Pow,
        vec![3i32, 2, -2, 2, 1, -1],
        vec![4, 31, 3, -1, -5, -3],
    );
    assert_eq!(vals::<i32>(&r), vec![81, i32::MIN, -8, 0, 1, -1]);
    let r = bin(B::Pow, vec![2i8], vec![7]);
    assert_eq!(vals::<i8>(&r), vec![-128]);
}

#[test]
fn shifts_are_logical_and_saturate_to_zero() {
    let r = bin(
        B::LogicalRightShift,
        vec![-128i8, -1, 64, 1],
        vec![1, 4, 8, -1],
    );
    assert_eq!(vals::<i8>(&r), vec![64, 15, 0, 0]);
    let r = bin(B::LogicalLeftShift, vec![1i8, 3u8 as i8, 1], vec![7, 1, 9]);
    assert_eq!(vals::<i8>(&r), vec![-128, 6, 0]);
    let r = bin(B::BitwiseXor, vec![0b1100u8], vec![0b1010]);
    assert_eq!(vals::<u8>(&r), vec![0b0110]);
}

#[test]
fn arithmetic_right_shift_extends_the_sign() {
    let r = bin(
        B::ArithmeticRightShift,
        vec![-8i8, -1, -128, 64, -5, 5],
        vec![1, 1, 1, 2, 8, -1],
    );
    assert_eq!(vals::<i8>(&r), vec![-4, -1, -64, 16, -1, 0]);
    let r = bin(B::ArithmeticRightShift, vec![200u8], vec![1]);
    assert_eq!(vals::<u8>(&r), vec![100]);
}

#[test]
fn broadcast_over_equal_ranks() {
    let a = f(&[2, 1], &[1.0, 2.0]);
    let b = f(&[1, 3], &[10.0, 20.0, 30.0]);
    let r = run(&Op::Binary(B::Sub), &[&a, &b]);
    assert_eq!(r.shape(), &[2, 3]);
    assert_eq!(
        vals::<f32>(&r),
        vec![-9.0, -19.0, -29.0, -8.0, -18.0, -28.0]
    );
    let r = run(&Op::Binary(B::Greater), &[&a, &f(&[1, 1], &[1.5])]);
    assert_eq!(vals::<bool>(&r), vec![false, true]);
}

#[test]
fn float_max_min_propagate_nan_and_compare() {
    let r = bin(B::Maximum, vec![1.0f32, f32::NAN], vec![f32::NAN, 2.0]);
    assert!(vals::<f32>(&r).iter().all(|x| x.is_nan()));
    let r = bin(B::Equal, vec![true, false], vec![true, true]);
    assert_eq!(vals::<bool>(&r), vec![true, false]);
    let r = bin(B::GreaterEqual, vec![1i64, 2], vec![2, 2]);
    assert_eq!(vals::<bool>(&r), vec![false, true]);
    let r = bin(B::LogicalXor, vec![true, true], vec![true, false]);
    assert_eq!(vals::<bool>(&r), vec![false, true]);
}

#[test]
fn f16_is_computed_in_f32_and_rounded() {
    let a = vec![f16::from_f32(1.0), f16::from_f32(2048.0)];
    let b = vec![f16::from_f32(0.000_488_281_25), f16::from_f32(1.0)];
    // 1 + 2^-11 ties to 1.0; 2049 ties to 2048 (even).
    let r = bin(B::Add, a, b);
    assert_eq!(
        vals::<f16>(&r),
        vec![f16::from_f32(1.0), f16::from_f32(2048.0)]
    );
}

fn un(op: U, v: &[f32]) -> Vec<f32> {
    vals(&run(&Op::Unary(op), &[&f(&[v.len()], v)]))
}

#[test]
fn round_sign_and_friends() {
    assert_eq!(
        un(U::Round, &[2.5, 3.5, -0.5, -1.5, 1.4]),
        vec![2.0, 4.0, -0.0, -2.0, 1.0]
    );
    let s = un(U::Sign, &[-3.0, 0.0, 2.0, f32::NAN]);
    assert_eq!(&s[..3], &[-1.0, 0.0, 1.0]);
    assert!(s[3].is_nan());
    close(
        &un(U::Sigmoid, &[0.0, -100.0, 100.0]),
        &[0.5, 0.0, 1.0],
        1e-7,
    );
    close(&un(U::Rsqrt, &[4.0]), &[0.5], 0.0);
    let r = run(
        &Op::Unary(U::IsInf),
        &[&f(&[3], &[f32::INFINITY, 1.0, f32::NAN])],
    );
    assert_eq!(vals::<bool>(&r), vec![true, false, false]);
    let r = run(&Op::Unary(U::Abs), &[&t(&[2], vec![-128i8, -3])]);
    assert_eq!(vals::<i8>(&r), vec![-128, 3]);
    let r = run(&Op::Unary(U::BitwiseNot), &[&t(&[1], vec![0u8])]);
    assert_eq!(vals::<u8>(&r), vec![255]);
}

#[test]
#[allow(clippy::excessive_precision)] // reference values, kept at full f64 precision
fn erf_is_accurate() {
    let x = [0.0, 1e-3, 0.5, 1.0, -2.0, 3.5, 5.0, -0.25];
    let want = [
        0.0,
        0.001_128_378_790_969_236_3,
        0.520_499_877_813_046_5,
        0.842_700_792_949_714_9,
        -0.995_322_265_018_952_7,
        0.999_999_256_901_627_6,
        1.0,
        -0.276_326_390_168_236_9,
    ];
    close(&un(U::Erf, &x), &want, 1e-7);
}

#[test]
fn clamp_and_select() {
    let op = Op::Clamp {
        min: OrderedF64(-1.5),
        max: OrderedF64(f64::INFINITY),
    };
    let r = run(&op, &[&f(&[3], &[-3.0, 0.0, f32::NAN])]);
    let v = vals::<f32>(&r);
    assert_eq!(&v[..2], &[-1.5, 0.0]);
    assert!(v[2].is_nan());
    let op = Op::Clamp {
        min: OrderedF64(f64::NEG_INFINITY),
        max: OrderedF64(6.0),
    };
    assert_eq!(
        vals::<i8>(&run(&op, &[&t(&[2], vec![-128i8, 100])])),
        vec![-128, 6]
    );
    let c = t(&[2, 1], vec![true, false]);
    let a = t(&[1, 2], vec![1i32, 2]);
    let b = t(&[2, 2], vec![10i32, 20, 30, 40]);
    let r = run(&Op::Select, &[&c, &a, &b]);
    assert_eq!(vals::<i32>(&r), vec![1, 2, 30, 40]);
}

#[test]
fn cast_semantics() {
    let x = f(&[6], &[-1.7, 300.5, f32::NAN, -300.0, 2.5, 0.0]);
    let cast = |to| run(&Op::Cast { to }, &[&x]);
    assert_eq!(vals::<i8>(&cast(DType::I8)), vec![-1, 127, 0, -128, 2, 0]);
    assert_eq!(vals::<u8>(&cast(DType::U8)), vec![0, 255, 0, 0, 2, 0]);
    assert_eq!(
        vals::<bool>(&cast(DType::Bool)),
        vec![true, true, true, true, true, false]
    );
    let i = t(&[3], vec![300i32, -1, 128]);
    assert_eq!(
        vals::<i8>(&run(&Op::Cast { to: DType::I8 }, &[&i])),
        vec![44, -1, -128]
    );
    assert_eq!(
        vals::<u8>(&run(&Op::Cast { to: DType::U8 }, &[&i])),
        vec![44, 255, 128]
    );
    let b = t(&[2], vec![true, false]);
    assert_eq!(
        vals::<f32>(&run(&Op::Cast { to: DType::F32 }, &[&b])),
        vec![1.0, 0.0]
    );
    let h = f(&[2], &[1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0]);
    let r = run(&Op::Cast { to: DType::F16 }, &[&h]);
    assert_eq!(
        vals::<f16>(&r),
        vec![f16::from_f32(1.0), f16::from_f32(1.0 + 2.0 / 1024.0)]
    );
}

#[test]
fn ill_typed_operands_are_errors() {
    let a = f(&[2], &[1.0, 2.0]);
    let b = t(&[2], vec![1i32, 2]);
    assert!(kiln_operators::evaluate(&Op::Binary(B::Add), &[&a, &b]).is_err());
    assert!(kiln_operators::evaluate(&Op::Binary(B::Add), &[&a]).is_err());
    assert!(kiln_operators::evaluate(&Op::Unary(U::Exp), &[&b]).is_err());
}
