//! The tuning curve as an SVG: best time against trials, for the model (`sum weight x best`)
//! and for each task, on a log scale (plotters).
//!
//! Invariant: [`tuning_curve`] writes a complete SVG or returns an error; it never leaves a
//! partial file behind under the requested name (it renders to memory first).

use crate::search::CurvePoint;
use crate::TuneError;
use plotters::prelude::*;
use std::path::Path;

/// One line of the plot.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    /// `(trial, ms)` points, trials increasing.
    pub points: Vec<(usize, f64)>,
}

/// The model line and one line per task (its best time after each of its trials, held to the
/// end of the run) of a curve.
pub fn series(curve: &[CurvePoint], task_labels: &[String]) -> Vec<Series> {
    let last_trial = curve.last().map_or(0, |p| p.trial);
    let mut out = vec![Series {
        label: "model (sum of weight x best)".into(),
        points: curve
            .iter()
            .filter_map(|p| p.model_ms.map(|m| (p.trial, m)))
            .collect(),
    }];
    for (t, label) in task_labels.iter().enumerate() {
        let mut points: Vec<(usize, f64)> = curve
            .iter()
            .filter(|p| p.task == t && p.task_best_ms.is_finite())
            .map(|p| (p.trial, p.task_best_ms))
            .collect();
        if let Some(&(trial, ms)) = points.last() {
            if trial < last_trial {
                points.push((last_trial, ms));
            }
        }
        out.push(Series {
            label: label.clone(),
            points,
        });
    }
    out.retain(|s| !s.points.is_empty());
    out
}

fn plot_err(e: impl std::fmt::Display) -> TuneError {
    TuneError::Plot(e.to_string())
}

/// Writes the tuning curve of `series` to `path` as SVG.
pub fn tuning_curve(path: &Path, title: &str, series: &[Series]) -> Result<(), TuneError> {
    let max_trial = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(1);
    let values = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let lo = values.clone().fold(f64::INFINITY, f64::min).max(1e-6);
    let hi = values.fold(0.0f64, f64::max).max(lo * 1.01);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0usize..max_trial, (lo * 0.9..hi * 1.1).log_scale())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("trials")
            .y_desc("best latency (ms, log scale)")
            .draw()
            .map_err(plot_err)?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let width = if i == 0 { 3 } else { 1 };
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(width),
                ))
                .map_err(plot_err)?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(width))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    std::fs::write(path, svg).map_err(TuneError::Io)
}
