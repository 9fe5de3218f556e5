//! Checking compiled libraries through C: models with test data, the C runner
//! (`examples/c/run_model.c`, under qemu-user for aarch64) and tolerance checks against their
//! reference outputs. Shared by the test binaries that build libraries (`aot.rs`,
//! `remote_tuning.rs`); each uses part of it.
//!
//! Invariant: a check passes only when every output of the library is within the case's
//! tolerance of the model's reference output (exact for int8 models).

#![allow(dead_code)]

use kiln::Int8Numerics;
use kiln::{AotOptions, Compiler, Target, Tensor};
use kiln_tests::tests_dir;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A model with test data and the tolerance its outputs are compared with.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub model: PathBuf,
    pub data: PathBuf,
    /// Where the expected `output_N.pb` are, when not beside the inputs in `data`.
    pub expected: Option<PathBuf>,
    pub atol: f64,
    pub rtol: f64,
    /// The int8 arithmetic imported; TOSA's is checked against the reference interpreter
    /// (exactly: both are integer RESCALEs), onnxruntime's against onnxruntime's outputs.
    pub numerics: Int8Numerics,
}

pub fn repo() -> PathBuf {
    tests_dir().join("..")
}

pub fn case(dir: &Path, name: &str) -> Case {
    Case {
        name: name.to_string(),
        model: dir.join(format!("{name}.onnx")),
        data: dir.join(format!("{name}_data")),
        expected: None,
        // An int8 model computes what onnxruntime computes, bit for bit.
        atol: if name.contains("int8") { 0.0 } else { 1e-4 },
        rtol: if name.contains("int8") { 0.0 } else { 1e-3 },
        numerics: Int8Numerics::OnnxRuntime,
    }
}

/// The models of `../shared/<folder>` that have test data, sorted.
pub fn shared_cases(folder: &str) -> Vec<Case> {
    let shared = repo().join("../shared").join(folder);
    let Ok(entries) = std::fs::read_dir(&shared) else {
        eprintln!(
            "note: no {} here: only the bundled models",
            shared.display()
        );
        return vec![];
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            let stem = p.file_stem()?.to_str()?.to_string();
            (p.extension()? == "onnx" && shared.join(format!("{stem}_data")).is_dir())
                .then_some(stem)
        })
        .collect();
    names.sort();
    names
        .iter()
        .map(|n| Case {
            name: format!("shared/{n}"),
            expected: kiln_tests::onnxruntime_outputs(n),
            ..case(&shared, n)
        })
        .collect()
}

pub fn bundled_cases() -> Vec<Case> {
    let dir = tests_dir().join("models");
    [
        "resnet8_cifar",
        "dscnn_kws",
        "resnet8_cifar_int8",
        "qdq_mix_int8",
        "decoder_block",
        "detection_tail",
    ]
    .iter()
    .map(|n| case(&dir, n))
    .chain(std::iter::once(Case {
        name: "resnet8_cifar_int8_tosa".into(),
        numerics: Int8Numerics::Tosa,
        ..case(&dir, "resnet8_cifar_int8")
    }))
    .collect()
}

/// The bundled models, plus those of `../shared/models` and `../shared/models-int8` when they
/// exist.
pub fn all_cases() -> Vec<Case> {
    let mut cases = bundled_cases();
    cases.extend(shared_cases("models"));
    cases.extend(shared_cases("models-int8"));
    cases
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-aot-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn have(program: &str) -> bool {
    kiln::aot::find_program(program).is_some()
}

/// Whether the cross tools are here; without them, fails under `KILN_REQUIRE_CROSS=1`.
pub fn cross_tools_or_skip(target: &Target) -> bool {
    let runner = target.runner().first().map(String::as_str).unwrap_or("");
    if have(target.linker()) && (runner.is_empty() || have(runner)) {
        return true;
    }
    let msg = format!(
        "{} needs `{}` and `{runner}` (apt-get install {} {})",
        target.name(),
        target.linker(),
        target.linker_packages(),
        target.runner_packages()
    );
    assert!(
        std::env::var("KILN_REQUIRE_CROSS").as_deref() != Ok("1"),
        "{msg}"
    );
    eprintln!("SKIPPED (set KILN_REQUIRE_CROSS=1 to make this an error): {msg}");
    false
}

pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `examples/c/run_model.c` built by `cc`, strict C99.
pub fn build_runner(cc: &str, out: &Path) {
    run(Command::new(cc)
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-I"])
        .arg(repo().join("crates/runtime/c"))
        .arg(repo().join("examples/c/run_model.c"))
        .arg("-o")
        .arg(out)
        .arg("-ldl"));
}

pub fn load(c: &Case) -> (kiln::Model, Vec<Tensor>, Vec<Tensor>) {
    let options = kiln::ImportOptions {
        int8_numerics: c.numerics,
        ..Default::default()
    };
    let model = kiln::load_onnx(&c.model, &options).unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let read = |prefix: &str, n: usize| -> Vec<Tensor> {
        (0..n)
            .map(|i| {
                let dir = match (prefix, &c.expected) {
                    ("output", Some(e)) => e,
                    _ => &c.data,
                };
                kiln::read_tensor(dir.join(format!("{prefix}_{i}.pb")))
                    .unwrap_or_else(|e| panic!("{}: {e}", c.name))
                    .1
            })
            .collect()
    };
    let inputs = read("input", model.graph.inputs().len());
    let expected = match c.numerics {
        Int8Numerics::Tosa => {
            kiln_reference::run(&model.graph, &inputs).unwrap_or_else(|e| panic!("{}: {e}", c.name))
        }
        Int8Numerics::OnnxRuntime => read("output", model.onnx_output_count()),
    };
    (model, inputs, expected)
}

/// The graph's outputs from their raw bytes, as the model's ONNX outputs (data-dependent rows
/// cut to their counts).
pub fn onnx_outputs(c: &Case, model: &kiln::Model, raw: &[Vec<u8>]) -> Vec<Tensor> {
    let tensors: Vec<Tensor> = model
        .graph
        .outputs()
        .iter()
        .zip(raw)
        .enumerate()
        .map(|(j, (&v, bytes))| {
            kiln::tensor_from_bytes(model.graph.ty(v), bytes)
                .unwrap_or_else(|| panic!("{} output {j}: wrong size", c.name))
        })
        .collect();
    model
        .trim_outputs(tensors)
        .unwrap_or_else(|e| panic!("{}: {e}", c.name))
}

pub fn assert_close(c: &Case, what: &str, got: &Tensor, expected: &Tensor) {
    assert_eq!(got.ty(), expected.ty(), "{}: {what}", c.name);
    let (g, e) = (got.data().to_f64_vec(), expected.data().to_f64_vec());
    let worst = g
        .iter()
        .zip(&e)
        .map(|(a, b)| (a - b).abs() - c.rtol * b.abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= c.atol,
        "{} ({what}): off by {worst} beyond rtol {} (atol {})",
        c.name,
        c.rtol,
        c.atol
    );
    println!("{} ({what}): within tolerance (excess {worst:.2e})", c.name);
}

/// Compiles `c` for `target`, runs it through the C runner (with `prefix`, e.g. qemu) and
/// compares every output.
pub fn check_through_c(c: &Case, target: &Target, runner: &Path, prefix: &[String], dir: &Path) {
    check_through_c_with(c, target, &AotOptions::default(), runner, prefix, dir);
}

/// [`check_through_c`] with the library compiled with `options` (tuned schedules, ...).
pub fn check_through_c_with(
    c: &Case,
    target: &Target,
    options: &AotOptions,
    runner: &Path,
    prefix: &[String],
    dir: &Path,
) {
    let (model, inputs, expected) = load(c);
    let lib = dir.join(format!("lib{}.so", c.name.replace('/', "_")));
    Compiler::new(target.clone())
        .compile_library(&model.graph, options, &lib)
        .unwrap_or_else(|e| panic!("{} for {}: {e}", c.name, target.name()));
    let out = dir.join(format!("{}-out", c.name.replace('/', "_")));
    std::fs::create_dir_all(&out).unwrap();
    let mut args: Vec<PathBuf> = vec![lib.clone(), out.clone()];
    for (i, t) in inputs.iter().enumerate() {
        let p = out.join(format!("input_{i}.bin"));
        std::fs::write(&p, kiln::tensor_bytes(t)).unwrap();
        args.push(p);
    }
    let mut cmd = match prefix.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(runner);
            cmd
        }
        None => Command::new(runner),
    };
    run(cmd.args(&args).env("KILN_NUM_THREADS", "2"));
    let raw: Vec<Vec<u8>> = (0..model.graph.outputs().len())
        .map(|j| std::fs::read(out.join(format!("output_{j}.bin"))).unwrap())
        .collect();
    let got = onnx_outputs(c, &model, &raw);
    assert_eq!(got.len(), expected.len(), "{}", c.name);
    for (j, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_close(c, &format!("{} output {j} via C", target.name()), g, e);
    }
}
