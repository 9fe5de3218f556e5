//! Compute definitions (TVM TE style): a [`ComputeDag`] of placeholders and stages, each stage an
//! index expression over its axes.
//!
//! Invariant: a `ComputeDag` is only built through its checked constructors, so every tensor has
//! a unique valid name and a non-empty static shape of at most [`kiln_ir::MAX_TENSOR_BYTES`];
//! tensors are in topological order (a stage reads only tensors created before it); each stage
//! body is well typed, uses only its own axis variables and loads every tensor with the right
//! rank at indices *proven* in bounds over the axis ranges (guards of `select`s count, as in the
//! verifier). Lowering therefore never has to re-check the definition.
//!
//! Tensors are addressed by [`BufferId`] in creation order; in stage bodies a `Load { buf, .. }`
//! names a DAG tensor, not a function buffer. Axis variables live in the DAG's own variable arena.

use crate::expr::{BinOp, BufferId, Expr, VarId};
use crate::verify::Bounds;
use kiln_ir::{DType, TensorType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Why a DAG definition was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    #[error("tensor `{name}`: {reason}")]
    Invalid { name: String, reason: String },
}

/// The combining operator of a reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReduceKind {
    Sum,
    Max,
    Min,
    Product,
}

impl ReduceKind {
    /// The identity of the reduction in `dtype` (`-inf` for a float max, `i32::MIN` for an i32
    /// max, ...), or `None` for bool.
    pub fn identity(self, dtype: DType) -> Option<Expr> {
        if !dtype.is_numeric() {
            return None;
        }
        // Integer bounds as the i64 bits their dtype holds (u64::MAX is -1).
        let (lo, hi) = dtype
            .int_range()
            .map_or((i64::MIN, i64::MAX), |(lo, hi)| (lo as i64, hi as i64));
        Some(match (self, dtype.is_float()) {
            (ReduceKind::Sum, _) => Expr::zero(dtype),
            (ReduceKind::Product, true) => Expr::Float { value: 1.0, dtype },
            (ReduceKind::Product, false) => Expr::Int { value: 1, dtype },
            (ReduceKind::Max, true) => Expr::Float {
                value: f64::NEG_INFINITY,
                dtype,
            },
            (ReduceKind::Max, false) => Expr::Int { value: lo, dtype },
            (ReduceKind::Min, true) => Expr::Float {
                value: f64::INFINITY,
                dtype,
            },
            (ReduceKind::Min, false) => Expr::Int { value: hi, dtype },
        })
    }

    /// `acc ⊕ value`.
    pub fn combine(self, acc: Expr, value: Expr) -> Expr {
        let op = match self {
            ReduceKind::Sum => BinOp::Add,
            ReduceKind::Max => BinOp::Max,
            ReduceKind::Min => BinOp::Min,
            ReduceKind::Product => BinOp::Mul,
        };
        Expr::binary(op, acc, value)
    }
}

/// A reduction: `out = init; for reduce axes: out = out ⊕ body`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reduction {
    pub kind: ReduceKind,
    /// A constant of the stage's dtype (the identity of `kind` unless given otherwise).
    pub init: Expr,
    /// An f32 `Sum` whose body is a product adds each product with one rounding (`fma`), in the
    /// order of the reduce axes, wherever the stage is computed (tensorized tiles always do).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fused_multiply_add: bool,
}

/// A named iteration axis with its variable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Axis {
    pub name: String,
    pub extent: usize,
    pub var: VarId,
}

/// A computed tensor: `T[axes] = body` (or a reduction of `body` over `reduce_axes`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// Spatial axes, one per output dimension.
    pub axes: Vec<Axis>,
    pub reduce_axes: Vec<Axis>,
    pub body: Expr,
    pub reduction: Option<Reduction>,
}

/// A tensor of the DAG: an input (placeholder) or a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DagTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// `None` for a placeholder.
    pub stage: Option<Stage>,
    /// A placeholder whose value is known when the kernel is compiled (a weight or table):
    /// schedules may re-layout it once (see [`crate::Instruction::Pack`]).
    #[serde(default)]
    pub constant: bool,
}

/// Placeholders and stages in topological order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ComputeDag {
    tensors: Vec<DagTensor>,
    vars: Vec<String>,
}

fn valid_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !crate::tir::is_reserved(s)
}

impl ComputeDag {
    /// An empty DAG.
    pub fn new() -> Self {
        ComputeDag::default()
    }

    /// Every tensor, in creation (topological) order.
    pub fn tensors(&self) -> &[DagTensor] {
        &self.tensors
    }

    /// The tensor `id`.
    pub fn tensor(&self, id: BufferId) -> Option<&DagTensor> {
        self.tensors.get(id.index())
    }

    /// The stage of tensor `id`, if it is one.
    pub fn stage(&self, id: BufferId) -> Option<&Stage> {
        self.tensor(id).and_then(|t| t.stage.as_ref())
    }

    /// The tensor called `name`.
    pub fn find(&self, name: &str) -> Option<BufferId> {
        self.tensors
            .iter()
            .position(|t| t.name == name)
            .map(|i| BufferId(i as u32))
    }

    /// The name of axis variable `v`.
    pub fn var_name(&self, v: VarId) -> &str {
        self.vars.get(v.index()).map_or("?", String::as_str)
    }

    /// Tensors read directly by stage `id`'s body.
    pub fn reads(&self, id: BufferId) -> BTreeSet<BufferId> {
        let mut out = BTreeSet::new();
        if let Some(s) = self.stage(id) {
            s.body.walk(&mut |e| {
                if let Expr::Load { buf, .. } = e {
                    out.insert(*buf);
                }
            });
        }
        out
    }

    /// Stages read by no other stage: the results of the DAG.
    pub fn outputs(&self) -> Vec<BufferId> {
        let mut read = BTreeSet::new();
        for i in 0..self.tensors.len() {
            read.extend(self.reads(BufferId(i as u32)));
        }
        (0..self.tensors.len())
            .map(|i| BufferId(i as u32))
            .filter(|id| self.stage(*id).is_some() && !read.contains(id))
            .collect()
    }

    fn check_new_tensor(&self, name: &str, dtype: DType, shape: &[usize]) -> Result<(), DagError> {
        let bad = |reason: String| {
            Err(DagError::Invalid {
                name: name.to_string(),
                reason,
            })
        };
        if !valid_name(name) {
            return bad("names are identifiers of letters, digits and `_`".into());
        }
        if self.find(name).is_some() {
            return bad("name used twice".into());
        }
        if shape.contains(&0) {
            return bad(format!("zero-sized shape {shape:?}"));
        }
        if let Err(e) = TensorType::new(dtype, shape.to_vec()) {
            return bad(e.to_string());
        }
        if self.tensors.len() >= u32::MAX as usize {
            return bad("too many tensors".into());
        }
        Ok(())
    }

    /// Adds an input tensor.
    pub fn placeholder(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[usize],
    ) -> Result<BufferId, DagError> {
        self.check_new_tensor(name, dtype, shape)?;
        self.tensors.push(DagTensor {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            stage: None,
            constant: false,
        });
        Ok(BufferId(self.tensors.len() as u32 - 1))
    }

    /// Marks placeholder `id` as known at compile time (no effect on stages).
    pub fn mark_constant(&mut self, id: BufferId) {
        if let Some(t) = self.tensors.get_mut(id.index()) {
            t.constant = t.stage.is_none();
        }
    }

    /// Adds an elementwise-style stage with axes named `i0, i1, ...`.
    pub fn compute(
        &mut self,
        name: &str,
        shape: &[usize],
        body: impl FnOnce(&[Expr]) -> Expr,
    ) -> Result<BufferId, DagError> {
        let names: Vec<String> = (0..shape.len()).map(|i| format!("i{i}")).collect();
        let axes: Vec<(&str, usize)> = names
            .iter()
            .map(String::as_str)
            .zip(shape.iter().copied())
            .collect();
        self.add_stage(name, &axes, &[], None, |ax, _| body(ax))
    }

    /// Adds a reduction stage with axes named `i0, i1, ...` and the given reduce axes; the
    /// initial value is the identity of `kind`.
    pub fn compute_reduce(
        &mut self,
        name: &str,
        shape: &[usize],
        reduce_axes: &[(&str, usize)],
        kind: ReduceKind,
        body: impl FnOnce(&[Expr], &[Expr]) -> Expr,
    ) -> Result<BufferId, DagError> {
        let names: Vec<String> = (0..shape.len()).map(|i| format!("i{i}")).collect();
        let axes: Vec<(&str, usize)> = names
            .iter()
            .map(String::as_str)
            .zip(shape.iter().copied())
            .collect();
        self.add_stage(name, &axes, reduce_axes, Some(kind), body)
    }

    /// Makes the f32 sum of products `id` accumulate each product with one rounding, in the order
    /// of its reduce axes (see [`Reduction::fused_multiply_add`]).
    pub fn fuse_multiply_add(&mut self, id: BufferId) -> Result<(), DagError> {
        let t = self
            .tensors
            .get_mut(id.index())
            .ok_or_else(|| DagError::Invalid {
                name: format!("#{}", id.index()),
                reason: "no such tensor".into(),
            })?;
        let name = t.name.clone();
        let ok = t.dtype == DType::F32;
        match t.stage.as_mut().and_then(|s| {
            let product = matches!(
                s.body,
                Expr::Binary {
                    op: crate::expr::BinOp::Mul,
                    ..
                }
            );
            s.reduction
                .as_mut()
                .filter(|r| product && r.kind == ReduceKind::Sum)
        }) {
            Some(r) if ok => {
                r.fused_multiply_add = true;
                Ok(())
            }
            _ => Err(DagError::Invalid {
                name,
                reason: "only an f32 sum of products can fuse its multiply-adds".into(),
            }),
        }
    }

    /// Adds a stage with named spatial axes (one per output dimension) and reduce axes; `body`
    /// gets the axis variables as expressions. With `reduction`, the stage is
    /// `init; out = out ⊕ body` over the reduce axes, `init` the identity of the reduction.
    pub fn add_stage(
        &mut self,
        name: &str,
        axes: &[(&str, usize)],
        reduce_axes: &[(&str, usize)],
        reduction: Option<ReduceKind>,
        body: impl FnOnce(&[Expr], &[Expr]) -> Expr,
    ) -> Result<BufferId, DagError> {
        let bad = |reason: String| DagError::Invalid {
            name: name.to_string(),
            reason,
        };
        let shape: Vec<usize> = axes.iter().map(|a| a.1).collect();
        let mut seen = BTreeSet::new();
        for (n, e) in axes.iter().chain(reduce_axes) {
            if !valid_name(n) || !seen.insert(*n) {
                return Err(bad(format!("axis name `{n}` is invalid or used twice")));
            }
            if *e == 0 {
                return Err(bad(format!("axis `{n}` has extent 0")));
            }
        }
        if reduction.is_none() && !reduce_axes.is_empty() {
            return Err(bad("reduce axes without a reduction".into()));
        }
        // Validate the name and shape before allocating variables.
        self.check_new_tensor(name, DType::F32, &shape)?;
        let mut mk = |(n, e): &(&str, usize)| {
            self.vars.push((*n).to_string());
            Axis {
                name: (*n).to_string(),
                extent: *e,
                var: VarId(self.vars.len() as u32 - 1),
            }
        };
        let axes: Vec<Axis> = axes.iter().map(&mut mk).collect();
        let reduce_axes: Vec<Axis> = reduce_axes.iter().map(&mut mk).collect();
        let ax: Vec<Expr> = axes.iter().map(|a| Expr::Var(a.var)).collect();
        let rax: Vec<Expr> = reduce_axes.iter().map(|a| Expr::Var(a.var)).collect();
        let body = body(&ax, &rax);
        let dtype = body
            .infer_dtype(&|b| self.tensor(b).map(|t| t.dtype))
            .map_err(|e| bad(format!("body: {}", e.0)))?;
        self.check_new_tensor(name, dtype, &shape)?;
        let reduction = match reduction {
            None => None,
            Some(kind) => {
                let init = kind
                    .identity(dtype)
                    .ok_or_else(|| bad(format!("{kind:?} reduction of dtype {dtype}")))?;
                Some(Reduction {
                    kind,
                    init,
                    fused_multiply_add: false,
                })
            }
        };
        // Variables: only this stage's axes. Loads: earlier tensors, right rank, in bounds.
        let mut bounds = Bounds::new();
        for a in axes.iter().chain(&reduce_axes) {
            bounds.set_loop(a.var, a.extent);
        }
        let own: BTreeSet<VarId> = axes.iter().chain(&reduce_axes).map(|a| a.var).collect();
        let this = BufferId(self.tensors.len() as u32);
        self.check_body(&body, &own, this, &mut bounds)
            .map_err(bad)?;
        self.tensors.push(DagTensor {
            name: name.into(),
            dtype,
            shape,
            stage: Some(Stage {
                axes,
                reduce_axes,
                body,
                reduction,
            }),
            constant: false,
        });
        Ok(this)
    }

    fn check_body(
        &self,
        e: &Expr,
        own: &BTreeSet<VarId>,
        this: BufferId,
        bounds: &mut Bounds,
    ) -> Result<(), String> {
        match e {
            Expr::Var(v) if !own.contains(v) => Err(format!(
                "uses variable `{}` of another stage",
                self.var_name(*v)
            )),
            Expr::Load { buf, indices } => {
                if *buf >= this {
                    return Err(format!(
                        "loads tensor {} that is not defined before it",
                        buf.0
                    ));
                }
                let t = &self.tensors[buf.index()];
                if indices.len() != t.shape.len() {
                    return Err(format!(
                        "loads `{}` with {} indices, rank {}",
                        t.name,
                        indices.len(),
                        t.shape.len()
                    ));
                }
                for (d, (i, &n)) in indices.iter().zip(&t.shape).enumerate() {
                    self.check_body(i, own, this, bounds)?;
                    let iv = bounds.interval(i);
                    if !iv.is_some_and(|iv| iv.lo >= 0 && iv.hi < n as i128) {
                        return Err(format!(
                            "index {d} of `{}` is not provably inside 0..{n} ({})",
                            t.name,
                            iv.map_or_else(|| "unbounded".into(), |iv| iv.to_string())
                        ));
                    }
                }
                Ok(())
            }
            Expr::Select {
                cond,
                then,
                otherwise,
            } => {
                self.check_body(cond, own, this, bounds)?;
                let n = bounds.fact_count();
                bounds.assume(cond, false);
                let r = self.check_body(then, own, this, bounds);
                bounds.truncate_facts(n);
                r?;
                bounds.assume(cond, true);
                let r = self.check_body(otherwise, own, this, bounds);
                bounds.truncate_facts(n);
                r
            }
            _ => e
                .children()
                .into_iter()
                .try_for_each(|c| self.check_body(c, own, this, bounds)),
        }
    }
}
