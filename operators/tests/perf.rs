//! Throughput smoke test: convolution shapes from mobilenet_v2 at 224x224. Run with
//! `cargo test -p kiln-operators --test perf -- --ignored --nocapture` to print MAC rates.
mod common;
use common::*;
use kiln_ir::op::ConvAttrs;
use kiln_ir::Op;
use std::time::Instant;

fn time_conv(
    name: &str,
    x: [usize; 4],
    w: [usize; 4],
    stride: usize,
    pad: usize,
    depthwise: bool,
) -> f64 {
    let xn: usize = x.iter().product();
    let wn: usize = w.iter().product();
    let xt = f(
        &x,
        &(0..xn).map(|i| (i % 7) as f32 * 0.1).collect::<Vec<_>>(),
    );
    let wt = f(
        &w,
        &(0..wn).map(|i| (i % 5) as f32 * 0.01).collect::<Vec<_>>(),
    );
    let bt = f(&[w[0]], &vec![0.0; w[0]]);
    let attrs = ConvAttrs {
        pad: [pad; 4],
        stride: [stride; 2],
        dilation: [1, 1],
        ..Default::default()
    };
    let op = if depthwise {
        Op::DepthwiseConv2d(attrs)
    } else {
        Op::Conv2d(attrs)
    };
    let start = Instant::now();
    let r = run(&op, &[&xt, &wt, &bt]);
    let secs = start.elapsed().as_secs_f64();
    let macs = (r.shape().iter().product::<usize>() * w[1] * w[2] * w[3]) as f64;
    println!(
        "{name}: {:.1} MMAC in {:.3} s = {:.0} MMAC/s",
        macs / 1e6,
        secs,
        macs / 1e6 / secs
    );
    macs / secs
}

#[test]
#[ignore = "timing only"]
fn mobilenet_shaped_convs() {
    time_conv("stem 3x3/2", [1, 3, 224, 224], [32, 3, 3, 3], 2, 1, false);
    time_conv(
        "depthwise 3x3",
        [1, 96, 112, 112],
        [96, 1, 3, 3],
        1,
        1,
        true,
    );
    time_conv(
        "pointwise 96->24 @56",
        [1, 96, 56, 56],
        [24, 96, 1, 1],
        1,
        0,
        false,
    );
    time_conv(
        "pointwise 160->960 @7",
        [1, 160, 7, 7],
        [960, 160, 1, 1],
        1,
        0,
        false,
    );
}
