//! Targets: which machine code is generated for, described as data.
//!
//! Invariant: every named target is one TOML file of `targets/` (embedded in the compiler at
//! build time, so an installed `kiln` needs no data folder) or a file the user names; a target
//! that does not parse, or whose triple or ISA flags Cranelift does not know, is an error naming
//! the file and the field, never a silently different target. `host` is the machine the compiler
//! runs on, with every feature it detects.

use kiln_codegen::IsaSpec;
use kiln_operators::schedule::{MicroShape, SketchTarget};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The target descriptions shipped with Kiln (`targets/*.toml`).
const BUILTIN: &[(&str, &str)] = &[
    (
        "x86_64-linux-gnu",
        include_str!("../../../targets/x86_64-linux-gnu.toml"),
    ),
    (
        "x86_64-linux-gnu-avx2",
        include_str!("../../../targets/x86_64-linux-gnu-avx2.toml"),
    ),
    (
        "x86_64-linux-gnu-avx512",
        include_str!("../../../targets/x86_64-linux-gnu-avx512.toml"),
    ),
    (
        "aarch64-linux-gnu",
        include_str!("../../../targets/aarch64-linux-gnu.toml"),
    ),
    (
        "aarch64-linux-gnu-dotprod",
        include_str!("../../../targets/aarch64-linux-gnu-dotprod.toml"),
    ),
];

/// Why a target could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("unknown target `{name}` (known: host, {known}; or the path of a .toml file)")]
    Unknown { name: String, known: String },
    #[error("target file {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// A target description as written in `targets/*.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    name: String,
    description: String,
    triple: String,
    linker: String,
    linker_packages: String,
    #[serde(default)]
    runner: Vec<String>,
    #[serde(default)]
    runner_packages: String,
    vector_bits: u32,
    #[serde(default)]
    isa_flags: BTreeMap<String, FlagValue>,
}

/// A Cranelift ISA flag's value: a boolean, or an enumerated setting's name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum FlagValue {
    Bool(bool),
    Text(String),
}

/// The machine code is generated for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    name: String,
    description: String,
    /// `None` for the host.
    triple: Option<String>,
    isa_flags: Vec<(String, String)>,
    linker: String,
    linker_packages: String,
    runner: Vec<String>,
    runner_packages: String,
}

impl Target {
    /// The machine Kiln runs on, with every ISA feature it has.
    pub fn host() -> Target {
        Target {
            name: "host".into(),
            description: format!(
                "this machine ({}), every ISA feature it has",
                std::env::consts::ARCH
            ),
            triple: None,
            isa_flags: vec![],
            linker: "cc".into(),
            linker_packages: "gcc".into(),
            runner: vec![],
            runner_packages: String::new(),
        }
    }

    /// The target called `name` (`host` or a built-in target), or read from `name` when it is
    /// the path of a `.toml` file.
    pub fn named(name: &str) -> Result<Target, TargetError> {
        if name == "host" {
            return Ok(Target::host());
        }
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name) {
            return Target::parse(text, &format!("targets/{name}.toml"));
        }
        if name.ends_with(".toml") {
            return Target::from_file(Path::new(name));
        }
        Err(TargetError::Unknown {
            name: name.into(),
            known: BUILTIN
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Reads a target description from a TOML file.
    pub fn from_file(path: &Path) -> Result<Target, TargetError> {
        let text = std::fs::read_to_string(path).map_err(|e| TargetError::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Target::parse(&text, &path.display().to_string())
    }

    /// Parses a target description; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Target, TargetError> {
        let invalid = |reason: String| TargetError::Invalid {
            path: path.into(),
            reason,
        };
        let f: TargetFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if f.vector_bits != 128 {
            return Err(invalid(format!(
                "vector_bits = {}: Kiln's code generator emits 128-bit vectors only",
                f.vector_bits
            )));
        }
        let isa_flags = f
            .isa_flags
            .into_iter()
            .map(|(k, v)| match v {
                FlagValue::Bool(b) => (k, b.to_string()),
                FlagValue::Text(s) => (k, s),
            })
            .collect();
        let target = Target {
            name: f.name,
            description: f.description,
            triple: Some(f.triple),
            isa_flags,
            linker: f.linker,
            linker_packages: f.linker_packages,
            runner: f.runner,
            runner_packages: f.runner_packages,
        };
        // Cranelift checks the triple and every flag now, not at the first compile.
        kiln_codegen::isa::target_isa(&target.isa_spec(), true, false)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(target)
    }

    /// Every built-in target, `host` first.
    pub fn builtin() -> Vec<Target> {
        let mut all = vec![Target::host()];
        all.extend(BUILTIN.iter().map(|(name, text)| {
            Target::parse(text, &format!("targets/{name}.toml"))
                .expect("built-in targets are tested to parse")
        }));
        all
    }

    /// The target's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A one-line description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The target triple (`None` for the host).
    pub fn triple(&self) -> Option<&str> {
        self.triple.as_deref()
    }

    /// The ISA flags set on top of the architecture's baseline, as `name = value`.
    pub fn isa_flags(&self) -> &[(String, String)] {
        &self.isa_flags
    }

    /// The C compiler that links shared libraries for this target.
    pub fn linker(&self) -> &str {
        &self.linker
    }

    /// The Debian packages that provide [`Target::linker`].
    pub fn linker_packages(&self) -> &str {
        &self.linker_packages
    }

    /// The command prefix that runs this target's programs here (e.g. qemu-user), empty when
    /// they run natively.
    pub fn runner(&self) -> &[String] {
        &self.runner
    }

    /// The Debian packages that provide [`Target::runner`].
    pub fn runner_packages(&self) -> &str {
        &self.runner_packages
    }

    /// What the code generator is told.
    pub fn isa_spec(&self) -> IsaSpec {
        match &self.triple {
            None => IsaSpec::Host,
            Some(triple) => IsaSpec::Triple {
                triple: triple.clone(),
                flags: self.isa_flags.clone(),
            },
        }
    }

    /// The family of target micro-kernels this target's code calls (`None`: none; an ISA that
    /// cannot be built has none either, and compiling for it reports the error).
    pub fn microkernels(&self) -> Option<kiln_codegen::isa::microkernel::MicroIsa> {
        kiln_codegen::isa::micro_isa(&self.isa_spec())
            .ok()
            .flatten()
    }

    /// What the schedule library is told about this target.
    pub fn sketch_target(&self) -> SketchTarget {
        SketchTarget {
            microkernels: self.microkernels().map(|m| MicroShape {
                lanes: m.f32_lanes(),
                registers: m.vector_registers(),
                int8: m.int8(),
                converting: m.converting_epilogues(),
                pointwise: m.pointwise_kernels(),
            }),
        }
    }

    /// How many ISA flags the target sets (a measure of how specific it is).
    pub fn isa_flag_count(&self) -> usize {
        self.isa_flags.len()
    }

    /// Whether this target's code runs natively on this machine (the host, or a target of the
    /// host's architecture whose flags the host has).
    pub fn runs_natively(&self) -> bool {
        match &self.triple {
            None => true,
            Some(t) => {
                t.starts_with(std::env::consts::ARCH)
                    && self.runner.is_empty()
                    && kiln_codegen::isa::host_has_flags(&self.isa_flags)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_targets_parse_and_are_named_like_their_files() {
        for (name, text) in BUILTIN {
            let t = Target::parse(text, name).unwrap();
            assert_eq!(t.name(), *name);
            assert_eq!(Target::named(name).unwrap(), t);
        }
        assert_eq!(Target::builtin().len(), BUILTIN.len() + 1);
    }

    #[test]
    fn a_target_runs_natively_only_where_the_host_has_its_flags() {
        assert!(Target::host().runs_natively());
        assert!(
            !Target::named("aarch64-linux-gnu").unwrap().runs_natively()
                || cfg!(target_arch = "aarch64")
        );
        if cfg!(target_arch = "x86_64") {
            // Every x86-64 machine this builds on has SSE4.2 (x86-64-v2).
            assert!(Target::named("x86_64-linux-gnu").unwrap().runs_natively());
        }
        let mut t = Target::named("x86_64-linux-gnu").unwrap();
        t.isa_flags
            .push(("has_no_such_feature".into(), "true".into()));
        assert!(!t.runs_natively());
    }

    #[test]
    fn bad_targets_are_errors_naming_the_problem() {
        let base = include_str!("../../../targets/x86_64-linux-gnu.toml");
        let e = Target::parse(&base.replace("has_sse42", "has_sse99"), "t.toml").unwrap_err();
        assert!(e.to_string().contains("has_sse99"), "{e}");
        let e = Target::parse(
            &base.replace("x86_64-unknown-linux-gnu", "mips-unknown-linux-gnu"),
            "t.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("mips"), "{e}");
        let e = Target::parse(&base.replace("vector_bits = 128", "vector_bits = 256"), "t")
            .unwrap_err();
        assert!(e.to_string().contains("vector_bits"), "{e}");
        let e = Target::parse("name = 3", "t.toml").unwrap_err();
        assert!(e.to_string().contains("t.toml"), "{e}");
        assert!(matches!(
            Target::named("sparc"),
            Err(TargetError::Unknown { .. })
        ));
    }
}
