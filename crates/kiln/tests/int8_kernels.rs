//! Quantized convolutions and matmuls compiled for this machine and for every built-in x86-64
//! target it runs (through the int8 micro-kernels: AVX-512 VNNI dot products, AVX2 16-bit pair
//! products) against the reference interpreter, exactly: random shapes (channels in and out of
//! quadruples, ragged tiles, strides, padding, depthwise), random activation zero points and
//! signedness, random per-channel scales, and onnxruntime's requantisation
//! `i8(rne(clamp(f32(acc + bias) · scale, lo, hi)) + zp)` after each. Targets this machine
//! cannot run are skipped with a notice.

mod common;

use kiln::{CompileOptions, Compiler, Target, Tensor};
use kiln_ir::{parse_graph, DType};
use proptest::prelude::*;

fn targets() -> Vec<Target> {
    common::runnable_targets("int8 kernels")
}

/// A deterministic stream of small integers.
struct Rng(u64);

impl Rng {
    fn next(&mut self, lo: i64, hi: i64) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + (self.0 >> 11) as i64 % (hi - lo + 1)
    }

    fn list(&mut self, n: usize, lo: i64, hi: i64) -> String {
        let v: Vec<String> = (0..n).map(|_| self.next(lo, hi).to_string()).collect();
        v.join(", ")
    }
}

#[derive(Clone, Debug)]
struct Case {
    op: &'static str,
    cin: usize,
    cout: usize,
    hw: usize,
    k: usize,
    stride: usize,
    pad: usize,
    unsigned: bool,
    zp: i32,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just("conv2d"), Just("depthwise_conv2d"), Just("matmul")],
        1usize..=20,
        1usize..=40,
        1usize..=9,
        prop_oneof![Just(1usize), Just(3)],
        1usize..=2,
        any::<bool>(),
        -20i32..20,
        any::<u64>(),
    )
        .prop_map(|(op, cin, cout, hw, k, stride, unsigned, zp, seed)| Case {
            op,
            cin: if op == "depthwise_conv2d" { cout } else { cin },
            cout,
            hw,
            k,
            stride,
            pad: k / 2,
            unsigned,
            zp,
            seed,
        })
}

/// The graph of `c` and its input.
fn graph(c: &Case) -> (kiln::Graph, Tensor) {
    let mut r = Rng(c.seed | 1);
    let (xd, xzp, lo, hi) = if c.unsigned {
        ("u8", 128 + c.zp, 0, 255)
    } else {
        ("i8", c.zp, -128, 127)
    };
    let scales: Vec<String> = (0..c.cout)
        .map(|_| format!("{}", r.next(1, 400) as f32 * 1e-4))
        .collect();
    let (x_shape, w_shape, acc_shape, scale_shape, op) = if c.op == "matmul" {
        (
            format!("[1,{},{}]", c.hw, c.cin),
            format!("[1,{},{}]", c.cin, c.cout),
            format!("[1,{},{}]", c.hw, c.cout),
            format!("[1,1,{}]", c.cout),
            format!("matmul(%0, %1) {{\"a_zp\":{xzp},\"b_zp\":0}}"),
        )
    } else {
        let ho = (c.hw + 2 * c.pad - c.k) / c.stride + 1;
        let wi = if c.op == "conv2d" { c.cin } else { 1 };
        let p = c.pad;
        (
            format!("[1,{},{},{}]", c.cin, c.hw, c.hw),
            format!("[{},{},{},{}]", c.cout, wi, c.k, c.k),
            format!("[1,{},{},{}]", c.cout, ho, ho),
            format!("[1,{},1,1]", c.cout),
            format!(
                "{}(%0, %1, %2) {{\"dilation\":[1,1],\"input_zp\":{xzp},\"pad\":[{p},{p},{p},{p}],\"stride\":[{s},{s}],\"weight_zp\":0}}",
                c.op,
                s = c.stride
            ),
        )
    };
    let w_len: usize = w_shape
        .trim_matches(|ch| ch == '[' || ch == ']')
        .split(',')
        .map(|d| d.parse::<usize>().unwrap())
        .product();
    let x_dims: Vec<usize> = x_shape
        .trim_matches(|ch| ch == '[' || ch == ']')
        .split(',')
        .map(|d| d.parse().unwrap())
        .collect();
    let bias = if c.op == "matmul" {
        String::new()
    } else {
        format!(
            "  const @3: i32[{}] = [{}]\n  %2: i32[{}] = const(@3)\n",
            c.cout,
            r.list(c.cout, -3000, 3000),
            c.cout
        )
    };
    let text = format!(
        "graph {{
  const @0: i8{w_shape} = [{w}]
  const @1: f32{scale_shape} = [{scales}]
  const @2: f32[1,1,1,1] = [-3]
  input %0 \"x\": {xd}{x_shape}
  %1: i8{w_shape} = const(@0)
{bias}  %3: f32{scale_shape} = const(@1)
  %4: i32{acc_shape} = {op}
  %5: f32{acc_shape} = cast(%4) {{\"to\":\"f32\"}}
  %6: f32{acc_shape} = mul(%5, %3)
  %7: f32{acc_shape} = clamp(%6) {{\"max\":130.0,\"min\":-125.0}}
  %8: f32{acc_shape} = round(%7)
  %9: i8{acc_shape} = cast(%8) {{\"to\":\"i8\"}}
  output %9
}}",
        w = r.list(w_len, -128, 127),
        scales = scales.join(", "),
    )
    .replace("  const @2: f32[1,1,1,1] = [-3]\n", "");
    let g = parse_graph(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let n: usize = x_dims.iter().product();
    let data: Vec<i64> = (0..n).map(|_| r.next(lo, hi)).collect();
    let x = if c.unsigned {
        Tensor::new(x_dims, data.iter().map(|&v| v as u8).collect::<Vec<u8>>())
    } else {
        Tensor::new(x_dims, data.iter().map(|&v| v as i8).collect::<Vec<i8>>())
    }
    .unwrap();
    (g, x)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn quantized_kernels_match_the_reference_exactly(c in case()) {
        let (g, x) = graph(&c);
        let want = kiln_reference::run(&g, std::slice::from_ref(&x)).unwrap();
        for target in targets() {
            let name = target.name().to_string();
            let compiled = Compiler::new(target)
                .with_options(CompileOptions { threads: 1, ..Default::default() })
                .compile(&g)
                .unwrap();
            let got = compiled.run(std::slice::from_ref(&x)).unwrap();
            prop_assert_eq!(got[0].dtype(), DType::I8);
            prop_assert_eq!(&got[0], &want[0], "{}: {:?}", name, c);
        }
    }
}

/// For targets with int8 micro-kernels (x86-64 with AVX2 and up) the cases above run through
/// them (tensorized regions), not only loops; a host without says so.
#[test]
fn quantized_convolutions_are_tensorized_where_the_target_has_int8_kernels() {
    for target in targets() {
        let kernels = target.microkernels().is_some_and(|m| m.int8());
        tensorized_on(&target, kernels);
    }
}

fn tensorized_on(target: &Target, int8_kernels: bool) {
    for op in ["conv2d", "depthwise_conv2d", "matmul"] {
        let c = Case {
            op,
            cin: 16,
            cout: 32,
            hw: 8,
            k: 3,
            stride: 1,
            pad: 1,
            unsigned: false,
            zp: -7,
            seed: 3,
        };
        let c = Case {
            cin: if op == "depthwise_conv2d" { 32 } else { 16 },
            ..c
        };
        let (g, x) = graph(&c);
        let compiled = Compiler::new(target.clone()).compile(&g).unwrap();
        let tensorized = compiled.kernels().iter().any(|k| k.tensorized);
        let name = target.name();
        if int8_kernels {
            assert!(tensorized, "{name}, {op}: no tensorized kernel");
        } else {
            println!("notice: {name} has no int8 kernels; {op} ran as loops");
        }
        let want = kiln_reference::run(&g, std::slice::from_ref(&x)).unwrap();
        assert_eq!(compiled.run(&[x]).unwrap()[0], want[0], "{op}");
    }
}

/// A float pointwise convolution in MLAS's order (an fma MATMUL over `[1, H·W, C]`) reshaped
/// back to `[1, H, W, O]` and quantized as onnxruntime's QuantizeLinear does: the quantisation
/// moves above the reshape into the matmul's epilogue (on x86-64, a converting micro-kernel
/// epilogue) and the result is the reference's exactly.
fn float_conv_then_quantize(hw: usize, cin: usize, cout: usize, zp: i32, seed: u64) -> String {
    let mut r = Rng(seed | 1);
    let floats = |r: &mut Rng, n: usize, scale: f64| {
        let v: Vec<String> = (0..n)
            .map(|_| format!("{}", r.next(-1000, 1000) as f64 * scale))
            .collect();
        v.join(", ")
    };
    let n = hw * hw;
    format!(
        "graph {{
  const @0: f32[1,{cin},{cout}] = [{w}]
  const @1: f32[1,1,{cout}] = [{b}]
  const @2: f32[1,1,1,1] = [0.0371]
  const @3: f32[1,1,1,1] = [{zp}]
  input %0 \"x\": f32[1,{n},{cin}]
  %1: f32[1,{cin},{cout}] = const(@0)
  %2: f32[1,1,{cout}] = const(@1)
  %3: f32[1,1,1,1] = const(@2)
  %4: f32[1,1,1,1] = const(@3)
  %5: f32[1,{n},{cout}] = matmul(%0, %1) {{\"a_zp\":0,\"b_zp\":0,\"fma\":true}}
  %6: f32[1,{n},{cout}] = add(%5, %2)
  %7: f32[1,{hw},{hw},{cout}] = reshape(%6) {{\"shape\":[1,{hw},{hw},{cout}]}}
  %8: f32[1,{hw},{hw},{cout}] = div(%7, %3)
  %9: f32[1,{hw},{hw},{cout}] = round(%8)
  %10: f32[1,{hw},{hw},{cout}] = add(%9, %4)
  %11: f32[1,{hw},{hw},{cout}] = clamp(%10) {{\"max\":127.0,\"min\":-128.0}}
  %12: i8[1,{hw},{hw},{cout}] = cast(%11) {{\"to\":\"i8\"}}
  output %12
}}",
        w = floats(&mut r, cin * cout, 1e-3),
        b = floats(&mut r, cout, 1e-3),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn quantized_float_convolutions_match_the_reference_exactly(
        hw in 1usize..=9, cin in 1usize..=40, cout in 1usize..=40, zp in -20i32..20,
        seed in any::<u64>(),
    ) {
        let g = parse_graph(&float_conv_then_quantize(hw, cin, cout, zp, seed)).unwrap();
        let mut r = Rng(seed ^ 0x9e37);
        let data: Vec<f32> = (0..hw * hw * cin).map(|_| r.next(-4000, 4000) as f32 / 1000.0).collect();
        let x = Tensor::new(vec![1, hw * hw, cin], data).unwrap();
        let want = kiln_reference::run(&g, std::slice::from_ref(&x)).unwrap();
        for target in targets() {
            let name = target.name().to_string();
            let compiled = Compiler::new(target)
                .with_options(CompileOptions { threads: 1, ..Default::default() })
                .compile(&g)
                .unwrap();
            prop_assert_eq!(&compiled.run(std::slice::from_ref(&x)).unwrap()[0], &want[0], "{}", name);
        }
    }
}

/// On x86-64 (AVX2 and up) the quantisation after a float convolution is the epilogue of its
/// micro-kernel: one kernel, tensorized; a host without says so.
#[test]
fn quantization_after_a_float_convolution_fuses_into_its_kernel() {
    let g = parse_graph(&float_conv_then_quantize(8, 24, 32, -5, 7)).unwrap();
    for target in targets() {
        let converting = target
            .microkernels()
            .is_some_and(|m| m.converting_epilogues());
        let compiled = Compiler::new(target.clone()).compile(&g).unwrap();
        let kernels = compiled.kernels();
        if converting {
            assert_eq!(kernels.len(), 1, "{}: {kernels:?}", target.name());
            assert!(kernels[0].tensorized);
        } else {
            println!(
                "notice: {} has no converting epilogues; the quantisation ran as its own loop",
                target.name()
            );
        }
    }
}

/// A product of two int8 activations (attention's Q·K^T in a quantised transformer): the
/// integer micro-kernels read weights packed in quadruples when the kernel is compiled, which
/// an activation cannot be, so it takes the vector-code sketch (4x faster than a tensorized
/// region over an unpacked operand) and computes exactly what the reference does.
#[test]
fn an_int8_product_of_two_activations_is_exact_and_not_tensorized() {
    let text = r#"graph {
  input %0 "a": i8[1,64,64]
  input %1 "b": i8[1,64,64]
  %2: i32[1,64,64] = matmul(%0, %1) {"a_zp":3,"b_zp":-2}
  output %2
}"#;
    let g = parse_graph(text).unwrap();
    let values = |seed: usize| -> Vec<i8> {
        (0..64 * 64)
            .map(|i| ((i * 37 + seed * 11) % 255) as i32 - 127)
            .map(|v| v as i8)
            .collect()
    };
    let inputs = [
        Tensor::new(vec![1, 64, 64], values(1)).unwrap(),
        Tensor::new(vec![1, 64, 64], values(2)).unwrap(),
    ];
    let want = kiln_reference::run(&g, &inputs).unwrap();
    for target in targets() {
        let options = CompileOptions {
            threads: 1,
            ..CompileOptions::default()
        };
        let model = Compiler::new(target.clone())
            .with_options(options)
            .compile(&g)
            .unwrap();
        assert!(
            model.kernels().iter().all(|k| !k.tensorized),
            "{}: {:?}",
            target.name(),
            model.kernels()
        );
        assert_eq!(model.run(&inputs).unwrap(), want, "{}", target.name());
    }
}
