//! Robustness-vs-ε curves: one chart per task and threat setting, a line per encoder and attack,
//! the clean figure at ε = 0; drawn with plotters as SVG and as PNG (text rendered with the
//! embedded DejaVu Sans, so no system font is needed).

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One line of a chart.
pub struct Series {
    pub name: String,
    /// (ε, value), sorted by ε.
    pub points: Vec<(f64, f64)>,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const WIDTH: u32 = 720;
const HEIGHT: u32 = 440;

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).ok();
    });
}

/// A colour per line, distinguishable in print.
fn colour(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, c: &Chart) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("cannot draw the chart '{}': {e:?}", c.title);
    root.fill(&WHITE).map_err(err)?;
    let xs = c.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = c.series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let x_max = xs.fold(0.0f64, f64::max).max(1e-9);
    let (y_lo, y_hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (y_lo, y_hi) = if y_lo.is_finite() { (y_lo.min(0.0), y_hi.max(y_lo + 1e-6)) } else { (0.0, 1.0) };
    let pad = (y_hi - y_lo) * 0.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(&c.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max * 1.04, y_lo..(y_hi + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(&c.x_label)
        .y_desc(&c.y_label)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, s) in c.series.iter().enumerate() {
        let col = colour(i);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), col.stroke_width(2)))
            .map_err(err)?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, col.filled()))).map_err(err)?;
    }
    // The legend goes where the lines are not: up right when they fall with ε, down right when
    // they rise (errors).
    let (first, last): (f64, f64) =
        c.series.iter().fold((0.0, 0.0), |(f, l), s| (f + s.points.first().map_or(0.0, |p| p.1), l + s.points.last().map_or(0.0, |p| p.1)));
    let position = if last <= first { SeriesLabelPosition::UpperRight } else { SeriesLabelPosition::LowerRight };
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// The chart as an SVG document.
pub fn svg(c: &Chart) -> Result<String> {
    register_font();
    let mut out = String::new();
    draw(SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area(), c)?;
    Ok(out)
}

/// The chart as PNG bytes.
pub fn png(c: &Chart) -> Result<Vec<u8>> {
    register_font();
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    draw(BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area(), c)?;
    let img = image::RgbImage::from_raw(WIDTH, HEIGHT, rgb).ok_or_else(|| anyhow!("a chart buffer of the wrong size"))?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    Ok(bytes)
}
