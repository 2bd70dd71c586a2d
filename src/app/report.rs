//! `scan --report FILE.svg`: one page a clinician (or whoever debugs a bad
//! scan) can read and print — a header (time, device, subject, ids, the
//! result), the heart rate over the scan, the pulse wave with its detected
//! beats, the pulse spectrum with the heart-rate peak and the bands the SNR
//! is measured in, and the breathing wave; each with a legend, one colour
//! per quantity. A value that was not trusted is "—", and neither its wave
//! nor its beats are drawn (the spectrum always is: it shows why).
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

/// Type sizes (px): readable on a printed A4 page at the SVG's 1000 px width.
const TITLE_PX: u32 = 24;
const HEADER_PX: u32 = 17;
const CAPTION_PX: u32 = 17;
const LABEL_PX: u32 = 14;

/// One colour per quantity, the same wherever it appears (and legible in
/// grey print: different lightness too).
const HR_COLOUR: RGBColor = RGBColor(200, 30, 45);
const PULSE_COLOUR: RGBColor = RGBColor(120, 20, 30);
const BEAT_COLOUR: RGBColor = RGBColor(20, 20, 20);
const SPECTRUM_COLOUR: RGBColor = RGBColor(60, 60, 60);
const BAND_COLOUR: RGBColor = RGBColor(40, 150, 70);
const BREATH_COLOUR: RGBColor = RGBColor(20, 110, 190);

/// A tick label: at most 3 significant digits, and never "-0".
fn tick(v: &f64) -> String {
    let v = if v.abs() < 1e-12 { 0.0 } else { *v };
    let a = v.abs();
    let text = if a == 0.0 {
        "0".to_string()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        let digits = (2 - a.log10().floor() as i32).clamp(1, 8) as usize;
        format!("{v:.digits$}")
    };
    match text.trim_end_matches('0').trim_end_matches('.') {
        "" | "-" | "-0" => "0".to_string(),
        t if text.contains('.') => t.to_string(),
        _ => text,
    }
}

/// One captioned panel with labelled axes.
fn panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    (x_desc, y_desc): (&str, &str),
) -> Result<Chart<'a, 'b>, ReportError> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", CAPTION_PX))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", LABEL_PX))
        .axis_desc_style(("sans-serif", LABEL_PX))
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    Ok(chart)
}

/// The legend of a panel's labelled series.
fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> Result<(), ReportError> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", LABEL_PX))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(err)
}

/// A chart with nothing trusted to draw: its caption says why, the area
/// stays empty.
fn empty_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
) -> Result<(), ReportError> {
    area.draw(&Text::new(
        caption.to_string(),
        (70, 40),
        ("sans-serif", CAPTION_PX)
            .into_font()
            .color(&RGBColor(90, 90, 90)),
    ))
    .map_err(err)
}

/// The SVG text of the report.
pub fn render_svg(report: &ScanReport) -> Result<String, ReportError> {
    let r = &report.result;
    let fs = if r.wave_fs_hz > 0.0 {
        r.wave_fs_hz
    } else {
        30.0
    };
    let num = |v: Option<f64>, d: usize| v.map_or("—".to_string(), |x| format!("{x:.d$}"));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 1400)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (header, body) = root.split_vertically(150);

        // Header: what, when, where, who; then the result in one line.
        let status = match report.cancelled {
            Some(c) => format!("cancelled ({})", c.code()),
            None => "completed".into(),
        };
        let line = |text: String, y: i32, px: u32, colour: &RGBColor| {
            header
                .draw(&Text::new(
                    text,
                    (20, y),
                    ("sans-serif", px).into_font().color(colour),
                ))
                .map_err(err)
        };
        line(
            format!("rppg-agent scan report: {status}"),
            14,
            TITLE_PX,
            &BLACK,
        )?;
        let ctx = &report.context;
        line(
            format!(
                "{}  ·  device {}  ·  subject {}{}",
                crate::events::rfc3339(report.started_unix_ms),
                report.device_id,
                ctx.subject.as_deref().unwrap_or("not given"),
                ctx.external_id
                    .as_deref()
                    .map_or(String::new(), |e| format!("  ·  external id {e}")),
            ),
            50,
            HEADER_PX,
            &RGBColor(60, 60, 60),
        )?;
        line(
            format!(
                "scan {}  ·  measurement {}  ·  {:.1} s of signal, {} frames",
                ctx.scan_id.as_deref().unwrap_or("—"),
                report.measurement_id,
                r.duration_s,
                r.frames
            ),
            76,
            HEADER_PX,
            &RGBColor(60, 60, 60),
        )?;
        line(
            format!(
                "heart rate {} bpm (confidence {:.2}, SNR {} dB)  ·  breathing {} /min  ·  HRV (RMSSD) {} ms      (— : not measured or not trusted)",
                num(r.hr_bpm, 1),
                r.confidence,
                num(r.snr_db, 1),
                num(r.rr_bpm, 1),
                num(r.rmssd_ms, 0),
            ),
            108,
            HEADER_PX,
            &BLACK,
        )?;
        let panels = body.split_evenly((4, 1));

        // 1. Heart rate over the scan (the trusted live estimates).
        let span = r.duration_s.max(1.0);
        if report.hr_trend.is_empty() {
            empty_panel(
                &panels[0],
                "heart rate over the scan: no trusted estimate to draw",
            )?;
        } else {
            let (lo, hi) = report
                .hr_trend
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
            let mut chart = panel(
                &panels[0],
                "heart rate over the scan (live estimates, trusted only)",
                0.0..span,
                (lo - 5.0).floor()..(hi + 5.0).ceil(),
                ("seconds of signal", "bpm"),
            )?;
            chart
                .draw_series(LineSeries::new(
                    report.hr_trend.iter().copied(),
                    HR_COLOUR.stroke_width(2),
                ))
                .map_err(err)?
                .label("live heart rate")
                .legend(|(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], HR_COLOUR.stroke_width(2))
                });
            if let Some(hr) = r.hr_bpm {
                chart
                    .draw_series(LineSeries::new(
                        [(0.0, hr), (span, hr)],
                        HR_COLOUR.mix(0.5).stroke_width(1),
                    ))
                    .map_err(err)?
                    .label(format!("final {hr:.1} bpm"))
                    .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], HR_COLOUR.mix(0.5)));
            }
            legend(&mut chart)?;
        }

        // 2. Pulse wave and beats: only with a trusted heart rate (a wave
        // and beats of a rhythm the agent does not trust would look like
        // a finding).
        if r.hr_bpm.is_none() || r.pulse.is_empty() {
            empty_panel(
                &panels[1],
                "pulse wave: not drawn, the heart rate is not trusted (the spectrum below shows why)",
            )?;
        } else {
            let pulse: Vec<(f64, f64)> = r
                .pulse
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64 / fs, *v))
                .collect();
            let span = pulse.last().map_or(1.0, |p| p.0.max(1.0));
            let amp = r.pulse.iter().fold(1e-9f64, |m, v| m.max(v.abs())) * 1.25;
            let mut chart = panel(
                &panels[1],
                &format!(
                    "pulse wave (band-passed) and {} detected beats",
                    r.beat_times_s.len()
                ),
                0.0..span,
                // Headroom above the wave for the legend.
                -amp..1.7 * amp,
                ("seconds", "pulse (a.u.)"),
            )?;
            chart
                .draw_series(LineSeries::new(pulse.iter().copied(), &PULSE_COLOUR))
                .map_err(err)?
                .label("pulse wave")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], PULSE_COLOUR));
            let at = |t: f64| {
                let i = (t * fs).round().max(0.0) as usize;
                r.pulse.get(i).copied().unwrap_or(0.0)
            };
            chart
                .draw_series(
                    r.beat_times_s
                        .iter()
                        .map(|&t| Circle::new((t, at(t)), 3, BEAT_COLOUR.filled())),
                )
                .map_err(err)?
                .label("detected beat")
                .legend(|(x, y)| Circle::new((x + 10, y), 3, BEAT_COLOUR.filled()));
            legend(&mut chart)?;
        }

        // 3. Spectrum with the HR peak and the SNR bands (±0.1 Hz, and ±0.2
        // Hz at the harmonic): drawn whatever the outcome, it is how a bad
        // scan is understood.
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
        if pts.is_empty() {
            empty_panel(&panels[2], "pulse spectrum: no signal to analyse")?;
        } else {
            let top = pts.iter().fold(1e-12f64, |m, p| m.max(p.1)) * 1.15;
            let mut chart = panel(
                &panels[2],
                "pulse spectrum",
                lo * 60.0..hi * 60.0,
                0.0..top,
                ("beats per minute", "power (a.u.)"),
            )?;
            if let Some(hr) = r.hr_bpm {
                let f0 = hr / 60.0;
                for (i, (c, w)) in [(f0, 0.1), (2.0 * f0, 0.2)].into_iter().enumerate() {
                    let band = chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [((c - w) * 60.0, 0.0), ((c + w) * 60.0, top)],
                            BAND_COLOUR.mix(0.18).filled(),
                        )))
                        .map_err(err)?;
                    if i == 0 {
                        band.label("SNR signal bands (HR, harmonic)")
                            .legend(|(x, y)| {
                                Rectangle::new(
                                    [(x, y - 5), (x + 20, y + 5)],
                                    BAND_COLOUR.mix(0.3).filled(),
                                )
                            });
                    }
                }
                chart
                    .draw_series(LineSeries::new(
                        [(hr, 0.0), (hr, top)],
                        HR_COLOUR.stroke_width(2),
                    ))
                    .map_err(err)?
                    .label(format!("heart rate {hr:.1} bpm"))
                    .legend(|(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], HR_COLOUR.stroke_width(2))
                    });
            }
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), &SPECTRUM_COLOUR))
                .map_err(err)?
                .label("power")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], SPECTRUM_COLOUR));
            legend(&mut chart)?;
        }

        // 4. Breathing: the wave only with a trusted rate.
        if r.rr_bpm.is_none() || r.respiration_wave.is_empty() {
            let why = if r.respiration_wave.is_empty() {
                "breathing: not measured (it needs 20 s of signal)".to_string()
            } else {
                format!(
                    "breathing: not drawn, the rate is not trusted (confidence {:.2})",
                    r.rr_confidence
                )
            };
            empty_panel(&panels[3], &why)?;
        } else {
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
                * 1.25;
            let mut chart = panel(
                &panels[3],
                &format!(
                    "breathing wave: {} /min, confidence {:.2}",
                    num(r.rr_bpm, 1),
                    r.rr_confidence
                ),
                0.0..span,
                -amp..1.6 * amp,
                ("seconds", "breathing (a.u.)"),
            )?;
            chart
                .draw_series(LineSeries::new(
                    wave.iter().copied(),
                    BREATH_COLOUR.stroke_width(2),
                ))
                .map_err(err)?
                .label("breathing (best surrogate, band-passed)")
                .legend(|(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], BREATH_COLOUR.stroke_width(2))
                });
            legend(&mut chart)?;
        }
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
            device_id: "kiosk-7".into(),
            started_unix_ms: 1_700_000_000_000,
            context: crate::events::ScanContext {
                scan_id: Some("scn_1".into()),
                external_id: Some("visit-42".into()),
                subject: Some("Patient/7".into()),
            },
            hr_trend: hr.map_or(Vec::new(), |h| {
                (5..20).map(|t| (t as f64, h + 0.1 * t as f64)).collect()
            }),
        }
    }

    #[test]
    fn the_report_has_a_header_four_panels_and_a_legend_in_distinct_colours() {
        let svg = render_svg(&report(Some(72.0))).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60]);
        for needle in [
            "2023-11-14T22:13:20.000+00:00",
            "device kiosk-7",
            "subject Patient/7",
            "external id visit-42",
            "scan scn_1",
            "heart rate 72.0 bpm",
            "breathing 15.0 /min",
            "heart rate over the scan",
            "live heart rate",
            "pulse wave",
            "pulse spectrum",
            "breathing wave",
            "24 detected beats",
            "detected beat",
        ] {
            assert!(svg.contains(needle), "{needle}");
        }
        // The heart rate and the breathing wave are not the same colour.
        let colour = |c: RGBColor| format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
        assert!(svg.contains(&colour(HR_COLOUR)) && svg.contains(&colour(BREATH_COLOUR)));
        assert_ne!(colour(HR_COLOUR), colour(BREATH_COLOUR));
        // Beats are drawn as circles; waves as polylines.
        assert!(svg.matches("<circle").count() >= 24);
        assert!(svg.contains("<polyline"));
    }

    #[test]
    fn ticks_have_three_significant_digits_and_never_a_minus_zero() {
        for (v, t) in [
            (0.0, "0"),
            (-0.0, "0"),
            (-1e-15, "0"),
            (0.0025, "0.0025"),
            (-0.5, "-0.5"),
            (72.0, "72"),
            (150.0, "150"),
            (12.34, "12.3"),
        ] {
            assert_eq!(tick(&v), t, "{v}");
        }
    }

    #[test]
    fn beats_are_drawn_only_with_a_trusted_heart_rate() {
        // A cancelled scan keeps its wave (what a bad scan is debugged
        // with), but its beats would look like a finding.
        let mut r = report(None);
        r.cancelled = Some(crate::measurement::CancelReason::LowSnr);
        r.result.rr_bpm = None;
        r.result.rr_confidence = 0.1;
        let svg = render_svg(&r).unwrap();
        assert!(svg.contains("pulse wave: not drawn, the heart rate is not trusted"));
        assert!(svg.contains("breathing: not drawn, the rate is not trusted (confidence 0.10)"));
        assert!(svg.contains("no trusted estimate to draw"));
        // The spectrum only: no pulse or breathing line, no beats.
        let colour = |c: RGBColor| format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
        assert!(svg.contains(&colour(SPECTRUM_COLOUR)));
        assert!(!svg.contains(&colour(PULSE_COLOUR)) && !svg.contains(&colour(BREATH_COLOUR)));
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
        assert!(svg.contains("cancelled (LOW_SNR)") && svg.contains("heart rate — bpm"));
        assert!(svg.contains("not measured"));
    }
}
