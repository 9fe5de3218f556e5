//! `kiln conformance`: the ONNX backend node suite layout, `DIR/<case>/model.onnx` with
//! `DIR/<case>/test_data_set_*/{input,output}_N.pb`.
//!
//! Invariant: a case is skipped only when the manifest lists it; otherwise it passes only when its
//! model imports and every one of its (at least one) data sets matches under the tolerance. Every
//! other outcome, a panic included, is a failure with its reason. The last line printed is
//! `N passed, N failed, N skipped`.
//!
//! Kiln compiles static graphs, while many suite cases feed shape operands (axes, pads, sizes,
//! scales) as graph inputs. When the importer reports such an operand
//! ([`ImportError::NotStatic`]), the case is imported again with its data set's values bound as
//! constants: first every input but the first (the data), then every input. This is the tract
//! way of running the suite, and the summary says how many passes needed it.

use crate::backend::Backend;
use crate::backend::ExecOptions;
use crate::compare::Tolerance;
use crate::data::{check_outputs, read_named_inputs};
use crate::error::{one_line, CliError};
use crate::manifest::Manifest;
use crate::{panic_guard, Outcome};
use kiln_onnx::{ImportError, ImportOptions, Model};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What `kiln conformance` was asked to do.
#[derive(Debug)]
pub struct ConformanceRequest {
    pub dir: PathBuf,
    pub backend: Backend,
    pub manifest: Manifest,
    pub filter: Option<String>,
    pub verbose: bool,
    pub jobs: usize,
    pub tolerance: Tolerance,
}

/// The case folders of `dir` (those holding a `model.onnx`), sorted by name.
pub fn list_cases(dir: &Path) -> Result<Vec<(String, PathBuf)>, CliError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CliError::io(dir, e))?;
    let mut cases = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| CliError::io(dir, e))?.path();
        if path.join("model.onnx").is_file() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            cases.push((name, path));
        }
    }
    if cases.is_empty() {
        return Err(CliError::BadData {
            path: dir.to_path_buf(),
            reason: "no case folders (`*/model.onnx`)".into(),
        });
    }
    cases.sort();
    Ok(cases)
}

/// How a passing case ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passed {
    /// With every input fed at run time.
    AsIs,
    /// With shape operands bound to the data set's values (see the module doc).
    ShapeInputsFrozen,
}

/// Imports `model.onnx` for one data set, binding inputs to constants only when the importer
/// needs static operands. Returns the model, the inputs it still takes, and whether it froze any.
fn import_for_data_set(
    model_path: &Path,
    inputs: Vec<(String, kiln_ir::Tensor)>,
) -> Result<(Model, Vec<kiln_ir::Tensor>, bool), String> {
    let import_with = |frozen: usize| -> Result<Model, ImportError> {
        let mut options = ImportOptions::default();
        for (name, t) in inputs.iter().skip(inputs.len() - frozen) {
            options.constant_inputs.insert(name.clone(), t.clone());
        }
        kiln_onnx::load_model(model_path, &options)
    };
    let mut attempt = import_with(0);
    let mut frozen = 0;
    for try_frozen in [inputs.len().saturating_sub(1), inputs.len()] {
        if !matches!(attempt, Err(ImportError::NotStatic { .. })) || try_frozen <= frozen {
            continue;
        }
        if inputs.iter().any(|(name, _)| name.is_empty()) {
            break;
        }
        frozen = try_frozen;
        attempt = import_with(frozen);
    }
    let model = attempt.map_err(|source| {
        one_line(&CliError::Import {
            path: model_path.to_path_buf(),
            source,
        })
    })?;
    let frozen_names: HashMap<&str, ()> = inputs
        .iter()
        .skip(inputs.len() - frozen)
        .map(|(n, _)| (n.as_str(), ()))
        .collect();
    let fed = inputs
        .iter()
        .filter(|(n, _)| !frozen_names.contains_key(n.as_str()))
        .map(|(_, t)| t.clone())
        .collect();
    Ok((model, fed, frozen > 0))
}

/// Runs one case: `Err(reason)` when it fails.
pub fn run_case(case: &Path, backend: Backend, tol: Tolerance) -> Result<Passed, String> {
    let model_path = case.join("model.onnx");
    let mut how = Passed::AsIs;
    let mut sets: Vec<PathBuf> = std::fs::read_dir(case)
        .map_err(|e| one_line(&CliError::io(case, e)))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_"))
        })
        .collect();
    if sets.is_empty() {
        return Err("no test_data_set_* folder".into());
    }
    sets.sort();
    for set in sets {
        let set_name = set.file_name().unwrap_or_default().to_string_lossy();
        let inputs =
            read_named_inputs(&set).map_err(|e| format!("{set_name}: {}", one_line(&e)))?;
        let (model, fed, froze) = import_for_data_set(&model_path, inputs)?;
        if froze {
            how = Passed::ShapeInputsFrozen;
        }
        // Cases already run in parallel: compiled code gets one thread each.
        let checks = check_outputs(&model, backend, &ExecOptions::threads(1), &set, &fed, tol)
            .map_err(|e| format!("{set_name}: {}", one_line(&e)))?;
        for (n, check) in checks.iter().enumerate() {
            match &check.comparison {
                None => return Err(format!("{set_name}: no expected output_{n}.pb")),
                Some(c) if !c.passed() => {
                    return Err(format!("{set_name}: output {n} `{}`: {c}", check.name))
                }
                Some(_) => {}
            }
        }
    }
    Ok(how)
}

/// Runs the suite, printing failures (and with `verbose` every case) and the summary line.
pub fn conformance(req: &ConformanceRequest) -> Result<Outcome, CliError> {
    let all = list_cases(&req.dir)?;
    if req.filter.is_none() {
        for name in req.manifest.skips.keys() {
            if !all.iter().any(|(n, _)| n == name) {
                eprintln!("warning: the manifest lists `{name}`, which is not a case here");
            }
        }
    }
    let selected: Vec<_> = all
        .into_iter()
        .filter(|(n, _)| req.filter.as_ref().is_none_or(|f| n.contains(f.as_str())))
        .collect();
    let (skipped, to_run): (Vec<_>, Vec<_>) = selected
        .into_iter()
        .partition(|(n, _)| req.manifest.skips.contains_key(n));

    let results: Mutex<Vec<Option<Result<Passed, String>>>> = Mutex::new(vec![None; to_run.len()]);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..req.jobs.clamp(1, to_run.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((_, path)) = to_run.get(i) else {
                    break;
                };
                let r = panic_guard::catch(|| run_case(path, req.backend, req.tolerance))
                    .unwrap_or_else(Err);
                if let Ok(mut results) = results.lock() {
                    results[i] = Some(r);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());

    let (mut passed, mut failed, mut frozen) = (0, 0, 0);
    if req.verbose {
        for (name, _) in &skipped {
            println!("skip {name} # {}", req.manifest.skips[name]);
        }
    }
    for ((name, _), r) in to_run.iter().zip(results) {
        match r.unwrap_or_else(|| Err("not run (worker failed)".into())) {
            Ok(how) => {
                passed += 1;
                if how == Passed::ShapeInputsFrozen {
                    frozen += 1;
                }
                if req.verbose {
                    println!("ok   {name}");
                }
            }
            Err(reason) => {
                failed += 1;
                println!("FAIL {name}: {reason}");
            }
        }
    }
    if frozen > 0 {
        println!("{frozen} of the passing cases had shape inputs bound to their data as constants");
    }
    println!(
        "{passed} passed, {failed} failed, {} skipped",
        skipped.len()
    );
    Ok(if failed == 0 {
        Outcome::Pass
    } else {
        Outcome::Mismatch
    })
}
