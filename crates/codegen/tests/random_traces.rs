//! Property test: random legal schedule traces (the generator of kiln-tir's schedule tests) on
//! random shapes of the example DAGs lower, compile under random options and match the
//! interpreter on the same lowered function.

mod common;

use common::dags::traces::*;
use common::*;
use kiln_codegen::{CodegenOptions, Threads};
use kiln_tir::lower;
use proptest::prelude::*;

// ---- codegen property ----

fn options(pick: u8) -> CodegenOptions {
    CodegenOptions {
        threads: [Threads::Single, Threads::Pool(2), Threads::Global][pick as usize % 3],
        vectorize: pick & 4 == 0,
        use_fma: pick & 8 == 0,
        contract_fma: pick & 16 != 0,
        verify_ir: true,
        microkernels: pick & 32 == 0,
        profile: false,
        isa: kiln_codegen::IsaSpec::Host,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_legal_traces_compile_and_match_the_interpreter(
        fam in arb_family(),
        ch in choices(),
        seed in 0u64..1000,
        pick in any::<u8>(),
    ) {
        let dag = fam.dag();
        let trace = random_trace(&dag, &ch);
        let sched = trace.apply(&dag).unwrap();
        if let Ok(f) = lower(&dag, &sched) {
            check_against_interp(&f, &options(pick), seed);
        }
    }
}

/// The property above is not vacuous: over a fixed sample most traces lower, and the compiled
/// kernels include vector loops and outlined parallel bodies.
#[test]
fn random_traces_exercise_vectors_and_parallel_bodies() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (arb_family(), choices(), any::<u8>());
    let (mut lowered, mut vector, mut parallel, mut fallback, mut promoted) = (0, 0, 0, 0, 0);
    for seed in 0..300u64 {
        let (fam, ch, pick) = strategy.new_tree(&mut runner).unwrap().current();
        let dag = fam.dag();
        let sched = random_trace(&dag, &ch).apply(&dag).unwrap();
        let Ok(f) = lower(&dag, &sched) else {
            continue;
        };
        lowered += 1;
        let mut opts = options(pick);
        opts.vectorize = true;
        opts.threads = Threads::Pool(2);
        let stats = check_against_interp(&f, &opts, seed).stats();
        vector += stats.vector_loops;
        fallback += stats.scalar_vectorized_loops;
        parallel += stats.parallel_bodies;
        promoted += stats.promoted_buffers;
    }
    eprintln!(
        "lowered {lowered}/300, vector loops {vector}, scalar vectorized loops {fallback}, \
         parallel bodies {parallel}, promoted buffers {promoted}"
    );
    assert!(lowered >= 150, "{lowered}");
    assert!(
        vector >= 10 && parallel >= 10 && promoted >= 5,
        "{vector} {parallel} {promoted}"
    );
}
