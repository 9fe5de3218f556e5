//! The tuning log: append-only JSON lines, one record per line.
//!
//! Three kinds of record share the file (TVM's workload and record tables): a `workload` record
//! the first time a workload is tuned (its key, class and a readable description), one
//! `measure` record per measured candidate (workload key, target, threads, knobs, the trace to
//! replay, the measured times or the error, a Unix timestamp), and a `device` record when a
//! run starts on this machine: the device as its probes found it then, which describes the
//! measurements after it (a shared machine is not equally fast every hour).
//!
//! Invariant: a record is appended as one `write` of one complete line (the file is opened in
//! append mode) and flushed to disk before [`TuningLog::append`] returns, so a `kill -9` loses at
//! most the record being written and never touches earlier lines. Reading skips (and counts) a
//! line that does not parse — at most the torn last line after a kill — and the first append
//! after opening terminates such a line, so it never glues onto a new record.

use crate::device::DeviceDescription;
use kiln_schedules::{Knobs, OpClass};
use kiln_tir::Trace;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Why the log could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("tuning log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tuning log {path}: cannot encode a record: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// A workload seen by the tuner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    pub workload: String,
    pub class: OpClass,
    /// The ops and types of the workload, for people reading the log.
    pub desc: String,
}

/// One measured candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasureRecord {
    pub workload: String,
    /// The target name the candidate was built and run for.
    pub target: String,
    /// Threads the kernel ran with.
    pub threads: usize,
    pub knobs: Knobs,
    pub trace: Trace,
    /// Per-call times of each repeat, in milliseconds (empty on error).
    pub times_ms: Vec<f64>,
    /// Why the candidate failed to build or run (`None`: it ran).
    pub error: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
    /// The remote device it was measured on (`None`: the machine that tuned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl MeasureRecord {
    /// The median of the repeats, when the candidate ran.
    pub fn median_ms(&self) -> Option<f64> {
        if self.error.is_some() {
            return None;
        }
        median(&self.times_ms)
    }
}

/// The fastest schedule of a workload in a log ([`LogContents::best`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BestSchedule<'a> {
    /// Its latest measurement (knobs and trace).
    pub record: &'a MeasureRecord,
    /// The median over its measurements of their medians, milliseconds.
    pub ms: f64,
    /// How many times it was measured.
    pub measurements: usize,
}

/// The median of `times` (the upper one of an even count), `None` when empty.
pub fn median(times: &[f64]) -> Option<f64> {
    if times.is_empty() {
        return None;
    }
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    Some(t[t.len() / 2])
}

/// The device a run measured on, described when the run started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The target and thread count the run measured with (its measurements' own).
    pub target: String,
    pub threads: usize,
    pub description: DeviceDescription,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
}

/// A line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Workload(WorkloadRecord),
    Measure(MeasureRecord),
    Device(DeviceRecord),
}

/// The records of a log file and how many lines were skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogContents {
    pub records: Vec<Record>,
    /// Lines that did not parse (a torn last line after a kill; anything else is reported).
    pub skipped_lines: Vec<usize>,
}

impl LogContents {
    /// The records of a log's text (lines that do not parse are skipped and counted).
    pub fn parse(text: &str) -> LogContents {
        let mut contents = LogContents::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(line) {
                Ok(r) => contents.records.push(r),
                Err(_) => contents.skipped_lines.push(i + 1),
            }
        }
        contents
    }

    /// The measurements, in log order.
    pub fn measures(&self) -> impl Iterator<Item = &MeasureRecord> {
        self.records.iter().filter_map(|r| match r {
            Record::Measure(m) => Some(m),
            Record::Workload(_) | Record::Device(_) => None,
        })
    }

    /// Every successful schedule's measurements pooled per `key_of(record)` (records it maps
    /// to `None` left out) and knobs: a schedule is as fast as the median of its measurements'
    /// medians, and stands for its latest record.
    pub fn pooled<'a, K: std::hash::Hash + Eq>(
        &'a self,
        key_of: impl Fn(&'a MeasureRecord) -> Option<K>,
    ) -> Vec<(K, BestSchedule<'a>)> {
        let mut pooled: HashMap<(K, &Knobs), (Vec<f64>, &MeasureRecord)> = HashMap::new();
        for m in self.measures() {
            let (Some(ms), Some(key)) = (m.median_ms(), key_of(m)) else {
                continue;
            };
            let e = pooled.entry((key, &m.knobs)).or_insert((vec![], m));
            e.0.push(ms);
            e.1 = m;
        }
        pooled
            .into_iter()
            .filter_map(|((key, _), (medians, record))| {
                let ms = median(&medians)?;
                Some((
                    key,
                    BestSchedule {
                        record,
                        ms,
                        measurements: medians.len(),
                    },
                ))
            })
            .collect()
    }

    /// Per workload, the fastest schedule (knobs) measured for `target` (on any thread count
    /// when `threads` is `None`). A schedule measured more than once (a confirmation, a
    /// resumed run) is as fast as the median of its measurements, so one lucky run among
    /// slower ones does not make it the best.
    pub fn best(&self, target: &str, threads: Option<usize>) -> HashMap<String, BestSchedule<'_>> {
        let schedules = self.pooled(|m| {
            (m.target == target && threads.is_none_or(|t| t == m.threads))
                .then_some((m.workload.as_str(), m.threads))
        });
        let mut best: HashMap<String, BestSchedule<'_>> = HashMap::new();
        for (_, schedule) in schedules {
            let better = best
                .get(&schedule.record.workload)
                .is_none_or(|b| (schedule.ms, &schedule.record.knobs) < (b.ms, &b.record.knobs));
            if better {
                best.insert(schedule.record.workload.clone(), schedule);
            }
        }
        best
    }

    /// The traces of [`Self::best`], as the compiler takes them. A schedule tuned on one
    /// thread count can be slow on another (it may have no parallel loop at all), so a compile
    /// for a known thread count takes only records measured with it.
    pub fn best_schedules(&self, target: &str, threads: Option<usize>) -> kiln::TunedSchedules {
        kiln::TunedSchedules {
            traces: self
                .best(target, threads)
                .into_iter()
                .map(|(k, b)| (k, b.record.trace.clone()))
                .collect(),
        }
    }
}

/// Reads every record of the log at `path` (a missing file is an empty log).
pub fn read_log(path: &Path) -> Result<LogContents, LogError> {
    let io = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    Ok(LogContents::parse(&text))
}

/// A log open for appending.
#[derive(Debug)]
pub struct TuningLog {
    path: PathBuf,
    file: File,
    /// The file did not end with a newline when opened: the first append starts a new line.
    torn_tail: bool,
}

impl TuningLog {
    /// Opens (creating) the log at `path` for appending.
    pub fn open(path: &Path) -> Result<TuningLog, LogError> {
        let io = |source| LogError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let torn_tail = if len == 0 {
            false
        } else {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1)).map_err(io)?;
            file.read_exact(&mut last).map_err(io)?;
            last[0] != b'\n'
        };
        Ok(TuningLog {
            path: path.to_path_buf(),
            file,
            torn_tail,
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record as one line and flushes it to disk.
    pub fn append(&mut self, record: &Record) -> Result<(), LogError> {
        let mut line = if self.torn_tail {
            b"\n".to_vec()
        } else {
            vec![]
        };
        serde_json::to_writer(&mut line, record).map_err(|source| LogError::Encode {
            path: self.path.clone(),
            source,
        })?;
        line.push(b'\n');
        let io = |source| LogError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.torn_tail = false;
        Ok(())
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(workload: &str, ms: f64, error: Option<&str>) -> Record {
        measure_with(workload, Knobs::default(), ms, error)
    }

    fn measure_with(workload: &str, knobs: Knobs, ms: f64, error: Option<&str>) -> Record {
        Record::Measure(MeasureRecord {
            workload: workload.into(),
            target: "host".into(),
            threads: 1,
            knobs,
            trace: Trace::default(),
            times_ms: if error.is_some() { vec![] } else { vec![ms] },
            error: error.map(String::from),
            timestamp: 1,
            device: None,
        })
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_terminated_before_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut log = TuningLog::open(&path).unwrap();
        log.append(&measure("a", 2.0, None)).unwrap();
        log.append(&measure("a", 1.0, None)).unwrap();
        drop(log);
        // A kill in the middle of a write leaves part of a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"kind":"measure","workload":"b","tar"#)
            .unwrap();
        drop(f);
        let read = read_log(&path).unwrap();
        assert_eq!(read.records.len(), 2);
        assert_eq!(read.skipped_lines, vec![3]);
        let mut log = TuningLog::open(&path).unwrap();
        log.append(&measure("b", 3.0, Some("crashed"))).unwrap();
        log.append(&measure("b", 4.0, None)).unwrap();
        let read = read_log(&path).unwrap();
        assert_eq!(read.records.len(), 4);
        assert_eq!(read.skipped_lines, vec![3]);
        // Both of `a`'s measurements are of one schedule: it is as fast as their median.
        let best = read.best("host", None);
        assert_eq!((best["a"].ms, best["a"].measurements), (2.0, 2));
        assert_eq!(best["b"].ms, 4.0);
        assert!(read.best("other", None).is_empty());
        assert_eq!(read.best_schedules("host", Some(1)).traces.len(), 2);
        assert!(read.best_schedules("host", Some(2)).traces.is_empty());
    }

    #[test]
    fn a_schedule_measured_again_is_as_fast_as_the_median_of_its_measurements() {
        let fast_once = Knobs {
            row_tile: Some(4),
            ..Knobs::default()
        };
        let steady = Knobs {
            row_tile: Some(2),
            ..Knobs::default()
        };
        let mut text = String::new();
        for (knobs, ms) in [
            (&fast_once, 1.0),
            (&steady, 2.0),
            (&fast_once, 3.0),
            (&fast_once, 3.2),
        ] {
            let r = measure_with("w", knobs.clone(), ms, None);
            text.push_str(&serde_json::to_string(&r).unwrap());
            text.push('\n');
        }
        let log = LogContents::parse(&text);
        let best = log.best("host", Some(1));
        assert_eq!(best["w"].record.knobs, steady);
        assert_eq!((best["w"].ms, best["w"].measurements), (2.0, 1));
    }
}
