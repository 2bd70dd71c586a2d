//! Measurement stage: the scan's state machine.
//!
//! Owns: when a scan starts, what it records, when it reports, and how it
//! ends. It consumes one vision [`Observation`] per frame and produces
//! [`Update`]s; the events stage turns those into WMS-style events.
//!
//! ```text
//! created ──face ≥ min_face_px + skin──▶ measuring ──duration reached, HR trusted──▶ completed
//!    │                      │ ├─ duration reached, HR not trusted but SNR ≥ extend_min_snr_db:
//!    │                      │ │  measure on to max_duration_s (WEAK_PULSE hint), judged there once
//!    │                      │ │  against extended_low_snr_db ─▶ completed or LOW_SNR
//!    │                      │ ├─ ~1 Hz: intermediate result
//!    │                      │ ├─ face missing > face_lost_timeout ─▶ cancelled FACE_LOST
//!    │                      │ ├─ another face (new identity) ─────▶ cancelled FACE_LOST (FACE_CHANGED)
//!    │                      │ ├─ too dark > dark_timeout ─────────▶ cancelled TOO_DARK
//!    │                      │ ├─ too much motion > motion_timeout ─▶ cancelled TOO_MUCH_MOTION
//!    │                      │ ├─ SNR < low_snr_db for low_snr_timeout (or at the end) ─▶ cancelled LOW_SNR
//!    │                      │ └─ input ended: completed if ≥ min_duration, else cancelled INPUT_ENDED
//!    ├─ no usable face within face_init_timeout ─▶ cancelled NO_FACE (FAILED_INIT_BLOOD_FLOW,
//!    │     saying what was seen: no face, FACE_TOO_SMALL, FACE_CUT_OFF or SKIN_NOT_FOUND)
//!    └─ too dark before a face was found ─▶ cancelled TOO_DARK
//! ```
//!
//! In both phases, [`guidance`] turns what the frame shows (face too small,
//! too large, cut off, off-centre, too dark, over-exposed, moving) into
//! throttled live hints, before anything is cancelled.
//!
//! Traces are **spliced** where vision flags a discontinuity (a sudden
//! head move: the regions land on other skin, every colour steps): each
//! segment is re-normalised to the level of the second before it, and the
//! head-position trace shifted likewise, so a jump costs about a second of
//! signal instead of a broadband step (20 px jumps at 320x240: the four
//! weakest of 8 scans went from 0.8-2.2 dB to 3.5-7.8 dB, together with
//! the snap in vision, and their breathing rates came back).
//!
//! Invariants: pure — time is the frame timestamp, nothing reads a clock or
//! does I/O, so every path is tested with plain synchronous tests; exactly
//! one terminal update (`Completed` or `Cancelled`) per measurement, after
//! which input is ignored; a cancelled scan never reports a heart rate (a
//! confident wrong number is worse than none); no vital is reported, live
//! or final, below its own confidence floor (the trust rule of
//! [`VitalsEstimator::trusted_hr`] and its siblings), and a scan completes
//! only with a trusted heart rate.

pub mod guidance;

use crate::signal::{SignalConfig, SignalError, Traces, VitalsEstimator};
use crate::vision::roi::REGION_COUNT;
use crate::vision::Observation;
use guidance::{Constraint, Guide, Hint, Limits};
use serde::Serialize;

/// The two judgements of a scan that measured longer must find heart
/// rates this close (bpm).
const LOOKS_AGREE_BPM: f64 = 3.0;

/// Seconds of trace either side of a jump whose means set the splice (about
/// a heartbeat, so the pulse averages out of them).
const SPLICE_WINDOW_S: f64 = 1.0;

/// The spans that set each splice, in order: for every jump `j` (within
/// `1..len`), the samples up to `window_s` seconds before it and after it,
/// never across another jump; spans of fewer than 3 samples are passed
/// over (close jumps).
fn splice_spans<'a>(
    t: &'a [f64],
    jumps: &'a [usize],
    window_s: f64,
) -> impl Iterator<Item = (std::ops::Range<usize>, std::ops::Range<usize>)> + 'a {
    (0..jumps.len()).filter_map(move |k| {
        let j = jumps[k];
        if j == 0 || j >= t.len() {
            return None;
        }
        let lo = if k > 0 { jumps[k - 1] } else { 0 };
        let hi = jumps.get(k + 1).copied().unwrap_or(t.len());
        let before = t[lo..j].partition_point(|&x| x < t[j - 1] - window_s) + lo;
        let after = t[j..hi].partition_point(|&x| x <= t[j] + window_s) + j;
        (j - before >= 3 && after - j >= 3).then_some((before..j, j..after))
    })
}

/// Splices colour samples at the jumps: each channel after a jump is
/// scaled so that its mean over the second after it equals the mean over
/// the second before it (re-normalising each segment; POS works on
/// relative colour, so a scale is the right correction for a change of
/// skin patch). A jump then costs the pulse a second of slightly wrong
/// level, not a step the whole band sees. Pure; `t` is the sample times.
fn splice_rgb(trace: &[[f64; 3]], t: &[f64], jumps: &[usize], window_s: f64) -> Vec<[f64; 3]> {
    let mut out = trace.to_vec();
    for (before, after) in splice_spans(t, jumps, window_s) {
        let mean = |s: &[[f64; 3]], c: usize| s.iter().map(|p| p[c]).sum::<f64>() / s.len() as f64;
        let ratio: [f64; 3] = std::array::from_fn(|c| {
            let (b, a) = (mean(&out[before.clone()], c), mean(&out[after.clone()], c));
            if a > 1e-9 && b > 1e-9 {
                b / a
            } else {
                1.0
            }
        });
        for p in &mut out[after.start..] {
            p.iter_mut().zip(ratio).for_each(|(v, r)| *v *= r);
        }
    }
    out
}

/// The same for a position trace (additive: the head's vertical position
/// steps by the jump, which is not breathing).
fn splice_offsets(trace: &mut [f64], t: &[f64], jumps: &[usize], window_s: f64) {
    for (before, after) in splice_spans(t, jumps, window_s) {
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let offset = mean(&trace[before]) - mean(&trace[after.clone()]);
        trace[after.start..].iter_mut().for_each(|v| *v += offset);
    }
}

/// Once measuring, a face down to this share of `min_face_px` still counts.
pub const MEASURING_FACE_SHARE: f64 = 0.75;

/// A skin region with fewer skin pixels than this in a frame keeps its
/// previous colour there (a region whose skin comes and goes would step).
const MIN_REGION_SKIN: f64 = 4.0;

/// A region joins the fusion only with skin in this share of the frames.
const MIN_REGION_PRESENCE: f64 = 0.9;

/// Thresholds and timing of a scan (validated by the config loader).
#[derive(Debug, Clone, PartialEq)]
pub struct MeasurementConfig {
    pub duration_s: f64,
    /// A scan whose heart rate is not trusted at `duration_s`, but whose
    /// SNR reaches `extend_min_snr_db`, measures on to this length and is
    /// judged once more there (see [`MeasurementConfig::extended_low_snr_db`]).
    /// At or below `duration_s`: never extended.
    pub max_duration_s: f64,
    /// The SNR at `duration_s` from which a scan is worth extending (at
    /// most `extended_low_snr_db`). Lower than the bar it must clear at
    /// `max_duration_s`: a real weak pulse's SNR grows as the longer Welch
    /// average narrows the noise (type VI skin at 180 bpm: -1.46 dB at 30 s,
    /// -0.57 dB at 60 s), while a face without a pulse falls (2-3 dB), so
    /// the second judgement, not this gate, keeps noise out; the gate only
    /// decides who waits longer.
    pub extend_min_snr_db: f64,
    /// The SNR threshold of that second judgement, over `max_duration_s`:
    /// a longer Welch average has a narrower noise distribution, so a lower
    /// SNR is as unlikely to come from noise alone (calibrated on faces
    /// without a pulse, see config/default.toml). The confidence is then
    /// read `low_snr_db - extended_low_snr_db` higher.
    pub extended_low_snr_db: f64,
    /// Shortest scan that still completes when the input ends early.
    pub min_duration_s: f64,
    pub face_init_timeout_s: f64,
    pub face_lost_timeout_s: f64,
    /// Faces narrower than this (frame pixels) are not measured.
    pub min_face_px: f64,
    pub min_skin_pixels: u32,
    /// Mean frame luma (0..255) below which the scene is too dark.
    pub dark_luma: f64,
    pub dark_timeout_s: f64,
    /// Face speed, in face widths per second (1 s average), above which motion is too much.
    pub max_motion_face_widths_per_s: f64,
    pub motion_timeout_s: f64,
    pub low_snr_db: f64,
    pub low_snr_timeout_s: f64,
    pub intermediate_interval_s: f64,
    /// First intermediate result once this much signal is recorded.
    pub first_result_after_s: f64,
    /// A live hint that still applies is repeated this often.
    pub hint_interval_s: f64,
}

impl Default for MeasurementConfig {
    fn default() -> Self {
        MeasurementConfig {
            duration_s: 30.0,
            max_duration_s: 60.0,
            extend_min_snr_db: -2.0,
            extended_low_snr_db: -1.0,
            min_duration_s: 15.0,
            face_init_timeout_s: 10.0,
            face_lost_timeout_s: 2.0,
            min_face_px: 56.0,
            min_skin_pixels: 40,
            dark_luma: 25.0,
            dark_timeout_s: 2.0,
            max_motion_face_widths_per_s: 0.5,
            motion_timeout_s: 2.0,
            low_snr_db: -1.0,
            low_snr_timeout_s: 8.0,
            intermediate_interval_s: 1.0,
            first_result_after_s: 5.0,
            hint_interval_s: 3.0,
        }
    }
}

/// Why a scan ended without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancelReason {
    LowSnr,
    FaceLost,
    NoFace,
    TooDark,
    TooMuchMotion,
    /// The input ended before `min_duration_s` of signal.
    InputEnded,
    /// Stopped from outside by a user (API `DELETE`, the kiosk's cancel).
    Requested,
    /// The agent itself was stopped (SIGTERM, SIGINT, SIGHUP, daemon shutdown).
    Shutdown,
    /// The input failed mid-scan (unreadable or malformed frame, or stalled).
    InputError,
    /// An event could not be written to one of the scan's outputs (standard
    /// output closed, events file or outbox unwritable).
    OutputError,
}

impl CancelReason {
    pub const ALL: [CancelReason; 10] = [
        CancelReason::LowSnr,
        CancelReason::FaceLost,
        CancelReason::NoFace,
        CancelReason::TooDark,
        CancelReason::TooMuchMotion,
        CancelReason::InputEnded,
        CancelReason::Requested,
        CancelReason::Shutdown,
        CancelReason::InputError,
        CancelReason::OutputError,
    ];

    /// The code used in events and `--json` (`LOW_SNR`, `FACE_LOST`, ...).
    pub fn code(self) -> &'static str {
        match self {
            CancelReason::LowSnr => "LOW_SNR",
            CancelReason::FaceLost => "FACE_LOST",
            CancelReason::NoFace => "NO_FACE",
            CancelReason::TooDark => "TOO_DARK",
            CancelReason::TooMuchMotion => "TOO_MUCH_MOTION",
            CancelReason::InputEnded => "INPUT_ENDED",
            CancelReason::Requested => "REQUESTED",
            CancelReason::Shutdown => "SHUTDOWN",
            CancelReason::InputError => "INPUT_ERROR",
            CancelReason::OutputError => "OUTPUT_ERROR",
        }
    }
}

/// A live estimate, about once a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Intermediate {
    /// 0, 1, 2, ... within the measurement.
    pub index: u32,
    /// Seconds of signal so far.
    pub elapsed_s: f64,
    pub hr_bpm: Option<f64>,
    pub snr_db: f64,
    pub confidence: f64,
    pub rr_bpm: Option<f64>,
    pub rr_confidence: f64,
}

/// The final numbers of a scan (also filled, without vitals, when cancelled).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScanResult {
    pub hr_bpm: Option<f64>,
    pub confidence: f64,
    pub snr_db: Option<f64>,
    pub rr_bpm: Option<f64>,
    pub rr_confidence: f64,
    pub rmssd_ms: Option<f64>,
    pub hrv_confidence: f64,
    /// Seconds of signal the result is based on.
    pub duration_s: f64,
    /// Frames seen by the measurement.
    pub frames: u64,
    /// The band-passed pulse wave and beat times, for reports.
    pub pulse: Vec<f64>,
    pub beat_times_s: Vec<f64>,
    /// The band-passed breathing wave (same rate as `pulse`), for reports.
    pub respiration_wave: Vec<f64>,
    /// Sample rate of `pulse` and `respiration_wave`.
    pub wave_fs_hz: f64,
}

/// What happened, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Created,
    Started {
        t_s: f64,
    },
    Intermediate(Intermediate),
    /// A live hint raised, repeated or cleared ([`guidance`]).
    Hint(Hint),
    LowSnr {
        snr_db: f64,
        threshold_db: f64,
        below_for_s: f64,
    },
    /// The condition that ends a running scan.
    Constraint {
        reason: CancelReason,
        constraint: Constraint,
        detail: String,
    },
    /// No usable face in time; `constraint` and `detail` say what was seen.
    NoFace {
        waited_s: f64,
        constraint: Constraint,
        detail: String,
    },
    Cancelled {
        reason: CancelReason,
        /// The condition behind the reason, when there is one (e.g.
        /// `FACE_CHANGED` behind `FACE_LOST`).
        constraint: Option<Constraint>,
        result: ScanResult,
    },
    Completed(ScanResult),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Waiting,
    Measuring,
    Done,
}

/// One scan.
#[derive(Debug)]
pub struct Measurement {
    cfg: MeasurementConfig,
    estimator: VitalsEstimator,
    phase: Phase,
    frames: u64,
    first_t: Option<f64>,
    start_t: f64,
    last_face_t: f64,
    dark_since: Option<f64>,
    fast_since: Option<f64>,
    low_snr_since: Option<f64>,
    /// Past `duration_s` without a trusted heart rate, measuring on to
    /// `max_duration_s`.
    extending: bool,
    /// The heart rate the first judgement saw (untrusted); the second
    /// judgement must agree with it.
    first_look_bpm: Option<f64>,
    next_result_t: f64,
    results: u32,
    /// Recent `(t, speed in face widths per second)` for the 1 s motion average.
    speeds: std::collections::VecDeque<(f64, f64)>,
    last_frame_t: Option<f64>,
    /// Identity of the measured face (vision's `face_id`).
    face_id: u64,
    /// While waiting: the largest face seen, and its skin pixels.
    largest_seen: Option<(crate::vision::FaceBox, u32)>,
    /// While waiting: a face was seen cut by the frame's edge.
    cut_off_seen: bool,
    /// When the face was locked and when the first result came (frame times).
    started_at: Option<f64>,
    first_result_at: Option<f64>,
    guide: Guide,
    hints: Vec<Hint>,
    t: Vec<f64>,
    rgb: Vec<[f64; 3]>,
    vertical: Vec<f64>,
    /// Recorded samples at which the face box moved abruptly (vision's
    /// `discontinuity`): the traces are spliced there.
    jumps: Vec<usize>,
    /// Per skin region ([`crate::vision::roi::REGIONS`]): its colour per
    /// recorded frame (held where it had no skin) and the frames it had skin.
    regions: [Vec<[f64; 3]>; REGION_COUNT],
    region_frames: [usize; REGION_COUNT],
}

impl Measurement {
    /// A new scan; the first update is `Created`.
    pub fn new(
        cfg: MeasurementConfig,
        signal: SignalConfig,
        out: &mut Vec<Update>,
    ) -> Result<Self, SignalError> {
        let signal = SignalConfig {
            max_window_s: signal
                .max_window_s
                .max(cfg.duration_s.max(cfg.max_duration_s) + 1.0),
            ..signal
        };
        out.push(Update::Created);
        let guide = Guide::new(cfg.hint_interval_s);
        Ok(Measurement {
            estimator: VitalsEstimator::new(signal)?,
            cfg,
            phase: Phase::Waiting,
            frames: 0,
            first_t: None,
            start_t: 0.0,
            last_face_t: 0.0,
            dark_since: None,
            fast_since: None,
            low_snr_since: None,
            extending: false,
            first_look_bpm: None,
            next_result_t: 0.0,
            results: 0,
            speeds: Default::default(),
            last_frame_t: None,
            face_id: 0,
            largest_seen: None,
            cut_off_seen: false,
            started_at: None,
            first_result_at: None,
            guide,
            hints: Vec::new(),
            t: Vec::new(),
            rgb: Vec::new(),
            vertical: Vec::new(),
            jumps: Vec::new(),
            regions: Default::default(),
            region_frames: [0; REGION_COUNT],
        })
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// A face is locked and its signal is being recorded.
    pub fn is_measuring(&self) -> bool {
        self.phase == Phase::Measuring
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Seconds of signal recorded so far.
    pub fn elapsed_s(&self) -> f64 {
        match (self.t.first(), self.t.last()) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        }
    }

    /// Frame time at which the face was locked and the measurement started.
    pub fn started_at(&self) -> Option<f64> {
        self.started_at
    }

    /// Frame time of the first intermediate result with a heart rate.
    pub fn first_result_at(&self) -> Option<f64> {
        self.first_result_at
    }

    /// The smallest face measured now: `min_face_px` to start, and a
    /// quarter less once measuring (hysteresis: detector jitter at the
    /// threshold must not end a scan that has started).
    fn min_face_px(&self) -> f64 {
        match self.phase {
            Phase::Measuring => MEASURING_FACE_SHARE * self.cfg.min_face_px,
            _ => self.cfg.min_face_px,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            min_face_px: self.min_face_px(),
            dark_luma: self.cfg.dark_luma,
            max_motion_face_widths_per_s: self.cfg.max_motion_face_widths_per_s,
        }
    }

    /// Whether the face in `obs` can be measured.
    fn usable(&self, obs: &Observation) -> bool {
        let min_face_px = self.min_face_px();
        obs.face
            .is_some_and(|f| f.w >= min_face_px && obs.skin_pixels >= self.cfg.min_skin_pixels)
    }

    /// The face's speed in face widths per second, averaged over 1 s.
    fn speed(&mut self, obs: &Observation) -> f64 {
        let t = obs.t_s;
        let dt = self.last_frame_t.map_or(0.0, |l| t - l);
        self.last_frame_t = Some(t);
        match obs.face {
            Some(face) if dt > 0.0 && face.w > 0.0 => {
                let speed = obs.motion_px[0].hypot(obs.motion_px[1]) / dt / face.w;
                self.speeds.push_back((t, speed));
            }
            Some(_) => {}
            None => self.speeds.clear(),
        }
        while self.speeds.front().is_some_and(|&(ts, _)| t - ts > 1.0) {
            self.speeds.pop_front();
        }
        self.speeds.iter().map(|s| s.1).sum::<f64>() / self.speeds.len().max(1) as f64
    }

    /// Feeds one frame's observation.
    pub fn push(&mut self, obs: &Observation, out: &mut Vec<Update>) {
        if self.phase == Phase::Done {
            return;
        }
        self.frames += 1;
        let t = obs.t_s;
        let first_t = *self.first_t.get_or_insert(t);
        let speed = self.speed(obs);
        let mut holding = guidance::assess(obs, speed, &self.limits());
        if self.extending {
            holding.push((
                Constraint::WeakPulse,
                format!(
                    "the pulse was too weak to trust after {:.0} s: measuring up to {:.0} s",
                    self.cfg.duration_s, self.cfg.max_duration_s
                ),
            ));
        }
        self.guide.update(t, &holding, &mut self.hints);
        out.extend(self.hints.drain(..).map(Update::Hint));

        if obs.luma < self.cfg.dark_luma {
            let since = *self.dark_since.get_or_insert(t);
            if t - since >= self.cfg.dark_timeout_s {
                let detail = format!(
                    "mean brightness {:.0}/255 below {:.0} for {:.1} s",
                    obs.luma,
                    self.cfg.dark_luma,
                    t - since
                );
                return self.cancel_with(
                    out,
                    Update::Constraint {
                        reason: CancelReason::TooDark,
                        constraint: Constraint::TooDark,
                        detail,
                    },
                );
            }
        } else {
            self.dark_since = None;
        }

        match self.phase {
            Phase::Waiting => {
                if self.usable(obs) && self.dark_since.is_none() {
                    self.phase = Phase::Measuring;
                    self.start_t = t;
                    self.started_at = Some(t);
                    self.last_face_t = t;
                    self.face_id = obs.face_id;
                    self.next_result_t = t + self.cfg.first_result_after_s;
                    out.push(Update::Started { t_s: t });
                    self.record(obs);
                    return;
                }
                self.remember_seen(obs, &holding);
                if t - first_t >= self.cfg.face_init_timeout_s {
                    self.no_face(t - first_t, out);
                }
            }
            Phase::Measuring => self.measure(obs, speed, out),
            Phase::Done => {}
        }
    }

    /// While waiting: keeps what was seen, for the NO_FACE message.
    fn remember_seen(&mut self, obs: &Observation, holding: &[(Constraint, String)]) {
        if let Some(face) = obs.face {
            if self.largest_seen.is_none_or(|(f, _)| face.w > f.w) {
                self.largest_seen = Some((face, obs.skin_pixels));
            }
        }
        self.cut_off_seen |= holding.iter().any(|(c, _)| *c == Constraint::FaceCutOff);
    }

    /// Cancels the wait with NO_FACE, saying what was seen.
    fn no_face(&mut self, waited_s: f64, out: &mut Vec<Update>) {
        let min = self.cfg.min_face_px;
        let (constraint, detail) = match self.largest_seen {
            None => (
                Constraint::NoFace,
                format!(
                    "no face was found in {waited_s:.1} s: {}",
                    Constraint::NoFace.advice()
                ),
            ),
            Some((face, _)) if face.w < min => (
                Constraint::FaceTooSmall,
                format!(
                    "a face {:.0} px wide was found; the minimum is {min:.0} px: move closer or use a higher resolution",
                    face.w
                ),
            ),
            Some((face, skin)) if self.cut_off_seen => (
                Constraint::FaceCutOff,
                format!(
                    "a face {:.0} px wide was found, cut by the edge of the picture ({skin} skin pixels, minimum {}): {}",
                    face.w,
                    self.cfg.min_skin_pixels,
                    Constraint::FaceCutOff.advice()
                ),
            ),
            Some((face, skin)) => (
                Constraint::SkinNotFound,
                format!(
                    "a face {:.0} px wide was found, but forehead and cheeks showed {skin} skin pixels (minimum {}): {}",
                    face.w,
                    self.cfg.min_skin_pixels,
                    Constraint::SkinNotFound.advice()
                ),
            ),
        };
        self.cancel_with(
            out,
            Update::NoFace {
                waited_s,
                constraint,
                detail,
            },
        );
    }

    fn record(&mut self, obs: &Observation) {
        if obs.discontinuity && !self.t.is_empty() {
            self.jumps.push(self.t.len());
        }
        self.t.push(obs.t_s);
        self.rgb.push(obs.mean_rgb);
        self.vertical.push(obs.vertical_px);
        for (k, region) in obs.regions.iter().enumerate() {
            let trace = &mut self.regions[k];
            let rgb = if region.skin >= MIN_REGION_SKIN {
                self.region_frames[k] += 1;
                region.mean_rgb
            } else {
                trace.last().copied().unwrap_or(obs.mean_rgb)
            };
            trace.push(rgb);
        }
    }

    fn measure(&mut self, obs: &Observation, speed: f64, out: &mut Vec<Update>) {
        let t = obs.t_s;
        if let Some(f) = obs.face.filter(|_| obs.face_id != self.face_id) {
            let (cx, cy) = f.center();
            let detail = format!(
                "another face ({:.0} px wide at {cx:.0},{cy:.0}) replaced the measured one: the scan \
                 ended; start again with one person in front of the camera",
                f.w
            );
            return self.cancel_with(
                out,
                Update::Constraint {
                    reason: CancelReason::FaceLost,
                    constraint: Constraint::FaceChanged,
                    detail,
                },
            );
        }
        let face_ok = self.usable(obs);
        if face_ok {
            self.last_face_t = t;
            self.record(obs);
        } else if t - self.last_face_t >= self.cfg.face_lost_timeout_s {
            let (constraint, detail) = match obs.face {
                Some(f) if f.w < self.min_face_px() => (
                    Constraint::FaceTooSmall,
                    format!(
                        "the face is {:.0} px wide, below the minimum of {:.0} px, for {:.1} s",
                        f.w,
                        self.min_face_px(),
                        t - self.last_face_t
                    ),
                ),
                Some(_) => (
                    Constraint::SkinNotFound,
                    format!(
                        "too little skin ({} pixels, minimum {}) for {:.1} s",
                        obs.skin_pixels,
                        self.cfg.min_skin_pixels,
                        t - self.last_face_t
                    ),
                ),
                None => (
                    Constraint::FaceLost,
                    format!("no face for {:.1} s", t - self.last_face_t),
                ),
            };
            return self.cancel_with(
                out,
                Update::Constraint {
                    reason: CancelReason::FaceLost,
                    constraint,
                    detail,
                },
            );
        }

        if speed > self.cfg.max_motion_face_widths_per_s {
            let since = *self.fast_since.get_or_insert(t);
            if t - since >= self.cfg.motion_timeout_s {
                let detail = format!(
                    "face moving {:.2} face widths/s (limit {:.2}) for {:.1} s",
                    speed,
                    self.cfg.max_motion_face_widths_per_s,
                    t - since
                );
                return self.cancel_with(
                    out,
                    Update::Constraint {
                        reason: CancelReason::TooMuchMotion,
                        constraint: Constraint::TooMuchMotion,
                        detail,
                    },
                );
            }
        } else {
            self.fast_since = None;
        }

        let elapsed = t - self.start_t;
        if self.extending && elapsed >= self.cfg.max_duration_s {
            let gain = self.extension_gain_db();
            let result = self.final_result(gain);
            return self.finish(result, gain, out);
        }
        if !self.extending && elapsed >= self.cfg.duration_s {
            let (result, raw_bpm) = self.judge(0.0);
            self.first_look_bpm = raw_bpm;
            let weak_but_promising = self.cfg.max_duration_s > self.cfg.duration_s
                && result.snr_db.is_some_and(|s| {
                    s >= self.cfg.extend_min_snr_db.min(self.cfg.extended_low_snr_db)
                });
            if self.trusted(&result, 0.0) || !weak_but_promising {
                return self.finish(result, 0.0, out);
            }
            self.extending = true;
        }
        if t >= self.next_result_t {
            self.next_result_t += self.cfg.intermediate_interval_s;
            self.intermediate(t, out);
        }
    }

    fn traces(&self) -> Traces {
        let fs = self.estimator.config().resample_hz;
        let present = (MIN_REGION_PRESENCE * self.t.len() as f64).ceil() as usize;
        let window = SPLICE_WINDOW_S;
        let spliced = |trace: &[[f64; 3]]| splice_rgb(trace, &self.t, &self.jumps, window);
        let regions: Vec<Vec<[f64; 3]>> = self
            .regions
            .iter()
            .zip(self.region_frames)
            .filter(|&(_, frames)| frames >= present.max(1))
            .map(|(r, _)| spliced(r))
            .collect();
        let regions: Vec<&[[f64; 3]]> = regions.iter().map(Vec::as_slice).collect();
        let mut vertical = self.vertical.clone();
        splice_offsets(&mut vertical, &self.t, &self.jumps, window);
        Traces::from_irregular(&self.t, &spliced(&self.rgb), Some(&vertical), fs)
            .with_regions(&self.t, if regions.len() >= 2 { &regions } else { &[] })
    }

    fn intermediate(&mut self, t: f64, out: &mut Vec<Update>) {
        let traces = self.traces();
        let heart = self.estimator.heart_rate(&traces);
        let span = traces.duration_s();
        let resp = if span >= self.estimator.config().rr_min_window_s {
            self.estimator.vitals(&traces).respiration
        } else {
            None
        };
        out.push(Update::Intermediate(Intermediate {
            index: self.results,
            elapsed_s: span,
            hr_bpm: self.estimator.trusted_hr(&heart),
            snr_db: heart.snr_db,
            confidence: heart.confidence,
            rr_bpm: self.estimator.trusted_rr(resp.as_ref()),
            rr_confidence: resp.as_ref().map_or(0.0, |r| r.confidence),
        }));
        self.results += 1;
        if self.estimator.trusted_hr(&heart).is_some() && self.first_result_at.is_none() {
            self.first_result_at = Some(t);
        }
        // LOW_SNR is judged only on full windows: a short window's SNR is
        // low by construction; while extending, the last judgement decides.
        if span + 1e-9 < self.estimator.config().hr_window_s || self.extending {
            return;
        }
        // Hopeless only below the lowest bar the scan could still clear.
        let bar = if self.cfg.max_duration_s > self.cfg.duration_s {
            self.cfg.low_snr_db.min(self.cfg.extended_low_snr_db)
        } else {
            self.cfg.low_snr_db
        };
        if heart.snr_db < bar {
            let since = *self.low_snr_since.get_or_insert(t);
            if t - since >= self.cfg.low_snr_timeout_s {
                let low = Update::LowSnr {
                    snr_db: heart.snr_db,
                    threshold_db: bar,
                    below_for_s: t - since,
                };
                self.cancel_with(out, low);
            }
        } else {
            self.low_snr_since = None;
        }
    }

    /// How much higher an SNR over `max_duration_s` counts than one over
    /// `duration_s` (see [`MeasurementConfig::extended_low_snr_db`]).
    fn extension_gain_db(&self) -> f64 {
        (self.cfg.low_snr_db - self.cfg.extended_low_snr_db).max(0.0)
    }

    /// Final vitals over everything recorded; the heart rate's confidence
    /// read `gain_db` higher (a judgement over a longer scan).
    fn final_result(&mut self, gain_db: f64) -> ScanResult {
        self.judge(gain_db).0
    }

    /// [`Self::final_result`], and the heart rate it found whether trusted
    /// or not.
    fn judge(&mut self, gain_db: f64) -> (ScanResult, Option<f64>) {
        let traces = self.traces();
        let mut v = self.estimator.vitals(&traces);
        let raw_bpm = v.heart.bpm;
        v.heart.confidence = self.estimator.confidence(v.heart.snr_db + gain_db);
        let hr_bpm = self.estimator.trusted_hr(&v.heart);
        let result = ScanResult {
            hr_bpm,
            confidence: v.heart.confidence,
            snr_db: v.heart.bpm.map(|_| v.heart.snr_db),
            rr_bpm: self.estimator.trusted_rr(v.respiration.as_ref()),
            rr_confidence: v.respiration.as_ref().map_or(0.0, |r| r.confidence),
            // HRV only with a trusted heart rate, and at its own floor.
            rmssd_ms: hr_bpm.and(self.estimator.trusted_hrv(v.hrv.as_ref())),
            hrv_confidence: v.hrv.as_ref().map_or(0.0, |h| h.confidence),
            duration_s: traces.duration_s(),
            frames: self.frames,
            beat_times_s: v.beats.iter().map(|b| b.t_s).collect(),
            respiration_wave: v.respiration.map(|r| r.wave).unwrap_or_default(),
            wave_fs_hz: traces.fs_hz,
            pulse: v.pulse,
        };
        (result, raw_bpm)
    }

    /// A result may complete a scan: its SNR (read `gain_db` higher)
    /// reaches `low_snr_db` and its heart rate its confidence floor; a
    /// second judgement (`gain_db > 0`) must also find the heart rate the
    /// first one saw, within [`LOOKS_AGREE_BPM`] (a weak pulse stays where
    /// it is; an artefact that outgrew it over the longer scan does not).
    fn trusted(&self, result: &ScanResult, gain_db: f64) -> bool {
        let agrees = gain_db <= 0.0
            || matches!((self.first_look_bpm, result.hr_bpm),
                (Some(a), Some(b)) if (a - b).abs() <= LOOKS_AGREE_BPM);
        result.hr_bpm.is_some()
            && result.snr_db.unwrap_or(-100.0) + gain_db >= self.cfg.low_snr_db
            && agrees
    }

    /// Completes with the final result over what was recorded (the input
    /// ended): a judgement over `max_duration_s` if the scan got there.
    fn complete(&mut self, out: &mut Vec<Update>) {
        let gain = if self.extending && self.elapsed_s() + 0.5 >= self.cfg.max_duration_s {
            self.extension_gain_db()
        } else {
            0.0
        };
        let result = self.final_result(gain);
        self.finish(result, gain, out);
    }

    /// Completes with `result` if it is trusted, else ends in LOW_SNR.
    fn finish(&mut self, result: ScanResult, gain_db: f64, out: &mut Vec<Update>) {
        let snr = result.snr_db.unwrap_or(-100.0);
        if !self.trusted(&result, gain_db) {
            out.push(Update::LowSnr {
                snr_db: snr,
                threshold_db: self.cfg.low_snr_db - gain_db,
                below_for_s: result.duration_s,
            });
            return self.finish_cancelled(CancelReason::LowSnr, None, result, out);
        }
        self.phase = Phase::Done;
        out.push(Update::Completed(result));
    }

    /// Emits `cause` (a LowSnr, Constraint or NoFace update), then the cancellation.
    fn cancel_with(&mut self, out: &mut Vec<Update>, cause: Update) {
        let (reason, constraint, snr_db) = match &cause {
            Update::LowSnr { snr_db, .. } => (CancelReason::LowSnr, None, Some(*snr_db)),
            Update::Constraint {
                reason, constraint, ..
            } => (*reason, Some(*constraint), None),
            Update::NoFace { constraint, .. } => (CancelReason::NoFace, Some(*constraint), None),
            _ => (CancelReason::NoFace, None, None),
        };
        out.push(cause);
        // Mid-scan, keep the waves for reports (a bad scan is what they debug);
        // finish_cancelled drops every number.
        let mut result = if reason != CancelReason::NoFace && self.t.len() >= 64 {
            self.final_result(0.0)
        } else {
            ScanResult::default()
        };
        result.duration_s = self.elapsed_s();
        result.frames = self.frames;
        result.snr_db = snr_db;
        self.finish_cancelled(reason, constraint, result, out);
    }

    fn finish_cancelled(
        &mut self,
        reason: CancelReason,
        constraint: Option<Constraint>,
        mut result: ScanResult,
        out: &mut Vec<Update>,
    ) {
        // Keep the diagnostics (SNR), never the numbers.
        result.hr_bpm = None;
        result.rr_bpm = None;
        result.rmssd_ms = None;
        result.confidence = 0.0;
        result.rr_confidence = 0.0;
        result.hrv_confidence = 0.0;
        self.phase = Phase::Done;
        out.push(Update::Cancelled {
            reason,
            constraint,
            result,
        });
    }

    /// The input ended (end of file, camera closed).
    pub fn end_of_input(&mut self, out: &mut Vec<Update>) {
        match self.phase {
            Phase::Done => {}
            Phase::Waiting => {
                let waited_s = match (self.first_t, self.last_frame_t) {
                    (Some(a), Some(b)) => b - a,
                    _ => 0.0,
                };
                self.no_face(waited_s, out);
            }
            Phase::Measuring if self.elapsed_s() + 1e-9 >= self.cfg.min_duration_s => {
                self.complete(out)
            }
            Phase::Measuring => {
                let result = ScanResult {
                    duration_s: self.elapsed_s(),
                    frames: self.frames,
                    ..ScanResult::default()
                };
                self.finish_cancelled(CancelReason::InputEnded, None, result, out);
            }
        }
    }

    /// Stops the scan from outside (`Requested`) or because the input failed.
    pub fn cancel(&mut self, reason: CancelReason, out: &mut Vec<Update>) {
        if self.phase != Phase::Done {
            let result = ScanResult {
                duration_s: self.elapsed_s(),
                frames: self.frames,
                ..ScanResult::default()
            };
            self.finish_cancelled(reason, None, result, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::FaceBox;
    use std::f64::consts::PI;

    const FACE: FaceBox = FaceBox {
        x: 100.0,
        y: 100.0,
        w: 200.0,
        h: 200.0,
    };

    /// An observation at frame `i` (30 fps) of skin with an optional pulse.
    fn obs(i: usize, pulse: bool) -> Observation {
        let t = i as f64 / 30.0;
        let p = if pulse {
            0.004 * (2.0 * PI * 1.2 * t).sin()
        } else {
            0.0
        };
        // SplitMix64 of (frame, channel): white noise in -0.5..0.5.
        let n = |k: u64| {
            let mut z = (i as u64 * 3 + k)
                .wrapping_add(1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64 - 0.5
        };
        Observation {
            t_s: t,
            face: Some(FACE),
            detected: false,
            mean_rgb: [
                180.0 * (1.0 - 0.43 * p) + 0.05 * n(1),
                130.0 * (1.0 - p) + 0.05 * n(2),
                110.0 * (1.0 - 0.69 * p) + 0.05 * n(3),
            ],
            skin_pixels: 5000,
            roi_pixels: 6000,
            luma: 120.0,
            width: 640,
            height: 480,
            face_id: 1,
            ..Default::default()
        }
    }

    /// Every update, hints included.
    fn run_all(cfg: MeasurementConfig, frames: impl Iterator<Item = Observation>) -> Vec<Update> {
        let mut out = Vec::new();
        let mut m = Measurement::new(cfg, SignalConfig::default(), &mut out).unwrap();
        for o in frames {
            m.push(&o, &mut out);
            if m.is_done() {
                break;
            }
        }
        m.end_of_input(&mut out);
        out
    }

    /// The lifecycle updates (hints left out).
    fn run(cfg: MeasurementConfig, frames: impl Iterator<Item = Observation>) -> Vec<Update> {
        let mut out = run_all(cfg, frames);
        out.retain(|u| !matches!(u, Update::Hint(_)));
        out
    }

    fn hints(out: &[Update]) -> Vec<&Hint> {
        out.iter()
            .filter_map(|u| match u {
                Update::Hint(h) => Some(h),
                _ => None,
            })
            .collect()
    }

    fn short() -> MeasurementConfig {
        MeasurementConfig {
            duration_s: 20.0,
            ..Default::default()
        }
    }

    #[test]
    fn a_clean_scan_goes_created_started_intermediates_completed() {
        let out = run(short(), (0..700).map(|i| obs(i, true)));
        assert_eq!(out[0], Update::Created);
        assert!(matches!(out[1], Update::Started { t_s } if t_s == 0.0));
        let results: Vec<&Intermediate> = out
            .iter()
            .filter_map(|u| match u {
                Update::Intermediate(r) => Some(r),
                _ => None,
            })
            .collect();
        assert!(
            (14..=16).contains(&results.len()),
            "{} results",
            results.len()
        );
        assert!(results
            .iter()
            .enumerate()
            .all(|(i, r)| r.index as usize == i));
        let Some(Update::Completed(r)) = out.last() else {
            panic!("{:?}", out.last())
        };
        assert!((r.hr_bpm.unwrap() - 72.0).abs() < 1.0);
        assert!(r.confidence > 0.9);
        assert_eq!(
            out.iter()
                .filter(|u| matches!(u, Update::Completed(_)))
                .count(),
            1
        );
    }

    /// A scan of 20 s that may measure on to 30 s, whose first bar is out
    /// of reach and whose extended bar is not.
    fn extending_cfg() -> MeasurementConfig {
        MeasurementConfig {
            duration_s: 20.0,
            max_duration_s: 30.0,
            low_snr_db: 60.0,
            extended_low_snr_db: -10.0,
            ..Default::default()
        }
    }

    #[test]
    fn a_pulse_too_weak_at_duration_measures_on_and_is_judged_again_at_max_duration() {
        // The first judgement's bar is out of reach, the extended one not:
        // the scan measures on with a WEAK_PULSE hint, without live LOW_SNR,
        // and completes at max_duration_s with the extended bar.
        let cfg = extending_cfg();
        // (The live rule judges against the extended bar, -10 dB: no
        // live LOW_SNR for a clean pulse.)
        let out = run_all(cfg.clone(), (0..1200).map(|i| obs(i, true)));
        let Some(Update::Completed(r)) = out.last() else {
            panic!("{:?}", out.last())
        };
        assert!((r.duration_s - 30.0).abs() < 0.1, "{}", r.duration_s);
        assert!((r.hr_bpm.unwrap() - 72.0).abs() < 1.0);
        assert!(hints(&out)
            .iter()
            .any(|h| h.constraint == Constraint::WeakPulse && h.active));
        assert!(!out.iter().any(|u| matches!(u, Update::LowSnr { .. })));
        // Without a pulse the first judgement is below the extended bar
        // too: LOW_SNR at duration_s, no one kept waiting.
        let strict = MeasurementConfig {
            low_snr_db: 1.0,
            extended_low_snr_db: 0.0,
            ..cfg.clone()
        };
        let out = run(strict, (0..1200).map(|i| obs(i, false)));
        let Some(Update::Cancelled { reason, result, .. }) = out.last() else {
            panic!("{:?}", out.last())
        };
        assert_eq!(*reason, CancelReason::LowSnr);
        assert!(result.duration_s < 20.5, "{}", result.duration_s);
        // max_duration_s at or below duration_s: never extended.
        let never = MeasurementConfig {
            max_duration_s: 0.0,
            ..cfg
        };
        let out = run(never, (0..1200).map(|i| obs(i, true)));
        let Some(Update::Cancelled { reason, result, .. }) = out.last() else {
            panic!("{:?}", out.last())
        };
        assert_eq!(*reason, CancelReason::LowSnr);
        assert!(result.duration_s < 20.5);
    }

    #[test]
    fn a_scan_is_extended_from_its_own_gate_which_sits_below_the_bar_it_must_clear_later() {
        // SNR at duration_s above extend_min_snr_db but below every bar:
        // the scan measures on (WEAK_PULSE) and is judged at max_duration_s,
        // where this bar is out of reach too: LOW_SNR at 30 s, not 20 s.
        let gate_below = MeasurementConfig {
            low_snr_db: 60.0,
            extended_low_snr_db: 50.0,
            extend_min_snr_db: -10.0,
            // No live LOW_SNR: only the two judgements decide here.
            low_snr_timeout_s: 1000.0,
            ..extending_cfg()
        };
        let out = run_all(gate_below.clone(), (0..1200).map(|i| obs(i, true)));
        let Some(Update::Cancelled { reason, result, .. }) = out.last() else {
            panic!("{:?}", out.last())
        };
        assert_eq!(*reason, CancelReason::LowSnr);
        assert!(
            (result.duration_s - 30.0).abs() < 0.1,
            "{}",
            result.duration_s
        );
        assert!(hints(&out)
            .iter()
            .any(|h| h.constraint == Constraint::WeakPulse && h.active));
        // The same pulse below the gate is not kept waiting.
        let gate_above = MeasurementConfig {
            extend_min_snr_db: 45.0,
            ..gate_below
        };
        let out = run(gate_above, (0..1200).map(|i| obs(i, true)));
        let Some(Update::Cancelled { reason, result, .. }) = out.last() else {
            panic!("{:?}", out.last())
        };
        assert_eq!(*reason, CancelReason::LowSnr);
        assert!(result.duration_s < 20.5, "{}", result.duration_s);
    }

    #[test]
    fn a_second_judgement_that_finds_another_rate_than_the_first_is_not_trusted() {
        // 72/min for the first 20 s; then a far stronger colour wave at
        // 120/min for the 40 s after, which takes over the whole-scan
        // spectrum (two thirds of its segments) by 60 s. The first
        // judgement (bar out of reach) saw 72, the second finds 120: two
        // looks that disagree are not evidence, so LOW_SNR, not 120.
        let cfg = MeasurementConfig {
            max_duration_s: 60.0,
            ..extending_cfg()
        };
        let frames = (0..1800).map(|i| {
            let mut o = obs(i, i < 600);
            if i >= 600 {
                let w = 0.02 * (2.0 * PI * 2.0 * i as f64 / 30.0).sin();
                o.mean_rgb = [
                    180.0 * (1.0 - 0.43 * w),
                    130.0 * (1.0 - w),
                    110.0 * (1.0 - 0.69 * w),
                ];
            }
            o
        });
        let out = run(cfg, frames);
        let Some(Update::Cancelled { reason, result, .. }) = out.last() else {
            panic!("{:?}", out.last())
        };
        assert_eq!(*reason, CancelReason::LowSnr);
        assert!(
            (result.duration_s - 60.0).abs() < 0.1,
            "{}",
            result.duration_s
        );
    }

    #[test]
    fn a_step_at_a_jump_is_spliced_out_and_the_pulse_kept() {
        // 30 fps, a pulse on a level that steps by 5 % at 4 s (the regions
        // landed on other skin) and the head 12 px lower.
        let t: Vec<f64> = (0..240).map(|i| i as f64 / 30.0).collect();
        let pulse = |x: f64| 0.004 * (2.0 * PI * 1.2 * x).sin();
        let level = |i: usize| if i < 120 { 150.0 } else { 157.5 };
        let rgb: Vec<[f64; 3]> = (0..240)
            .map(|i| [level(i) * (1.0 + pulse(t[i])); 3])
            .collect();
        let out = splice_rgb(&rgb, &t, &[120], SPLICE_WINDOW_S);
        for (i, p) in out.iter().enumerate() {
            let want = 150.0 * (1.0 + pulse(t[i]));
            assert!((p[1] - want).abs() < 0.05, "sample {i}: {} vs {want}", p[1]);
        }
        let mut vertical: Vec<f64> = (0..240).map(|i| if i < 120 { 0.0 } else { 12.0 }).collect();
        splice_offsets(&mut vertical, &t, &[120], SPLICE_WINDOW_S);
        assert!(vertical.iter().all(|v| v.abs() < 1e-9));
        // No jumps, or a jump at the very start: nothing changes.
        assert_eq!(splice_rgb(&rgb, &t, &[], 1.0), rgb);
        assert_eq!(splice_rgb(&rgb, &t, &[0], 1.0), rgb);
    }

    #[test]
    fn no_pulse_is_cancelled_with_low_snr_and_no_numbers() {
        let out = run(short(), (0..700).map(|i| obs(i, false)));
        let n = out.len();
        assert!(
            matches!(out[n - 2], Update::LowSnr { .. }),
            "{:?}",
            out[n - 2]
        );
        let Update::Cancelled { reason, result, .. } = &out[n - 1] else {
            panic!()
        };
        assert_eq!(*reason, CancelReason::LowSnr);
        assert_eq!(result.hr_bpm, None);
        assert!(
            result.snr_db.is_some_and(|s| s < 1.0),
            "the SNR that caused it is kept"
        );
    }

    #[test]
    fn no_face_within_the_timeout_fails_init() {
        let out = run(
            MeasurementConfig::default(),
            (0..400).map(|i| Observation {
                face: None,
                skin_pixels: 0,
                ..obs(i, true)
            }),
        );
        let Update::NoFace {
            waited_s,
            constraint,
            detail,
        } = &out[1]
        else {
            panic!("{:?}", out[1])
        };
        assert!((waited_s - 10.0).abs() < 0.05);
        assert_eq!(*constraint, Constraint::NoFace);
        assert!(
            detail.starts_with("no face was found in 10.0 s"),
            "{detail}"
        );
        assert!(matches!(
            out[2],
            Update::Cancelled {
                reason: CancelReason::NoFace,
                ..
            }
        ));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn losing_the_face_for_longer_than_the_timeout_cancels() {
        let out = run(
            short(),
            (0..700).map(|i| {
                let o = obs(i, true);
                if i > 200 {
                    Observation { face: None, ..o }
                } else {
                    o
                }
            }),
        );
        let n = out.len();
        assert!(matches!(
            &out[n - 2],
            Update::Constraint {
                reason: CancelReason::FaceLost,
                ..
            }
        ));
        assert!(matches!(
            &out[n - 1],
            Update::Cancelled {
                reason: CancelReason::FaceLost,
                ..
            }
        ));
    }

    #[test]
    fn a_short_face_dropout_is_tolerated() {
        let out = run(
            short(),
            (0..700).map(|i| {
                let o = obs(i, true);
                if (200..230).contains(&i) {
                    Observation { face: None, ..o }
                } else {
                    o
                }
            }),
        );
        assert!(matches!(out.last(), Some(Update::Completed(_))));
    }

    #[test]
    fn darkness_cancels_too_dark_even_before_a_face_is_found() {
        let dark = |i| Observation {
            luma: 5.0,
            face: None,
            ..obs(i, true)
        };
        let out = run(short(), (0..200).map(dark));
        assert!(matches!(
            &out[1],
            Update::Constraint {
                reason: CancelReason::TooDark,
                ..
            }
        ));
        assert!(matches!(
            &out[2],
            Update::Cancelled {
                reason: CancelReason::TooDark,
                ..
            }
        ));
    }

    #[test]
    fn sustained_fast_motion_cancels() {
        let out = run(
            short(),
            (0..700).map(|i| Observation {
                motion_px: [10.0, 0.0],
                ..obs(i, true)
            }),
        );
        assert!(out.iter().any(|u| matches!(
            u,
            Update::Constraint {
                reason: CancelReason::TooMuchMotion,
                ..
            }
        )));
    }

    #[test]
    fn input_ending_early_completes_only_with_enough_signal() {
        let out = run(short(), (0..500).map(|i| obs(i, true)));
        assert!(
            matches!(out.last(), Some(Update::Completed(r)) if (r.duration_s - 16.6).abs() < 0.1)
        );
        let out = run(short(), (0..200).map(|i| obs(i, true)));
        assert!(matches!(
            out.last(),
            Some(Update::Cancelled {
                reason: CancelReason::InputEnded,
                ..
            })
        ));
    }

    #[test]
    fn after_the_end_nothing_more_is_emitted() {
        let mut out = Vec::new();
        let mut m = Measurement::new(short(), SignalConfig::default(), &mut out).unwrap();
        m.push(&obs(0, true), &mut out);
        m.cancel(CancelReason::Requested, &mut out);
        let n = out.len();
        m.push(&obs(1, true), &mut out);
        m.cancel(CancelReason::InputError, &mut out);
        m.end_of_input(&mut out);
        assert_eq!(out.len(), n);
        assert!(matches!(
            out.last(),
            Some(Update::Cancelled {
                reason: CancelReason::Requested,
                ..
            })
        ));
    }

    #[test]
    fn a_face_too_small_to_measure_is_reported_with_its_size_and_never_measured() {
        let small = FaceBox {
            x: 300.0,
            y: 200.0,
            w: 40.0,
            h: 40.0,
        };
        let out = run_all(
            MeasurementConfig::default(),
            (0..400).map(|i| Observation {
                face: Some(small),
                ..obs(i, true)
            }),
        );
        assert!(!out.iter().any(|u| matches!(u, Update::Started { .. })));
        let h = hints(&out);
        assert!(!h.is_empty() && h.iter().all(|h| h.constraint == Constraint::FaceTooSmall));
        assert_eq!(h.len(), 4, "at 0.5, 3.5, 6.5 and 9.5 s");
        let Some(Update::NoFace {
            constraint, detail, ..
        }) = out.iter().find(|u| matches!(u, Update::NoFace { .. }))
        else {
            panic!("{out:?}")
        };
        assert_eq!(*constraint, Constraint::FaceTooSmall);
        assert_eq!(
            detail,
            "a face 40 px wide was found; the minimum is 56 px: move closer or use a higher resolution"
        );
        assert!(matches!(
            out.last(),
            Some(Update::Cancelled {
                reason: CancelReason::NoFace,
                constraint: Some(Constraint::FaceTooSmall),
                ..
            })
        ));
    }

    #[test]
    fn a_face_without_skin_is_reported_as_such() {
        let out = run(
            MeasurementConfig::default(),
            (0..400).map(|i| Observation {
                skin_pixels: 3,
                ..obs(i, true)
            }),
        );
        let Update::NoFace {
            constraint, detail, ..
        } = &out[1]
        else {
            panic!("{:?}", out[1])
        };
        assert_eq!(*constraint, Constraint::SkinNotFound);
        assert!(
            detail.contains("200 px wide") && detail.contains("3 skin pixels"),
            "{detail}"
        );
    }

    #[test]
    fn another_face_mid_scan_ends_it_as_face_lost_and_says_the_face_changed() {
        let out = run(
            short(),
            (0..700).map(|i| {
                let o = obs(i, true);
                if i > 300 {
                    Observation { face_id: 2, ..o }
                } else {
                    o
                }
            }),
        );
        let n = out.len();
        let Update::Constraint {
            reason,
            constraint,
            detail,
        } = &out[n - 2]
        else {
            panic!("{:?}", out[n - 2])
        };
        assert_eq!(
            (*reason, *constraint),
            (CancelReason::FaceLost, Constraint::FaceChanged)
        );
        assert!(
            detail.starts_with("another face (200 px wide at 200,200)"),
            "{detail}"
        );
        let Update::Cancelled {
            reason,
            constraint,
            result,
        } = &out[n - 1]
        else {
            panic!()
        };
        assert_eq!(
            (*reason, *constraint),
            (CancelReason::FaceLost, Some(Constraint::FaceChanged))
        );
        assert_eq!(result.hr_bpm, None, "no number from a scan of two people");
    }

    #[test]
    fn a_started_scan_keeps_a_face_that_shrinks_a_little_below_the_minimum() {
        let cfg = MeasurementConfig {
            min_face_px: 190.0,
            ..short()
        };
        let out = run(
            cfg,
            (0..700).map(|i| {
                // Starts at 200 px, then the person leans back to 150 px (3/4 of 200).
                let w = if i < 100 { 200.0 } else { 150.0 };
                Observation {
                    face: Some(FaceBox { w, h: w, ..FACE }),
                    ..obs(i, true)
                }
            }),
        );
        assert!(
            matches!(out.last(), Some(Update::Completed(_))),
            "{:?}",
            out.last()
        );
    }

    #[test]
    fn live_hints_come_before_the_cancellation_they_warn_of() {
        // Fast motion from 10 s: TOO_MUCH_MOTION is raised at 10.5 s, the scan
        // ends at 12 s.
        let out = run_all(
            short(),
            (0..700).map(|i| Observation {
                motion_px: if i >= 300 { [10.0, 0.0] } else { [0.0; 2] },
                ..obs(i, true)
            }),
        );
        let hint = out
            .iter()
            .position(|u| matches!(u, Update::Hint(h) if h.constraint == Constraint::TooMuchMotion && h.active))
            .expect("a motion hint");
        let cancel = out
            .iter()
            .position(|u| {
                matches!(
                    u,
                    Update::Constraint {
                        constraint: Constraint::TooMuchMotion,
                        ..
                    }
                )
            })
            .expect("the cancellation");
        assert!(hint < cancel);
        let between = out[hint..cancel]
            .iter()
            .filter(|u| matches!(u, Update::Intermediate(_)))
            .count();
        assert!(between >= 1, "the person had time to hold still");
    }
}
