//! Helpers shared by the integration tests of this crate.

use kiln::Target;

/// The host and the built-in x86-64 targets with micro-kernels that run on this machine; a
/// target this machine cannot run is named once in a notice saying that its `what` go
/// unchecked.
pub fn runnable_targets(what: &str) -> Vec<Target> {
    let mut out = vec![Target::host()];
    for name in ["x86_64-linux-gnu-avx2", "x86_64-linux-gnu-avx512"] {
        let t = Target::named(name).unwrap();
        if t.runs_natively() {
            out.push(t);
        } else {
            println!("notice: this machine cannot run {name}; its {what} are not checked here");
        }
    }
    out
}
