//! The latency model, its training data and whole-model prediction, on the bundled DS-CNN.
//!
//! Latencies here follow a synthetic law of the kernels' features and the device's (no timing
//! on this shared machine): the tests check that the model learns what the features carry,
//! that devices are told apart, that a pretrained model adapts to a new device, and that the
//! plumbing (logs joined with tasks, schedules a compile would use) is right.

mod common;

use kiln_schedules::{schedule_with, Knobs, SplitMix};
use kiln_tir::Trace;
use kiln_tune::dataset::{collect, device_name};
use kiln_tune::device::{DeviceDescription, Probe};
use kiln_tune::evaluate::holdout_tasks;
use kiln_tune::features::{feature_names, kernel_features};
use kiln_tune::latency::{speed_index, Boosting, DeviceCostModel, LatencyModel, LatencySample};
use kiln_tune::log::{DeviceRecord, LogContents, MeasureRecord, Record};
use kiln_tune::model::{CostModel, Sample};
use kiln_tune::predict::{predict_model, ScheduleSource};
use kiln_tune::{extract_tasks, TaskSet};
use std::rc::Rc;
use std::sync::Arc;

fn dscnn(target: &kiln::Target) -> (kiln::Graph, TaskSet) {
    let spec = common::dscnn();
    let model = spec.load().unwrap();
    let set = extract_tasks(&model.graph, &spec.graph_options(), target).unwrap();
    (model.graph, set)
}

fn baseline() -> kiln::Target {
    kiln::Target::named("x86_64-linux-gnu").unwrap()
}

/// A device whose probes all take `speed` ms (a slower device has larger probes).
fn device(target: &str, threads: usize, speed: f64) -> DeviceDescription {
    DeviceDescription {
        target: target.into(),
        arch: "x86_64".into(),
        cpu_model: "test".into(),
        cores: 2,
        clock_mhz: 3000,
        caches: vec![],
        lanes: 0,
        registers: 0,
        int8_kernels: false,
        threads,
        probes: kiln_tune::device::PROBES
            .iter()
            .map(|(name, _)| Probe {
                name: name.to_string(),
                ms: speed,
            })
            .collect(),
    }
}

/// The synthetic law: latency grows with the arithmetic and the bytes touched, falls with
/// vector lanes, and scales with the device's speed.
fn law(kernel: &[f32], speed: f64) -> f64 {
    let names = feature_names();
    let at = |n: &str| f64::from(kernel[names.iter().position(|x| x == n).unwrap()]);
    let flops = at("total_flops").exp2();
    let bytes = at("total_bytes").exp2();
    let lanes = at("store0.vector_lanes").exp2();
    speed * (1e-6 * flops / lanes + 2e-7 * bytes + 1e-3)
}

/// Up to `per_task` distinct candidates of every task (the default first), with features.
fn candidates(set: &TaskSet, per_task: usize, seed: u64) -> Vec<(String, Vec<f32>)> {
    let mut rng = SplitMix(seed);
    let mut out = vec![];
    for t in &set.tasks {
        let mut seen = std::collections::HashSet::new();
        let mut knobs = vec![Knobs::default()];
        for _ in 0..4 * per_task {
            knobs.push(t.space.sample(&mut rng));
        }
        for k in knobs {
            if seen.len() == per_task || !seen.insert(k.clone()) {
                continue;
            }
            if let Ok((_, f)) = schedule_with(&t.dag, t.class, &t.keep, &k, &t.target) {
                out.push((t.key.clone(), kernel_features(&f, &k)));
            }
        }
    }
    out
}

fn samples(cands: &[(String, Vec<f32>)], d: &DeviceDescription, speed: f64) -> Vec<LatencySample> {
    let features: Arc<[f32]> = d.features().into();
    let name: Arc<str> = device_name(&d.target, d.threads).into();
    cands
        .iter()
        .map(|(task, k)| LatencySample {
            task: task.clone(),
            kernel: k.clone(),
            device: features.clone(),
            device_name: name.clone(),
            ms: law(k, speed),
        })
        .collect()
}

#[test]
fn the_model_ranks_unseen_tasks_and_tells_devices_apart() {
    let (_, set) = dscnn(&baseline());
    let cands = candidates(&set, 16, 1);
    let (fast, slow) = (device("a", 1, 1.0), device("b", 2, 4.0));
    let mut all = samples(&cands, &fast, 1.0);
    all.extend(samples(&cands, &slow, 4.0));
    let report = holdout_tasks(&all, 3, 1, Boosting::PRETRAIN).unwrap();
    assert!(report.tasks >= 6, "{report:?}");
    assert!(report.pairs > 100, "{report:?}");
    assert!(report.pairwise > 0.75, "{report:?}");
    assert!(report.spearman_all > 0.9, "{report:?}");
    // Trained on everything, the slow device is predicted slower for the same kernels.
    let model = LatencyModel::train(&all, Boosting::PRETRAIN).unwrap();
    let kernels: Vec<Vec<f32>> = cands.iter().map(|c| c.1.clone()).collect();
    let on_fast = model.predict_ms(&kernels, &fast.features()).unwrap();
    let on_slow = model.predict_ms(&kernels, &slow.features()).unwrap();
    let ratio: f64 = on_slow
        .iter()
        .zip(&on_fast)
        .map(|(s, f)| s / f)
        .sum::<f64>()
        / kernels.len() as f64;
    assert!((2.5..6.0).contains(&ratio), "{ratio}");
    // Saved and loaded, it predicts the same; a model of other features is refused.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latency.json");
    model.save(&path).unwrap();
    let again = LatencyModel::load(&path).unwrap();
    assert_eq!(
        again.predict_ms(&kernels, &fast.features()).unwrap(),
        on_fast
    );
    let ranking = dir.path().join("ranking.json");
    let mut other = kiln_tune::XgbCostModel::new();
    let ranked: Vec<Sample> = all
        .iter()
        .map(|s| Sample {
            task: 0,
            features: s.kernel.clone(),
            label: 1.0 / s.ms as f32,
            ms: Some(s.ms),
        })
        .collect();
    other.fit(&ranked).unwrap();
    other.save(&ranking).unwrap();
    let err = LatencyModel::load(&ranking).unwrap_err().to_string();
    assert!(err.contains("retrain"), "{err}");
}

#[test]
fn a_device_slower_this_hour_is_predicted_slower_by_its_probes() {
    let (_, set) = dscnn(&baseline());
    let cands = candidates(&set, 12, 3);
    // Trained on one device as its probes found it, predicted when everything (the probes
    // too) runs 1.5x slower: outside the probe values the trees saw.
    let device_then = device("a", 1, 1.0);
    let model =
        LatencyModel::train(&samples(&cands, &device_then, 1.0), Boosting::PRETRAIN).unwrap();
    let kernels: Vec<Vec<f32>> = cands.iter().map(|c| c.1.clone()).collect();
    let then = model.predict_ms(&kernels, &device_then.features()).unwrap();
    let now = model
        .predict_ms(&kernels, &device("a", 1, 1.5).features())
        .unwrap();
    for (a, b) in now.iter().zip(&then) {
        assert!((b / a * 1.5 - 1.0).abs() < 1e-3, "{a} vs {b}");
    }
    assert!((speed_index(&device("a", 1, 1.5).features()) - 1.5f32.ln()).abs() < 1e-6);
}

#[test]
fn a_pretrained_model_adapts_to_a_new_device() {
    let (_, set) = dscnn(&baseline());
    let cands = candidates(&set, 12, 2);
    let mut pretrain = samples(&cands, &device("a", 1, 1.0), 1.0);
    pretrain.extend(samples(&cands, &device("b", 1, 2.0), 2.0));
    let model = Rc::new(LatencyModel::train(&pretrain, Boosting::PRETRAIN).unwrap());
    // The new device is much slower than any seen, and its probes say so only in part.
    let new = device("c", 2, 3.0);
    let truth = |k: &[f32]| law(k, 10.0);
    let mut tuner_model = DeviceCostModel::new(Some(model), new.features());
    assert!(tuner_model.is_trained(), "usable from trial one");
    let kernels: Vec<Vec<f32>> = cands.iter().map(|c| c.1.clone()).collect();
    let error = |m: &DeviceCostModel| {
        let p = m.predict_ms(&kernels).unwrap();
        let mut e: Vec<f64> = p
            .iter()
            .zip(&kernels)
            .map(|(p, k)| (p / truth(k) - 1.0).abs())
            .collect();
        e.sort_by(f64::total_cmp);
        e[e.len() / 2]
    };
    let before = error(&tuner_model);
    // A few measurements on the new device (a third of the candidates).
    let measured: Vec<Sample> = cands
        .iter()
        .step_by(3)
        .map(|(_, k)| Sample {
            task: 0,
            features: k.clone(),
            label: 0.0,
            ms: Some(truth(k)),
        })
        .collect();
    tuner_model.fit(&measured).unwrap();
    let after = error(&tuner_model);
    assert!(after < before / 2.0, "before {before}, after {after}");
    // Scores order candidates as the predicted latencies do (faster scores higher).
    let scores = tuner_model.predict(&kernels[..2]).unwrap();
    let ms = tuner_model.predict_ms(&kernels[..2]).unwrap();
    assert_eq!(scores[0] > scores[1], ms[0] < ms[1]);
    // Without a pretrained model it learns nothing from too few measurements.
    let mut scratch = DeviceCostModel::new(None, new.features());
    assert!(!scratch.is_trained());
    scratch.fit(&measured[..4]).unwrap();
    assert!(!scratch.is_trained());
}

fn record(workload: &str, target: &str, threads: usize, knobs: Knobs, ms: f64) -> Record {
    Record::Measure(MeasureRecord {
        workload: workload.into(),
        target: target.into(),
        threads,
        knobs,
        trace: Trace::default(),
        times_ms: vec![ms],
        error: None,
        timestamp: 1,
        device: None,
    })
}

#[test]
fn logs_join_their_tasks_and_what_cannot_is_counted() {
    let (graph, set) = dscnn(&baseline());
    let t0 = &set.tasks[0];
    let other = Knobs {
        vector_tile: Some(8),
        ..Knobs::default()
    };
    let mut records = vec![
        record(&t0.key, "x86_64-linux-gnu", 1, Knobs::default(), 0.5),
        record(&t0.key, "x86_64-linux-gnu", 2, Knobs::default(), 0.3),
        record(
            "not-a-workload",
            "x86_64-linux-gnu",
            1,
            Knobs::default(),
            1.0,
        ),
        record(&t0.key, "no-such-target", 1, Knobs::default(), 1.0),
    ];
    let mut failed = record(&t0.key, "x86_64-linux-gnu", 1, other.clone(), 1.0);
    if let Record::Measure(m) = &mut failed {
        m.error = Some("crashed".into());
        m.times_ms.clear();
    }
    let mut remote = record(&t0.key, "x86_64-linux-gnu", 1, other, 1.0);
    if let Record::Measure(m) = &mut remote {
        m.device = Some("board @ 10.0.0.2:9000".into());
    }
    records.extend([failed, remote]);
    let log = LogContents {
        records,
        skipped_lines: vec![],
    };
    let mut described = vec![];
    let mut describe = |t: &kiln::Target, threads: usize| {
        described.push((t.name().to_string(), threads));
        Ok(device(t.name(), threads, threads as f64))
    };
    let data = collect(
        &[graph],
        &kiln::GraphOptions::default(),
        &[log],
        &mut describe,
    )
    .unwrap();
    assert_eq!(data.samples.len(), 2);
    assert_eq!(
        (
            data.skipped.errors,
            data.skipped.remote,
            data.skipped.unknown_workload,
            data.skipped.unknown_target
        ),
        (1, 1, 1, 1)
    );
    // One description per device, and each sample carries its own.
    assert_eq!(
        described,
        vec![
            ("x86_64-linux-gnu".to_string(), 1),
            ("x86_64-linux-gnu".to_string(), 2)
        ]
    );
    assert_ne!(data.samples[0].device, data.samples[1].device);
    let (_, f) = schedule_with(&t0.dag, t0.class, &t0.keep, &Knobs::default(), &t0.target).unwrap();
    assert_eq!(
        data.samples[0].kernel,
        kernel_features(&f, &Knobs::default())
    );
    assert_eq!(data.samples[0].ms, 0.5);
}

#[test]
fn a_logged_device_describes_the_measurements_after_it() {
    let (graph, set) = dscnn(&baseline());
    let key = &set.tasks[0].key;
    let t = "x86_64-linux-gnu";
    // The machine as a run found it (slow that hour), then a run that logged no device.
    let slow = device(t, 1, 0.5);
    let records = vec![
        Record::Device(DeviceRecord {
            target: t.into(),
            threads: 1,
            description: slow.clone(),
            timestamp: 1,
        }),
        record(key, t, 1, Knobs::default(), 2.0),
    ];
    let logs = [
        LogContents {
            records,
            skipped_lines: vec![],
        },
        LogContents {
            records: vec![record(key, t, 1, Knobs::default(), 1.0)],
            skipped_lines: vec![],
        },
    ];
    let mut described = 0;
    let mut describe = |t: &kiln::Target, threads: usize| {
        described += 1;
        Ok(device(t.name(), threads, 1.0))
    };
    let data = collect(
        &[graph],
        &kiln::GraphOptions::default(),
        &logs,
        &mut describe,
    )
    .unwrap();
    assert_eq!(data.samples.len(), 2);
    // Bit for bit (unknown cache sizes are NaN).
    let bits = |f: &[f32]| f.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&data.samples[0].device), bits(&slow.features()));
    assert_eq!(
        bits(&data.samples[1].device),
        bits(&device(t, 1, 1.0).features())
    );
    // Only the measurement no record describes needed this machine's probes.
    assert_eq!(described, 1);
}

#[test]
fn a_prediction_sums_the_kernels_a_compile_would_run() {
    let (_, set) = dscnn(&baseline());
    let d = device("x86_64-linux-gnu", 1, 1.0);
    let model = LatencyModel::train(
        &samples(&candidates(&set, 6, 3), &d, 1.0),
        Boosting::SCRATCH,
    )
    .unwrap();
    let p = predict_model(&set, "x86_64-linux-gnu", 1, None, &model, &d.features()).unwrap();
    assert_eq!(p.kernels.len(), set.tasks.len());
    assert!(p
        .kernels
        .iter()
        .all(|k| k.schedule == ScheduleSource::Default && k.ms > 0.0));
    let sum: f64 = p.kernels.iter().map(|k| k.ms * k.weight as f64).sum();
    assert!((p.total_ms - sum).abs() <= 1e-12 * sum);
    // The best record of the log for this target and thread count is the schedule used; a
    // record of another thread count or target is not.
    let (conv, conv_index) = set
        .tasks
        .iter()
        .enumerate()
        .find(|(_, t)| t.space.size() > 1)
        .map(|(i, t)| (t, i))
        .unwrap();
    let tuned = conv.space.sample(&mut SplitMix(9));
    let log = LogContents {
        records: vec![
            record(&conv.key, "x86_64-linux-gnu", 1, Knobs::default(), 2.0),
            record(&conv.key, "x86_64-linux-gnu", 1, tuned, 1.0),
            record(
                &set.tasks[0].key,
                "x86_64-linux-gnu",
                4,
                Knobs::default(),
                0.1,
            ),
            record(
                &set.tasks[0].key,
                "x86_64-linux-gnu-avx2",
                1,
                Knobs::default(),
                0.1,
            ),
        ],
        skipped_lines: vec![],
    };
    let p = predict_model(
        &set,
        "x86_64-linux-gnu",
        1,
        Some(&log),
        &model,
        &d.features(),
    )
    .unwrap();
    for (i, k) in p.kernels.iter().enumerate() {
        let expected = if i == conv_index {
            ScheduleSource::Tuned
        } else {
            ScheduleSource::Default
        };
        assert_eq!(k.schedule, expected, "{}", k.desc);
    }
}
