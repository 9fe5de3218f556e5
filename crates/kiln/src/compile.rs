//! Compilation of a graph into one JIT module: lowering to kernels, the static memory plan, and
//! the whole-model entry function that calls the kernels with their buffers.
//!
//! Invariant: every graph value lives in exactly one place for the whole run: a model input, a
//! model output, a constant, or an arena range fixed by [`kiln_runtime::plan`]; an alias kernel
//! (a row-major reshape) is not called but shares its source's storage; values that are graph
//! outputs but computed by no kernel (inputs, constants, repeated outputs) are copied after the
//! entry returns.

use crate::bytes::{data_bytes_mut, tensor_byte_view, tensor_from_bytes};
use crate::profile::KernelInfo;
use crate::{CompileOptions, Target};
use kiln_codegen::{Arg, CodegenOptions, JitModule, KernelCall, ModelEntry, Threads};
use kiln_ir::{ConstId, Graph, Op, Tensor, TensorData, TensorType, ValueDef, ValueId};
use kiln_operators::fusion::partition;
use kiln_operators::fusion::Group;
use kiln_operators::kernel::{lower_groups_with, Kernel, KernelError, KernelInput, TunedSchedules};
use kiln_operators::schedule::{OpClass, SketchTarget};
use kiln_runtime::{plan, BufferRequest, PlanError};
use std::collections::HashMap;
use std::time::Instant;

/// Why a graph could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("the graph does not verify: {0}")]
    Verify(#[from] kiln_ir::IrError),
    #[error("lowering failed: {0}")]
    Lower(#[from] KernelError),
    #[error("memory planning failed: {0}")]
    Plan(#[from] PlanError),
    #[error("code generation failed: {0}")]
    Codegen(#[from] kiln_codegen::CodegenError),
    #[error("graph optimisation failed: {0}")]
    GraphOpt(#[from] crate::graph_opt::GraphOptError),
    #[error("target `{0}` does not run on this machine: the JIT needs a native target (compile a library instead)")]
    NotNative(String),
}

/// Why a compiled model could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the model has {expected} inputs but {got} were given")]
    InputCount { expected: usize, got: usize },
    #[error("input {index} (`{name}`) must be {expected}, got {got}")]
    InputType {
        index: usize,
        name: String,
        expected: String,
        got: String,
    },
    #[error("the model has {expected} outputs but {got} buffers were given")]
    OutputCount { expected: usize, got: usize },
    #[error("output {index} (`{name}`) needs a buffer of {expected} bytes, got {got}")]
    OutputSize {
        index: usize,
        name: String,
        expected: usize,
        got: usize,
    },
    #[error("compiled code failed: {0}")]
    Codegen(#[from] kiln_codegen::CodegenError),
    #[error("the model was not compiled for profiling (CompileOptions::profile)")]
    NotProfiled,
    #[error("profile marks: {0}")]
    Profile(String),
}

/// Numbers about a compilation.
#[derive(Clone, Debug, PartialEq)]
pub struct CompileStats {
    /// Kernels called per run (alias kernels excluded).
    pub kernels: usize,
    /// Of those, kernels scheduled by a tuning record.
    pub tuned_kernels: usize,
    /// Peak arena bytes of the memory plan.
    pub arena_bytes: usize,
    /// Bytes of all intermediate tensors without any reuse.
    pub naive_bytes: usize,
    /// Wall time of the compilation, in milliseconds.
    pub compile_ms: f64,
    /// That time by stage.
    pub stages: StageTimes,
    /// What the e-graph rewriting did (`None` when it was off).
    pub rewrite: Option<crate::RewriteReport>,
}

/// Wall time of each compilation stage, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTimes {
    /// E-graph rewriting and fusion-group extraction (0 when rewriting is off).
    pub rewrite_ms: f64,
    /// Fusion groups to compute definitions, schedules and loop IR.
    pub lower_ms: f64,
    /// Memory plan and the entry function.
    pub plan_ms: f64,
    /// Cranelift (and the micro-kernel generators).
    pub codegen_ms: f64,
    /// The C compiler and linker (AOT only).
    pub link_ms: f64,
}

impl std::fmt::Display for StageTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rewrite {:.1}, lower {:.1}, plan {:.1}, codegen {:.1}",
            self.rewrite_ms, self.lower_ms, self.plan_ms, self.codegen_ms
        )?;
        if self.link_ms > 0.0 {
            write!(f, ", link {:.1}", self.link_ms)?;
        }
        Ok(())
    }
}

/// Milliseconds since `t`.
pub(crate) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Where a value lives during a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Storage {
    Input(usize),
    Output(usize),
    Constant(usize),
    Arena(usize),
}

/// Where a graph output computed by no kernel is copied from after the entry returns.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CopySource {
    Input(usize),
    Constant(usize),
    Output(usize),
}

const ENTRY: &str = "kiln_model_run";

/// A model compiled to native code, ready to run.
#[derive(Debug)]
pub struct CompiledModel {
    jit: JitModule,
    input_types: Vec<TensorType>,
    input_names: Vec<String>,
    output_types: Vec<TensorType>,
    output_names: Vec<String>,
    constants: Vec<Vec<u8>>,
    copies: Vec<(usize, CopySource)>,
    stats: CompileStats,
    kernels: Vec<KernelInfo>,
    profiled: bool,
    /// Arenas of finished runs, reused by later ones.
    arenas: std::sync::Mutex<Vec<Vec<u8>>>,
}

struct Planner<'g> {
    graph: &'g Graph,
    storage: HashMap<ValueId, Storage>,
    constants: Vec<Vec<u8>>,
    const_index: HashMap<ConstId, usize>,
    requests: Vec<BufferRequest>,
}

impl Planner<'_> {
    fn constant(&mut self, c: ConstId) -> usize {
        if let Some(&i) = self.const_index.get(&c) {
            return i;
        }
        self.constants
            .push(tensor_byte_view(self.graph.constant(c)).into_owned());
        self.const_index.insert(c, self.constants.len() - 1);
        self.constants.len() - 1
    }

    fn value_storage(&mut self, v: ValueId) -> Option<Storage> {
        if let Some(&s) = self.storage.get(&v) {
            return Some(s);
        }
        if let ValueDef::Node(n) = self.graph.value(v).def {
            if let Op::Const(c) = self.graph.node(n).op {
                let s = Storage::Constant(self.constant(c));
                self.storage.insert(v, s);
                return Some(s);
            }
        }
        None
    }
}

/// A graph lowered to kernels with its memory planned: what the JIT and the AOT library are
/// both built from.
#[derive(Debug)]
pub(crate) struct PlannedModel {
    pub funcs: Vec<kiln_tir::PrimFunc>,
    pub entry: ModelEntry,
    pub constants: Vec<Vec<u8>>,
    pub copies: Vec<(usize, CopySource)>,
    pub input_types: Vec<TensorType>,
    pub input_names: Vec<String>,
    pub output_types: Vec<TensorType>,
    pub output_names: Vec<String>,
    pub arena_bytes: usize,
    pub naive_bytes: usize,
    /// Kernels whose schedule came from the tuned schedules.
    pub tuned_kernels: usize,
    /// What each kernel call of the entry runs, in call order.
    pub kernels: Vec<KernelInfo>,
    /// Time spent lowering and planning (`lower_ms`, `plan_ms` filled).
    pub times: StageTimes,
}

impl PlannedModel {
    /// JIT code generation options for `threads` threads.
    pub fn codegen_options(threads: usize, isa: kiln_codegen::IsaSpec) -> CodegenOptions {
        CodegenOptions {
            isa,
            threads: if threads <= 1 {
                Threads::Single
            } else {
                Threads::Pool(threads)
            },
            ..CodegenOptions::default()
        }
    }
}

pub(crate) fn compile(
    graph: &Graph,
    target: &Target,
    options: &CompileOptions,
) -> Result<CompiledModel, CompileError> {
    if !target.runs_natively() {
        return Err(CompileError::NotNative(target.name().into()));
    }
    let start = Instant::now();
    let prepared = crate::graph_opt::prepare(graph, &options.graph, target)?;
    let rewrite_ms = ms_since(start);
    let planned = plan_model(
        &prepared.graph,
        prepared.groups.as_deref(),
        &options.schedules,
        &target.sketch_target(),
        ENTRY,
    )?;
    let rewrite = prepared.report;
    let codegen = CodegenOptions {
        profile: options.profile,
        ..PlannedModel::codegen_options(options.threads, target.isa_spec())
    };
    let codegen_start = Instant::now();
    let jit = JitModule::compile_with_entries(&planned.funcs, &[planned.entry], &codegen)?;
    let stages = StageTimes {
        rewrite_ms,
        codegen_ms: ms_since(codegen_start),
        ..planned.times
    };
    let stats = CompileStats {
        kernels: planned.funcs.len(),
        tuned_kernels: planned.tuned_kernels,
        arena_bytes: planned.arena_bytes,
        naive_bytes: planned.naive_bytes,
        compile_ms: start.elapsed().as_secs_f64() * 1e3,
        stages,
        rewrite,
    };
    Ok(CompiledModel {
        jit,
        input_types: planned.input_types,
        input_names: planned.input_names,
        output_types: planned.output_types,
        output_names: planned.output_names,
        constants: planned.constants,
        copies: planned.copies,
        stats,
        kernels: planned.kernels,
        profiled: options.profile,
        arenas: std::sync::Mutex::new(Vec::new()),
    })
}

/// Lowers `graph` to kernels (its fusion `groups` when given, else the lowering's partition
/// rule), plans its memory and builds the entry `entry_name` calling them.
pub(crate) fn plan_model(
    graph: &Graph,
    groups: Option<&[Group]>,
    schedules: &TunedSchedules,
    target: &SketchTarget,
    entry_name: &str,
) -> Result<PlannedModel, CompileError> {
    let start = Instant::now();
    graph.verify()?;
    let folded = crate::empty::fold_empty_tensors(graph)?;
    let kernels = match (&folded, groups) {
        (None, Some(groups)) => lower_groups_with(graph, groups, schedules, target)?,
        // Folding empty tensors renumbers the graph: the given groups no longer apply.
        _ => {
            let g = folded.as_ref().unwrap_or(graph);
            lower_groups_with(g, &partition(g), schedules, target)?
        }
    };
    let lower_ms = ms_since(start);
    dump_kernels(&kernels);
    let plan_start = Instant::now();
    let graph = folded.as_ref().unwrap_or(graph);
    let mut p = Planner {
        graph,
        storage: HashMap::new(),
        constants: Vec::new(),
        const_index: HashMap::new(),
        requests: Vec::new(),
    };
    for (i, &v) in graph.inputs().iter().enumerate() {
        p.storage.insert(v, Storage::Input(i));
    }
    let produced: HashMap<ValueId, usize> = kernels
        .iter()
        .enumerate()
        .flat_map(|(k, kernel)| kernel.outputs.iter().map(move |&o| (o, k)))
        .collect();
    let mut copies = Vec::new();
    for (j, &v) in graph.outputs().iter().enumerate() {
        if let Some(&first) = graph.outputs()[..j].iter().position(|&w| w == v).as_ref() {
            copies.push((j, CopySource::Output(first)));
        } else if produced.contains_key(&v) {
            p.storage.insert(v, Storage::Output(j));
        } else {
            match p.value_storage(v) {
                Some(Storage::Input(i)) => copies.push((j, CopySource::Input(i))),
                Some(Storage::Constant(c)) => copies.push((j, CopySource::Constant(c))),
                _ => {
                    return Err(CompileError::Verify(kiln_ir::IrError::Invalid(format!(
                        "graph output {v} is computed by no kernel"
                    ))))
                }
            }
        }
    }

    // A value whose only reader is a reshape into a graph output is written straight into
    // that output (the reshape, an alias, then costs nothing).
    let readers = |v: ValueId| -> usize {
        kernels
            .iter()
            .flat_map(|k| &k.inputs)
            .filter(|i| **i == KernelInput::Value(v))
            .count()
    };
    for kernel in &kernels {
        if let (true, [KernelInput::Value(v)], [o]) = (
            kernel.alias,
            kernel.inputs.as_slice(),
            kernel.outputs.as_slice(),
        ) {
            let into_output = matches!(p.storage.get(o), Some(Storage::Output(_)));
            if into_output
                && produced.contains_key(v)
                && !p.storage.contains_key(v)
                && readers(*v) == 1
            {
                p.storage.insert(*v, p.storage[o]);
            }
        }
    }

    // Storage of every kernel output (aliases share their source's), and lifetimes.
    let mut skipped = vec![false; kernels.len()];
    let mut args: Vec<Vec<Arg>> = Vec::with_capacity(kernels.len());
    for (k, kernel) in kernels.iter().enumerate() {
        let mut call = Vec::new();
        for input in &kernel.inputs {
            let s = match input {
                KernelInput::Value(v) => p
                    .value_storage(*v)
                    .ok_or(CompileError::Verify(kiln_ir::IrError::UndefinedValue(*v)))?,
                KernelInput::Const(c) => Storage::Constant(p.constant(*c)),
                KernelInput::Table(t) => {
                    p.constants.push(tensor_byte_view(t).into_owned());
                    Storage::Constant(p.constants.len() - 1)
                }
            };
            if let Storage::Arena(r) = s {
                p.requests[r].last_use = k;
            }
            call.push(s);
        }
        // A reshape of an arena value or a model input into a non-output value is free: it
        // shares the storage (read-only for an input: only arena values are ever reused in
        // place). One into a graph output whose source was placed in that output is free too.
        let alias_of = match (kernel.alias, call.as_slice(), kernel.outputs.as_slice()) {
            (true, [s @ (Storage::Arena(_) | Storage::Input(_))], [o])
                if !p.storage.contains_key(o) =>
            {
                Some(*s)
            }
            (true, [s @ Storage::Output(j)], [o])
                if p.storage.get(o) == Some(&Storage::Output(*j)) =>
            {
                Some(*s)
            }
            _ => None,
        };
        if let (Some(s), [o]) = (alias_of, kernel.outputs.as_slice()) {
            p.storage.insert(*o, s);
            skipped[k] = true;
        }
        for &o in &kernel.outputs {
            if !p.storage.contains_key(&o) {
                p.requests.push(BufferRequest {
                    size: graph.ty(o).byte_size(),
                    first_use: k,
                    last_use: k,
                    in_place_of: None,
                });
                p.storage.insert(o, Storage::Arena(p.requests.len() - 1));
            }
            call.push(p.storage[&o]);
        }
        args.push(call.into_iter().map(to_arg).collect());
    }

    // An elementwise kernel may write over an input of its own shape and byte size that dies
    // there: each output element is computed from the input elements at the same index, read
    // before the write. (A broadcast input of equal byte size, e.g. f32[2,1] under an f16[2,2]
    // output, is read at other indices and must not be reused.)
    let mut reused = vec![false; p.requests.len()];
    for (k, kernel) in kernels.iter().enumerate() {
        let [out_value] = kernel.outputs.as_slice() else {
            continue;
        };
        let Some(&Storage::Arena(out)) = p.storage.get(out_value) else {
            continue;
        };
        if kernel.class != OpClass::Elementwise || skipped[k] || p.requests[out].first_use != k {
            continue;
        }
        for input in &kernel.inputs {
            let KernelInput::Value(v) = input else {
                continue;
            };
            if let Some(&Storage::Arena(r)) = p.storage.get(v) {
                let q = &p.requests[r];
                let same_shape = graph.ty(*v).shape == graph.ty(*out_value).shape;
                if r < out
                    && !reused[r]
                    && same_shape
                    && q.last_use == k
                    && q.size == p.requests[out].size
                {
                    p.requests[out].in_place_of = Some(r);
                    reused[r] = true;
                    break;
                }
            }
        }
    }
    let memory = plan(&p.requests)?;
    let entry = ModelEntry {
        name: entry_name.into(),
        calls: kernels
            .iter()
            .enumerate()
            .filter(|(k, _)| !skipped[*k])
            .map(|(k, kernel)| KernelCall {
                kernel: kernel_name(k, kernel),
                args: args[k]
                    .iter()
                    .map(|a| match a {
                        Arg::Arena { offset } => Arg::Arena {
                            offset: memory.offsets[*offset],
                        },
                        other => *other,
                    })
                    .collect(),
            })
            .collect(),
    };
    let funcs: Vec<_> = kernels
        .iter()
        .enumerate()
        .filter(|(k, _)| !skipped[*k])
        .map(|(k, kernel)| {
            let mut f = kernel.func.clone();
            f.name = kernel_name(k, kernel);
            f
        })
        .collect();
    let micro = target.microkernels.is_some();
    let infos = kernels
        .iter()
        .enumerate()
        .filter(|(k, _)| !skipped[*k])
        .map(|(k, kernel)| {
            let mut tensorized = false;
            kernel.func.body.walk(&mut |s| {
                tensorized |= matches!(s, kiln_tir::Stmt::Tensorized { .. });
            });
            KernelInfo {
                name: kernel_name(k, kernel),
                class: format!("{:?}", kernel.class),
                flops: kernel.flops,
                output: kernel
                    .outputs
                    .first()
                    .map(|&v| graph.ty(v).to_string())
                    .unwrap_or_default(),
                tensorized: tensorized && micro,
                workload: kernel.workload.clone(),
            }
        })
        .collect();
    let names = |values: &[ValueId]| -> Vec<String> {
        values
            .iter()
            .map(|&v| graph.value(v).name.clone().unwrap_or_default())
            .collect()
    };
    let types = |values: &[ValueId]| -> Vec<TensorType> {
        values.iter().map(|&v| graph.ty(v).clone()).collect()
    };
    Ok(PlannedModel {
        funcs,
        entry,
        constants: p.constants,
        copies,
        input_types: types(graph.inputs()),
        input_names: names(graph.inputs()),
        output_types: types(graph.outputs()),
        output_names: names(graph.outputs()),
        arena_bytes: memory.arena_bytes,
        naive_bytes: memory.naive_bytes,
        tuned_kernels: kernels
            .iter()
            .enumerate()
            .filter(|(k, kernel)| kernel.tuned && !skipped[*k])
            .count(),
        kernels: infos,
        times: StageTimes {
            lower_ms,
            plan_ms: ms_since(plan_start),
            ..StageTimes::default()
        },
    })
}

/// A kernel's symbol: unique per model and a valid identifier.
/// With `KILN_DUMP_TIR=DIR` set, writes each kernel's loop IR as `DIR/NNN.tir` (a developer's
/// view of what the schedules produced; failures to write are ignored).
fn dump_kernels(kernels: &[Kernel]) {
    let Some(dir) = std::env::var_os("KILN_DUMP_TIR").map(std::path::PathBuf::from) else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    for (k, kernel) in kernels.iter().enumerate() {
        let _ = std::fs::write(dir.join(format!("{k:03}.tir")), kernel.func.to_string());
    }
}

fn kernel_name(k: usize, kernel: &Kernel) -> String {
    let clean: String = kernel
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(48)
        .collect();
    format!("k{k}_{clean}")
}

/// The entry argument of a storage; arena requests carry their request index until planned.
fn to_arg(s: Storage) -> Arg {
    match s {
        Storage::Input(i) => Arg::Input(i),
        Storage::Output(j) => Arg::Output(j),
        Storage::Constant(c) => Arg::Constant(c),
        Storage::Arena(r) => Arg::Arena { offset: r },
    }
}

impl CompiledModel {
    /// Runs the model on one tensor per input, in order; returns one tensor per output.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RunError> {
        if inputs.len() != self.input_types.len() {
            return Err(RunError::InputCount {
                expected: self.input_types.len(),
                got: inputs.len(),
            });
        }
        for (index, (t, ty)) in inputs.iter().zip(&self.input_types).enumerate() {
            if t.ty() != ty {
                return Err(RunError::InputType {
                    index,
                    name: self.input_names[index].clone(),
                    expected: ty.to_string(),
                    got: t.ty().to_string(),
                });
            }
        }
        // Inputs are read in place and outputs written into the tensors returned (where the
        // host's layout is the byte layout).
        let input_bytes: Vec<std::borrow::Cow<'_, [u8]>> =
            inputs.iter().map(tensor_byte_view).collect();
        let mut outputs: Vec<TensorData> = self
            .output_types
            .iter()
            .map(|t| TensorData::zeros(t.dtype, t.num_elements()))
            .collect();
        // Outputs without an in-place byte view (bool) go through a byte buffer.
        let mut staged: Vec<Option<Vec<u8>>> = outputs
            .iter_mut()
            .zip(&self.output_types)
            .map(|(d, t)| {
                data_bytes_mut(d)
                    .is_none()
                    .then(|| vec![0u8; t.byte_size()])
            })
            .collect();
        {
            let ins: Vec<&[u8]> = input_bytes.iter().map(|b| b.as_ref()).collect();
            let mut outs: Vec<&mut [u8]> = outputs
                .iter_mut()
                .zip(staged.iter_mut())
                .map(|(d, s)| match s {
                    Some(b) => b.as_mut_slice(),
                    None => data_bytes_mut(d).unwrap_or_default(),
                })
                .collect();
            self.run_bytes(&ins, &mut outs)?;
        }
        Ok(outputs
            .into_iter()
            .zip(staged)
            .zip(&self.output_types)
            .map(|((d, s), ty)| match s {
                Some(bytes) => tensor_from_bytes(ty, &bytes),
                None => Tensor::from_data(ty.clone(), d).ok(),
            })
            .map(|t| t.expect("outputs are sized from their types"))
            .collect())
    }

    /// Runs the model on the dense little-endian bytes of each input (row-major, bool one byte
    /// of 0 or 1), writing each output's bytes into `outputs`: the zero-copy form of
    /// [`CompiledModel::run`] for callers that own their buffers (the Python binding). Every
    /// buffer must be exactly its type's byte size ([`TensorType::byte_size`]).
    pub fn run_bytes(&self, inputs: &[&[u8]], outputs: &mut [&mut [u8]]) -> Result<(), RunError> {
        if inputs.len() != self.input_types.len() {
            return Err(RunError::InputCount {
                expected: self.input_types.len(),
                got: inputs.len(),
            });
        }
        if outputs.len() != self.output_types.len() {
            return Err(RunError::OutputCount {
                expected: self.output_types.len(),
                got: outputs.len(),
            });
        }
        for (index, (bytes, ty)) in inputs.iter().zip(&self.input_types).enumerate() {
            if bytes.len() != ty.byte_size() {
                return Err(RunError::InputType {
                    index,
                    name: self.input_names[index].clone(),
                    expected: format!("{ty} ({} bytes)", ty.byte_size()),
                    got: format!("{} bytes", bytes.len()),
                });
            }
        }
        for (index, (bytes, ty)) in outputs.iter().zip(&self.output_types).enumerate() {
            if bytes.len() != ty.byte_size() {
                return Err(RunError::OutputSize {
                    index,
                    name: self.output_names[index].clone(),
                    expected: ty.byte_size(),
                    got: bytes.len(),
                });
            }
        }
        // The arena is reused between runs.
        let mut arena = self.take_arena();
        let entry = self
            .jit
            .entry(ENTRY)
            .expect("the entry is compiled with the module");
        let consts: Vec<&[u8]> = self.constants.iter().map(Vec::as_slice).collect();
        let result = entry.run(inputs, outputs, &mut arena, &consts);
        self.give_back_arena(arena);
        result?;
        for &(j, copy) in &self.copies {
            match copy {
                CopySource::Input(i) => outputs[j].copy_from_slice(inputs[i]),
                CopySource::Constant(c) => outputs[j].copy_from_slice(&self.constants[c]),
                CopySource::Output(o) => {
                    // The source is the first of the outputs naming the same value: before `j`.
                    let (before, rest) = outputs.split_at_mut(j);
                    rest[0].copy_from_slice(before[o]);
                }
            }
        }
        Ok(())
    }

    /// An arena for one run: a buffer of an earlier run when one is free (no allocation and
    /// no fresh pages), else a new one. Kernels write every arena byte before reading it.
    fn take_arena(&self) -> Vec<u8> {
        let mut free = self.arenas.lock().unwrap_or_else(|p| p.into_inner());
        free.pop()
            .unwrap_or_else(|| vec![0u8; self.stats.arena_bytes])
    }

    fn give_back_arena(&self, arena: Vec<u8>) {
        let mut free = self.arenas.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < 4 {
            free.push(arena);
        }
    }

    /// Numbers about the compilation: kernel count, arena bytes, compile time.
    pub fn stats(&self) -> &CompileStats {
        &self.stats
    }

    /// The kernels a run calls, in order.
    pub fn kernels(&self) -> &[KernelInfo] {
        &self.kernels
    }

    /// Whether the model was compiled for profiling ([`CompiledModel::run_profiled`]).
    pub fn profiled(&self) -> bool {
        self.profiled
    }

    /// The input types, in order.
    pub fn input_types(&self) -> &[TensorType] {
        &self.input_types
    }

    /// The output types, in order.
    pub fn output_types(&self) -> &[TensorType] {
        &self.output_types
    }

    /// The input names (the graph's; empty where it had none), in order.
    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    /// The output names (the graph's; empty where it had none), in order.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }
}
