//! The verifier: re-derives every invariant of [`Graph`] from scratch.

use crate::{Graph, IrError, Op, Result, ValueDef, ValueId};

pub(crate) fn verify(g: &Graph) -> Result<()> {
    let values = g.values();
    for (i, &v) in g.inputs().iter().enumerate() {
        let ok = values.get(v.index()).map(|val| val.def) == Some(ValueDef::Input(i));
        if !ok {
            return Err(IrError::Invalid(format!(
                "graph input {i} is not value {v}"
            )));
        }
    }
    let mut defined = vec![false; values.len()];
    for &v in g.inputs() {
        defined[v.index()] = true;
    }
    for (i, node) in g.nodes().iter().enumerate() {
        for &input in &node.inputs {
            if !defined.get(input.index()).copied().unwrap_or(false) {
                return Err(IrError::UndefinedValue(input));
            }
        }
        let out = node.output;
        let val = values
            .get(out.index())
            .ok_or(IrError::UndefinedValue(out))?;
        if val.def != ValueDef::Node(crate::NodeId(i as u32)) || defined[out.index()] {
            return Err(IrError::Invalid(format!(
                "node {i} (`{}`) result {out} is defined elsewhere",
                node.name
            )));
        }
        defined[out.index()] = true;
        if let Op::Const(c) = node.op {
            if c.index() >= g.consts().len() {
                return Err(IrError::Invalid(format!("constant {c} does not exist")));
            }
        }
        let inferred = g.infer_node(&node.op, &node.inputs)?;
        if inferred != val.ty {
            return Err(IrError::TypeMismatch {
                node: crate::NodeId(i as u32),
                name: node.name.clone(),
                recorded: val.ty.to_string(),
                inferred: inferred.to_string(),
            });
        }
    }
    if let Some(pos) = defined.iter().position(|d| !d) {
        return Err(IrError::Invalid(format!(
            "value {} has no definition",
            ValueId(pos as u32)
        )));
    }
    for &o in g.outputs() {
        if o.index() >= values.len() {
            return Err(IrError::UndefinedValue(o));
        }
    }
    Ok(())
}
