//! The e-graph language: graph IR ops as e-nodes.
//!
//! Invariant: an e-node is a graph input `(input i)`, a constant `(const k)` of the constant
//! pool, an op application `(op A x y ...)` whose first child is the class of one [`OpLeaf`]
//! (the IR op with all its attributes) followed by its operands in IR order, or the root
//! `(outputs ...)` listing the graph outputs in order. Index and op leaves are never unioned
//! with anything else, so a rule reads an op's attributes from its first child's only node.
//! The fusion pass ([`crate::fusion`]) adds `(kernel x)`: the value of `x`, materialised in
//! memory as a kernel's output (an identity that is deliberately kept in a class of its own).

use egg::{define_language, EGraph, Id};
use kiln_ir::Op;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// An IR op with its attributes, ordered and hashed by its canonical JSON text.
#[derive(Clone, Debug)]
pub struct OpLeaf {
    op: Arc<Op>,
    text: Arc<str>,
}

impl OpLeaf {
    /// The leaf of `op`.
    pub fn new(op: Op) -> OpLeaf {
        let text = serde_json::to_string(&op).expect("every op serializes");
        OpLeaf {
            op: Arc::new(op),
            text: text.into(),
        }
    }

    /// The op.
    pub fn op(&self) -> &Op {
        &self.op
    }
}

impl PartialEq for OpLeaf {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for OpLeaf {}
impl std::hash::Hash for OpLeaf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state)
    }
}
impl PartialOrd for OpLeaf {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OpLeaf {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl fmt::Display for OpLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Compact and unambiguous in S-expressions: the JSON with no spaces.
        f.write_str(&self.text)
    }
}

impl FromStr for OpLeaf {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !(s.starts_with('{') || s.starts_with('"')) {
            return Err(format!("not an op: {s}"));
        }
        let op: Op = serde_json::from_str(s).map_err(|e| e.to_string())?;
        Ok(OpLeaf::new(op))
    }
}

/// An index leaf: of a graph input, or of the constant pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Index(pub u32);

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl FromStr for Index {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix('#')
            .and_then(|n| n.parse().ok())
            .map(Index)
            .ok_or_else(|| format!("not an index: {s}"))
    }
}

define_language! {
    /// An e-node (see the module doc).
    pub enum Node {
        "input" = Input([Id; 1]),
        "const" = Const([Id; 1]),
        "op" = Apply(Box<[Id]>),
        "outputs" = Outputs(Box<[Id]>),
        "kernel" = Kernel([Id; 1]),
        Index(Index),
        Op(OpLeaf),
    }
}

/// The op of the leaf class `id`, if it is one.
pub fn op_of<N: egg::Analysis<Node>>(egraph: &EGraph<Node, N>, id: Id) -> Option<&Op> {
    egraph[id].nodes.iter().find_map(|n| match n {
        Node::Op(leaf) => Some(leaf.op()),
        _ => None,
    })
}

/// The index of the leaf class `id`, if it is one.
pub fn index_of<N: egg::Analysis<Node>>(egraph: &EGraph<Node, N>, id: Id) -> Option<u32> {
    egraph[id].nodes.iter().find_map(|n| match n {
        Node::Index(i) => Some(i.0),
        _ => None,
    })
}
