//! `kiln conformance`: the ONNX backend node suite layout, `DIR/<case>/model.onnx` with
//! `DIR/<case>/test_data_set_*/{input,output}_N.pb`.
//!
//! Invariant: a case is skipped only when the manifest lists it; otherwise it passes only when its
//! model imports and every one of its (at least one) data sets matches under the tolerance. Every
//! other outcome, a panic included, is a failure with its reason. The last line printed is
//! `N passed, N failed, N skipped`.

use crate::backend::Backend;
use crate::compare::Tolerance;
use crate::data::check_data_set;
use crate::error::{one_line, CliError};
use crate::manifest::Manifest;
use crate::{panic_guard, Outcome};
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

/// Runs one case: `Err(reason)` when it fails.
pub fn run_case(case: &Path, backend: Backend, tol: Tolerance) -> Result<(), String> {
    let model = crate::load(&case.join("model.onnx"), &[]).map_err(|e| one_line(&e))?;
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
        let checks = check_data_set(&model.graph, backend, &set, tol)
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
    Ok(())
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

    let results: Mutex<Vec<Option<Result<(), String>>>> = Mutex::new(vec![None; to_run.len()]);
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

    let (mut passed, mut failed) = (0, 0);
    if req.verbose {
        for (name, _) in &skipped {
            println!("skip {name} # {}", req.manifest.skips[name]);
        }
    }
    for ((name, _), r) in to_run.iter().zip(results) {
        match r.unwrap_or_else(|| Err("not run (worker failed)".into())) {
            Ok(()) => {
                passed += 1;
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
