//! Control flow with a static shape: If with a condition known at import, Loop with a known
//! trip count (and a condition that folds), Scan over a known sequence length — each expanded
//! inline into the dataflow graph.
//!
//! Invariant: a body graph is imported into the enclosing scope with its formal inputs bound to
//! values, once per iteration; the names it defines are dropped from the scope afterwards, so
//! iterations (and the two branches of an If) never see each other's values, while outer-scope
//! names stay visible to them as ONNX requires. Anything whose control depends on run-time data
//! is a [`NodeError::NotStatic`] (a condition, a trip count) or unsupported (sequence values), never
//! a guess. Unrolling is bounded by [`MAX_ITERATIONS`].

use crate::builder::{NResult, NodeError};
use crate::import::{topo_order, Importer};
use crate::ops::QdqGraph;
use crate::proto::{GraphProto, NodeProto};
use crate::ImportError;
use kiln_ir::{Tensor, ValueId};

/// The most iterations a Loop or Scan is unrolled to.
pub(crate) const MAX_ITERATIONS: usize = 4096;

/// Why a control-flow node could not be expanded: an error inside a body (reported as it is),
/// or one of the node itself.
#[derive(Debug)]
pub(crate) enum ControlError {
    Import(ImportError),
    Node(NodeError),
}

impl From<ImportError> for ControlError {
    fn from(e: ImportError) -> Self {
        ControlError::Import(e)
    }
}

impl From<NodeError> for ControlError {
    fn from(e: NodeError) -> Self {
        ControlError::Node(e)
    }
}

type CResult<T> = Result<T, ControlError>;

fn invalid<T>(reason: impl Into<String>) -> CResult<T> {
    Err(ControlError::Node(NodeError::Invalid(reason.into())))
}

fn unsupported<T>(reason: impl Into<String>) -> CResult<T> {
    Err(ControlError::Node(NodeError::Unsupported(reason.into())))
}

/// The graph attribute `name` of `node`.
fn graph_attr<'a>(node: &'a NodeProto, name: &str) -> CResult<&'a GraphProto> {
    match node
        .attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.g.as_ref())
    {
        Some(g) => Ok(g),
        None => invalid(format!("graph attribute `{name}` is required")),
    }
}

/// The integer attribute `name` of `node`, or `default`.
fn int_attr(node: &NodeProto, name: &str, default: i64) -> i64 {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.i)
        .unwrap_or(default)
}

/// The integer-list attribute `name` of `node`, if present.
fn ints_attr(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .map(|a| a.ints.clone())
}

/// Refuses attributes the expansion does not understand.
fn check_attributes(node: &NodeProto, known: &[&str]) -> CResult<()> {
    match node
        .attribute
        .iter()
        .filter_map(|a| a.name.as_deref())
        .find(|n| !known.contains(n))
    {
        Some(n) => unsupported(format!("attribute `{n}` is not supported")),
        None => Ok(()),
    }
}

/// The value of a constant scalar, as f64.
fn constant_scalar(imp: &Importer, v: ValueId, what: &str) -> CResult<f64> {
    match imp.b.const_of(v) {
        Some(t) if t.ty().num_elements() == 1 => Ok(t.data().to_f64_vec()[0]),
        Some(_) => invalid(format!("{what} must be a single value")),
        None => Err(ControlError::Node(NodeError::NotStatic(format!(
            "{what} must be known at import time (Kiln unrolls control flow)"
        )))),
    }
}

/// Imports `body` with its formal inputs bound to `args`; returns its outputs. Names the body
/// defines are dropped afterwards.
fn inline_body(imp: &mut Importer, body: &GraphProto, args: &[ValueId]) -> CResult<Vec<ValueId>> {
    if body.input.len() != args.len() {
        return invalid(format!(
            "the body takes {} inputs, given {}",
            body.input.len(),
            args.len()
        ));
    }
    let (saved_values, saved_pending) = (imp.values.clone(), imp.pending.clone());
    let saved_name = imp.b.node_name.clone();
    for (formal, &v) in body.input.iter().zip(args) {
        imp.values
            .insert(formal.name.clone().unwrap_or_default(), v);
    }
    let result = (|| -> CResult<Vec<ValueId>> {
        imp.initializers(body, None)?;
        let order = topo_order(&body.node, &imp.values, &imp.pending)?;
        let outputs = crate::import::output_names(&body.output);
        let qdq = QdqGraph::new(&body.node, outputs, imp.opset, imp.numerics);
        for i in order {
            imp.node(&body.node[i], i, &qdq)?;
        }
        body.output
            .iter()
            .map(|o| {
                let name = o.name.clone().unwrap_or_default();
                match imp.values.get(&name) {
                    Some(&v) => Ok(v),
                    None => invalid(format!(
                        "body output `{name}`: {}",
                        imp.pending
                            .get(&name)
                            .cloned()
                            .unwrap_or_else(|| "not defined".into())
                    )),
                }
            })
            .collect()
    })();
    imp.values = saved_values;
    imp.pending = saved_pending;
    imp.b.node_name = saved_name;
    result
}

/// A rank-0 constant.
fn scalar<T: kiln_ir::Element>(imp: &mut Importer, v: T) -> ValueId {
    imp.b.konst(Tensor::scalar(v))
}

/// Stacks per-iteration values along a new `axis`.
fn stack(imp: &mut Importer, parts: &[ValueId], axis: usize) -> NResult<ValueId> {
    let mut expanded = Vec::with_capacity(parts.len());
    for &p in parts {
        let mut s = imp.b.shape(p);
        if axis > s.len() {
            return crate::builder::invalid(format!("axis {axis} is out of range for {s:?}"));
        }
        s.insert(axis, 1);
        expanded.push(imp.b.reshape(p, s)?);
    }
    imp.b.concat(&expanded, axis)
}

/// Expands an If, Loop or Scan node whose `inputs` are resolved; returns its outputs.
pub(crate) fn inline(
    imp: &mut Importer,
    node: &NodeProto,
    op_type: &str,
    inputs: &[Option<ValueId>],
) -> CResult<Vec<ValueId>> {
    match op_type {
        "If" => if_node(imp, node, inputs),
        "Loop" => loop_node(imp, node, inputs),
        _ => scan_node(imp, node, inputs),
    }
}

fn if_node(
    imp: &mut Importer,
    node: &NodeProto,
    inputs: &[Option<ValueId>],
) -> CResult<Vec<ValueId>> {
    check_attributes(node, &["then_branch", "else_branch"])?;
    let Some(Some(cond)) = inputs.first() else {
        return invalid("the condition input is required");
    };
    let taken = constant_scalar(imp, *cond, "the If condition")? != 0.0;
    let branch = graph_attr(node, if taken { "then_branch" } else { "else_branch" })?;
    inline_body(imp, branch, &[])
}

fn loop_node(
    imp: &mut Importer,
    node: &NodeProto,
    inputs: &[Option<ValueId>],
) -> CResult<Vec<ValueId>> {
    check_attributes(node, &["body"])?;
    let body = graph_attr(node, "body")?;
    let trip = match inputs.first().copied().flatten() {
        Some(m) => {
            let m = constant_scalar(imp, m, "the Loop trip count")?;
            if m < 0.0 {
                0
            } else {
                m as usize
            }
        }
        None => usize::MAX,
    };
    let mut cond = match inputs.get(1).copied().flatten() {
        Some(c) => constant_scalar(imp, c, "the Loop condition")? != 0.0,
        None => true,
    };
    let mut carried: Vec<ValueId> = Vec::new();
    for (i, v) in inputs.iter().enumerate().skip(2) {
        match v {
            Some(v) => carried.push(*v),
            None => return invalid(format!("loop-carried input {i} is missing")),
        }
    }
    let n_scan = body
        .output
        .len()
        .checked_sub(1 + carried.len())
        .ok_or_else(|| {
            ControlError::Node(NodeError::Invalid(
                "the body must output the condition and every loop-carried value".into(),
            ))
        })?;
    let mut scans: Vec<Vec<ValueId>> = vec![Vec::new(); n_scan];
    let mut i = 0usize;
    while cond && i < trip {
        if i == MAX_ITERATIONS {
            return unsupported(format!(
                "the Loop runs more than {MAX_ITERATIONS} iterations (Kiln unrolls loops)"
            ));
        }
        let iteration = scalar(imp, i as i64);
        let cond_in = scalar(imp, cond);
        let mut args = vec![iteration, cond_in];
        args.extend(&carried);
        let outs = inline_body(imp, body, &args)?;
        cond = constant_scalar(imp, outs[0], "the Loop body's condition output")? != 0.0;
        carried = outs[1..1 + carried.len()].to_vec();
        for (k, &v) in outs[1 + carried.len()..].iter().enumerate() {
            scans[k].push(v);
        }
        i += 1;
    }
    let mut result = carried;
    for parts in scans {
        if parts.is_empty() {
            return unsupported("a Loop that runs no iteration has scan outputs of unknown shape");
        }
        result.push(stack(imp, &parts, 0)?);
    }
    Ok(result)
}

fn scan_node(
    imp: &mut Importer,
    node: &NodeProto,
    inputs: &[Option<ValueId>],
) -> CResult<Vec<ValueId>> {
    if imp.opset < 9 {
        return unsupported("Scan before opset 9 (with a batch axis and sequence_lens)");
    }
    check_attributes(
        node,
        &[
            "body",
            "num_scan_inputs",
            "scan_input_axes",
            "scan_input_directions",
            "scan_output_axes",
            "scan_output_directions",
        ],
    )?;
    let body = graph_attr(node, "body")?;
    let values: Vec<ValueId> = match inputs.iter().copied().collect::<Option<Vec<_>>>() {
        Some(v) => v,
        None => return invalid("Scan inputs cannot be omitted"),
    };
    let k = int_attr(node, "num_scan_inputs", 0);
    let k = match usize::try_from(k) {
        Ok(k) if k >= 1 && k <= values.len() => k,
        _ => {
            return invalid(format!(
                "num_scan_inputs must be in 1..={}, got {k}",
                values.len()
            ))
        }
    };
    let n_state = values.len() - k;
    let n_out = body.output.len().checked_sub(n_state).ok_or_else(|| {
        ControlError::Node(NodeError::Invalid(
            "the body must output every state".into(),
        ))
    })?;
    let axis_list = |name: &str, n: usize, ranks: &[usize]| -> CResult<Vec<usize>> {
        let raw = ints_attr(node, name).unwrap_or_else(|| vec![0; n]);
        if raw.len() != n {
            return invalid(format!("{name} must list {n} axes"));
        }
        raw.iter()
            .zip(ranks)
            .map(|(&a, &r)| crate::builder::norm_axis(a, r).map_err(ControlError::Node))
            .collect()
    };
    let directions = |name: &str, n: usize| -> CResult<Vec<bool>> {
        let raw = ints_attr(node, name).unwrap_or_else(|| vec![0; n]);
        if raw.len() != n || raw.iter().any(|&d| d != 0 && d != 1) {
            return invalid(format!("{name} must list {n} directions of 0 or 1"));
        }
        Ok(raw.iter().map(|&d| d == 1).collect())
    };
    let scan_inputs = &values[n_state..];
    let in_ranks: Vec<usize> = scan_inputs.iter().map(|&v| imp.b.rank(v)).collect();
    let in_axes = axis_list("scan_input_axes", k, &in_ranks)?;
    let in_rev = directions("scan_input_directions", k)?;
    let out_rev = directions("scan_output_directions", n_out)?;
    let len = imp.b.shape(scan_inputs[0])[in_axes[0]];
    for (j, &v) in scan_inputs.iter().enumerate() {
        if imp.b.shape(v)[in_axes[j]] != len {
            return invalid("scan inputs have different sequence lengths");
        }
    }
    if len > MAX_ITERATIONS {
        return unsupported(format!(
            "the Scan runs {len} iterations, more than {MAX_ITERATIONS} (Kiln unrolls scans)"
        ));
    }
    if len == 0 {
        return unsupported("a Scan over an empty sequence has outputs of unknown shape");
    }
    let mut state: Vec<ValueId> = values[..n_state].to_vec();
    let mut outs: Vec<Vec<ValueId>> = vec![Vec::new(); n_out];
    for t in 0..len {
        let mut args = state.clone();
        for (j, &v) in scan_inputs.iter().enumerate() {
            let at = if in_rev[j] { len - 1 - t } else { t };
            let slice = imp.b.slice_axis(v, in_axes[j], at, 1, 1)?;
            let mut s = imp.b.shape(slice);
            s.remove(in_axes[j]);
            args.push(imp.b.reshape(slice, s)?);
        }
        let results = inline_body(imp, body, &args)?;
        state = results[..n_state].to_vec();
        for (j, &v) in results[n_state..].iter().enumerate() {
            outs[j].push(v);
        }
    }
    let out_ranks: Vec<usize> = outs.iter().map(|p| imp.b.rank(p[0]) + 1).collect();
    let out_axes = axis_list("scan_output_axes", n_out, &out_ranks)?;
    let mut result = state;
    for (j, mut parts) in outs.into_iter().enumerate() {
        if out_rev[j] {
            parts.reverse();
        }
        result.push(stack(imp, &parts, out_axes[j])?);
    }
    Ok(result)
}
