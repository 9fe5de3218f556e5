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

/// And how many milliseconds per call it must save: below a microsecond, timings (alone and
/// inside the model) are at their clock's resolution.
pub const MIN_SAVING_MS: f64 = 0.001;

/// Whether a schedule taking `ms` beats a default taking `default_ms` by more than noise
/// ([`MIN_GAIN`] and [`MIN_SAVING_MS`]).
pub fn beats_default(ms: f64, default_ms: f64) -> bool {
    ms * (1.0 + MIN_GAIN) <= default_ms && default_ms - ms >= MIN_SAVING_MS
}

/// The CPU a record was measured on: the remote device it names (without its address), else
/// `host`.
fn cpu_of(m: &MeasureRecord, host: &str) -> String {
    m.device
        .as_deref()
        .map_or(host, |d| d.split(" @ ").next().unwrap_or(d))
        .to_string()
}

/// A (workload, threads, CPU) that pre-tuned records are kept for.
type RecordKey = (String, usize, String);

/// The records of `log` for `target` that may ship: per (workload, threads, CPU) the fastest
/// schedule when it beats the default schedule measured in the same log ([`beats_default`])
/// (each schedule as fast as the median of its measurements), with its time.
pub fn export_candidates(
    log: &LogContents,
    target: &Target,
    host_cpu: &str,
) -> Vec<(MeasureRecord, f64)> {
    let schedules = log.pooled(|m| {
        (m.target == target.name()).then(|| (m.workload.clone(), m.threads, cpu_of(m, host_cpu)))
    });
    let mut default_ms: HashMap<RecordKey, f64> = HashMap::new();
    let mut best: HashMap<RecordKey, (f64, &MeasureRecord)> = HashMap::new();
    for (key, schedule) in schedules {
        let (ms, m) = (schedule.ms, schedule.record);
        if m.knobs == Knobs::default() {
            default_ms.insert(key.clone(), ms);
        }
        if best
            .get(&key)
            .is_none_or(|(b, r)| (ms, &m.knobs) < (*b, &r.knobs))
        {
            best.insert(key, (ms, m));
        }
    }
    let mut out: Vec<(RecordKey, MeasureRecord, f64)> = best
        .into_iter()
        .filter(|(key, (ms, _))| default_ms.get(key).is_some_and(|&d| beats_default(*ms, d)))
        .map(|(key, (ms, m))| {
            let mut r = m.clone();
            r.device = Some(key.2.clone());
            (key, r, ms)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, r, ms)| (r, ms)).collect()
}

/// Adds `candidates` (from [`export_candidates`], less those the caller's check inside the
/// model rejected, [`crate::validate`]) to the pre-tuned records in `dir`
/// (`dir/<built-in target>.jsonl`, appended), each naming the CPU it was measured on
/// (`host_cpu` for this machine's records); one already there for the same workload, threads
/// and CPU gets a new record only when it is faster (the file stays append-only; [`records`]
/// takes the fastest). Returns how many records were written.
pub fn export(
    candidates: &[(MeasureRecord, f64)],
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
    let mut have: HashMap<RecordKey, f64> = HashMap::new();
    for m in read_log(&path)?.measures() {
        if let Some(ms) = m.median_ms() {
            let e = have
                .entry((m.workload.clone(), m.threads, cpu_of(m, host_cpu)))
                .or_insert(ms);
            *e = e.min(ms);
        }
    }
    let mut out = TuningLog::open(&path)?;
    let mut written = 0;
    for (r, ms) in candidates {
        let key = (r.workload.clone(), r.threads, cpu_of(r, host_cpu));
        if have.get(&key).is_some_and(|&old| old <= *ms) {
            continue;
        }
        let mut r = r.clone();
        r.target = name.clone();
        out.append(&Record::Measure(r))?;
        written += 1;
    }
    Ok(written)
}
