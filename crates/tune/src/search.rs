//! The search: which task to measure next, and which of its candidates.
//!
//! Per round the task scheduler picks one task: first every task once (its default schedule is
//! always its first candidate, the baseline, then the schedules that won on other devices
//! ([`crate::seeds`]); with a model already trained — a pretrained one — the first round adds
//! only the model's favourite), then the task where the model's weighted latency
//! (`weight x best time`, summed over tasks) can fall most, estimated from how much the task's
//! best improved in its last round. For that task an evolutionary search runs over the cost
//! model's predictions: a population of the best measured candidates and random ones, evolved
//! for a few generations by mutation (one knob changed) and crossover, parents picked by
//! tournament on the predicted score; the batch measured is the best predicted unmeasured
//! candidates plus an ε share of random ones (exploration). The model is retrained whenever the
//! measurements grew by a fifth.
//!
//! After the search, [`Tuner::confirm`] measures the few fastest schedules of each task again,
//! in turn with its default: a schedule's time is the median of its measurements, so a winner
//! of one lucky measurement loses its place.
//!
//! Invariant: the search measures a candidate at most once per task (resumed measurements
//! count; only the confirmation measures again), every measurement is appended to the log
//! before the next round starts, and the best schedule of a task is always one that ran
//! without error.

use crate::features::kernel_features;
use crate::log::{median, now_secs, LogContents, MeasureRecord, Record, TuningLog, WorkloadRecord};
use crate::measure::{Measured, Runner};
use crate::model::{CostModel, Sample};
use crate::seeds::{Seeds, MAX_SEEDS};
use crate::task::{Task, TaskSet};
use crate::TuneError;
use kiln_schedules::{schedule_with, Knobs, SplitMix};
use kiln_tir::Trace;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

/// Search settings (Ansor's, scaled down to a small machine).
#[derive(Clone, Debug, PartialEq)]
pub struct TuneOptions {
    /// Trials (measured candidates) to spend on the model in this run.
    pub trials: usize,
    /// Candidates measured per round.
    pub batch: usize,
    pub population: usize,
    pub generations: usize,
    /// Probability that a child is a mutation (else a crossover).
    pub mutation_prob: f64,
    /// Share of each batch picked at random.
    pub epsilon: f64,
    pub seed: u64,
    /// Target name written to the log (the measurements run on this machine).
    pub target: String,
    /// Threads the kernels are measured with.
    pub threads: usize,
    /// Where the cost model is saved after each training (`None`: not saved).
    pub model_path: Option<PathBuf>,
    /// Per workload, schedules that won on other devices, measured in its first round
    /// ([`crate::seeds`]).
    pub seeds: Seeds,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            trials: 200,
            batch: 16,
            population: 128,
            generations: 3,
            mutation_prob: 0.85,
            epsilon: 0.05,
            seed: 1,
            target: "host".into(),
            threads: 1,
            model_path: None,
            seeds: HashMap::new(),
        }
    }
}

/// What the tuner knows about one task.
#[derive(Clone, Debug, Default)]
pub struct TaskState {
    /// Measured candidates: median ms (over their measurements), or `None` for an error.
    pub measured: HashMap<Knobs, Option<f64>>,
    /// The median of each successful measurement of a candidate.
    times: HashMap<Knobs, Vec<f64>>,
    pub best: Option<(Knobs, f64)>,
    /// The default schedule's time, once measured.
    pub default_ms: Option<f64>,
    pub trials: usize,
    /// Relative improvement of the best in the task's last round.
    last_gain: f64,
    /// Rounds spent on the task (in this run).
    rounds: usize,
    /// Each candidate lowered once: its trace and features.
    lowered: HashMap<Knobs, (Trace, Vec<f32>)>,
}

/// A point of the tuning curve: after `trial` trials, the best time of the task just measured
/// and the model estimate (`sum weight x best`, once every task has a time).
#[derive(Clone, Debug, PartialEq)]
pub struct CurvePoint {
    pub trial: usize,
    pub task: usize,
    pub task_best_ms: f64,
    pub model_ms: Option<f64>,
}

/// Progress after a round.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub trials: usize,
    pub total: usize,
    pub model_ms: Option<f64>,
    pub default_model_ms: Option<f64>,
    pub task: String,
    pub errors: usize,
}

/// What [`Tuner::confirm`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Confirmation {
    /// Tasks whose best schedules were measured again.
    pub tasks: usize,
    pub measurements: usize,
    /// Tasks whose best schedule changed, and those of them now best with the default.
    pub changed: usize,
    pub back_to_default: usize,
}

/// The tuner over one model's tasks.
pub struct Tuner<'a> {
    set: &'a TaskSet,
    options: TuneOptions,
    model: Box<dyn CostModel + 'a>,
    pub states: Vec<TaskState>,
    rng: SplitMix,
    /// Samples the model is trained on: (task, features, median ms or `None` for an error).
    history: Vec<(usize, Vec<f32>, Option<f64>)>,
    trained_on: usize,
    logged_workloads: HashSet<String>,
    pub curve: Vec<CurvePoint>,
    pub trials: usize,
    pub errors: usize,
}

impl std::fmt::Debug for Tuner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tuner")
            .field("trials", &self.trials)
            .finish_non_exhaustive()
    }
}

impl<'a> Tuner<'a> {
    pub fn new(set: &'a TaskSet, options: TuneOptions, model: Box<dyn CostModel + 'a>) -> Self {
        Tuner {
            set,
            rng: SplitMix(options.seed),
            options,
            model,
            states: vec![TaskState::default(); set.tasks.len()],
            history: vec![],
            trained_on: 0,
            logged_workloads: HashSet::new(),
            curve: vec![],
            trials: 0,
            errors: 0,
        }
    }

    /// The trace and features of a candidate, lowered once (a candidate that does not lower
    /// gets an empty trace and zero features).
    fn lowered(&mut self, t: usize, knobs: &Knobs) -> &(Trace, Vec<f32>) {
        let task = &self.set.tasks[t];
        self.states[t]
            .lowered
            .entry(knobs.clone())
            .or_insert_with(|| {
                match schedule_with(&task.dag, task.class, &task.keep, knobs, &task.target) {
                    Ok((trace, func)) => (trace, kernel_features(&func, knobs)),
                    Err(_) => (Trace::default(), vec![0.0; crate::features::FEATURE_COUNT]),
                }
            })
    }

    fn features(&mut self, t: usize, knobs: &Knobs) -> Vec<f32> {
        self.lowered(t, knobs).1.clone()
    }

    /// Takes in one measurement (`None`: an error). A candidate measured again is as fast as
    /// the median of its successful measurements, and the task's best is chosen again.
    fn record(&mut self, t: usize, knobs: &Knobs, ms: Option<f64>) {
        let features = self.features(t, knobs);
        let s = &mut self.states[t];
        s.trials += 1;
        let pooled = match ms {
            Some(ms) => {
                let times = s.times.entry(knobs.clone()).or_default();
                times.push(ms);
                median(times)
            }
            None => s.measured.get(knobs).copied().flatten(),
        };
        s.measured.insert(knobs.clone(), pooled);
        if *knobs == Knobs::default() && pooled.is_some() {
            s.default_ms = pooled;
        }
        s.best = s
            .measured
            .iter()
            .filter_map(|(k, ms)| ms.map(|ms| (k, ms)))
            .min_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)))
            .map(|(k, ms)| (k.clone(), ms));
        self.history.push((t, features, ms));
    }

    /// Takes in the measurements of `log` for these tasks (same target and threads): they are
    /// not measured again, and the model trains on them. Returns how many trials they were:
    /// distinct schedules per task (a confirmation's measurements of a schedule again are
    /// pooled with its first and spent no trial).
    pub fn resume(&mut self, log: &LogContents) -> Result<usize, TuneError> {
        let index: HashMap<&str, usize> = self
            .set
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.key.as_str(), i))
            .collect();
        for r in &log.records {
            if let Record::Workload(w) = r {
                self.logged_workloads.insert(w.workload.clone());
            }
        }
        let mut taken = 0;
        for m in log.measures() {
            if m.target != self.options.target || m.threads != self.options.threads {
                continue;
            }
            let Some(&t) = index.get(m.workload.as_str()) else {
                continue;
            };
            taken += usize::from(!self.states[t].measured.contains_key(&m.knobs));
            self.record(t, &m.knobs, m.median_ms());
        }
        self.retrain(true)?;
        Ok(taken)
    }

    /// Training samples: normalised throughput per task (see [`crate::model`]).
    pub fn samples(&self) -> Vec<Sample> {
        self.history
            .iter()
            .map(|(t, f, ms)| {
                let best = self.states[*t].best.as_ref().map(|b| b.1);
                let label = match (best, ms) {
                    (Some(b), Some(ms)) if *ms > 0.0 => (b / ms) as f32,
                    _ => 0.0,
                };
                Sample {
                    task: *t,
                    features: f.clone(),
                    label,
                    ms: *ms,
                }
            })
            .collect()
    }

    fn retrain(&mut self, force: bool) -> Result<(), TuneError> {
        let n = self.history.len();
        if n == 0 || (!force && (n as f64) < self.trained_on as f64 * 1.2) {
            return Ok(());
        }
        self.model.fit(&self.samples())?;
        self.trained_on = n;
        if let (true, Some(path)) = (self.model.is_trained(), &self.options.model_path) {
            self.model.save(path)?;
        }
        Ok(())
    }

    /// Sets the number of trials the next [`Self::run`] spends.
    pub fn set_trials(&mut self, trials: usize) {
        self.options.trials = trials;
    }

    /// `sum weight x best` over the tasks, once every task has a time.
    pub fn model_ms(&self) -> Option<f64> {
        self.states
            .iter()
            .zip(&self.set.tasks)
            .map(|(s, t)| s.best.as_ref().map(|b| b.1 * t.weight as f64))
            .sum()
    }

    /// `sum weight x default time`, once every default schedule ran.
    pub fn default_model_ms(&self) -> Option<f64> {
        self.states
            .iter()
            .zip(&self.set.tasks)
            .map(|(s, t)| s.default_ms.map(|d| d * t.weight as f64))
            .sum()
    }

    fn unmeasured_left(&self, t: usize) -> bool {
        self.states[t].measured.len() < self.set.tasks[t].space.size().max(1)
    }

    /// The seeds of task `t` (see [`crate::seeds`]).
    fn first_round_seeds(&self, t: usize) -> Vec<Knobs> {
        self.options
            .seeds
            .get(&self.set.tasks[t].key)
            .map_or(vec![], |s| s.iter().take(MAX_SEEDS).cloned().collect())
    }

    /// The task scheduler (see the module doc).
    fn next_task(&self) -> Option<usize> {
        let tasks = &self.set.tasks;
        if let Some(t) = (0..tasks.len()).find(|&t| self.states[t].trials == 0) {
            return Some(t);
        }
        (0..tasks.len())
            .filter(|&t| self.unmeasured_left(t))
            .max_by(|&a, &b| {
                // Expected relative gain: the last round's, but at least an exploration
                // bonus that shrinks with the rounds the task has had.
                let score = |t: usize| {
                    let s = &self.states[t];
                    let best = s.best.as_ref().map_or(f64::MAX / 4.0, |b| b.1);
                    let bonus = 0.5 / (1.0 + s.rounds as f64);
                    best * tasks[t].weight as f64 * s.last_gain.max(bonus)
                };
                score(a).total_cmp(&score(b))
            })
    }

    fn tournament(&mut self, pool: &[(Knobs, f32)]) -> Knobs {
        let a = &pool[self.rng.below(pool.len())];
        let b = &pool[self.rng.below(pool.len())];
        if a.1 >= b.1 {
            a.0.clone()
        } else {
            b.0.clone()
        }
    }

    fn score(&mut self, t: usize, cands: &[Knobs]) -> Result<Vec<f32>, TuneError> {
        let feats: Vec<Vec<f32>> = cands.iter().map(|k| self.features(t, k)).collect();
        self.model.predict(&feats)
    }

    /// The next batch of task `t` (see the module doc).
    fn propose(&mut self, t: usize, n: usize) -> Result<Vec<Knobs>, TuneError> {
        let space = self.set.tasks[t].space.clone();
        let measured = self.states[t].measured.clone();
        let mut batch: Vec<Knobs> = vec![];
        let fresh = |k: &Knobs, batch: &[Knobs]| !measured.contains_key(k) && !batch.contains(k);
        if !measured.contains_key(&Knobs::default()) {
            batch.push(Knobs::default());
        }
        if self.states[t].trials == 0 {
            for k in self.first_round_seeds(t) {
                if batch.len() < n && fresh(&k, &batch) {
                    batch.push(k);
                }
            }
        }
        if self.model.is_trained() {
            // Population: the best measured, then random points.
            let mut ranked: Vec<(&Knobs, f64)> = measured
                .iter()
                .filter_map(|(k, ms)| ms.map(|m| (k, m)))
                .collect();
            ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
            let mut population: Vec<Knobs> = ranked
                .iter()
                .take(self.options.population / 4)
                .map(|(k, _)| (*k).clone())
                .collect();
            while population.len() < self.options.population {
                population.push(space.sample(&mut self.rng));
            }
            let mut seen: HashSet<Knobs> = population.iter().cloned().collect();
            for _ in 0..self.options.generations {
                let scores = self.score(t, &population)?;
                let pool: Vec<(Knobs, f32)> = population.iter().cloned().zip(scores).collect();
                let mut next = Vec::with_capacity(self.options.population);
                let mut sorted = pool.clone();
                sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
                next.extend(
                    sorted
                        .iter()
                        .take(self.options.population / 8)
                        .map(|p| p.0.clone()),
                );
                let mut attempts = 0;
                while next.len() < self.options.population && attempts < 4 * self.options.population
                {
                    attempts += 1;
                    let parent = self.tournament(&pool);
                    let child = if self.rng.unit() < self.options.mutation_prob {
                        space.mutate(&parent, &mut self.rng)
                    } else {
                        let other = self.tournament(&pool);
                        space.crossover(&parent, &other, &mut self.rng)
                    };
                    seen.insert(child.clone());
                    next.push(child);
                }
                population = next;
            }
            // In a fixed order: the run is reproducible from its seed.
            let mut all: Vec<Knobs> = seen.into_iter().filter(|k| fresh(k, &batch)).collect();
            all.sort();
            let scores = self.score(t, &all)?;
            let mut scored: Vec<(Knobs, f32)> = all.into_iter().zip(scores).collect();
            scored.sort_by(|a, b| b.1.total_cmp(&a.1));
            // (A first round — baseline, seeds and favourite — explores nothing.)
            let explore = if self.states[t].trials > 0 && n > 2 {
                ((n as f64) * self.options.epsilon).ceil() as usize
            } else {
                0
            };
            for (k, _) in scored {
                if batch.len() + explore >= n {
                    break;
                }
                if fresh(&k, &batch) {
                    batch.push(k);
                }
            }
        }
        // Random points: all of an untrained model's batch, the ε share otherwise.
        let mut tries = 0;
        while batch.len() < n && tries < 64 * n {
            tries += 1;
            let k = space.sample(&mut self.rng);
            if fresh(&k, &batch) {
                batch.push(k);
            }
        }
        Ok(batch)
    }

    /// Runs rounds until `options.trials` trials are spent (or every space is exhausted),
    /// appending every measurement to `log`.
    pub fn run(
        &mut self,
        runner: &mut dyn Runner,
        log: &mut TuningLog,
        on_round: &mut dyn FnMut(&Progress),
    ) -> Result<(), TuneError> {
        let total = self.options.trials;
        let mut spent = 0;
        while spent < total {
            let Some(t) = self.next_task() else { break };
            // A task's first round is small: the baseline and the model's favourite when the
            // model is already trained (a pretrained one knows unseen tasks), else the
            // baseline and random points (half a batch).
            let seeds = self.first_round_seeds(t).len();
            let batch_size = match (self.states[t].trials, self.model.is_trained()) {
                (0, true) => 2 + seeds,
                (0, false) => self.options.batch.div_ceil(2).max(2 + seeds),
                _ => self.options.batch,
            };
            let n = batch_size.min(total - spent).max(1);
            let batch = self.propose(t, n)?;
            if batch.is_empty() {
                self.states[t].last_gain = 0.0;
                if (0..self.set.tasks.len()).all(|t| !self.unmeasured_left(t)) {
                    break;
                }
                continue;
            }
            let task: &Task = &self.set.tasks[t];
            if self.logged_workloads.insert(task.key.clone()) {
                log.append(&Record::Workload(WorkloadRecord {
                    workload: task.key.clone(),
                    class: task.class,
                    desc: task.desc.clone(),
                }))?;
            }
            let before = self.states[t].best.as_ref().map(|b| b.1);
            let results = runner.measure(&task.key, self.trials, &batch);
            for (knobs, result) in batch.iter().zip(results) {
                self.take_result(t, knobs, result, runner.device(), log)?;
                self.trials += 1;
                spent += 1;
                let task_best_ms = self.states[t].best.as_ref().map_or(f64::NAN, |b| b.1);
                self.curve.push(CurvePoint {
                    trial: self.trials,
                    task: t,
                    task_best_ms,
                    model_ms: self.model_ms(),
                });
            }
            self.states[t].rounds += 1;
            let after = self.states[t].best.as_ref().map(|b| b.1);
            self.states[t].last_gain = match (before, after) {
                (Some(b), Some(a)) if b > 0.0 => (b - a) / b,
                _ => 1.0,
            };
            self.retrain(false)?;
            on_round(&Progress {
                trials: spent,
                total,
                model_ms: self.model_ms(),
                default_model_ms: self.default_model_ms(),
                task: self.set.tasks[t].desc.clone(),
                errors: self.errors,
            });
        }
        Ok(())
    }

    /// Appends one candidate's result to the log and takes it in.
    fn take_result(
        &mut self,
        t: usize,
        knobs: &Knobs,
        result: Measured,
        device: Option<String>,
        log: &mut TuningLog,
    ) -> Result<(), TuneError> {
        let (times_ms, error) = match result {
            Measured::Times(t) => (t, None),
            Measured::Error(e) => (vec![], Some(e)),
        };
        let trace = self.lowered(t, knobs).0.clone();
        let ms = if error.is_none() {
            median(&times_ms)
        } else {
            None
        };
        if ms.is_none() {
            self.errors += 1;
        }
        log.append(&Record::Measure(MeasureRecord {
            workload: self.set.tasks[t].key.clone(),
            target: self.options.target.clone(),
            threads: self.options.threads,
            knobs: knobs.clone(),
            trace,
            times_ms,
            error,
            timestamp: now_secs(),
            device,
        }))?;
        self.record(t, knobs, ms);
        Ok(())
    }

    /// Measures again the `top` fastest schedules of every task that has one faster than its
    /// default, together with the default, `rounds` times in turn (default, the others,
    /// default, ...), so that a schedule that won on one lucky measurement (a quiet moment, a
    /// noisy neighbour during the default's) is judged on the median of several. The
    /// measurements are appended to the log like any other (they are not search trials).
    pub fn confirm(
        &mut self,
        runner: &mut dyn Runner,
        log: &mut TuningLog,
        top: usize,
        rounds: usize,
    ) -> Result<Confirmation, TuneError> {
        let mut report = Confirmation::default();
        if top == 0 || rounds == 0 {
            return Ok(report);
        }
        for t in 0..self.set.tasks.len() {
            let s = &self.states[t];
            let (Some((before, best_ms)), Some(default_ms)) = (s.best.clone(), s.default_ms) else {
                continue;
            };
            if before == Knobs::default() || best_ms >= default_ms {
                continue;
            }
            let mut ranked: Vec<(&Knobs, f64)> = s
                .measured
                .iter()
                .filter(|(k, _)| **k != Knobs::default())
                .filter_map(|(k, ms)| ms.map(|ms| (k, ms)))
                .collect();
            ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
            let mut group = vec![Knobs::default()];
            group.extend(ranked.iter().take(top).map(|(k, _)| (*k).clone()));
            let batch: Vec<Knobs> = (0..rounds).flat_map(|_| group.clone()).collect();
            let key = self.set.tasks[t].key.clone();
            let results = runner.measure(&key, self.trials, &batch);
            for (knobs, result) in batch.iter().zip(results) {
                self.take_result(t, knobs, result, runner.device(), log)?;
                report.measurements += 1;
            }
            report.tasks += 1;
            let after = self.states[t].best.as_ref().map(|b| &b.0);
            if after != Some(&before) {
                report.changed += 1;
                if after == Some(&Knobs::default()) {
                    report.back_to_default += 1;
                }
            }
        }
        Ok(report)
    }

    /// The first trial of this run after which the model estimate stayed within `1 + tol` of
    /// its final value.
    pub fn trials_to_within(&self, tol: f64) -> Option<usize> {
        let last = self.curve.iter().rev().find_map(|p| p.model_ms)?;
        self.curve
            .iter()
            .find(|p| p.model_ms.is_some_and(|m| m <= last * (1.0 + tol)))
            .map(|p| p.trial)
    }
}
