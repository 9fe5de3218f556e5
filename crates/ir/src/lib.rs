//! Kiln's graph IR, modelled on TOSA v1.0: a closed set of ops over statically shaped tensors of a
//! closed set of dtypes, held in arenas addressed by typed ids.
//!
//! Invariant: a [`Graph`] that passed [`Graph::verify`] is in topological order, every value is
//! defined once, and every recorded type is the one [`infer_type`] derives. Every later stage may
//! rely on that without re-checking.

mod dtype;
mod error;
mod graph;
pub mod op;
mod shape;
mod tensor;
pub mod text;
mod verify;

pub use dtype::DType;
pub use error::{IrError, Result};
pub use graph::{ConstId, Graph, GraphParts, Node, NodeId, Value, ValueDef, ValueId};
pub use op::{Op, OrderedF64};
pub use shape::{broadcast, infer_type};
pub use tensor::{Element, Tensor, TensorData, TensorType, MAX_TENSOR_BYTES};
pub use text::parse_graph;
