//! Random legal schedule traces over random example DAGs: the generator shared by the property
//! tests of kiln-tir and kiln-codegen (codegen includes this folder by path).

use super::*;
use kiln_tir::{ComputeDag, Instruction as I, Schedule, Trace};
use proptest::prelude::*;

/// Builds a trace from random choices, keeping the instructions that apply, then the longest
/// prefix that passes end-state validation.
pub fn random_trace(dag: &ComputeDag, choices: &[(u8, u32, u32, u32)]) -> Trace {
    let stages: Vec<String> = dag
        .tensors()
        .iter()
        .filter(|t| t.stage.is_some())
        .map(|t| t.name.clone())
        .collect();
    let placeholders: Vec<(String, usize)> = dag
        .tensors()
        .iter()
        .filter(|t| t.stage.is_none())
        .map(|t| (t.name.clone(), t.shape.len()))
        .collect();
    let mut sched = Schedule::naive(dag);
    let mut insts = vec![];
    for &(op, a, b, c) in choices {
        let stage = stages[a as usize % stages.len()].clone();
        let Some(loops) = sched.loops(dag, &stage) else {
            continue;
        };
        if loops.is_empty() {
            continue;
        }
        let pick = |x: u32| loops[x as usize % loops.len()].clone();
        let inst = match op % 10 {
            0 => {
                let l = pick(b);
                let divisors: Vec<usize> = (1..=l.extent).filter(|d| l.extent % d == 0).collect();
                let f1 = if c % 3 == 0 {
                    (c as usize >> 2) % (l.extent + 2) + 1
                } else {
                    divisors[(c as usize >> 2) % divisors.len()]
                };
                let factors = if c % 5 == 0 {
                    vec![f1, [1, 2, 4][(c as usize >> 8) % 3]]
                } else {
                    vec![f1]
                };
                I::Split {
                    stage,
                    loop_: l.name,
                    factors,
                }
            }
            1 => {
                let mut order: Vec<String> = loops.iter().map(|l| l.name.clone()).collect();
                let n = order.len();
                order.rotate_left(c as usize % n);
                if b % 2 == 0 {
                    order.reverse();
                }
                order.truncate(2.max(n - (b as usize % n)));
                I::Reorder { stage, order }
            }
            2 if loops.len() >= 2 => {
                let i = b as usize % (loops.len() - 1);
                I::Fuse {
                    stage,
                    loops: vec![loops[i].name.clone(), loops[i + 1].name.clone()],
                }
            }
            3 => I::Vectorize {
                stage,
                loop_: loops[loops.len() - 1].name.clone(),
            },
            4 => I::Unroll {
                stage,
                loop_: pick(b).name,
            },
            5 => I::Parallel {
                stage,
                loop_: loops[0].name.clone(),
            },
            6 => I::ComputeInline { stage },
            7 => I::CacheWrite { stage },
            8 => {
                let target = stages[b as usize % stages.len()].clone();
                let Some(tl) = sched.loops(dag, &target) else {
                    continue;
                };
                if tl.is_empty() {
                    continue;
                }
                I::ComputeAt {
                    stage,
                    target_stage: target,
                    target_loop: tl[c as usize % tl.len()].name.clone(),
                }
            }
            _ => {
                let (name, rank) = placeholders[b as usize % placeholders.len()].clone();
                let axis = c as usize % rank;
                I::Pack {
                    buffer: name,
                    axis,
                    factor: (c as usize >> 4) % 4 + 1,
                    outer_first: c & 64 != 0,
                    // Sometimes a second dimension in groups of 2 to 4 as well.
                    group: (c & 128 != 0 && rank > 1)
                        .then(|| ((axis + 1) % rank, (c as usize >> 2) % 3 + 2)),
                }
            }
        };
        if sched.apply(dag, &inst).is_ok() {
            insts.push(inst);
        }
    }
    while Trace(insts.clone()).apply(dag).is_err() {
        insts.pop();
    }
    Trace(insts)
}

#[derive(Clone, Debug)]
pub enum Family {
    Conv(Conv),
    Matmul(usize, usize, usize),
    Pools(usize, usize, usize, usize),
    Reduce(usize, usize, usize),
    Elementwise(Vec<usize>),
    Transpose(usize, usize, usize),
}

impl Family {
    pub fn dag(&self) -> ComputeDag {
        match self {
            Family::Conv(p) => p.dag(),
            Family::Matmul(m, n, k) => matmul(*m, *n, *k),
            Family::Pools(c, h, w, st) => pools(1, *c, *h, *w, 2, *st),
            Family::Reduce(a, b, c) => reduce_axis1(*a, *b, *c),
            Family::Elementwise(s) => elementwise(s),
            Family::Transpose(a, b, c) => transpose(*a, *b, *c),
        }
    }
}

pub fn arb_family() -> impl Strategy<Value = Family> {
    prop_oneof![
        (
            1usize..3,
            1usize..4,
            3usize..8,
            3usize..8,
            1usize..6,
            1usize..4,
            1usize..4,
            0usize..2,
            1usize..3
        )
            .prop_map(|(n, c, h, w, o, kh, kw, pad, stride)| Family::Conv(Conv {
                n,
                c,
                h,
                w,
                o,
                kh: kh.min(h),
                kw: kw.min(w),
                pad,
                stride
            })),
        (1usize..10, 1usize..10, 1usize..10).prop_map(|(m, n, k)| Family::Matmul(m, n, k)),
        (1usize..3, 2usize..8, 2usize..8, 1usize..3)
            .prop_map(|(c, h, w, s)| Family::Pools(c, h, w, s)),
        (1usize..6, 1usize..6, 1usize..6).prop_map(|(a, b, c)| Family::Reduce(a, b, c)),
        proptest::collection::vec(1usize..9, 1..4).prop_map(Family::Elementwise),
        (1usize..5, 1usize..5, 1usize..5).prop_map(|(a, b, c)| Family::Transpose(a, b, c)),
    ]
}

pub fn choices() -> impl Strategy<Value = Vec<(u8, u32, u32, u32)>> {
    proptest::collection::vec(
        (any::<u8>(), any::<u32>(), any::<u32>(), any::<u32>()),
        0..14,
    )
}
