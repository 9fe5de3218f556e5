//! Tensor comparison with a tolerance: the single rule `kiln run` and `kiln conformance` use to
//! decide whether a computed tensor matches an expected one.
//!
//! Invariant: two tensors match only when their dtypes and shapes are identical and every element
//! pair satisfies `|a - b| <= atol + rtol * |b|` (`b` the expected value). Floats: NaN matches
//! NaN, an infinity matches only the same infinity. Integers and booleans must be exactly equal,
//! whatever the tolerance. This module belongs in a library crate once a second user appears.

use kiln_ir::{dispatch_data, Element, Tensor, TensorData};
use std::fmt;

/// Relative and absolute tolerance of a comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

impl Tolerance {
    /// `kiln run`'s default: rtol 1e-3, atol 1e-4 (whole models accumulate long f32 sums).
    pub const RUN: Tolerance = Tolerance {
        rtol: 1e-3,
        atol: 1e-4,
    };

    /// `kiln conformance`'s default: rtol 1e-3 (ONNX's backend tests) and atol 1e-5, looser than
    /// ONNX's 1e-7, which sits below f32 rounding of values near 1: an f32 reference accumulates
    /// in another order than numpy's float64 oracle, so results that cancel to about zero differ
    /// by ~1e-6.
    pub const CONFORMANCE: Tolerance = Tolerance {
        rtol: 1e-3,
        atol: 1e-5,
    };
}

/// The outcome of comparing an actual tensor with an expected one.
#[derive(Clone, Debug, PartialEq)]
pub enum Comparison {
    /// Same dtype and shape; the errors and whether every element is within tolerance.
    Compared {
        /// Largest `|a - b|` (0 for exact matches; infinite for NaN against a number).
        max_abs_err: f64,
        /// Largest `|a - b| / |b|` (infinite where `b` is 0 and `a` is not).
        max_rel_err: f64,
        /// Number of elements outside the tolerance.
        mismatches: usize,
        /// Index of the first element outside the tolerance, with actual and expected values.
        first_mismatch: Option<(usize, f64, f64)>,
    },
    /// The types differ; no element comparison was made.
    TypeMismatch { actual: String, expected: String },
}

impl Comparison {
    /// True when the tensors match under the rule of the module doc.
    pub fn passed(&self) -> bool {
        matches!(self, Comparison::Compared { mismatches: 0, .. })
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Comparison::Compared {
                max_abs_err,
                max_rel_err,
                mismatches,
                first_mismatch,
            } => {
                write!(
                    f,
                    "max abs err {max_abs_err:.3e}, max rel err {max_rel_err:.3e}"
                )?;
                if let Some((i, a, b)) = first_mismatch {
                    write!(
                        f,
                        ", {mismatches} element(s) out of tolerance, first at {i}: got {a}, expected {b}"
                    )?;
                }
                Ok(())
            }
            Comparison::TypeMismatch { actual, expected } => {
                write!(f, "got {actual}, expected {expected}")
            }
        }
    }
}

/// Compares `actual` with `expected` under `tol`.
pub fn compare(actual: &Tensor, expected: &Tensor, tol: Tolerance) -> Comparison {
    if actual.ty() != expected.ty() {
        return Comparison::TypeMismatch {
            actual: actual.ty().to_string(),
            expected: expected.ty().to_string(),
        };
    }
    match (actual.data(), expected.data()) {
        (TensorData::F32(a), TensorData::F32(b)) => compare_floats(a, b, tol),
        (TensorData::F16(a), TensorData::F16(b)) => compare_floats(a, b, tol),
        (a, b) => {
            // Integers and booleans: exact, via i64 (lossless for every integer dtype).
            let a = dispatch_data!(a, v => v.iter().map(|x| x.to_i64()).collect::<Vec<_>>());
            let b = dispatch_data!(b, v => v.iter().map(|x| x.to_i64()).collect::<Vec<_>>());
            compare_exact(&a, &b)
        }
    }
}

fn compare_floats<T: Element>(a: &[T], b: &[T], tol: Tolerance) -> Comparison {
    let mut acc = Acc::default();
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let (x, y) = (x.to_f64(), y.to_f64());
        let (abs, rel, ok) = if x.is_nan() || y.is_nan() {
            let both = x.is_nan() && y.is_nan();
            let e = if both { 0.0 } else { f64::INFINITY };
            (e, e, both)
        } else if x == y {
            (0.0, 0.0, true)
        } else if x.is_infinite() || y.is_infinite() {
            // No tolerance makes a finite value match an infinity (`atol + rtol * inf` would).
            (f64::INFINITY, f64::INFINITY, false)
        } else {
            let abs = (x - y).abs();
            let rel = if y == 0.0 {
                f64::INFINITY
            } else {
                abs / y.abs()
            };
            (abs, rel, abs <= tol.atol + tol.rtol * y.abs())
        };
        acc.add(i, x, y, abs, rel, ok);
    }
    acc.finish()
}

fn compare_exact(a: &[i64], b: &[i64]) -> Comparison {
    let mut acc = Acc::default();
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let abs = (x as f64 - y as f64).abs();
        let rel = if x == y {
            0.0
        } else if y == 0 {
            f64::INFINITY
        } else {
            abs / (y as f64).abs()
        };
        acc.add(i, x as f64, y as f64, abs, rel, x == y);
    }
    acc.finish()
}

#[derive(Default)]
struct Acc {
    max_abs: f64,
    max_rel: f64,
    mismatches: usize,
    first: Option<(usize, f64, f64)>,
}

impl Acc {
    fn add(&mut self, i: usize, x: f64, y: f64, abs: f64, rel: f64, ok: bool) {
        self.max_abs = self.max_abs.max(abs);
        self.max_rel = self.max_rel.max(rel);
        if !ok {
            self.mismatches += 1;
            self.first.get_or_insert((i, x, y));
        }
    }

    fn finish(self) -> Comparison {
        Comparison::Compared {
            max_abs_err: self.max_abs,
            max_rel_err: self.max_rel,
            mismatches: self.mismatches,
            first_mismatch: self.first,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: Vec<f32>) -> Tensor {
        Tensor::new(vec![v.len()], v).unwrap()
    }

    #[test]
    fn floats_within_tolerance_pass() {
        let c = compare(
            &f32s(vec![1.0005, 0.0, 100.0]),
            &f32s(vec![1.0, 0.000_005, 100.09]),
            Tolerance::CONFORMANCE,
        );
        assert!(c.passed(), "{c}");
    }

    #[test]
    fn floats_outside_tolerance_fail_and_report_first_element() {
        let c = compare(
            &f32s(vec![1.0, 2.0, 3.0]),
            &f32s(vec![1.0, 2.1, 3.5]),
            Tolerance::CONFORMANCE,
        );
        assert!(!c.passed());
        match c {
            Comparison::Compared {
                mismatches,
                first_mismatch: Some((1, _, _)),
                max_abs_err,
                ..
            } => {
                assert_eq!(mismatches, 2);
                assert!((max_abs_err - 0.5).abs() < 1e-9);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn tolerance_is_relative_to_expected() {
        let tol = Tolerance {
            rtol: 0.1,
            atol: 0.0,
        };
        // |a-b| = 1 <= 0.1 * 10 passes; swapped, 1 > 0.1 * 9 fails.
        assert!(compare(&f32s(vec![9.0]), &f32s(vec![10.0]), tol).passed());
        assert!(!compare(&f32s(vec![10.0]), &f32s(vec![9.0]), tol).passed());
    }

    #[test]
    fn nan_matches_only_nan() {
        let tol = Tolerance::CONFORMANCE;
        assert!(compare(&f32s(vec![f32::NAN]), &f32s(vec![f32::NAN]), tol).passed());
        assert!(!compare(&f32s(vec![f32::NAN]), &f32s(vec![0.0]), tol).passed());
        assert!(!compare(&f32s(vec![0.0]), &f32s(vec![f32::NAN]), tol).passed());
    }

    #[test]
    fn infinities_match_only_themselves() {
        let tol = Tolerance::CONFORMANCE;
        assert!(compare(&f32s(vec![f32::INFINITY]), &f32s(vec![f32::INFINITY]), tol).passed());
        assert!(!compare(
            &f32s(vec![f32::NEG_INFINITY]),
            &f32s(vec![f32::INFINITY]),
            tol
        )
        .passed());
        assert!(!compare(&f32s(vec![f32::MAX]), &f32s(vec![f32::INFINITY]), tol).passed());
    }

    #[test]
    fn integers_compare_exactly_despite_tolerance() {
        let tol = Tolerance {
            rtol: 0.5,
            atol: 10.0,
        };
        let a = Tensor::new(vec![2], vec![1i64, 2]).unwrap();
        let b = Tensor::new(vec![2], vec![1i64, 3]).unwrap();
        assert!(!compare(&a, &b, tol).passed());
        assert!(compare(&a, &a, tol).passed());
        let t = Tensor::new(vec![1], vec![true]).unwrap();
        let f = Tensor::new(vec![1], vec![false]).unwrap();
        assert!(!compare(&t, &f, tol).passed());
    }

    #[test]
    fn dtype_or_shape_difference_is_a_type_mismatch() {
        let tol = Tolerance::CONFORMANCE;
        let a = Tensor::new(vec![2], vec![1.0f32, 2.0]).unwrap();
        let b = Tensor::new(vec![1, 2], vec![1.0f32, 2.0]).unwrap();
        assert!(matches!(
            compare(&a, &b, tol),
            Comparison::TypeMismatch { .. }
        ));
        let c = Tensor::new(vec![2], vec![1i32, 2]).unwrap();
        assert!(matches!(
            compare(&a, &c, tol),
            Comparison::TypeMismatch { .. }
        ));
    }

    #[test]
    fn f16_uses_the_float_rule() {
        use half::f16;
        let a = Tensor::new(vec![2], vec![f16::from_f32(1.0), f16::NAN]).unwrap();
        let b = Tensor::new(vec![2], vec![f16::from_f32(1.0005), f16::NAN]).unwrap();
        let c = Tensor::new(vec![2], vec![f16::from_f32(1.5), f16::NAN]).unwrap();
        assert!(compare(&a, &b, Tolerance::CONFORMANCE).passed());
        assert!(!compare(&a, &c, Tolerance::CONFORMANCE).passed());
    }
}
