//! f32 convolutions whose sum is one fma chain over `(c, ky, kx)` (`ConvAttrs::fma`, the float
//! convolutions onnxruntime runs between int8 ones) compiled for this machine and for every
//! built-in x86-64 target it runs, against the reference interpreter bit for bit: random shapes
//! (ragged channels and tiles, strides, dilation, padding), a residual input, and sometimes
//! onnxruntime's quantisation after it (a converting epilogue). Targets this machine cannot run
//! are skipped with a notice.

mod common;

use kiln::{CompileOptions, Compiler, Target, Tensor};
use kiln_ir::parse_graph;
use proptest::prelude::*;

fn targets() -> Vec<Target> {
    common::runnable_targets("fma convolutions")
}

/// Deterministic floats of mixed magnitudes (a few zeros among them).
fn floats(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let m = ((s >> 11) % 2001) as f32 - 1000.0;
            let e = ((s >> 40) % 7) as i32 - 3;
            if s.is_multiple_of(17) {
                0.0
            } else {
                m / 1000.0 * 2f32.powi(e)
            }
        })
        .collect()
}

fn list(v: &[f32]) -> String {
    v.iter()
        .map(|x| format!("{x:e}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Clone, Debug)]
struct Case {
    cin: usize,
    cout: usize,
    hw: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    quantize: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..=20,
        1usize..=40,
        3usize..=10,
        prop_oneof![Just(1usize), Just(3)],
        1usize..=2,
        1usize..=2,
        0usize..=2,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(cin, cout, hw, k, stride, dilation, pad, quantize, seed)| Case {
                cin,
                cout,
                hw: hw.max(dilation * (k - 1) + 1),
                k,
                stride,
                dilation,
                pad: pad.min(k / 2 * dilation),
                quantize,
                seed,
            },
        )
}

/// The graph of `c` (`y = conv(x) + r`, quantized to i8 or not) and its inputs.
fn graph(c: &Case) -> (kiln::Graph, Vec<Tensor>) {
    let span = c.dilation * (c.k - 1) + 1;
    let ho = (c.hw + 2 * c.pad - span) / c.stride + 1;
    let (ci, co, k, p) = (c.cin, c.cout, c.k, c.pad);
    let w = floats(co * ci * k * k, c.seed);
    let b = floats(co, c.seed ^ 0x55);
    let out = format!("[1,{co},{ho},{ho}]");
    let tail = if c.quantize {
        format!(
            "  %7: f32{out} = mul(%6, %5)
  %8: f32{out} = round(%7)
  %9: f32{out} = clamp(%8) {{\"max\":127.0,\"min\":-128.0}}
  %10: i8{out} = cast(%9) {{\"to\":\"i8\"}}
  output %10"
        )
    } else {
        "  output %6".to_string()
    };
    let text = format!(
        "graph {{
  const @0: f32[{co},{ci},{k},{k}] = [{w}]
  const @1: f32[{co}] = [{b}]
  const @2: f32[1,1,1,1] = [7.5]
  input %0 \"x\": f32[1,{ci},{hw},{hw}]
  input %1 \"r\": f32{out}
  %2: f32[{co},{ci},{k},{k}] = const(@0)
  %3: f32[{co}] = const(@1)
  %4: f32{out} = conv2d(%0, %2, %3) {{\"dilation\":[{d},{d}],\"fma\":true,\"input_zp\":0,\"pad\":[{p},{p},{p},{p}],\"stride\":[{s},{s}],\"weight_zp\":0}}
  %5: f32[1,1,1,1] = const(@2)
  %6: f32{out} = add(%4, %1)
{tail}
}}",
        w = list(&w),
        b = list(&b),
        d = c.dilation,
        s = c.stride,
        hw = c.hw,
    );
    let g = parse_graph(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let x = Tensor::new(
        vec![1, ci, c.hw, c.hw],
        floats(ci * c.hw * c.hw, c.seed ^ 1),
    )
    .unwrap();
    let r = Tensor::new(vec![1, co, ho, ho], floats(co * ho * ho, c.seed ^ 2)).unwrap();
    (g, vec![x, r])
}

/// Bit patterns of a tensor's elements (f32 compared bit for bit: signed zeros count).
fn bits(t: &Tensor) -> Vec<u64> {
    match t.as_slice::<f32>() {
        Some(v) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
        None => t.data().to_f64_vec().iter().map(|x| x.to_bits()).collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn fma_convolutions_match_the_reference_bit_for_bit(c in case()) {
        let (g, inputs) = graph(&c);
        let want = kiln_reference::run(&g, &inputs).unwrap();
        for target in targets() {
            let name = target.name().to_string();
            let compiled = Compiler::new(target)
                .with_options(CompileOptions { threads: 1, ..Default::default() })
                .compile(&g)
                .unwrap();
            let got = compiled.run(&inputs).unwrap();
            prop_assert_eq!(bits(&got[0]), bits(&want[0]), "{}: {:?}", name, c);
        }
    }
}

/// On targets with micro-kernels the chain runs tensorized, in its own order.
#[test]
fn fma_convolutions_are_tensorized_where_the_target_has_kernels() {
    for target in targets() {
        let c = Case {
            cin: 16,
            cout: 16,
            hw: 10,
            k: 3,
            stride: 1,
            dilation: 1,
            pad: 1,
            quantize: true,
            seed: 9,
        };
        let (g, inputs) = graph(&c);
        let compiled = Compiler::new(target.clone()).compile(&g).unwrap();
        let name = target.name();
        if target.microkernels().is_some() {
            assert!(
                compiled.kernels().iter().any(|k| k.tensorized),
                "{name}: no tensorized kernel"
            );
        } else {
            println!("notice: {name} has no micro-kernels; the fma convolution ran as loops");
        }
        let want = kiln_reference::run(&g, &inputs).unwrap();
        assert_eq!(bits(&compiled.run(&inputs).unwrap()[0]), bits(&want[0]));
    }
}
