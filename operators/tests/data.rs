//! Reductions, movement, quantisation and resize against hand-computed (or onnx.reference) values.
mod common;
use common::*;
use kiln_ir::op::{
    CoordinateTransform as CT, NearestRounding as NR, PadMode, ReduceOp, RescaleAttrs, ResizeAttrs,
    ResizeMode, RoundingMode,
};
use kiln_ir::{DType, Op, OrderedF64, Tensor};

#[test]
fn reductions_and_empty_axes() {
    let x = f(&[2, 3], &[1.0, 5.0, 3.0, -1.0, 2.0, 4.0]);
    let red = |kind, axis| Op::Reduce { kind, axis };
    assert_eq!(
        vals::<f32>(&run(&red(ReduceOp::Sum, 1), &[&x])),
        vec![9.0, 5.0]
    );
    assert_eq!(
        vals::<f32>(&run(&red(ReduceOp::Max, 0), &[&x])),
        vec![1.0, 5.0, 4.0]
    );
    assert_eq!(run(&red(ReduceOp::Max, 0), &[&x]).shape(), &[1, 3]);
    assert_eq!(
        vals::<f32>(&run(&red(ReduceOp::Product, 1), &[&x])),
        vec![15.0, -8.0]
    );
    let e = f(&[2, 0], &[]);
    assert_eq!(
        vals::<f32>(&run(&red(ReduceOp::Sum, 1), &[&e])),
        vec![0.0; 2]
    );
    assert_eq!(
        vals::<f32>(&run(&red(ReduceOp::Product, 1), &[&e])),
        vec![1.0; 2]
    );
    assert_eq!(
        vals::<f32>(&run(&red(ReduceOp::Max, 1), &[&e])),
        vec![f32::NEG_INFINITY; 2]
    );
    let ei = t::<i8>(&[1, 0], vec![]);
    assert_eq!(vals::<i8>(&run(&red(ReduceOp::Min, 1), &[&ei])), vec![127]);
    assert_eq!(vals::<i8>(&run(&red(ReduceOp::Max, 1), &[&ei])), vec![-128]);
    let eb = t::<bool>(&[0, 2], vec![]);
    assert_eq!(
        vals::<bool>(&run(&red(ReduceOp::All, 0), &[&eb])),
        vec![true; 2]
    );
    assert_eq!(
        vals::<bool>(&run(&red(ReduceOp::Any, 0), &[&eb])),
        vec![false; 2]
    );
    let xi = t(&[3], vec![100i8, 100, 100]);
    assert_eq!(vals::<i8>(&run(&red(ReduceOp::Sum, 0), &[&xi])), vec![44]);
}

#[test]
fn argmax_takes_first_maximum() {
    let x = f(&[2, 4], &[1.0, 3.0, 3.0, 2.0, 0.0, f32::NAN, 9.0, f32::NAN]);
    let r = run(&Op::ArgMax { axis: 1 }, &[&x]);
    assert_eq!(r.shape(), &[2]);
    assert_eq!(vals::<i32>(&r), vec![1, 1]);
    let r = run(&Op::ArgMax { axis: 0 }, &[&t(&[2, 2], vec![1u8, 7, 1, 8])]);
    assert_eq!(vals::<i32>(&r), vec![0, 1]);
}

fn iota(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    t(shape, (0..n as i32).collect())
}

#[test]
fn reshape_transpose_concat() {
    let x = iota(&[2, 3]);
    let r = run(&Op::Reshape { shape: vec![3, 2] }, &[&x]);
    assert_eq!(
        (r.shape(), vals::<i32>(&r)),
        (&[3usize, 2][..], vec![0, 1, 2, 3, 4, 5])
    );
    let r = run(&Op::Transpose { perm: vec![1, 0] }, &[&x]);
    assert_eq!(vals::<i32>(&r), vec![0, 3, 1, 4, 2, 5]);
    let y = iota(&[2, 3, 4]);
    let r = run(
        &Op::Transpose {
            perm: vec![2, 0, 1],
        },
        &[&y],
    );
    assert_eq!(r.shape(), &[4, 2, 3]);
    assert_eq!(&vals::<i32>(&r)[..7], &[0, 4, 8, 12, 16, 20, 1]);
    let z = t(&[2, 1], vec![10i32, 11]);
    let r = run(&Op::Concat { axis: 1 }, &[&x, &z, &x]);
    assert_eq!(
        vals::<i32>(&r),
        vec![0, 1, 2, 10, 0, 1, 2, 3, 4, 5, 11, 3, 4, 5]
    );
    assert!(
        kiln_operators::evaluate(&Op::Concat { axis: 0 }, &[&x, &f(&[1, 3], &[0.0; 3])]).is_err()
    );
}

#[test]
fn slice_pad_tile_reverse() {
    let x = iota(&[2, 5]);
    let op = Op::Slice {
        start: vec![1, 1],
        size: vec![1, 2],
        stride: vec![1, 3],
    };
    assert_eq!(vals::<i32>(&run(&op, &[&x])), vec![6, 9]);
    let v = iota(&[1, 3]);
    let pad = |mode| Op::Pad {
        pads: vec![[0, 0], [2, 2]],
        mode,
        value: OrderedF64(-1.0),
    };
    assert_eq!(
        vals::<i32>(&run(&pad(PadMode::Constant), &[&v])),
        vec![-1, -1, 0, 1, 2, -1, -1]
    );
    assert_eq!(
        vals::<i32>(&run(&pad(PadMode::Reflect), &[&v])),
        vec![2, 1, 0, 1, 2, 1, 0]
    );
    assert_eq!(
        vals::<i32>(&run(&pad(PadMode::Edge), &[&v])),
        vec![0, 0, 0, 1, 2, 2, 2]
    );
    let op = Op::Pad {
        pads: vec![[1, 0]],
        mode: PadMode::Constant,
        value: OrderedF64(300.0),
    };
    assert_eq!(vals::<u8>(&run(&op, &[&t(&[1], vec![7u8])])), vec![255, 7]);
    let r = run(
        &Op::Tile {
            multiples: vec![2, 2],
        },
        &[&v],
    );
    assert_eq!(vals::<i32>(&r), vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]);
    assert_eq!(
        vals::<i32>(&run(&Op::Reverse { axis: 1 }, &[&x])),
        vec![4, 3, 2, 1, 0, 9, 8, 7, 6, 5]
    );
    assert_eq!(
        vals::<i32>(&run(&Op::Reverse { axis: 0 }, &[&v])),
        vec![0, 1, 2]
    );
}

#[test]
fn gather_with_negative_and_bad_indices() {
    let x = f(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let idx = t(&[2, 2], vec![0i64, -1, 1, 2]);
    let r = run(&Op::Gather { axis: 0 }, &[&x, &idx]);
    assert_eq!(r.shape(), &[2, 2, 2]);
    assert_eq!(
        vals::<f32>(&r),
        vec![1.0, 2.0, 5.0, 6.0, 3.0, 4.0, 5.0, 6.0]
    );
    let r = run(&Op::Gather { axis: 1 }, &[&x, &Tensor::scalar(-1i32)]);
    assert_eq!(
        (r.shape(), vals::<f32>(&r)),
        (&[3usize][..], vec![2.0, 4.0, 6.0])
    );
    assert!(
        kiln_operators::evaluate(&Op::Gather { axis: 0 }, &[&x, &t(&[1], vec![3i32])]).is_err()
    );
    assert!(
        kiln_operators::evaluate(&Op::Gather { axis: 0 }, &[&x, &t(&[1], vec![-4i32])]).is_err()
    );
}

#[test]
fn gather_elements_matches_onnx_example() {
    let x = iota(&[3, 3]);
    let idx = t(&[2, 3], vec![1i32, 2, 0, 2, 0, -3]);
    let r = run(&Op::GatherElements { axis: 0 }, &[&x, &idx]);
    assert_eq!(vals::<i32>(&r), vec![3, 7, 2, 6, 1, 2]);
    let idx = t(&[2, 2], vec![0i64, 0, 1, 0]);
    let r = run(&Op::GatherElements { axis: 1 }, &[&iota(&[2, 2]), &idx]);
    assert_eq!(vals::<i32>(&r), vec![0, 0, 3, 2]);
    let bad = t(&[1, 1], vec![5i64]);
    assert!(
        kiln_operators::evaluate(&Op::GatherElements { axis: 1 }, &[&iota(&[2, 2]), &bad]).is_err()
    );
}

fn rescale(
    to: DType,
    m: Vec<i32>,
    s: Vec<u8>,
    zps: (i32, i32),
    rounding: RoundingMode,
    axis: Option<usize>,
) -> Op {
    Op::Rescale(RescaleAttrs {
        to,
        multiplier: m,
        shift: s,
        input_zp: zps.0,
        output_zp: zps.1,
        scale32: true,
        rounding,
        channel_axis: axis,
    })
}

#[test]
fn rescale_single_round_is_half_up() {
    // x * 2^30 / 2^31 = x / 2: 2.5 -> 3, -2.5 -> -2.
    let op = rescale(
        DType::I32,
        vec![1 << 30],
        vec![31],
        (0, 0),
        RoundingMode::Single,
        None,
    );
    let r = run(&op, &[&t(&[4], vec![5i32, -5, 3, -3])]);
    assert_eq!(vals::<i32>(&r), vec![3, -2, 2, -1]);
}

#[test]
fn rescale_double_round_only_above_shift_31() {
    // x * 2^30 / 2^32 = x / 4, hand-evaluated with TOSA apply_scale_32.
    let x = t(&[4], vec![6i32, -6, 2, -2]);
    let single = rescale(
        DType::I32,
        vec![1 << 30],
        vec![32],
        (0, 0),
        RoundingMode::Single,
        None,
    );
    let double = rescale(
        DType::I32,
        vec![1 << 30],
        vec![32],
        (0, 0),
        RoundingMode::Double,
        None,
    );
    assert_eq!(vals::<i32>(&run(&single, &[&x])), vec![2, -1, 1, 0]);
    assert_eq!(vals::<i32>(&run(&double, &[&x])), vec![2, -2, 1, -1]);
    // At shift 31 double rounding is the same as single.
    let double31 = rescale(
        DType::I32,
        vec![1 << 30],
        vec![31],
        (0, 0),
        RoundingMode::Double,
        None,
    );
    assert_eq!(
        vals::<i32>(&run(&double31, &[&t(&[2], vec![5i32, -5])])),
        vec![3, -2]
    );
}

#[test]
fn rescale_zero_points_saturation_and_channels() {
    let op = rescale(
        DType::U8,
        vec![1 << 30],
        vec![31],
        (-128, 0),
        RoundingMode::Single,
        None,
    );
    assert_eq!(
        vals::<u8>(&run(&op, &[&t(&[3], vec![-128i8, 0, 127])])),
        vec![0, 64, 128]
    );
    let op = rescale(
        DType::I8,
        vec![1 << 30],
        vec![30],
        (0, 3),
        RoundingMode::Single,
        None,
    );
    assert_eq!(
        vals::<i8>(&run(&op, &[&t(&[3], vec![1000i32, -1000, 4])])),
        vec![127, -128, 7]
    );
    let op = rescale(
        DType::I16,
        vec![1 << 30, 1 << 30],
        vec![30, 31],
        (0, 0),
        RoundingMode::Single,
        Some(1),
    );
    let r = run(&op, &[&t(&[1, 2, 2], vec![3i32, 4, 3, 5])]);
    assert_eq!(vals::<i16>(&r), vec![3, 4, 2, 3]);
    let mut attrs = RescaleAttrs {
        to: DType::I8,
        multiplier: vec![16384],
        shift: vec![15],
        input_zp: 0,
        output_zp: 0,
        scale32: false,
        rounding: RoundingMode::Single,
        channel_axis: None,
    };
    // apply_scale_16: 16384 / 2^15 = 0.5.
    assert_eq!(
        vals::<i8>(&run(
            &Op::Rescale(attrs.clone()),
            &[&t(&[2], vec![5i16, -5])]
        )),
        vec![3, -2]
    );
    attrs.shift = vec![1];
    assert!(kiln_operators::evaluate(&Op::Rescale(attrs), &[&t(&[1], vec![5i16])]).is_err());
}

#[test]
fn table_looks_up_x_plus_128() {
    let table = t(
        &[256],
        (0..256).map(|i| ((i * 3) % 256) as u8 as i8).collect(),
    );
    let r = run(&Op::Table, &[&t(&[3], vec![-128i8, 0, 127]), &table]);
    assert_eq!(vals::<i8>(&r), vec![0, -128, -3]);
}

fn resize(size: [usize; 4], mode: ResizeMode, ct: CT) -> ResizeAttrs {
    ResizeAttrs {
        scales: vec![
            1.0,
            1.0,
            (size[2] as f64 / 4.0) as f32,
            (size[3] as f64 / 4.0) as f32,
        ],
        size: size.to_vec(),
        mode,
        coordinate_transform: ct,
        cubic_coeff_a: -0.75,
        ..Default::default()
    }
}

fn sixteen() -> Tensor {
    f(
        &[1, 1, 4, 4],
        &(1..=16).map(|v| v as f32).collect::<Vec<_>>(),
    )
}

fn resized(a: ResizeAttrs) -> Vec<f32> {
    vals(&run(&Op::Resize(a), &[&sixteen()]))
}

// Expected values below were computed with onnx.reference.ops.op_resize._interpolate_nd.
#[test]
fn resize_linear_and_cubic() {
    let want = [
        1.666_666_6,
        2.366_666_6,
        3.166_666_7,
        3.966_666_7,
        4.666_666_5,
        7.0,
        7.7,
        8.5,
        9.3,
        10.0,
        12.333_333,
        13.033_334,
        13.833_333,
        14.633_333,
        15.333_333,
    ];
    close(
        &resized(resize([1, 1, 3, 5], ResizeMode::Linear, CT::HalfPixel)),
        &want,
        1e-6,
    );
    let want = [1.0, 2.5, 4.0, 7.0, 8.5, 10.0, 13.0, 14.5, 16.0];
    close(
        &resized(resize([1, 1, 3, 3], ResizeMode::Cubic, CT::AlignCorners)),
        &want,
        1e-6,
    );
    let mut a = resize([1, 1, 3, 5], ResizeMode::Cubic, CT::HalfPixel);
    a.cubic_coeff_a = -0.5;
    a.exclude_outside = true;
    let want = [
        1.368_109_3,
        2.059_464,
        2.911_378_6,
        3.763_293_3,
        4.454_648,
        6.956_731,
        7.648_085,
        8.5,
        9.351_914,
        10.043_269,
        12.545_352,
        13.236_707,
        14.088_621,
        14.940_536,
        15.631_89,
    ];
    close(&resized(a), &want, 1e-6);
    let want = [1.166_666_6, 2.5, 3.833_333_3];
    close(
        &resized(resize(
            [1, 1, 1, 3],
            ResizeMode::Linear,
            CT::PytorchHalfPixel,
        )),
        &want,
        1e-6,
    );
}

#[test]
fn resize_nearest_modes() {
    let mut a = resize([1, 1, 3, 7], ResizeMode::Nearest, CT::Asymmetric);
    a.nearest_rounding = NR::Floor;
    let want = [
        1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6, 7, 7, 8, 9, 9, 10, 10, 11, 11, 12,
    ];
    assert_eq!(resized(a), want.map(|v| v as f32));
    let mut a = resize([1, 1, 3, 7], ResizeMode::Nearest, CT::HalfPixelSymmetric);
    a.nearest_rounding = NR::RoundPreferCeil;
    let want = [
        1, 1, 2, 3, 3, 4, 4, 9, 9, 10, 11, 11, 12, 12, 13, 13, 14, 15, 15, 16, 16,
    ];
    assert_eq!(resized(a), want.map(|v| v as f32));
    // Integers are accepted by nearest and keep their values.
    let x = t(&[1, 3], vec![7i8, -8, 9]);
    let a = ResizeAttrs {
        size: vec![1, 6],
        scales: vec![1.0, 2.0],
        ..Default::default()
    };
    assert_eq!(
        vals::<i8>(&run(&Op::Resize(a), &[&x])),
        vec![7, 7, -8, -8, 9, 9]
    );
}

#[test]
fn resize_tf_crop_and_resize_extrapolates() {
    let mut a = resize([1, 1, 3, 3], ResizeMode::Linear, CT::TfCropAndResize);
    a.roi = vec![0.0, 0.0, 0.4, 0.6, 1.0, 1.0, 0.6, 1.2];
    a.extrapolation_value = 10.0;
    let want = [7.6, 8.5, 10.0, 8.8, 9.7, 10.0, 10.0, 10.9, 10.0];
    close(&resized(a), &want, 1e-6);
}

#[test]
fn resize_with_degenerate_scales_does_not_panic() {
    for scale in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        for ct in [
            CT::Asymmetric,
            CT::HalfPixel,
            CT::AlignCorners,
            CT::TfCropAndResize,
        ] {
            let a = ResizeAttrs {
                size: vec![1, 1, 2, 3],
                scales: vec![1.0, 1.0, scale, scale],
                mode: ResizeMode::Cubic,
                coordinate_transform: ct,
                ..Default::default()
            };
            let r = kiln_operators::evaluate(&Op::Resize(a), &[&sixteen()]).expect("evaluates");
            assert_eq!(r.shape(), &[1, 1, 2, 3]);
        }
    }
}
