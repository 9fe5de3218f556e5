//! Per-kernel timing of a model's compiled code, kernel by kernel in isolation (`kiln bench
//! --profile` times them in a real run): rewrites the graph and lowers its kernels with their
//! default schedules for this machine as the compiler does, JIT-compiles them single-threaded
//! and times each one with its real weights and tables and pseudo-random activations in
//! `[0, 1)` (f32 params; other dtypes get zeros, which keeps data-dependent indices in range).
//!
//! ```text
//! cargo run --release -p kiln --example kernel_profile -- MODEL.onnx [--iters N] [--top K] [--print K]
//! ```
//!
//! Prints a table sorted by median time (class, output shape, share of the total) and, with
//! `--print K`, the lowered loop IR of the `K` slowest kernels. With `PERF_BUILDID_DIR` set (so
//! that the JIT writes `/tmp/perf-PID.map`) and `--dump DIR`, the machine code of every compiled
//! function is written to `DIR/NAME.bin` (disassemble with
//! `objdump -D -b binary -m i386:x86-64 DIR/NAME.bin`).

use kiln_codegen::{CodegenOptions, JitModule, Threads};
use kiln_operators::fusion::partition;
use kiln_operators::kernel::{lower_groups_with, KernelInput};
use std::io::{Read, Seek, SeekFrom};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!(
            "usage: kernel_profile MODEL.onnx [--iters N] [--top K] [--print K] [--filter S]"
        );
        std::process::exit(2);
    };
    let opt = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let filter = args
        .iter()
        .position(|a| a == "--filter")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let (iters, top, print) = (opt("--iters", 10), opt("--top", 30), opt("--print", 0));
    let model = kiln::load_onnx(path, &Default::default())?;
    let host = kiln::Target::host();
    let prepared = kiln::graph_opt::prepare(&model.graph, &Default::default(), &host)?;
    let graph = prepared.graph.into_owned();
    let groups = prepared.groups.unwrap_or_else(|| partition(&graph));
    let target = host.sketch_target();
    let kernels = lower_groups_with(&graph, &groups, &Default::default(), &target)?;
    let mut funcs = vec![];
    for (k, kernel) in kernels.iter().enumerate() {
        if filter
            .as_ref()
            .is_some_and(|f| !kernel.name.contains(f.as_str()))
        {
            continue;
        }
        let mut f = kernel.func.clone();
        f.name = format!("k{k}");
        funcs.push(f);
    }
    let opts = CodegenOptions {
        threads: Threads::Single,
        verify_ir: false,
        ..CodegenOptions::default()
    };
    let jit = JitModule::compile(&funcs, &opts)?;
    println!("codegen: {:?}", jit.stats());
    if let Some(dir) = args
        .iter()
        .position(|a| a == "--dump")
        .and_then(|i| args.get(i + 1))
    {
        dump_code(dir)?;
    }
    let mut rows = vec![];
    for (k, kernel) in kernels.iter().enumerate() {
        if let Some(f) = &filter {
            if !kernel.name.contains(f.as_str()) {
                continue;
            }
        }
        let compiled = jit.kernel(&format!("k{k}")).ok_or("kernel not compiled")?;
        let mut bufs: Vec<Vec<u8>> = compiled
            .params()
            .iter()
            .map(|p| vec![0u8; p.bytes])
            .collect();
        let mut seed = 0x9e37_79b9_u32;
        for (i, p) in compiled.params().iter().enumerate() {
            match kernel.inputs.get(i) {
                Some(KernelInput::Const(c)) => bufs[i] = kiln::tensor_bytes(graph.constant(*c)),
                Some(KernelInput::Table(t)) => bufs[i] = kiln::tensor_bytes(t),
                _ if p.dtype == kiln::DType::F32 => {
                    for chunk in bufs[i].chunks_exact_mut(4) {
                        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        let v = (seed >> 8) as f32 / (1u32 << 24) as f32;
                        chunk.copy_from_slice(&v.to_le_bytes());
                    }
                }
                _ => {}
            }
        }
        let mut times = vec![];
        for _ in 0..iters.max(1) + 1 {
            let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
            let t = Instant::now();
            compiled.run_bytes(&mut refs)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.remove(0);
        times.sort_by(f64::total_cmp);
        let shape = compiled
            .params()
            .last()
            .map(|p| format!("{:?}", p.shape))
            .unwrap_or_default();
        let ins: Vec<String> = compiled.params()[..compiled.params().len() - 1]
            .iter()
            .map(|p| format!("{:?}", p.shape))
            .collect();
        rows.push((
            times[times.len() / 2],
            k,
            kernel.class,
            shape,
            ins.join(" "),
        ));
    }
    let total: f64 = rows.iter().map(|r| r.0).sum();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("total {total:.3} ms over {} kernels", rows.len());
    println!(
        "{:>9} {:>6} {:>5} {:<12} {:<20} inputs",
        "ms", "%", "k", "class", "output"
    );
    for (ms, k, class, shape, ins) in rows.iter().take(top) {
        println!(
            "{ms:>9.3} {:>6.1} {k:>5} {:<12} {shape:<20} {ins}",
            100.0 * ms / total,
            format!("{class:?}")
        );
    }
    let mut by_class: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    for (ms, _, class, _, _) in &rows {
        let e = by_class.entry(format!("{class:?}")).or_default();
        e.0 += ms;
        e.1 += 1;
    }
    for (c, (ms, n)) in by_class {
        println!("class {c:<12} {ms:>9.3} ms  {n} kernels");
    }
    for (_, k, _, _, _) in rows.iter().take(print) {
        println!(
            "\n==== kernel {k} ({}) ====\n{}",
            kernels[*k].name, kernels[*k].func
        );
    }
    Ok(())
}

/// Copies the machine code of every function listed in this process's perf map into `dir`.
fn dump_code(dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let map = std::fs::read_to_string(format!("/tmp/perf-{}.map", std::process::id()))?;
    for line in map.lines() {
        let mut parts = line.split_whitespace();
        let (Some(addr), Some(size), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (addr, size) = (
            usize::from_str_radix(addr, 16)?,
            usize::from_str_radix(size, 16)?,
        );
        // The module (owned by `main`) is alive: read its code through /proc/self/mem.
        let mut mem = std::fs::File::open("/proc/self/mem")?;
        mem.seek(SeekFrom::Start(addr as u64))?;
        let mut code = vec![0u8; size];
        mem.read_exact(&mut code)?;
        std::fs::write(format!("{dir}/{name}.bin"), code)?;
    }
    Ok(())
}
