//! Does a kernel timed alone tell its time inside the model? For every kernel of a model (its
//! default schedule): the time per call inside the compiled model (`kiln_tune::validate`,
//! every call timed) beside the time alone with its weights warm (every call reads the same
//! copy) and cold (calls rotate over copies beyond the last-level cache, `kiln_tune::cache`),
//! the alone times the median of three alternations.
//!
//! ```sh
//! cargo run --release -p kiln-tune --example alone_vs_model -- \
//!     MODEL.onnx TARGET THREADS target/release/kiln
//! ```

use kiln_tune::cache::ConstantCache;
use kiln_tune::log::median;
use kiln_tune::measure::{LocalRunner, MeasureOptions, Measured, ModelSpec, Runner};
use kiln_tune::task::extract_tasks;
use kiln_tune::validate::{in_model, ValidateOptions};

/// Alternations of the warm and cold measurements.
const ROUNDS: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, target, threads, kiln] = &args[..] else {
        eprintln!("usage: alone_vs_model MODEL.onnx TARGET THREADS KILN_BINARY");
        std::process::exit(2);
    };
    let threads: usize = threads.parse().expect("THREADS is a number");
    let spec = ModelSpec {
        path: model.into(),
        input_shapes: vec![],
        rewrite: true,
        layout: "auto".into(),
    };
    let imported = spec.load().expect("an importable model");
    let target = kiln::Target::named(target).expect("a known target");
    let set = extract_tasks(&imported.graph, &spec.graph_options(), &target).expect("tasks");
    let options = ValidateOptions {
        threads,
        graph: spec.graph_options(),
        ..ValidateOptions::default()
    };
    let inside = in_model(&imported.graph, &target, &Default::default(), &options)
        .expect("the model compiles and runs");
    let alone = |constants: ConstantCache, workload: &str| {
        let mut runner = LocalRunner {
            command: vec![kiln.into(), "measure-worker".into()],
            model: spec.clone(),
            options: MeasureOptions {
                target: target.name().to_string(),
                threads,
                min_repeat_ms: 5.0,
                constants,
                ..MeasureOptions::default()
            },
        };
        match &runner.measure(workload, 0, &[Default::default()])[0] {
            Measured::Times(t) => median(t).unwrap_or(f64::NAN),
            Measured::Error(e) => panic!("{workload}: {e}"),
        }
    };
    println!(
        "{:>10} {:>10} {:>10}  calls  kernel",
        "in model", "warm", "cold"
    );
    let (mut total_in, mut total_warm, mut total_cold) = (0.0, 0.0, 0.0);
    let (mut err_warm, mut err_cold) = (vec![], vec![]);
    for task in &set.tasks {
        let Some(timed) = inside.workloads.get(&task.key) else {
            continue;
        };
        let per_call = timed.default_ms / timed.calls as f64;
        let (mut warm, mut cold) = (vec![], vec![]);
        for _ in 0..ROUNDS {
            warm.push(alone(ConstantCache::Warm, &task.key));
            cold.push(alone(ConstantCache::Cold, &task.key));
        }
        let (warm, cold) = (median(&warm).unwrap(), median(&cold).unwrap());
        let calls = timed.calls as f64;
        total_in += per_call * calls;
        total_warm += warm * calls;
        total_cold += cold * calls;
        err_warm.push((warm / per_call).ln().abs());
        err_cold.push((cold / per_call).ln().abs());
        println!(
            "{per_call:>10.4} {warm:>10.4} {cold:>10.4}  x{:<4}  {}",
            timed.calls, task.desc
        );
    }
    println!(
        "kernels of one run: in the model {total_in:.3} ms, alone warm {total_warm:.3} ms \
         ({:.3}x), alone cold {total_cold:.3} ms ({:.3}x); median |ln(alone / in model)| per \
         kernel: warm {:.3}, cold {:.3}",
        total_warm / total_in,
        total_cold / total_in,
        median(&err_warm).unwrap_or(0.0),
        median(&err_cold).unwrap_or(0.0),
    );
}
