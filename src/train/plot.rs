//! PNG line plots of a run's loss and evaluation accuracy (plotters, with the embedded font of
//! crate::charts).

use std::path::Path;

use plotters::prelude::*;

use crate::charts::register_font;
use crate::error::{Error, Result};
use crate::files::write_rgb_png;

/// Plot size in pixels.
const WIDTH: u32 = 900;
const HEIGHT: u32 = 500;

/// A named series of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const REFERENCE_COLOURS: [RGBColor; 3] = [RGBColor(40, 40, 40), RGBColor(130, 130, 130), RGBColor(90, 60, 140)];

/// A horizontal reference line (a chance level), drawn dashed and named in the legend.
pub struct Reference {
    pub name: String,
    pub y: f64,
}

/// Draws `series` and the `references` into a PNG at `path` (rendered in memory, then written atomically).
pub fn line_plot(
    path: &Path,
    (title, x_label, y_label): (&str, &str, &str),
    series: &[Series],
    references: &[Reference],
) -> Result<()> {
    register_font();
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Ok(()); // nothing to draw yet
    }
    for r in references.iter().filter(|r| r.y.is_finite()) {
        (y0, y1) = (y0.min(r.y), y1.max(r.y));
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let (x1, y0, y1) = (x1.max(x0 + 1.0), y0 - pad, y1 + pad);
    let err = |e: String| Error::format(path.display().to_string(), e);
    let mut rgb = vec![0u8; 3 * (WIDTH * HEIGHT) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(e.to_string()))?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(|e| err(e.to_string()))?;
        for (i, s) in series.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), colour.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        for (i, r) in references.iter().enumerate() {
            // Dark and dashed so a chance level never reads as a data series.
            let colour = REFERENCE_COLOURS[i % REFERENCE_COLOURS.len()];
            let line = DashedLineSeries::new([(x0, r.y), (x1, r.y)], 8, 6, colour.stroke_width(2));
            chart
                .draw_series(line)
                .map_err(|e| err(e.to_string()))?
                .label(r.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        if series.len() + references.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    write_rgb_png(path, WIDTH, HEIGHT, &rgb)
}
