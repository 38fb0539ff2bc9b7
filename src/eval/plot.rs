//! `endorm eval --plot DIR`: the report as SVG figures, drawn with plotters' SVG backend (no fonts,
//! no browser: text is left to the viewer, sizes are estimated).
//!
//! * `estimates.svg` (every file): each method's headline number with its 95% interval, a
//!   dot-and-whisker chart: ranked pass@1 beside the random baseline (ranking files), accuracy and
//!   length-balanced accuracy beside chance (preference files).
//! * `roc.svg` (ranking files): each method's ROC curve, averaged over tasks (vertical averaging:
//!   the mean true-positive rate of the tasks' curves at each false-positive rate), so its area is
//!   the report's AUC, a mean over tasks.
//! * `differences.svg` (preference files): per method, a histogram of `chosen − rejected` over the
//!   pairs; mass right of 0 is won.
//!
//! The curves and histograms are computed here from per-item scores by pure functions; drawing is
//! the only part that touches plotters. [`write_lines`], a plain line chart on linear or log
//! axes, also draws `endorm bench --sweep`'s figures.

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::metrics::Estimate;

/// False-positive rates at which the averaged ROC curve is sampled.
const ROC_GRID: usize = 100;

/// Bins of each difference histogram.
const HISTOGRAM_BINS: usize = 24;

/// The series colours, one per method in report order (Tableau 10, then three more); methods past
/// the last reuse them from the start.
pub const PALETTE: [(u8, u8, u8); 13] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (0, 0, 128),
    (128, 0, 0),
    (0, 128, 128),
];

fn colour(index: usize) -> RGBColor {
    let (r, g, b) = PALETTE[index % PALETTE.len()];
    RGBColor(r, g, b)
}

/// What one method contributes to the figures.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodFigure {
    /// The method's name.
    pub name: String,
    /// Ranking: the task-averaged ROC curve (false-positive rate, true-positive rate).
    pub roc: Option<Vec<(f64, f64)>>,
    /// Preference: `chosen − rejected` of every pair (a pairwise judge's margin).
    pub differences: Option<Vec<f64>>,
    /// The headline numbers, each with its interval, by metric name.
    pub estimates: Vec<(&'static str, Estimate)>,
}

/// Everything the figures show.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// The title line: data file, model.
    pub title: String,
    /// The chance line of the estimates chart (`random`, or `chance` at 0.5), if any.
    pub baseline: Option<(String, f64)>,
    /// One entry per method, in report order.
    pub methods: Vec<MethodFigure>,
}

/// A figure could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct PlotError {
    /// The figure's file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// The ROC curve of one task: the points of the thresholds from the highest score down, candidates
/// of equal score taken together (a diagonal step, so ties count half as in the AUC). `None` unless
/// the task has both passing and failing candidates.
pub fn roc_points(scores: &[f64], passed: &[bool]) -> Option<Vec<(f64, f64)>> {
    let positives = passed.iter().filter(|&&p| p).count();
    let negatives = passed.len() - positives;
    if positives == 0 || negatives == 0 || scores.len() != passed.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0, 0);
    for (k, &i) in order.iter().enumerate() {
        if passed[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_tie = order
            .get(k + 1)
            .is_none_or(|&next| scores[next].total_cmp(&scores[i]).is_ne());
        if last_of_tie {
            points.push((fp as f64 / negatives as f64, tp as f64 / positives as f64));
        }
    }
    Some(points)
}

/// The true-positive rate of a curve at false-positive rate `x`, interpolated linearly; at a
/// vertical step, the top of it.
fn tpr_at(points: &[(f64, f64)], x: f64) -> f64 {
    let mut best: f64 = 0.0;
    for pair in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        if x1 < x || x0 > x {
            continue;
        }
        let y = if x1 > x0 {
            y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        } else {
            y0.max(y1)
        };
        best = best.max(y);
    }
    best
}

/// The vertical average of several ROC curves on a grid of false-positive rates from 0 to 1;
/// `None` without curves.
pub fn mean_roc(curves: &[Vec<(f64, f64)>]) -> Option<Vec<(f64, f64)>> {
    if curves.is_empty() {
        return None;
    }
    let grid = (0..=ROC_GRID).map(|k| k as f64 / ROC_GRID as f64);
    // From (0, 0): a curve may start with a vertical step, whose top `tpr_at(0)` reports.
    let mut points = vec![(0.0, 0.0)];
    points.extend(grid.map(|x| {
        let mean = curves.iter().map(|c| tpr_at(c, x)).sum::<f64>() / curves.len() as f64;
        (x, mean)
    }));
    Some(points)
}

/// A histogram of `values` in `bins` equal bins over `-m..m`, `m` the largest magnitude (1 when all
/// are 0), so that 0 is always a bin edge: `(lower edge, upper edge, count)` per bin.
pub fn histogram(values: &[f64], bins: usize) -> Vec<(f64, f64, usize)> {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let m = finite.clone().fold(0.0_f64, |m, v| m.max(v.abs()));
    let m = if m > 0.0 { m } else { 1.0 };
    let bins = bins.max(2) & !1; // even, so 0 is an edge
    let width = 2.0 * m / bins as f64;
    let mut counts = vec![0; bins];
    for v in finite {
        let k = ((v + m) / width).floor() as usize;
        counts[k.min(bins - 1)] += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(k, n)| (-m + k as f64 * width, -m + (k + 1) as f64 * width, n))
        .collect()
}

/// Writes the figures that `figures` has data for into `dir` (created if missing); returns their
/// paths.
pub fn write(dir: &Path, figures: &Figures) -> Result<Vec<PathBuf>, PlotError> {
    std::fs::create_dir_all(dir).map_err(|e| PlotError {
        path: dir.to_owned(),
        message: e.to_string(),
    })?;
    let mut written = Vec::new();
    let mut draw = |name: &str, f: fn(&Path, &Figures) -> DrawResult| -> Result<(), PlotError> {
        let path = dir.join(name);
        f(&path, figures).map_err(|e| PlotError {
            path: path.clone(),
            message: e.to_string(),
        })?;
        written.push(path);
        Ok(())
    };
    draw("estimates.svg", draw_estimates)?;
    if figures.methods.iter().any(|m| m.roc.is_some()) {
        draw("roc.svg", draw_roc)?;
    }
    if figures.methods.iter().any(|m| m.differences.is_some()) {
        draw("differences.svg", draw_differences)?;
    }
    Ok(written)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// One line of a [`write_lines`] chart: its legend and its points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend.
    pub name: String,
    /// `(x, y)` in data units, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// An axis of a [`write_lines`] chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// Its title.
    pub title: String,
    /// Logarithmic (every value must be above 0).
    pub log: bool,
}

/// A line chart of `series` over `x` and `y`, each line with dots at its points, written to `path`.
/// A log axis is drawn as the base-10 logarithm of the data with its ticks labelled in data units.
pub fn write_lines(
    path: &Path,
    title: &str,
    x: &Axis,
    y: &Axis,
    series: &[Series],
) -> Result<(), PlotError> {
    draw_lines(path, title, x, y, series).map_err(|e| PlotError {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn draw_lines(path: &Path, title: &str, x: &Axis, y: &Axis, series: &[Series]) -> DrawResult {
    let scale = |log: bool, v: f64| if log { v.log10() } else { v };
    let range = |log: bool, values: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            let v = scale(log, v);
            (lo.min(v), hi.max(v))
        });
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.05).max(if log { 0.05 } else { 1e-9 });
        let lo = if log || lo < 0.0 { lo - pad } else { 0.0 };
        lo..hi + pad
    };
    let points = || series.iter().flat_map(|s| s.points.iter().copied());
    let x_range = range(x.log, &mut points().map(|p| p.0));
    let y_range = range(y.log, &mut points().map(|p| p.1));
    let label = |log: bool| {
        move |v: &f64| {
            let v = if log { 10f64.powf(*v) } else { *v };
            if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-2) {
                format!("{v:.0e}")
            } else if v.fract().abs() < 1e-9 || v.abs() >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        }
    };
    let root = SVGBackend::new(path, (720, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range, y_range)?;
    let (x_label, y_label) = (label(x.log), label(y.log));
    chart
        .configure_mesh()
        .x_desc(x.title.as_str())
        .y_desc(y.title.as_str())
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .draw()?;
    for (index, line) in series.iter().enumerate() {
        let c = colour(index);
        let scaled: Vec<(f64, f64)> = line
            .points
            .iter()
            .map(|&(px, py)| (scale(x.log, px), scale(y.log, py)))
            .collect();
        chart
            .draw_series(LineSeries::new(scaled.iter().copied(), c.stroke_width(2)))?
            .label(line.name.as_str())
            .legend(move |(px, py)| {
                PathElement::new(vec![(px, py), (px + 20, py)], c.stroke_width(2))
            });
        chart.draw_series(scaled.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn draw_roc(path: &Path, figures: &Figures) -> DrawResult {
    let root = SVGBackend::new(path, (720, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("ROC, averaged over tasks · {}", figures.title),
            ("sans-serif", 16),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("false-positive rate (failing completions above the threshold)")
        .y_desc("true-positive rate (passing)")
        .draw()?;
    chart.draw_series(LineSeries::new(
        [(0.0, 0.0), (1.0, 1.0)],
        BLACK.mix(0.3).stroke_width(1),
    ))?;
    for (index, method) in figures.methods.iter().enumerate() {
        let Some(roc) = &method.roc else { continue };
        let c = colour(index);
        chart
            .draw_series(LineSeries::new(roc.iter().copied(), c.stroke_width(2)))?
            .label(method.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn draw_differences(path: &Path, figures: &Figures) -> DrawResult {
    let panels: Vec<(usize, &MethodFigure, &Vec<f64>)> = figures
        .methods
        .iter()
        .enumerate()
        .filter_map(|(i, m)| Some((i, m, m.differences.as_ref()?)))
        .collect();
    let columns = 3.min(panels.len()).max(1);
    let rows = panels.len().div_ceil(columns);
    let root =
        SVGBackend::new(path, (360 * columns as u32, 60 + 260 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("chosen − rejected, per pair · {}", figures.title),
        ("sans-serif", 16),
    )?;
    for ((index, method, differences), area) in
        panels.iter().zip(root.split_evenly((rows, columns)))
    {
        let bins = histogram(differences, HISTOGRAM_BINS);
        let (lo, hi) = (bins[0].0, bins[bins.len() - 1].1);
        // A tenth of headroom so the tallest bar does not touch the caption.
        let top = (bins.iter().map(|b| b.2).max().unwrap_or(0) * 11 / 10).max(1);
        let won = differences.iter().filter(|&&d| d > 0.0).count();
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!(
                    "{}: chosen higher {won} of {}",
                    method.name,
                    differences.len()
                ),
                ("sans-serif", 13),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(36)
            .build_cartesian_2d(lo..hi, 0..top)?;
        chart.configure_mesh().x_labels(5).y_labels(4).draw()?;
        let c = colour(*index);
        chart.draw_series(
            bins.iter()
                .map(|&(x0, x1, n)| Rectangle::new([(x0, 0), (x1, n)], c.mix(0.7).filled())),
        )?;
        chart.draw_series(LineSeries::new(
            [(0.0, 0), (0.0, top)],
            BLACK.stroke_width(1),
        ))?;
    }
    root.present()?;
    Ok(())
}

fn draw_estimates(path: &Path, figures: &Figures) -> DrawResult {
    let metrics: Vec<&'static str> = {
        let mut names: Vec<&'static str> = Vec::new();
        for (name, _) in figures.methods.iter().flat_map(|m| &m.estimates) {
            if !names.contains(name) {
                names.push(name);
            }
        }
        names
    };
    let n = figures.methods.len().max(1) as i32;
    let root = SVGBackend::new(path, (760, 120 + 34 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let names: Vec<String> = figures.methods.iter().map(|m| m.name.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("by method, 95% intervals · {}", figures.title),
            ("sans-serif", 16),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(170)
        .build_cartesian_2d(0.0..1.0, (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n as usize)
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                // Best-listed method at the top.
                let row = (n - 1 - i) as usize;
                names.get(row).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .x_desc(match metrics.as_slice() {
            [one] => (*one).to_owned(),
            [first, rest @ ..] => format!("{first} (filled) / {} (hollow)", rest.join(", ")),
            [] => String::new(),
        })
        .draw()?;
    if let Some((label, x)) = &figures.baseline {
        let x = *x;
        chart
            .draw_series(LineSeries::new(
                [(x, SegmentValue::Exact(0)), (x, SegmentValue::Last)],
                BLACK.mix(0.5).stroke_width(1),
            ))?
            .label(format!("{label} {x:.3}"))
            .legend(move |(px, py)| {
                PathElement::new(vec![(px, py - 6), (px, py + 6)], BLACK.mix(0.5))
            });
    }
    // The metrics of one method a few pixels apart within its row: the first a filled dot, the
    // others hollow (named in the axis title, in that order).
    for (index, method) in figures.methods.iter().enumerate() {
        let row = || SegmentValue::CenterOf(n - 1 - index as i32);
        let c = colour(index);
        for (name, e) in &method.estimates {
            let k = metrics.iter().position(|m| m == name).unwrap_or(0);
            let dy = ((k as f64 - (metrics.len() as f64 - 1.0) / 2.0) * 10.0) as i32;
            let width =
                chart.backend_coord(&(e.hi, row())).0 - chart.backend_coord(&(e.lo, row())).0;
            let whisker = EmptyElement::at((e.lo, row()))
                + PathElement::new(vec![(0, dy), (width, dy)], c.stroke_width(2));
            let marker = if k == 0 {
                c.filled()
            } else {
                c.stroke_width(2)
            };
            let dot = EmptyElement::at((e.value, row())) + Circle::new((0, dy), 4, marker);
            chart.draw_series([whisker])?;
            chart.draw_series([dot])?;
        }
    }
    if figures.baseline.is_some() {
        // Upper right: the top row is the axis' spare segment, so the box hides no method.
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_points_step_through_thresholds_with_ties_as_diagonals() {
        let points = roc_points(&[3.0, 2.0, 2.0, 1.0], &[true, false, true, false]).unwrap();
        assert_eq!(points, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
        assert_eq!(roc_points(&[1.0, 2.0], &[true, true]), None);
        assert_eq!(roc_points(&[1.0], &[true, false]), None);
    }

    #[test]
    fn mean_roc_averages_vertically_so_its_area_is_the_mean_auc() {
        let perfect = vec![(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)];
        let worst = vec![(0.0, 0.0), (1.0, 0.0), (1.0, 1.0)];
        let mean = mean_roc(&[perfect.clone(), worst]).unwrap();
        assert_eq!(mean.len(), ROC_GRID + 2);
        assert_eq!(mean[0], (0.0, 0.0));
        assert_eq!(mean[1], (0.0, 0.5));
        assert_eq!(mean[51], (0.5, 0.5));
        assert_eq!(mean[ROC_GRID + 1], (1.0, 1.0));
        let area: f64 = mean
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
            .sum();
        // The mean AUC is 0.5; the grid's last step (0.99 → 1, where the worst curve jumps)
        // adds a triangle of ½ · 0.01 · 0.5.
        assert!((area - 0.5025).abs() < 1e-9, "{area}");
        assert_eq!(mean_roc(&[perfect]).unwrap()[1], (0.0, 1.0));
        assert_eq!(mean_roc(&[]), None);
    }

    #[test]
    fn histogram_is_symmetric_around_zero() {
        let bins = histogram(&[-1.0, -0.5, 0.0, 0.25, 1.0, f64::NAN], 4);
        assert_eq!(
            bins,
            vec![
                (-1.0, -0.5, 1),
                (-0.5, 0.0, 1),
                (0.0, 0.5, 2),
                (0.5, 1.0, 1)
            ]
        );
        // All zero: a unit range; an odd count of bins is made even so 0 stays an edge.
        let zeros = histogram(&[0.0, 0.0], 3);
        assert_eq!(zeros.len(), 2);
        assert_eq!(zeros[1], (0.0, 1.0, 2));
    }

    /// Checks that `svg` is one `<svg>` element whose tags nest properly; returns the start tags.
    fn parse_lightly(svg: &str) -> Vec<&str> {
        assert!(svg.trim_start().starts_with("<svg"), "{svg:.80}");
        assert!(svg.trim_end().ends_with("</svg>"));
        let mut open: Vec<&str> = Vec::new();
        let mut tags = Vec::new();
        for piece in svg.split('<').skip(1) {
            let tag = piece.split('>').next().expect("tag");
            assert!(piece.contains('>'), "unclosed tag <{piece:.40}");
            let name = tag
                .trim_start_matches('/')
                .split_whitespace()
                .next()
                .unwrap_or("");
            if tag.starts_with('/') {
                assert_eq!(open.pop(), Some(name), "</{name}> closes the wrong element");
            } else {
                tags.push(tag);
                if !tag.ends_with('/') {
                    open.push(name);
                }
            }
        }
        assert!(open.is_empty(), "left open: {open:?}");
        tags
    }

    fn hex(index: usize) -> String {
        let (r, g, b) = PALETTE[index];
        format!("#{r:02X}{g:02X}{b:02X}")
    }

    fn estimate(value: f64) -> Estimate {
        Estimate {
            value,
            lo: value - 0.1,
            hi: value + 0.1,
            n: 10,
        }
    }

    #[test]
    fn figures_are_svg_with_one_series_per_method() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["endo", "endo_mean+consensus", "consensus"];
        let ranking = Figures {
            title: "code.jsonl · m".into(),
            baseline: Some(("random".into(), 0.4)),
            methods: names
                .iter()
                .enumerate()
                .map(|(i, name)| MethodFigure {
                    name: (*name).into(),
                    roc: mean_roc(&[vec![(0.0, 0.0), (0.1 * i as f64, 0.8), (1.0, 1.0)]]),
                    differences: None,
                    estimates: vec![("pass@1", estimate(0.3 + 0.2 * i as f64))],
                })
                .collect(),
        };
        let written = write(&dir.path().join("code"), &ranking).unwrap();
        let file = |name: &str| dir.path().join("code").join(name);
        assert_eq!(written, vec![file("estimates.svg"), file("roc.svg")]);
        let roc = std::fs::read_to_string(file("roc.svg")).unwrap();
        let estimates = std::fs::read_to_string(file("estimates.svg")).unwrap();
        let (roc_tags, estimate_tags) = (parse_lightly(&roc), parse_lightly(&estimates));
        for (i, name) in names.iter().enumerate() {
            let colour = format!("stroke=\"{}\"", hex(i));
            assert!(
                roc_tags
                    .iter()
                    .any(|t| t.starts_with("polyline") && t.contains(&colour)),
                "no ROC curve for {name}"
            );
            let dot = format!("fill=\"{}\"", hex(i));
            let dots = estimate_tags
                .iter()
                .filter(|t| t.starts_with("circle") && t.contains(&dot))
                .count();
            assert_eq!(dots, 1, "{name}: one estimate, one dot");
            for svg in [&roc, &estimates] {
                assert!(
                    svg.contains(&format!("\n{name}\n</text>")),
                    "{name} unlabelled"
                );
            }
        }
        // No colour past the three methods': one series each, nothing else coloured.
        assert!(!roc.contains(&hex(3)) && !estimates.contains(&hex(3)));

        let preference = Figures {
            title: "prefs.jsonl · m".into(),
            baseline: Some(("chance".into(), 0.5)),
            methods: names
                .iter()
                .map(|name| MethodFigure {
                    name: (*name).into(),
                    roc: None,
                    differences: Some(vec![-2.0, 0.5, 1.0, 3.0]),
                    estimates: vec![
                        ("accuracy", estimate(0.6)),
                        ("length-balanced", estimate(0.5)),
                    ],
                })
                .collect(),
        };
        let written = write(dir.path(), &preference).unwrap();
        assert_eq!(
            written,
            vec![
                dir.path().join("estimates.svg"),
                dir.path().join("differences.svg")
            ]
        );
        let differences = std::fs::read_to_string(&written[1]).unwrap();
        let tags = parse_lightly(&differences);
        for (i, name) in names.iter().enumerate() {
            let bars = format!("fill=\"{}\"", hex(i));
            assert!(
                tags.iter()
                    .any(|t| t.starts_with("rect") && t.contains(&bars)),
                "no histogram for {name}"
            );
            assert!(differences.contains(&format!("{name}: chosen higher 3 of 4")));
        }
        let estimates = std::fs::read_to_string(&written[0]).unwrap();
        let tags = parse_lightly(&estimates);
        // Two metrics per method: a filled and a hollow dot.
        assert_eq!(tags.iter().filter(|t| t.starts_with("circle")).count(), 6);
    }
}
