//! Kiln's device agent: the C program that runs on a board (which has no Rust toolchain) and
//! serves the remote measurement protocol (`docs/rpc-protocol.md`), and [`build`], which
//! compiles it for a target with that target's C compiler, as `kiln compile` links libraries.
//!
//! The sources live in `c/`: `wire.c` (frames, handshake, authenticated messages over
//! OpenSSL's libcrypto), `device_info.c` (what INFO reports), `measure.c` (a library timed in
//! a forked child with resource limits and a watchdog) and `agent.c` (listening, one forked
//! child per session, uploads, the message loop). libcrypto is linked statically, so the
//! executable needs only the C library on the device (glibc 2.34 or later: Debian 12, Ubuntu
//! 22.04, Raspberry Pi OS bookworm). `c/fuzz_wire.c` is the libFuzzer harness of the wire
//! decoder (`fuzz/README.md`).
//!
//! [`expected_checksum`] reproduces on this machine the outputs checksum an agent reports, so a
//! host can check what a device computed.
//!
//! Invariant: [`build`] writes an executable to `out` only when the compiler succeeded; every
//! failure names what is missing and how to install it.

use kiln::Target;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The agent's C sources, embedded so that an installed `kiln` builds agents anywhere.
pub const SOURCES: [(&str, &str); 12] = [
    ("wire.h", include_str!("../c/wire.h")),
    ("wire.c", include_str!("../c/wire.c")),
    ("device_info.h", include_str!("../c/device_info.h")),
    ("device_info.c", include_str!("../c/device_info.c")),
    ("measure.h", include_str!("../c/measure.h")),
    ("measure.c", include_str!("../c/measure.c")),
    ("net.h", include_str!("../c/net.h")),
    ("net.c", include_str!("../c/net.c")),
    ("register.h", include_str!("../c/register.h")),
    ("register.c", include_str!("../c/register.c")),
    // The C ABI of compiled libraries, which the agent loads.
    ("kiln_model.h", include_str!("../../runtime/c/kiln_model.h")),
    ("agent.c", include_str!("../c/agent.c")),
];

/// Why an agent could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "the C compiler `{compiler}` for target `{target}` is not installed (on Debian/Ubuntu: \
         apt-get install {packages})"
    )]
    CompilerMissing {
        compiler: String,
        target: String,
        packages: String,
    },
    #[error(
        "OpenSSL's libcrypto for target `{target}` is not installed (on Debian/Ubuntu: {install})"
    )]
    NoLibcrypto { target: String, install: String },
    #[error("compiling the agent for `{target}` failed:\n{stderr}")]
    Compile { target: String, stderr: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// What [`build`] made.
#[derive(Clone, Debug)]
pub struct BuiltAgent {
    pub path: PathBuf,
    pub bytes: u64,
}

/// Compiles the agent for `target` into the executable `out`.
pub fn build(target: &Target, out: &Path) -> Result<BuiltAgent, AgentError> {
    let io = |what: String| move |source| AgentError::Io { what, source };
    let compiler =
        kiln::aot::find_program(target.linker()).ok_or_else(|| AgentError::CompilerMissing {
            compiler: target.linker().into(),
            target: target.name().into(),
            packages: target.linker_packages().into(),
        })?;
    let dir = tempfile::tempdir().map_err(io("a temporary directory".into()))?;
    for (name, text) in SOURCES {
        std::fs::write(dir.path().join(name), text).map_err(io(format!("writing {name}")))?;
    }
    let output = Command::new(&compiler)
        .current_dir(dir.path())
        .args(["-std=c11", "-O2", "-Wall", "-o"])
        .arg(out)
        .args(
            SOURCES
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| n.ends_with(".c")),
        )
        // libcrypto statically (the board needs no OpenSSL), the C library dynamically
        // (a static glibc cannot be relied on in forked, networked programs).
        .args(["-Wl,-Bstatic", "-lcrypto", "-Wl,-Bdynamic"])
        .output()
        .map_err(io(format!("running {}", compiler.display())))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if stderr.contains("openssl/") || stderr.contains("-lcrypto") {
            return Err(AgentError::NoLibcrypto {
                target: target.name().into(),
                install: libcrypto_install(target),
            });
        }
        return Err(AgentError::Compile {
            target: target.name().into(),
            stderr,
        });
    }
    let bytes = std::fs::metadata(out)
        .map_err(io(format!("reading {}", out.display())))?
        .len();
    Ok(BuiltAgent {
        path: out.to_path_buf(),
        bytes,
    })
}

/// How to install libcrypto's static library for `target` on Debian.
fn libcrypto_install(target: &Target) -> String {
    match target.triple() {
        Some(t) if t.starts_with("aarch64") && !cfg!(target_arch = "aarch64") => {
            "dpkg --add-architecture arm64 && apt-get update && apt-get install libssl-dev:arm64"
                .into()
        }
        _ => "apt-get install libssl-dev".into(),
    }
}

/// Why this machine could not reproduce a measurement's outputs.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    #[error("compiling it here: {0}")]
    Compile(#[from] kiln::CompileError),
    #[error("running it here: {0}")]
    Run(#[from] kiln::RunError),
    #[error("input {0} cannot be made from the agent's bytes")]
    Input(usize),
}

/// The outputs checksum an agent reports for `graph` measured with inputs of `seed`
/// (`kiln_rpc::agent::fill_input`, SHA-256 of the outputs in order), computed by compiling and
/// running `graph` here for `target`, which must run on this machine.
pub fn expected_checksum(
    graph: &kiln::Graph,
    target: &Target,
    seed: u64,
) -> Result<[u8; 32], ChecksumError> {
    let code = |d: kiln::DType| match d {
        kiln::DType::F32 => 0,
        kiln::DType::F64 => 8,
        _ => -1,
    };
    let mut state = seed;
    let mut inputs = vec![];
    for (i, &v) in graph.inputs().iter().enumerate() {
        let ty = graph.ty(v);
        let mut bytes = vec![0u8; ty.byte_size()];
        kiln_rpc::agent::fill_input(&mut bytes, code(ty.dtype), &mut state);
        inputs.push(kiln::tensor_from_bytes(ty, &bytes).ok_or(ChecksumError::Input(i))?);
    }
    let model = kiln::Compiler::new(target.clone()).compile(graph)?;
    let mut all = vec![];
    for o in &model.run(&inputs)? {
        all.extend(kiln::tensor_bytes(o));
    }
    Ok(kiln_rpc::agent::sha256(&all))
}

/// An agent started on this machine on a loopback port (through `runner`, e.g. qemu-user,
/// when not empty): what tests and single-machine remote runs use. It is killed, with its
/// sessions, when dropped.
#[derive(Debug)]
pub struct LocalAgent {
    pub child: std::process::Child,
    /// `127.0.0.1:PORT`, from the agent's first line.
    pub addr: String,
}

impl LocalAgent {
    /// Starts `bin --listen 127.0.0.1:0 --key-file KEY_FILE --work-dir WORK_DIR ARGS...` and
    /// waits for the line saying where it listens (its stderr, the log, is discarded).
    pub fn start(
        runner: &[String],
        bin: &Path,
        key_file: &Path,
        work_dir: &Path,
        args: &[&str],
    ) -> Result<LocalAgent, AgentError> {
        use std::io::BufRead;
        let mut command = match runner.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let io = |what: &str| {
            let what = format!("{what} {}", bin.display());
            move |source| AgentError::Io { what, source }
        };
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--key-file"])
            .arg(key_file)
            .arg("--work-dir")
            .arg(work_dir)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(io("starting"))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufReader::new(out)
                .read_line(&mut line)
                .map_err(io("reading the first line of"))?;
        }
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string);
        match addr {
            Some(addr) => Ok(LocalAgent { child, addr }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(AgentError::Io {
                    what: format!("starting {}", bin.display()),
                    source: std::io::Error::other(format!("no address in its first line {line:?}")),
                })
            }
        }
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
