//! Vision stage: frames in, one [`Observation`] per frame out.
//!
//! Owns: face detection ([`detector`], SeetaFace via rustface), tracking and
//! box smoothing ([`tracker`]), and the skin ROI statistics ([`roi`]).
//!
//! Per frame: (1) if a face is tracked, measure its displacement since the
//! previous frame from the box's luma profiles and move the box; (2) every
//! `detect_interval_s` run the detector — on a crop around the tracked face
//! scaled so the face is `track_face_px` wide, or on the whole frame scaled
//! to `search_width_px` when there is no face or the crop missed — and let
//! the box glide towards the result over `correction_time_s` when it differs
//! by more than `redetect_tolerance` face widths (less is detector jitter,
//! and jitter in the ROI is false pulse); (3) average
//! the skin pixels of forehead and cheeks.
//!
//! Invariants: pure computation on the frame it is given (no I/O, no clock:
//! time is the frame timestamp); the frame is only read, never kept; a face
//! is dropped after `max_missed_detections` detections in a row fail.

pub mod detector;
pub mod roi;
pub mod tracker;

use crate::capture::Frame;
use detector::FaceDetector;
use roi::PixelRect;

/// A face box in frame pixels (floating point: it is tracked at sub-pixel precision).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceBox {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// What the vision stage saw in one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub t_s: f64,
    pub face: Option<FaceBox>,
    /// The detector ran on this frame and found the face.
    pub detected: bool,
    /// Mean `[R, G, B]` of the ROI's skin pixels (zeros without skin).
    pub mean_rgb: [f64; 3],
    pub skin_pixels: u32,
    pub roi_pixels: u32,
    /// Mean frame luma, 0..255.
    pub luma: f64,
    /// Face displacement since the previous frame, pixels `[dx, dy]`.
    pub motion_px: [f64; 2],
    /// Cumulative vertical face displacement since the first frame, pixels.
    pub vertical_px: f64,
}

/// Vision settings (validated by the config loader).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub detect_interval_s: f64,
    pub search_width_px: u32,
    pub track_face_px: u32,
    /// Time constant over which a detection's correction is applied.
    pub correction_time_s: f64,
    /// Detections within this many face widths of the tracked box are jitter, ignored.
    pub redetect_tolerance: f64,
    pub max_missed_detections: u32,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            detect_interval_s: 0.5,
            search_width_px: 160,
            track_face_px: 64,
            correction_time_s: 1.0,
            redetect_tolerance: 0.1,
            max_missed_detections: 3,
        }
    }
}

/// Errors of the vision stage (the model; frames cannot be "wrong" here).
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error(
        "face model {origin} failed its integrity check ({size} bytes, sha256 {actual}, expected {expected}); \
         restore models/seeta_fd_frontal_v1.0.bin or unset vision.model_path to use the built-in model"
    )]
    ModelChecksum {
        origin: String,
        expected: String,
        actual: String,
        size: usize,
    },
    #[error("face model {origin} cannot be parsed: {problem}")]
    ModelInvalid { origin: String, problem: String },
}

/// The per-frame vision stage: detector, tracker and ROI, with reused buffers.
#[derive(Debug)]
pub struct FaceRoiExtractor {
    detector: FaceDetector,
    cfg: VisionConfig,
    face: Option<FaceBox>,
    /// Part of the last detection's correction not yet applied, `[dx, dy, dw, dh]`.
    correction: [f64; 4],
    last_t: Option<f64>,
    last_detect_t: Option<f64>,
    misses: u32,
    prev: Option<PixelRect>,
    prev_rows: Vec<f64>,
    prev_cols: Vec<f64>,
    rows: Vec<f64>,
    cols: Vec<f64>,
    gray: Vec<u8>,
    vertical_px: f64,
}

impl FaceRoiExtractor {
    pub fn new(detector: FaceDetector, cfg: VisionConfig) -> Self {
        FaceRoiExtractor {
            detector,
            cfg,
            face: None,
            correction: [0.0; 4],
            last_t: None,
            last_detect_t: None,
            misses: 0,
            prev: None,
            prev_rows: Vec::new(),
            prev_cols: Vec::new(),
            rows: Vec::new(),
            cols: Vec::new(),
            gray: Vec::new(),
            vertical_px: 0.0,
        }
    }

    /// Processes one frame.
    pub fn process(&mut self, frame: &Frame) -> Observation {
        let motion_px = self.track(frame);
        self.apply_correction(frame.t_s);
        let due = self
            .last_detect_t
            .is_none_or(|t0| frame.t_s - t0 >= self.cfg.detect_interval_s || frame.t_s < t0);
        let detected = due && self.detect(frame);
        let stats = self
            .face
            .map(|f| roi::roi_stats(frame, &f))
            .unwrap_or_default();
        Observation {
            t_s: frame.t_s,
            face: self.face,
            detected,
            mean_rgb: stats.mean_rgb,
            skin_pixels: stats.skin_pixels,
            roi_pixels: stats.roi_pixels,
            luma: roi::frame_luma(frame),
            motion_px,
            vertical_px: self.vertical_px,
        }
    }

    /// Moves the tracked box by the measured displacement; returns it.
    fn track(&mut self, frame: &Frame) -> [f64; 2] {
        let Some(face) = self.face.as_mut() else {
            self.prev = None;
            return [0.0; 2];
        };
        let rect = PixelRect::clipped(face, frame.width, frame.height);
        roi::profiles(frame, &rect, &mut self.rows, &mut self.cols);
        let mut motion = [0.0; 2];
        if let Some(p) = self.prev {
            if let (Some(dx), Some(dy)) = (
                tracker::profile_shift(&self.prev_cols, &self.cols),
                tracker::profile_shift(&self.prev_rows, &self.rows),
            ) {
                motion = [
                    dx + rect.x0 as f64 - p.x0 as f64,
                    dy + rect.y0 as f64 - p.y0 as f64,
                ];
            }
        }
        face.x += motion[0];
        face.y += motion[1];
        self.vertical_px += motion[1];
        self.prev = Some(rect);
        std::mem::swap(&mut self.prev_rows, &mut self.rows);
        std::mem::swap(&mut self.prev_cols, &mut self.cols);
        motion
    }

    /// Applies the due share of the pending detection correction.
    fn apply_correction(&mut self, t_s: f64) {
        let dt = self.last_t.map_or(0.0, |t0| t_s - t0);
        self.last_t = Some(t_s);
        let Some(face) = self.face.as_mut() else {
            self.correction = [0.0; 4];
            return;
        };
        let k = tracker::glide_fraction(dt, self.cfg.correction_time_s);
        let step: [f64; 4] = std::array::from_fn(|i| k * self.correction[i]);
        face.x += step[0];
        face.y += step[1];
        face.w += step[2];
        face.h += step[3];
        for (c, s) in self.correction.iter_mut().zip(step) {
            *c -= s;
        }
    }

    /// Runs the detector; returns whether it found the face.
    fn detect(&mut self, frame: &Frame) -> bool {
        self.last_detect_t = Some(frame.t_s);
        let (fw, fh) = (frame.width, frame.height);
        let (region, out_w) = match self.face {
            Some(f) if self.misses == 0 => {
                let crop = FaceBox {
                    x: f.x - 0.5 * f.w,
                    y: f.y - 0.5 * f.h,
                    w: 2.0 * f.w,
                    h: 2.0 * f.h,
                };
                let rect = PixelRect::clipped(&crop, fw, fh);
                let scale = (self.cfg.track_face_px as f64 / f.w).min(1.0);
                (rect, ((rect.width() as f64 * scale).round() as u32).max(1))
            }
            _ => {
                let rect = PixelRect {
                    x0: 0,
                    y0: 0,
                    x1: fw,
                    y1: fh,
                };
                (rect, self.cfg.search_width_px.min(fw))
            }
        };
        if region.is_empty() {
            return self.missed();
        }
        let out_h = ((region.height() as u64 * out_w as u64) / region.width() as u64).max(1) as u32;
        roi::downscale_gray(frame, &region, out_w, out_h, &mut self.gray);
        let faces = self.detector.detect(&self.gray, out_w, out_h);
        let Some((f, _score)) = faces.first() else {
            return self.missed();
        };
        let sx = region.width() as f64 / out_w as f64;
        let sy = region.height() as f64 / out_h as f64;
        let found = FaceBox {
            x: region.x0 as f64 + f.x * sx,
            y: region.y0 as f64 + f.y * sy,
            w: f.w * sx,
            h: f.h * sy,
        };
        match tracker::reconcile(self.face, found, self.cfg.redetect_tolerance) {
            tracker::Reconcile::Jump(face) => {
                // A new face or a jump: profiles of the old box are not comparable.
                self.face = Some(face);
                self.correction = [0.0; 4];
                self.prev = None;
            }
            tracker::Reconcile::Glide(delta) => self.correction = delta,
            tracker::Reconcile::Keep => {}
        }
        self.misses = 0;
        true
    }

    fn missed(&mut self) -> bool {
        self.misses += 1;
        if self.misses > self.cfg.max_missed_detections || self.face.is_none() {
            self.face = None;
            self.prev = None;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::synthetic::{SyntheticParams, SyntheticSource};
    use crate::capture::FrameSource;

    fn run(params: SyntheticParams, frames: usize) -> Vec<Observation> {
        let mut src = SyntheticSource::new(params).unwrap();
        let mut vision =
            FaceRoiExtractor::new(FaceDetector::builtin().unwrap(), VisionConfig::default());
        let mut frame = Frame::default();
        let mut out = Vec::new();
        while out.len() < frames && src.next_frame(&mut frame).unwrap() {
            out.push(vision.process(&frame));
        }
        out
    }

    #[test]
    fn the_synthetic_face_is_found_on_the_first_frame_and_kept() {
        let obs = run(SyntheticParams::default(), 60);
        assert!(obs[0].face.is_some() && obs[0].detected);
        assert!(obs.iter().all(|o| o.face.is_some()));
        let o = obs[59];
        assert!(o.skin_pixels > 2000, "skin pixels {}", o.skin_pixels);
        assert!(o.skin_pixels as f64 > 0.6 * o.roi_pixels as f64, "{o:?}");
        let [r, g, b] = o.mean_rgb;
        assert!(r > g && g > b, "skin colour {:?}", o.mean_rgb);
    }

    #[test]
    fn an_empty_scene_has_no_face() {
        let obs = run(
            SyntheticParams {
                face: false,
                ..Default::default()
            },
            30,
        );
        assert!(obs.iter().all(|o| o.face.is_none() && o.skin_pixels == 0));
    }

    #[test]
    fn breathing_head_motion_is_tracked_at_sub_pixel_precision() {
        // Noise-free 640x480: the head bobs ±1.5 px at 15/min.
        let p = SyntheticParams {
            noise: 0.0,
            seconds: 8.0,
            ..Default::default()
        };
        let obs = run(p, 240);
        let v: Vec<f64> = obs.iter().map(|o| o.vertical_px).collect();
        let (min, max) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        assert!(
            max - min > 2.0 && max - min < 4.5,
            "peak-to-peak {}",
            max - min
        );
    }
}
