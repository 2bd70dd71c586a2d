//! `scan --report FILE.svg`: one page a clinician (or whoever debugs a bad
//! scan) can read — the pulse wave with its detected beats, the pulse
//! spectrum with the heart-rate peak and the bands the SNR is measured in,
//! and the breathing wave.
//!
//! Owns: rendering a [`ScanReport`] to SVG with plotters (into a string; the
//! caller writes the file). Only signal summaries are drawn: no frame, no
//! image of the person, ever.
//!
//! SVG only: a PNG would need a font rasteriser (a C library) in the build.

use super::scan::ScanReport;
use crate::signal::spectrum::SpectrumEstimator;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Why a report could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the report: {0}")]
pub struct ReportError(String);

fn err(e: impl std::fmt::Display) -> ReportError {
    ReportError(e.to_string())
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One captioned panel with labelled axes.
fn panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    (x_desc, y_desc): (&str, &str),
) -> Result<Chart<'a, 'b>, ReportError> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 14))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    Ok(chart)
}

/// The SVG text of the report.
pub fn render_svg(report: &ScanReport) -> Result<String, ReportError> {
    let r = &report.result;
    let fs = if r.wave_fs_hz > 0.0 {
        r.wave_fs_hz
    } else {
        30.0
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 1020)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let status = match report.cancelled {
            Some(c) => format!("cancelled: {}", c.code()),
            None => "completed".into(),
        };
        let num = |v: Option<f64>, d: usize| v.map_or("—".to_string(), |x| format!("{x:.d$}"));
        let title = format!(
            "{status}: HR {} bpm (confidence {:.2}, SNR {} dB), RR {} /min, RMSSD {} ms, {:.1} s",
            num(r.hr_bpm, 1),
            r.confidence,
            num(r.snr_db, 1),
            num(r.rr_bpm, 1),
            num(r.rmssd_ms, 0),
            r.duration_s
        );
        let root = root.titled(&title, ("sans-serif", 16)).map_err(err)?;
        let panels = root.split_evenly((3, 1));

        // 1. Pulse wave and beats.
        let t0 = 0.0;
        let pulse: Vec<(f64, f64)> = r
            .pulse
            .iter()
            .enumerate()
            .map(|(i, v)| (t0 + i as f64 / fs, *v))
            .collect();
        let span = pulse.last().map_or(1.0, |p| p.0.max(1.0));
        let amp = r.pulse.iter().fold(1e-9f64, |m, v| m.max(v.abs())) * 1.1;
        // Beats are drawn only with a trusted heart rate: the beats of a
        // rhythm the agent does not trust would look like a finding.
        let beats: &[f64] = if r.hr_bpm.is_some() {
            &r.beat_times_s
        } else {
            &[]
        };
        let caption = if r.hr_bpm.is_some() {
            format!(
                "{}: pulse wave (band-passed) and {} detected beats",
                report.measurement_id,
                beats.len()
            )
        } else {
            format!(
                "{}: pulse wave (band-passed); no beats drawn, the heart rate is not trusted",
                report.measurement_id
            )
        };
        let mut chart = panel(
            &panels[0],
            &caption,
            0.0..span,
            -amp..amp,
            ("seconds", "pulse (a.u.)"),
        )?;
        chart
            .draw_series(LineSeries::new(pulse.iter().copied(), &RED))
            .map_err(err)?;
        let at = |t: f64| {
            let i = ((t - t0) * fs).round().max(0.0) as usize;
            r.pulse.get(i).copied().unwrap_or(0.0)
        };
        chart
            .draw_series(
                beats
                    .iter()
                    .map(|&t| Circle::new((t, at(t)), 3, BLACK.filled())),
            )
            .map_err(err)?;

        // 2. Spectrum with the HR peak and the SNR bands (±0.1 Hz, and ±0.2 Hz at the harmonic).
        let mut est = SpectrumEstimator::new(fs, 0.01, r.pulse.len().max(16));
        let df = est.df_hz();
        let power: Vec<f64> = if r.pulse.len() >= 16 {
            est.periodogram(&r.pulse).to_vec()
        } else {
            Vec::new()
        };
        let (lo, hi) = (0.5, 4.5);
        let pts: Vec<(f64, f64)> = power
            .iter()
            .enumerate()
            .map(|(k, p)| (k as f64 * df, *p))
            .filter(|(f, _)| (lo..=hi).contains(f))
            .map(|(f, p)| (f * 60.0, p))
            .collect();
        let top = pts.iter().fold(1e-12f64, |m, p| m.max(p.1)) * 1.1;
        let mut chart = panel(
            &panels[1],
            "pulse spectrum: HR peak (line), SNR signal bands (shaded)",
            lo * 60.0..hi * 60.0,
            0.0..top,
            ("beats per minute", "power"),
        )?;
        if let Some(hr) = r.hr_bpm {
            let f0 = hr / 60.0;
            for (c, w) in [(f0, 0.1), (2.0 * f0, 0.2)] {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [((c - w) * 60.0, 0.0), ((c + w) * 60.0, top)],
                        GREEN.mix(0.2).filled(),
                    )))
                    .map_err(err)?;
            }
            chart
                .draw_series(LineSeries::new(
                    [(hr, 0.0), (hr, top)],
                    BLUE.stroke_width(2),
                ))
                .map_err(err)?;
        }
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), &BLACK))
            .map_err(err)?;

        // 3. Breathing.
        let wave: Vec<(f64, f64)> = r
            .respiration_wave
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64 / fs, *v))
            .collect();
        let span = wave.last().map_or(1.0, |p| p.0.max(1.0));
        let amp = r
            .respiration_wave
            .iter()
            .fold(1e-12f64, |m, v| m.max(v.abs()))
            * 1.1;
        let caption = if r.respiration_wave.is_empty() {
            "breathing wave: not measured (it needs 20 s of signal)".to_string()
        } else {
            format!(
                "breathing wave (best surrogate, band-passed): RR {} /min, confidence {:.2}",
                num(r.rr_bpm, 1),
                r.rr_confidence
            )
        };
        let mut chart = panel(
            &panels[2],
            &caption,
            0.0..span,
            -amp..amp,
            ("seconds", "breathing (a.u.)"),
        )?;
        chart
            .draw_series(LineSeries::new(wave.iter().copied(), &BLUE))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::SourceInfo;
    use crate::measurement::ScanResult;

    fn report(hr: Option<f64>) -> ScanReport {
        let fs = 30.0;
        let pulse: Vec<f64> = (0..600)
            .map(|i| (2.0 * std::f64::consts::PI * 1.2 * i as f64 / fs).sin())
            .collect();
        ScanReport {
            session_id: "ses_1".into(),
            measurement_id: "msr_1".into(),
            source: SourceInfo {
                kind: "synthetic",
                description: String::new(),
                width: 1,
                height: 1,
                fps: 30.0,
                truth: None,
            },
            cancelled: None,
            constraint: None,
            locked_at_s: Some(0.0),
            first_result_at_s: Some(5.0),
            result: ScanResult {
                hr_bpm: hr,
                confidence: 0.9,
                snr_db: Some(4.0),
                rr_bpm: Some(15.0),
                rr_confidence: 0.8,
                rmssd_ms: Some(30.0),
                hrv_confidence: 0.8,
                duration_s: 20.0,
                frames: 600,
                beat_times_s: (0..24).map(|k| 0.2 + k as f64 / 1.2).collect(),
                respiration_wave: pulse.iter().map(|v| v * 0.1).collect(),
                wave_fs_hz: fs,
                pulse,
            },
            frames_dropped: 0,
            processing_time_ms: 1,
            events: 1,
        }
    }

    #[test]
    fn the_report_draws_the_three_panels_with_the_numbers_in_the_title() {
        let svg = render_svg(&report(Some(72.0))).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60]);
        for needle in [
            "HR 72.0 bpm",
            "RR 15.0 /min",
            "pulse wave",
            "pulse spectrum",
            "breathing wave",
            "24 detected beats",
        ] {
            assert!(svg.contains(needle), "{needle}");
        }
        // Beats are drawn as circles; waves as polylines.
        assert!(svg.matches("<circle").count() >= 24);
        assert!(svg.contains("<polyline"));
    }

    #[test]
    fn beats_are_drawn_only_with_a_trusted_heart_rate() {
        // A cancelled scan keeps its wave (what a bad scan is debugged
        // with), but its beats would look like a finding.
        let mut r = report(None);
        r.cancelled = Some(crate::measurement::CancelReason::LowSnr);
        let svg = render_svg(&r).unwrap();
        assert!(svg.contains("no beats drawn, the heart rate is not trusted"));
        assert!(svg.contains("<polyline"));
        assert_eq!(svg.matches("<circle").count(), 0);
    }

    #[test]
    fn a_cancelled_scan_without_signal_still_gets_a_readable_report() {
        let mut r = report(None);
        r.cancelled = Some(crate::measurement::CancelReason::LowSnr);
        r.result.pulse.clear();
        r.result.beat_times_s.clear();
        r.result.respiration_wave.clear();
        let svg = render_svg(&r).unwrap();
        assert!(svg.contains("cancelled: LOW_SNR") && svg.contains("HR — bpm"));
        assert!(svg.contains("not measured"));
    }
}
