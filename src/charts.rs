//! Charts of measurements as PNG (plotters, with the DejaVu font embedded from a crate so no
//! system font is needed): the stacked bars of `msclip bench chart`. The run's loss and accuracy
//! plots (train/plot.rs) share the font.

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
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    write_rgb_png(path, WIDTH, height, &rgb)
}
