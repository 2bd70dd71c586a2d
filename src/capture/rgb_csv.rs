//! Per-frame mean RGB traces from CSV, for `analyze`.
//!
//! Owns: the trace file format researchers already have (e.g. the Welltory
//! PPG dataset, or traces exported from another pipeline).
//!
//! Format: a header row naming the columns; `R`, `G`, `B` are required
//! (case-insensitive, any order, other columns ignored); `time` (or
//! `time_ms`) in milliseconds is optional, and without it the caller supplies
//! the frame rate. Values are plain decimal numbers; blank lines are skipped.
//!
//! Invariants: every row has every required column as a finite number; time
//! never decreases (equal times are kept: the resampler keeps the first) and
//! never jumps by more than [`MAX_GAP_S`] nor runs past [`MAX_DURATION_S`] (a longer gap is another recording
//! or a broken clock, and would size the resampled signal); a UTF-8 byte
//! order mark (as spreadsheet exports write) is skipped; errors name the
//! line and column.

use super::CaptureError;
use std::io::BufRead;

/// The longest time between two rows, in seconds.
pub const MAX_GAP_S: f64 = 5.0;
/// The longest trace, in seconds (as the longest scan).
pub const MAX_DURATION_S: f64 = 3600.0;

/// A parsed trace: timestamps in seconds from the first row, and `[R, G, B]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbTrace {
    pub t_s: Vec<f64>,
    pub rgb: Vec<[f64; 3]>,
    /// Whether the timestamps came from the file (else from the frame rate).
    pub timed: bool,
}

/// Reads a trace from `reader`; `input` names it in messages. `fps` is used
/// when the file has no time column (and is an error to omit then).
pub fn read(reader: impl BufRead, input: &str, fps: Option<f64>) -> Result<RgbTrace, CaptureError> {
    let bad = |problem: String| CaptureError::BadCsv {
        input: input.to_string(),
        problem,
    };
    let mut lines = reader.lines().enumerate();
    let header = loop {
        match lines.next() {
            None => {
                return Err(bad(
                    "the file is empty; expected a header row with R,G,B".into()
                ))
            }
            Some((_, line)) => {
                let line = line.map_err(|source| CaptureError::Read {
                    input: input.to_string(),
                    source,
                })?;
                let line = line.strip_prefix('\u{feff}').unwrap_or(&line).to_string();
                if !line.trim().is_empty() {
                    break line;
                }
            }
        }
    };
    let names: Vec<String> = header
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_ascii_lowercase())
        .collect();
    let find = |want: &[&str]| names.iter().position(|n| want.contains(&n.as_str()));
    let (r, g, b) = match (find(&["r"]), find(&["g"]), find(&["b"])) {
        (Some(r), Some(g), Some(b)) => (r, g, b),
        _ => {
            return Err(bad(format!(
                "the header {header:?} lacks an R, G or B column (names are case-insensitive)"
            )))
        }
    };
    let time = find(&["time", "time_ms"]);
    let step_s = match (time, fps) {
        (Some(_), _) => None,
        (None, Some(f)) if (super::y4m::MIN_FPS..=super::y4m::MAX_FPS).contains(&f) => {
            Some(1.0 / f)
        }
        (None, Some(f)) => {
            return Err(bad(format!(
                "--fps {f} is outside {}..{} fps",
                super::y4m::MIN_FPS,
                super::y4m::MAX_FPS
            )))
        }
        (None, None) => {
            return Err(bad(
                "there is no time column (milliseconds); give the frame rate with --fps".into(),
            ))
        }
    };

    let mut trace = RgbTrace {
        t_s: Vec::new(),
        rgb: Vec::new(),
        timed: time.is_some(),
    };
    let mut t0: Option<f64> = None;
    for (i, line) in lines {
        let line_no = i + 1;
        let line = line.map_err(|source| CaptureError::Read {
            input: input.to_string(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = line
            .split(',')
            .map(|s| s.trim().trim_matches('"'))
            .collect();
        let cell = |col: usize| -> Result<f64, CaptureError> {
            let text = cells
                .get(col)
                .ok_or_else(|| bad(format!("line {line_no}: missing column {:?}", names[col])))?;
            let v: f64 = text.parse().map_err(|_| {
                bad(format!(
                    "line {line_no}, column {:?}: {text:?} is not a number",
                    names[col]
                ))
            })?;
            if !v.is_finite() {
                return Err(bad(format!(
                    "line {line_no}, column {:?}: {text} is not finite",
                    names[col]
                )));
            }
            Ok(v)
        };
        let rgb = [cell(r)?, cell(g)?, cell(b)?];
        let t = match (time, step_s) {
            (Some(c), _) => {
                let ms = cell(c)?;
                let origin = *t0.get_or_insert(ms);
                (ms - origin) / 1000.0
            }
            (None, Some(step)) => trace.t_s.len() as f64 * step,
            (None, None) => unreachable!("checked above"),
        };
        if let Some(&prev) = trace.t_s.last() {
            if t < prev {
                return Err(bad(format!(
                    "line {line_no}: time goes backwards ({:.0} ms after {:.0} ms)",
                    t * 1000.0,
                    prev * 1000.0
                )));
            }
            if t > MAX_DURATION_S {
                return Err(bad(format!(
                    "line {line_no}: the trace is longer than {MAX_DURATION_S} s; analyse it in parts"
                )));
            }
            if t - prev > MAX_GAP_S {
                return Err(bad(format!(
                    "line {line_no}: time jumps by {:.0} ms; rows more than {MAX_GAP_S} s apart \
                     are not one recording (split the file, or check the time column is in ms)",
                    (t - prev) * 1000.0
                )));
            }
        }
        trace.t_s.push(t);
        trace.rgb.push(rgb);
    }
    if trace.rgb.len() < 2 {
        return Err(bad(format!(
            "only {} data row(s); a trace needs many seconds of frames",
            trace.rgb.len()
        )));
    }
    Ok(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, fps: Option<f64>) -> Result<RgbTrace, CaptureError> {
        read(text.as_bytes(), "t.csv", fps)
    }

    #[test]
    fn a_timed_trace_in_any_column_order_and_case_is_read() {
        let t = parse("Time,b,G,r,extra\n1000,3,2,1,x\n1033,6,5,4,y\n\n", None).unwrap();
        assert_eq!(t.rgb, vec![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        assert_eq!(t.t_s, vec![0.0, 0.033]);
        assert!(t.timed);
    }

    #[test]
    fn a_byte_order_mark_before_the_header_is_skipped() {
        let t = parse("\u{feff}time,R,G,B\n0,1,2,3\n33,4,5,6\n", None).unwrap();
        assert_eq!(t.rgb.len(), 2);
        assert!(t.timed);
    }

    #[test]
    fn an_untimed_trace_uses_the_frame_rate() {
        let t = parse("R,G,B\n1,2,3\n4,5,6\n7,8,9\n", Some(20.0)).unwrap();
        assert_eq!(t.t_s, vec![0.0, 0.05, 0.1]);
        assert!(!t.timed);
    }

    #[test]
    fn problems_are_reported_with_line_and_column() {
        for (text, fps, needle) in [
            ("", None, "empty"),
            ("time,R,G\n0,1,2\n", None, "lacks an R, G or B"),
            ("R,G,B\n1,2,3\n", None, "--fps"),
            ("R,G,B\n1,2,3\n1,2,3\n", Some(0.0), "outside 1..1000 fps"),
            ("R,G,B\n1,2,3\n1,2,3\n", Some(1e-30), "outside 1..1000 fps"),
            (
                "time,R,G,B\n0,1,2,3\n1e18,1,2,3\n",
                None,
                "line 3: the trace is longer than 3600 s",
            ),
            (
                "time,R,G,B\n0,1,2,3\n33,1,2,3\n300000033,1,2,3\n",
                None,
                "line 4: the trace is longer",
            ),
            (
                "time,R,G,B\n0,1,2,3\n33,1,2,3\n6033,1,2,3\n",
                None,
                "line 4: time jumps by 6000 ms",
            ),
            (
                "time,R,G,B\n0,1,2,3\n5,1,x,3\n",
                None,
                "line 3, column \"g\"",
            ),
            (
                "time,R,G,B\n0,1,2,3\n5,1,2\n",
                None,
                "line 3: missing column \"b\"",
            ),
            (
                "time,R,G,B\n9,1,2,3\n5,1,2,3\n",
                None,
                "line 3: time goes backwards",
            ),
            ("time,R,G,B\n0,1,2,NaN\n5,1,2,3\n", None, "not finite"),
            ("R,G,B\n1,2,3\n", Some(30.0), "only 1 data row"),
        ] {
            let err = parse(text, fps).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
