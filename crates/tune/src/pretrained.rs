//! What ships with Kiln for speed without tuning (`schedules/tuned/`, embedded in
//! `kiln_schedules::tuned`): the pretrained latency model and pre-tuned records per built-in
//! target (TVM's TopHub idea), and [`export`], which adds a tuning log's best records to them.
//!
//! Invariant: a pre-tuned record applies only to its own workload key, target and thread
//! count — `host` borrows the records of the one built-in target that schedules exactly like
//! it (same sketch target, flags the host has; see [`records_target`]) — and among records
//! of several CPUs, one measured on this CPU model wins. The shipped model is checked like any
//! loaded one (same feature lists), so a stale file is an error naming the fix.

use crate::latency::LatencyModel;
use crate::log::{read_log, LogContents, MeasureRecord, Record, TuningLog};
use crate::TuneError;
use kiln::Target;
use kiln_schedules::Knobs;
use std::collections::HashMap;
use std::path::Path;

/// The latency model shipped with Kiln (`None` when this build has none).
pub fn latency_model() -> Result<Option<LatencyModel>, TuneError> {
    match kiln_schedules::tuned::COST_MODEL {
        Some(bytes) => LatencyModel::from_bytes(bytes, "the shipped cost model").map(Some),
        None => Ok(None),
    }
}

/// The built-in target whose records `target` uses: itself when built in, and for `host` the
/// built-in target that runs here with the same sketch target (the most specific one, by ISA
/// flags). `None`: no records can apply (a target file, or a host no built-in target matches).
pub fn records_target(target: &Target) -> Option<String> {
    let shipped = |name: &str| {
        kiln_schedules::tuned::RECORDS
            .iter()
            .any(|(n, _)| *n == name)
    };
    if target.name() != "host" {
        return shipped(target.name()).then(|| target.name().to_string());
    }
    let sketch = target.sketch_target();
    Target::builtin()
        .into_iter()
        .filter(|t| {
            t.name() != "host"
                && shipped(t.name())
                && t.runs_natively()
                && t.sketch_target() == sketch
        })
        .max_by_key(|t| t.isa_flag_count())
        .map(|t| t.name().to_string())
}

/// This machine's CPU model, as pre-tuned records name it.
pub fn host_cpu() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k.trim(), "model name" | "Model").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{model} ({})", std::env::consts::ARCH)
}

/// The shipped records `target` compiles with on `threads` threads (any when `None`): per
/// workload the fastest record measured on `cpu`, else the fastest of any CPU, renamed to
/// `target`'s own name so that [`LogContents::best_schedules`] finds them.
pub fn records(target: &Target, threads: Option<usize>, cpu: &str) -> LogContents {
    let Some(name) = records_target(target) else {
        return LogContents::default();
    };
    let text = kiln_schedules::tuned::RECORDS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, t)| t);
    let all = LogContents::parse(text);
    let mut chosen: HashMap<(String, usize), (bool, f64, MeasureRecord)> = HashMap::new();
    for m in all.measures() {
        if m.target != name || threads.is_some_and(|t| t != m.threads) {
            continue;
        }
        let Some(ms) = m.median_ms() else { continue };
        let here = m.device.as_deref() == Some(cpu);
        let key = (m.workload.clone(), m.threads);
        let better = chosen
            .get(&key)
            .is_none_or(|(h, best, _)| (here, -ms) > (*h, -best));
        if better {
            let mut r = m.clone();
            r.target = target.name().to_string();
            chosen.insert(key, (here, ms, r));
        }
    }
    LogContents {
        records: chosen
            .into_values()
            .map(|(_, _, r)| Record::Measure(r))
            .collect(),
        skipped_lines: vec![],
    }
}

/// How much faster than the default schedule (measured in the same log) a record must be to
/// ship: smaller gains are within measurement noise, and a kernel timed alone can gain what it
/// loses inside the model.
pub const MIN_GAIN: f64 = 0.10;

/// The CPU a record was measured on: the remote device it names (without its address), else
/// `host`.
fn cpu_of(m: &MeasureRecord, host: &str) -> String {
    m.device
        .as_deref()
        .map_or(host, |d| d.split(" @ ").next().unwrap_or(d))
        .to_string()
}

/// Adds the best record of each (workload, threads, CPU) that `log` holds for `target` to the
/// pre-tuned records in `dir` (`dir/<built-in target>.jsonl`, appended) when it beats the
/// default schedule measured in the same log by [`MIN_GAIN`], each naming the CPU it was
/// measured on (`host_cpu` for this machine's records); one already there for the same
/// workload, threads and CPU gets a new record only when it is faster (the file stays
/// append-only; [`records`] takes the fastest). Returns how many records were written.
pub fn export(
    log: &LogContents,
    target: &Target,
    host_cpu: &str,
    dir: &Path,
) -> Result<usize, TuneError> {
    let name = records_target(target).ok_or_else(|| {
        TuneError::Job(format!(
            "no built-in target schedules like `{}`: pre-tuned records are kept per built-in \
             target (tune with --target NAME)",
            target.name()
        ))
    })?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.jsonl"));
    type Key = (String, usize, String);
    let mut have: HashMap<Key, f64> = HashMap::new();
    for m in read_log(&path)?.measures() {
        if let Some(ms) = m.median_ms() {
            let e = have
                .entry((m.workload.clone(), m.threads, cpu_of(m, host_cpu)))
                .or_insert(ms);
            *e = e.min(ms);
        }
    }
    // The default schedule's time per (workload, threads, CPU): a record ships only when it
    // beats it by more than measurement noise.
    let mut default_ms: HashMap<Key, f64> = HashMap::new();
    for m in log.measures().filter(|m| m.target == target.name()) {
        if let (true, Some(ms)) = (m.knobs == Knobs::default(), m.median_ms()) {
            let e = default_ms
                .entry((m.workload.clone(), m.threads, cpu_of(m, host_cpu)))
                .or_insert(ms);
            *e = e.min(ms);
        }
    }
    let mut best: HashMap<Key, &MeasureRecord> = HashMap::new();
    for m in log.measures().filter(|m| m.target == target.name()) {
        let Some(ms) = m.median_ms() else { continue };
        let key = (m.workload.clone(), m.threads, cpu_of(m, host_cpu));
        if best
            .get(&key)
            .is_none_or(|b| b.median_ms().is_none_or(|bm| ms < bm))
        {
            best.insert(key, m);
        }
    }
    let mut best: Vec<(Key, &MeasureRecord)> = best.into_iter().collect();
    best.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = TuningLog::open(&path)?;
    let mut written = 0;
    for (key, m) in best {
        let ms = m.median_ms().unwrap_or(f64::INFINITY);
        let beats_default = default_ms
            .get(&key)
            .is_some_and(|&d| ms * (1.0 + MIN_GAIN) <= d);
        if !beats_default || have.get(&key).is_some_and(|&old| old <= ms) {
            continue;
        }
        let mut r = m.clone();
        r.target = name.clone();
        r.device = Some(key.2);
        out.append(&Record::Measure(r))?;
        written += 1;
    }
    Ok(written)
}
