//! The view of one ONNX node that op mappings work from: its resolved inputs, typed attribute
//! accessors with defaults, and its opset.
//!
//! Invariant: accessors never panic; a missing required input or a mistyped attribute is a
//! [`NodeError::Invalid`], and optional inputs (empty names or absent trailing inputs) are `None`.
//! Every attribute a mapping looks at is recorded, so that an attribute no mapping understood
//! (one added by a newer opset, say) is reported instead of silently changing the semantics.

use crate::builder::{invalid, NResult, NodeError};
use crate::proto::{AttributeProto, NodeProto, TensorProto};
use kiln_ir::ValueId;
use std::cell::RefCell;

/// ONNX `AttributeProto.AttributeType` codes.
mod attr_type {
    pub const FLOAT: i32 = 1;
    pub const INT: i32 = 2;
    pub const STRING: i32 = 3;
    pub const TENSOR: i32 = 4;
    pub const FLOATS: i32 = 6;
    pub const INTS: i32 = 7;
}

/// One node being mapped.
#[derive(Debug)]
pub(crate) struct NodeCx<'a> {
    pub node: &'a NodeProto,
    pub op_type: &'a str,
    pub opset: i64,
    /// One entry per declared input; `None` for an omitted optional input.
    pub inputs: Vec<Option<ValueId>>,
    /// Number of declared outputs.
    pub num_outputs: usize,
    /// Names of the attributes the mapping has looked at.
    pub read: RefCell<Vec<String>>,
}

impl NodeCx<'_> {
    /// Required input `i`.
    pub fn input(&self, i: usize) -> NResult<ValueId> {
        match self.inputs.get(i).copied().flatten() {
            Some(v) => Ok(v),
            None => invalid(format!("input {i} is required")),
        }
    }

    /// Optional input `i`.
    pub fn opt_input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }

    /// All present inputs.
    pub fn present_inputs(&self) -> Vec<ValueId> {
        self.inputs.iter().flatten().copied().collect()
    }

    /// Whether output `i` is requested.
    pub fn wants_output(&self, i: usize) -> bool {
        self.node.output.get(i).is_some_and(|s| !s.is_empty())
    }

    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.read.borrow_mut().push(name.to_string());
        self.node
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
    }

    fn typed(&self, name: &str, want: i32, what: &str) -> NResult<Option<&AttributeProto>> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) => match a.r#type {
                Some(t) if t == want => Ok(Some(a)),
                // Old exporters omit the type; trust the field then.
                None | Some(0) => Ok(Some(a)),
                Some(_) if a.ref_attr_name.is_some() => Err(NodeError::Unsupported(format!(
                    "attribute `{name}` refers to a function attribute"
                ))),
                Some(t) => invalid(format!("attribute `{name}` must be {what}, got type {t}")),
            },
        }
    }

    pub fn int_opt(&self, name: &str) -> NResult<Option<i64>> {
        Ok(self
            .typed(name, attr_type::INT, "an int")?
            .map(|a| a.i.unwrap_or(0)))
    }

    pub fn int(&self, name: &str, default: i64) -> NResult<i64> {
        Ok(self.int_opt(name)?.unwrap_or(default))
    }

    pub fn float_opt(&self, name: &str) -> NResult<Option<f32>> {
        Ok(self
            .typed(name, attr_type::FLOAT, "a float")?
            .map(|a| a.f.unwrap_or(0.0)))
    }

    pub fn float(&self, name: &str, default: f32) -> NResult<f32> {
        Ok(self.float_opt(name)?.unwrap_or(default))
    }

    pub fn string_opt(&self, name: &str) -> NResult<Option<String>> {
        Ok(self
            .typed(name, attr_type::STRING, "a string")?
            .map(|a| String::from_utf8_lossy(a.s.as_deref().unwrap_or(&[])).into_owned()))
    }

    pub fn string(&self, name: &str, default: &str) -> NResult<String> {
        Ok(self
            .string_opt(name)?
            .unwrap_or_else(|| default.to_string()))
    }

    pub fn ints_opt(&self, name: &str) -> NResult<Option<Vec<i64>>> {
        Ok(self
            .typed(name, attr_type::INTS, "a list of ints")?
            .map(|a| a.ints.clone()))
    }

    pub fn floats_opt(&self, name: &str) -> NResult<Option<Vec<f32>>> {
        Ok(self
            .typed(name, attr_type::FLOATS, "a list of floats")?
            .map(|a| a.floats.clone()))
    }

    pub fn tensor_opt(&self, name: &str) -> NResult<Option<&TensorProto>> {
        Ok(self
            .typed(name, attr_type::TENSOR, "a tensor")?
            .and_then(|a| a.t.as_ref()))
    }

    /// Boolean attribute stored as an int.
    pub fn flag(&self, name: &str, default: bool) -> NResult<bool> {
        Ok(self.int(name, default as i64)? != 0)
    }

    /// The first of the node's attributes, for ops like Constant that take exactly one.
    pub fn attributes(&self) -> &[AttributeProto] {
        let mut read = self.read.borrow_mut();
        read.extend(self.node.attribute.iter().filter_map(|a| a.name.clone()));
        &self.node.attribute
    }

    /// The first attribute of the node that no mapping looked at, other than those that cannot
    /// change an inference result.
    pub fn unread_attribute(&self) -> Option<&str> {
        let read = self.read.borrow();
        self.node
            .attribute
            .iter()
            .filter_map(|a| a.name.as_deref())
            .find(|name| {
                !read.iter().any(|r| r == name) && !irrelevant_to_inference(self.op_type, name)
            })
    }
}

/// Attributes that only matter for training or random generation, never for an inference result.
fn irrelevant_to_inference(op_type: &str, name: &str) -> bool {
    matches!(
        (op_type, name),
        (
            "BatchNormalization",
            "momentum" | "is_test" | "spatial" | "consumed_inputs"
        ) | ("Dropout", "seed" | "is_test" | "ratio")
            | (_, "consumed_inputs")
    )
}
