//! The training curve of a run, as SVG and PNG: loss (train, test) and accuracy (train top-1,
//! test top-1, test top-5) against the epoch, side by side.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::train::EpochRecord;
use crate::{Error, Result};

const SIZE: (u32, u32) = (1100, 460);

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bitmap backend draws text with ab_glyph from a registered font (no system fonts).
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

fn err<E: std::fmt::Debug>(e: E) -> Error {
    Error::invalid("plot", format!("training curve: {e:?}"))
}

type Curve = (&'static str, RGBColor, Vec<(f64, f64)>);

/// One chart; the legend sits where the curves are not (upper right for falling losses, lower
/// right for rising accuracies).
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    legend: SeriesLabelPosition,
    curves: &[Curve],
) -> Result<()> {
    let last = curves.iter().flat_map(|c| c.2.iter().map(|p| p.0)).fold(1.0, f64::max);
    let ys = curves.iter().flat_map(|c| c.2.iter().map(|p| p.1)).filter(|v| v.is_finite());
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5..last + 0.5, lo - pad..hi + pad)
        .map_err(err)?;
    chart.configure_mesh().x_desc("epoch").y_desc(y_desc).draw().map_err(err)?;
    for (label, color, points) in curves {
        let color = *color;
        chart
            .draw_series(
                LineSeries::new(points.iter().copied().filter(|p| p.1.is_finite()), color.stroke_width(2))
                    .point_size(3),
            )
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, title: &str, history: &[EpochRecord]) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let pts = |f: fn(&EpochRecord) -> f64| history.iter().map(|r| (r.epoch as f64, f(r))).collect::<Vec<_>>();
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let green = RGBColor(44, 160, 44);
    panel(
        &left,
        "loss",
        "loss per image",
        SeriesLabelPosition::UpperRight,
        &[("train", blue, pts(|r| r.train.loss)), ("test", orange, pts(|r| r.test.loss))],
    )?;
    panel(
        &right,
        "accuracy",
        "percent",
        SeriesLabelPosition::LowerRight,
        &[
            ("train top-1", blue, pts(|r| r.train.top1)),
            ("test top-1", orange, pts(|r| r.test.top1)),
            ("test top-5", green, pts(|r| r.test.top5)),
        ],
    )?;
    root.present().map_err(err)
}

/// Writes `svg` and `png` with the curves of `history` under `title`.
pub fn write_curve(svg: &Path, png: &Path, title: &str, history: &[EpochRecord]) -> Result<()> {
    if history.is_empty() {
        return Ok(());
    }
    register_font();
    draw(SVGBackend::new(svg, SIZE).into_drawing_area(), title, history)?;
    draw(BitMapBackend::new(png, SIZE).into_drawing_area(), title, history)
}
