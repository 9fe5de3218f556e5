//! LSTM, GRU and RNN, unrolled over the static sequence length.
//!
//! Invariant: every time step is built from IR matmuls and elementwise ops.

use crate::builder::{unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::ValueId;

pub(super) fn lstm(_b: &mut Builder, _cx: &NodeCx) -> NResult<Vec<ValueId>> {
    unsupported("not mapped yet")
}
pub(super) fn gru(_b: &mut Builder, _cx: &NodeCx) -> NResult<Vec<ValueId>> {
    unsupported("not mapped yet")
}
pub(super) fn rnn(_b: &mut Builder, _cx: &NodeCx) -> NResult<Vec<ValueId>> {
    unsupported("not mapped yet")
}
