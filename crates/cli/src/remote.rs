//! `kiln agent build` (the device agent for a target), `kiln rpc info` (what an agent's
//! device is), `kiln rpc bench`, `kiln tracker` and `kiln rpc status`: the commands of remote
//! measurement.
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

/// Where a command measures when not on this machine: `--rpc` agents or a `--tracker`'s pool.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RemoteArgs {
    /// Measure on the device agent at HOST:PORT instead of this machine (repeatable: several
    /// devices measure in parallel).
    #[arg(long, value_name = "HOST:PORT")]
    pub rpc: Vec<String>,
    /// Lease devices from this tracker (with --device-key) instead of this machine.
    #[arg(
        long,
        value_name = "HOST:PORT",
        conflicts_with = "rpc",
        requires = "device_key"
    )]
    pub tracker: Option<String>,
    /// The pool of devices to lease from the tracker (the key agents registered under).
    #[arg(long, value_name = "NAME", requires = "tracker")]
    pub device_key: Option<String>,
    /// Devices to lease at once (candidates are measured on all of them in parallel).
    #[arg(long, default_value_t = 1, requires = "tracker")]
    pub devices: usize,
    /// Priority of the lease requests (higher is served first).
    #[arg(long, default_value_t = 0, requires = "tracker")]
    pub priority: i32,
    /// How long to wait for the first device from the tracker, in seconds.
    #[arg(long, default_value_t = 600, requires = "tracker")]
    pub lease_wait_s: u64,
    /// The file holding the pre-shared key of the agents (and the tracker).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<std::path::PathBuf>,
}

impl RemoteArgs {
    /// Whether a remote device was asked for.
    pub fn is_remote(&self) -> bool {
        !self.rpc.is_empty() || self.tracker.is_some()
    }

    /// The key and the devices, when remote.
    pub fn devices(&self) -> Result<Option<(Key, kiln_tune::Devices)>, CliError> {
        if !self.is_remote() {
            if self.key_file.is_some() {
                return Err(CliError::Usage(
                    "--key-file goes with --rpc or --tracker".into(),
                ));
            }
            return Ok(None);
        }
        let key_file = self.key_file.as_ref().ok_or_else(|| {
            CliError::Usage("--rpc and --tracker need --key-file (the agents' key)".into())
        })?;
        let key = read_key(key_file)?;
        let devices = match (&self.tracker, &self.device_key) {
            (Some(tracker), Some(device_key)) => {
                if self.devices == 0 {
                    return Err(CliError::Usage("--devices must be positive".into()));
                }
                kiln_tune::Devices::Tracker {
                    tracker: tracker.clone(),
                    device_key: device_key.clone(),
                    count: self.devices,
                    priority: self.priority,
                    // Renewed by the next run: a tuning run longer than a day is cut off.
                    lease: Duration::from_secs(24 * 3600),
                    wait: Duration::from_secs(self.lease_wait_s.max(1)),
                }
            }
            (Some(_), None) => return Err(CliError::Usage("--tracker needs --device-key".into())),
            _ => kiln_tune::Devices::Agents(self.rpc.clone()),
        };
        Ok(Some((key, devices)))
    }

    /// Where the device is, for messages.
    pub fn describe(&self) -> String {
        match (&self.tracker, &self.device_key) {
            (Some(t), Some(k)) => format!("device `{k}` of tracker {t}"),
            _ => format!("agent {}", self.rpc.join(", ")),
        }
    }
}

/// One device for a whole-model measurement: an agent session, and the lease holding it.
pub(crate) fn one_device(
    args: &RemoteArgs,
    timeout: Duration,
) -> Result<
    (
        AgentClient,
        String,
        Option<kiln_rpc::tracker::TrackerClient>,
    ),
    CliError,
> {
    let Some((key, devices)) = args.devices()? else {
        return Err(CliError::Usage("--rpc or --tracker is required".into()));
    };
    let remote = |e: kiln_rpc::RpcError| CliError::Remote(format!("{}: {e}", args.describe()));
    match devices {
        kiln_tune::Devices::Agents(addrs) => {
            let addr = addrs[0].clone();
            let client = AgentClient::connect(&addr, &key, timeout).map_err(remote)?;
            Ok((client, addr, None))
        }
        kiln_tune::Devices::Tracker {
            tracker,
            device_key,
            priority,
            wait,
            ..
        } => {
            let mut t = kiln_rpc::tracker::TrackerClient::connect(&tracker, &key, timeout)
                .map_err(remote)?;
            t.request(&kiln_rpc::tracker::LeaseRequest {
                device_key,
                priority,
                lease_ms: 3_600_000,
                client: "kiln bench".into(),
            })
            .map_err(remote)?;
            let lease = t.wait_lease(Some(wait)).map_err(remote)?;
            let client = AgentClient::connect(&lease.address, &key, timeout).map_err(remote)?;
            Ok((client, lease.address, Some(t)))
        }
    }
}

/// `kiln tracker --listen ADDR:PORT --key-file FILE`: serves until killed.
pub fn tracker(listen: &str, key_file: &Path, heartbeat_ms: u64) -> Result<(), CliError> {
    if heartbeat_ms < 10 {
        return Err(CliError::Usage("--heartbeat-ms must be at least 10".into()));
    }
    let key = read_key(key_file)?;
    let options = kiln_rpc::tracker::TrackerOptions {
        heartbeat: Duration::from_millis(heartbeat_ms),
        ..Default::default()
    };
    let tracker = kiln_rpc::tracker::Tracker::bind(listen, key, options)
        .map_err(|e| CliError::Remote(format!("cannot listen on {listen}: {e}")))?;
    let addr = tracker
        .local_addr()
        .map_err(|e| CliError::Remote(e.to_string()))?;
    println!(
        "kiln tracker: listening on {addr} (protocol {})",
        kiln_rpc::PROTOCOL_VERSION
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    tracker.serve();
    Ok(())
}

/// `kiln rpc status --tracker HOST:PORT --key-file FILE [--json]`.
pub fn status(addr: &str, key_file: &Path, json: bool) -> Result<(), CliError> {
    let key = read_key(key_file)?;
    let remote = |e: kiln_rpc::RpcError| CliError::Remote(format!("tracker {addr}: {e}"));
    let mut client = kiln_rpc::tracker::TrackerClient::connect(addr, &key, Duration::from_secs(10))
        .map_err(remote)?;
    let s = client.status().map_err(remote)?;
    if json {
        let text = serde_json::to_string_pretty(&s).map_err(|e| CliError::Remote(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    println!("devices ({})", s.devices.len());
    for d in &s.devices {
        let lease = d
            .lease_id
            .map_or("free".to_string(), |l| format!("leased ({l})"));
        println!(
            "  {:>4}  {:<16} {:<22} {:<10} {}  (heartbeat {:.1} s ago)",
            d.device_id, d.device_key, d.address, lease, d.cpu, d.last_heartbeat_s
        );
    }
    println!("leases ({})", s.leases.len());
    for l in &s.leases {
        println!(
            "  {:>4}  device {} `{}` held by {} for {:.1} s, {:.0} s left",
            l.lease_id, l.device_id, l.device_key, l.client, l.held_s, l.remaining_s
        );
    }
    println!("queue ({}, in service order)", s.queue.len());
    for q in &s.queue {
        println!(
            "  {:>4}  `{}` priority {} from {}, waiting {:.1} s",
            q.ticket, q.device_key, q.priority, q.client, q.waiting_s
        );
    }
    Ok(())
}

/// What `kiln rpc bench` does.
#[derive(Debug)]
pub struct RemoteBench {
    pub model: std::path::PathBuf,
    pub remote: RemoteArgs,
    pub target: String,
    pub threads: usize,
    pub repeat: u32,
    pub min_repeat_ms: u32,
    pub timeout_s: u64,
    pub json: bool,
    pub import: crate::shapes::ImportArgs,
    pub graph: kiln::GraphOptions,
    pub tuning_log: Option<std::path::PathBuf>,
}

/// `kiln rpc bench MODEL --rpc HOST:PORT --key-file FILE --target T` (or `--tracker HOST:PORT
/// --device-key NAME`; `kiln bench` with those options comes here too): the model compiled
/// into a library for `T`, uploaded to the agent, timed there, deleted. Where `T` runs here too, the
/// outputs' checksum is compared with this machine's run of the same inputs.
pub fn bench(req: &RemoteBench) -> Result<(), CliError> {
    if req.threads == 0 || req.repeat == 0 || req.repeat > 64 {
        return Err(CliError::Usage(
            "--threads must be positive and --repeat in 1..=64".into(),
        ));
    }
    let target = kiln::Target::named(&req.target).map_err(|e| CliError::Usage(e.to_string()))?;
    req.remote.devices()?;
    let model = crate::load(&req.model, &req.import)?;
    let threads = Some(req.threads).filter(|_| req.threads == 1);
    let schedules = match &req.tuning_log {
        Some(log) => crate::tune::schedules_from_log(
            log,
            target.name(),
            threads,
            &mut crate::tune::note_on_stderr,
        )?,
        None => kiln::TunedSchedules::default(),
    };
    let dir = tempfile::tempdir().map_err(|e| CliError::io(std::env::temp_dir(), e))?;
    let lib = dir.path().join("libmodel.so");
    let options = kiln::AotOptions {
        parallel: req.threads > 1,
        header: None,
        graph: req.graph.clone(),
        schedules,
        prefix: None,
    };
    kiln::aot::compile_library(&model.graph, &target, &options, &lib)
        .map_err(|e| CliError::Compile(Box::new(e)))?;
    let bytes = std::fs::read(&lib).map_err(|e| CliError::io(&lib, e))?;
    let timeout = Duration::from_secs(req.timeout_s.max(1));
    let (mut client, addr, _lease) = one_device(&req.remote, timeout)?;
    let addr = &addr;
    let remote = |e: kiln_rpc::RpcError| CliError::Remote(format!("agent {addr}: {e}"));
    let info = client.device_info().map_err(remote)?;
    let hash = client.upload(&bytes).map_err(remote)?;
    let request = kiln_rpc::agent::MeasureRequest {
        threads: req.threads as i32,
        repeat: req.repeat,
        min_repeat_ms: req.min_repeat_ms,
        timeout_ms: u32::try_from(req.timeout_s.saturating_mul(1000)).unwrap_or(u32::MAX),
        ..Default::default()
    };
    let m = client.measure(&hash, &request).map_err(remote)?;
    let _ = client.delete(&hash);
    let _ = client.bye();
    if m.status != kiln_rpc::agent::MeasureStatus::Ok {
        return Err(CliError::Remote(format!(
            "agent {addr}: the library did not run ({:?}): {}",
            m.status, m.message
        )));
    }
    let mut ms: Vec<f64> = m.seconds.iter().map(|s| s * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    let checksum: String = m.checksum.iter().map(|b| format!("{b:02x}")).collect();
    let same = target
        .runs_natively()
        .then(|| kiln_agent::expected_checksum(&model.graph, &target, request.seed))
        .transpose()
        .map_err(|e| CliError::Remote(format!("checking the outputs: {e}")))?
        .map(|h| h == m.checksum);
    if req.json {
        let j = serde_json::json!({
            "device": info.cpu_model, "arch": info.arch, "target": target.name(),
            "median_ms": median, "min_ms": ms[0], "calls_per_timing": m.number,
            "timings_ms": ms, "library_bytes": bytes.len(), "checksum": checksum,
            "matches_host": same,
        });
        println!("{j}");
        return Ok(());
    }
    println!(
        "device      {} ({}, {} cores) at {addr}",
        info.cpu_model, info.arch, info.cores
    );
    println!("library     {} bytes for {}", bytes.len(), target.name());
    println!("median      {median:.3} ms");
    println!(
        "min         {:.3} ms ({} timings of {} calls)",
        ms[0],
        ms.len(),
        m.number
    );
    let verdict = match same {
        Some(true) => " (identical to this machine's run of the same inputs)",
        Some(false) => " (DIFFERS from this machine's run of the same inputs)",
        None => "",
    };
    println!("outputs     sha256 {checksum}{verdict}");
    Ok(())
}
