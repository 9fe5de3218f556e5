//! The search space of one compute DAG: the knobs its sketch reads, each with its legal values.
//!
//! Invariant: every [`Knobs`] this module returns sets only knobs the DAG's sketch reads, each to
//! one of the values listed for it here, so every candidate is a distinct point of the space and
//! replays legally ([`crate::sketch::schedule_with`]). Tiles are chosen among divisors of the
//! extent they split (no guarded partial tiles), vector tiles among multiples of 4 (Cranelift's
//! f32x4) or, on targets with micro-kernels, among the tiles of [`crate::micro`].
//!
//! Randomness comes from [`SplitMix`] (SplitMix64): a few lines, seedable and identical on
//! every platform and version, so a tuning run is reproducible from its seed.

use crate::micro::{MicroShape, SketchTarget};
use crate::sketch::{is_reduction, output_is_channels_last, Knobs, OpClass, NHWC_STAGE};
use kiln_tir::{BufferId, ComputeDag};
use serde::{Deserialize, Serialize};

/// SplitMix64, a small deterministic random number generator.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A knob of [`Knobs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Knob {
    VectorTile,
    RowTile,
    ParallelMin,
    UnrollTile,
    UnrollWindow,
    AttachOuter,
    InnerVector,
}

/// One dimension of the space: a knob and its values (booleans as 0 and 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dim {
    pub knob: Knob,
    pub values: Vec<usize>,
}

/// The knobs a DAG's sketch reads and their values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchSpace {
    pub dims: Vec<Dim>,
}

fn divisors_in(n: usize, candidates: &[usize]) -> Vec<usize> {
    candidates
        .iter()
        .copied()
        .filter(|&c| c > 0 && n.is_multiple_of(c))
        .collect()
}

const BOOL: [usize; 2] = [0, 1];
/// Tile widths searched for vectorized loops (one to four 4-lane vectors).
const VECTOR_TILES: [usize; 3] = [4, 8, 16];
const ROW_TILES: [usize; 9] = [1, 2, 3, 4, 5, 6, 7, 8, 14];
const PARALLEL: [usize; 6] = [0, 2, 4, 8, 16, 64];
const INNER_VECTOR: [usize; 3] = [4, 8, 16];

/// Column tiles of an axis of `n` for micro-kernels of `shape`: divisors up to four vectors
/// that use at least half of their last vector, and the default.
fn micro_cols(shape: MicroShape, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (1..=n.min(4 * shape.lanes))
        .filter(|&d| n.is_multiple_of(d))
        .filter(|&d| d % shape.lanes == 0 || d % shape.lanes >= shape.lanes / 2 || d == n)
        .collect();
    let dflt = shape.cols_for(n);
    if !v.contains(&dflt) {
        v.push(dflt);
    }
    v.sort_unstable();
    v
}

/// Row tiles of an axis of `m` for micro-kernels of `shape`: divisors that fit the registers
/// with one-vector rows.
fn micro_rows(shape: MicroShape, m: usize) -> Vec<usize> {
    (1..=m.min(shape.max_rows(1)))
        .filter(|&d| m.is_multiple_of(d))
        .collect()
}

impl SearchSpace {
    /// The space of `dag` (one kernel of class `class`) on `target`, mirroring what its
    /// sketch reads.
    pub fn new(dag: &ComputeDag, class: OpClass, target: &SketchTarget) -> SearchSpace {
        let mut dims = vec![];
        let mut push = |knob: Knob, values: Vec<usize>| {
            if values.len() > 1 {
                dims.push(Dim { knob, values });
            }
        };
        let outputs = dag.outputs();
        let output = outputs.first().copied();
        let shape = output
            .and_then(|o| dag.tensor(o))
            .map(|t| t.shape.clone())
            .unwrap_or_default();
        let anchor = (0..dag.tensors().len())
            .map(|i| BufferId(i as u32))
            .find(|&id| is_reduction(dag, id) && !outputs.contains(&id));
        let anchor_name = anchor
            .and_then(|a| dag.tensor(a))
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let tiled = matches!(class, OpClass::Conv | OpClass::Depthwise | OpClass::MatMul);
        let micro = target.microkernels.filter(|_| tiled);
        let micro_tiled = match (micro, anchor, shape.len()) {
            (Some(m), Some(a), 4)
                if anchor_name.ends_with(NHWC_STAGE) && output_is_channels_last(dag, a) =>
            {
                push(Knob::VectorTile, micro_cols(m, shape[3]));
                push(Knob::RowTile, micro_rows(m, shape[2]));
                push(Knob::AttachOuter, BOOL.to_vec());
                true
            }
            (Some(m), _, 3) if class == OpClass::MatMul => {
                push(Knob::VectorTile, micro_cols(m, shape[2]));
                push(Knob::RowTile, micro_rows(m, shape[1]));
                push(Knob::AttachOuter, BOOL.to_vec());
                true
            }
            _ => false,
        };
        let tiled = tiled && !micro_tiled;
        match (tiled, anchor, shape.len()) {
            (true, Some(a), 4) if anchor_name.ends_with(NHWC_STAGE) => {
                let (ch, col) = if output_is_channels_last(dag, a) {
                    (3, 2)
                } else {
                    (1, 3)
                };
                push(Knob::VectorTile, divisors_in(shape[ch], &VECTOR_TILES));
                push(Knob::RowTile, divisors_in(shape[col], &ROW_TILES));
                push(Knob::UnrollTile, BOOL.to_vec());
                push(Knob::UnrollWindow, BOOL.to_vec());
                push(Knob::AttachOuter, BOOL.to_vec());
            }
            (true, Some(_), rank) if rank >= 3 => {
                let (row, col) = match (class, rank) {
                    (OpClass::Depthwise, 4) => (2, 3),
                    (_, 4) => (1, 3),
                    _ => (1, 2),
                };
                push(Knob::VectorTile, divisors_in(shape[col], &VECTOR_TILES));
                push(Knob::RowTile, divisors_in(shape[row], &[1, 2, 4, 8]));
                push(Knob::UnrollTile, BOOL.to_vec());
                push(Knob::UnrollWindow, BOOL.to_vec());
            }
            (true, None, 3) if class == OpClass::MatMul => {
                push(Knob::VectorTile, divisors_in(shape[2], &VECTOR_TILES));
                push(Knob::RowTile, divisors_in(shape[1], &[1, 2, 4, 6, 8]));
                push(Knob::UnrollTile, BOOL.to_vec());
            }
            _ => {}
        }
        let inner = shape.last().copied().unwrap_or(1);
        push(Knob::InnerVector, divisors_in(inner, &INNER_VECTOR));
        push(Knob::ParallelMin, PARALLEL.to_vec());
        SearchSpace { dims }
    }

    /// The number of points.
    pub fn size(&self) -> usize {
        self.dims.iter().map(|d| d.values.len()).product()
    }

    /// The knobs of one choice per dimension (`choice[i]` indexes `dims[i].values`).
    pub fn knobs(&self, choice: &[usize]) -> Knobs {
        let mut k = Knobs::default();
        for (d, &c) in self.dims.iter().zip(choice) {
            let v = d.values[c.min(d.values.len() - 1)];
            match d.knob {
                Knob::VectorTile => k.vector_tile = Some(v),
                Knob::RowTile => k.row_tile = Some(v),
                Knob::ParallelMin => k.parallel_min = Some(v),
                Knob::UnrollTile => k.unroll_tile = Some(v == 1),
                Knob::UnrollWindow => k.unroll_window = Some(v == 1),
                Knob::AttachOuter => k.attach_outer = Some(v == 1),
                Knob::InnerVector => k.inner_vector = Some(v),
            }
        }
        k
    }

    /// A uniformly random point.
    pub fn sample(&self, rng: &mut SplitMix) -> Knobs {
        let choice: Vec<usize> = self
            .dims
            .iter()
            .map(|d| rng.below(d.values.len()))
            .collect();
        self.knobs(&choice)
    }

    /// The choice indices of `k` (knobs left at their default take a random value).
    fn choice_of(&self, k: &Knobs, rng: &mut SplitMix) -> Vec<usize> {
        self.dims
            .iter()
            .map(|d| {
                let v = match d.knob {
                    Knob::VectorTile => k.vector_tile,
                    Knob::RowTile => k.row_tile,
                    Knob::ParallelMin => k.parallel_min,
                    Knob::UnrollTile => k.unroll_tile.map(usize::from),
                    Knob::UnrollWindow => k.unroll_window.map(usize::from),
                    Knob::AttachOuter => k.attach_outer.map(usize::from),
                    Knob::InnerVector => k.inner_vector,
                };
                v.and_then(|v| d.values.iter().position(|&x| x == v))
                    .unwrap_or_else(|| rng.below(d.values.len()))
            })
            .collect()
    }

    /// `k` with one dimension changed to another of its values (tile sizes, unrolling,
    /// parallel granularity or compute location, whichever the dimension is).
    pub fn mutate(&self, k: &Knobs, rng: &mut SplitMix) -> Knobs {
        let mut choice = self.choice_of(k, rng);
        if self.dims.is_empty() {
            return self.knobs(&choice);
        }
        let d = rng.below(self.dims.len());
        let n = self.dims[d].values.len();
        choice[d] = (choice[d] + 1 + rng.below(n - 1)) % n;
        self.knobs(&choice)
    }

    /// A child taking each dimension from `a` or `b` at random.
    pub fn crossover(&self, a: &Knobs, b: &Knobs, rng: &mut SplitMix) -> Knobs {
        let (ca, cb) = (self.choice_of(a, rng), self.choice_of(b, rng));
        let choice: Vec<usize> = ca
            .iter()
            .zip(&cb)
            .map(|(&x, &y)| if rng.below(2) == 0 { x } else { y })
            .collect();
        self.knobs(&choice)
    }
}
