//! Lowering a whole graph to kernels: one per fusion group, each a compute DAG, its default
//! schedule (a trace) and the lowered [`PrimFunc`] — what the runtime and codegen consume.
//!
//! Invariant: for a verified graph, [`lower_graph`] returns kernels in an executable order; a
//! kernel's `func` params are exactly `inputs` (in order) followed by `outputs`, each with the
//! graph type of the value it binds, and running every kernel in order with
//! [`kiln_tir::interp::run`] computes the graph outputs `kiln_reference::run` computes (see the
//! tolerance notes of [`crate::compute`]). Every input param is read by the kernel: a placeholder
//! the schedule never reads (a weight replaced by its pre-transposed table) is dropped from the
//! params and the inputs ([`drop_unread_inputs`]), so no caller passes or embeds it.

use crate::compute::{define, Builder, ComputeError, Operand};
use crate::fusion::{group_inputs, group_output, partition, Group};
use crate::schedule::{default_schedule, lower_trace, OpClass, SketchTarget};
use kiln_ir::{ConstId, Graph, Op, Tensor, ValueDef, ValueId};
use kiln_tir::{ComputeDag, LowerError, PrimFunc, Trace};
use std::collections::HashMap;

/// Why a graph could not be lowered.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("node `{node}`: {source}")]
    Define {
        node: String,
        #[source]
        source: ComputeError,
    },
    #[error("kernel `{kernel}`: {source}")]
    Lower {
        kernel: String,
        #[source]
        source: LowerError,
    },
    #[error("kernel `{0}`: the DAG has no single output stage")]
    Outputs(String),
}

/// What a kernel parameter is bound to.
#[derive(Clone, Debug, PartialEq)]
pub enum KernelInput {
    /// A graph value (a graph input or another kernel's output).
    Value(ValueId),
    /// A weight of the graph's constant table.
    Const(ConstId),
    /// A table computed at definition time (resize taps, pool divisors, rescale parameters).
    Table(Tensor),
}

/// One fused group, lowered.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub name: String,
    pub dag: ComputeDag,
    pub trace: Trace,
    pub func: PrimFunc,
    /// Bindings of the leading params of `func`, in order.
    pub inputs: Vec<KernelInput>,
    /// Graph values written by the trailing params of `func`, in order.
    pub outputs: Vec<ValueId>,
    pub class: OpClass,
    /// The kernel copies its input unchanged (row-major reshape/identity): may be aliased.
    pub alias: bool,
    /// The workload key of its group ([`workload_key`]).
    pub workload: String,
    /// Its trace came from [`TunedSchedules`] (not the default schedule).
    pub tuned: bool,
    /// Arithmetic of the group's ops ([`kiln_ir::Op::flops`]).
    pub flops: f64,
}

/// Schedules chosen by tuning, by workload key: the trace to replay instead of the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunedSchedules {
    pub traces: HashMap<String, Trace>,
}

/// 64-bit FNV-1a, hex: a hash that is the same on every platform and release.
fn fnv1a_hex(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The canonical text of a group's workload: its class, then per node the op with its
/// attributes and the operand types (constants marked `const`, group-internal operands by
/// position), then the output type. Weight values are not part of it: they do not change how
/// fast a schedule runs.
pub fn workload_text(graph: &Graph, g: &Group) -> String {
    let mut text = format!("{:?}", g.class);
    for (pos, &n) in g.nodes.iter().enumerate() {
        let node = graph.node(n);
        let attrs = serde_json::to_string(&node.op).unwrap_or_default();
        text.push_str(&format!("|{pos}:{attrs}("));
        for &v in &node.inputs {
            let inner = g.nodes[..pos]
                .iter()
                .position(|&m| graph.node(m).output == v);
            match (inner, const_id(graph, v)) {
                (Some(i), _) => text.push_str(&format!("#{i},")),
                (None, Some(_)) => text.push_str(&format!("const {},", graph.ty(v))),
                (None, None) => text.push_str(&format!("{},", graph.ty(v))),
            }
        }
        text.push_str(&format!(")->{}", graph.ty(node.output)));
    }
    text
}

/// The workload key of a group: a hash of [`workload_text`]. Equal groups (same ops, attributes
/// and types) in one model or across models share it, and so share tuning records.
pub fn workload_key(graph: &Graph, g: &Group) -> String {
    fnv1a_hex(&workload_text(graph, g))
}

/// The constant id behind a CONST node's value.
fn const_id(graph: &Graph, v: ValueId) -> Option<ConstId> {
    match graph.value(v).def {
        ValueDef::Node(n) => match graph.node(n).op {
            Op::Const(c) => Some(c),
            _ => None,
        },
        ValueDef::Input(_) => None,
    }
}

/// The compute DAG of one group, its bindings and stages not to inline.
pub fn group_dag(
    graph: &Graph,
    g: &Group,
) -> Result<(Builder, Vec<KernelInput>, Vec<ValueId>), KernelError> {
    let mut b = Builder::new();
    let mut bound: Vec<(ValueId, Operand)> = vec![];
    let mut inputs = vec![];
    let def_err = |node: &str, e: ComputeError| KernelError::Define {
        node: node.to_string(),
        source: e,
    };
    let first = g
        .nodes
        .first()
        .map(|&n| graph.node(n).name.clone())
        .unwrap_or_default();
    // Buffer and stage names depend only on positions within the group (weights `w0, w1...`,
    // values `v0...`, stages `s0_conv2d_...`), so every group of one workload has the same DAG
    // and a trace recorded on one replays on all of them.
    // A group of one movement op is defined over its operands' collapsed views (see
    // `crate::collapse`): the kernel's buffers are row-major reshapes of the graph's values.
    let collapsed = match g.nodes.as_slice() {
        [n] if crate::placement::group_placement(graph, g).is_none() => {
            let node = graph.node(*n);
            let types: Vec<&kiln_ir::TensorType> =
                node.inputs.iter().map(|&v| graph.ty(v)).collect();
            let constant = node.inputs.iter().any(|&v| const_id(graph, v).is_some());
            crate::collapse::collapse(&node.op, &types)
                .filter(|_| !constant)
                .map(|c| (node, c))
        }
        _ => None,
    };
    // A group of pointwise ops runs over the merged axes of its values (see
    // `crate::collapse::pointwise_runs`): one long loop instead of a nest of short ones.
    let pointwise_runs = match collapsed {
        Some(_) => None,
        None => pointwise_group_runs(graph, g),
    };
    let view = |v: ValueId| {
        let mut ty = graph.ty(v).clone();
        if let Some(runs) = &pointwise_runs {
            ty.shape = crate::collapse::merged(&ty.shape, runs);
        }
        if let Some((node, c)) = &collapsed {
            if let Some(i) = node.inputs.iter().position(|&x| x == v) {
                ty.shape = c.inputs[i].clone();
            } else if node.output == v {
                ty.shape = c.output.clone();
            }
        }
        ty
    };
    for (i, v) in group_inputs(graph, g).into_iter().enumerate() {
        let ty = view(v);
        let (name, binding, constant) = match const_id(graph, v) {
            Some(c) if pointwise_runs.is_some() => (
                format!("w{i}"),
                KernelInput::Const(c),
                graph
                    .constant(c)
                    .clone()
                    .reshaped(ty.shape.clone())
                    .ok()
                    .map(std::sync::Arc::new),
            ),
            Some(c) => (
                format!("w{i}"),
                KernelInput::Const(c),
                Some(graph.shared_constant(c).clone()),
            ),
            None => (format!("v{i}"), KernelInput::Value(v), None),
        };
        let id = b.placeholder(&name, &ty).map_err(|e| def_err(&first, e))?;
        if constant.is_some() {
            b.mark_constant(id);
        }
        inputs.push((id, binding));
        bound.push((v, Operand { id, ty, constant }));
    }
    // A group ending in the zero padding of its output is lowered without it (see
    // `crate::placement`): the caller places the output.
    let defined = if crate::placement::group_placement(graph, g).is_some() {
        &g.nodes[..g.nodes.len() - 1]
    } else {
        &g.nodes[..]
    };
    for (pos, &n) in defined.iter().enumerate() {
        let node = graph.node(n);
        let ops: Vec<Operand> = node
            .inputs
            .iter()
            .filter_map(|v| bound.iter().find(|(b, _)| b == v).map(|(_, o)| o.clone()))
            .collect();
        b.set_prefix(&format!("s{pos}_{}", node.op.name()));
        let op = collapsed.as_ref().map_or(&node.op, |(_, c)| &c.op);
        let id = define(&mut b, op, &ops).map_err(|e| def_err(&node.name, e))?;
        bound.push((
            node.output,
            Operand {
                id,
                ty: view(node.output),
                constant: None,
            },
        ));
    }
    // Tables are placeholders too: list every placeholder in DAG order.
    let mut ordered = vec![];
    for (i, t) in b.dag().tensors().iter().enumerate() {
        if t.stage.is_some() {
            continue;
        }
        let id = kiln_tir::BufferId(i as u32);
        if let Some((_, k)) = inputs.iter().find(|(p, _)| *p == id) {
            ordered.push(k.clone());
        } else if let Some((_, t)) = b.tables().iter().find(|(p, _)| *p == id) {
            ordered.push(KernelInput::Table(t.clone()));
        }
    }
    let outputs = group_output(graph, g).into_iter().collect();
    Ok((b, ordered, outputs))
}

/// The merged axes a group of pointwise ops runs over, when it has some to merge: every node
/// pointwise ([`crate::collapse::is_pointwise`]), its output not placed in padding.
fn pointwise_group_runs(graph: &Graph, g: &Group) -> Option<Vec<std::ops::Range<usize>>> {
    if g.alias
        || crate::placement::group_placement(graph, g).is_some()
        || !g
            .nodes
            .iter()
            .all(|&n| crate::collapse::is_pointwise(&graph.node(n).op))
    {
        return None;
    }
    let out = graph.ty(graph.node(*g.nodes.last()?).output).shape.clone();
    let mut shapes: Vec<&[usize]> = group_inputs(graph, g)
        .into_iter()
        .map(|v| graph.ty(v).shape.as_slice())
        .collect();
    shapes.extend(
        g.nodes
            .iter()
            .map(|&n| graph.ty(graph.node(n).output).shape.as_slice()),
    );
    crate::collapse::pointwise_runs(&out, &shapes)
}

/// Lowers every group of `graph` (the partition rule of [`crate::fusion`]) with its default
/// schedule.
pub fn lower_graph(graph: &Graph) -> Result<Vec<Kernel>, KernelError> {
    lower_groups(graph, &partition(graph))
}

/// Lowers the given fusion groups of `graph` (each satisfying the invariant of
/// [`crate::fusion`], in an executable order) with their default schedules for a target
/// without micro-kernels.
pub fn lower_groups(graph: &Graph, groups: &[Group]) -> Result<Vec<Kernel>, KernelError> {
    lower_groups_with(
        graph,
        groups,
        &TunedSchedules::default(),
        &SketchTarget::default(),
    )
}

/// [`lower_groups`] for `target`, replaying the trace `tuned` records for a group's workload
/// where it has one. A recorded trace that no longer replays or lowers on the group's DAG (a
/// changed operator library) is ignored: the kernel gets its default schedule.
pub fn lower_groups_with(
    graph: &Graph,
    groups: &[Group],
    tuned: &TunedSchedules,
    target: &SketchTarget,
) -> Result<Vec<Kernel>, KernelError> {
    let mut kernels = vec![];
    for g in groups {
        let (b, inputs, outputs) = group_dag(graph, g)?;
        let (dag, _, keep) = b.into_parts();
        // The graph node's name (stage names are positional), then the output stage's.
        let node = g
            .nodes
            .last()
            .map_or_else(String::new, |&n| graph.node(n).name.clone());
        let stage = dag
            .outputs()
            .last()
            .and_then(|o| dag.tensor(*o))
            .map_or_else(String::new, |t| t.name.clone());
        let name = format!("{node}.{stage}");
        if dag.outputs().len() != 1 {
            return Err(KernelError::Outputs(name));
        }
        let workload = workload_key(graph, g);
        let replayed = tuned.traces.get(&workload).and_then(|trace| {
            lower_trace(&dag, trace)
                .ok()
                .map(|func| (trace.clone(), func))
        });
        let is_tuned = replayed.is_some();
        let (trace, mut func) = match replayed {
            Some(found) => found,
            None => {
                default_schedule(&dag, g.class, &keep, target).map_err(|e| KernelError::Lower {
                    kernel: name.clone(),
                    source: e,
                })?
            }
        };
        let mut inputs = inputs;
        let placement = crate::placement::group_placement(graph, g);
        finish_kernel(
            graph,
            &dag,
            &trace,
            placement.as_ref(),
            &mut func,
            &mut inputs,
        );
        let flops = g
            .nodes
            .iter()
            .map(|&n| {
                let node = graph.node(n);
                let tys: Vec<&kiln_ir::TensorType> =
                    node.inputs.iter().map(|&v| graph.ty(v)).collect();
                node.op.flops(&tys, graph.ty(node.output))
            })
            .sum();
        kernels.push(Kernel {
            name,
            dag,
            trace,
            func,
            inputs,
            outputs,
            class: g.class,
            alias: g.alias,
            workload,
            tuned: is_tuned,
            flops,
        });
    }
    Ok(kernels)
}

/// Prepares a lowered kernel's params for binding: constant inputs its schedule packs are
/// packed now ([`fold_constant_packs`]), its output is placed in the padding its group ends
/// with ([`crate::placement::place_output`]), and inputs it never reads are dropped
/// ([`drop_unread_inputs`]).
pub fn finish_kernel(
    graph: &Graph,
    dag: &ComputeDag,
    trace: &Trace,
    placement: Option<&crate::placement::OutputPlacement>,
    func: &mut PrimFunc,
    inputs: &mut Vec<KernelInput>,
) {
    fold_constant_packs(graph, dag, trace, func, inputs);
    if let Some(p) = placement {
        crate::placement::place_output(func, p);
    }
    drop_unread_inputs(func, inputs);
}

/// Packs constant inputs at compile time: for each input bound to a weight or table that the
/// schedule packs (`pack`), the packed tensor is computed here ([`kiln_tir::Pack::pack_tensor`],
/// what the packing loop nest computes), becomes the binding of the param, which is now the
/// `<name>_packed` buffer, and the packing loop nest is removed. `inputs` are in DAG placeholder
/// order (the order of `func`'s leading params), as [`group_dag`] returns them.
pub fn fold_constant_packs(
    graph: &Graph,
    dag: &ComputeDag,
    trace: &Trace,
    func: &mut PrimFunc,
    inputs: &mut [KernelInput],
) {
    let Ok(sched) = trace.apply(dag) else {
        return;
    };
    let placeholders: Vec<kiln_tir::BufferId> = (0..dag.tensors().len())
        .map(|i| kiln_tir::BufferId(i as u32))
        .filter(|&id| dag.stage(id).is_none())
        .collect();
    for (i, &ph) in placeholders.iter().enumerate() {
        let Some(pack) = sched.pack(ph) else {
            continue;
        };
        let (Some(input), Some(&p)) = (inputs.get(i), func.params.get(i)) else {
            continue;
        };
        let value = match input {
            KernelInput::Const(c) => graph.constant(*c),
            KernelInput::Table(t) => t,
            KernelInput::Value(_) => continue,
        };
        let Some(packed) = pack.pack_tensor(value) else {
            continue;
        };
        let name = format!("{}_packed", func.buffers[p.index()].name);
        let Some(q) = func
            .buffers
            .iter()
            .position(|b| b.name == name && b.scope == kiln_tir::Scope::Local)
            .map(|q| kiln_tir::BufferId(q as u32))
        else {
            continue;
        };
        if func.buffers[q.index()].shape != packed.shape() || !remove_writer(&mut func.body, q) {
            continue;
        }
        func.params[i] = q;
        func.buffers[q.index()].scope = kiln_tir::Scope::Param;
        func.buffers[p.index()].scope = kiln_tir::Scope::Local;
        inputs[i] = KernelInput::Table(packed);
    }
}

/// Removes the top-level statement of `body` that writes `buf` and nothing else (a packing
/// nest); whether there was one.
fn remove_writer(body: &mut kiln_tir::Stmt, buf: kiln_tir::BufferId) -> bool {
    let writes_only = |s: &kiln_tir::Stmt| {
        let mut stored = std::collections::BTreeSet::new();
        s.walk(&mut |x| {
            if let kiln_tir::Stmt::Store { buf, .. } = x {
                stored.insert(*buf);
            }
        });
        stored.len() == 1 && stored.contains(&buf)
    };
    if let kiln_tir::Stmt::Seq(items) = body {
        if let Some(pos) = items.iter().position(writes_only) {
            items.remove(pos);
            return true;
        }
    }
    false
}

/// Removes the input params `func` never reads from its params (they become unallocated locals:
/// codegen allocates only locals a body uses) and from `inputs`, which binds them.
pub fn drop_unread_inputs(func: &mut PrimFunc, inputs: &mut Vec<KernelInput>) {
    let used = func.body.buffers_accessed();
    for i in (0..inputs.len().min(func.params.len())).rev() {
        let p = func.params[i];
        if !used.contains(&p) {
            func.params.remove(i);
            inputs.remove(i);
            func.buffers[p.index()].scope = kiln_tir::Scope::Local;
        }
    }
}

/// Runs the kernels with the TIR interpreter on the graph inputs; returns the graph outputs.
pub fn run_kernels(
    graph: &Graph,
    kernels: &[Kernel],
    inputs: &[Tensor],
) -> Result<Vec<Tensor>, String> {
    let mut values: Vec<Option<Tensor>> = vec![None; graph.values().len()];
    for (&v, t) in graph.inputs().iter().zip(inputs) {
        values[v.index()] = Some(t.clone());
    }
    for (i, _) in graph.values().iter().enumerate() {
        if let Some(c) = const_id(graph, ValueId(i as u32)) {
            values[i] = Some(graph.constant(c).clone());
        }
    }
    for k in kernels {
        // A kernel's buffers may be row-major views of the graph's values (see
        // `crate::collapse`): arguments are reshaped to its params' shapes and back.
        let view = |t: Tensor, i: usize| -> Result<Tensor, String> {
            match k
                .func
                .params
                .get(i)
                .map(|&p| &k.func.buffers[p.index()].shape)
            {
                Some(shape) if *shape != t.shape() => t
                    .reshaped(shape.clone())
                    .map_err(|e| format!("kernel {}: argument {i}: {e}", k.name)),
                _ => Ok(t),
            }
        };
        let mut args = vec![];
        for inp in &k.inputs {
            let t = match inp {
                KernelInput::Value(v) => values[v.index()]
                    .clone()
                    .ok_or_else(|| format!("kernel {}: value {v} not computed", k.name))?,
                KernelInput::Const(c) => graph.constant(*c).clone(),
                KernelInput::Table(t) => t.clone(),
            };
            args.push(view(t, args.len())?);
        }
        for &o in &k.outputs {
            args.push(view(Tensor::zeros(graph.ty(o).clone()), args.len())?);
        }
        kiln_tir::interp::run(&k.func, &mut args).map_err(|e| format!("kernel {}: {e}", k.name))?;
        let n_in = k.inputs.len();
        for (j, &o) in k.outputs.iter().enumerate() {
            let out = args.get(n_in + j).cloned();
            values[o.index()] = out
                .map(|t| t.reshaped(graph.ty(o).shape.clone()))
                .transpose()
                .map_err(|e| format!("kernel {}: output {j}: {e}", k.name))?;
        }
    }
    graph
        .outputs()
        .iter()
        .map(|v| {
            values[v.index()]
                .clone()
                .ok_or_else(|| format!("graph output {v} not computed"))
        })
        .collect()
}
