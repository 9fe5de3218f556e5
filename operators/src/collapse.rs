//! Axis collapsing of data-movement ops: a transpose, concat, slice or constant pad moves whole
//! runs of row-major-contiguous elements along the axes it leaves alone, so it is the same op
//! over a view of its operands with those axes merged. ShuffleNet's `[1,232,14,14]` concat is
//! a `[232, 196]` concat: its inner loop runs over 196 contiguous elements (vectors) instead of
//! 14 (scalars), without a division per element.
//!
//! Invariant: [`collapse`] returns an op and operand shapes such that each collapsed operand is
//! a row-major reshape of the original (equal element count, same element order), and the
//! collapsed op applied to the reshaped operands gives the row-major reshape of the original
//! result. Two adjacent axes merge only when the op treats the pair exactly like one axis of
//! their product.

use kiln_ir::op::PadMode;
use kiln_ir::{Op, TensorType};
use std::ops::Range;

/// A movement op over merged axes: the op, its operands' shapes and its result's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Collapsed {
    pub op: Op,
    pub inputs: Vec<Vec<usize>>,
    pub output: Vec<usize>,
}

/// Splits `0..rank` into runs of consecutive axes, merging axis `i + 1` into the run holding
/// `i` when `joins(i)`.
fn runs(rank: usize, joins: impl Fn(usize) -> bool) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = vec![];
    for i in 0..rank {
        match out.last_mut() {
            Some(r) if joins(i - 1) => r.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// `shape` with each run's axes multiplied into one.
fn merge(shape: &[usize], runs: &[Range<usize>]) -> Vec<usize> {
    runs.iter()
        .map(|r| shape[r.clone()].iter().product())
        .collect()
}

/// `op` over operands of types `inputs` with every mergeable pair of adjacent axes merged (and,
/// for a transpose, size-1 axes dropped); `None` when nothing merges or the op is not a
/// transpose, concat, slice or constant pad.
pub fn collapse(op: &Op, inputs: &[&TensorType]) -> Option<Collapsed> {
    let shape = &inputs.first()?.shape;
    let rank = shape.len();
    let (op, runs) = match op {
        Op::Transpose { perm } => {
            // Size-1 axes move nowhere; of the rest, `j` and `j + 1` merge when the result
            // keeps them adjacent and in order.
            let kept: Vec<usize> = (0..rank).filter(|&j| shape[j] != 1).collect();
            let renumber = |j: usize| kept.iter().position(|&k| k == j);
            let perm: Vec<usize> = perm.iter().filter_map(|&j| renumber(j)).collect();
            let shape: Vec<usize> = kept.iter().map(|&j| shape[j]).collect();
            let pos = |j: usize| perm.iter().position(|&p| p == j);
            let runs = runs(shape.len(), |j| pos(j + 1) == pos(j).map(|p| p + 1));
            let run_of = |j: usize| runs.iter().position(|r| r.contains(&j));
            let perm = perm
                .iter()
                .filter(|&&j| runs.iter().any(|r| r.start == j))
                .map(|&j| run_of(j))
                .collect::<Option<Vec<usize>>>()?;
            let input = merge(&shape, &runs);
            if input.len() == rank || input.is_empty() {
                return None;
            }
            let output = perm.iter().map(|&j| input[j]).collect();
            let op = Op::Transpose { perm };
            return Some(Collapsed {
                op,
                inputs: vec![input],
                output,
            });
        }
        Op::Concat { axis } => {
            let axis = *axis;
            let runs = runs(rank, |i| i + 1 != axis && i != axis);
            let axis = runs.iter().position(|r| r.contains(&axis))?;
            (Op::Concat { axis }, runs)
        }
        Op::Slice {
            start,
            size,
            stride,
        } => {
            let whole = |i: usize| start[i] == 0 && size[i] == shape[i] && stride[i] == 1;
            let runs = runs(rank, |i| stride[i] == 1 && whole(i + 1));
            // A run slices along its first axis; the whole axes after it scale that range.
            let inner = |r: &Range<usize>| shape[r.start + 1..r.end].iter().product::<usize>();
            let op = Op::Slice {
                start: runs.iter().map(|r| start[r.start] * inner(r)).collect(),
                size: runs.iter().map(|r| size[r.start] * inner(r)).collect(),
                stride: runs.iter().map(|r| stride[r.start]).collect(),
            };
            (op, runs)
        }
        Op::Pad {
            pads,
            mode: PadMode::Constant,
            value,
        } => {
            let runs = runs(rank, |i| pads[i + 1] == [0, 0]);
            let inner = |r: &Range<usize>| shape[r.start + 1..r.end].iter().product::<usize>();
            let op = Op::Pad {
                pads: runs
                    .iter()
                    .map(|r| pads[r.start].map(|p| p * inner(r)))
                    .collect(),
                mode: PadMode::Constant,
                value: *value,
            };
            (op, runs)
        }
        _ => return None,
    };
    if runs.len() == rank {
        return None;
    }
    let types: Vec<TensorType> = inputs
        .iter()
        .map(|t| TensorType {
            dtype: t.dtype,
            shape: merge(&t.shape, &runs),
        })
        .collect();
    let refs: Vec<&TensorType> = types.iter().collect();
    let output = kiln_ir::infer_type(&op, &refs).ok()?.shape;
    Some(Collapsed {
        op,
        inputs: types.into_iter().map(|t| t.shape).collect(),
        output,
    })
}

/// Whether `op` computes each element of its result from the elements of its operands at the
/// same (broadcast) position and nothing else: its definition never looks at an axis.
///
/// These are the fusion rule's epilogue ops but RESCALE (per-channel parameters along an axis)
/// and TABLE (a lookup table operand that does not broadcast).
pub fn is_pointwise(op: &Op) -> bool {
    crate::fusion::is_epilogue(op) && !matches!(op, Op::Rescale(_) | Op::Table)
}

/// The runs of axes a group of pointwise ops (see [`is_pointwise`]) can run over merged, given
/// the shape of every value it reads or computes (equal ranks, each broadcasting along size-1
/// axes to `out`): axes merge while every value is either whole or size 1 along all of them
/// (a `[1,64,8,8]` tensor plus a `[1,1,1,1]` scalar is a `[4096]` loop; a per-channel
/// `[1,1,1,C]` operand keeps the channel axis apart). `None` when nothing merges.
pub fn pointwise_runs(out: &[usize], values: &[&[usize]]) -> Option<Vec<Range<usize>>> {
    let rank = out.len();
    if rank < 2 || values.iter().any(|s| s.len() != rank) {
        return None;
    }
    // Per value, whether the current run reads it whole (`Some(true)`), broadcast
    // (`Some(false)`), or not yet known (every axis so far has extent 1).
    let mut run_kind: Vec<Option<bool>> = vec![None; values.len()];
    let mut out_runs: Vec<Range<usize>> = vec![];
    for axis in 0..rank {
        let kinds: Vec<Option<bool>> = values
            .iter()
            .map(|s| (out[axis] != 1).then_some(s[axis] == out[axis]))
            .collect();
        let joins = !out_runs.is_empty()
            && kinds
                .iter()
                .zip(&run_kind)
                .all(|(k, r)| k.is_none() || r.is_none() || k == r);
        if joins {
            if let Some(r) = out_runs.last_mut() {
                r.end = axis + 1;
            }
            for (r, k) in run_kind.iter_mut().zip(&kinds) {
                *r = r.or(*k);
            }
        } else {
            out_runs.push(axis..axis + 1);
            run_kind = kinds;
        }
    }
    (out_runs.len() < rank).then_some(out_runs)
}

/// `shape` with each of `runs` merged into one axis (see [`pointwise_runs`]).
pub fn merged(shape: &[usize], runs: &[Range<usize>]) -> Vec<usize> {
    merge(shape, runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::op::OrderedF64;
    use kiln_ir::{DType, Tensor};
    use proptest::prelude::*;

    fn tensor(shape: &[usize], seed: usize) -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| (i * 7 + seed) as f32).collect();
        Tensor::new(shape.to_vec(), data).expect("a valid tensor")
    }

    /// The collapsed op on reshaped operands equals the reshaped result of the op (the module
    /// invariant), and it has fewer axes.
    fn check(op: &Op, shapes: &[Vec<usize>]) -> Result<bool, TestCaseError> {
        let xs: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| tensor(s, i))
            .collect();
        let types: Vec<&TensorType> = xs.iter().map(|t| t.ty()).collect();
        let Some(c) = collapse(op, &types) else {
            return Ok(false);
        };
        let refs: Vec<&Tensor> = xs.iter().collect();
        let want = crate::evaluate(op, &refs).expect("the op evaluates");
        let views: Vec<Tensor> = xs
            .iter()
            .zip(&c.inputs)
            .map(|(t, s)| t.clone().reshaped(s.clone()).expect("same element count"))
            .collect();
        let refs: Vec<&Tensor> = views.iter().collect();
        let got = crate::evaluate(&c.op, &refs).expect("the collapsed op evaluates");
        prop_assert_eq!(got.shape(), c.output.as_slice());
        prop_assert!(c.inputs[0].len() < shapes[0].len());
        let want = want.reshaped(c.output.clone()).expect("same element count");
        prop_assert_eq!(got, want, "{:?} -> {:?}", op, c);
        Ok(true)
    }

    fn shape() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(prop_oneof![Just(1usize), 2usize..5], 2..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn transposes_collapse_exactly(s in shape(), keys in prop::collection::vec(0u32..100, 6)) {
            let mut perm: Vec<usize> = (0..s.len()).collect();
            perm.sort_by_key(|&i| keys[i]);
            check(&Op::Transpose { perm }, &[s])?;
        }

        #[test]
        fn concats_collapse_exactly(s in shape(), axis in 0usize..6, extra in 1usize..4, n in 1usize..4) {
            let axis = axis % s.len();
            let shapes: Vec<Vec<usize>> = (0..n)
                .map(|i| {
                    let mut t = s.clone();
                    t[axis] = if i == 0 { s[axis] } else { extra + i };
                    t
                })
                .collect();
            check(&Op::Concat { axis }, &shapes)?;
        }

        #[test]
        fn slices_and_pads_collapse_exactly(s in shape(), cut in prop::collection::vec((0usize..3, 1usize..3, 0usize..2), 6)) {
            let r = s.len();
            let start: Vec<usize> = (0..r).map(|i| cut[i].0.min(s[i] - 1) * cut[i].2).collect();
            let stride: Vec<usize> = (0..r).map(|i| if cut[i].2 == 0 { 1 } else { cut[i].1 }).collect();
            let size: Vec<usize> = (0..r)
                .map(|i| if cut[i].2 == 0 { s[i] } else { (s[i] - start[i]).div_ceil(stride[i]) })
                .collect();
            check(&Op::Slice { start, size, stride }, std::slice::from_ref(&s))?;
            let pads: Vec<[usize; 2]> = (0..r).map(|i| [cut[i].2 * cut[i].0, cut[i].2]).collect();
            let pad = Op::Pad { pads, mode: PadMode::Constant, value: OrderedF64(-1.5) };
            check(&pad, &[s])?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// A chain of pointwise ops over operands broadcasting along random size-1 axes
        /// computes, over the merged views, the reshape of what it computes unmerged.
        #[test]
        fn pointwise_groups_collapse_exactly(
            out in shape(),
            masks in prop::collection::vec(prop::collection::vec(any::<bool>(), 6), 3),
        ) {
            let shapes: Vec<Vec<usize>> = masks
                .iter()
                .map(|m| out.iter().zip(m).map(|(&d, &keep)| if keep { d } else { 1 }).collect())
                .collect();
            let xs: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| tensor(s, i)).collect();
            // (x0 + x1) * x2, then a clamp: every value of the chain takes part in the merge.
            let ops = [
                Op::Binary(kiln_ir::op::BinaryOp::Add),
                Op::Binary(kiln_ir::op::BinaryOp::Mul),
                Op::Clamp { min: OrderedF64(-5.0), max: OrderedF64(500.0) },
            ];
            let run = |xs: &[Tensor]| -> Tensor {
                let sum = crate::evaluate(&ops[0], &[&xs[0], &xs[1]]).expect("add");
                let prod = crate::evaluate(&ops[1], &[&sum, &xs[2]]).expect("mul");
                crate::evaluate(&ops[2], &[&prod]).expect("clamp")
            };
            let sum_shape: Vec<usize> = shapes[0].iter().zip(&shapes[1]).map(|(a, b)| *a.max(b)).collect();
            let full = run(&xs);
            let mut values: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
            values.push(&sum_shape);
            values.push(full.shape());
            let Some(runs) = pointwise_runs(full.shape(), &values) else {
                // Nothing merges only when no two neighbouring axes could.
                return Ok(());
            };
            prop_assert!(runs.len() < out.len());
            let views: Vec<Tensor> = xs
                .iter()
                .map(|t| t.clone().reshaped(merged(t.shape(), &runs)).expect("a row-major view"))
                .collect();
            let got = run(&views);
            let want = full.clone().reshaped(merged(full.shape(), &runs)).expect("a view");
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn pointwise_runs_keep_broadcast_axes_apart() {
        // A quantisation of an NCHW tensor by scalars: one run.
        let scalar = [1, 1, 1, 1];
        assert_eq!(
            pointwise_runs(&[1, 64, 8, 8], &[&[1, 64, 8, 8], &scalar]),
            Some(std::iter::once(0..4).collect())
        );
        // A per-channel bias of an NHWC tensor: pixels merge, channels stay apart.
        assert_eq!(
            pointwise_runs(&[1, 8, 8, 64], &[&[1, 8, 8, 64], &[1, 1, 1, 64]]),
            Some(vec![0..3, 3..4])
        );
        // Per-channel NCHW: nothing to merge around the channel axis but the pixels.
        assert_eq!(
            pointwise_runs(&[2, 64, 8, 8], &[&[2, 64, 8, 8], &[1, 64, 1, 1]]),
            Some(vec![0..1, 1..2, 2..4])
        );
        assert_eq!(pointwise_runs(&[3, 4], &[&[3, 1], &[1, 4]]), None);
    }

    #[test]
    fn shufflenet_movement_collapses_to_fewer_axes() {
        let ty = |s: &[usize]| TensorType {
            dtype: DType::F32,
            shape: s.to_vec(),
        };
        let (a, b) = (ty(&[1, 116, 14, 14]), ty(&[1, 116, 14, 14]));
        let c = collapse(&Op::Concat { axis: 1 }, &[&a, &b]).expect("collapses");
        assert_eq!(c.inputs, vec![vec![1, 116, 196]; 2]);
        assert_eq!(c.output, vec![1, 232, 196]);
        let x = ty(&[1, 2, 116, 14, 14]);
        let t = collapse(
            &Op::Transpose {
                perm: vec![0, 2, 1, 3, 4],
            },
            &[&x],
        )
        .expect("collapses");
        assert_eq!(
            t.op,
            Op::Transpose {
                perm: vec![1, 0, 2]
            }
        );
        assert_eq!(
            (t.inputs[0].clone(), t.output),
            (vec![2, 116, 196], vec![116, 2, 196])
        );
        let nothing = ty(&[3, 4]);
        assert_eq!(
            collapse(&Op::Transpose { perm: vec![1, 0] }, &[&nothing]),
            None
        );
    }
}
