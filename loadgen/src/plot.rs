//! `plot`: result files -> one PNG with the latency percentile curves (log scale, tail stretched like
//! HdrHistogram plots) and the receive throughput of each run. Uses plotters' bitmap backend with a bundled
//! font (DejaVu Sans), so no system font or graphics libraries are needed.

use std::path::Path;

use plotters::prelude::*;

use crate::stats::Report;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// x position of a percentile: log10(1 / (1 - p)), so 90, 99, 99.9 ... are evenly spaced.
fn tail_x(pct: f64) -> f64 {
    let q = (pct / 100.0).min(0.999_999);
    (1.0 / (1.0 - q)).log10()
}

fn series_label(r: &Report) -> String {
    let rate = if r.offered_rate > 0.0 {
        format!("{:.0}/s", r.offered_rate)
    } else {
        "max".into()
    };
    format!("{} {} q{} {}", r.broker, r.scenario, r.qos, rate)
}

pub fn plot(reports: &[Report], out: &Path, title: &str) -> Result<(), String> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| "bundled font is invalid")?;
    let err = |e: &dyn std::fmt::Display| format!("plot: {e}");
    let root = BitMapBackend::new(out, (1600, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 28))
        .map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(900);

    let with_latency: Vec<&Report> = reports
        .iter()
        .filter(|r| !r.latency_curve.is_empty())
        .collect();
    let max_us = with_latency
        .iter()
        .flat_map(|r| r.latency_curve.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.5;
    let min_us = with_latency
        .iter()
        .flat_map(|r| r.latency_curve.iter().map(|p| p.1))
        .filter(|v| *v > 0.0)
        .fold(f64::MAX, f64::min)
        .min(max_us / 10.0)
        .max(0.1)
        * 0.7;
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "publish-to-deliver latency by percentile (log)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..tail_x(99.9999), (min_us..max_us).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency")
        .y_label_formatter(&|v| {
            if *v >= 1e6 {
                format!("{:.0} s", v / 1e6)
            } else if *v >= 1e3 {
                format!("{:.0} ms", v / 1e3)
            } else {
                format!("{v:.0} µs")
            }
        })
        .x_labels(7)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-*x));
            if p < 99.0 {
                format!("{p:.0}")
            } else {
                format!("{p:.4}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_string()
            }
        })
        .draw()
        .map_err(|e| err(&e))?;
    for (i, r) in with_latency.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = r
            .latency_curve
            .iter()
            .filter(|p| p.0 < 100.0)
            .map(|p| (tail_x(p.0), p.1.max(min_us)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(series_label(r))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;

    // Throughput: received (and sent) msg/s per run.
    let runs: Vec<&Report> = reports.iter().filter(|r| r.scenario != "conn").collect();
    let top = runs
        .iter()
        .map(|r| r.recv_rate.max(r.send_rate))
        .fold(1.0f64, f64::max)
        * 1.15;
    let n = runs.len().max(1);
    let mut bars = ChartBuilder::on(&right)
        .caption(
            "throughput (msg/s): sent light, received dark",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..n as f64, 0.0..top)
        .map_err(|e| err(&e))?;
    bars.configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| format!("#{}", x.floor() as usize + 1))
        .y_label_formatter(&|y| {
            if *y >= 1e6 {
                format!("{:.1}M", y / 1e6)
            } else {
                format!("{:.0}k", y / 1e3)
            }
        })
        .draw()
        .map_err(|e| err(&e))?;
    for (i, r) in runs.iter().enumerate() {
        let color = Palette99::pick(i);
        let x = i as f64;
        bars.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.1, 0.0), (x + 0.45, r.send_rate)],
            color.mix(0.4).filled(),
        )))
        .map_err(|e| err(&e))?;
        bars.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.5, 0.0), (x + 0.85, r.recv_rate)],
            color.filled(),
        )))
        .map_err(|e| err(&e))?
        .label(format!("#{} {}", i + 1, series_label(r)))
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    bars.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("p.png");
        let r = Report {
            scenario: "fanin".into(),
            broker: "mosquitto".into(),
            send_rate: 1000.0,
            recv_rate: 990.0,
            latency_curve: vec![
                (0.0, 20.0),
                (50.0, 40.0),
                (99.0, 200.0),
                (99.9, 900.0),
                (100.0, 1500.0),
            ],
            ..Default::default()
        };
        plot(
            &[
                r.clone(),
                Report {
                    broker: "coremq".into(),
                    ..r
                },
            ],
            &out,
            "t",
        )
        .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 10_000);
    }
}
