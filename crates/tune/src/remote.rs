//! Measuring candidates on remote devices: the RPC implementation of [`Runner`].
//!
//! Each candidate is built here, on the host, as a *kernel library* for the device's target
//! ([`kiln::compile_kernel_library`]: the one kernel behind the model C ABI, its weights
//! embedded, its activations the library's inputs), then uploaded to a device agent, timed
//! there by the agent's time evaluator and deleted. Devices are agents named directly or
//! leased from a tracker; with several, each measures from one shared queue on a thread of its
//! own.
//!
//! Invariant: every candidate gets exactly one result. A candidate whose device is lost
//! mid-measurement (a connection error, not the agent's verdict on the candidate) goes back to
//! the queue for another device — at most [`MAX_LOSSES`] times, then it is an error naming the
//! losses — and is never recorded twice: a result is stored once, by the device that produced
//! it. A candidate that crashes, hangs or exhausts memory on the device is the agent's verdict
//! (an error result); the agent survives it (it measures in a forked child).

use crate::device::{DeviceDescription, Probe};
use crate::measure::{lower_candidate, MeasureOptions, Measured, ModelSpec, Runner};
use crate::task::{extract_tasks, Task, TaskSet};
use crate::TuneError;
use kiln::{KernelParam, Target};
use kiln_operators::kernel::KernelInput;
use kiln_rpc::agent::{MeasureRequest, MeasureStatus};
use kiln_rpc::tracker::{LeaseRequest, TrackerClient};
use kiln_rpc::{AgentClient, Key, RpcError};
use kiln_schedules::Knobs;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A candidate's kernel library, or why it did not build.
pub type BuiltLibrary = Result<Vec<u8>, String>;

/// Times a candidate may lose its device before it is given up.
pub const MAX_LOSSES: u32 = 3;

/// Where the devices come from.
#[derive(Clone, Debug)]
pub enum Devices {
    /// Agents at these `HOST:PORT` addresses, one device each.
    Agents(Vec<String>),
    /// Up to `count` devices of key `device_key` leased from the tracker at `tracker`.
    Tracker {
        tracker: String,
        device_key: String,
        count: usize,
        priority: i32,
        /// How long a lease lasts.
        lease: Duration,
        /// How long to wait for the first device (further ones are taken only when free).
        wait: Duration,
    },
}

/// How the runner reaches its devices.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    pub key: Key,
    pub devices: Devices,
    /// Deadline of connections and of every message (a measurement adds its own timeout).
    pub io_timeout: Duration,
    /// Who asks, as the tracker shows it.
    pub client: String,
    /// The address space a measurement may use on the device, in MiB (0: the agent's default).
    pub memory_mb: u64,
}

/// A device in use: its agent session, and its lease when it came from a tracker (the lease
/// ends when this is dropped).
struct Device {
    /// The agent's address.
    name: String,
    agent: AgentClient,
    _lease: Option<TrackerClient>,
    /// When the session last carried a message: an agent ends sessions idle for its
    /// `--session-timeout-s` (120 s by default), so an idle one is renewed before use.
    last_used: Instant,
}

/// Sessions idle longer than this are renewed before they are used again.
const IDLE_RENEW: Duration = Duration::from_secs(60);

/// Measures candidates on remote device agents.
pub struct RpcRunner {
    set: TaskSet,
    target: Target,
    options: MeasureOptions,
    remote: RemoteOptions,
    devices: Vec<Device>,
    /// What the first device reported (`cpu_model (arch) @ address`), for the log.
    description: Option<String>,
    /// Devices lost so far.
    pub lost_devices: usize,
    /// Candidates measured again on another device after theirs was lost.
    pub requeued: usize,
}

impl std::fmt::Debug for RpcRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcRunner")
            .field("target", &self.target.name())
            .field("devices", &self.remote.devices)
            .field("connected", &self.devices.len())
            .finish()
    }
}

/// How measuring one candidate on one device ended.
enum Outcome {
    /// The device's verdict; `lost` when the session failed after it (the result stands).
    Done { result: Measured, lost: bool },
    /// The device was lost before a verdict.
    Lost(String),
}

impl RpcRunner {
    /// A runner for the tasks of `model` on `target` (the devices' target), measuring as
    /// `options` says (its `target` is ignored: `target` is the devices').
    pub fn new(
        model: &ModelSpec,
        target: Target,
        options: MeasureOptions,
        remote: RemoteOptions,
    ) -> Result<RpcRunner, TuneError> {
        let loaded = model.load()?;
        let set = extract_tasks(&loaded.graph, &model.graph_options(), &target)?;
        Ok(RpcRunner {
            set,
            target,
            options,
            remote,
            devices: Vec::new(),
            description: None,
            lost_devices: 0,
            requeued: 0,
        })
    }

    /// Connects devices until there are as many as wanted; an error only when there are none.
    pub fn connect(&mut self) -> Result<usize, String> {
        let timeout = self.remote.io_timeout;
        let mut last_error = String::new();
        // Renew idle sessions (their leases stay); a device that does not answer is dropped.
        let key = self.remote.key.clone();
        self.devices.retain_mut(|d| {
            if d.last_used.elapsed() < IDLE_RENEW {
                return true;
            }
            match AgentClient::connect(&d.name, &key, timeout) {
                Ok(agent) => {
                    let old = std::mem::replace(&mut d.agent, agent);
                    let _ = old.bye();
                    d.last_used = Instant::now();
                    true
                }
                Err(e) => {
                    last_error = format!("agent {}: {e}", d.name);
                    false
                }
            }
        });
        match self.remote.devices.clone() {
            Devices::Agents(addrs) => {
                for addr in addrs {
                    if self.devices.iter().any(|d| d.name == addr) {
                        continue;
                    }
                    match AgentClient::connect(&addr, &self.remote.key, timeout) {
                        Ok(agent) => self.add(addr, agent, None),
                        Err(e) => last_error = format!("agent {addr}: {e}"),
                    }
                }
            }
            Devices::Tracker {
                tracker,
                device_key,
                count,
                priority,
                lease,
                wait,
            } => {
                let mut attempts = 0;
                while self.devices.len() < count.max(1) && attempts < 2 * count.max(1) {
                    attempts += 1;
                    // The first device is waited for; more are taken only if free now.
                    let wait = if self.devices.is_empty() {
                        wait
                    } else {
                        Duration::from_millis(500)
                    };
                    match self.lease(&tracker, &device_key, priority, lease, wait) {
                        Ok(()) => {}
                        Err((e, give_up)) => {
                            last_error = e;
                            if give_up {
                                break;
                            }
                        }
                    }
                }
            }
        }
        if self.devices.is_empty() {
            return Err(if last_error.is_empty() {
                "no device".into()
            } else {
                last_error
            });
        }
        Ok(self.devices.len())
    }

    /// Leases one device from the tracker and connects to it. The error says whether asking
    /// again is pointless (no device came within the wait, or the tracker is unreachable).
    fn lease(
        &mut self,
        tracker: &str,
        device_key: &str,
        priority: i32,
        lease: Duration,
        wait: Duration,
    ) -> Result<(), (String, bool)> {
        let timeout = self.remote.io_timeout;
        let at_tracker = |e: RpcError| (format!("tracker {tracker}: {e}"), true);
        let mut client =
            TrackerClient::connect(tracker, &self.remote.key, timeout).map_err(at_tracker)?;
        client
            .request(&LeaseRequest {
                device_key: device_key.into(),
                priority,
                lease_ms: lease.as_millis() as u64,
                client: self.remote.client.clone(),
            })
            .map_err(at_tracker)?;
        let granted = client.wait_lease(Some(wait)).map_err(|e| {
            (
                format!(
                    "no device `{device_key}` from tracker {tracker} within {} s: {e}",
                    wait.as_secs()
                ),
                true,
            )
        })?;
        match AgentClient::connect(&granted.address, &self.remote.key, timeout) {
            Ok(agent) => {
                self.add(granted.address, agent, Some(client));
                Ok(())
            }
            // The lease ends with `client`; the tracker drops a dead agent by its heartbeats.
            Err(e) => Err((format!("agent {}: {e}", granted.address), false)),
        }
    }

    fn add(&mut self, name: String, mut agent: AgentClient, lease: Option<TrackerClient>) {
        if self.description.is_none() {
            if let Ok(info) = agent.device_info() {
                self.description = Some(format!("{} ({}) @ {name}", info.cpu_model, info.arch));
            }
        }
        self.devices.push(Device {
            name,
            agent,
            _lease: lease,
            last_used: Instant::now(),
        });
    }

    fn request(&self) -> MeasureRequest {
        MeasureRequest {
            threads: self.options.threads.max(1) as i32,
            number: 1,
            repeat: self.options.repeats.max(1) as u32,
            min_repeat_ms: self.options.min_repeat_ms.ceil() as u32,
            warmup: self.options.warmup as u32,
            timeout_ms: self.options.run_timeout_ms.min(u32::MAX as u64) as u32,
            seed: 1,
            memory_mb: self.remote.memory_mb,
        }
    }

    /// Builds the candidates' kernel libraries (in parallel on this machine's cores).
    fn build_all(&self, task: &Task, candidates: &[Knobs]) -> Vec<BuiltLibrary> {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(candidates.len().max(1));
        let next = Mutex::new(0usize);
        let built: Mutex<Vec<Option<BuiltLibrary>>> = Mutex::new(vec![None; candidates.len()]);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = {
                        let mut n = next.lock().unwrap_or_else(|p| p.into_inner());
                        let i = *n;
                        *n += 1;
                        i
                    };
                    if i >= candidates.len() {
                        return;
                    }
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.build_one(task, &candidates[i])
                    }))
                    .unwrap_or_else(|_| Err("building the candidate panicked".into()));
                    built.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(result);
                });
            }
        });
        built
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .map(|b| b.unwrap_or_else(|| Err("not built".into())))
            .collect()
    }

    /// One candidate's kernel library, as bytes.
    fn build_one(&self, task: &Task, knobs: &Knobs) -> Result<Vec<u8>, String> {
        let (func, inputs) = lower_candidate(task, &self.set.graph, knobs)?;
        let params: Vec<KernelParam> = (0..func.params.len())
            .map(|i| match inputs.get(i) {
                Some(KernelInput::Value(_)) => KernelParam::Input(format!("in{i}")),
                Some(KernelInput::Const(c)) => {
                    KernelParam::Constant(kiln::tensor_bytes(self.set.graph.constant(*c)))
                }
                Some(KernelInput::Table(t)) => KernelParam::Constant(kiln::tensor_bytes(t)),
                None => KernelParam::Output(format!("out{i}")),
            })
            .collect();
        let dir = tempfile::Builder::new()
            .prefix("kiln-candidate-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let path = dir.path().join("candidate.so");
        kiln::compile_kernel_library(
            &func,
            &params,
            &self.target,
            self.options.threads > 1,
            &path,
        )
        .map_err(|e| e.to_string())?;
        std::fs::read(&path).map_err(|e| e.to_string())
    }
}

/// Uploads, times and deletes one library on `device`.
fn measure_on(device: &mut Device, library: &[u8], req: &MeasureRequest) -> Outcome {
    let hash = match device.agent.upload(library) {
        Ok(h) => h,
        // The agent refused this upload (too large, ...): its verdict; the session goes on.
        Err(RpcError::Remote(why)) => {
            return Outcome::Done {
                result: Measured::Error(format!("the device refused the upload: {why}")),
                lost: false,
            }
        }
        Err(e) => return Outcome::Lost(e.to_string()),
    };
    let result = match device.agent.measure(&hash, req) {
        Ok(m) => match m.status {
            MeasureStatus::Ok if !m.seconds.is_empty() => {
                Measured::Times(m.seconds.iter().map(|s| s * 1e3).collect())
            }
            MeasureStatus::Ok => Measured::Error("the device returned no timings".into()),
            MeasureStatus::Crashed => {
                Measured::Error(format!("crashed on the device: {}", m.message))
            }
            MeasureStatus::Timeout => {
                Measured::Error(format!("timed out on the device: {}", m.message))
            }
            MeasureStatus::Error => Measured::Error(format!("failed on the device: {}", m.message)),
        },
        Err(RpcError::Remote(why)) => {
            Measured::Error(format!("the device could not measure it: {why}"))
        }
        Err(e) => return Outcome::Lost(e.to_string()),
    };
    let lost = match device.agent.delete(&hash) {
        Ok(()) | Err(RpcError::Remote(_)) => false,
        Err(_) => true,
    };
    device.last_used = Instant::now();
    Outcome::Done { result, lost }
}

impl Runner for RpcRunner {
    fn measure(
        &mut self,
        workload: &str,
        _first_trial: usize,
        candidates: &[Knobs],
    ) -> Vec<Measured> {
        let Some(task) = self.set.tasks.iter().find(|t| t.key == workload) else {
            let e = format!("the model has no workload {workload}");
            return vec![Measured::Error(e); candidates.len()];
        };
        let built = self.build_all(task, candidates);
        self.measure_libraries(&built)
    }

    fn device(&self) -> Option<String> {
        self.description.clone()
    }
}

impl RpcRunner {
    /// Times libraries built for the devices' target (an `Err` is a candidate that did not
    /// build: it is passed through as its result). What [`Runner::measure`] does after
    /// building; public for libraries built elsewhere (and for tests).
    pub fn measure_libraries(&mut self, built: &[BuiltLibrary]) -> Vec<Measured> {
        let results: Vec<Option<Measured>> = built
            .iter()
            .map(|b| b.as_ref().err().map(|e| Measured::Error(e.clone())))
            .collect();
        let queue: VecDeque<(usize, u32)> = (0..built.len())
            .filter(|&i| results[i].is_none())
            .map(|i| (i, 0))
            .collect();
        let round = Round {
            queue: Mutex::new(queue),
            results: Mutex::new(results),
            requeued: AtomicUsize::new(0),
            lost: Mutex::new(Vec::new()),
        };
        let req = self.request();
        let mut rounds = 0;
        while !lock(&round.queue).is_empty() {
            rounds += 1;
            let connected = if rounds > 2 * MAX_LOSSES as usize {
                Err("devices kept failing".to_string())
            } else {
                self.connect()
            };
            if let Err(why) = connected {
                let mut results = lock(&round.results);
                for (i, _) in lock(&round.queue).drain(..) {
                    results[i] = Some(Measured::Error(format!("no device to measure on: {why}")));
                }
                break;
            }
            // Each device drains the queue on a thread of its own; the lost ones do not return.
            let devices = std::mem::take(&mut self.devices);
            self.devices = std::thread::scope(|s| {
                let handles: Vec<_> = devices
                    .into_iter()
                    .map(|device| s.spawn(|| round.drain(device, built, &req)))
                    .collect();
                handles
                    .into_iter()
                    .filter_map(|h| h.join().ok().flatten())
                    .collect()
            });
            for (name, why) in std::mem::take(&mut *lock(&round.lost)) {
                self.lost_devices += 1;
                eprintln!("note: lost device {name}: {why}");
            }
        }
        self.requeued += round.requeued.into_inner();
        let results = round
            .results
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Measured::Error("not measured".into())))
            .collect()
    }
}

/// The shared state of one round of measurement across devices.
struct Round {
    /// Candidates still to measure, with how many devices each has lost.
    queue: Mutex<VecDeque<(usize, u32)>>,
    results: Mutex<Vec<Option<Measured>>>,
    requeued: AtomicUsize,
    /// Devices lost in this round: name and why.
    lost: Mutex<Vec<(String, String)>>,
}

/// `m` locked; a thread that panicked holding it left whole values behind.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Round {
    /// Measures queued candidates on `device` until the queue is empty (the device comes
    /// back) or the device is lost (`None`; a candidate it had not finished is queued again).
    fn drain(
        &self,
        mut device: Device,
        built: &[BuiltLibrary],
        req: &MeasureRequest,
    ) -> Option<Device> {
        loop {
            let Some((i, losses)) = lock(&self.queue).pop_front() else {
                return Some(device);
            };
            let Some(Ok(library)) = built.get(i) else {
                continue;
            };
            let lost = match measure_on(&mut device, library, req) {
                Outcome::Done { result, lost } => {
                    lock(&self.results)[i] = Some(result);
                    lost.then(|| "the session failed after a measurement".to_string())
                }
                Outcome::Lost(why) if losses + 1 >= MAX_LOSSES => {
                    let e =
                        format!("lost {MAX_LOSSES} devices while measuring it (the last: {why})");
                    lock(&self.results)[i] = Some(Measured::Error(e));
                    Some(why)
                }
                Outcome::Lost(why) => {
                    self.requeued.fetch_add(1, Ordering::SeqCst);
                    lock(&self.queue).push_back((i, losses + 1));
                    Some(why)
                }
            };
            if let Some(why) = lost {
                lock(&self.lost).push((device.name.clone(), why));
                return None;
            }
        }
    }
}

/// The probes ([`crate::device::PROBES`]) compiled as libraries for `target` and timed on the
/// agent's device with `threads` threads: the measured part of its [`DeviceDescription`].
pub fn probe_remotely(
    agent: &mut AgentClient,
    target: &Target,
    threads: usize,
) -> Result<Vec<Probe>, TuneError> {
    let dir = tempfile::Builder::new().prefix("kiln-probes-").tempdir()?;
    let mut probes = vec![];
    for (name, graph) in crate::device::probe_graphs()? {
        let lib = dir.path().join(format!("lib{name}.so"));
        let options = kiln::AotOptions {
            parallel: threads > 1,
            ..kiln::AotOptions::default()
        };
        let failed = |e: String| TuneError::Job(format!("probe {name}: {e}"));
        kiln::aot::compile_library(&graph, target, &options, &lib)
            .map_err(|e| failed(e.to_string()))?;
        let bytes = std::fs::read(&lib)?;
        let hash = agent.upload(&bytes).map_err(|e| failed(e.to_string()))?;
        let req = MeasureRequest {
            threads: threads.max(1) as i32,
            repeat: 5,
            min_repeat_ms: 20,
            timeout_ms: 60_000,
            ..MeasureRequest::default()
        };
        let m = agent
            .measure(&hash, &req)
            .map_err(|e| failed(e.to_string()))?;
        let _ = agent.delete(&hash);
        if m.status != MeasureStatus::Ok || m.seconds.is_empty() {
            return Err(failed(format!("{:?}: {}", m.status, m.message)));
        }
        let mut ms: Vec<f64> = m.seconds.iter().map(|s| s * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        probes.push(Probe {
            name: name.to_string(),
            ms: ms[ms.len() / 2],
        });
    }
    Ok(probes)
}

/// A remote device's whole description: its agent's report and its probes.
pub fn describe_remote(
    agent: &mut AgentClient,
    target: &Target,
    threads: usize,
) -> Result<DeviceDescription, TuneError> {
    let info = agent
        .device_info()
        .map_err(|e| TuneError::Job(format!("device info: {e}")))?;
    let mut d = DeviceDescription::of_agent(target, &info, threads);
    d.probes = probe_remotely(agent, target, threads)?;
    Ok(d)
}
