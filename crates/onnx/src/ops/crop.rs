//! CenterCropPad: each listed axis cropped or zero-padded to its target size around the centre.
//!
//! Invariant: where the size difference is odd the extra element is taken from (or added at)
//! the end, as the ONNX reference does; axes not listed are unchanged.

use crate::builder::{invalid, norm_axes, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{OrderedF64, PadMode};
use kiln_ir::{Op, ValueId};

pub(super) fn center_crop_pad(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    let target = b.need_ints(cx.input(1)?, "shape")?;
    let axes = match cx.ints_opt("axes")? {
        Some(a) => norm_axes(&a, s.len())?,
        None => (0..s.len()).collect(),
    };
    if target.len() != axes.len() || target.iter().any(|&t| t < 0) {
        return invalid(format!(
            "shape must give one nonnegative size per axis of {axes:?}, got {target:?}"
        ));
    }
    let mut y = x;
    let mut pads = vec![[0usize, 0]; s.len()];
    for (&axis, &want) in axes.iter().zip(&target) {
        let (have, want) = (s[axis], want as usize);
        if want < have {
            y = b.slice_axis(y, axis, (have - want) / 2, want, 1)?;
        } else if want > have {
            let before = (want - have) / 2;
            pads[axis] = [before, want - have - before];
        }
    }
    if pads.iter().all(|p| *p == [0, 0]) {
        return Ok(y);
    }
    b.add(
        Op::Pad {
            pads,
            mode: PadMode::Constant,
            value: OrderedF64(0.0),
        },
        &[y],
    )
}
