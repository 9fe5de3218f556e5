//! Remote tuning on loopback: a tracker, an x86-64 agent and an aarch64 agent under
//! qemu-aarch64 registered with it; a bundled model tuned through the tracker on each, and the
//! best records of each log compiled into libraries that must match the model's reference
//! outputs (run through C, under qemu for aarch64). Timings under qemu mean nothing: there this
//! checks the protocol and the results. And a device killed in the middle of a batch: its
//! candidates are measured on the other device, each exactly once.
//!
//! Invariant: as in `aot.rs`, the aarch64 parts need the cross tools and skip with a notice
//! without them, unless `KILN_REQUIRE_CROSS=1` (CI); the agents need libcrypto, and their absence
//! skips with a notice unless `KILN_REQUIRE_AGENT=1` (CI).

mod c_check;

use c_check::*;
use kiln::{AotOptions, Target};
use kiln_agent::LocalAgent;
use kiln_rpc::tracker::{Tracker, TrackerHandle, TrackerOptions};
use kiln_rpc::Key;
use kiln_tune::measure::{MeasureOptions, Measured, ModelSpec, Runner};
use kiln_tune::{Devices, RemoteOptions, RpcRunner, TuneOptions, Tuner, TuningLog};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const KEY: &[u8] = b"remote tuning test key, 32 bytes";

/// The agent for `target`, or `None` (with a notice) where it cannot be built or run here.
fn agent_binary(target: &Target, dir: &Path) -> Option<PathBuf> {
    let require = std::env::var("KILN_REQUIRE_AGENT").as_deref() == Ok("1");
    let bin = dir.join(format!("kiln-agent-{}", target.name()));
    match kiln_agent::build(target, &bin) {
        Ok(_) => Some(bin),
        Err(e) if !require => {
            println!(
                "notice: no agent for {} here, this part skips: {e}",
                target.name()
            );
            None
        }
        Err(e) => panic!("KILN_REQUIRE_AGENT=1 and the agent does not build: {e}"),
    }
}

/// Starts `bin` (through the target's runner, e.g. qemu) registered with `tracker` under
/// `device_key`.
fn start_agent(
    target: &Target,
    bin: &Path,
    dir: &Path,
    tracker: &TrackerHandle,
    device_key: &str,
) -> LocalAgent {
    let key_file = dir.join("key");
    std::fs::write(&key_file, KEY).unwrap();
    let work = dir.join(format!("work-{device_key}-{}", std::process::id()));
    let at = tracker.addr().to_string();
    let args = ["--tracker", &at, "--device-key", device_key];
    LocalAgent::start(target.runner(), bin, &key_file, &work, &args).unwrap()
}

fn tracker() -> TrackerHandle {
    std::env::set_var("KILN_TRACKER_QUIET", "1");
    let options = TrackerOptions {
        heartbeat: Duration::from_millis(1000),
        ..TrackerOptions::default()
    };
    Tracker::bind("127.0.0.1:0", Key::new(KEY).unwrap(), options)
        .unwrap()
        .spawn()
        .unwrap()
}

/// Waits until `n` devices of `device_key` are registered.
fn wait_for_devices(t: &TrackerHandle, device_key: &str, n: usize) {
    let start = Instant::now();
    while t
        .status()
        .devices
        .iter()
        .filter(|d| d.device_key == device_key)
        .count()
        < n
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{n} `{device_key}` device(s) did not register: {:?}",
            t.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dscnn() -> Case {
    case(&kiln_tests::tests_dir().join("models"), "dscnn_kws")
}

fn spec(c: &Case) -> ModelSpec {
    ModelSpec {
        path: c.model.clone(),
        input_shapes: vec![],
        rewrite: true,
        layout: "auto".into(),
    }
}

fn remote(t: &TrackerHandle, device_key: &str, count: usize) -> RemoteOptions {
    RemoteOptions {
        key: Key::new(KEY).unwrap(),
        devices: Devices::Tracker {
            tracker: t.addr().to_string(),
            device_key: device_key.into(),
            count,
            priority: 0,
            lease: Duration::from_secs(600),
            wait: Duration::from_secs(60),
        },
        io_timeout: Duration::from_secs(60),
        client: "remote tuning test".into(),
        memory_mb: 256,
    }
}

/// Tunes dscnn_kws for `target` on the tracker's `device_key` devices, then compiles its best
/// records and checks the library against the reference outputs through C.
fn tune_and_check(t: &TrackerHandle, target: &Target, device_key: &str, dir: &Path) {
    let c = dscnn();
    let options = MeasureOptions {
        target: target.name().into(),
        min_repeat_ms: 1.0,
        repeats: 2,
        run_timeout_ms: 60_000,
        ..MeasureOptions::default()
    };
    let mut runner =
        RpcRunner::new(&spec(&c), target.clone(), options, remote(t, device_key, 1)).unwrap();
    let model = kiln::load_onnx(&c.model, &Default::default()).unwrap();
    let set = kiln_tune::extract_tasks(&model.graph, &spec(&c).graph_options(), target).unwrap();
    let trials = 12;
    let tune = TuneOptions {
        trials,
        batch: 4,
        target: target.name().into(),
        threads: 1,
        ..TuneOptions::default()
    };
    let mut tuner = Tuner::new(&set, tune, Box::new(kiln_tune::XgbCostModel::new()));
    let log_path = dir.join(format!("{device_key}.jsonl"));
    let mut log = TuningLog::open(&log_path).unwrap();
    tuner.run(&mut runner, &mut log, &mut |_| {}).unwrap();
    drop(log);
    // Its devices' leases end with the runner.
    drop(runner);

    let contents = kiln_tune::read_log(&log_path).unwrap();
    let measured: Vec<_> = contents.measures().collect();
    assert_eq!(measured.len(), trials, "one record per trial");
    for r in &measured {
        assert_eq!(r.error, None, "{device_key}: a candidate failed: {r:?}");
        assert_eq!(r.target, target.name());
        assert!(r.times_ms.iter().all(|&t| t > 0.0), "{r:?}");
        let device = r.device.as_deref().unwrap_or_default();
        assert!(
            device.contains(if target.name().starts_with("aarch64") {
                "(aarch64)"
            } else {
                "(x86_64)"
            }),
            "{device}"
        );
    }
    let schedules = contents.best_schedules(target.name(), Some(1));
    assert!(!schedules.traces.is_empty(), "no tuned schedule to apply");
    let aot = AotOptions {
        parallel: false,
        schedules,
        ..AotOptions::default()
    };
    let runner_bin = dir.join(format!("run_model-{}", target.name()));
    build_runner(target.linker(), &runner_bin);
    check_through_c_with(&c, target, &aot, &runner_bin, target.runner(), dir);

    // The device described through its agent: its report, and every probe timed there.
    let key = Key::new(KEY).unwrap();
    let mut tracker =
        kiln_rpc::tracker::TrackerClient::connect(&t.addr().to_string(), &key, T).unwrap();
    tracker
        .request(&kiln_rpc::tracker::LeaseRequest {
            device_key: device_key.into(),
            priority: 0,
            lease_ms: 600_000,
            client: "describe".into(),
        })
        .unwrap();
    let lease = tracker.wait_lease(Some(T)).unwrap();
    let mut agent = kiln_rpc::AgentClient::connect(&lease.address, &key, T).unwrap();
    let d = kiln_tune::remote::describe_remote(&mut agent, target, 1).unwrap();
    let arch = if target.name().starts_with("aarch64") {
        "aarch64"
    } else {
        "x86_64"
    };
    assert_eq!(d.arch, arch);
    assert_eq!(d.probes.len(), kiln_tune::device::PROBES.len());
    assert!(d.probes.iter().all(|p| p.ms > 0.0), "{d:?}");
    assert_eq!(tracker.release().unwrap(), "released");
}

const T: Duration = Duration::from_secs(60);

#[test]
fn a_bundled_model_tuned_through_the_tracker_on_x86_64_and_aarch64_agents_matches_its_outputs() {
    let dir = scratch("remote-tuning");
    let t = tracker();
    let host = Target::named("x86_64-linux-gnu").unwrap();
    let arm = Target::named("aarch64-linux-gnu").unwrap();
    let Some(x86_bin) = agent_binary(&host, &dir) else {
        return;
    };
    let _x86 = start_agent(&host, &x86_bin, &dir, &t, "x86");
    let arm_agent = cross_tools_or_skip(&arm)
        .then(|| agent_binary(&arm, &dir))
        .flatten()
        .map(|bin| start_agent(&arm, &bin, &dir, &t, "arm"));
    wait_for_devices(&t, "x86", 1);
    tune_and_check(&t, &host, "x86", &dir);
    if arm_agent.is_some() {
        wait_for_devices(&t, "arm", 1);
        tune_and_check(&t, &arm, "arm", &dir);
    }
    // Every lease ended with its runner.
    let start = Instant::now();
    while !t.status().leases.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            t.status()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_device_killed_mid_batch_has_its_candidates_measured_on_another_once_each() {
    let dir = scratch("remote-kill");
    let t = tracker();
    let host = Target::named("x86_64-linux-gnu").unwrap();
    let Some(bin) = agent_binary(&host, &dir) else {
        return;
    };
    let mut doomed = start_agent(&host, &bin, &dir, &t, "pool");
    let _survivor = start_agent(&host, &bin, &dir, &t, "pool");
    wait_for_devices(&t, "pool", 2);
    let c = dscnn();
    // Long enough timings that the kill lands mid-batch.
    let options = MeasureOptions {
        target: host.name().into(),
        min_repeat_ms: 40.0,
        repeats: 3,
        ..MeasureOptions::default()
    };
    let mut runner =
        RpcRunner::new(&spec(&c), host.clone(), options, remote(&t, "pool", 2)).unwrap();
    assert_eq!(runner.connect().unwrap(), 2);
    let model = kiln::load_onnx(&c.model, &Default::default()).unwrap();
    let set = kiln_tune::extract_tasks(&model.graph, &spec(&c).graph_options(), &host).unwrap();
    let task = set.tasks.iter().max_by_key(|t| t.weight).unwrap();
    let mut rng = kiln_schedules::SplitMix(7);
    let candidates: Vec<_> = (0..12).map(|_| task.space.sample(&mut rng)).collect();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let _ = doomed.child.kill();
        let _ = doomed.child.wait();
    });
    let results = runner.measure(&task.key, 0, &candidates);
    killer.join().unwrap();
    assert_eq!(results.len(), candidates.len());
    for r in &results {
        assert!(
            matches!(r, Measured::Times(t) if t.len() == 3),
            "{results:?}"
        );
    }
    assert_eq!(runner.lost_devices, 1, "the killed device was noticed");
    assert!(
        runner.requeued >= 1,
        "its candidate in flight went to the other device"
    );
    // The tracker dropped the killed device; the runner measures on with the other.
    let more = runner.measure(&task.key, 12, &candidates[..2]);
    assert!(
        more.iter().all(|r| matches!(r, Measured::Times(_))),
        "{more:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A library with the model C ABI whose run misbehaves (`crates/agent/tests/fake_model.c`).
fn fake_library(dir: &Path, name: &str, body: &str) -> Result<Vec<u8>, String> {
    let lib = dir.join(format!("lib{name}.so"));
    let src = kiln_tests::tests_dir().join("../crates/agent/tests/fake_model.c");
    let ok = Command::new("cc")
        .args(["-shared", "-fPIC", "-O0"])
        .arg(format!("-DFAKE_BODY={body}"))
        .arg("-o")
        .arg(&lib)
        .arg(&src)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot build the {name} library");
    Ok(std::fs::read(lib).unwrap())
}

#[test]
fn candidates_that_crash_hang_or_exhaust_memory_are_errors_and_the_runner_goes_on() {
    let dir = scratch("remote-faults");
    let t = tracker();
    let host = Target::named("x86_64-linux-gnu").unwrap();
    let Some(bin) = agent_binary(&host, &dir) else {
        return;
    };
    let _agent = start_agent(&host, &bin, &dir, &t, "faults");
    wait_for_devices(&t, "faults", 1);
    let options = MeasureOptions {
        target: host.name().into(),
        run_timeout_ms: 1500,
        ..MeasureOptions::default()
    };
    let mut runner =
        RpcRunner::new(&spec(&dscnn()), host, options, remote(&t, "faults", 1)).unwrap();
    let libraries = [
        fake_library(&dir, "segfault", "*(volatile int *)0 = 1"),
        fake_library(&dir, "hang", "for (;;) {}"),
        fake_library(
            &dir,
            "hungry",
            "for (;;) { char *p = malloc(1 << 26); memset(p, 1, 1 << 26); }",
        ),
        Err("did not build".into()),
        fake_library(&dir, "fine", ""),
    ];
    let results = runner.measure_libraries(&libraries);
    let says = |i: usize, what: &str| {
        assert!(
            matches!(&results[i], Measured::Error(e) if e.contains(what)),
            "candidate {i}: {:?}",
            results[i]
        )
    };
    says(0, "crashed on the device");
    says(1, "timed out on the device");
    says(2, "crashed on the device");
    says(3, "did not build");
    assert!(
        matches!(&results[4], Measured::Times(t) if !t.is_empty()),
        "{results:?}"
    );
    assert_eq!(
        runner.lost_devices, 0,
        "misbehaving candidates cost no device"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
