//! Capture stage: where frames come from.
//!
//! Owns: the [`FrameSource`] seam and its implementations — the seeded
//! synthetic face video ([`synthetic`]), YUV4MPEG2 files and pipes ([`y4m`]),
//! directories of PNG/JPEG frames ([`frames_dir`]) — plus the parser for
//! `--input` specs and the per-frame RGB trace CSV reader ([`rgb_csv`]) used
//! by `analyze`, and the webcam ([`camera`]; the device itself behind the
//! `camera` cargo feature).
//!
//! Invariants:
//! - A frame keeps the layout its source delivers ([`frame::Layout`]:
//!   planar Y'CbCr from y4m, YUYV or MJPEG-decoded RGB from a camera, RGB
//!   from stills and the generator); vision reads luma and RGB rows through
//!   [`Frame`]'s view, converting only the pixels it reads.
//! - Timestamps are seconds from the first frame, strictly increasing.
//! - The caller owns the frame buffer (`next_frame(&mut Frame)`), so a source
//!   reuses one allocation for the whole scan.
//! - Frames live only in memory: nothing here writes a frame anywhere.
//! - Every bad input is a [`CaptureError`] that names the input and what is
//!   wrong (and the frame index when a frame is bad), never a panic.

pub mod camera;
pub mod frame;
pub mod frames_dir;
pub mod readahead;
pub mod rgb_csv;
pub mod scene;
pub mod stall;
pub mod synthetic;
pub mod y4m;

pub use frame::{Chroma, Frame, Layout};
use std::path::PathBuf;

/// What a source is, reported in CAMERA_STARTED.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// `synthetic`, `y4m`, `frames` or `camera`.
    pub kind: &'static str,
    /// Human description (path, device, or synthetic parameters).
    pub description: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// Known truth, for synthetic sources only.
    pub truth: Option<Truth>,
}

/// Ground truth of a synthetic video.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Truth {
    /// NaN (as is `rmssd_ms`) for a video without a pulse: no heart rate
    /// measured on it is right.
    pub hr_bpm: f64,
    pub rr_bpm: f64,
    pub rmssd_ms: f64,
}

/// A source of frames: synthetic, file, pipe or camera.
pub trait FrameSource: Send {
    fn info(&self) -> &SourceInfo;
    /// Fills `frame` with the next frame; `Ok(false)` at the end of the input.
    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError>;
    /// Frames the source had to drop because the consumer was behind.
    fn frames_dropped(&self) -> u64 {
        0
    }
    /// The truth over `t0_s..t1_s` of the video, when the source knows it
    /// (a scan compares with the stretch it measured, not the whole video).
    fn truth_between(&self, _t0_s: f64, _t1_s: f64) -> Option<Truth> {
        None
    }
}

/// Everything that can go wrong getting frames or traces.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open input {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read input {input}: {source}")]
    Read {
        input: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid --input {spec:?}: {problem}")]
    Spec { spec: String, problem: String },
    #[error("{input}: bad header: {problem}")]
    BadHeader { input: String, problem: String },
    #[error("{input}: unsupported colour space {colour_space:?}; supported: 420jpeg, 420paldv, 420mpeg2, 420, 422, 444, mono (8-bit)")]
    UnsupportedColourSpace { input: String, colour_space: String },
    #[error("{input}: frame {index} is truncated: expected {expected} bytes, got {got}")]
    Truncated {
        input: String,
        index: u64,
        expected: usize,
        got: usize,
    },
    #[error("{input}: frame {index}: {problem}")]
    BadFrame {
        input: String,
        index: u64,
        problem: String,
    },
    #[error("{input}: zero-size frames ({width}x{height})")]
    ZeroSize {
        input: String,
        width: u32,
        height: u32,
    },
    #[error("{input}: {problem}")]
    BadCsv { input: String, problem: String },
    #[error("camera input is not available in this build: {0}")]
    CameraUnavailable(String),
    #[error("camera: {0}")]
    Camera(camera::CameraFailure),
    #[error("{input}: no data for {after_s:.1} s: the input stalled (is the program writing it still running?)")]
    Stalled { input: String, after_s: f64 },
}

impl CaptureError {
    /// The `details` code of the event that reports this error
    /// (`CAMERA_PERMISSION_DENIED`, `CAMERA_START_ERROR`, `CAMERA_STALLED`,
    /// `INPUT_STALLED`, `INPUT_ERROR`).
    pub fn details(&self) -> &'static str {
        match self {
            CaptureError::Camera(f) => f.details(),
            CaptureError::CameraUnavailable(_) => "CAMERA_START_ERROR",
            CaptureError::Stalled { .. } => "INPUT_STALLED",
            _ => "INPUT_ERROR",
        }
    }

    /// A read error of `input`: a stall (see [`stall`]) or plain I/O.
    pub fn read(input: &str, source: std::io::Error) -> CaptureError {
        match stall::stalled_for(&source) {
            Some(s) => CaptureError::Stalled {
                input: input.to_string(),
                after_s: s.after.as_secs_f64(),
            },
            None => CaptureError::Read {
                input: input.to_string(),
                source,
            },
        }
    }
}

/// Decodes a still image (PNG or JPEG) from `path` into RGB8, refusing one
/// of more than `max_pixels` before decoding it (a 420 KB PNG can declare
/// 12000x12000 pixels) and a JPEG cut short (its decoder would fill the
/// missing part with grey, silently). Returns the problem in words.
pub fn decode_still(path: &std::path::Path, max_pixels: u64) -> Result<image::RgbImage, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    if reader.format().is_none() {
        // Not recognisable by content: let the extension's decoder say why.
        if let Ok(f) = image::ImageFormat::from_path(path) {
            reader.set_format(f);
        }
    }
    let format = reader.format();
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| format!("cannot decode: {e}"))?;
    if w as u64 * h as u64 > max_pixels {
        return Err(format!(
            "{w}x{h} is more than the {max_pixels} pixels accepted"
        ));
    }
    if format == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(&bytes) {
        return Err("the JPEG is truncated (no end-of-image marker after its image data)".into());
    }
    let img = image::load_from_memory(&bytes).map_err(|e| format!("cannot decode: {e}"))?;
    Ok(img.into_rgb8())
}

/// Whether a JPEG's last scan is followed by its end-of-image marker
/// (`FF D9`). Inside entropy-coded data `FF` is always followed by `00` or
/// a restart marker, so an `FF D9` after the last start-of-scan (`FF DA`)
/// can only be the real end.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    last_scan.is_some_and(|at| bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]))
}

/// A pipe or FIFO may take this long to deliver its first byte (a writer
/// starting up, an encoder opening a device).
pub const FIRST_DATA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// After its first byte, a stream silent this long has stalled (as a camera).
pub const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A parsed `--input` value.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// Boxed: the parameters (with a portrait spec) dwarf the other variants.
    Synthetic(Box<synthetic::SyntheticParams>),
    /// A YUV4MPEG2 file, or standard input when the path is `-`.
    Y4m(PathBuf),
    Frames {
        dir: PathBuf,
        fps: f64,
    },
    Camera(camera::CameraParams),
}

/// Splits `k=v,k=v` into pairs, rejecting malformed items.
pub(crate) fn parse_pairs<'a>(
    spec: &str,
    list: &'a str,
) -> Result<Vec<(&'a str, &'a str)>, CaptureError> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| CaptureError::Spec {
                    spec: spec.to_string(),
                    problem: format!("{item:?} is not key=value"),
                })
        })
        .collect()
}

/// Parses a numeric `key=value` for `spec`, checking `range`.
pub(crate) fn parse_number(
    spec: &str,
    key: &str,
    value: &str,
    range: std::ops::RangeInclusive<f64>,
) -> Result<f64, CaptureError> {
    let v: f64 = value.parse().map_err(|_| CaptureError::Spec {
        spec: spec.to_string(),
        problem: format!("{key}={value:?} is not a number"),
    })?;
    if !v.is_finite() || !range.contains(&v) {
        return Err(CaptureError::Spec {
            spec: spec.to_string(),
            problem: format!(
                "{key}={value} is outside {}..={}",
                range.start(),
                range.end()
            ),
        });
    }
    Ok(v)
}

impl std::str::FromStr for SourceSpec {
    type Err = CaptureError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (head, rest) = spec.split_once(':').unwrap_or((spec, ""));
        match head {
            "synthetic" => Ok(SourceSpec::Synthetic(Box::new(
                synthetic::SyntheticParams::parse(spec, rest)?,
            ))),
            "frames" => {
                let mut parts = rest.splitn(2, ',');
                let dir = parts.next().unwrap_or("").trim();
                if dir.is_empty() {
                    return Err(CaptureError::Spec {
                        spec: spec.to_string(),
                        problem: "expected frames:DIR[,fps=30]".into(),
                    });
                }
                let mut fps = 30.0;
                for (k, v) in parse_pairs(spec, parts.next().unwrap_or(""))? {
                    match k {
                        "fps" => fps = parse_number(spec, k, v, 1.0..=240.0)?,
                        other => {
                            return Err(CaptureError::Spec {
                                spec: spec.to_string(),
                                problem: format!("unknown option {other:?}; frames: takes fps"),
                            })
                        }
                    }
                }
                Ok(SourceSpec::Frames {
                    dir: PathBuf::from(dir),
                    fps,
                })
            }
            "camera" => Ok(SourceSpec::Camera(camera::CameraParams::parse(spec, rest)?)),
            "" => Err(CaptureError::Spec {
                spec: spec.to_string(),
                problem: "empty input; try synthetic, a .y4m file, - for stdin, or frames:DIR"
                    .into(),
            }),
            _ => Ok(SourceSpec::Y4m(PathBuf::from(spec))),
        }
    }
}

/// Opens the source named by `spec`.
pub fn open(spec: &SourceSpec) -> Result<Box<dyn FrameSource>, CaptureError> {
    match spec {
        SourceSpec::Synthetic(p) => Ok(Box::new(synthetic::SyntheticSource::new(*p.clone())?)),
        // Standard input, FIFOs and devices may stall: they are read by a
        // thread, with a timeout. Regular files are read directly.
        SourceSpec::Y4m(path) if path.as_os_str() == "-" => {
            let guard = stall::StallGuard::spawn(
                || Ok(std::io::stdin()),
                FIRST_DATA_TIMEOUT,
                STALL_TIMEOUT,
            )
            .map_err(|e| CaptureError::read("stdin", e))?;
            Ok(Box::new(y4m::Y4mSource::new(
                Box::new(std::io::BufReader::with_capacity(1 << 16, guard)),
                "stdin".into(),
            )?))
        }
        SourceSpec::Y4m(path) => {
            let open_error = |source| CaptureError::Open {
                path: path.clone(),
                source,
            };
            let kind = std::fs::metadata(path).map_err(open_error)?.file_type();
            let input = path.display().to_string();
            let reader: Box<dyn std::io::BufRead + Send> = if kind.is_file() {
                let file = std::fs::File::open(path).map_err(open_error)?;
                // Smaller than a frame (from 160x120 up): the frame lines go
                // through the buffer, a frame's planes straight from the
                // kernel into the frame (a larger buffer copied them twice).
                // With a second core, the next frame is read while this one
                // is processed (see `readahead` for what that costs).
                let reader = std::io::BufReader::with_capacity(1 << 14, file);
                let source = Box::new(y4m::Y4mSource::new(Box::new(reader), input)?);
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                return Ok(if cores > 1 {
                    Box::new(readahead::ReadAhead::spawn(source)?)
                } else {
                    source
                });
            } else if kind.is_dir() {
                return Err(CaptureError::Spec {
                    spec: input,
                    problem: "is a directory; for a directory of images use frames:DIR".into(),
                });
            } else {
                let owned = path.clone();
                let guard = stall::StallGuard::spawn(
                    move || std::fs::File::open(owned),
                    FIRST_DATA_TIMEOUT,
                    STALL_TIMEOUT,
                )
                .map_err(|e| CaptureError::read(&input, e))?;
                Box::new(std::io::BufReader::with_capacity(1 << 16, guard))
            };
            Ok(Box::new(y4m::Y4mSource::new(reader, input)?))
        }
        SourceSpec::Frames { dir, fps } => {
            Ok(Box::new(frames_dir::FramesDirSource::new(dir, *fps)?))
        }
        #[cfg(feature = "camera")]
        SourceSpec::Camera(p) => Ok(Box::new(camera::CameraSource::open(
            *p,
            std::time::Duration::from_secs(3),
        )?)),
        #[cfg(not(feature = "camera"))]
        SourceSpec::Camera(_) => Err(CaptureError::CameraUnavailable(camera::NOT_BUILT.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_specs_parse_into_the_right_source_kind() {
        assert!(matches!(
            "synthetic".parse::<SourceSpec>().unwrap(),
            SourceSpec::Synthetic(_)
        ));
        assert!(matches!(
            "clip.y4m".parse::<SourceSpec>().unwrap(),
            SourceSpec::Y4m(_)
        ));
        assert!(matches!(
            "-".parse::<SourceSpec>().unwrap(),
            SourceSpec::Y4m(_)
        ));
        assert_eq!(
            "frames:/tmp/x,fps=15".parse::<SourceSpec>().unwrap(),
            SourceSpec::Frames {
                dir: "/tmp/x".into(),
                fps: 15.0
            }
        );
    }

    #[test]
    fn malformed_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("frames:", "frames:DIR"),
            ("frames:/x,fps=0", "outside"),
            ("frames:/x,speed=2", "unknown option"),
            ("frames:/x,fps", "key=value"),
            ("", "empty input"),
        ] {
            let err = spec.parse::<SourceSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{spec:?}: {err}");
        }
    }

    #[cfg(not(feature = "camera"))]
    #[test]
    fn camera_requests_explain_how_to_get_frames_meanwhile() {
        let err = open(&"camera:0".parse().unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("yuv4mpegpipe"), "{err}");
    }
}
