//! The graph: arenas of values, nodes and constants addressed by typed ids.
//!
//! Invariants kept by every mutating method: nodes are stored in topological order (a node only
//! reads values defined before it), each value is defined exactly once (a graph input or the single
//! result of a node), and each node's recorded type is what [`crate::infer_type`] derives from its
//! operands. [`Graph::verify`] re-checks all of it for graphs built by other means.

use crate::{infer_type, IrError, Op, Result, Tensor, TensorType};
use std::fmt;
use std::sync::Arc;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[derive(serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u32);

        impl $name {
            /// The arena index.
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_type!(
    /// A tensor value: a graph input or a node result.
    ValueId,
    "%"
);
id_type!(
    /// A node.
    NodeId,
    "n"
);
id_type!(
    /// A weight in the constant table.
    ConstId,
    "@"
);

/// Where a value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueDef {
    /// The `n`-th graph input.
    Input(usize),
    /// The result of a node.
    Node(NodeId),
}

/// A value's type, name and definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub ty: TensorType,
    /// The source name (ONNX tensor name), kept for messages and for graph inputs and outputs.
    pub name: Option<String>,
    pub def: ValueDef,
}

/// An operator applied to values, producing one value.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
    /// The source node's name, for error messages.
    pub name: String,
}

/// A dataflow graph of TOSA-style ops over statically shaped tensors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    values: Vec<Value>,
    nodes: Vec<Node>,
    /// Shared: passes that rebuild a graph carry its weights over without copying them.
    consts: Vec<Arc<Tensor>>,
    inputs: Vec<ValueId>,
    outputs: Vec<ValueId>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a graph input.
    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> ValueId {
        let id = self.push_value(ty, Some(name.into()), ValueDef::Input(self.inputs.len()));
        self.inputs.push(id);
        id
    }

    /// Adds a weight to the constant table (stored once, referenced by id).
    pub fn add_const(&mut self, tensor: Tensor) -> ConstId {
        self.add_shared_const(Arc::new(tensor))
    }

    /// Adds a weight another graph (or the rewriter) holds too, without copying it.
    pub fn add_shared_const(&mut self, tensor: Arc<Tensor>) -> ConstId {
        self.consts.push(tensor);
        ConstId(self.consts.len() as u32 - 1)
    }

    /// Adds a weight and a CONST node reading it; returns the node's value.
    pub fn add_const_value(&mut self, tensor: Tensor, name: impl Into<String>) -> ValueId {
        let id = self.add_const(tensor);
        self.add_node(Op::Const(id), &[], name)
            .expect("a CONST node of an existing constant is always valid")
    }

    /// Appends a node after checking its operands and inferring its result type.
    pub fn add_node(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        name: impl Into<String>,
    ) -> Result<ValueId> {
        let name = name.into();
        let ty = self
            .infer_node(&op, inputs)
            .map_err(|e| annotate(e, &name))?;
        let node = NodeId(self.nodes.len() as u32);
        let output = self.push_value(ty, None, ValueDef::Node(node));
        self.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            output,
            name,
        });
        Ok(output)
    }

    /// The type a node with `op` and `inputs` would have in this graph.
    pub fn infer_node(&self, op: &Op, inputs: &[ValueId]) -> Result<TensorType> {
        let mut types = Vec::with_capacity(inputs.len());
        for &v in inputs {
            types.push(&self.value_checked(v)?.ty);
        }
        let const_ty;
        let const_types: Vec<&TensorType> = if let Op::Const(c) = op {
            const_ty = self
                .consts
                .get(c.index())
                .ok_or_else(|| IrError::Invalid(format!("constant {c} does not exist")))?
                .ty()
                .clone();
            vec![&const_ty]
        } else {
            types
        };
        infer_type(op, &const_types)
    }

    /// Declares the graph outputs.
    pub fn set_outputs(&mut self, outputs: Vec<ValueId>) -> Result<()> {
        for &v in &outputs {
            self.value_checked(v)?;
        }
        self.outputs = outputs;
        Ok(())
    }

    /// Sets the source name of a value.
    pub fn set_name(&mut self, v: ValueId, name: impl Into<String>) {
        self.values[v.index()].name = Some(name.into());
    }

    fn push_value(&mut self, ty: TensorType, name: Option<String>, def: ValueDef) -> ValueId {
        self.values.push(Value { ty, name, def });
        ValueId(self.values.len() as u32 - 1)
    }

    fn value_checked(&self, v: ValueId) -> Result<&Value> {
        self.values.get(v.index()).ok_or(IrError::UndefinedValue(v))
    }

    /// A value. Panics on an id from another graph.
    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.index()]
    }

    /// A value's type.
    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.values[v.index()].ty
    }

    /// All values, indexed by [`ValueId`].
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// All nodes in topological order, indexed by [`NodeId`].
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A node.
    pub fn node(&self, n: NodeId) -> &Node {
        &self.nodes[n.index()]
    }

    /// The constant table, indexed by [`ConstId`].
    pub fn consts(&self) -> &[Arc<Tensor>] {
        &self.consts
    }

    /// A constant.
    pub fn constant(&self, c: ConstId) -> &Tensor {
        &self.consts[c.index()]
    }

    /// A constant, shared (to carry it into another graph without a copy).
    pub fn shared_constant(&self, c: ConstId) -> &Arc<Tensor> {
        &self.consts[c.index()]
    }

    /// The graph inputs, in order.
    pub fn inputs(&self) -> &[ValueId] {
        &self.inputs
    }

    /// The graph outputs, in order.
    pub fn outputs(&self) -> &[ValueId] {
        &self.outputs
    }

    /// The constant a value holds, if it is the result of a CONST node.
    pub fn const_of(&self, v: ValueId) -> Option<&Tensor> {
        match self.value(v).def {
            ValueDef::Node(n) => match self.node(n).op {
                Op::Const(c) => Some(self.constant(c)),
                _ => None,
            },
            ValueDef::Input(_) => None,
        }
    }

    /// Number of parameters: elements of all constants.
    pub fn parameter_count(&self) -> usize {
        self.consts.iter().map(|c| c.ty().num_elements()).sum()
    }

    /// Checks every invariant listed in the module documentation.
    pub fn verify(&self) -> Result<()> {
        crate::verify::verify(self)
    }
}

fn annotate(e: IrError, name: &str) -> IrError {
    match e {
        IrError::Type { op, reason } if !name.is_empty() => IrError::Type {
            op: format!("{op} (node `{name}`)"),
            reason,
        },
        other => other,
    }
}

/// The parts of a graph, for passes that rebuild one wholesale; [`Graph::from_parts`] takes them
/// back unchecked, so call [`Graph::verify`] on the result.
#[derive(Clone, Debug, Default)]
pub struct GraphParts {
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub consts: Vec<Arc<Tensor>>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

impl Graph {
    /// A graph from raw parts, without any check.
    pub fn from_parts(p: GraphParts) -> Graph {
        Graph {
            values: p.values,
            nodes: p.nodes,
            consts: p.consts,
            inputs: p.inputs,
            outputs: p.outputs,
        }
    }

    /// The raw parts of the graph.
    pub fn into_parts(self) -> GraphParts {
        GraphParts {
            values: self.values,
            nodes: self.nodes,
            consts: self.consts,
            inputs: self.inputs,
            outputs: self.outputs,
        }
    }
}
