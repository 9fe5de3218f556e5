//! Tasks: the distinct workloads of a model, each with the DAG the tuner schedules.
//!
//! Invariant: a model's tasks are exactly the distinct workload keys
//! ([`kiln_operators::kernel::workload_key`]) of the kernels the compiler runs for it with the
//! same graph options (alias groups only where they write a graph output: elsewhere they share
//! their source's storage and run no code), each weighted by how many kernels share it;
//! [`extract_tasks`] is deterministic, so a measurement process rebuilding a task from the
//! model file gets the same DAG.

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
        if g.nodes
            .iter()
            .all(|&n| matches!(graph.node(n).op, Op::Const(_)))
        {
            continue;
        }
        // An alias group (a row-major reshape) shares its source's storage and runs no code,
        // unless it writes a graph output (then the compiler may have to copy): only those
        // are tasks, so a model's estimate sums the kernels that run.
        if g.alias
            && !g
                .nodes
                .last()
                .is_some_and(|&n| graph.outputs().contains(&graph.node(n).output))
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
