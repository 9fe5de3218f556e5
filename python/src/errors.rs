//! Kiln's Rust errors as the Python exceptions of `kiln.errors`.
//!
//! Invariant: the exception class follows from the error's kind alone (an import failure is a
//! `ModelImportError`, an unsupported op an `UnsupportedOpError` carrying `op_type` and `node`,
//! a rejected input an `InputError`, a failing kernel an `ExecutionError`, ...), and its message
//! is Kiln's one-line rendering of the whole source chain.

use kiln_cli::error::{one_line, CliError};
use pyo3::prelude::*;

/// An exception of class `kiln.errors.<class>` with `message` and attributes `attrs`.
pub fn kiln_error(class: &str, message: String, attrs: &[(&str, String)]) -> PyErr {
    Python::attach(|py| {
        let made = (|| -> PyResult<PyErr> {
            let cls = py.import("kiln.errors")?.getattr(class)?;
            let err = cls.call1((message.clone(),))?;
            for (k, v) in attrs {
                err.setattr(*k, v)?;
            }
            Ok(PyErr::from_value(err))
        })();
        made.unwrap_or_else(|e| e)
    })
}

/// An import failure: `UnsupportedOpError` for an op Kiln cannot compile (or one that needs a
/// static operand), else `ModelImportError`.
pub fn import_error(e: &kiln::ImportError, context: &str) -> PyErr {
    let message = format!("{context}{}", one_line(e));
    match e {
        kiln::ImportError::Unsupported { op_type, node, .. }
        | kiln::ImportError::NotStatic { op_type, node, .. } => kiln_error(
            "UnsupportedOpError",
            message,
            &[("op_type", op_type.clone()), ("node", node.clone())],
        ),
        _ => kiln_error("ModelImportError", message, &[]),
    }
}

/// A failure of the JIT compilation.
pub fn compile_error(e: &dyn std::error::Error) -> PyErr {
    kiln_error("CompileError", one_line(e), &[])
}

/// A failure of a run: wrong inputs are `InputError`s, failing code `ExecutionError`.
pub fn run_error(e: &kiln::RunError) -> PyErr {
    use kiln::RunError as R;
    let class = match e {
        R::InputCount { .. }
        | R::InputType { .. }
        | R::OutputCount { .. }
        | R::OutputSize { .. } => "InputError",
        _ => "ExecutionError",
    };
    kiln_error(class, one_line(e), &[])
}

/// A failure of a CLI-level operation (tuning, prediction, schedules of a log).
pub fn cli_error(e: &CliError) -> PyErr {
    match e {
        CliError::Import { source, path } => {
            import_error(source, &format!("cannot import model {}: ", path.display()))
        }
        CliError::Compile(_) => kiln_error("CompileError", one_line(e), &[]),
        CliError::Tune(_) | CliError::Remote(_) => kiln_error("TuneError", one_line(e), &[]),
        _ => kiln_error("KilnError", one_line(e), &[]),
    }
}
