//! The rewrite rules, each named and with the reason it is sound.
//!
//! Invariant: a rule only ever unions a class with an expression of the same tensor type (the
//! applier checks the type of what it built and does nothing otherwise), and every rule is an
//! identity of the IR semantics as [`kiln_operators::evaluate`] defines them: exact for data
//! movement and the algebraic identities; for folding per-channel scales and shifts into a
//! convolution's weights and bias, exact up to float rounding (the product is rounded once more
//! or less, as in every compiler that folds BatchNormalization).
//!
//! Every rule has a test in `tests/rules.rs` that proves its goal (`before => after`).

use crate::analysis::{GraphAnalysis, GraphEGraph};
use crate::lang::{op_of, Node, OpLeaf};
use egg::{Applier, Id, Pattern, PatternAst, Rewrite, Subst, Symbol, Var};
use kiln_ir::op::{BinaryOp, ConvAttrs, DataLayout, PoolAttrs};
use kiln_ir::{DType, Op, Tensor, TensorType};

/// What a rule's applier computes: the class to union with the match (`None`: the match does
/// not qualify).
type ApplyFn = fn(&mut GraphEGraph, Id, &Subst) -> Option<Id>;

/// An applier running a Rust function, guarded by a type check.
struct FnApplier(ApplyFn);

impl Applier<Node, GraphAnalysis> for FnApplier {
    fn apply_one(
        &self,
        egraph: &mut GraphEGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<Node>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let Some(new) = (self.0)(egraph, eclass, subst) else {
            return vec![];
        };
        let (a, b) = (&egraph[eclass].data.ty, &egraph[new].data.ty);
        if a.is_none() || a != b {
            return vec![];
        }
        if egraph.union(eclass, new) {
            vec![eclass]
        } else {
            vec![]
        }
    }
}

fn rule(name: &str, pattern: &str, f: ApplyFn) -> Rewrite<Node, GraphAnalysis> {
    let searcher: Pattern<Node> = pattern.parse().expect("rule patterns parse");
    Rewrite::new(name, searcher, FnApplier(f)).expect("rules are well formed")
}

fn var(s: &str) -> Var {
    s.parse().expect("pattern variables parse")
}

/// The op of the leaf bound to `v`.
fn op(egraph: &GraphEGraph, subst: &Subst, v: &str) -> Option<Op> {
    op_of(egraph, subst[var(v)]).cloned()
}

fn ty(egraph: &GraphEGraph, id: Id) -> Option<TensorType> {
    egraph[id].data.ty.clone()
}

fn constant(egraph: &GraphEGraph, id: Id) -> Option<Tensor> {
    egraph[id].data.value.as_deref().cloned()
}

/// Adds `(op OP operands...)` when it type-checks.
fn add_op(egraph: &mut GraphEGraph, op: Op, operands: &[Id]) -> Option<Id> {
    let types: Option<Vec<TensorType>> = operands.iter().map(|&c| ty(egraph, c)).collect();
    let types = types?;
    kiln_ir::infer_type(&op, &types.iter().collect::<Vec<_>>()).ok()?;
    let leaf = egraph.add(Node::Op(OpLeaf::new(op)));
    let mut children = vec![leaf];
    children.extend_from_slice(operands);
    Some(egraph.add(Node::Apply(children.into_boxed_slice())))
}

/// Every element of `t` equals `v` (as f64).
fn all_equal(t: &Tensor, v: f64) -> bool {
    t.data().to_f64_vec().iter().all(|&x| x == v)
}

/// The rules a run with layout choice `layout` uses: every rule, less `conv-to-nhwc` and
/// `pool-to-nhwc` when the layout is kept.
pub fn rules_for(layout: crate::LayoutChoice) -> Vec<Rewrite<Node, GraphAnalysis>> {
    let mut all = rules();
    if layout == crate::LayoutChoice::Nchw {
        all.retain(|r| !matches!(r.name.as_str(), "conv-to-nhwc" | "pool-to-nhwc"));
    }
    all
}

/// Every rule.
pub fn rules() -> Vec<Rewrite<Node, GraphAnalysis>> {
    vec![
        // transpose(pa, transpose(pb, x)): out[i] takes axis pb[pa[i]] of x. One transpose with
        // that permutation, or x itself when it is the identity.
        rule("transpose-transpose", "(op ?a (op ?b ?x))", |eg, _, s| {
            let (Op::Transpose { perm: pa }, Op::Transpose { perm: pb }) =
                (op(eg, s, "?a")?, op(eg, s, "?b")?)
            else {
                return None;
            };
            let perm: Vec<usize> = pa.iter().map(|&i| pb[i]).collect();
            if perm.iter().enumerate().all(|(i, &p)| i == p) {
                Some(s[var("?x")])
            } else {
                add_op(eg, Op::Transpose { perm }, &[s[var("?x")]])
            }
        }),
        // reshape(reshape(x)): row-major reshapes only reinterpret the element order, so the
        // outer shape alone decides the result.
        rule("reshape-reshape", "(op ?a (op ?b ?x))", |eg, _, s| {
            let (Op::Reshape { shape }, Op::Reshape { .. }) = (op(eg, s, "?a")?, op(eg, s, "?b")?)
            else {
                return None;
            };
            add_op(eg, Op::Reshape { shape }, &[s[var("?x")]])
        }),
        // identity(x), a reshape to x's own shape, a transpose by the identity permutation: x.
        rule("no-op-movement", "(op ?a ?x)", |eg, _, s| {
            let x = s[var("?x")];
            let xt = ty(eg, x)?;
            match op(eg, s, "?a")? {
                Op::Identity => Some(x),
                Op::Reshape { shape } if shape == xt.shape => Some(x),
                Op::Transpose { perm } if perm.iter().enumerate().all(|(i, &p)| i == p) => Some(x),
                _ => None,
            }
        }),
        // x * 1 and x + 0 (either operand order), x - 0: x, when the constant does not widen x
        // by broadcasting (the applier's type check) and x is a float or integer tensor (the
        // values are unchanged: 1 and 0 are exact in every dtype; -0.0 + 0 = +0 differs only in
        // the sign of zero, which no op of the IR distinguishes but division, so x + 0 is only
        // folded for integer x).
        rule("neutral-right", "(op ?a ?x ?c)", |eg, _, s| {
            neutral(eg, s, "?x", "?c", true)
        }),
        rule("neutral-left", "(op ?a ?c ?x)", |eg, _, s| {
            neutral(eg, s, "?x", "?c", false)
        }),
        // negate(negate(x)) = x: negation is exact (a sign flip) in floats; in integers it wraps
        // (TOSA), and -(-MIN) = MIN, so it is exact there too.
        rule("negate-negate", "(op ?a (op ?b ?x))", |eg, _, s| {
            let neg = Op::Unary(kiln_ir::op::UnaryOp::Negate);
            (op(eg, s, "?a")? == neg && op(eg, s, "?b")? == neg).then(|| s[var("?x")])
        }),
        // conv(x, w, b) * s, s a per-output-channel constant ([1,O,1,1], NHWC [1,1,1,O], or a
        // scalar): conv is
        // linear in (w, b), so it equals conv(x, w * s[o], b * s[o]). This folds the scale of
        // BatchNormalization (imported as y = x * a + c) into the weights.
        rule(
            "scale-into-conv",
            "(op ?m (op ?conv ?x ?w ?b) ?s)",
            |eg, _, s| scale_into_conv(eg, s),
        ),
        rule(
            "scale-into-conv-left",
            "(op ?m ?s (op ?conv ?x ?w ?b))",
            |eg, _, s| scale_into_conv(eg, s),
        ),
        // conv(x, w, b) + c, c a per-output-channel constant: conv(x, w, b + c[o]) (the bias is
        // added to every output of channel o). The shift of BatchNormalization.
        rule(
            "shift-into-conv",
            "(op ?m (op ?conv ?x ?w ?b) ?s)",
            |eg, _, s| shift_into_conv(eg, s),
        ),
        rule(
            "shift-into-conv-left",
            "(op ?m ?s (op ?conv ?x ?w ?b))",
            |eg, _, s| shift_into_conv(eg, s),
        ),
        // Elementwise ops commute with any permutation of the axes (each output element depends
        // only on the operand elements at its own index; size-1 broadcast axes move along):
        // f(transpose(x)) = transpose(f(x)), so transposes sink towards the outputs, where a
        // pair cancels (transpose-transpose).
        rule(
            "transpose-through-unary",
            "(op ?u (op ?t ?x))",
            |eg, _, s| {
                let (u, Op::Transpose { perm }) = (op(eg, s, "?u")?, op(eg, s, "?t")?) else {
                    return None;
                };
                if !matches!(u, Op::Unary(_) | Op::Clamp { .. } | Op::Cast { .. }) {
                    return None;
                }
                let inner = add_op(eg, u, &[s[var("?x")]])?;
                add_op(eg, Op::Transpose { perm }, &[inner])
            },
        ),
        rule(
            "transpose-through-binary",
            "(op ?b (op ?t1 ?x) (op ?t2 ?y))",
            |eg, _, s| {
                let (b, t1, t2) = (op(eg, s, "?b")?, op(eg, s, "?t1")?, op(eg, s, "?t2")?);
                let (Op::Binary(_), Op::Transpose { perm }) = (&b, &t1) else {
                    return None;
                };
                if t1 != t2 {
                    return None;
                }
                let inner = add_op(eg, b.clone(), &[s[var("?x")], s[var("?y")]])?;
                add_op(eg, Op::Transpose { perm: perm.clone() }, &[inner])
            },
        ),
        // binary(transpose(x), c) = transpose(binary(x, transpose⁻¹(c))) for a constant c (the
        // inverse transpose of c folds at compile time); either operand order.
        rule(
            "transpose-through-binary-const",
            "(op ?b (op ?t ?x) ?c)",
            |eg, _, s| transpose_through_const(eg, s, true),
        ),
        rule(
            "transpose-through-binary-const-left",
            "(op ?b ?c (op ?t ?x))",
            |eg, _, s| transpose_through_const(eg, s, false),
        ),
        // A slice of everything with unit strides is the tensor itself.
        rule("full-slice", "(op ?a ?x)", |eg, _, s| {
            let Op::Slice {
                start,
                size,
                stride,
            } = op(eg, s, "?a")?
            else {
                return None;
            };
            let xt = ty(eg, s[var("?x")])?;
            (start.iter().all(|&v| v == 0) && size == xt.shape && stride.iter().all(|&v| v == 1))
                .then(|| s[var("?x")])
        }),
        // slice(slice(x, s1, _, t1), s2, z2, t2): element i of the outer slice is element
        // s2 + i*t2 of the inner, which is element s1 + (s2 + i*t2)*t1 of x: one slice with start
        // s1 + s2*t1, size z2, stride t1*t2.
        rule("slice-slice", "(op ?a (op ?b ?x))", |eg, _, s| {
            let (
                Op::Slice {
                    start: s2,
                    size: z2,
                    stride: t2,
                },
                Op::Slice {
                    start: s1,
                    stride: t1,
                    ..
                },
            ) = (op(eg, s, "?a")?, op(eg, s, "?b")?)
            else {
                return None;
            };
            let start = (0..s1.len()).map(|d| s1[d] + s2[d] * t1[d]).collect();
            let stride = (0..s1.len()).map(|d| t1[d] * t2[d]).collect();
            add_op(
                eg,
                Op::Slice {
                    start,
                    size: z2,
                    stride,
                },
                &[s[var("?x")]],
            )
        }),
        // slice(transpose(x, p), start, size, stride) = transpose(slice(x, start', size',
        // stride'), p), where output axis j of the transpose is axis p[j] of x, so the slice's
        // entries for axis j move to axis p[j]: a slice of a channels-last conversion happens
        // channels-last and the conversion sinks towards a convolution, where it cancels.
        rule(
            "transpose-through-slice",
            "(op ?a (op ?t ?x))",
            |eg, _, s| {
                let (
                    Op::Slice {
                        start,
                        size,
                        stride,
                    },
                    Op::Transpose { perm },
                ) = (op(eg, s, "?a")?, op(eg, s, "?t")?)
                else {
                    return None;
                };
                let (mut start2, mut size2, mut stride2) =
                    (start.clone(), size.clone(), stride.clone());
                for (j, &p) in perm.iter().enumerate() {
                    start2[p] = start[j];
                    size2[p] = size[j];
                    stride2[p] = stride[j];
                }
                let inner = add_op(
                    eg,
                    Op::Slice {
                        start: start2,
                        size: size2,
                        stride: stride2,
                    },
                    &[s[var("?x")]],
                )?;
                add_op(eg, Op::Transpose { perm }, &[inner])
            },
        ),
        // pad(transpose(x, p), pads) = transpose(pad(x, pads'), p) with pads'[p[j]] = pads[j]:
        // every pad mode treats each axis on its own, so padding before or after moving the
        // axes is the same (a padded copy shared by two channels-last convolutions stays
        // channels-last).
        rule("transpose-through-pad", "(op ?a (op ?t ?x))", |eg, _, s| {
            let (Op::Pad { pads, mode, value }, Op::Transpose { perm }) =
                (op(eg, s, "?a")?, op(eg, s, "?t")?)
            else {
                return None;
            };
            let mut moved = pads.clone();
            for (j, &p) in perm.iter().enumerate() {
                moved[p] = pads[j];
            }
            let inner = add_op(
                eg,
                Op::Pad {
                    pads: moved,
                    mode,
                    value,
                },
                &[s[var("?x")]],
            )?;
            add_op(eg, Op::Transpose { perm }, &[inner])
        }),
        // A concat of one tensor is that tensor.
        rule("concat-single", "(op ?a ?x)", |eg, _, s| {
            matches!(op(eg, s, "?a")?, Op::Concat { .. }).then(|| s[var("?x")])
        }),
        // A slice that lies within one operand of a concat along the concat axis reads only that
        // operand (the split of a concat: Split after Concat in exported models).
        rule("slice-of-concat", "(op ?a ?c)", slice_of_concat),
        // concat(transpose(x0, p), transpose(x1, p), ..., axis) = transpose(concat(x0, x1, ...,
        // axis p[axis]), p): output axis `axis` of the transposes is axis p[axis] of each x, so
        // joining the operands before or after moving the axes is the same. A channels-last
        // network keeps its layout through concatenations (SqueezeNet's fire modules,
        // ShuffleNet's branches). For 2 to 4 operands.
        rule(
            "transpose-through-concat",
            "(op ?c (op ?t0 ?x0) (op ?t1 ?x1))",
            transpose_through_concat,
        ),
        rule(
            "transpose-through-concat-3",
            "(op ?c (op ?t0 ?x0) (op ?t1 ?x1) (op ?t2 ?x2))",
            transpose_through_concat,
        ),
        rule(
            "transpose-through-concat-4",
            "(op ?c (op ?t0 ?x0) (op ?t1 ?x1) (op ?t2 ?x2) (op ?t3 ?x3))",
            transpose_through_concat,
        ),
        // matmul(a, W) * s, W a constant and s a constant per output column ([1|B, 1, N] or a
        // scalar): each output column n is a dot product with column n of W, so scaling it
        // scales W's column: matmul(a, W * s) (the product folds at compile time).
        rule(
            "scale-into-matmul",
            "(op ?m (op ?mm ?a ?w) ?s)",
            |eg, _, s| scale_into_matmul(eg, s),
        ),
        rule(
            "scale-into-matmul-left",
            "(op ?m ?s (op ?mm ?a ?w))",
            |eg, _, s| scale_into_matmul(eg, s),
        ),
        // conv(pad(x, zeros on H and W), w, b) = conv(x, w, b) with the pads added to the conv's
        // own (which pads with the input zero point: 0 for floats), in either layout.
        rule(
            "pad-into-conv",
            "(op ?conv (op ?p ?x) ?w ?b)",
            |eg, _, s| {
                let (Op::Pad { pads, mode, value }, conv) = (op(eg, s, "?p")?, op(eg, s, "?conv")?)
                else {
                    return None;
                };
                let (Op::Conv2d(mut a) | Op::DepthwiseConv2d(mut a)) = conv.clone() else {
                    return None;
                };
                // (An fma chain multiplies its padding: only +0.0 is the conv's own.)
                if mode != kiln_ir::op::PadMode::Constant
                    || value.0 != a.input_zp as f64
                    || a.fma && value.0.is_sign_negative()
                    || pads.len() != 4
                {
                    return None;
                }
                let [pn, pc, ph, pw] = a.layout.nchw_of(&pads);
                if pn != [0, 0] || pc != [0, 0] {
                    return None;
                }
                a.pad = [
                    a.pad[0] + ph[0],
                    a.pad[1] + ph[1],
                    a.pad[2] + pw[0],
                    a.pad[3] + pw[1],
                ];
                let new = match conv {
                    Op::Conv2d(_) => Op::Conv2d(a),
                    _ => Op::DepthwiseConv2d(a),
                };
                add_op(eg, new, &[s[var("?x")], s[var("?w")], s[var("?b")]])
            },
        ),
        // Layout choice. conv_nchw(x, w, b) = to_nchw(conv_nhwc(to_nhwc(x), w, b)): a
        // convolution computes the same values whichever order its activations are stored in
        // (the IR defines the NHWC form as the NCHW one with input and output transposed). The
        // transposes it adds sink through elementwise ops and cancel between convolutions, so a
        // chain of convolutions can run channels-last with one conversion at each end;
        // extraction decides whether that is cheaper. Only for f32 and 8-bit integer
        // convolutions with constant weights, which the lowering computes channels-last anyway
        // (an NCHW one converts its tiles inside the kernel).
        rule("conv-to-nhwc", "(op ?conv ?x ?w ?b)", conv_to_nhwc),
        // reduce(transpose(x, p), axis a) = transpose(reduce(x, axis p[a]), p): a reduction
        // keeps its axis (size 1), so reducing before or after moving the axes is the same.
        rule(
            "reduce-through-transpose",
            "(op ?r (op ?t ?x))",
            |eg, _, s| {
                let (Op::Reduce { kind, axis }, Op::Transpose { perm }) =
                    (op(eg, s, "?r")?, op(eg, s, "?t")?)
                else {
                    return None;
                };
                let inner = add_op(
                    eg,
                    Op::Reduce {
                        kind,
                        axis: *perm.get(axis)?,
                    },
                    &[s[var("?x")]],
                )?;
                add_op(eg, Op::Transpose { perm }, &[inner])
            },
        ),
        // A float pool equals its channels-last form between two layout conversions (the
        // taps and their order are the same, only the axis order differs), so a channels-last
        // network keeps its layout through pooling: the conversions cancel with its
        // neighbours', or the one left behind meets a smaller (pooled) tensor.
        rule("pool-to-nhwc", "(op ?pool ?x)", |eg, _, s| {
            let (pool, x) = (op(eg, s, "?pool")?, s[var("?x")]);
            let (Op::AvgPool2d(p) | Op::MaxPool2d(p)) = &pool else {
                return None;
            };
            if p.layout != DataLayout::Nchw || !ty(eg, x)?.dtype.is_float() {
                return None;
            }
            let nhwc = PoolAttrs {
                layout: DataLayout::Nhwc,
                ..p.clone()
            };
            let new = match pool {
                Op::AvgPool2d(_) => Op::AvgPool2d(nhwc),
                _ => Op::MaxPool2d(nhwc),
            };
            let to_nhwc = DataLayout::Nhwc.from_nchw().to_vec();
            let to_nchw = DataLayout::Nhwc.to_nchw().to_vec();
            let xt = add_op(eg, Op::Transpose { perm: to_nhwc }, &[x])?;
            let y = add_op(eg, new, &[xt])?;
            add_op(eg, Op::Transpose { perm: to_nchw }, &[y])
        }),
        // A transpose that keeps the order of the axes longer than 1 moves only unit axes: the
        // elements keep their row-major order, so it is a reshape (an alias, not a copy).
        rule("transpose-of-unit-axes", "(op ?t ?x)", |eg, _, s| {
            let Op::Transpose { perm } = op(eg, s, "?t")? else {
                return None;
            };
            let xt = ty(eg, s[var("?x")])?;
            let moved: Vec<usize> = perm.iter().copied().filter(|&p| xt.shape[p] != 1).collect();
            if !moved.is_sorted() {
                return None;
            }
            let shape = perm.iter().map(|&p| xt.shape[p]).collect();
            add_op(eg, Op::Reshape { shape }, &[s[var("?x")]])
        }),
    ]
}

/// See the `conv-to-nhwc` rule.
fn conv_to_nhwc(eg: &mut GraphEGraph, _: Id, s: &Subst) -> Option<Id> {
    let conv = op(eg, s, "?conv")?;
    let (Op::Conv2d(a) | Op::DepthwiseConv2d(a)) = &conv else {
        return None;
    };
    let w = s[var("?w")];
    let wt = ty(eg, w)?.dtype;
    if a.layout != DataLayout::Nchw || !matches!(wt, DType::F32 | DType::I8 | DType::U8) {
        return None;
    }
    eg[w].data.value.as_ref()?;
    let nhwc = ConvAttrs {
        layout: DataLayout::Nhwc,
        ..a.clone()
    };
    let new = match conv {
        Op::Conv2d(_) => Op::Conv2d(nhwc),
        _ => Op::DepthwiseConv2d(nhwc),
    };
    let to_nhwc = DataLayout::Nhwc.from_nchw().to_vec();
    let to_nchw = DataLayout::Nhwc.to_nchw().to_vec();
    let x = add_op(eg, Op::Transpose { perm: to_nhwc }, &[s[var("?x")]])?;
    let y = add_op(eg, new, &[x, w, s[var("?b")]])?;
    add_op(eg, Op::Transpose { perm: to_nchw }, &[y])
}

fn neutral(eg: &mut GraphEGraph, s: &Subst, x: &str, c: &str, c_on_right: bool) -> Option<Id> {
    let Op::Binary(b) = op(eg, s, "?a")? else {
        return None;
    };
    let (x, c) = (s[var(x)], s[var(c)]);
    let xt = ty(eg, x)?;
    let k = constant(eg, c)?;
    let is_int = !matches!(xt.dtype, DType::F32 | DType::F16 | DType::Bool);
    let ok = match b {
        BinaryOp::Mul => xt.dtype != DType::Bool && all_equal(&k, 1.0),
        BinaryOp::Add => is_int && all_equal(&k, 0.0),
        BinaryOp::Sub => c_on_right && is_int && all_equal(&k, 0.0),
        _ => false,
    };
    ok.then_some(x)
}

/// The conv op bound to `?conv` when it is a float conv with zero zero points whose result only
/// the matched op reads, with its output channel count. (Folding into a conv that has other
/// readers would compute the conv twice: extraction counts costs per tree, not per DAG.)
fn float_conv(eg: &GraphEGraph, s: &Subst) -> Option<(Op, usize, DataLayout)> {
    let conv = op(eg, s, "?conv")?;
    let operands = ["?conv", "?x", "?w", "?b"].map(|v| s[var(v)]);
    if !single_reader(eg, &operands) {
        return None;
    }
    let (Op::Conv2d(a) | Op::DepthwiseConv2d(a)) = &conv else {
        return None;
    };
    let w = ty(eg, s[var("?w")])?;
    // An fma chain's rounding is its meaning: scaled weights or a pre-added bias change it.
    (a.input_zp == 0 && a.weight_zp == 0 && w.dtype == DType::F32 && !a.fma)
        .then(|| (conv.clone(), w.shape[0], a.layout))
}

/// Whether the value of the application `(op children...)` (leaf first) is read by one graph
/// node only (classes made by rules have no record and count as shared).
fn single_reader(eg: &GraphEGraph, children: &[Id]) -> bool {
    eg.lookup(Node::Apply(children.to_vec().into_boxed_slice()))
        .is_some_and(|id| GraphAnalysis::readers_of(eg, id) == 1)
}

/// The per-output-channel constant bound to `?s` as a `[O]` vector, for a conv output of
/// `o` channels in `layout`: shapes `[1, O, 1, 1]` (NCHW; `[1, 1, 1, O]` NHWC) or all ones
/// (a scalar).
fn per_channel(eg: &GraphEGraph, s: &Subst, o: usize, layout: DataLayout) -> Option<Vec<f32>> {
    let k = constant(eg, s[var("?s")])?;
    if k.dtype() != DType::F32 || k.shape().len() != 4 {
        return None;
    }
    let v: Vec<f32> = k.data().to_f64_vec().iter().map(|&x| x as f32).collect();
    if k.shape() == layout.shape([1, o, 1, 1]) {
        Some(v)
    } else if k.shape() == [1, 1, 1, 1] {
        Some(vec![v[0]; o])
    } else {
        None
    }
}

fn vector_const(eg: &mut GraphEGraph, v: Vec<f32>, shape: Vec<usize>) -> Option<Id> {
    let t = Tensor::new(shape, v).ok()?;
    Some(GraphAnalysis::add_constant(eg, std::sync::Arc::new(t)))
}

fn scale_into_conv(eg: &mut GraphEGraph, s: &Subst) -> Option<Id> {
    if op(eg, s, "?m")? != Op::Binary(BinaryOp::Mul) {
        return None;
    }
    let (conv, o, layout) = float_conv(eg, s)?;
    let scale = per_channel(eg, s, o, layout)?;
    let (w, b) = (s[var("?w")], s[var("?b")]);
    let bt = ty(eg, b)?;
    let w_scale = vector_const(eg, scale.clone(), vec![o, 1, 1, 1])?;
    let new_w = add_op(eg, Op::Binary(BinaryOp::Mul), &[w, w_scale])?;
    // A bias of one element broadcasts over the channels: scale it to O elements.
    let b_scale = vector_const(eg, scale, vec![o])?;
    let new_b = if bt.shape == [o] {
        add_op(eg, Op::Binary(BinaryOp::Mul), &[b, b_scale])?
    } else {
        let wide = add_op(eg, Op::Tile { multiples: vec![o] }, &[b])?;
        add_op(eg, Op::Binary(BinaryOp::Mul), &[wide, b_scale])?
    };
    add_op(eg, conv, &[s[var("?x")], new_w, new_b])
}

fn shift_into_conv(eg: &mut GraphEGraph, s: &Subst) -> Option<Id> {
    if op(eg, s, "?m")? != Op::Binary(BinaryOp::Add) {
        return None;
    }
    let (conv, o, layout) = float_conv(eg, s)?;
    let shift = per_channel(eg, s, o, layout)?;
    let b = s[var("?b")];
    let shift = vector_const(eg, shift, vec![o])?;
    let new_b = add_op(eg, Op::Binary(BinaryOp::Add), &[b, shift])?;
    add_op(eg, conv, &[s[var("?x")], s[var("?w")], new_b])
}

fn transpose_through_const(eg: &mut GraphEGraph, s: &Subst, t_on_left: bool) -> Option<Id> {
    let (b, Op::Transpose { perm }) = (op(eg, s, "?b")?, op(eg, s, "?t")?) else {
        return None;
    };
    if !matches!(b, Op::Binary(_)) {
        return None;
    }
    let c = s[var("?c")];
    eg[c].data.value.as_ref()?;
    let mut inverse = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    let c_back = add_op(eg, Op::Transpose { perm: inverse }, &[c])?;
    let x = s[var("?x")];
    let operands = if t_on_left { [x, c_back] } else { [c_back, x] };
    let inner = add_op(eg, b, &operands)?;
    add_op(eg, Op::Transpose { perm }, &[inner])
}

/// See the `transpose-through-concat` rules: every operand `?xI` under a transpose `?tI` by
/// one permutation.
fn transpose_through_concat(eg: &mut GraphEGraph, _: Id, s: &Subst) -> Option<Id> {
    let Op::Concat { axis } = op(eg, s, "?c")? else {
        return None;
    };
    let mut perm: Option<Vec<usize>> = None;
    let mut operands = vec![];
    for i in 0.. {
        let Some(&x) = s.get(var(&format!("?x{i}"))) else {
            break;
        };
        let Op::Transpose { perm: p } = op(eg, s, &format!("?t{i}"))? else {
            return None;
        };
        if *perm.get_or_insert_with(|| p.clone()) != p {
            return None;
        }
        operands.push(x);
    }
    let perm = perm?;
    let inner = add_op(eg, Op::Concat { axis: perm[axis] }, &operands)?;
    add_op(eg, Op::Transpose { perm }, &[inner])
}

fn slice_of_concat(eg: &mut GraphEGraph, _: Id, s: &Subst) -> Option<Id> {
    let Op::Slice {
        mut start,
        size,
        stride,
    } = op(eg, s, "?a")?
    else {
        return None;
    };
    // The concat nodes of the sliced class, with their operands.
    let concats: Vec<(usize, Vec<Id>)> = eg[s[var("?c")]]
        .nodes
        .iter()
        .filter_map(|n| match n {
            Node::Apply(ch) => match op_of(eg, ch[0]) {
                Some(Op::Concat { axis }) => Some((*axis, ch[1..].to_vec())),
                _ => None,
            },
            _ => None,
        })
        .collect();
    for (axis, operands) in concats {
        if size[axis] == 0 {
            continue;
        }
        let last = start[axis] + (size[axis] - 1) * stride[axis];
        let mut offset = 0;
        for &operand in &operands {
            let len = ty(eg, operand)?.shape[axis];
            if start[axis] >= offset && last < offset + len {
                start[axis] -= offset;
                return add_op(
                    eg,
                    Op::Slice {
                        start,
                        size,
                        stride,
                    },
                    &[operand],
                );
            }
            offset += len;
        }
    }
    None
}

fn scale_into_matmul(eg: &mut GraphEGraph, s: &Subst) -> Option<Id> {
    let (Op::Binary(BinaryOp::Mul), Op::MatMul(attrs)) = (op(eg, s, "?m")?, op(eg, s, "?mm")?)
    else {
        return None;
    };
    let (a, w, k) = (s[var("?a")], s[var("?w")], s[var("?s")]);
    if !single_reader(eg, &[s[var("?mm")], a, w]) {
        return None;
    }
    let (wt, kt) = (ty(eg, w)?, ty(eg, k)?);
    eg[w].data.value.as_ref()?;
    eg[k].data.value.as_ref()?;
    let per_column = kt.shape.len() == 3
        && (kt.shape[0] == 1 || kt.shape[0] == wt.shape[0])
        && kt.shape[1] == 1
        && (kt.shape[2] == 1 || kt.shape[2] == wt.shape[2]);
    if attrs.a_zp != 0 || attrs.b_zp != 0 || wt.dtype != DType::F32 || !per_column {
        return None;
    }
    let scaled = add_op(eg, Op::Binary(BinaryOp::Mul), &[w, k])?;
    add_op(eg, Op::MatMul(attrs), &[a, scaled])
}
