//! Extraction cost: what an equivalent graph is worth on the target.
//!
//! Invariant: the cost of an e-node is finite only when its type is known (a node the analysis
//! could not type is never extracted); constants and inputs cost nothing; the cost of a class is
//! the cheapest of its nodes plus its operands (egg's tree cost, so a value used twice counts
//! twice, which favours graphs that share less only when they are cheaper anyway), summed
//! exactly in whole cycles ([`Cycles`]).

use crate::analysis::GraphEGraph;
use crate::lang::{op_of, Node};
use egg::{CostFunction, Id};
use kiln_ir::op::DataLayout;
use kiln_ir::{DType, Op, TensorType};

/// The cost of one op, given its operand and result types, and of materialising a kernel's
/// output. A learned model can implement it.
pub trait CostModel {
    /// The op as a kernel of its own (arithmetic, memory traffic, launch).
    fn op_cost(&self, op: &Op, inputs: &[&TensorType], output: &TensorType) -> f64;
    /// The op fused into a kernel with its producer: its arithmetic only.
    fn fused_op_cost(&self, op: &Op, inputs: &[&TensorType], output: &TensorType) -> f64;
    /// Ending a kernel at a value: a launch, writing the value and reading it back.
    fn kernel_cost(&self, output: &TensorType) -> f64;
}

/// A roofline-style estimate: arithmetic (multiply-adds count two), bytes moved (operands read,
/// the result written), and a fixed cost per kernel launch. The units are nominal cycles of an
/// edge core: 8 flops, 4 bytes per cycle, 2000 cycles per kernel.
///
/// Layout: the lowering computes float and 8-bit integer convolutions channels-last (channels are the vector
/// lanes), so an NCHW float convolution also pays for converting its activations inside the
/// kernel: its input and output move once more (a strided pass).
///
/// Micro-kernels: on a target that has them (`microkernels`), float convolutions whose output
/// is channels-last and float matmuls run as tensorized register tiles, about four times the
/// arithmetic rate of the loop code an NCHW convolution gets.
#[derive(Clone, Copy, Debug, Default)]
pub struct RooflineCost {
    pub microkernels: bool,
}

impl RooflineCost {
    const FLOPS_PER_CYCLE: f64 = 8.0;
    /// How much faster micro-kernel arithmetic runs than loop code.
    const MICRO_SPEEDUP: f64 = 4.0;
    const BYTES_PER_CYCLE: f64 = 4.0;
    const KERNEL: f64 = 2000.0;
}

impl RooflineCost {
    /// Arithmetic as the roofline counts it: [`Op::flops`], except that movement ops other
    /// than aliases (reshape, identity) cost a pass like elementwise ops.
    fn flops(op: &Op, inputs: &[&TensorType], output: &TensorType) -> f64 {
        match op {
            Op::Identity | Op::Reshape { .. } => 0.0,
            Op::Conv2d(_) | Op::DepthwiseConv2d(_) | Op::TransposeConv2d(_) | Op::MatMul(_) => {
                op.flops(inputs, output)
            }
            _ => output.num_elements() as f64,
        }
    }
}

impl RooflineCost {
    /// Arithmetic in loop-code flops: micro-kernel work counts a fraction (see the type doc).
    fn arithmetic(&self, op: &Op, inputs: &[&TensorType], output: &TensorType) -> f64 {
        let flops = Self::flops(op, inputs, output);
        let float = inputs.first().is_some_and(|x| x.dtype.is_float());
        let tensorized = match op {
            Op::Conv2d(a) | Op::DepthwiseConv2d(a) => a.layout == DataLayout::Nhwc,
            Op::MatMul(_) => true,
            _ => false,
        };
        if self.microkernels && float && tensorized {
            flops / Self::MICRO_SPEEDUP
        } else {
            flops
        }
    }

    /// The extra pass of an NCHW float convolution over its input and output (see the type doc).
    fn layout_conversion(op: &Op, inputs: &[&TensorType], output: &TensorType) -> f64 {
        match inputs.first() {
            Some(x) if nchw_float_conv(op, inputs) => {
                (x.byte_size() + output.byte_size()) as f64 / Self::BYTES_PER_CYCLE
            }
            _ => 0.0,
        }
    }
}

/// A float convolution over NCHW activations: the lowering computes it channels-last and
/// converts inside the kernel (see [`RooflineCost`]).
fn nchw_float_conv(op: &Op, inputs: &[&TensorType]) -> bool {
    matches!(op, Op::Conv2d(a) | Op::DepthwiseConv2d(a) if a.layout == DataLayout::Nchw)
        && inputs
            .first()
            .is_some_and(|x| x.dtype.is_float() || matches!(x.dtype, DType::I8 | DType::U8))
}

impl CostModel for RooflineCost {
    fn op_cost(&self, op: &Op, inputs: &[&TensorType], output: &TensorType) -> f64 {
        let flops = self.arithmetic(op, inputs, output);
        let bytes: f64 =
            inputs.iter().map(|t| t.byte_size() as f64).sum::<f64>() + output.byte_size() as f64;
        let launch = match op {
            // Row-major reshapes and identities are aliases, not kernels.
            Op::Identity | Op::Reshape { .. } => 0.0,
            _ => Self::KERNEL,
        };
        flops / Self::FLOPS_PER_CYCLE
            + bytes / Self::BYTES_PER_CYCLE
            + launch
            + Self::layout_conversion(op, inputs, output)
    }

    fn fused_op_cost(&self, op: &Op, inputs: &[&TensorType], output: &TensorType) -> f64 {
        self.arithmetic(op, inputs, output) / Self::FLOPS_PER_CYCLE
            + Self::layout_conversion(op, inputs, output)
    }

    fn kernel_cost(&self, output: &TensorType) -> f64 {
        Self::KERNEL + 2.0 * output.byte_size() as f64 / Self::BYTES_PER_CYCLE
    }
}

/// `M` with every NCHW float convolution made prohibitively expensive, so that extraction takes
/// the channels-last form wherever the e-graph has one ([`crate::LayoutChoice::Nhwc`]).
#[derive(Clone, Copy, Debug)]
pub struct PreferChannelsLast<'a, M>(pub &'a M);

impl<M: CostModel> PreferChannelsLast<'_, M> {
    const PENALTY: f64 = 1e12;

    fn penalty(op: &Op, inputs: &[&TensorType]) -> f64 {
        if nchw_float_conv(op, inputs) {
            Self::PENALTY
        } else {
            0.0
        }
    }
}

impl<M: CostModel> CostModel for PreferChannelsLast<'_, M> {
    fn op_cost(&self, op: &Op, inputs: &[&TensorType], output: &TensorType) -> f64 {
        self.0.op_cost(op, inputs, output) + Self::penalty(op, inputs)
    }

    fn fused_op_cost(&self, op: &Op, inputs: &[&TensorType], output: &TensorType) -> f64 {
        self.0.fused_op_cost(op, inputs, output) + Self::penalty(op, inputs)
    }

    fn kernel_cost(&self, output: &TensorType) -> f64 {
        self.0.kernel_cost(output)
    }
}

/// An extraction cost in whole nominal cycles, summed exactly.
///
/// egg's tree cost counts a value read twice twice (`x * sigmoid(x)`, a residual add), so the
/// cost of a class near the output of a deep network grows exponentially with the depth below
/// it: EfficientNet-B0's last blocks reach about 2^70 cycles, where an f64 can no longer tell
/// two alternatives apart by one transpose and extraction chose between them arbitrarily
/// (duplicating a swish in NCHW for a pooling that had a channels-last form). Integers keep the
/// difference exact up to 2^128; beyond that costs saturate (and tie) but stay finite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cycles {
    Finite(u128),
    /// A node that cannot be extracted (its type is unknown).
    Infinite,
}

impl Cycles {
    const MAX_FINITE: u128 = u128::MAX;

    /// A model's estimate, rounded up to whole cycles (a NaN or infinite estimate is
    /// [`Cycles::Infinite`]).
    pub fn of(x: f64) -> Cycles {
        if x.is_finite() {
            // `as` saturates at the type's range.
            Cycles::Finite(x.max(0.0).ceil() as u128)
        } else {
            Cycles::Infinite
        }
    }
}

impl std::ops::Add for Cycles {
    type Output = Cycles;
    fn add(self, other: Cycles) -> Cycles {
        match (self, other) {
            (Cycles::Finite(a), Cycles::Finite(b)) => {
                Cycles::Finite(a.checked_add(b).unwrap_or(Self::MAX_FINITE))
            }
            _ => Cycles::Infinite,
        }
    }
}

impl std::iter::Sum for Cycles {
    fn sum<I: Iterator<Item = Cycles>>(iter: I) -> Cycles {
        iter.fold(Cycles::Finite(0), |a, b| a + b)
    }
}

/// egg's view of a [`CostModel`] over one e-graph.
#[derive(Clone, Copy)]
pub struct GraphCost<'a, M: CostModel> {
    pub egraph: &'a GraphEGraph,
    pub model: &'a M,
    /// Fusion e-graphs: ops cost their arithmetic, `(kernel x)` nodes the materialisation.
    pub fusion: bool,
}

impl<M: CostModel> std::fmt::Debug for GraphCost<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphCost").finish_non_exhaustive()
    }
}

impl<M: CostModel> CostFunction<Node> for GraphCost<'_, M> {
    type Cost = Cycles;

    fn cost<C: FnMut(Id) -> Cycles>(&mut self, enode: &Node, mut costs: C) -> Cycles {
        match enode {
            Node::Index(_) | Node::Op(_) | Node::Input(_) | Node::Const(_) => Cycles::Finite(0),
            Node::Outputs(children) => children.iter().map(|&c| costs(c)).sum(),
            Node::Kernel([x]) => match &self.egraph[*x].data.ty {
                Some(t) => Cycles::of(self.model.kernel_cost(t)) + costs(*x),
                None => Cycles::Infinite,
            },
            Node::Apply(children) => {
                let Some((&op_id, operands)) = children.split_first() else {
                    return Cycles::Infinite;
                };
                let Some(op) = op_of(self.egraph, op_id) else {
                    return Cycles::Infinite;
                };
                let types: Option<Vec<&TensorType>> = operands
                    .iter()
                    .map(|&c| self.egraph[c].data.ty.as_ref())
                    .collect();
                let Some(types) = types else {
                    return Cycles::Infinite;
                };
                let Ok(out) = kiln_ir::infer_type(op, &types) else {
                    return Cycles::Infinite;
                };
                let own = if self.fusion {
                    self.model.fused_op_cost(op, &types, &out)
                } else {
                    self.model.op_cost(op, &types, &out)
                };
                Cycles::of(own) + operands.iter().map(|&c| costs(c)).sum::<Cycles>()
            }
        }
    }
}
