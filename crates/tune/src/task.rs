//! Tasks: the distinct workloads of a model, each with the DAG the tuner schedules.
//!
//! Invariant: a model's tasks are exactly the distinct workload keys
//! ([`kiln_operators::kernel::workload_key`]) of the kernels the compiler lowers for it with the
//! same graph options (alias groups included: one that cannot share its source's storage runs
//! as a copy), each weighted by how many kernels share it; [`extract_tasks`] is deterministic, so a measurement process rebuilding a
//! task from the model file gets the same DAG.

use crate::TuneError;
use kiln::GraphOptions;
use kiln_ir::{Graph, Op};
use kiln_operators::fusion::{partition, Group};
use kiln_operators::kernel::{group_dag, workload_key, KernelInput};
use kiln_operators::placement::{group_placement, OutputPlacement};
use kiln_schedules::{OpClass, SearchSpace, SketchTarget};
use kiln_tir::{BufferId, ComputeDag};
use std::collections::BTreeSet;

/// One workload to tune.
#[derive(Clone, Debug)]
pub struct Task {
    /// The workload key (shared by equal groups, across models too).
    pub key: String,
    /// The group's ops and output type, for people.
    pub desc: String,
    pub class: OpClass,
    /// How many kernels of the model run this workload.
    pub weight: usize,
    pub dag: ComputeDag,
    /// Stages the schedule must not inline.
    pub keep: BTreeSet<BufferId>,
    /// What each placeholder of the DAG binds, in DAG order.
    pub inputs: Vec<KernelInput>,
    pub space: SearchSpace,
    /// The target the task's schedules are sketched for.
    pub target: SketchTarget,
    /// The padding the kernel's output is placed in (see `kiln_operators::placement`).
    pub placement: Option<OutputPlacement>,
}

/// A model's tasks and the (rewritten) graph they come from.
#[derive(Clone, Debug)]
pub struct TaskSet {
    pub graph: Graph,
    pub tasks: Vec<Task>,
}

fn describe(graph: &Graph, g: &Group) -> String {
    let ops: Vec<&str> = g.nodes.iter().map(|&n| graph.node(n).op.name()).collect();
    let out = g
        .nodes
        .last()
        .map(|&n| graph.ty(graph.node(n).output).to_string())
        .unwrap_or_default();
    format!("{} -> {out}", ops.join("+"))
}

/// The tasks of `graph` compiled with `options` (rewriting and fusion as the compiler does them)
/// for `target`.
pub fn extract_tasks(
    graph: &Graph,
    options: &GraphOptions,
    target: &kiln::Target,
) -> Result<TaskSet, TuneError> {
    let prepared = kiln::graph_opt::prepare(graph, options, target)?;
    let sketch: SketchTarget = target.sketch_target();
    let graph = prepared.graph.into_owned();
    let groups = prepared.groups.unwrap_or_else(|| partition(&graph));
    let mut tasks: Vec<Task> = vec![];
    for g in &groups {
        // Alias groups (row-major reshapes) usually run no code, but one whose source cannot
        // be shared (a graph input) is a copy kernel: they are tasks too.
        if g.nodes
            .iter()
            .all(|&n| matches!(graph.node(n).op, Op::Const(_)))
        {
            continue;
        }
        let key = workload_key(&graph, g);
        if let Some(t) = tasks.iter_mut().find(|t| t.key == key) {
            t.weight += 1;
            continue;
        }
        let (b, inputs, _) = group_dag(&graph, g).map_err(TuneError::Lower)?;
        let (dag, _, keep) = b.into_parts();
        let space = SearchSpace::new(&dag, g.class, &sketch);
        tasks.push(Task {
            key,
            desc: describe(&graph, g),
            class: g.class,
            weight: 1,
            dag,
            keep,
            inputs,
            space,
            target: sketch,
            placement: group_placement(&graph, g),
        });
    }
    Ok(TaskSet { graph, tasks })
}
