//! `kiln device`: what a device is to the tuner — its target's register file, what the machine
//! reports (cores, clock, caches) and the latencies of the probe kernels — measured here or on
//! a remote device (`--rpc`, `--tracker`).
//!
//! Invariant: the description printed is the one a cost model would be given (the same
//! `kiln_tune::device::DeviceDescription`); nothing here is estimated.

use crate::error::CliError;
use crate::remote::{one_device, RemoteArgs};
use kiln_tune::device::{DeviceDescription, PROBES};
use std::time::Duration;

/// `kiln device [--target T] [--threads N] [--rpc H:P | --tracker H:P --device-key K] [--json]`.
pub fn describe(
    target: &str,
    threads: usize,
    remote: &RemoteArgs,
    json: bool,
) -> Result<(), CliError> {
    if threads == 0 {
        return Err(CliError::Usage("--threads must be positive".into()));
    }
    let target = kiln::Target::named(target).map_err(|e| CliError::Usage(e.to_string()))?;
    let tune = |e: kiln_tune::TuneError| CliError::Tune(Box::new(e));
    let d = if remote.is_remote() {
        let (mut agent, addr, _lease) = one_device(remote, Duration::from_secs(60))?;
        let d = kiln_tune::remote::describe_remote(&mut agent, &target, threads)
            .map_err(|e| CliError::Remote(format!("agent {addr}: {e}")))?;
        let _ = agent.bye();
        d
    } else {
        if !target.runs_natively() {
            return Err(CliError::Usage(format!(
                "target `{}` does not run on this machine: describe its device with --rpc or \
                 --tracker",
                target.name()
            )));
        }
        DeviceDescription::of_host(&target, threads).map_err(tune)?
    };
    if json {
        let text = serde_json::to_string_pretty(&d).map_err(|e| CliError::Remote(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    println!("target      {}", d.target);
    println!(
        "cpu         {} ({}, {} cores, {} MHz)",
        d.cpu_model, d.arch, d.cores, d.clock_mhz
    );
    let caches: Vec<String> = d
        .caches
        .iter()
        .map(|c| format!("L{} {} KiB", c.level, c.bytes >> 10))
        .collect();
    println!("caches      {}", caches.join(", "));
    if d.lanes > 0 {
        println!(
            "registers   {} x {} f32 lanes{}",
            d.registers,
            d.lanes,
            if d.int8_kernels {
                ", int8 dot products"
            } else {
                ""
            }
        );
    } else {
        println!("registers   (no micro-kernels: 128-bit vector code)");
    }
    println!("probes      ({} thread(s), median ms per call)", d.threads);
    for p in &d.probes {
        let what = PROBES
            .iter()
            .find(|(n, _)| *n == p.name)
            .map_or("", |(_, w)| *w);
        println!("  {:<11} {:>9.4}  {what}", p.name, p.ms);
    }
    Ok(())
}
