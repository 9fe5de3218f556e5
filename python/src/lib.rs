//! `kiln._native`: the extension module behind the `kiln` Python package (`python/kiln`), which
//! wraps it in the documented API. It compiles ONNX models with Kiln's JIT and runs them on
//! numpy buffers, builds AOT libraries, tunes, predicts and lists targets.
//!
//! Invariant: every Kiln failure reaches Python as an exception of `kiln.errors` carrying Kiln's
//! message (never a panic across the boundary: pyo3 turns one into `PanicException`, and none is
//! expected); compiled code runs with the GIL released, on buffers whose sizes
//! [`kiln::CompiledModel::run_bytes`] checks before it touches them.

mod errors;
mod model;
mod tools;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<model::CompiledModel>()?;
    m.add_function(wrap_pyfunction!(model::compile, m)?)?;
    m.add_function(wrap_pyfunction!(tools::compile_library, m)?)?;
    m.add_function(wrap_pyfunction!(tools::tune, m)?)?;
    m.add_function(wrap_pyfunction!(tools::predict, m)?)?;
    m.add_function(wrap_pyfunction!(tools::targets, m)?)?;
    m.add_function(wrap_pyfunction!(tools::measure_worker, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
