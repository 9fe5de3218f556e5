//! Example compute DAGs shared by the integration tests, with naive Rust reference loops.
#![allow(dead_code)]

pub mod traces;

use kiln_ir::{DType, Tensor};
use kiln_tir::{interp, BufferId, ComputeDag, Expr, PrimFunc, ReduceKind};

/// Conv2d NCHW/OIHW with zero padding (a `pad` stage using `select`), then bias + relu.
#[derive(Clone, Copy, Debug)]
pub struct Conv {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub pad: usize,
    pub stride: usize,
}

impl Conv {
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad - self.kh) / self.stride + 1,
            (self.w + 2 * self.pad - self.kw) / self.stride + 1,
        )
    }

    pub fn dag(&self) -> ComputeDag {
        let p = *self;
        let (oh, ow) = self.out_hw();
        let mut d = ComputeDag::new();
        let x = d
            .placeholder("x", DType::F32, &[p.n, p.c, p.h, p.w])
            .unwrap();
        let wt = d
            .placeholder("w", DType::F32, &[p.o, p.c, p.kh, p.kw])
            .unwrap();
        let b = d.placeholder("b", DType::F32, &[p.o]).unwrap();
        let (ph, pw) = (p.h + 2 * p.pad, p.w + 2 * p.pad);
        let pad = d
            .add_stage(
                "pad",
                &[("n", p.n), ("c", p.c), ("y", ph), ("x", pw)],
                &[],
                None,
                |a, _| {
                    let yy = a[2].clone() - Expr::int(p.pad as i64);
                    let xx = a[3].clone() - Expr::int(p.pad as i64);
                    let inside = Expr::and(
                        Expr::and(
                            Expr::ge(yy.clone(), Expr::int(0)),
                            Expr::lt(yy.clone(), Expr::int(p.h as i64)),
                        ),
                        Expr::and(
                            Expr::ge(xx.clone(), Expr::int(0)),
                            Expr::lt(xx.clone(), Expr::int(p.w as i64)),
                        ),
                    );
                    Expr::select(
                        inside,
                        Expr::load(x, vec![a[0].clone(), a[1].clone(), yy, xx]),
                        Expr::f32(0.0),
                    )
                },
            )
            .unwrap();
        let s = Expr::int(p.stride as i64);
        let conv = d
            .add_stage(
                "conv",
                &[("n", p.n), ("o", p.o), ("oh", oh), ("ow", ow)],
                &[("rc", p.c), ("ry", p.kh), ("rx", p.kw)],
                Some(ReduceKind::Sum),
                |a, r| {
                    Expr::load(
                        pad,
                        vec![
                            a[0].clone(),
                            r[0].clone(),
                            a[2].clone() * s.clone() + r[1].clone(),
                            a[3].clone() * s.clone() + r[2].clone(),
                        ],
                    ) * Expr::load(
                        wt,
                        vec![a[1].clone(), r[0].clone(), r[1].clone(), r[2].clone()],
                    )
                },
            )
            .unwrap();
        d.add_stage(
            "out",
            &[("n", p.n), ("o", p.o), ("oh", oh), ("ow", ow)],
            &[],
            None,
            |a, _| {
                Expr::max(
                    Expr::load(conv, a.to_vec()) + Expr::load(b, vec![a[1].clone()]),
                    Expr::f32(0.0),
                )
            },
        )
        .unwrap();
        d
    }

    pub fn reference(&self, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
        let p = *self;
        let (oh, ow) = self.out_hw();
        let mut out = vec![0f32; p.n * p.o * oh * ow];
        for n in 0..p.n {
            for o in 0..p.o {
                for y in 0..oh {
                    for xx in 0..ow {
                        let mut acc = 0f32;
                        for c in 0..p.c {
                            for ky in 0..p.kh {
                                for kx in 0..p.kw {
                                    let iy = (y * p.stride + ky) as i64 - p.pad as i64;
                                    let ix = (xx * p.stride + kx) as i64 - p.pad as i64;
                                    if iy < 0 || ix < 0 || iy >= p.h as i64 || ix >= p.w as i64 {
                                        continue;
                                    }
                                    let xv =
                                        x[((n * p.c + c) * p.h + iy as usize) * p.w + ix as usize];
                                    acc += xv * w[((o * p.c + c) * p.kh + ky) * p.kw + kx];
                                }
                            }
                        }
                        out[((n * p.o + o) * oh + y) * ow + xx] = (acc + b[o]).max(0.0);
                    }
                }
            }
        }
        out
    }
}

pub fn matmul(m: usize, n: usize, k: usize) -> ComputeDag {
    let mut d = ComputeDag::new();
    let a = d.placeholder("a", DType::F32, &[m, k]).unwrap();
    let b = d.placeholder("b", DType::F32, &[k, n]).unwrap();
    d.add_stage(
        "c",
        &[("i", m), ("j", n)],
        &[("k", k)],
        Some(ReduceKind::Sum),
        |x, r| {
            Expr::load(a, vec![x[0].clone(), r[0].clone()])
                * Expr::load(b, vec![r[0].clone(), x[1].clone()])
        },
    )
    .unwrap();
    d
}

pub fn matmul_ref(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for kk in 0..k {
                acc += a[i * k + kk] * b[kk * n + j];
            }
            c[i * n + j] = acc;
        }
    }
    c
}

/// Max pool (window `k`, stride `s`, padding 1 with -inf) and average pool (no padding) of one
/// input: two outputs.
pub fn pools(n: usize, c: usize, h: usize, w: usize, k: usize, s: usize) -> ComputeDag {
    let mut d = ComputeDag::new();
    let x = d.placeholder("x", DType::F32, &[n, c, h, w]).unwrap();
    let (mh, mw) = ((h + 2 - k) / s + 1, (w + 2 - k) / s + 1);
    let st = Expr::int(s as i64);
    d.add_stage(
        "maxpool",
        &[("n", n), ("c", c), ("y", mh), ("x", mw)],
        &[("ky", k), ("kx", k)],
        Some(ReduceKind::Max),
        |a, r| {
            let yy = a[2].clone() * st.clone() + r[0].clone() - Expr::int(1);
            let xx = a[3].clone() * st.clone() + r[1].clone() - Expr::int(1);
            let inside = Expr::and(
                Expr::and(
                    Expr::ge(yy.clone(), Expr::int(0)),
                    Expr::lt(yy.clone(), Expr::int(h as i64)),
                ),
                Expr::and(
                    Expr::ge(xx.clone(), Expr::int(0)),
                    Expr::lt(xx.clone(), Expr::int(w as i64)),
                ),
            );
            Expr::select(
                inside,
                Expr::load(x, vec![a[0].clone(), a[1].clone(), yy, xx]),
                Expr::float(f64::NEG_INFINITY, DType::F32),
            )
        },
    )
    .unwrap();
    let (ah, aw) = ((h - k) / s + 1, (w - k) / s + 1);
    let sum = d
        .add_stage(
            "poolsum",
            &[("n", n), ("c", c), ("y", ah), ("x", aw)],
            &[("ky", k), ("kx", k)],
            Some(ReduceKind::Sum),
            |a, r| {
                Expr::load(
                    x,
                    vec![
                        a[0].clone(),
                        a[1].clone(),
                        a[2].clone() * st.clone() + r[0].clone(),
                        a[3].clone() * st.clone() + r[1].clone(),
                    ],
                )
            },
        )
        .unwrap();
    d.add_stage(
        "avgpool",
        &[("n", n), ("c", c), ("y", ah), ("x", aw)],
        &[],
        None,
        |a, _| Expr::load(sum, a.to_vec()) / Expr::f32((k * k) as f32),
    )
    .unwrap();
    d
}

pub fn pools_ref(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    x: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let (mh, mw) = ((h + 2 - k) / s + 1, (w + 2 - k) / s + 1);
    let (ah, aw) = ((h - k) / s + 1, (w - k) / s + 1);
    let mut mx = vec![0f32; n * c * mh * mw];
    let mut av = vec![0f32; n * c * ah * aw];
    for b in 0..n * c {
        for y in 0..mh {
            for xx in 0..mw {
                let mut m = f32::NEG_INFINITY;
                for ky in 0..k {
                    for kx in 0..k {
                        let iy = (y * s + ky) as i64 - 1;
                        let ix = (xx * s + kx) as i64 - 1;
                        if iy >= 0 && ix >= 0 && iy < h as i64 && ix < w as i64 {
                            m = m.max(x[(b * h + iy as usize) * w + ix as usize]);
                        }
                    }
                }
                mx[(b * mh + y) * mw + xx] = m;
            }
        }
        for y in 0..ah {
            for xx in 0..aw {
                let mut acc = 0f32;
                for ky in 0..k {
                    for kx in 0..k {
                        acc += x[(b * h + y * s + ky) * w + xx * s + kx];
                    }
                }
                av[(b * ah + y) * aw + xx] = acc / (k * k) as f32;
            }
        }
    }
    (mx, av)
}

/// Sum of `[a, b, c]` along axis 1.
pub fn reduce_axis1(a: usize, b: usize, c: usize) -> ComputeDag {
    let mut d = ComputeDag::new();
    let x = d.placeholder("x", DType::F32, &[a, b, c]).unwrap();
    d.add_stage(
        "sum",
        &[("i", a), ("k", c)],
        &[("r", b)],
        Some(ReduceKind::Sum),
        |ax, r| Expr::load(x, vec![ax[0].clone(), r[0].clone(), ax[1].clone()]),
    )
    .unwrap();
    d
}

pub fn reduce_axis1_ref(a: usize, b: usize, c: usize, x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; a * c];
    for i in 0..a {
        for k in 0..c {
            let mut acc = 0f32;
            for j in 0..b {
                acc += x[(i * b + j) * c + k];
            }
            out[i * c + k] = acc;
        }
    }
    out
}

/// `relu((x + 1) * 2 - y)` as three stages.
pub fn elementwise(shape: &[usize]) -> ComputeDag {
    let mut d = ComputeDag::new();
    let x = d.placeholder("x", DType::F32, shape).unwrap();
    let y = d.placeholder("y", DType::F32, shape).unwrap();
    let t1 = d
        .compute("add1", shape, |a| {
            Expr::load(x, a.to_vec()) + Expr::f32(1.0)
        })
        .unwrap();
    let t2 = d
        .compute("mul2", shape, |a| {
            Expr::load(t1, a.to_vec()) * Expr::f32(2.0) - Expr::load(y, a.to_vec())
        })
        .unwrap();
    d.compute("relu", shape, |a| {
        Expr::max(Expr::load(t2, a.to_vec()), Expr::f32(0.0))
    })
    .unwrap();
    d
}

pub fn elementwise_ref(x: &[f32], y: &[f32]) -> Vec<f32> {
    x.iter()
        .zip(y)
        .map(|(x, y)| ((x + 1.0) * 2.0 - y).max(0.0))
        .collect()
}

/// `[a, b, c] -> [c, a, b]`.
pub fn transpose(a: usize, b: usize, c: usize) -> ComputeDag {
    let mut d = ComputeDag::new();
    let x = d.placeholder("x", DType::F32, &[a, b, c]).unwrap();
    d.compute("t", &[c, a, b], |ax| {
        Expr::load(x, vec![ax[1].clone(), ax[2].clone(), ax[0].clone()])
    })
    .unwrap();
    d
}

pub fn transpose_ref(a: usize, b: usize, c: usize, x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; a * b * c];
    for k in 0..c {
        for i in 0..a {
            for j in 0..b {
                out[(k * a + i) * b + j] = x[(i * b + j) * c + k];
            }
        }
    }
    out
}

/// Deterministic small-integer-valued inputs (sums are exact in f32 whatever the order).
pub fn ints(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % 7) as f32 - 3.0
        })
        .collect()
}

/// Runs `f` on inputs for its placeholder params (zeros for outputs); returns every param.
pub fn run(f: &PrimFunc, dag: &ComputeDag, inputs: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let mut args: Vec<Tensor> = f
        .params
        .iter()
        .map(|p| {
            let b = &f.buffers[p.index()];
            let n: usize = b.shape.iter().product();
            Tensor::new(b.shape.clone(), vec![0f32; n]).unwrap()
        })
        .collect();
    let n_inputs = dag.tensors().iter().filter(|t| t.stage.is_none()).count();
    for (i, v) in inputs.iter().enumerate().take(n_inputs) {
        args[i] = Tensor::new(args[i].shape().to_vec(), v.clone()).unwrap();
    }
    interp::run(f, &mut args).unwrap();
    args.iter()
        .map(|t| t.as_slice::<f32>().unwrap().to_vec())
        .collect()
}

/// Random inputs for every placeholder of `dag`.
pub fn inputs_for(dag: &ComputeDag, seed: u64) -> Vec<Vec<f32>> {
    dag.tensors()
        .iter()
        .filter(|t| t.stage.is_none())
        .enumerate()
        .map(|(i, t)| ints(t.shape.iter().product(), seed + i as u64))
        .collect()
}

pub fn id(dag: &ComputeDag, name: &str) -> BufferId {
    dag.find(name).unwrap()
}
