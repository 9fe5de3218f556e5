//! Column padding of matmuls whose output width no micro-kernel tile divides.
//!
//! A tensorized matmul tiles its output columns by a multiple of the vector width and needs the
//! tile to divide the width. Attention scores `Q·Kᵀ` over a sequence of 197 tokens (ViT) are
//! 197 wide, a prime: no tile fits and the matmul runs as a loop nest, twenty times slower. This
//! pass computes such a matmul on its right operand padded with zero columns to the next
//! multiple of `multiple`, and slices the extra columns off the result.
//!
//! Invariant: exact — column `j` of a matmul reads only column `j` of its right operand, so the
//! kept columns are computed from the same values in the same order; graph inputs and outputs
//! keep their names, and the result is verified.

use crate::rebuild::rebuild;
use kiln_ir::op::PadMode;
use kiln_ir::{Graph, IrError, Op, OrderedF64};

/// Smallest output width worth padding (narrower matmuls are cheap anyway).
const MIN_WIDTH: usize = 32;

/// The float matmuls of `g` to pad: output width not a multiple of `multiple` and at least
/// [`MIN_WIDTH`], with a right operand computed at run time (constant weights have their own
/// packed tails).
fn candidates(g: &Graph, multiple: usize) -> Vec<usize> {
    g.nodes()
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            let Op::MatMul(a) = &n.op else {
                return false;
            };
            let out = g.ty(n.output);
            let width = out.shape.last().copied().unwrap_or(0);
            let rhs_const = n.inputs.get(1).is_some_and(|&b| g.const_of(b).is_some());
            !a.fma
                && out.dtype == kiln_ir::DType::F32
                && width >= MIN_WIDTH
                && !width.is_multiple_of(multiple)
                && !rhs_const
        })
        .map(|(i, _)| i)
        .collect()
}

/// `graph` with the matmuls described in the module doc padded, or `None` when it has none.
pub fn pad_matmul_columns(graph: &Graph, multiple: usize) -> Result<Option<Graph>, IrError> {
    if multiple < 2 {
        return Ok(None);
    }
    let padded = candidates(graph, multiple);
    if padded.is_empty() {
        return Ok(None);
    }
    let out = rebuild(graph, |out, i, n, inputs| {
        if !padded.contains(&i) {
            return out.add_node(n.op.clone(), &inputs, n.name.clone());
        }
        let b = inputs[1];
        let shape = out.ty(b).shape.clone();
        let width = shape[shape.len() - 1];
        let extra = width.next_multiple_of(multiple) - width;
        let mut pads = vec![[0, 0]; shape.len()];
        pads[shape.len() - 1] = [0, extra];
        let wide_b = out.add_node(
            Op::Pad {
                pads,
                mode: PadMode::Constant,
                value: OrderedF64(0.0),
            },
            &[b],
            n.name.clone(),
        )?;
        let wide = out.add_node(n.op.clone(), &[inputs[0], wide_b], n.name.clone())?;
        let full = out.ty(wide).shape.clone();
        let mut size = full.clone();
        size[full.len() - 1] = width;
        out.add_node(
            Op::Slice {
                start: vec![0; full.len()],
                size,
                stride: vec![1; full.len()],
            },
            &[wide],
            n.name.clone(),
        )
    })?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prime_width_is_padded_and_sliced_exactly() {
        let g = kiln_ir::parse_graph(
            r#"graph {
  input %0 "q": f32[2,5,8]
  input %1 "kt": f32[2,8,37]
  %2: f32[2,5,37] = matmul(%0, %1) {"a_zp":0,"b_zp":0}
  output %2
}"#,
        )
        .unwrap();
        let after = pad_matmul_columns(&g, 16).unwrap().expect("padded");
        let ops: Vec<&str> = after.nodes().iter().map(|n| n.op.name()).collect();
        assert_eq!(ops, ["pad", "matmul", "slice"], "{after}");
        assert_eq!(after.ty(after.outputs()[0]).shape, vec![2, 5, 37]);
        let q = kiln_ir::Tensor::new(
            vec![2, 5, 8],
            (0..80).map(|i| i as f32 * 0.3 - 7.0).collect(),
        )
        .unwrap();
        let kt = kiln_ir::Tensor::new(
            vec![2, 8, 37],
            (0..592).map(|i| (i % 13) as f32 - 6.5).collect(),
        )
        .unwrap();
        let want = kiln_reference::run(&g, &[q.clone(), kt.clone()]).unwrap();
        let got = kiln_reference::run(&after, &[q, kt]).unwrap();
        assert_eq!(want, got);
        // Widths that divide, and constant right operands, are left alone.
        assert!(pad_matmul_columns(&g, 37).unwrap().is_none());
    }
}
