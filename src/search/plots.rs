//! Search plots, each as SVG and PNG: the best score against evaluations, and the score
//! against parameters with the Pareto front (fewest parameters for the best score).

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::run::SearchRecord;
use crate::{Error, Result};

const SIZE: (u32, u32) = (900, 560);

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bitmap backend draws text with ab_glyph from a registered font.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Candidates on the Pareto front of (fewer parameters, higher fitness), by parameters.
pub fn pareto_front(records: &[SearchRecord]) -> Vec<&SearchRecord> {
    let mut v: Vec<&SearchRecord> = records.iter().filter(|r| r.fitness.is_some()).collect();
    v.sort_by(|a, b| {
        a.params.cmp(&b.params).then(b.fitness.partial_cmp(&a.fitness).unwrap_or(std::cmp::Ordering::Equal))
    });
    let mut front: Vec<&SearchRecord> = Vec::new();
    for r in v {
        if front.last().is_none_or(|l| r.fitness > l.fitness) {
            front.push(r);
        }
    }
    front
}

struct Series {
    label: String,
    higher_is_better: bool,
    /// (evaluation number, raw score) of every scored candidate.
    scores: Vec<(f64, f64)>,
    /// (evaluation number, best raw score so far).
    best: Vec<(f64, f64)>,
    /// (params in millions, raw score).
    by_params: Vec<(f64, f64)>,
    front: Vec<(f64, f64)>,
}

fn series(records: &[SearchRecord], proxy: &str) -> Series {
    let higher_is_better = records.iter().find_map(|r| r.record.scores.get(proxy)).is_none_or(|o| o.higher_is_better);
    let raw = |r: &SearchRecord| r.record.scores.get(proxy).and_then(|o| o.score);
    let mut scores = Vec::new();
    let mut best = Vec::new();
    let mut by_params = Vec::new();
    let mut best_so_far: Option<f64> = None;
    for (i, r) in records.iter().enumerate() {
        let x = (i + 1) as f64;
        if let Some(s) = raw(r) {
            scores.push((x, s));
            by_params.push((r.params as f64 / 1e6, s));
            let improves = best_so_far.is_none_or(|b| if higher_is_better { s > b } else { s < b });
            if improves {
                best_so_far = Some(s);
            }
        }
        if let Some(b) = best_so_far {
            best.push((x, b));
        }
    }
    let front = pareto_front(records).iter().filter_map(|r| raw(r).map(|s| (r.params as f64 / 1e6, s))).collect();
    let label = format!("{proxy} ({} is better)", if higher_is_better { "higher" } else { "lower" });
    Series { label, higher_is_better, scores, best, by_params, front }
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs().max(1e-12) * 1e-3);
    (lo - pad, hi + pad)
}

fn err<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::invalid("plots", format!("{what}: {e:?}"))
}

fn draw_best<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, s: &Series) -> Result<()> {
    area.fill(&WHITE).map_err(err("best score plot"))?;
    let n = s.scores.last().map_or(1.0, |p| p.0).max(2.0);
    let (lo, hi) = range(s.scores.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(format!("Best {} against evaluations", s.label), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..n, lo..hi)
        .map_err(err("best score plot"))?;
    chart
        .configure_mesh()
        .x_desc("evaluations (distinct candidates scored)")
        .y_desc("score")
        .draw()
        .map_err(err("best score plot"))?;
    chart
        .draw_series(s.scores.iter().map(|&p| Circle::new(p, 2, RGBColor(160, 160, 160).filled())))
        .map_err(err("best score plot"))?
        .label("candidate")
        .legend(|(x, y)| Circle::new((x + 10, y), 3, RGBColor(160, 160, 160).filled()));
    chart
        .draw_series(LineSeries::new(s.best.iter().copied(), BLUE.stroke_width(2)))
        .map_err(err("best score plot"))?
        .label(if s.higher_is_better { "best so far (max)" } else { "best so far (min)" })
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err("best score plot"))?;
    area.present().map_err(err("best score plot"))
}

fn draw_pareto<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, s: &Series) -> Result<()> {
    area.fill(&WHITE).map_err(err("pareto plot"))?;
    let (xlo, xhi) = range(s.by_params.iter().map(|p| p.0));
    let (lo, hi) = range(s.by_params.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{} against parameters, with the Pareto front", s.label), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(xlo.max(0.0)..xhi, lo..hi)
        .map_err(err("pareto plot"))?;
    chart.configure_mesh().x_desc("parameters (M)").y_desc("score").draw().map_err(err("pareto plot"))?;
    chart
        .draw_series(s.by_params.iter().map(|&p| Circle::new(p, 2, RGBColor(160, 160, 160).filled())))
        .map_err(err("pareto plot"))?
        .label("candidate")
        .legend(|(x, y)| Circle::new((x + 10, y), 3, RGBColor(160, 160, 160).filled()));
    chart
        .draw_series(LineSeries::new(s.front.iter().copied(), RED.stroke_width(2)))
        .map_err(err("pareto plot"))?
        .label("Pareto front")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart.draw_series(s.front.iter().map(|&p| Circle::new(p, 4, RED.filled()))).map_err(err("pareto plot"))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err("pareto plot"))?;
    area.present().map_err(err("pareto plot"))
}

/// Writes `best_score.{svg,png}` and `score_vs_params.{svg,png}` into `dir`; returns the paths.
pub fn write_plots(dir: &Path, records: &[SearchRecord], proxy: &str) -> Result<Vec<PathBuf>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    register_font();
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Io { context: format!("creating {}", dir.display()), source: e })?;
    let s = series(records, proxy);
    let mut out = Vec::new();
    for name in ["best_score", "score_vs_params"] {
        let (svg, png) = (dir.join(format!("{name}.svg")), dir.join(format!("{name}.png")));
        {
            let svg_area = SVGBackend::new(&svg, SIZE).into_drawing_area();
            let png_area = BitMapBackend::new(&png, SIZE).into_drawing_area();
            if name == "best_score" {
                draw_best(&svg_area, &s)?;
                draw_best(&png_area, &s)?;
            } else {
                draw_pareto(&svg_area, &s)?;
                draw_pareto(&png_area, &s)?;
            }
        }
        out.extend([svg, png]);
    }
    Ok(out)
}
