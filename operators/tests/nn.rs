//! Convolution, matmul and pooling against hand-computed values.
mod common;
use common::*;
use kiln_ir::op::{ConvAttrs, DataLayout, MatMulAttrs, PoolAttrs, TransposeConvAttrs};
use kiln_ir::Op;

fn conv(pad: [usize; 4], stride: [usize; 2], dilation: [usize; 2]) -> ConvAttrs {
    ConvAttrs {
        pad,
        stride,
        dilation,
        ..Default::default()
    }
}

fn nine() -> kiln_ir::Tensor {
    f(
        &[1, 1, 3, 3],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    )
}

#[test]
fn float_conv_with_bias_stride_pad_dilation() {
    let w = f(&[1, 1, 2, 2], &[1.0, 0.0, 0.0, -1.0]);
    let r = run(
        &Op::Conv2d(conv([0; 4], [1, 1], [1, 1])),
        &[&nine(), &w, &f(&[1], &[0.5])],
    );
    assert_eq!(r.shape(), &[1, 1, 2, 2]);
    assert_eq!(vals::<f32>(&r), vec![-3.5; 4]);
    let r = run(
        &Op::Conv2d(conv([1; 4], [2, 2], [1, 1])),
        &[&nine(), &w, &f(&[1], &[0.0])],
    );
    assert_eq!(vals::<f32>(&r), vec![-1.0, -3.0, -7.0, -4.0]);
    let ones = f(&[1, 1, 2, 2], &[1.0; 4]);
    let r = run(
        &Op::Conv2d(conv([0; 4], [1, 1], [2, 2])),
        &[&nine(), &ones, &f(&[1], &[0.0])],
    );
    assert_eq!(vals::<f32>(&r), vec![20.0]);
}

#[test]
fn conv_sums_over_input_channels() {
    let x = f(&[1, 2, 1, 2], &[1.0, 2.0, 10.0, 20.0]);
    let w = f(&[2, 2, 1, 1], &[1.0, 1.0, 1.0, -1.0]);
    let r = run(
        &Op::Conv2d(conv([0; 4], [1, 1], [1, 1])),
        &[&x, &w, &f(&[2], &[0.0, 1.0])],
    );
    assert_eq!(vals::<f32>(&r), vec![11.0, 22.0, -8.0, -17.0]);
}

#[test]
fn integer_conv_subtracts_zero_points_and_pads_with_input_zp() {
    let x = t(&[1, 1, 2, 2], vec![10u8, 11, 12, 13]);
    let w = t(&[1, 1, 3, 3], vec![4i8; 9]);
    let attrs = ConvAttrs {
        pad: [1; 4],
        stride: [1, 1],
        dilation: [1, 1],
        input_zp: 10,
        weight_zp: 3,
        layout: DataLayout::Nchw,
        fma: false,
    };
    let r = run(&Op::Conv2d(attrs), &[&x, &w, &t(&[1], vec![7i32])]);
    // Every output sees all four inputs: (0 + 1 + 2 + 3) * (4 - 3) + 7.
    assert_eq!(vals::<i32>(&r), vec![13; 4]);
    let w = t(&[1, 1, 1, 1], vec![5i8]);
    let attrs = ConvAttrs {
        pad: [1, 0, 0, 0],
        stride: [1, 1],
        dilation: [1, 1],
        input_zp: 10,
        weight_zp: 3,
        layout: DataLayout::Nchw,
        fma: false,
    };
    let r = run(&Op::Conv2d(attrs), &[&x, &w, &t(&[1], vec![7i32])]);
    assert_eq!(r.shape(), &[1, 1, 3, 2]);
    assert_eq!(vals::<i32>(&r), vec![7, 7, 7, 9, 11, 13]);
}

#[test]
fn depthwise_multiplier_reads_channel_o_div_m() {
    let x = f(&[1, 2, 1, 2], &[1.0, 2.0, 5.0, 6.0]);
    let w = f(&[4, 1, 1, 1], &[1.0, 2.0, 3.0, 4.0]);
    let b = f(&[4], &[0.0, 0.0, 0.0, 100.0]);
    let r = run(
        &Op::DepthwiseConv2d(conv([0; 4], [1, 1], [1, 1])),
        &[&x, &w, &b],
    );
    assert_eq!(
        vals::<f32>(&r),
        vec![1.0, 2.0, 2.0, 4.0, 15.0, 18.0, 120.0, 124.0]
    );
    let xi = t(&[1, 1, 1, 2], vec![-3i8, 5]);
    let wi = t(&[1, 1, 1, 1], vec![2i8]);
    let attrs = ConvAttrs {
        stride: [1, 1],
        dilation: [1, 1],
        input_zp: -3,
        weight_zp: -1,
        ..Default::default()
    };
    let r = run(
        &Op::DepthwiseConv2d(attrs),
        &[&xi, &wi, &t(&[1], vec![1i32])],
    );
    assert_eq!(vals::<i32>(&r), vec![1, 25]);
}

#[test]
fn transpose_conv_scatters_and_crops() {
    let x = f(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let w = f(&[1, 1, 2, 2], &[1.0; 4]);
    let b = f(&[1], &[0.0]);
    let a = |pad, out_pad, s| TransposeConvAttrs {
        pad,
        out_pad,
        stride: [s, s],
        dilation: [1, 1],
        ..Default::default()
    };
    let r = run(&Op::TransposeConv2d(a([0; 4], [0, 0], 1)), &[&x, &w, &b]);
    assert_eq!(
        vals::<f32>(&r),
        vec![1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 3.0, 7.0, 4.0]
    );
    let r = run(
        &Op::TransposeConv2d(a([1, 0, 1, 0], [0, 0], 1)),
        &[&x, &w, &b],
    );
    assert_eq!(vals::<f32>(&r), vec![10.0, 6.0, 7.0, 4.0]);
    let r = run(
        &Op::TransposeConv2d(a([0; 4], [1, 1], 2)),
        &[&x, &w, &f(&[1], &[0.5])],
    );
    assert_eq!(r.shape(), &[1, 1, 5, 5]);
    let v = vals::<f32>(&r);
    assert_eq!(&v[0..5], &[1.5, 1.5, 2.5, 2.5, 0.5]);
    assert_eq!(&v[20..25], &[0.5; 5]);
    let xi = t(&[1, 1, 1, 1], vec![3u8]);
    let wi = t(&[1, 2, 1, 1], vec![1i8, 4]);
    let attrs = TransposeConvAttrs {
        stride: [1, 1],
        dilation: [1, 1],
        input_zp: 1,
        weight_zp: 2,
        ..Default::default()
    };
    let r = run(
        &Op::TransposeConv2d(attrs),
        &[&xi, &wi, &t(&[2], vec![0i32, 10])],
    );
    assert_eq!(vals::<i32>(&r), vec![-2, 14]);
}

#[test]
fn matmul_float_and_integer_zero_points() {
    let a = f(&[1, 2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = f(&[1, 3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    let r = run(&Op::MatMul(MatMulAttrs::default()), &[&a, &b]);
    assert_eq!(vals::<f32>(&r), vec![4.0, 5.0, 10.0, 11.0]);
    let a = t(&[1, 2, 2], vec![1u8, 2, 3, 4]);
    let b = t(&[1, 2, 1], vec![5i8, 6]);
    let r = run(
        &Op::MatMul(MatMulAttrs {
            a_zp: 1,
            b_zp: 5,
            ..Default::default()
        }),
        &[&a, &b],
    );
    assert_eq!(vals::<i32>(&r), vec![1, 3]);
    // Batches are independent.
    let a = f(&[2, 1, 1], &[2.0, 3.0]);
    let b = f(&[2, 1, 1], &[5.0, 7.0]);
    assert_eq!(
        vals::<f32>(&run(&Op::MatMul(MatMulAttrs::default()), &[&a, &b])),
        vec![10.0, 21.0]
    );
}

fn pool(
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 4],
    ceil_mode: bool,
    count_include_pad: bool,
) -> PoolAttrs {
    PoolAttrs {
        kernel,
        stride,
        pad,
        dilation: [1, 1],
        ceil_mode,
        count_include_pad,
        layout: Default::default(),
    }
}

#[test]
fn max_pool_basic_and_integer() {
    let x = f(
        &[1, 1, 4, 4],
        &(1..=16).map(|v| v as f32).collect::<Vec<_>>(),
    );
    let r = run(
        &Op::MaxPool2d(pool([2, 2], [2, 2], [0; 4], false, false)),
        &[&x],
    );
    assert_eq!(vals::<f32>(&r), vec![6.0, 8.0, 14.0, 16.0]);
    let xi = t(&[1, 1, 1, 3], vec![-5i8, -7, -9]);
    let r = run(
        &Op::MaxPool2d(pool([1, 2], [1, 1], [0, 0, 1, 1], false, false)),
        &[&xi],
    );
    // Padding is never read, even when every real value is negative.
    assert_eq!(vals::<i8>(&r), vec![-5, -5, -7, -9]);
}

#[test]
fn avg_pool_padding_counts() {
    let excl = run(
        &Op::AvgPool2d(pool([3, 3], [1, 1], [1; 4], false, false)),
        &[&nine()],
    );
    let incl = run(
        &Op::AvgPool2d(pool([3, 3], [1, 1], [1; 4], false, true)),
        &[&nine()],
    );
    close(&vals::<f32>(&excl)[..5], &[3.0, 3.5, 4.0, 4.5, 5.0], 1e-6);
    close(
        &vals::<f32>(&incl)[..5],
        &[12.0 / 9.0, 21.0 / 9.0, 16.0 / 9.0, 27.0 / 9.0, 5.0],
        1e-6,
    );
}

#[test]
fn ceil_mode_adds_windows_that_start_inside() {
    let x = f(&[1, 1, 1, 5], &[1.0, 2.0, 3.0, 4.0, 5.0]);
    let r = run(
        &Op::MaxPool2d(pool([1, 2], [1, 2], [0; 4], true, false)),
        &[&x],
    );
    assert_eq!(vals::<f32>(&r), vec![2.0, 4.0, 5.0]);
    let r = run(
        &Op::AvgPool2d(pool([1, 2], [1, 2], [0; 4], true, true)),
        &[&x],
    );
    assert_eq!(vals::<f32>(&r), vec![1.5, 3.5, 5.0]);
    let r = run(
        &Op::MaxPool2d(pool([1, 2], [1, 2], [0; 4], false, false)),
        &[&x],
    );
    assert_eq!(vals::<f32>(&r), vec![2.0, 4.0]);
    // With right padding 1 the last ceil window covers [x4, pad, beyond]: the padding counts,
    // the position beyond it does not (values checked with onnx.reference).
    let r = run(
        &Op::AvgPool2d(pool([1, 3], [1, 2], [0, 0, 0, 1], true, true)),
        &[&x],
    );
    assert_eq!(vals::<f32>(&r), vec![2.0, 4.0, 2.5]);
    let r = run(
        &Op::AvgPool2d(pool([1, 3], [1, 2], [0, 0, 0, 1], true, false)),
        &[&x],
    );
    assert_eq!(vals::<f32>(&r), vec![2.0, 4.0, 5.0]);
}

#[test]
fn dilated_pool() {
    let x = f(&[1, 1, 1, 5], &[1.0, 9.0, 2.0, 8.0, 3.0]);
    let attrs = PoolAttrs {
        kernel: [1, 2],
        stride: [1, 1],
        dilation: [1, 2],
        ..Default::default()
    };
    let r = run(&Op::MaxPool2d(attrs.clone()), &[&x]);
    assert_eq!(vals::<f32>(&r), vec![2.0, 9.0, 3.0]);
    let r = run(&Op::AvgPool2d(attrs), &[&x]);
    assert_eq!(vals::<f32>(&r), vec![1.5, 8.5, 2.5]);
}
