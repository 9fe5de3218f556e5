//! The host target: Cranelift ISA construction and the features codegen asks about.
//!
//! Invariant: every module codegen builds uses [`host_isa`], i.e. the native ISA with all host
//! features Cranelift detects (`cranelift_native`), `opt_level=speed`, inline stack probes (kernels
//! may keep up to a few hundred KiB of local buffers on the stack) and 64-bit pointers; and
//! [`HostInfo`] says truthfully which optional instructions that ISA lowers natively.

pub mod aarch64;
pub mod microkernel;
pub mod x86_64;

use crate::CodegenError;
use cranelift_codegen::ir::{types, Type};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use microkernel::MicroIsa;

/// The architectures codegen knows about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    X86_64,
    Aarch64,
    Other,
}

/// What codegen needs to know about the target.
#[derive(Clone, Copy, Debug)]
pub struct HostInfo {
    /// The pointer type (always `i64`: 32-bit targets are rejected).
    pub ptr: Type,
    /// The ISA lowers scalar and f32x4 `fma` to one instruction (x86-64 FMA3, aarch64).
    pub has_fma: bool,
    /// The ISA lowers f32x4 `floor`/`ceil`/`nearest` natively (x86-64 SSE4.1, aarch64).
    pub has_vector_round: bool,
    /// The target micro-kernels the ISA runs (`None`: tensorized regions compile as loops).
    pub micro: Option<MicroIsa>,
}

/// Which machine code is generated for.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum IsaSpec {
    /// The machine codegen runs on, with every feature `cranelift_native` detects (the JIT).
    #[default]
    Host,
    /// Another machine (AOT): a target triple (`x86_64-unknown-linux-gnu`,
    /// `aarch64-unknown-linux-gnu`) and Cranelift ISA flags set on top of that architecture's
    /// baseline (`has_avx2 = true`, ...).
    Triple {
        triple: String,
        flags: Vec<(String, String)>,
    },
}

/// The native ISA, `pic` for position-independent code (AOT); the JIT needs `pic = false`.
pub fn host_isa(pic: bool, verify_ir: bool) -> Result<OwnedTargetIsa, CodegenError> {
    target_isa(&IsaSpec::Host, pic, verify_ir)
}

/// The CPU features code for `spec` may execute beyond its architecture's baseline: x86-64,
/// every extension the ISA's flags enable for Cranelift plus those of its micro-kernels, as
/// GCC's `__builtin_cpu_supports` names them; aarch64, `dotprod` (the dot-product extension,
/// Linux's `HWCAP_ASIMDDP`) when enabled. A library checks them when a context is created, so
/// a CPU without one gets a status instead of an illegal instruction.
pub fn required_cpu_features(spec: &IsaSpec) -> Result<Vec<&'static str>, CodegenError> {
    let isa = target_isa(spec, false, false)?;
    if isa.name() == "aarch64" {
        let dotprod = isa
            .isa_flags()
            .iter()
            .any(|f| f.name == "has_dotprod" && f.as_bool() == Some(true));
        return Ok(if dotprod { vec!["dotprod"] } else { vec![] });
    }
    if isa.name() != "x64" {
        return Ok(vec![]);
    }
    const NAMES: [(&str, &str); 17] = [
        ("has_sse3", "sse3"),
        ("has_ssse3", "ssse3"),
        ("has_cmpxchg16b", "cmpxchg16b"),
        ("has_sse41", "sse4.1"),
        ("has_sse42", "sse4.2"),
        ("has_popcnt", "popcnt"),
        ("has_avx", "avx"),
        ("has_avx2", "avx2"),
        ("has_fma", "fma"),
        ("has_bmi1", "bmi"),
        ("has_bmi2", "bmi2"),
        ("has_lzcnt", "lzcnt"),
        ("has_avx512f", "avx512f"),
        ("has_avx512vl", "avx512vl"),
        ("has_avx512dq", "avx512dq"),
        ("has_avx512bitalg", "avx512bitalg"),
        ("has_avx512vbmi", "avx512vbmi"),
    ];
    let flags = isa.isa_flags();
    let mut out: Vec<&'static str> = NAMES
        .iter()
        .filter(|(flag, _)| {
            flags
                .iter()
                .any(|f| f.name == *flag && f.as_bool() == Some(true))
        })
        .map(|(_, name)| *name)
        .collect();
    if let Some(m) = HostInfo::of(&*isa).micro {
        for f in m.cpu_features() {
            if !out.contains(f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// The target micro-kernels code for `spec` uses (`None` when its ISA has none).
pub fn micro_isa(spec: &IsaSpec) -> Result<Option<MicroIsa>, CodegenError> {
    let isa = target_isa(spec, false, false)?;
    Ok(HostInfo::of(&*isa).micro)
}

/// Whether the machine codegen runs on has every boolean ISA flag that `flags` turns on (an
/// unknown flag counts as missing).
pub fn host_has_flags(flags: &[(String, String)]) -> bool {
    let Ok(isa) = host_isa(false, false) else {
        return false;
    };
    let host = isa.isa_flags();
    flags.iter().filter(|(_, v)| v == "true").all(|(name, _)| {
        host.iter()
            .any(|f| f.name == name.as_str() && f.as_bool() == Some(true))
    })
}

/// The ISA `spec` names, with codegen's shared settings; an unknown triple or flag is an error
/// naming it.
pub fn target_isa(
    spec: &IsaSpec,
    pic: bool,
    verify_ir: bool,
) -> Result<OwnedTargetIsa, CodegenError> {
    let err = |e: &dyn std::fmt::Display| CodegenError::Isa(e.to_string());
    let mut flags = settings::builder();
    for (name, value) in [
        ("opt_level", "speed"),
        ("use_colocated_libcalls", "false"),
        ("is_pic", if pic { "true" } else { "false" }),
        ("enable_probestack", "true"),
        ("probestack_strategy", "inline"),
        ("enable_verifier", if verify_ir { "true" } else { "false" }),
    ] {
        flags.set(name, value).map_err(|e| err(&e))?;
    }
    let builder = match spec {
        IsaSpec::Host => cranelift_native::builder().map_err(|e| err(&e))?,
        IsaSpec::Triple { triple, flags } => {
            let mut b = cranelift_codegen::isa::lookup_by_name(triple)
                .map_err(|e| CodegenError::Isa(format!("target triple `{triple}`: {e}")))?;
            for (name, value) in flags {
                b.set(name, value).map_err(|e| {
                    CodegenError::Isa(format!("ISA flag `{name} = {value}` for `{triple}`: {e}"))
                })?;
            }
            b
        }
    };
    let isa = builder
        .finish(settings::Flags::new(flags))
        .map_err(|e| err(&e))?;
    if isa.pointer_type() != types::I64 {
        return Err(CodegenError::Isa(format!(
            "pointer type {} (only 64-bit targets are supported)",
            isa.pointer_type()
        )));
    }
    Ok(isa)
}

impl HostInfo {
    /// The facts about `isa`.
    pub fn of(isa: &dyn cranelift_codegen::isa::TargetIsa) -> HostInfo {
        let arch = match isa.name() {
            "x64" => Arch::X86_64,
            "aarch64" => Arch::Aarch64,
            _ => Arch::Other,
        };
        let flag = |name: &str| {
            isa.isa_flags()
                .iter()
                .any(|v| v.name == name && v.as_bool() == Some(true))
        };
        HostInfo {
            ptr: isa.pointer_type(),
            has_fma: match arch {
                Arch::X86_64 => flag("has_fma"),
                Arch::Aarch64 => true,
                Arch::Other => false,
            },
            has_vector_round: match arch {
                Arch::X86_64 => flag("has_sse41"),
                Arch::Aarch64 => true,
                Arch::Other => false,
            },
            micro: MicroIsa::for_target(isa.name(), &flag),
        }
    }
}
