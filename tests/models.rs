//! The bundled models through the library pipeline (import, verify, reference run, compare),
//! without the CLI binary.
//!
//! Invariant: each bundled model imports to a verified graph, and the reference interpreter
//! reproduces its expected outputs within the default tolerance, deterministically.

use kiln_cli::backend::{Backend, ExecOptions};
use kiln_cli::compare::Tolerance;
use kiln_cli::data::{check_data_set, read_inputs};
use kiln_onnx::{import_bytes, load_model, ImportOptions};
use kiln_tests::bundled_models;

#[test]
fn bundled_models_import_to_verified_graphs() {
    for m in bundled_models() {
        let model = load_model(&m.model, &ImportOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", m.name));
        model
            .graph
            .verify()
            .unwrap_or_else(|e| panic!("{}: {e}", m.name));
        assert!(!model.graph.inputs().is_empty(), "{}", m.name);
        assert!(!model.graph.outputs().is_empty(), "{}", m.name);
        assert!(model.graph.parameter_count() > 1000, "{}", m.name);
    }
}

#[test]
fn import_from_bytes_equals_import_from_file() {
    for m in bundled_models() {
        let bytes = std::fs::read(&m.model).unwrap();
        let a = load_model(&m.model, &ImportOptions::default()).unwrap();
        let b = import_bytes(&bytes, None, &ImportOptions::default()).unwrap();
        assert_eq!(a.graph, b.graph, "{}", m.name);
    }
}

#[test]
fn reference_reproduces_expected_outputs() {
    for m in bundled_models() {
        let model = load_model(&m.model, &ImportOptions::default()).unwrap();
        let checks = check_data_set(
            &model,
            Backend::Reference,
            &ExecOptions::threads(1),
            &m.data,
            Tolerance::RUN,
        )
        .unwrap_or_else(|e| panic!("{}: {}", m.name, kiln_cli::error::one_line(&e)));
        assert!(!checks.is_empty());
        for c in &checks {
            let cmp = c.comparison.as_ref().expect("expected output present");
            assert!(cmp.passed(), "{} output `{}`: {cmp}", m.name, c.name);
        }
    }
}

#[test]
fn reference_is_deterministic() {
    for m in bundled_models() {
        let model = load_model(&m.model, &ImportOptions::default()).unwrap();
        let inputs = read_inputs(&m.data).unwrap();
        let a = kiln_reference::run(&model.graph, &inputs).unwrap();
        let b = kiln_reference::run(&model.graph, &inputs).unwrap();
        assert_eq!(a, b, "{}", m.name);
    }
}
