//! Quantisation ops: QuantizeLinear/DequantizeLinear and the integer convs/matmuls.
//!
//! Invariant: integer arithmetic follows TOSA (explicit zero points, i32 accumulation, RESCALE).

use crate::builder::{unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::ValueId;

pub(super) fn quantize(_b: &mut Builder, _cx: &NodeCx) -> NResult<ValueId> {
    unsupported("not mapped yet")
}
pub(super) fn dequantize(_b: &mut Builder, _cx: &NodeCx) -> NResult<ValueId> {
    unsupported("not mapped yet")
}
pub(super) fn qlinear_matmul(_b: &mut Builder, _cx: &NodeCx) -> NResult<ValueId> {
    unsupported("not mapped yet")
}
pub(super) fn matmul_integer(_b: &mut Builder, _cx: &NodeCx) -> NResult<ValueId> {
    unsupported("not mapped yet")
}
pub(super) fn qlinear_conv(_b: &mut Builder, _cx: &NodeCx) -> NResult<ValueId> {
    unsupported("not mapped yet")
}
pub(super) fn conv_integer(_b: &mut Builder, _cx: &NodeCx) -> NResult<ValueId> {
    unsupported("not mapped yet")
}
