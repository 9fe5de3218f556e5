//! Ahead-of-time compilation into a self-contained native shared library with a C ABI.
//!
//! The model is planned exactly as for the JIT ([`crate::compile::plan_model`]); Cranelift
//! compiles its kernels, entry and weights into one object for the target
//! ([`kiln_codegen::compile_object`]); Kiln then writes a small C file (the model's input and
//! output tables, followed by the runtime `crates/runtime/c/kiln_model_rt.c`) and links both with
//! the target's C compiler into `lib*.so`. The C ABI is `crates/runtime/c/kiln_model.h`.
//!
//! Invariant: the library runs exactly the machine code the JIT runs for the same graph (the
//! same lowering, memory plan and entry function); it needs nothing at run time but libc, libm
//! and pthread; and it exports only the symbols of [`EXPORTED_SYMBOLS`] (a linker version script
//! hides everything else).

use crate::compile::{plan_model, CompileError, CopySource, PlannedModel};
use crate::target::Target;
use kiln_codegen::{CodegenOptions, Threads};
use kiln_ir::{DType, Graph};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The C header of every compiled library (model-specific macros are appended).
pub const HEADER: &str = include_str!("../../runtime/c/kiln_model.h");
/// The runtime compiled into every library.
const RUNTIME_C: &str = include_str!("../../runtime/c/kiln_model_rt.c");

/// The symbols a compiled library exports: the functions of [`HEADER`].
pub const EXPORTED_SYMBOLS: &[&str] = &[
    "kiln_abi_version",
    "kiln_model_num_inputs",
    "kiln_model_num_outputs",
    "kiln_model_input_info",
    "kiln_model_output_info",
    "kiln_model_arena_bytes",
    "kiln_model_cpu_features",
    "kiln_model_missing_cpu_feature",
    "kiln_model_create",
    "kiln_model_run",
    "kiln_model_destroy",
    "kiln_status_string",
];

const ENTRY: &str = "kiln__entry";
const CONSTANTS: &str = "kiln__constants";

/// Why a library could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AotError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the linker `{linker}` for target `{target}` is not installed (on Debian/Ubuntu: \
         apt-get install {packages})"
    )]
    LinkerMissing {
        linker: String,
        target: String,
        packages: String,
    },
    #[error("invalid symbol prefix `{0}`: {1}")]
    BadPrefix(String, &'static str),
    #[error("linking failed: `{command}` exited with {status}:\n{stderr}")]
    LinkFailed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Options of an AOT compilation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AotOptions {
    /// Emit parallel loops that run on the library's thread pool (`false`: a single-threaded
    /// library whose code never calls the pool).
    pub parallel: bool,
    /// Where to write the C header (`None`: no header).
    pub header: Option<PathBuf>,
    /// What happens to the graph before lowering.
    pub graph: crate::GraphOptions,
    /// Tuned schedules (from a tuning log) replacing the default schedule of their workloads.
    pub schedules: crate::TunedSchedules,
    /// What the exported functions are named after (`None`: `kiln`, as in `kiln_model_run`):
    /// with `Some("resnet")` the library exports `resnet_model_run`, `resnet_abi_version`, ...
    /// and its header declares those, so libraries of several models link into one program.
    /// A C identifier ([`validate_prefix`]).
    pub prefix: Option<String>,
}

impl Default for AotOptions {
    fn default() -> Self {
        AotOptions {
            parallel: true,
            header: None,
            graph: crate::GraphOptions::default(),
            schedules: crate::TunedSchedules::default(),
            prefix: None,
        }
    }
}

/// What was built.
#[derive(Clone, Debug, PartialEq)]
pub struct LibraryInfo {
    /// The shared library.
    pub path: PathBuf,
    /// Its size in bytes.
    pub library_bytes: u64,
    /// Bytes of embedded weights.
    pub constant_bytes: usize,
    /// Kernels the entry calls.
    pub kernels: usize,
    /// The arena each context allocates.
    pub arena_bytes: usize,
    /// Wall time of lowering and code generation, in milliseconds.
    pub codegen_ms: f64,
    /// Wall time of the C compiler and linker, in milliseconds.
    pub link_ms: f64,
    /// The compilation's wall time by stage.
    pub stages: crate::StageTimes,
    /// The CPU features the library checks for when a context is created.
    pub cpu_features: Vec<String>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AotError + '_ {
    move |source| AotError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The target's C compiler, which links libraries.
fn linker_of(target: &Target) -> Result<PathBuf, AotError> {
    find_program(target.linker()).ok_or_else(|| AotError::LinkerMissing {
        linker: target.linker().into(),
        target: target.name().into(),
        packages: target.linker_packages().into(),
    })
}

/// Compiles `graph` for `target` into the shared library `out`.
pub fn compile_library(
    graph: &Graph,
    target: &Target,
    options: &AotOptions,
    out: &Path,
) -> Result<LibraryInfo, AotError> {
    let prefix = options.prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
    validate_prefix(prefix)?;
    let linker = linker_of(target)?;
    let start = Instant::now();
    let prepared =
        crate::graph_opt::prepare(graph, &options.graph, target).map_err(CompileError::from)?;
    let rewrite_ms = crate::compile::ms_since(start);
    let planned = plan_model(
        &prepared.graph,
        prepared.groups.as_deref(),
        &options.schedules,
        &target.sketch_target(),
        ENTRY,
    )?;
    let stages = crate::StageTimes {
        rewrite_ms,
        ..planned.times
    };
    let library = Library {
        parallel: options.parallel,
        header: options.header.as_deref(),
        prefix,
    };
    link_library(&planned, target, &library, stages, &linker, out)
}

/// The prefix of the exported functions when [`AotOptions::prefix`] is `None`.
pub const DEFAULT_PREFIX: &str = "kiln";

/// Checks that `prefix` can name C functions: an ASCII letter or `_` then letters, digits or
/// `_`, at most 64 bytes, and not `kiln_`-something (the runtime's own names).
pub fn validate_prefix(prefix: &str) -> Result<(), AotError> {
    let bad = |why| Err(AotError::BadPrefix(prefix.to_string(), why));
    let mut bytes = prefix.bytes();
    match bytes.next() {
        None => return bad("it is empty"),
        Some(b) if !(b.is_ascii_alphabetic() || b == b'_') => {
            return bad("a C identifier starts with a letter or `_`")
        }
        _ => {}
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return bad("a C identifier has only ASCII letters, digits and `_`");
    }
    if prefix.len() > 64 {
        return bad("it is longer than 64 bytes");
    }
    if prefix != DEFAULT_PREFIX && prefix.starts_with("kiln_") {
        return bad("names starting with `kiln_` belong to the library's runtime");
    }
    Ok(())
}

/// The name exported symbol `sym` (one of [`EXPORTED_SYMBOLS`]) has with `prefix`.
pub fn exported_name(sym: &str, prefix: &str) -> String {
    let rest = sym.strip_prefix(DEFAULT_PREFIX).unwrap_or(sym);
    format!("{prefix}{rest}")
}

/// A param of the one kernel of a kernel library ([`compile_kernel_library`]).
#[derive(Clone, Debug, PartialEq)]
pub enum KernelParam {
    /// Read from a library input of the param's type, named so.
    Input(String),
    /// Embedded in the library (a weight, a table).
    Constant(Vec<u8>),
    /// Written to a library output of the param's type, named so.
    Output(String),
}

/// Compiles one kernel into a shared library with the model C ABI, its `Input` params the
/// library's inputs and its `Output` params its outputs, in order: what a remote tuner uploads
/// to time one candidate schedule on a device.
pub fn compile_kernel_library(
    func: &kiln_tir::PrimFunc,
    params: &[KernelParam],
    target: &Target,
    parallel: bool,
    out: &Path,
) -> Result<LibraryInfo, AotError> {
    let linker = linker_of(target)?;
    let invalid =
        |why: String| AotError::Compile(CompileError::Verify(kiln_ir::IrError::Invalid(why)));
    if params.len() != func.params.len() {
        return Err(invalid(format!(
            "kernel {} has {} params, {} described",
            func.name,
            func.params.len(),
            params.len()
        )));
    }
    let mut planned = PlannedModel {
        funcs: vec![func.clone()],
        entry: kiln_codegen::ModelEntry {
            name: ENTRY.into(),
            calls: vec![],
        },
        constants: vec![],
        copies: vec![],
        input_types: vec![],
        input_names: vec![],
        output_types: vec![],
        output_names: vec![],
        arena_bytes: 0,
        naive_bytes: 0,
        tuned_kernels: 0,
        kernels: vec![],
        times: crate::StageTimes::default(),
    };
    let mut args = Vec::with_capacity(params.len());
    for (param, &buffer) in params.iter().zip(&func.params) {
        let decl = &func.buffers[buffer.index()];
        let ty = kiln_ir::TensorType::new(decl.dtype, decl.shape.clone())
            .map_err(|e| invalid(e.to_string()))?;
        args.push(match param {
            KernelParam::Input(name) => {
                planned.input_types.push(ty);
                planned.input_names.push(name.clone());
                kiln_codegen::Arg::Input(planned.input_types.len() - 1)
            }
            KernelParam::Output(name) => {
                planned.output_types.push(ty);
                planned.output_names.push(name.clone());
                kiln_codegen::Arg::Output(planned.output_types.len() - 1)
            }
            KernelParam::Constant(bytes) => {
                if bytes.len() != ty.byte_size() {
                    return Err(invalid(format!(
                        "a constant of {} bytes for a param of type {ty}",
                        bytes.len()
                    )));
                }
                planned.constants.push(bytes.clone());
                kiln_codegen::Arg::Constant(planned.constants.len() - 1)
            }
        });
    }
    planned.entry.calls.push(kiln_codegen::KernelCall {
        kernel: func.name.clone(),
        args,
    });
    let stages = crate::StageTimes::default();
    let library = Library {
        parallel,
        header: None,
        prefix: DEFAULT_PREFIX,
    };
    link_library(&planned, target, &library, stages, &linker, out)
}

/// What kind of library [`link_library`] builds.
struct Library<'a> {
    /// Parallel loops on the library's pool (else single-threaded code).
    parallel: bool,
    /// Where to write the C header, if anywhere.
    header: Option<&'a Path>,
    /// The exported functions' prefix.
    prefix: &'a str,
}

/// Generates the code of a planned model and links it with its tables and the runtime.
fn link_library(
    planned: &PlannedModel,
    target: &Target,
    library: &Library<'_>,
    mut stages: crate::StageTimes,
    linker: &Path,
    out: &Path,
) -> Result<LibraryInfo, AotError> {
    let Library {
        parallel,
        header: header_out,
        prefix,
    } = *library;
    let start = Instant::now();
    let codegen = CodegenOptions {
        threads: if parallel {
            Threads::Global
        } else {
            Threads::Single
        },
        isa: target.isa_spec(),
        ..CodegenOptions::default()
    };
    let constants: Vec<&[u8]> = planned.constants.iter().map(Vec::as_slice).collect();
    let object = kiln_codegen::compile_object(
        "kiln_model",
        &planned.funcs,
        std::slice::from_ref(&planned.entry),
        &constants,
        CONSTANTS,
        &codegen,
    )
    .map_err(CompileError::from)?;
    stages.codegen_ms = crate::compile::ms_since(start);
    let codegen_ms = stages.rewrite_ms + stages.lower_ms + stages.plan_ms + stages.codegen_ms;

    let start = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("kiln-aot-")
        .tempdir()
        .map_err(io_err(&std::env::temp_dir()))?;
    let header = model_header(planned);
    let features =
        kiln_codegen::isa::required_cpu_features(&target.isa_spec()).map_err(CompileError::from)?;
    let tables = model_tables(planned, parallel, &features, prefix);
    let exports = version_script(prefix);
    let files: [(&str, &[u8]); 5] = [
        ("kiln_model.o", &object.bytes),
        ("kiln_model.h", header.as_bytes()),
        ("kiln_model_rt.c", RUNTIME_C.as_bytes()),
        ("kiln_model.c", tables.as_bytes()),
        ("exports.map", exports.as_bytes()),
    ];
    for (name, bytes) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).map_err(io_err(&path))?;
    }
    // Link beside `out` and rename: `out` is either the old file or the complete new library.
    let out = absolute(out);
    let partial = out.with_extension("so.partial");
    let mut cmd = Command::new(linker);
    cmd.current_dir(dir.path())
        .args(["-shared", "-fPIC", "-O2", "-std=gnu99", "-o"])
        .arg(&partial)
        .args([
            "kiln_model.c",
            "kiln_model.o",
            "-Wl,--version-script=exports.map",
            "-Wl,--no-undefined",
            "-Wl,-z,noexecstack",
            "-lm",
            "-lpthread",
        ]);
    let output = cmd.output().map_err(io_err(linker))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(AotError::LinkFailed {
            command: format!("{cmd:?}"),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    std::fs::rename(&partial, &out).map_err(io_err(&out))?;
    if let Some(h) = header_out {
        std::fs::write(h, prefixed_header(&header, prefix)).map_err(io_err(h))?;
    }
    let library_bytes = std::fs::metadata(&out).map_err(io_err(&out))?.len();
    stages.link_ms = crate::compile::ms_since(start);
    Ok(LibraryInfo {
        path: out,
        library_bytes,
        constant_bytes: constants.iter().map(|c| c.len()).sum(),
        kernels: planned.funcs.len(),
        arena_bytes: planned.arena_bytes,
        codegen_ms,
        link_ms: stages.link_ms,
        stages,
        cpu_features: features.iter().map(|f| f.to_string()).collect(),
    })
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// The program `name` as the OS would find it: a path, or the first match on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn version_script(prefix: &str) -> String {
    let mut s = String::from("{\n  global:\n");
    for sym in EXPORTED_SYMBOLS {
        let _ = writeln!(s, "    {};", exported_name(sym, prefix));
    }
    s.push_str("  local:\n    *;\n};\n");
    s
}

/// The C value of a dtype (`KILN_DTYPE_*`).
fn dtype_code(d: DType) -> i32 {
    match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::I8 => 2,
        DType::U8 => 3,
        DType::I16 => 4,
        DType::I32 => 5,
        DType::I64 => 6,
        DType::Bool => 7,
        DType::F64 => 8,
        DType::BF16 => 9,
        DType::U16 => 10,
        DType::U32 => 11,
        DType::U64 => 12,
    }
}

/// `s` as a C string literal.
fn c_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e if b != b'?' => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03o}");
            }
        }
    }
    out.push('"');
    out
}

/// The header: [`HEADER`] with the model's inputs and outputs described before its end.
fn model_header(m: &PlannedModel) -> String {
    let mut block = String::from("/* This model:\n");
    let describe =
        |block: &mut String, what: &str, names: &[String], types: &[kiln_ir::TensorType]| {
            for (i, (n, t)) in names.iter().zip(types).enumerate() {
                let name = n.replace("*/", "* /");
                let _ = writeln!(block, " *   {what} {i}: `{name}` {t}");
            }
        };
    describe(&mut block, "input", &m.input_names, &m.input_types);
    describe(&mut block, "output", &m.output_names, &m.output_types);
    let _ = writeln!(
        block,
        " */\n#define KILN_MODEL_NUM_INPUTS {}\n#define KILN_MODEL_NUM_OUTPUTS {}\n",
        m.input_types.len(),
        m.output_types.len()
    );
    let end = "#endif /* KILN_MODEL_H */";
    HEADER.replace(end, &format!("{block}{end}"))
}

/// `header` (a [`model_header`]) declaring the functions named with `prefix`: the exported
/// names, the include guard and the model's size macros (`PREFIX_MODEL_NUM_INPUTS`) renamed;
/// the ABI's shared definitions keep their names (guarded by `KILN_ABI_DEFINITIONS`), so
/// headers of several libraries compile in one translation unit.
fn prefixed_header(header: &str, prefix: &str) -> String {
    if prefix == DEFAULT_PREFIX {
        return header.to_string();
    }
    let mut h = header.to_string();
    // Longest names first, so no name is replaced inside a longer one.
    let mut syms: Vec<&str> = EXPORTED_SYMBOLS.to_vec();
    syms.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for sym in syms {
        h = h.replace(sym, &exported_name(sym, prefix));
    }
    let upper = prefix.to_ascii_uppercase();
    for name in [
        "KILN_MODEL_H",
        "KILN_MODEL_NUM_INPUTS",
        "KILN_MODEL_NUM_OUTPUTS",
    ] {
        let rest = name.strip_prefix("KILN").unwrap_or(name);
        h = h.replace(name, &format!("{upper}{rest}"));
    }
    h
}

/// C code defining `KILN__CPU_FEATURES` (the features, space-separated) and
/// `kiln__missing_cpu_feature()`: the first of `features` the CPU running it lacks, or null.
/// x86 features are GCC `__builtin_cpu_supports` names; aarch64's (`dotprod`) are read from
/// Linux's `AT_HWCAP`. Without features it always returns null.
pub fn cpu_check_c(features: &[&str]) -> String {
    let mut c = format!(
        "#define KILN__CPU_FEATURES {}
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

static const char *kiln__missing_cpu_feature(void) {{
",
        c_string(&features.join(" "))
    );
    let (x86, arm): (Vec<&str>, Vec<&str>) = features
        .iter()
        .partition(|f| !AARCH64_HWCAPS.iter().any(|(n, _)| n == *f));
    if !x86.is_empty() {
        c.push_str(
            "#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
",
        );
        for f in x86 {
            let name = c_string(f);
            let _ = writeln!(
                c,
                "    if (!__builtin_cpu_supports({name})) {{
        return {name};
    }}"
            );
        }
        c.push_str("#endif\n");
    }
    if !arm.is_empty() {
        c.push_str("#if defined(__aarch64__) && defined(__linux__)\n");
        for f in arm {
            let bit = AARCH64_HWCAPS
                .iter()
                .find(|(n, _)| *n == f)
                .map_or(0, |(_, b)| *b);
            let name = c_string(f);
            let _ = writeln!(
                c,
                "    if (!(getauxval(AT_HWCAP) & (1UL << {bit}))) {{
        return {name};
    }}"
            );
        }
        c.push_str("#endif\n");
    }
    c.push_str(
        "    return 0;
}

",
    );
    c
}

/// aarch64 features by their bit in Linux's `AT_HWCAP` (`asm/hwcap.h`).
const AARCH64_HWCAPS: [(&str, u32); 1] = [("dotprod", 20)];

/// The generated C file: the tables the runtime reads, then the runtime itself.
fn model_tables(m: &PlannedModel, parallel: bool, features: &[&str], prefix: &str) -> String {
    let mut c = String::from(
        "/* Generated by Kiln: the model's tables, then the runtime (kiln_model_rt.c). */\n",
    );
    if prefix != DEFAULT_PREFIX {
        // The runtime defines the ABI's functions under the prefixed names.
        for sym in EXPORTED_SYMBOLS {
            let _ = writeln!(c, "#define {sym} {}", exported_name(sym, prefix));
        }
    }
    c.push_str("#include \"kiln_model.h\"\n\n");
    let _ = writeln!(c, "#define KILN__ENTRY {ENTRY}");
    let _ = writeln!(c, "#define KILN__CONSTANTS {CONSTANTS}");
    let _ = writeln!(c, "#define KILN__NUM_INPUTS {}", m.input_types.len());
    let _ = writeln!(c, "#define KILN__NUM_OUTPUTS {}", m.output_types.len());
    let _ = writeln!(c, "#define KILN__NUM_COPIES {}", m.copies.len());
    let _ = writeln!(c, "#define KILN__ARENA_BYTES ((size_t){}u)", m.arena_bytes);
    let _ = writeln!(c, "#define KILN__PARALLEL {}\n", u8::from(parallel));
    c.push_str(&cpu_check_c(features));
    let _ = writeln!(
        c,
        "typedef struct kiln__copy {{\n    int32_t output, kind, source; /* kind: 0 input, 1 constant, 2 output */\n}} kiln__copy;\n"
    );
    let table = |c: &mut String, what: &str, names: &[String], types: &[kiln_ir::TensorType]| {
        for (i, t) in types.iter().enumerate() {
            let dims: Vec<String> = t.shape.iter().map(|d| format!("{d}")).collect();
            let dims = if dims.is_empty() {
                "0".to_string()
            } else {
                dims.join(", ")
            };
            let _ = writeln!(
                c,
                "static const int64_t kiln__{what}_shape_{i}[] = {{{dims}}};"
            );
        }
        let _ = writeln!(c, "static const kiln_tensor_info kiln__{what}s[] = {{");
        for (i, (n, t)) in names.iter().zip(types).enumerate() {
            let _ = writeln!(
                c,
                "    {{{}, {}, {}, kiln__{what}_shape_{i}, (size_t){}u}},",
                c_string(n),
                dtype_code(t.dtype),
                t.shape.len(),
                t.byte_size()
            );
        }
        if types.is_empty() {
            c.push_str("    {0, 0, 0, 0, 0},\n");
        }
        c.push_str("};\n\n");
    };
    table(&mut c, "input", &m.input_names, &m.input_types);
    table(&mut c, "output", &m.output_names, &m.output_types);
    c.push_str("static const kiln__copy kiln__copies[] = {\n");
    for &(output, source) in &m.copies {
        let (kind, index) = match source {
            CopySource::Input(i) => (0, i),
            CopySource::Constant(k) => (1, k),
            CopySource::Output(o) => (2, o),
        };
        let _ = writeln!(c, "    {{{output}, {kind}, {index}}},");
    }
    if m.copies.is_empty() {
        c.push_str("    {0, 0, 0},\n");
    }
    c.push_str("};\n\n#include \"kiln_model_rt.c\"\n");
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_strings_escape_everything_unusual() {
        assert_eq!(c_string("in:0"), "\"in:0\"");
        assert_eq!(c_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(c_string("x\ny??=é"), "\"x\\012y\\077\\077=\\303\\251\"");
    }

    #[test]
    fn the_version_script_exports_exactly_the_abi() {
        let v = version_script(DEFAULT_PREFIX);
        for s in EXPORTED_SYMBOLS {
            assert!(v.contains(&format!("{s};")));
            assert!(
                HEADER.contains(&format!("{s}(")),
                "{s} is not in the header"
            );
        }
        assert!(v.contains("local:\n    *;"));
    }

    #[test]
    fn a_prefix_renames_the_exports_and_the_header_only() {
        let v = version_script("resnet");
        assert!(v.contains("resnet_model_run;") && v.contains("resnet_abi_version;"));
        assert!(!v.contains("kiln_"));
        let h = prefixed_header(HEADER, "resnet");
        for s in EXPORTED_SYMBOLS {
            assert!(!h.contains(&format!("{s}(")), "{s} left in the header");
            assert!(h.contains(&format!("{}(", exported_name(s, "resnet"))));
        }
        assert!(h.contains("#ifndef RESNET_MODEL_H"));
        // The shared definitions keep their names.
        assert!(h.contains("kiln_tensor_info") && h.contains("KILN_OK"));
        assert_eq!(prefixed_header(HEADER, DEFAULT_PREFIX), HEADER);
    }

    #[test]
    fn prefixes_must_be_c_identifiers() {
        for good in ["resnet", "_m2", "Model_8", "kiln"] {
            assert!(validate_prefix(good).is_ok(), "{good}");
        }
        for bad in ["", "8net", "res-net", "kiln_x", "né", &"a".repeat(65)] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }
}
