//! Tensorization: the `tensorize` schedule primitive, the contraction pattern it wraps and the
//! description code generators build micro-kernels from.

mod common;

use common::*;
use kiln_ir::DType;
use kiln_tir::{
    lower, parse_func, tensorize, ComputeDag, Epilogue, Expr, Instruction as I, Stmt,
    TensorIntrinsic, Trace,
};

fn s(x: &str) -> String {
    x.to_string()
}

/// `out[i, j] = max(Σ_k a[i, k] * b[k, j] + bias[j], 0)`.
fn matmul_bias_relu(m: usize, n: usize, k: usize) -> ComputeDag {
    let mut d = ComputeDag::new();
    let a = d.placeholder("a", DType::F32, &[m, k]).unwrap();
    let b = d.placeholder("b", DType::F32, &[k, n]).unwrap();
    let bias = d.placeholder("bias", DType::F32, &[n]).unwrap();
    let c = d
        .add_stage(
            "c",
            &[("i", m), ("j", n)],
            &[("k", k)],
            Some(kiln_tir::ReduceKind::Sum),
            |x, r| {
                Expr::load(a, vec![x[0].clone(), r[0].clone()])
                    * Expr::load(b, vec![r[0].clone(), x[1].clone()])
            },
        )
        .unwrap();
    d.add_stage("out", &[("i", m), ("j", n)], &[], None, |x, _| {
        Expr::max(
            Expr::load(c, x.to_vec()) + Expr::load(bias, vec![x[1].clone()]),
            Expr::f32(0.0),
        )
    })
    .unwrap();
    d
}

/// Tiles `out` by `mr x nr`, computes `c` in the tile (reduction outside) and tensorizes.
fn tile_trace(mr: usize, nr: usize, tensorize: bool) -> Trace {
    let mut t = vec![
        I::Split {
            stage: s("out"),
            loop_: s("i"),
            factors: vec![mr],
        },
        I::Split {
            stage: s("out"),
            loop_: s("j"),
            factors: vec![nr],
        },
        I::Reorder {
            stage: s("out"),
            order: vec![s("i.0"), s("j.0"), s("i.1"), s("j.1")],
        },
        I::ComputeAt {
            stage: s("c"),
            target_stage: s("out"),
            target_loop: s("j.0"),
        },
        I::Reorder {
            stage: s("c"),
            order: vec![s("k"), s("i"), s("j")],
        },
    ];
    if tensorize {
        t.push(I::Tensorize {
            stage: s("out"),
            loop_: s("j.0"),
            intrinsic: TensorIntrinsic::Contraction,
        });
    }
    Trace(t)
}

fn tensorized_bodies(s: &Stmt) -> Vec<Stmt> {
    let mut out = vec![];
    s.walk(&mut |x| {
        if let Stmt::Tensorized { body, .. } = x {
            out.push((**body).clone());
        }
    });
    out
}

#[test]
fn a_tiled_matmul_tensorizes_into_one_contraction_per_tile() {
    let (m, n, k) = (6, 16, 5);
    let dag = matmul_bias_relu(m, n, k);
    let sched = tile_trace(3, 8, true).apply(&dag).unwrap();
    let f = lower(&dag, &sched).unwrap();
    let bodies = tensorized_bodies(&f.body);
    assert_eq!(bodies.len(), 1, "{f}");
    let c = tensorize::analyze(TensorIntrinsic::Contraction, &bodies[0], &f).unwrap();
    assert_eq!((c.rows, c.cols, c.reduce.clone()), (3, 8, vec![k]));
    // a: broadcast along columns, k contiguous; b: a contiguous row of the panel per k.
    assert_eq!(
        (c.lhs.row, c.lhs.col, c.lhs.reduce.clone()),
        (k as i64, 0, vec![1])
    );
    assert_eq!(
        (c.rhs.row, c.rhs.col, c.rhs.reduce.clone()),
        (0, 1, vec![n as i64])
    );
    assert_eq!((c.out.row, c.out.col), (n as i64, 1));
    assert_eq!(c.inputs.len(), 1);
    assert_eq!((c.inputs[0].row, c.inputs[0].col), (0, 1));
    assert!(matches!(
        c.epilogue,
        Epilogue::Binary(kiln_tir::BinOp::Max, _, _)
    ));
    assert_eq!(c.macs(), (3 * 8 * k) as u64);
    // The update is an explicit fma, and the function computes the untensorized result.
    assert!(f.to_string().contains("fma("), "{f}");
    let plain = lower(&dag, &tile_trace(3, 8, false).apply(&dag).unwrap()).unwrap();
    let inputs = inputs_for(&dag, 7);
    assert_eq!(run(&f, &dag, &inputs), run(&plain, &dag, &inputs));
}

#[test]
fn a_ragged_row_split_tensorizes_with_a_row_limit() {
    // 7 rows in tiles of 3: 3 + 3 + 1; every nest guards `i.0 * 3 + i < 7`.
    let (m, n, k) = (7, 16, 5);
    let dag = matmul_bias_relu(m, n, k);
    let f = lower(&dag, &tile_trace(3, 8, true).apply(&dag).unwrap()).unwrap();
    let bodies = tensorized_bodies(&f.body);
    let c = tensorize::analyze(TensorIntrinsic::Contraction, &bodies[0], &f).unwrap();
    let limit = c.row_limit.clone().expect("a row limit");
    assert_eq!((c.rows, limit.bound, limit.tail(c.rows)), (3, 7, 1));
    assert_eq!(c.lhs.row, k as i64);
    // Interpreted, it computes what the untensorized schedule computes.
    let plain = lower(&dag, &tile_trace(3, 8, false).apply(&dag).unwrap()).unwrap();
    let inputs = inputs_for(&dag, 11);
    assert_eq!(run(&f, &dag, &inputs), run(&plain, &dag, &inputs));
    // A divisible split has no limit.
    let dag = matmul_bias_relu(6, n, k);
    let f = lower(&dag, &tile_trace(3, 8, true).apply(&dag).unwrap()).unwrap();
    let c = tensorize::analyze(
        TensorIntrinsic::Contraction,
        &tensorized_bodies(&f.body)[0],
        &f,
    )
    .unwrap();
    assert_eq!(c.row_limit, None);
}

#[test]
fn tensorized_functions_print_and_parse_back() {
    let dag = matmul_bias_relu(4, 8, 3);
    let f = lower(&dag, &tile_trace(2, 4, true).apply(&dag).unwrap()).unwrap();
    let text = f.to_string();
    assert!(text.contains("tensorize.contraction {"), "{text}");
    let back = parse_func(&text).unwrap();
    assert_eq!(back.to_string(), text);
    assert_eq!(back, f.canonicalize());
}

#[test]
fn a_loop_whose_body_is_not_a_contraction_does_not_lower() {
    let dag = matmul_bias_relu(4, 8, 3);
    // Tensorizing the outer tile loop: its body holds the tile loops of several tiles.
    let mut t = tile_trace(2, 4, false).0;
    t.push(I::Tensorize {
        stage: s("out"),
        loop_: s("i.0"),
        intrinsic: TensorIntrinsic::Contraction,
    });
    let e = lower(&dag, &Trace(t).apply(&dag).unwrap()).unwrap_err();
    assert!(e.to_string().contains("tensorize contraction"), "{e}");
    // The naive schedule: no tile buffer at all.
    let e = lower(
        &dag,
        &Trace(vec![I::Tensorize {
            stage: s("out"),
            loop_: s("i"),
            intrinsic: TensorIntrinsic::Contraction,
        }])
        .apply(&dag)
        .unwrap(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("tensorize"), "{e}");
}

#[test]
fn tensorized_loops_cannot_be_split_fused_vectorized_or_tensorized_twice() {
    let dag = matmul_bias_relu(4, 8, 3);
    for extra in [
        I::Split {
            stage: s("out"),
            loop_: s("j.0"),
            factors: vec![2],
        },
        I::Fuse {
            stage: s("out"),
            loops: vec![s("i.0"), s("j.0")],
        },
        I::Vectorize {
            stage: s("out"),
            loop_: s("j.0"),
        },
        I::Tensorize {
            stage: s("out"),
            loop_: s("i.0"),
            intrinsic: TensorIntrinsic::Contraction,
        },
    ] {
        let mut t = tile_trace(2, 4, true).0;
        t.push(extra.clone());
        let e = Trace(t).apply(&dag).unwrap_err().to_string();
        // Split and fuse meet the compute-at target first; both refusals name the loop.
        assert!(
            e.contains("tensorized") || e.contains("computed at this loop"),
            "{extra:?} was not refused: {e}"
        );
    }
    // A tensorized loop that is no compute-at target cannot be split either.
    let e = Trace(vec![
        I::Tensorize {
            stage: s("c"),
            loop_: s("i"),
            intrinsic: TensorIntrinsic::Contraction,
        },
        I::Split {
            stage: s("c"),
            loop_: s("i"),
            factors: vec![2],
        },
    ])
    .apply(&dag)
    .unwrap_err();
    assert!(e.to_string().contains("the loop is tensorized"), "{e}");
}

#[test]
fn a_convolution_tile_is_a_contraction_with_a_broadcast_weight() {
    // NCHW conv: tile (o.i x ow.i), ow contiguous in the output and the padded input.
    let p = Conv {
        n: 1,
        c: 3,
        h: 6,
        w: 8,
        o: 4,
        kh: 3,
        kw: 3,
        pad: 1,
        stride: 1,
    };
    let dag = p.dag();
    let t = Trace(vec![
        I::Split {
            stage: s("out"),
            loop_: s("o"),
            factors: vec![2],
        },
        I::Split {
            stage: s("out"),
            loop_: s("ow"),
            factors: vec![4],
        },
        I::Reorder {
            stage: s("out"),
            order: vec![s("n"), s("o.0"), s("oh"), s("ow.0"), s("o.1"), s("ow.1")],
        },
        I::ComputeAt {
            stage: s("conv"),
            target_stage: s("out"),
            target_loop: s("ow.0"),
        },
        I::Reorder {
            stage: s("conv"),
            order: vec![s("rc"), s("ry"), s("rx"), s("n"), s("o"), s("oh"), s("ow")],
        },
        I::Tensorize {
            stage: s("out"),
            loop_: s("ow.0"),
            intrinsic: TensorIntrinsic::Contraction,
        },
    ]);
    let f = lower(&dag, &t.apply(&dag).unwrap()).unwrap();
    let bodies = tensorized_bodies(&f.body);
    assert_eq!(bodies.len(), 1, "{f}");
    let c = tensorize::analyze(TensorIntrinsic::Contraction, &bodies[0], &f).unwrap();
    let (ph, pw) = (p.h + 2, p.w + 2);
    assert_eq!((c.rows, c.cols, c.reduce.clone()), (2, 4, vec![3, 3, 3]));
    assert_eq!(
        (c.lhs.row, c.lhs.col, c.lhs.reduce.clone()),
        (0, 1, vec![(ph * pw) as i64, pw as i64, 1])
    );
    assert_eq!(
        (c.rhs.row, c.rhs.col, c.rhs.reduce.clone()),
        (27, 0, vec![9, 3, 1])
    );
    let (oh, ow) = p.out_hw();
    assert_eq!((c.out.row, c.out.col), ((oh * ow) as i64, 1));
    let inputs = inputs_for(&dag, 3);
    let got = run(&f, &dag, &inputs);
    let want = p.reference(&inputs[0], &inputs[1], &inputs[2]);
    assert_eq!(got.last().unwrap(), &want);
}

#[test]
fn reduce_offsets_enumerate_in_accumulation_order() {
    let a = kiln_tir::Access {
        buf: kiln_tir::BufferId(0),
        base: Expr::int(0),
        row: 0,
        col: 0,
        reduce: vec![10, 1],
    };
    assert_eq!(
        tensorize::reduce_offsets(&a, &[2, 3]),
        vec![0, 1, 2, 10, 11, 12]
    );
}

#[test]
fn packing_a_constant_at_compile_time_places_every_element_where_the_packed_loads_read_it() {
    use kiln_ir::Tensor;
    use kiln_tir::Pack;
    for (shape, axis, factor, outer_first, group) in [
        (vec![3, 2, 5], 2, 2, true, None),
        (vec![3, 2, 5], 0, 2, false, None),
        (vec![4, 6], 1, 3, true, None),
        (vec![7], 0, 4, false, None),
        (vec![3, 3, 5, 7], 3, 4, true, None),
        (vec![2, 3, 5, 7], 1, 2, true, None),
        (vec![2, 3, 5, 7], 2, 3, false, None),
        // Groups of a second dimension innermost (int8 dot-product panels), ragged or not.
        (vec![3, 3, 8, 32], 3, 16, true, Some((2, 4))),
        (vec![1, 2, 6, 10], 3, 4, true, Some((2, 4))),
        (vec![5, 7], 0, 2, false, Some((1, 3))),
    ] {
        let n: usize = shape.iter().product();
        let t = Tensor::new(shape.clone(), (0..n).map(|i| i as f32 + 1.0).collect()).unwrap();
        let pack = Pack {
            axis,
            factor,
            outer_first,
            group,
        };
        let packed = pack.pack_tensor(&t).unwrap();
        assert_eq!(packed.shape(), pack.packed_shape(&shape).as_slice());
        let data = packed.as_slice::<f32>().unwrap();
        let flat = |idx: &[usize], dims: &[usize]| {
            idx.iter().zip(dims).fold(0usize, |a, (&i, &d)| a * d + i)
        };
        let mut seen = 0;
        for i in 0..n {
            let mut idx = vec![0; shape.len()];
            let mut r = i;
            for d in (0..shape.len()).rev() {
                idx[d] = r % shape[d];
                r /= shape[d];
            }
            let split = (idx[axis] / factor, idx[axis] % factor);
            let g = group.map(|(g, q)| (idx[g] / q, idx[g] % q));
            let p = pack.packed_index(&idx, split, g);
            assert_eq!(data[flat(&p, packed.shape())], i as f32 + 1.0);
            seen += 1;
        }
        // Everything else is the zero padding of the last partial blocks.
        assert_eq!(data.iter().filter(|&&v| v != 0.0).count(), seen);
    }
}
