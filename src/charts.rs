//! Charts of measurements as PNG (plotters, with the DejaVu font embedded from a crate so no
//! system font is needed): the stacked bars of `msclip bench chart` and the speed-of-light
//! scatter of `msclip bench roofline`. The run's loss and accuracy plots (train/plot.rs) share
//! the font.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::files::write_rgb_png;

/// Registers the embedded font under "sans-serif", once per process.
pub(crate) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font shipped by the dejavu crate.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// The series' legend at `position`, in a white box with a black border.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart.configure_series_labels().position(position).background_style(WHITE.mix(0.9)).border_style(BLACK).draw()
}

/// One horizontal bar: its label, and its segments (name, value) from the left. Segments of
/// the same name share a colour across bars.
pub struct Bar {
    pub label: String,
    pub segments: Vec<(String, f64)>,
}

/// Width of the chart in pixels; the height grows with the number of bars.
const WIDTH: u32 = 1400;
/// Room on the left for the bars' labels.
const LABEL_AREA: u32 = 540;

/// Draws `bars` as horizontal stacked bars into a PNG at `path` (rendered in memory, then
/// written atomically), the values along an axis named `value_label`, with a legend of the
/// segment names in first-seen order.
pub fn stacked_bars(path: &Path, title: &str, value_label: &str, bars: &[Bar]) -> Result<()> {
    register_font();
    let err = |e: String| Error::format(path.display().to_string(), e);
    if bars.is_empty() {
        return Err(err("no bars to draw".into()));
    }
    let mut names: Vec<&str> = Vec::new();
    for (name, value) in bars.iter().flat_map(|b| &b.segments) {
        if !value.is_finite() || *value < 0.0 {
            return Err(err(format!("segment {name:?} has value {value}: bars stack finite, non-negative values")));
        }
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    let longest = bars.iter().map(|b| b.segments.iter().map(|(_, v)| v).sum::<f64>()).fold(0.0, f64::max);
    let height = 140 + 56 * bars.len() as u32;
    let mut rgb = vec![0u8; 3 * (WIDTH * height) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let rows = bars.len() as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(LABEL_AREA)
            // A third of the width past the longest bar keeps the legend clear of the bars.
            .build_cartesian_2d(0.0..longest.max(f64::MIN_POSITIVE) * 1.5, -0.5..rows - 0.5)
            .map_err(|e| err(e.to_string()))?;
        // Bar i sits at y = rows - 1 - i, so the first file is on top.
        let label_of = |y: &f64| {
            let i = rows - 1.0 - y.round();
            if (y - y.round()).abs() < 1e-9 && (0.0..rows).contains(&i) {
                bars[i as usize].label.clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(2 * bars.len() + 1)
            .y_label_formatter(&label_of)
            .y_label_style(("sans-serif", 13))
            .x_desc(value_label)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (k, name) in names.iter().enumerate() {
            let colour = Palette99::pick(k).to_rgba();
            let mut rectangles = Vec::new();
            for (i, bar) in bars.iter().enumerate() {
                let y = rows - 1.0 - i as f64;
                let mut start = 0.0;
                for (segment, value) in &bar.segments {
                    if segment == name {
                        rectangles
                            .push(Rectangle::new([(start, y - 0.35), (start + value, y + 0.35)], colour.filled()));
                    }
                    start += value;
                }
            }
            chart
                .draw_series(rectangles)
                .map_err(|e| err(e.to_string()))?
                .label(name.to_string())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled()));
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight).map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    write_rgb_png(path, WIDTH, height, &rgb)
}

/// One kernel of a speed-of-light chart: its throughput as a percentage of the device's peak
/// memory (`memory`) and compute (`compute`) throughput, and its time, which sets its area.
pub struct SolPoint {
    pub label: String,
    /// The kind of op, which sets the colour (legend in first-seen order).
    pub kind: String,
    pub memory: f64,
    pub compute: f64,
    pub ms: f64,
}

/// Side of the square speed-of-light chart in pixels.
const SOL_SIZE: u32 = 1100;
/// Kernels named beside their points, the longest first; the rest are unlabelled.
const SOL_LABELLED: usize = 12;

/// Draws `points` as circles on [0, 100] x [0, 100] (% of peak memory throughput across, % of
/// peak compute throughput up), each circle's area proportional to its kernel's time, the
/// longest kernels named. A kernel on the right or top edge is at a roof; near the origin it
/// is latency- or launch-bound.
pub fn speed_of_light(path: &Path, title: &str, points: &[SolPoint]) -> Result<()> {
    register_font();
    let err = |e: String| Error::format(path.display().to_string(), e);
    if points.is_empty() {
        return Err(err("no kernels to draw".into()));
    }
    for p in points {
        let inside = |v: f64| v.is_finite() && (0.0..=100.5).contains(&v);
        if !inside(p.memory) || !inside(p.compute) || !p.ms.is_finite() || p.ms < 0.0 {
            return Err(err(format!(
                "kernel {:?}: memory {}%, compute {}%, {} ms: percentages in [0, 100] and a non-negative time",
                p.label, p.memory, p.compute, p.ms
            )));
        }
    }
    let mut kinds: Vec<&str> = Vec::new();
    for p in points {
        if !kinds.contains(&p.kind.as_str()) {
            kinds.push(&p.kind);
        }
    }
    let longest = points.iter().map(|p| p.ms).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let radius = |ms: f64| (4.0 + 36.0 * (ms / longest).sqrt()) as i32;
    let mut by_time: Vec<&SolPoint> = points.iter().collect();
    by_time.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    let mut rgb = vec![0u8; 3 * (SOL_SIZE * SOL_SIZE) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (SOL_SIZE, SOL_SIZE)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..105.0, 0.0..105.0)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("memory throughput, % of peak")
            .y_desc("compute (SM) throughput, % of peak")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        // The roofs.
        let roof = BLACK.stroke_width(2);
        chart
            .draw_series([PathElement::new(vec![(100.0, 0.0), (100.0, 100.0), (0.0, 100.0)], roof)])
            .map_err(|e| err(e.to_string()))?;
        for (k, kind) in kinds.iter().enumerate() {
            let colour = Palette99::pick(k).to_rgba();
            let circles = by_time
                .iter()
                .rev() // the small ones drawn last, on top
                .filter(|p| p.kind == *kind)
                .map(|p| Circle::new((p.memory, p.compute), radius(p.ms), colour.mix(0.55).filled()));
            chart
                .draw_series(circles)
                .map_err(|e| err(e.to_string()))?
                .label(kind.to_string())
                .legend(move |(x, y)| Circle::new((x + 7, y), 6, colour.filled()));
        }
        let labels = by_time.iter().take(SOL_LABELLED).map(|p| {
            let text = format!("{} ({:.2} ms)", p.label, p.ms);
            Text::new(text, (p.memory, p.compute), ("sans-serif", 12).into_font())
        });
        chart.draw_series(labels).map_err(|e| err(e.to_string()))?;
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft).map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    write_rgb_png(path, SOL_SIZE, SOL_SIZE, &rgb)
}
