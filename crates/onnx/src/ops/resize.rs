//! Resize and Upsample.
//!
//! Invariant: output sizes are static; the IR RESIZE gets ONNX coordinate semantics.

use crate::builder::{unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::ValueId;

pub(super) fn resize(_b: &mut Builder, _cx: &NodeCx) -> NResult<ValueId> {
    unsupported("not mapped yet")
}
