//! Affine index expressions: `Σ a_v · v + rest + c` over a set of (inner) loop variables, where
//! `rest` is free of them. Shared by compute_at region analysis and tensorization, and (as the
//! strides [`var_stride`] and [`linear_stride`]) by code generation and the schedules.
//!
//! Invariant: [`linearize`] returns a form only when the expression equals it for every value
//! of the variables (sums, differences and products by integer constants; anything else that
//! mentions an inner variable is `None`), with no coefficient or constant overflowing `i128`.

use crate::expr::{Expr, VarId};
use std::collections::{BTreeMap, BTreeSet};

/// An index expression in the form `Σ coeffs[v] * v + rest + c`, where `rest` is free of the
/// inner variables.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Lin {
    pub coeffs: BTreeMap<VarId, i128>,
    pub rest: Vec<(i128, Expr)>,
    pub c: i128,
}

impl Lin {
    pub fn scale(mut self, k: i128) -> Option<Lin> {
        for v in self.coeffs.values_mut() {
            *v = v.checked_mul(k)?;
        }
        for (s, _) in &mut self.rest {
            *s = s.checked_mul(k)?;
        }
        self.c = self.c.checked_mul(k)?;
        Some(self)
    }

    pub fn add(mut self, o: Lin) -> Option<Lin> {
        for (v, a) in o.coeffs {
            let e = self.coeffs.entry(v).or_insert(0);
            *e = e.checked_add(a)?;
        }
        self.coeffs.retain(|_, a| *a != 0);
        self.rest.extend(o.rest);
        self.c = self.c.checked_add(o.c)?;
        Some(self)
    }

    /// The `rest` part as one expression (`None` when empty).
    pub fn rest_expr(&self) -> Option<Expr> {
        let mut acc: Option<Expr> = None;
        for (s, e) in &self.rest {
            let term = if *s == 1 || *s == -1 {
                e.clone()
            } else {
                e.clone() * Expr::int(s.unsigned_abs() as i64)
            };
            acc = Some(match (acc, *s < 0) {
                (None, false) => term,
                (None, true) => Expr::int(0) - term,
                (Some(a), false) => a + term,
                (Some(a), true) => a - term,
            });
        }
        acc
    }
}

pub(crate) fn mentions(e: &Expr, vars: &BTreeSet<VarId>) -> bool {
    e.any(&|x| matches!(x, Expr::Var(v) if vars.contains(v)))
}

pub(crate) fn linearize(e: &Expr, inner: &BTreeSet<VarId>) -> Option<Lin> {
    use crate::expr::BinOp;
    if !mentions(e, inner) {
        return Some(match e {
            Expr::Int { value, .. } => Lin {
                c: *value as i128,
                ..Lin::default()
            },
            _ => Lin {
                rest: vec![(1, e.clone())],
                ..Lin::default()
            },
        });
    }
    match e {
        Expr::Var(v) => Some(Lin {
            coeffs: [(*v, 1)].into(),
            ..Lin::default()
        }),
        Expr::Binary {
            op: BinOp::Add,
            a,
            b,
        } => linearize(a, inner)?.add(linearize(b, inner)?),
        Expr::Binary {
            op: BinOp::Sub,
            a,
            b,
        } => linearize(a, inner)?.add(linearize(b, inner)?.scale(-1)?),
        Expr::Binary {
            op: BinOp::Mul,
            a,
            b,
        } => match (a.as_int(), b.as_int()) {
            (_, Some(k)) => linearize(a, inner)?.scale(k as i128),
            (Some(k), _) => linearize(b, inner)?.scale(k as i128),
            _ => None,
        },
        _ => None,
    }
}

/// `Σ terms + c` as an expression.
pub(crate) fn sum_expr(coeffs: &BTreeMap<VarId, i128>, c: i128) -> Option<Expr> {
    let mut acc: Option<Expr> = None;
    for (v, a) in coeffs {
        let term = if *a == 1 {
            Expr::Var(*v)
        } else {
            Expr::Var(*v) * Expr::int(i64::try_from(*a).ok()?)
        };
        acc = Some(match acc {
            None => term,
            Some(x) => x + term,
        });
    }
    let c64 = i64::try_from(c).ok()?;
    Some(match acc {
        None => Expr::int(c64),
        Some(x) if c == 0 => x,
        Some(x) if c < 0 => x - Expr::int(-c64),
        Some(x) => x + Expr::int(c64),
    })
}

/// The stride of `e` in `v` when `e` is affine in `v` with a constant stride (0 when `e` does
/// not mention `v`).
pub fn var_stride(e: &Expr, v: VarId) -> Option<i64> {
    let lin = linearize(e, &BTreeSet::from([v]))?;
    i64::try_from(lin.coeffs.get(&v).copied().unwrap_or(0)).ok()
}

/// The row-major element stride in `v` of an access of a buffer of `shape` at `indices`, when
/// every index is affine in `v` with a constant stride.
pub fn linear_stride(shape: &[usize], indices: &[Expr], v: VarId) -> Option<i64> {
    let mut total = 0i64;
    for (i, e) in indices.iter().enumerate() {
        let inner: i64 = shape
            .get(i + 1..)?
            .iter()
            .try_fold(1i64, |acc, &d| acc.checked_mul(i64::try_from(d).ok()?))?;
        total = total.checked_add(var_stride(e, v)?.checked_mul(inner)?)?;
    }
    Some(total)
}
