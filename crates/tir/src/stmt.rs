//! Statements of the loop IR.
//!
//! Invariant: statements never allocate; every buffer a statement touches is declared in its
//! [`crate::PrimFunc`]. A `For` binds a fresh variable ranging over `0..extent`; its `kind` is a
//! promise about independence of iterations that the verifier checks where it can (see
//! [`crate::verify`]). A `Tensorized` statement is its body, marked as an instance of a
//! micro-kernel pattern ([`TensorIntrinsic`]) that codegen may replace by a target micro-kernel
//! computing exactly the same values (see [`crate::tensorize`]).

use crate::expr::{BufferId, Expr, VarId};
use serde::{Deserialize, Serialize};

/// How a loop's iterations are executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ForKind {
    #[default]
    Serial,
    /// Iterations run on worker threads; they write disjoint elements of shared buffers.
    Parallel,
    /// Innermost loop of extent 2 or more over straight-line stores, run as 4-lane SIMD chunks
    /// and a scalar tail.
    Vectorized,
    /// Fully unrolled by codegen.
    Unrolled,
}

impl ForKind {
    /// The keyword suffix of the text form (`for.parallel`); empty for serial loops.
    pub fn suffix(self) -> &'static str {
        match self {
            ForKind::Serial => "",
            ForKind::Parallel => ".parallel",
            ForKind::Vectorized => ".vectorized",
            ForKind::Unrolled => ".unrolled",
        }
    }
}

/// A micro-kernel pattern a [`Stmt::Tensorized`] body is an instance of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorIntrinsic {
    /// A register tile `out[m, n] = epilogue(Σ_r lhs[m, n, r] * rhs[m, n, r])`: GEMM, 1x1 and
    /// general convolutions (one operand broadcast along `n`), depthwise convolutions (both
    /// operands vectors along `n`). See [`crate::tensorize::Contraction`].
    Contraction,
}

impl TensorIntrinsic {
    /// Every intrinsic.
    pub const ALL: [TensorIntrinsic; 1] = [TensorIntrinsic::Contraction];

    /// The name used in the text form and in traces.
    pub fn name(self) -> &'static str {
        match self {
            TensorIntrinsic::Contraction => "contraction",
        }
    }

    /// The intrinsic called `name`.
    pub fn from_name(name: &str) -> Option<TensorIntrinsic> {
        TensorIntrinsic::ALL.into_iter().find(|i| i.name() == name)
    }
}

/// A statement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Stmt {
    For {
        var: VarId,
        extent: usize,
        kind: ForKind,
        body: Box<Stmt>,
    },
    Seq(Vec<Stmt>),
    Store {
        buf: BufferId,
        indices: Vec<Expr>,
        value: Expr,
    },
    IfThenElse {
        cond: Expr,
        then: Box<Stmt>,
        otherwise: Option<Box<Stmt>>,
    },
    /// `body`, which is an instance of `intrinsic` (checked when it is built, see
    /// [`crate::tensorize`]); its meaning is that of `body`.
    Tensorized {
        intrinsic: TensorIntrinsic,
        body: Box<Stmt>,
    },
}

impl Stmt {
    /// A loop.
    pub fn for_(var: VarId, extent: usize, kind: ForKind, body: Stmt) -> Stmt {
        Stmt::For {
            var,
            extent,
            kind,
            body: Box::new(body),
        }
    }

    /// `if cond { then }`.
    pub fn if_then(cond: Expr, then: Stmt) -> Stmt {
        Stmt::IfThenElse {
            cond,
            then: Box::new(then),
            otherwise: None,
        }
    }

    /// A store.
    pub fn store(buf: BufferId, indices: Vec<Expr>, value: Expr) -> Stmt {
        Stmt::Store {
            buf,
            indices,
            value,
        }
    }

    /// A sequence, flattening nested sequences and unwrapping a single statement.
    pub fn seq(stmts: Vec<Stmt>) -> Stmt {
        let mut out = Vec::with_capacity(stmts.len());
        for s in stmts {
            match s {
                Stmt::Seq(inner) => out.extend(inner),
                s => out.push(s),
            }
        }
        if out.len() == 1 {
            out.pop().unwrap_or(Stmt::Seq(vec![]))
        } else {
            Stmt::Seq(out)
        }
    }

    /// The buffers this statement loads from or stores to (anywhere inside it).
    pub fn buffers_accessed(&self) -> std::collections::BTreeSet<BufferId> {
        let mut used = std::collections::BTreeSet::new();
        self.walk(&mut |s| {
            let mut expr = |e: &Expr| {
                e.walk(&mut |x| {
                    if let Expr::Load { buf, .. } = x {
                        used.insert(*buf);
                    }
                })
            };
            match s {
                Stmt::Store {
                    buf,
                    indices,
                    value,
                } => {
                    indices.iter().for_each(&mut expr);
                    expr(value);
                    used.insert(*buf);
                }
                Stmt::IfThenElse { cond, .. } => expr(cond),
                Stmt::For { .. } | Stmt::Seq(_) | Stmt::Tensorized { .. } => {}
            }
        });
        used
    }

    /// Calls `f` on this statement and every nested statement, parents first.
    pub fn walk(&self, f: &mut dyn FnMut(&Stmt)) {
        f(self);
        match self {
            Stmt::For { body, .. } | Stmt::Tensorized { body, .. } => body.walk(f),
            Stmt::Seq(v) => v.iter().for_each(|s| s.walk(f)),
            Stmt::Store { .. } => {}
            Stmt::IfThenElse {
                then, otherwise, ..
            } => {
                then.walk(f);
                if let Some(o) = otherwise {
                    o.walk(f);
                }
            }
        }
    }
}
