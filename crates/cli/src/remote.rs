//! `kiln agent build` (the device agent for a target) and `kiln rpc info` (what an agent's
//! device is): the commands of remote measurement.
//!
//! Invariant: a key file is read only to make a [`kiln_rpc::Key`]; its bytes are never printed.

use crate::error::CliError;
use kiln_rpc::{AgentClient, Key};
use std::path::Path;
use std::time::Duration;

/// `kiln agent build --target T -o PATH`.
pub fn build_agent(target: &str, out: &Path) -> Result<(), CliError> {
    let target = kiln::Target::named(target).map_err(|e| CliError::Usage(e.to_string()))?;
    let built = kiln_agent::build(&target, out).map_err(|e| CliError::Remote(e.to_string()))?;
    println!(
        "{}: {} bytes, the device agent for {} (run it on the device with --listen ADDR:PORT \
         --key-file FILE)",
        built.path.display(),
        built.bytes,
        target.name()
    );
    Ok(())
}

/// The key in `path` (at least 16 bytes once surrounding whitespace is removed).
pub fn read_key(path: &Path) -> Result<Key, CliError> {
    let bytes = std::fs::read(path).map_err(|e| CliError::io(path, e))?;
    Key::new(&bytes).map_err(|e| CliError::Usage(format!("key file {}: {e}", path.display())))
}

/// `kiln rpc info --rpc HOST:PORT --key-file FILE [--json]`.
pub fn info(addr: &str, key_file: &Path, timeout_s: u64, json: bool) -> Result<(), CliError> {
    let key = read_key(key_file)?;
    let timeout = Duration::from_secs(timeout_s.max(1));
    let remote = |e: kiln_rpc::RpcError| CliError::Remote(format!("agent {addr}: {e}"));
    let mut client = AgentClient::connect(addr, &key, timeout).map_err(remote)?;
    let info = client.device_info().map_err(remote)?;
    // Best effort: the agent's child also ends when the connection closes.
    let _ = client.bye();
    if json {
        let text = serde_json::to_string_pretty(&info)
            .map_err(|e| CliError::Remote(format!("agent {addr}: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    println!(
        "agent       {addr} (kiln-agent {}, protocol {})",
        info.agent_version, info.protocol_version
    );
    println!(
        "cpu         {} ({}, {} cores, {} MHz)",
        info.cpu_model, info.arch, info.cores, info.clock_mhz
    );
    println!("memory      {} MiB", info.memory_bytes >> 20);
    let caches: Vec<String> = info
        .caches
        .iter()
        .map(|c| {
            format!(
                "L{} {} {} KiB",
                c.level,
                c.kind.to_lowercase(),
                c.bytes >> 10
            )
        })
        .collect();
    println!("caches      {}", caches.join(", "));
    println!("kernel      {}", info.kernel);
    println!("features    {}", info.features.join(" "));
    Ok(())
}
