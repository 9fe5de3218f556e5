//! Helpers shared by the operator tests.
#![allow(dead_code)]

use kiln_ir::{Element, Op, Tensor};
use kiln_operators::evaluate;

pub fn t<T: Element>(shape: &[usize], v: Vec<T>) -> Tensor {
    Tensor::new(shape.to_vec(), v).expect("valid test tensor")
}

pub fn f(shape: &[usize], v: &[f32]) -> Tensor {
    t(shape, v.to_vec())
}

pub fn run(op: &Op, inputs: &[&Tensor]) -> Tensor {
    evaluate(op, inputs).unwrap_or_else(|e| panic!("{} failed: {e}", op.name()))
}

pub fn vals<T: Element>(x: &Tensor) -> Vec<T> {
    x.as_slice::<T>().expect("dtype").to_vec()
}

pub fn close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "length: got {got:?} want {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= tol * w.abs().max(1.0);
        assert!(ok, "element {i}: got {g} want {w} (got {got:?})");
    }
}
