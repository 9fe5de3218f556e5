//! Model-level import: opset check, initializers, graph inputs with symbolic-dim binding,
//! topological ordering of nodes, per-node dispatch and output wiring, then dead-node pruning.
//! A QuantizeLinear that closes a QDQ pattern is first offered to `ops::qdq`, which builds it from
//! integers; the float chain it replaces is then unused and pruned.
//!
//! Invariant: the returned graph passed `Graph::verify`, holds only nodes that reach an output,
//! and has one graph input per ONNX input that is not an initializer, in declaration order.

use crate::builder::{Builder, NodeError};
use crate::node::NodeCx;
use crate::ops::{fuse_quantize, QdqGraph};
use crate::proto::tensor_shape_proto::dimension;
use crate::proto::{type_proto, GraphProto, ModelProto, NodeProto, ValueInfoProto};
use crate::tensor_io::{decode_tensor, dtype_from_onnx};
use crate::{ImportError, ImportOptions, Model, NEWEST_KNOWN_OPSET, SUPPORTED_OPSETS};
use kiln_ir::{Graph, Op, TensorType, ValueId};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::Path;

/// Imports a decoded model.
pub(crate) fn import_model(
    model: &ModelProto,
    base_dir: Option<&Path>,
    options: &ImportOptions,
) -> Result<Model, ImportError> {
    let mut notes = Vec::new();
    let opset = default_opset(model)?;
    if opset < *SUPPORTED_OPSETS.start() {
        return Err(ImportError::InvalidModel(format!(
            "opset {opset} is older than the oldest supported opset {}; convert the model with onnx.version_converter",
            SUPPORTED_OPSETS.start()
        )));
    }
    if opset > NEWEST_KNOWN_OPSET {
        return Err(ImportError::InvalidModel(format!(
            "opset {opset} is newer than any ONNX release known to Kiln (newest: {NEWEST_KNOWN_OPSET})"
        )));
    }
    if opset > *SUPPORTED_OPSETS.end() {
        notes.push(format!(
            "model declares opset {opset}, newer than opset {} (the newest whose every op Kiln implements); ops that exist at opset {} keep those semantics, newer ops (Attention, RotaryEmbedding, ...) have their own",
            SUPPORTED_OPSETS.end(),
            SUPPORTED_OPSETS.end()
        ));
    }
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| ImportError::InvalidModel("the model has no graph".into()))?;
    let mut imp = Importer {
        b: Builder::default(),
        values: HashMap::new(),
        pending: HashMap::new(),
        opset,
        notes: Vec::new(),
        numerics: options.int8_numerics,
        notes_if_used: Vec::new(),
    };
    imp.initializers(graph, base_dir)?;
    imp.inputs(graph, options, &mut notes)?;
    for name in options
        .input_shapes
        .keys()
        .chain(options.constant_inputs.keys())
    {
        let known = graph.input.iter().any(|i| i.name.as_deref() == Some(name));
        if !known {
            return Err(ImportError::InvalidModel(format!(
                "an input binding names `{name}`, which is not a graph input"
            )));
        }
    }
    if graph.output.is_empty() {
        return Err(ImportError::InvalidModel(
            "the graph declares no outputs".into(),
        ));
    }
    let order = topo_order(&graph.node, &imp.values, &imp.pending)?;
    let qdq = QdqGraph::new(
        &graph.node,
        output_names(&graph.output),
        opset,
        imp.numerics,
    );
    for i in order {
        imp.node(&graph.node[i], i, &qdq)?;
    }
    notes.append(&mut imp.notes);
    let mut outputs = imp.outputs(graph)?;
    let row_counts = imp.row_count_outputs(&mut outputs, &mut notes)?;
    imp.b
        .g
        .set_outputs(outputs)
        .map_err(|e| ImportError::InvalidModel(e.to_string()))?;
    let graph = prune(imp.b.g).map_err(|e| ImportError::InvalidModel(e.to_string()))?;
    for (tensor, note) in imp.notes_if_used {
        let used = graph
            .nodes()
            .iter()
            .any(|n| graph.value(n.output).name.as_deref() == Some(tensor.as_str()));
        if used {
            notes.push(note);
        }
    }
    graph
        .verify()
        .map_err(|e| ImportError::InvalidModel(format!("imported graph does not verify: {e}")))?;
    Ok(Model {
        graph,
        notes,
        opset,
        row_counts,
    })
}

/// The names of a graph's outputs.
pub(crate) fn output_names(outputs: &[crate::proto::ValueInfoProto]) -> Vec<String> {
    outputs.iter().filter_map(|o| o.name.clone()).collect()
}

fn default_opset(model: &ModelProto) -> Result<i64, ImportError> {
    let mut found = None;
    for o in &model.opset_import {
        if matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")) {
            found = Some(o.version.unwrap_or(0));
        }
    }
    found.ok_or_else(|| {
        ImportError::InvalidModel("the model imports no opset of the default ONNX domain".into())
    })
}

pub(crate) struct Importer {
    pub(crate) b: Builder,
    /// ONNX tensor name -> IR value.
    pub(crate) values: HashMap<String, ValueId>,
    /// Names whose definition could not be imported, with the reason; an error only when used.
    pub(crate) pending: HashMap<String, String>,
    pub(crate) opset: i64,
    /// Messages for the user gathered while mapping nodes.
    pub(crate) notes: Vec<String>,
    /// The arithmetic of int8 QDQ patterns.
    pub(crate) numerics: crate::Int8Numerics,
    /// Notes about the value of an ONNX tensor, kept only if the imported graph computes it
    /// (a float Conv that a fused QDQ group replaced is not).
    pub(crate) notes_if_used: Vec<(String, String)>,
}

impl Importer {
    pub(crate) fn initializers(
        &mut self,
        graph: &GraphProto,
        base_dir: Option<&Path>,
    ) -> Result<(), ImportError> {
        if !graph.sparse_initializer.is_empty() {
            return Err(ImportError::InvalidModel(
                "sparse initializers are not supported".into(),
            ));
        }
        for t in &graph.initializer {
            let name = t.name.clone().unwrap_or_default();
            if name.is_empty() {
                return Err(ImportError::InvalidModel(
                    "an initializer has no name".into(),
                ));
            }
            self.b.node_name = name.clone();
            // A tensor of a dtype Kiln lacks only matters if a node reads it.
            if let Err(reason) = dtype_from_onnx(t.data_type.unwrap_or(0)) {
                self.pending.insert(name, format!("initializer: {reason}"));
                continue;
            }
            let tensor = decode_tensor(t, base_dir).map_err(|reason| {
                ImportError::InvalidModel(format!("initializer `{name}`: {reason}"))
            })?;
            let v = self.b.konst(tensor);
            if let Some(n) = crate::tensor_io::Narrow::from_onnx(t.data_type.unwrap_or(0)) {
                self.b.narrow.insert(v, n);
            }
            self.b.g.set_name(v, name.clone());
            self.values.insert(name, v);
        }
        Ok(())
    }

    fn inputs(
        &mut self,
        graph: &GraphProto,
        options: &ImportOptions,
        notes: &mut Vec<String>,
    ) -> Result<(), ImportError> {
        let inits: HashSet<&str> = graph
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect();
        for input in &graph.input {
            let name = input.name.clone().unwrap_or_default();
            if inits.contains(name.as_str()) {
                continue;
            }
            if let Some(t) = options.constant_inputs.get(&name) {
                let ty = input_type(input, &name, Some(&t.shape().to_vec()), &mut Vec::new())?;
                if ty != *t.ty() {
                    return Err(ImportError::InvalidModel(format!(
                        "input `{name}` is {ty} but was frozen to a value of type {}",
                        t.ty()
                    )));
                }
                self.b.node_name = name.clone();
                let v = self.b.konst(t.clone());
                self.b.g.set_name(v, name.clone());
                self.values.insert(name, v);
                continue;
            }
            let ty = input_type(input, &name, options.input_shapes.get(&name), notes)?;
            let narrow = input_elem_type(input).and_then(crate::tensor_io::Narrow::from_onnx);
            if let Some(n) = narrow {
                notes.push(format!(
                    "input `{name}`: {}-bit integers are passed widened, one per byte ({})",
                    n.bits, ty.dtype
                ));
            }
            let v = self.b.g.add_input(name.clone(), ty);
            if let Some(n) = narrow {
                self.b.narrow.insert(v, n);
            }
            self.values.insert(name, v);
        }
        Ok(())
    }

    pub(crate) fn node(
        &mut self,
        node: &NodeProto,
        index: usize,
        qdq: &QdqGraph,
    ) -> Result<(), ImportError> {
        let op_type = node.op_type.clone().unwrap_or_default();
        let name = match node.name.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => format!("{op_type}_{index}"),
        };
        let opset = self.opset;
        let unsupported = |reason: String| ImportError::Unsupported {
            op_type: op_type.clone(),
            node: name.clone(),
            opset,
            reason,
        };
        let invalid = |reason: String| ImportError::InvalidNode {
            op_type: op_type.clone(),
            node: name.clone(),
            opset,
            reason,
        };
        let domain = node.domain.as_deref().unwrap_or("");
        if !matches!(domain, "" | "ai.onnx") {
            return Err(unsupported(format!(
                "domain `{domain}` is not supported (only the default ONNX domain is)"
            )));
        }
        let mut inputs = Vec::with_capacity(node.input.len());
        for i in &node.input {
            if i.is_empty() {
                inputs.push(None);
            } else if let Some(&v) = self.values.get(i) {
                inputs.push(Some(v));
            } else if let Some(reason) = self.pending.get(i) {
                return Err(unsupported(format!("input `{i}`: {reason}")));
            } else {
                return Err(invalid(format!("input `{i}` is not defined")));
            }
        }
        if matches!(op_type.as_str(), "If" | "Loop" | "Scan") {
            self.b.node_name = name.clone();
            let outs =
                crate::control::inline(self, node, &op_type, &inputs).map_err(|e| match e {
                    crate::control::ControlError::Import(e) => e,
                    crate::control::ControlError::Node(NodeError::Unsupported(r)) => unsupported(r),
                    crate::control::ControlError::Node(NodeError::Invalid(r)) => invalid(r),
                    crate::control::ControlError::Node(NodeError::NotStatic(reason)) => {
                        ImportError::NotStatic {
                            op_type: op_type.clone(),
                            node: name.clone(),
                            opset,
                            reason,
                        }
                    }
                })?;
            return self.bind_outputs(node, &op_type, &name, &outs);
        }
        let cx = NodeCx {
            node,
            op_type: &op_type,
            opset,
            inputs,
            num_outputs: node.output.len(),
            read: Default::default(),
        };
        self.b.node_name = name.clone();
        // A QuantizeLinear closing a QDQ pattern is built from integers (see `ops::qdq`).
        let fused = if op_type == "QuantizeLinear" {
            match fuse_quantize(&mut self.b, &cx, qdq, &self.values) {
                Ok(v) => v,
                Err(e) => {
                    self.notes.push(format!(
                        "QuantizeLinear `{name}` keeps the float path: {}",
                        e.reason()
                    ));
                    None
                }
            }
        } else {
            None
        };
        let mapped = match fused {
            Some(v) => Ok(vec![v]),
            // A float Conv of dequantized values runs in onnxruntime's order (see `ops::qdq_ort`).
            None if qdq.float_conv_of_dequantized(node) => {
                let input = node.input.first().and_then(|x| {
                    crate::ops::dequantized_magnitudes(qdq, &mut self.b, &self.values, x)
                });
                match crate::ops::mlas_order_conv(&mut self.b, &cx, input) {
                    Ok(Some(v)) => Ok(vec![v]),
                    Ok(None) => {
                        let out = node.output.first().cloned().unwrap_or_default();
                        self.notes_if_used.push((
                            out,
                            format!(
                            "Conv `{name}` of dequantized values does not sum in onnxruntime's \
                             order (its weights are not constant, or MLAS would use a \
                             single-row or single-column kernel): results may differ from \
                             onnxruntime's in the last bit"
                        ),
                        ));
                        crate::ops::map_node(&mut self.b, &cx)
                    }
                    Err(e) => Err(e),
                }
            }
            None => crate::ops::map_node(&mut self.b, &cx),
        };
        let outs = mapped.map_err(|e| match e {
            NodeError::Unsupported(r) => unsupported(r),
            NodeError::Invalid(r) => invalid(r),
            NodeError::NotStatic(reason) => ImportError::NotStatic {
                op_type: op_type.clone(),
                node: name.clone(),
                opset,
                reason,
            },
        })?;
        match crate::dynamic_rows::propagate(&self.b, &cx) {
            Ok(Some(count)) => {
                if let Some(&out) = outs.first() {
                    self.b.dynamic_rows.insert(out, count);
                }
            }
            Ok(None) => {}
            Err(reason) => return Err(unsupported(reason)),
        }
        if let Some(attr) = cx.unread_attribute() {
            return Err(unsupported(format!(
                "attribute `{attr}` is not supported by Kiln's mapping of {op_type}"
            )));
        }
        self.bind_outputs(node, &op_type, &name, &outs)
    }

    /// Names the node's outputs after the values mapped for them (missing ones become pending).
    fn bind_outputs(
        &mut self,
        node: &NodeProto,
        op_type: &str,
        name: &str,
        outs: &[ValueId],
    ) -> Result<(), ImportError> {
        for (i, out_name) in node.output.iter().enumerate() {
            if out_name.is_empty() {
                continue;
            }
            match outs.get(i) {
                Some(&v) => {
                    if self.b.g.value(v).name.is_none() {
                        self.b.g.set_name(v, out_name.clone());
                    }
                    self.values.insert(out_name.clone(), v);
                }
                None => {
                    self.pending.insert(
                        out_name.clone(),
                        format!("output {i} of {op_type} node `{name}` is not supported"),
                    );
                }
            }
        }
        Ok(())
    }

    /// Appends the row count of every output with data-dependent rows to `outputs` (named
    /// `OUTPUT.rows`), with a note for the user.
    fn row_count_outputs(
        &mut self,
        outputs: &mut Vec<ValueId>,
        notes: &mut Vec<String>,
    ) -> Result<Vec<crate::RowCount>, ImportError> {
        let mut counts = vec![];
        for i in 0..outputs.len() {
            let Some(&count) = self.b.dynamic_rows.get(&outputs[i]) else {
                continue;
            };
            let name = self.b.g.value(outputs[i]).name.clone().unwrap_or_default();
            let rows_name = format!("{name}.rows");
            self.b.node_name = rows_name.clone();
            let v = self
                .b
                .g
                .add_node(Op::Identity, &[count], rows_name.clone())
                .map_err(|e| ImportError::InvalidModel(e.to_string()))?;
            self.b.g.set_name(v, rows_name.clone());
            counts.push(crate::RowCount {
                output: i,
                rows_output: outputs.len(),
            });
            outputs.push(v);
            let bound = self.b.shape(outputs[i]).first().copied().unwrap_or(0);
            notes.push(format!(
                "output `{name}` has a data-dependent number of rows: compiled code returns its \
                 bound of {bound} rows, of which the first `{rows_name}` (an extra i64 output) \
                 are the result"
            ));
        }
        Ok(counts)
    }

    fn outputs(&mut self, graph: &GraphProto) -> Result<Vec<ValueId>, ImportError> {
        let mut outs = Vec::new();
        let mut used = HashSet::new();
        for o in &graph.output {
            let name = o.name.clone().unwrap_or_default();
            let mut v = match self.values.get(&name) {
                Some(&v) => v,
                None => {
                    let why = self
                        .pending
                        .get(&name)
                        .cloned()
                        .unwrap_or_else(|| "not defined".into());
                    return Err(ImportError::InvalidModel(format!(
                        "graph output `{name}`: {why}"
                    )));
                }
            };
            let named_other = self.b.g.value(v).name.as_deref().is_some_and(|n| n != name);
            if named_other || !used.insert(v) {
                self.b.node_name = name.clone();
                let copy = self
                    .b
                    .g
                    .add_node(Op::Identity, &[v], name.clone())
                    .map_err(|e| ImportError::InvalidModel(e.to_string()))?;
                if let Some(&count) = self.b.dynamic_rows.get(&v) {
                    self.b.dynamic_rows.insert(copy, count);
                }
                v = copy;
                used.insert(v);
            }
            self.b.g.set_name(v, name);
            outs.push(v);
        }
        Ok(outs)
    }
}

/// The ONNX element type code of a tensor-typed graph input.
fn input_elem_type(input: &ValueInfoProto) -> Option<i32> {
    match input.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => t.elem_type,
        _ => None,
    }
}

/// The static type of a graph input, binding symbolic dims from `binding`.
fn input_type(
    input: &ValueInfoProto,
    name: &str,
    binding: Option<&Vec<usize>>,
    notes: &mut Vec<String>,
) -> Result<TensorType, ImportError> {
    let bad = |reason: String| ImportError::InvalidModel(format!("input `{name}`: {reason}"));
    let tt = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t,
        Some(_) => return Err(bad("only tensor inputs are supported".into())),
        None => return Err(bad("has no type".into())),
    };
    let dtype = dtype_from_onnx(tt.elem_type.unwrap_or(0)).map_err(bad)?;
    let shape = match (&tt.shape, binding) {
        (None, Some(b)) => b.clone(),
        (None, None) => {
            return Err(bad(format!(
                "has no shape; pass --input-shape {name}=D0,D1,..."
            )))
        }
        (Some(s), _) => {
            if let Some(b) = binding {
                if b.len() != s.dim.len() {
                    return Err(bad(format!(
                        "the bound shape {b:?} has rank {} but the model declares rank {}",
                        b.len(),
                        s.dim.len()
                    )));
                }
            }
            let mut shape = Vec::with_capacity(s.dim.len());
            for (i, d) in s.dim.iter().enumerate() {
                let bound = binding.map(|b| b[i]);
                let dim = match &d.value {
                    // -1 is how some exporters (PaddlePaddle's) write an unknown dim.
                    Some(dimension::Value::DimValue(v)) if *v != -1 => {
                        let v = usize::try_from(*v)
                            .map_err(|_| bad(format!("dim {i} is negative ({v})")))?;
                        if let Some(b) = bound {
                            if b != v {
                                return Err(bad(format!(
                                    "the bound shape {:?} contradicts the fixed dim {i} = {v}",
                                    binding.cloned().unwrap_or_default()
                                )));
                            }
                        }
                        v
                    }
                    other => {
                        let sym = match other {
                            Some(dimension::Value::DimParam(p)) if !p.is_empty() => p.clone(),
                            Some(dimension::Value::DimValue(-1)) => "-1".to_string(),
                            _ => "?".to_string(),
                        };
                        match bound {
                            Some(b) => b,
                            None if i == 0 => {
                                notes.push(format!(
                                    "input `{name}`: symbolic batch `{sym}` bound to 1; pass --input-shape {name}=..."
                                ));
                                1
                            }
                            None => {
                                return Err(bad(format!(
                                    "dim {i} is symbolic (`{sym}`); bind it with --input-shape {name}=D0,D1,..."
                                )))
                            }
                        }
                    }
                };
                shape.push(dim);
            }
            shape
        }
    };
    TensorType::new(dtype, shape).map_err(|e| bad(e.to_string()))
}

/// Node indices in a topological order that keeps the file order where it is already valid.
pub(crate) fn topo_order(
    nodes: &[NodeProto],
    defined: &HashMap<String, ValueId>,
    pending: &HashMap<String, String>,
) -> Result<Vec<usize>, ImportError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if defined.contains_key(o) || producer.insert(o, i).is_some() {
                return Err(ImportError::InvalidModel(format!(
                    "tensor `{o}` is defined more than once"
                )));
            }
        }
    }
    let mut indegree = vec![0usize; nodes.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        for inp in n.input.iter().filter(|s| !s.is_empty()) {
            if let Some(&p) = producer.get(inp.as_str()) {
                indegree[i] += 1;
                users[p].push(i);
            } else if !defined.contains_key(inp) && !pending.contains_key(inp) {
                let name = n.name.clone().unwrap_or_default();
                return Err(ImportError::InvalidModel(format!(
                    "node `{name}` ({}) reads `{inp}`, which no node, graph input or initializer defines",
                    n.op_type.clone().unwrap_or_default()
                )));
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..nodes.len())
        .filter(|&i| indegree[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &u in &users[i] {
            indegree[u] -= 1;
            if indegree[u] == 0 {
                ready.push(Reverse(u));
            }
        }
    }
    if order.len() != nodes.len() {
        let stuck: Vec<String> = (0..nodes.len())
            .filter(|&i| indegree[i] > 0)
            .take(5)
            .map(|i| {
                format!(
                    "`{}`",
                    nodes[i].name.clone().unwrap_or_else(|| format!("#{i}"))
                )
            })
            .collect();
        return Err(ImportError::InvalidModel(format!(
            "the graph has a cycle through nodes {}",
            stuck.join(", ")
        )));
    }
    Ok(order)
}

/// Rebuilds the graph keeping only the nodes and constants that reach an output.
fn prune(g: Graph) -> kiln_ir::Result<Graph> {
    let mut live = vec![false; g.values().len()];
    for &o in g.outputs() {
        live[o.index()] = true;
    }
    for node in g.nodes().iter().rev() {
        if live[node.output.index()] {
            for &i in &node.inputs {
                live[i.index()] = true;
            }
        }
    }
    let mut out = Graph::new();
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for &v in g.inputs() {
        let val = g.value(v);
        let nv = out.add_input(val.name.clone().unwrap_or_default(), val.ty.clone());
        map.insert(v, nv);
    }
    for node in g.nodes() {
        if !live[node.output.index()] {
            continue;
        }
        let nv = if let Op::Const(c) = node.op {
            let id = out.add_shared_const(g.shared_constant(c).clone());
            out.add_node(Op::Const(id), &[], node.name.clone())?
        } else {
            let inputs: Vec<ValueId> = node.inputs.iter().map(|i| map[i]).collect();
            out.add_node(node.op.clone(), &inputs, node.name.clone())?
        };
        if let Some(n) = &g.value(node.output).name {
            out.set_name(nv, n.clone());
        }
        map.insert(node.output, nv);
    }
    out.set_outputs(g.outputs().iter().map(|o| map[o]).collect())?;
    Ok(out)
}
