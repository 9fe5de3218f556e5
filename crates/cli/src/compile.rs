//! `kiln compile` (a model into a native shared library) and `kiln targets`.
//!
//! Invariant: `compile` either writes the library (and the header when asked) and prints one
//! summary line, or fails with a [`CliError`] that names the missing linker's package, the
//! unknown target or the import error; it never leaves a half-written library at `-o` that a
//! later step could mistake for a good one (the linker writes it last).

use crate::error::CliError;
use crate::shapes::ImportArgs;
use kiln::{AotOptions, Compiler, Target};
use std::path::PathBuf;

/// What `kiln compile` was asked to do.
#[derive(Debug)]
pub struct CompileRequest {
    pub model: PathBuf,
    pub out: PathBuf,
    pub target: String,
    pub header: Option<PathBuf>,
    pub single_thread: bool,
    /// The exported functions' prefix (`None`: `kiln`).
    pub prefix: Option<String>,
    pub import: ImportArgs,
    pub graph: kiln::GraphOptions,
    /// The tuned schedules (`--tuning-log`, else the shipped pre-tuned records).
    pub schedules: kiln::TunedSchedules,
}

/// Compiles the model into a shared library and prints what was built.
pub fn compile(req: &CompileRequest) -> Result<(), CliError> {
    let target = Target::named(&req.target).map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(p) = &req.prefix {
        kiln::aot::validate_prefix(p).map_err(|e| CliError::Usage(format!("--prefix: {e}")))?;
    }
    let model = crate::load(&req.model, &req.import)?;
    for note in &model.notes {
        println!("note: {note}");
    }
    let schedules = req.schedules.clone();
    let options = AotOptions {
        parallel: !req.single_thread,
        header: req.header.clone(),
        graph: req.graph.clone(),
        schedules,
        prefix: req.prefix.clone(),
    };
    let info = Compiler::new(target.clone())
        .compile_library(&model.graph, &options, &req.out)
        .map_err(|e| CliError::Compile(Box::new(e)))?;
    println!(
        "{}: {} bytes for {} ({} kernels, {} bytes of weights, arena {} bytes; codegen {:.0} ms, link {:.0} ms)",
        info.path.display(),
        info.library_bytes,
        target.name(),
        info.kernels,
        info.constant_bytes,
        info.arena_bytes,
        info.codegen_ms,
        info.link_ms
    );
    if !info.cpu_features.is_empty() {
        println!(
            "requires CPU features: {} (checked by {})",
            info.cpu_features.join(" "),
            kiln::aot::exported_name(
                "kiln_model_create",
                req.prefix.as_deref().unwrap_or(kiln::aot::DEFAULT_PREFIX)
            )
        );
    }
    if let Some(h) = &req.header {
        println!("{}: C header", h.display());
    }
    Ok(())
}

/// Prints every built-in target: name, triple, linker and description.
pub fn targets() {
    for t in Target::builtin() {
        println!(
            "{:<26} {:<26} linker {:<22} {}",
            t.name(),
            t.triple().unwrap_or("(native)"),
            t.linker(),
            t.description()
        );
    }
}
