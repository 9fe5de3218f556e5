//! The graph builder used by the op mappings: adds IR nodes with constant folding and offers the
//! small composite helpers (rank alignment, reshapes, casts, scalars) every op family needs.
//!
//! Invariant: every value the builder returns is defined in its graph with the type
//! `kiln_ir::infer_type` derives; a node whose operands are all constants is replaced by its
//! evaluated constant whenever the operator library can evaluate it, so shape subgraphs become
//! constants. Helpers that would be no-ops (reshape to the same shape, cast to the same dtype,
//! identity transpose) return their input unchanged.

use kiln_ir::op::{BinaryOp, ReduceOp, UnaryOp};
use kiln_ir::{
    DType, Element, Graph, IrError, Op, OrderedF64, Tensor, TensorData, TensorType, ValueId,
};

/// Folded constants larger than this many elements are left as nodes, so folding never bloats
/// the constant table with expanded tensors.
const MAX_FOLD_ELEMENTS: usize = 1 << 22;

/// Why a node could not be mapped; the dispatcher adds op type, node name and opset.
#[derive(Debug)]
pub(crate) enum NodeError {
    Unsupported(String),
    Invalid(String),
    /// An operand that must be a constant (a shape, axes, pads...) is computed at run time.
    NotStatic(String),
}

impl NodeError {
    /// The explanation, without the kind.
    pub fn reason(&self) -> &str {
        match self {
            NodeError::Unsupported(r) | NodeError::Invalid(r) | NodeError::NotStatic(r) => r,
        }
    }
}

impl From<IrError> for NodeError {
    fn from(e: IrError) -> Self {
        NodeError::Invalid(e.to_string())
    }
}

pub(crate) type NResult<T> = Result<T, NodeError>;

/// Shorthand for an unsupported-feature error.
pub(crate) fn unsupported<T>(reason: impl Into<String>) -> NResult<T> {
    Err(NodeError::Unsupported(reason.into()))
}

/// Shorthand for an operand that must be known at import time but is not.
pub(crate) fn not_static<T>(what: impl std::fmt::Display) -> NResult<T> {
    Err(NodeError::NotStatic(format!(
        "{what} must be known at import time (a constant or a foldable shape computation)"
    )))
}

/// Shorthand for an invalid-node error.
pub(crate) fn invalid<T>(reason: impl Into<String>) -> NResult<T> {
    Err(NodeError::Invalid(reason.into()))
}

/// A graph under construction plus the name given to the nodes being added.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    pub g: Graph,
    /// Name of the ONNX node being mapped; IR nodes created for it carry it.
    pub node_name: String,
    /// Values of a sub-byte ONNX type, held widened (see [`Narrow`]).
    pub narrow: std::collections::HashMap<ValueId, crate::tensor_io::Narrow>,
    /// Values whose leading axis holds a data-dependent number of rows (the rest padding), with
    /// the i64 `[1]` value holding that number (see `crate::dynamic_rows`).
    pub dynamic_rows: std::collections::HashMap<ValueId, ValueId>,
}

impl Builder {
    /// Adds `op` over `inputs`, folding it to a constant when all inputs are constants.
    pub fn add(&mut self, op: Op, inputs: &[ValueId]) -> NResult<ValueId> {
        let ty = self
            .g
            .infer_node(&op, inputs)
            .map_err(|e| annotate(e, &self.node_name))?;
        if !inputs.is_empty() && ty.num_elements() <= MAX_FOLD_ELEMENTS {
            let consts: Option<Vec<&Tensor>> = inputs.iter().map(|&v| self.g.const_of(v)).collect();
            if let Some(args) = consts {
                if let Ok(t) = kiln_operators::evaluate(&op, &args) {
                    if *t.ty() == ty {
                        return Ok(self.konst(t));
                    }
                }
            }
        }
        Ok(self.g.add_node(op, inputs, self.node_name.clone())?)
    }

    /// A constant value.
    pub fn konst(&mut self, t: Tensor) -> ValueId {
        self.g.add_const_value(t, self.node_name.clone())
    }

    /// A rank-0 constant of `dtype` holding `v` (cast semantics).
    pub fn scalar(&mut self, dtype: DType, v: f64) -> ValueId {
        let data = TensorData::from_f64(dtype, [v]);
        let t = Tensor::from_data(
            TensorType {
                dtype,
                shape: vec![],
            },
            data,
        )
        .expect("one element fits a scalar");
        self.konst(t)
    }

    /// A constant of `dtype` and `shape` with the given values (cast semantics).
    pub fn const_f64(&mut self, dtype: DType, shape: Vec<usize>, v: &[f64]) -> NResult<ValueId> {
        let ty = TensorType::new(dtype, shape)?;
        let t = Tensor::from_data(ty, TensorData::from_f64(dtype, v.iter().copied()))?;
        Ok(self.konst(t))
    }

    /// A 1-D i64 constant.
    pub fn const_i64(&mut self, v: &[i64]) -> ValueId {
        self.konst(Tensor::new(vec![v.len()], v.to_vec()).expect("a vector fits its length"))
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        self.g.ty(v)
    }

    pub fn shape(&self, v: ValueId) -> Vec<usize> {
        self.g.ty(v).shape.clone()
    }

    pub fn rank(&self, v: ValueId) -> usize {
        self.g.ty(v).rank()
    }

    pub fn dtype(&self, v: ValueId) -> DType {
        self.g.ty(v).dtype
    }

    /// The constant a value holds, if known at import time.
    pub fn const_of(&self, v: ValueId) -> Option<&Tensor> {
        self.g.const_of(v)
    }

    /// The integer elements of a constant value.
    pub fn const_ints(&self, v: ValueId) -> Option<Vec<i64>> {
        self.const_of(v).map(|t| t.data().to_i64_vec())
    }

    /// The float elements of a constant value.
    pub fn const_floats(&self, v: ValueId) -> Option<Vec<f64>> {
        self.const_of(v).map(|t| t.data().to_f64_vec())
    }

    /// The elements of a constant input that the op needs at import time, or an error naming it.
    pub fn need_ints(&self, v: ValueId, what: &str) -> NResult<Vec<i64>> {
        match self.const_ints(v) {
            Some(x) => Ok(x),
            None => not_static(what),
        }
    }

    /// Float elements of a constant input needed at import time.
    pub fn need_floats(&self, v: ValueId, what: &str) -> NResult<Vec<f64>> {
        match self.const_floats(v) {
            Some(x) => Ok(x),
            None => not_static(what),
        }
    }

    pub fn reshape(&mut self, v: ValueId, shape: Vec<usize>) -> NResult<ValueId> {
        if self.g.ty(v).shape == shape {
            return Ok(v);
        }
        self.add(Op::Reshape { shape }, &[v])
    }

    pub fn cast(&mut self, v: ValueId, to: DType) -> NResult<ValueId> {
        if self.dtype(v) == to {
            return Ok(v);
        }
        self.add(Op::Cast { to }, &[v])
    }

    pub fn transpose(&mut self, v: ValueId, perm: Vec<usize>) -> NResult<ValueId> {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(v);
        }
        self.add(Op::Transpose { perm }, &[v])
    }

    /// Prepends size-1 dims so that `v` has rank `r` (numpy broadcasting alignment).
    pub fn align_rank(&mut self, v: ValueId, r: usize) -> NResult<ValueId> {
        let s = self.shape(v);
        if s.len() >= r {
            return Ok(v);
        }
        let mut shape = vec![1; r - s.len()];
        shape.extend(s);
        self.reshape(v, shape)
    }

    /// Aligns the ranks of a set of operands.
    pub fn align_all(&mut self, vs: &[ValueId]) -> NResult<Vec<ValueId>> {
        let r = vs.iter().map(|&v| self.rank(v)).max().unwrap_or(0);
        vs.iter().map(|&v| self.align_rank(v, r)).collect()
    }

    pub fn unary(&mut self, u: UnaryOp, v: ValueId) -> NResult<ValueId> {
        self.add(Op::Unary(u), &[v])
    }

    /// A broadcasting binary op with numpy rank alignment.
    pub fn binary(&mut self, b: BinaryOp, a: ValueId, c: ValueId) -> NResult<ValueId> {
        let r = self.rank(a).max(self.rank(c));
        let a = self.align_rank(a, r)?;
        let c = self.align_rank(c, r)?;
        self.add(Op::Binary(b), &[a, c])
    }

    /// `a op scalar`, the scalar made in `a`'s dtype.
    pub fn binary_scalar(&mut self, b: BinaryOp, a: ValueId, s: f64) -> NResult<ValueId> {
        let c = self.scalar(self.dtype(a), s);
        self.binary(b, a, c)
    }

    /// `cond ? a : b` with rank alignment.
    pub fn select(&mut self, cond: ValueId, a: ValueId, b: ValueId) -> NResult<ValueId> {
        let v = self.align_all(&[cond, a, b])?;
        self.add(Op::Select, &v)
    }

    pub fn clamp(&mut self, v: ValueId, min: f64, max: f64) -> NResult<ValueId> {
        self.add(
            Op::Clamp {
                min: OrderedF64(min),
                max: OrderedF64(max),
            },
            &[v],
        )
    }

    /// Reduces along each of `axes` (kept with size 1), then drops them unless `keepdims`.
    pub fn reduce(
        &mut self,
        kind: ReduceOp,
        v: ValueId,
        axes: &[usize],
        keepdims: bool,
    ) -> NResult<ValueId> {
        let mut x = v;
        for &axis in axes {
            x = self.add(Op::Reduce { kind, axis }, &[x])?;
        }
        if keepdims {
            return Ok(x);
        }
        let shape: Vec<usize> = self
            .shape(x)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, d)| d)
            .collect();
        self.reshape(x, shape)
    }

    /// Elements `start .. start + size` (step `stride`) of one axis.
    pub fn slice_axis(
        &mut self,
        v: ValueId,
        axis: usize,
        start: usize,
        size: usize,
        stride: usize,
    ) -> NResult<ValueId> {
        let shape = self.shape(v);
        if start == 0 && stride == 1 && shape.get(axis) == Some(&size) {
            return Ok(v);
        }
        let mut st = vec![0; shape.len()];
        let mut sz = shape.clone();
        let mut sd = vec![1; shape.len()];
        st[axis] = start;
        sz[axis] = size;
        sd[axis] = stride;
        self.add(
            Op::Slice {
                start: st,
                size: sz,
                stride: sd,
            },
            &[v],
        )
    }

    pub fn concat(&mut self, vs: &[ValueId], axis: usize) -> NResult<ValueId> {
        if vs.len() == 1 {
            return Ok(vs[0]);
        }
        self.add(Op::Concat { axis }, vs)
    }

    /// A constant tensor holding `values` with `shape`.
    pub fn const_tensor<T: Element>(
        &mut self,
        shape: Vec<usize>,
        values: Vec<T>,
    ) -> NResult<ValueId> {
        Ok(self.konst(Tensor::new(shape, values)?))
    }

    /// An i64 iota `0..n` along `axis` of a rank-`rank` constant (size 1 along the other axes).
    /// Index masks are built by comparing iotas (`j < i`, `j == i`), which folds when small
    /// and is computed at run time otherwise, instead of materialising `n * n` constants.
    pub fn iota(&mut self, n: usize, axis: usize, rank: usize) -> NResult<ValueId> {
        let mut shape = vec![1; rank];
        shape[axis] = n;
        self.const_tensor(shape, (0..n as i64).collect())
    }

    /// Broadcasts `v` to `shape` (numpy rules) with a TILE of the size-1 dims.
    pub fn broadcast_to(&mut self, v: ValueId, shape: &[usize]) -> NResult<ValueId> {
        let v = self.align_rank(v, shape.len())?;
        let s = self.shape(v);
        if s == shape {
            return Ok(v);
        }
        let mut multiples = Vec::with_capacity(shape.len());
        for (&have, &want) in s.iter().zip(shape) {
            if have == want {
                multiples.push(1);
            } else if have == 1 {
                multiples.push(want);
            } else {
                return invalid(format!("cannot broadcast {s:?} to {shape:?}"));
            }
        }
        self.add(Op::Tile { multiples }, &[v])
    }
}

fn annotate(e: IrError, name: &str) -> NodeError {
    match e {
        IrError::Type { op, reason } if !name.is_empty() => {
            NodeError::Invalid(format!("{op} (node `{name}`): {reason}"))
        }
        other => NodeError::Invalid(other.to_string()),
    }
}

/// Normalises a possibly negative axis against `rank`.
pub(crate) fn norm_axis(axis: i64, rank: usize) -> NResult<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        invalid(format!("axis {axis} is out of range for rank {rank}"))
    }
}

/// Normalises a list of axes, rejecting duplicates; the result is sorted.
pub(crate) fn norm_axes(axes: &[i64], rank: usize) -> NResult<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = norm_axis(a, rank)?;
        if out.contains(&n) {
            return invalid(format!("axis {a} is repeated in {axes:?}"));
        }
        out.push(n);
    }
    out.sort_unstable();
    Ok(out)
}
