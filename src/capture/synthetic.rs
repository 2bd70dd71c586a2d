//! The built-in synthetic face video: a real face with a known pulse and breathing.
//!
//! Owns: a deterministic (seeded) video generator used by `demo`, the tests
//! and the benchmarks, so that the whole pipeline can be checked against
//! ground truth on any machine with nothing to download.
//!
//! The scene ([`scene`](super::scene)) is a real public-domain portrait —
//! by default the NASA portrait of Eileen Collins (`models/astronaut.png`),
//! or any of the built-in portraits of skin types I–VI, or a photo file —
//! framed like a kiosk shot: the face `face_width` of the frame wide, its
//! centre at (`face_x`, `face_y`) of the frame (partly outside it, if asked),
//! optionally with up to two more people behind (`faces=2|3`, each with a
//! pulse of its own at another rate) and background `clutter`.
//! Each frame adds, on perfused skin only, a blood-volume pulse in the physiological colour direction
//! `[0.33, 0.77, 0.53]` (de Haan & van Leest 2014): blood darkens the skin, by
//! `pulse` percent peak-to-peak in green. The beat sequence is built beat by
//! beat with respiratory sinus arrhythmia (`rsa`, relative HR swing) and
//! random beat-to-beat jitter, so the true RMSSD is known. Breathing shows as
//! a 0.3 % brightness swing and a vertical head motion of 1/150 of the face
//! width. Head motion shifts the scene with cubic weights (`keys_weights`),
//! so the face is as sharp at every sub-pixel position as a camera's lens
//! would keep it (rotation and zoom still resample bilinearly). The
//! camera's auto-exposure keeps the measured face from clipping
//! ([`AE_SKIN_CEILING`]). Then optional smooth head `motion` (px), lighting
//! `light` drift (relative), a global `brightness` factor, Gaussian sensor
//! `noise` (σ in 8-bit levels) and uint8 quantisation. `face=0` renders an
//! empty wall instead; `leave=T` has the measured person walk out at T s.
//!
//! Invariants: the same parameters give the same bytes on every machine;
//! frame `i` has timestamp `i / fps`; the source ends after `seconds`.

use super::scene::{self, FacePlace, PhotoSpec};
use super::{parse_number, parse_pairs, CaptureError, Frame, FrameSource, SourceInfo, Truth};
use std::f64::consts::PI;

/// The public-domain face photo (512x512 PNG), embedded so the demo needs no files.
pub const ASTRONAUT_PNG: &[u8] = include_bytes!("../../models/astronaut.png");

/// Blood-volume pulse direction in RGB.
const PBV: [f64; 3] = [0.33, 0.77, 0.53];

/// Skin model: colour and pulse strength per skin type.
///
/// Colour. Skin colour is graded by the individual typology angle,
/// `ITA° = atan((L* - 50) / b*)` in CIELAB (Chardon, Cretois & Hourseau,
/// Int. J. Cosmet. Sci. 13:191, 1991), whose bands Del Bino & Bernerd
/// (Br. J. Dermatol. 169 Suppl 3:33, 2013) relate to the Fitzpatrick
/// types: very light > 55°, light 41–55°, intermediate 28–41°, tan
/// 10–28°, brown -30–10°, dark < -30°. Type `t` takes the centre of its
/// band ([`ITA_DEG`]; -45° for the open-ended dark band) at a* 11 and b*
/// 16 (14 for the brown and dark bands, whose b* is lower), the middle of
/// the skin values those papers plot; L* follows from the ITA. That gives
/// L* 80 (type I) down to 36 (type VI), linear sRGB green 0.52 down to
/// 0.076: melanin darkens blue and green most.
///
/// Pulse. Blood volume modulates the light that entered the skin and came
/// back (the diffuse part). Epidermal melanin attenuates that light on the
/// way in and out, so in a Beer–Lambert two-layer model it scales the
/// pulsatile and the steady diffuse light alike; what it does not scale is
/// the surface reflection at the air–skin boundary (about 4 % at normal
/// incidence for a refractive index near 1.5; Anderson & Parrish, J.
/// Invest. Dermatol. 77:13, 1981), which carries no pulse. So the pulse's
/// share of the light a camera sees is `(R - S) / R` per channel, with
/// `R` the skin's total reflectance and `S` 0.04: 0.88 in green for type
/// II, 0.72 for V, 0.47 for VI. Monte Carlo studies find the same
/// direction, the pulse falling with melanin and most in green (Ajmal et
/// al., Biomed. Opt. Express 12:7445, 2021). The `pulse` parameter is the
/// amplitude of a type II skin; every face's own is scaled by its colour's
/// `(R - S) / R` over type II's, so a real dark-skinned portrait gets the
/// smaller pulse of its own colour, with or without `tone`. Not modelled:
/// camera gamma (it scales every type's relative pulse alike), shot noise
/// (sensor noise is the same σ for every type, which is harsher on dark
/// skin than a real sensor).
pub const ITA_DEG: [f64; 6] = [62.0, 48.0, 34.5, 19.0, -10.0, -45.0];

/// Surface (Fresnel) reflectance of skin, which carries no pulse.
pub const SURFACE_REFLECTANCE: f64 = 0.04;

/// The skin type whose pulse the `pulse` parameter gives.
const REFERENCE_TYPE: u8 = 2;

/// CIELAB (D65) to linear sRGB.
fn lab_to_linear_srgb(l: f64, a: f64, b: f64) -> [f64; 3] {
    let fy = (l + 16.0) / 116.0;
    let (fx, fz) = (fy + a / 500.0, fy - b / 200.0);
    let f = |t: f64| {
        if t.powi(3) > 0.008856 {
            t.powi(3)
        } else {
            (t - 16.0 / 116.0) / 7.787
        }
    };
    let (x, y, z) = (0.95047 * f(fx), f(fy), 1.08883 * f(fz));
    [
        3.2406 * x - 1.5372 * y - 0.4986 * z,
        -0.9689 * x + 1.8758 * y + 0.0415 * z,
        0.0557 * x - 0.2040 * y + 1.0570 * z,
    ]
    .map(|c| c.clamp(0.0, 1.0))
}

/// Linear sRGB reflectance of skin type `t` (1-6), see [`ITA_DEG`].
pub fn skin_reflectance(t: u8) -> [f64; 3] {
    let t = t.clamp(1, 6);
    let b = if t >= 5 { 14.0 } else { 16.0 };
    let l = 50.0 + b * ITA_DEG[usize::from(t) - 1].to_radians().tan();
    lab_to_linear_srgb(l, 11.0, b)
}

/// The pulse of skin of linear reflectance `r` relative to type II's, per
/// channel: `((r - S) / r) / ((r₂ - S) / r₂)`, see [`ITA_DEG`].
pub fn pulse_gain(r: [f64; 3]) -> [f64; 3] {
    let share = |r: f64| ((r - SURFACE_REFLECTANCE) / r.max(1e-6)).max(0.0);
    let reference = skin_reflectance(REFERENCE_TYPE);
    std::array::from_fn(|c| share(r[c]) / share(reference[c]))
}

fn srgb_to_linear(v: f64) -> f64 {
    let v = (v / 255.0).clamp(0.0, 1.0);
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb(v: f64) -> f64 {
    let v = v.clamp(0.0, 1.0);
    255.0
        * if v <= 0.003_130_8 {
            12.92 * v
        } else {
            1.055 * v.powf(1.0 / 2.4) - 0.055
        }
}

/// Parameters of a synthetic video (`synthetic:hr=72,rr=15,...`).
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticParams {
    pub hr_bpm: f64,
    pub rr_bpm: f64,
    pub seconds: f64,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// Sensor noise σ in 8-bit levels.
    pub noise: f64,
    /// Smooth head motion amplitude in pixels.
    pub motion: f64,
    /// Lighting drift amplitude (relative, 0.1 = ±10 %).
    pub light: f64,
    /// Pulse amplitude in percent of green intensity, peak to peak.
    pub pulse: f64,
    /// Respiratory sinus arrhythmia: relative HR swing over a breath.
    pub rsa: f64,
    /// Depth of breathing, relative (1 = normal; 0 = no breathing at all:
    /// no breathing light change, head motion or sinus arrhythmia).
    pub breathing: f64,
    /// Global brightness factor (0.1 = a very dark room).
    pub brightness: f64,
    /// Whether there is a face in the scene.
    pub face: bool,
    /// Skin tone as a Fitzpatrick type 1-6: the measured face's skin takes
    /// that type's colour (see [`ITA_DEG`]), and with it that colour's
    /// pulse; 0 = the photo's own skin colour (and its pulse).
    pub tone: u8,
    /// Head rotation amplitude in degrees (slow oscillation about the face).
    pub rotate_deg: f64,
    /// Head scale change amplitude, relative (0.05 = ±5 %, leaning in and out).
    pub zoom: f64,
    /// Sudden head moves of this many pixels, about every 8 s.
    pub jump_px: f64,
    /// Light flicker amplitude, relative, at `flicker_hz` (aliased by the frame rate).
    pub flicker: f64,
    pub flicker_hz: f64,
    /// Probability that a frame is dropped.
    pub drop: f64,
    /// Capture-time jitter σ in milliseconds (timestamps stay exact).
    pub jitter_ms: f64,
    /// The portrait of the measured face.
    pub photo: PhotoSpec,
    /// Face width as a share of the frame width.
    pub face_width: f64,
    /// Face centre as shares of the frame width and height (outside 0..1:
    /// partly or wholly out of the frame).
    pub face_x: f64,
    pub face_y: f64,
    /// People in view: 1, or 2–3 with the others behind (smaller, beside).
    pub faces: u8,
    /// Background clutter (posters, shelves, skin-coloured wood and paint).
    pub clutter: bool,
    /// The measured person walks out of view at this time (seconds); the
    /// people behind stay.
    pub leave_s: Option<f64>,
}

impl Default for SyntheticParams {
    fn default() -> Self {
        SyntheticParams {
            hr_bpm: 72.0,
            rr_bpm: 15.0,
            seconds: 30.0,
            seed: 1,
            width: 640,
            height: 480,
            fps: 30.0,
            noise: 2.0,
            motion: 0.0,
            light: 0.0,
            pulse: 0.3,
            rsa: 0.05,
            breathing: 1.0,
            brightness: 1.0,
            face: true,
            tone: 0,
            rotate_deg: 0.0,
            zoom: 0.0,
            jump_px: 0.0,
            flicker: 0.0,
            flicker_hz: 100.0,
            drop: 0.0,
            jitter_ms: 0.0,
            photo: PhotoSpec::Builtin(0),
            face_width: DEFAULT_FACE_WIDTH,
            face_x: 0.5,
            face_y: 0.45,
            faces: 1,
            clutter: false,
            leave_s: None,
        }
    }
}

/// Samples in the sensor-noise table. A row of output takes a run of it at
/// a random offset, so a pixel's noise in two frames comes from unrelated
/// places (a table of 2^18 independent samples, offsets drawn per row): as
/// white in time as per-pixel draws, at a fifth of their cost.
pub const NOISE_TABLE: usize = 1 << 18;

/// Default face width: a third of the frame (a kiosk user at about 0.5 m).
pub const DEFAULT_FACE_WIDTH: f64 = 0.35;

impl SyntheticParams {
    /// Parses the part after `synthetic:`; `spec` is the whole value for messages.
    pub fn parse(spec: &str, list: &str) -> Result<Self, CaptureError> {
        let mut p = SyntheticParams::default();
        let pairs = parse_pairs(spec, list)?;
        let bad = |problem: String| CaptureError::Spec {
            spec: spec.to_string(),
            problem,
        };
        let face_box = match pairs.iter().find(|(k, _)| *k == "box") {
            Some((_, v)) => {
                let parts: Vec<f64> = v
                    .split(':')
                    .map(|x| x.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad(format!("box={v:?} is not X:Y:W:H (four numbers)")))?;
                match parts[..] {
                    [x, y, w, h]
                        if [x, y, w, h].iter().all(|n| n.is_finite() && *n >= 0.0)
                            && w > 0.0
                            && h > 0.0 =>
                    {
                        Some([x, y, w, h])
                    }
                    _ => {
                        return Err(bad(format!(
                            "box={v:?} is not X:Y:W:H (four numbers, W and H positive)"
                        )))
                    }
                }
            }
            None => None,
        };
        for (k, v) in pairs {
            let num = |range| parse_number(spec, k, v, range);
            match k {
                "hr" => p.hr_bpm = num(30.0..=240.0)?,
                "rr" => p.rr_bpm = num(3.0..=60.0)?,
                "seconds" => p.seconds = num(0.1..=3600.0)?,
                "seed" => p.seed = num(0.0..=u32::MAX as f64)? as u64,
                "width" => p.width = num(32.0..=4096.0)? as u32,
                "height" => p.height = num(32.0..=4096.0)? as u32,
                "fps" => p.fps = num(1.0..=240.0)?,
                "noise" => p.noise = num(0.0..=64.0)?,
                "motion" => p.motion = num(0.0..=200.0)?,
                "light" => p.light = num(0.0..=0.9)?,
                "pulse" => p.pulse = num(0.0..=10.0)?,
                "rsa" => p.rsa = num(0.0..=0.3)?,
                "breathing" => p.breathing = num(0.0..=2.0)?,
                "brightness" => p.brightness = num(0.0..=4.0)?,
                "face" => p.face = num(0.0..=1.0)? >= 0.5,
                "tone" => p.tone = num(0.0..=6.0)?.round() as u8,
                "rotate" => p.rotate_deg = num(0.0..=45.0)?,
                "zoom" => p.zoom = num(0.0..=0.5)?,
                "jump" => p.jump_px = num(0.0..=200.0)?,
                "flicker" => p.flicker = num(0.0..=0.5)?,
                "flicker_hz" => p.flicker_hz = num(1.0..=1000.0)?,
                "drop" => p.drop = num(0.0..=0.9)?,
                "jitter" => p.jitter_ms = num(0.0..=100.0)?,
                "photo" => p.photo = PhotoSpec::parse(v, face_box).map_err(bad)?,
                "box" => {}
                "face_width" => p.face_width = num(0.01..=1.0)?,
                "face_x" => p.face_x = num(-0.5..=1.5)?,
                "face_y" => p.face_y = num(-0.5..=1.5)?,
                "faces" => p.faces = num(1.0..=3.0)?.round() as u8,
                "clutter" => p.clutter = num(0.0..=1.0)? >= 0.5,
                "leave" => p.leave_s = Some(num(0.0..=3600.0)?),
                other => {
                    return Err(CaptureError::Spec {
                        spec: spec.to_string(),
                        problem: format!(
                            "unknown option {other:?}; synthetic takes hr, rr, seconds, seed, width, height, \
                             fps, noise, motion, light, pulse, rsa, breathing, brightness, face, tone, rotate, zoom, \
                             jump, flicker, flicker_hz, drop, jitter, photo, box, face_width, face_x, \
                             face_y, faces, clutter, leave"
                        ),
                    })
                }
            }
        }
        if face_box.is_some() && !matches!(p.photo, PhotoSpec::File { .. }) {
            return Err(bad(
                "box= gives the face box of a photo file: use it with photo=PATH".to_string(),
            ));
        }
        Ok(p)
    }

    /// The canonical spec string for these parameters (the newer options
    /// only when set, so older specs read the same).
    pub fn to_spec(&self) -> String {
        let mut spec = format!(
            "synthetic:hr={},rr={},seconds={},seed={},width={},height={},fps={},noise={},motion={},light={},pulse={},rsa={},brightness={},face={}",
            self.hr_bpm, self.rr_bpm, self.seconds, self.seed, self.width, self.height, self.fps,
            self.noise, self.motion, self.light, self.pulse, self.rsa, self.brightness, u8::from(self.face)
        );
        let d = SyntheticParams::default();
        let extra = [
            ("breathing", self.breathing, d.breathing),
            ("tone", f64::from(self.tone), f64::from(d.tone)),
            ("rotate", self.rotate_deg, d.rotate_deg),
            ("zoom", self.zoom, d.zoom),
            ("jump", self.jump_px, d.jump_px),
            ("flicker", self.flicker, d.flicker),
            ("flicker_hz", self.flicker_hz, d.flicker_hz),
            ("drop", self.drop, d.drop),
            ("jitter", self.jitter_ms, d.jitter_ms),
        ];
        for (k, v, default) in extra {
            if v != default {
                spec.push_str(&format!(",{k}={v}"));
            }
        }
        if self.photo != d.photo {
            spec.push_str(&format!(",photo={}", self.photo.to_spec()));
        }
        let framing = [
            ("face_width", self.face_width, d.face_width),
            ("face_x", self.face_x, d.face_x),
            ("face_y", self.face_y, d.face_y),
            ("faces", f64::from(self.faces), f64::from(d.faces)),
            ("clutter", f64::from(u8::from(self.clutter)), 0.0),
        ];
        for (k, v, default) in framing {
            if v != default {
                spec.push_str(&format!(",{k}={v}"));
            }
        }
        if let Some(l) = self.leave_s {
            spec.push_str(&format!(",leave={l}"));
        }
        spec
    }

    /// The true heart rate of the person behind, number `k` (1 or 2): at
    /// least 20 bpm from the measured face's, so measuring the wrong
    /// person shows as a wrong number.
    pub fn other_hr_bpm(&self, k: u8) -> f64 {
        let hr = self.hr_bpm;
        match k {
            1 if hr <= 120.0 => hr + 30.0,
            1 => hr - 40.0,
            _ if hr >= 75.0 => hr - 25.0,
            _ => hr + 45.0,
        }
    }

    /// Where the face number `k` (0 = measured, 1-2 = behind) is in the frame.
    pub fn face_place(&self, k: u8) -> FacePlace {
        let (w, h) = (self.width as f64, self.height as f64);
        let main = FacePlace {
            cx: self.face_x * w,
            cy: self.face_y * h,
            w: self.face_width * w,
        };
        if k == 0 {
            return main;
        }
        // Behind and beside: smaller, a little higher, to the right and then
        // to the left (or the other way near an edge).
        let (size, side) = if k == 1 { (0.6, 1.0) } else { (0.5, -1.0) };
        let side = if (self.face_x + side * 0.3) > 0.95 || (self.face_x + side * 0.3) < 0.05 {
            -side
        } else {
            side
        };
        FacePlace {
            cx: main.cx + side * (0.5 * main.w + 0.45 * size * main.w + 0.1 * w),
            cy: main.cy - 0.1 * main.w,
            w: size * main.w,
        }
    }
}

/// SplitMix64: tiny, fast, seedable, identical on every platform.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller), for the few per-beat draws.
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
    }
}

/// Unit-variance approximately Gaussian samples, four per `u64` (Irwin-Hall of
/// four 16-bit uniforms): cheap enough for every pixel of every frame.
#[inline]
fn fast_gaussians(bits: u64) -> [f32; 4] {
    // Sum of 4 uniforms on [0,1) has mean 2 and variance 1/3.
    const SCALE: f32 = 1.732_050_8 / 65536.0;
    let mut out = [0.0f32; 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let b = bits.rotate_left(16 * i as u32);
        let s = (b & 0xFFFF) + ((b >> 16) & 0xFFFF) + ((b >> 32) & 0xFFFF) + ((b >> 48) & 0xFFFF);
        *slot = (s as f32 - 2.0 * 65536.0) * SCALE;
    }
    out
}

/// Pulse waveform over one beat, phase in `0..1`, normalised to `0..=1`:
/// a systolic peak and a smaller diastolic wave.
fn beat_shape(phase: f64) -> f64 {
    let g = |mu: f64, sigma: f64| (-((phase - mu) / sigma).powi(2) / 2.0).exp();
    let raw = g(0.2, 0.08) + 0.4 * g(0.5, 0.1) + g(1.2, 0.08);
    // Range of `raw` over a beat, found numerically once.
    const LO: f64 = 0.000_614_3;
    const HI: f64 = 1.004_502;
    ((raw - LO) / (HI - LO)).clamp(0.0, 1.0)
}

/// Weights of the four source pixels `-1, 0, 1, 2` for a shift by `f`
/// (`0..1`) of a pixel: Keys' cubic convolution (a = -0.5; IEEE Trans.
/// ASSP 29(6), 1981), which passes the scene's detail almost unchanged at
/// every sub-pixel phase.
///
/// Why not bilinear: bilinear interpolation at phase `f` is a blur whose
/// strength `f (1 - f)` runs from none at whole pixels to a [½, ½] average
/// at half a pixel. A camera's lens and pixels blur a moving face the same
/// at every position; bilinear made the sharpness of every skin pixel pulse
/// with the breathing head motion (under a pixel), once per pixel crossed.
/// Through the skin rule's soft edge that reached the heart-rate band as
/// breathing harmonics: pulse-free type I faces (whose pale skin sits on the
/// rule's Cr bound) completed 6 of 16 scans at 60 bpm, four times a breathing
/// rate of 15 /min, and 0 of 16 with cubic weights.
#[inline]
fn keys_weights(f: f32) -> [f32; 4] {
    let near = |t: f32| (1.5 * t - 2.5) * t * t + 1.0;
    let far = |t: f32| ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0;
    [far(1.0 + f), near(f), near(1.0 - f), far(2.0 - f)]
}

/// Beat onset times over `0..seconds` (plus one before and after) at a
/// mean rate of `hr_bpm`.
fn beat_times(p: &SyntheticParams, hr_bpm: f64, rng: &mut Rng) -> Vec<f64> {
    let mut t = -rng.uniform() * 60.0 / hr_bpm;
    let mut beats = vec![t];
    let f_r = p.rr_bpm / 60.0;
    while t <= p.seconds + 2.0 {
        let hr = hr_bpm * (1.0 + p.breathing * p.rsa * (2.0 * PI * f_r * t).sin());
        let jitter = 0.012 * rng.normal();
        t += (60.0 / hr + jitter).max(0.25);
        beats.push(t);
    }
    beats
}

/// The camera's auto-exposure, highlight-protecting: the scene is scaled
/// down so that 99 % of the measured face's skin pixels stay at or below
/// [`AE_SKIN_CEILING`] in every channel. A webcam with face-priority
/// exposure never leaves the face clipped; several of the public-domain
/// portraits are (up to 22 % of their skin pixels at 255 in the JPEG).
/// `brightness` applies after it, so `brightness=1.3` over-exposes on purpose.
fn auto_exposure(base: &mut [f32], skin: &[f32], owner: &[u8]) {
    let mut peaks: Vec<f32> = base
        .chunks_exact(3)
        .zip(skin.iter().zip(owner))
        .filter(|(_, (&m, &o))| m > 0.5 && o == 0)
        .map(|(p, _)| p[0].max(p[1]).max(p[2]))
        .collect();
    if peaks.len() < 16 {
        return;
    }
    let k = peaks.len() * 99 / 100;
    let (_, p99, _) = peaks.select_nth_unstable_by(k, f32::total_cmp);
    if *p99 > AE_SKIN_CEILING {
        let gain = AE_SKIN_CEILING / *p99;
        base.iter_mut().for_each(|v| *v *= gain);
    }
}

/// See [`auto_exposure`].
pub const AE_SKIN_CEILING: f32 = 235.0;

/// Mean linear sRGB of the measured face's skin (mask above 0.5), if any.
fn skin_mean_linear(base: &[f32], skin: &[f32], owner: &[u8]) -> Option<[f64; 3]> {
    let (mut sum, mut n) = ([0.0f64; 3], 0usize);
    for ((px, &m), &o) in base.chunks_exact(3).zip(skin).zip(owner) {
        if m > 0.5 && o == 0 {
            for c in 0..3 {
                sum[c] += srgb_to_linear(f64::from(px[c]));
            }
            n += 1;
        }
    }
    (n >= 16).then(|| sum.map(|s| s / n as f64))
}

/// Indices of the skin pixels that carry the pulse of someone behind.
fn skin_of_others(skin: &[f32], owner: &[u8]) -> Vec<u32> {
    skin_where(skin, owner, |o| o != 0)
}

/// Indices of the skin pixels whose owner passes `whose`.
fn skin_where(skin: &[f32], owner: &[u8], whose: impl Fn(u8) -> bool) -> Vec<u32> {
    skin.iter()
        .zip(owner)
        .enumerate()
        .filter(|(_, (&m, &o))| m > 0.0 && whose(o))
        .map(|(i, _)| i as u32)
        .collect()
}

/// A scene's pixels: base colour, perfusion, owners, and the others' skin.
type SceneBuffers = (Vec<f32>, Vec<f32>, Vec<u8>, Vec<u32>);

/// A seeded synthetic face video.
pub struct SyntheticSource {
    params: SyntheticParams,
    info: SourceInfo,
    /// Framed photo, RGB as f32, `width * height * 3`.
    base: Vec<f32>,
    /// 1.0 on perfused skin, 0.0 elsewhere.
    skin: Vec<f32>,
    /// Whose pulse each pixel carries (0 = the measured face).
    owner: Vec<u8>,
    /// Skin pixels of the people behind (their pulse is applied separately).
    other_skin: Vec<u32>,
    /// Skin pixels of the measured face: the only ones `lit` changes
    /// frame to frame (everything else stays `base`).
    own_skin: Vec<u32>,
    /// The scene once the measured person has left (`leave`), swapped in then.
    after_leave: Option<SceneBuffers>,
    /// The scene lit for the current frame, and one output row (reused).
    /// Off the skin it is `base`, copied once (again when `base` changes).
    lit: Vec<f32>,
    row: Vec<f32>,
    /// The four scene rows around the current output row, combined by the
    /// vertical cubic weights (reused).
    column: Vec<f32>,
    /// Unit Gaussian samples; each output row adds a run of them starting
    /// at a random place (see [`NOISE_TABLE`]).
    noise: Vec<f32>,
    /// Beat onsets of every face; `beats[0]` is the measured face's.
    beats: Vec<Vec<f64>>,
    /// Amplitude of the breathing head motion, pixels.
    breath_px: f64,
    /// The measured face's pulse per channel relative to type II skin's.
    pulse_gain: [f64; 3],
    motion_phases: [f64; 6],
    /// Sudden moves: from this time on, the head is offset by (dx, dy).
    jumps: Vec<(f64, f64, f64)>,
    /// Centre of rotation and zoom (the face), frame pixels.
    center: (f64, f64),
    /// Pixel noise.
    rng: Rng,
    /// Frame drops and capture jitter: a stream of its own, so that a video
    /// without them has the same bytes as before they existed.
    timing: Rng,
    last_t: Option<f64>,
    index: u64,
}

impl std::fmt::Debug for SyntheticSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyntheticSource")
            .field("params", &self.params)
            .finish()
    }
}

impl SyntheticSource {
    pub fn new(params: SyntheticParams) -> Result<Self, CaptureError> {
        let (w, h) = (params.width, params.height);
        let main = if params.face {
            Some((scene::load(&params.photo)?, params.face_place(0)))
        } else {
            None
        };
        // People behind: the next built-in portraits after the measured one.
        let mut others = Vec::new();
        if params.face {
            let first = match params.photo {
                PhotoSpec::Builtin(i) => i,
                PhotoSpec::File { .. } => 0,
            };
            for k in 1..params.faces {
                let i = (first + k as usize * 2) % scene::PORTRAITS.len();
                let photo = scene::load(&PhotoSpec::Builtin(i))?;
                others.push((photo, params.face_place(k)));
            }
        }
        let main_ref = main.as_ref().map(|(p, at)| (p, *at));
        let main_at = main.as_ref().map(|(_, at)| *at);
        let sc = scene::compose(
            w,
            h,
            main_ref,
            &others,
            main_at,
            params.clutter,
            params.seed,
        );
        // After `leave`: the same room without the measured person.
        let after_leave = params.leave_s.filter(|_| params.face).map(|_| {
            let gone = scene::compose(w, h, None, &others, main_at, params.clutter, params.seed);
            let other_skin = skin_of_others(&gone.blood, &gone.owner);
            (gone.base, gone.blood, gone.owner, other_skin)
        });
        let center = main
            .as_ref()
            .map_or((w as f64 / 2.0, h as f64 / 2.0), |(_, at)| (at.cx, at.cy));
        let breath_px = main
            .as_ref()
            .map_or(0.0, |(_, at)| params.breathing * at.w / 150.0);
        let (mut base, skin, owner) = (sc.base, sc.blood, sc.owner);
        // The measured face's skin colour (linear), then its skin type's if
        // `tone` asks for one; its pulse follows its colour (see ITA_DEG).
        let mut face_rgb = skin_mean_linear(&base, &skin, &owner);
        if params.tone > 0 {
            if let Some(from) = face_rgb {
                let to = skin_reflectance(params.tone);
                let gain: [f64; 3] = std::array::from_fn(|c| to[c] / from[c].max(1e-4));
                for ((px, &m), &o) in base.chunks_exact_mut(3).zip(&skin).zip(&owner) {
                    if o == 0 && m > 0.0 {
                        for c in 0..3 {
                            let lin = srgb_to_linear(f64::from(px[c]));
                            let toned = lin * (1.0 - f64::from(m) * (1.0 - gain[c]));
                            px[c] = linear_to_srgb(toned) as f32;
                        }
                    }
                }
                face_rgb = Some(to);
            }
        }
        let pulse_gain = face_rgb.map_or([1.0; 3], pulse_gain);
        auto_exposure(&mut base, &skin, &owner);
        let mut rng = Rng(params.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5DEE_CE66);
        let mut beats = vec![beat_times(&params, params.hr_bpm, &mut rng)];
        let table = NOISE_TABLE.max(8 * 3 * w as usize);
        let mut noise = Vec::with_capacity(table + 3);
        while noise.len() < table {
            noise.extend(fast_gaussians(rng.next_u64()));
        }
        let motion_phases = std::array::from_fn(|_| 2.0 * PI * rng.uniform());
        // The people behind have beats of their own, from a stream of their
        // own (the measured face's beats do not depend on them).
        let mut others_rng = Rng(params.seed.wrapping_mul(0x6C8E_9CF5_7093_2BD5) ^ 0x0B5E_55ED);
        for k in 1..=others.len() as u8 {
            beats.push(beat_times(&params, params.other_hr_bpm(k), &mut others_rng));
        }
        let mut timing = Rng(params.seed.wrapping_mul(0x9E37_79B9) ^ 0x7143_2F0D);
        let mut jumps = Vec::new();
        if params.jump_px > 0.0 {
            // Alternate between a new offset and home, so the face stays in frame.
            let (mut t, mut away) = (4.0 + 2.0 * timing.uniform(), true);
            while t < params.seconds {
                let a = 2.0 * PI * timing.uniform();
                let (dx, dy) = if away {
                    (params.jump_px * a.cos(), params.jump_px * a.sin())
                } else {
                    (0.0, 0.0)
                };
                jumps.push((t, dx, dy));
                away = !away;
                t += 6.0 + 4.0 * timing.uniform();
            }
        }
        let info = SourceInfo {
            kind: "synthetic",
            description: params.to_spec(),
            width: w,
            height: h,
            fps: params.fps,
            truth: Some(truth(&params, &beats[0])),
        };
        Ok(SyntheticSource {
            params,
            info,
            other_skin: skin_of_others(&skin, &owner),
            own_skin: skin_where(&skin, &owner, |o| o == 0),
            after_leave,
            base,
            skin,
            owner,
            lit: Vec::new(),
            row: Vec::new(),
            column: Vec::new(),
            noise,
            beats,
            breath_px,
            pulse_gain,
            motion_phases,
            jumps,
            center,
            rng,
            timing,
            last_t: None,
            index: 0,
        })
    }

    /// Blood-volume pulse (0..1) of face `face` at time `t`.
    fn bvp(&self, face: usize, t: f64) -> f64 {
        let beats = &self.beats[face];
        let k = beats.partition_point(|&b| b <= t);
        if k == 0 || k >= beats.len() {
            return 0.0;
        }
        let (a, b) = (beats[k - 1], beats[k]);
        beat_shape((t - a) / (b - a))
    }

    /// Head displacement (dx, dy) in pixels at `t`.
    fn displacement(&self, t: f64) -> (f64, f64) {
        let p = &self.params;
        let breath = (2.0 * PI * p.rr_bpm / 60.0 * t).sin();
        let dy_breath = -self.breath_px * breath;
        let ph = &self.motion_phases;
        // Smooth wandering: three slow components per axis, peak ≈ `motion`.
        let wander = |o: usize| {
            p.motion
                * (0.5 * (2.0 * PI * 0.11 * t + ph[o]).sin()
                    + 0.3 * (2.0 * PI * 0.23 * t + ph[o + 1]).sin()
                    + 0.2 * (2.0 * PI * 0.37 * t + ph[o + 2]).sin())
        };
        let (jx, jy) = self
            .jumps
            .iter()
            .rev()
            .find(|j| j.0 <= t)
            .map_or((0.0, 0.0), |j| (j.1, j.2));
        (wander(0) + jx, dy_breath + wander(3) + jy)
    }

    /// Head rotation (radians) and scale at `t`.
    fn pose(&self, t: f64) -> (f64, f64) {
        let p = &self.params;
        let ph = &self.motion_phases;
        let angle = p.rotate_deg.to_radians() * (2.0 * PI * 0.13 * t + ph[1]).sin();
        let scale = 1.0 + p.zoom * (2.0 * PI * 0.09 * t + ph[4]).sin();
        (angle, scale)
    }

    /// The next frame that is not dropped: its nominal index and capture time.
    fn next_time(&mut self) -> Option<(u64, f64)> {
        let p = &self.params;
        loop {
            let i = self.index;
            let nominal = i as f64 / p.fps;
            if nominal >= p.seconds {
                return None;
            }
            self.index += 1;
            if p.drop > 0.0 && self.timing.uniform() < p.drop {
                continue;
            }
            let mut t = nominal;
            if p.jitter_ms > 0.0 {
                t += p.jitter_ms / 1000.0 * self.timing.normal();
            }
            // Capture times stay increasing and inside the video.
            let floor = self.last_t.map_or(0.0, |l| l + 0.001);
            let t = t.max(floor).max(0.0);
            self.last_t = Some(t);
            return Some((i, t));
        }
    }
}

/// True HR (from the mean beat interval), RR and RMSSD over the video.
fn truth(p: &SyntheticParams, beats: &[f64]) -> Truth {
    truth_between(p, beats, 0.0, p.seconds)
}

/// The same over `t0..=t1` seconds of the video.
fn truth_between(p: &SyntheticParams, beats: &[f64], t0: f64, t1: f64) -> Truth {
    let inside: Vec<f64> = beats
        .iter()
        .cloned()
        .filter(|&b| (t0..=t1).contains(&b))
        .collect();
    let iv: Vec<f64> = inside.windows(2).map(|w| w[1] - w[0]).collect();
    let hr = if iv.is_empty() {
        p.hr_bpm
    } else {
        60.0 * iv.len() as f64 / iv.iter().sum::<f64>()
    };
    let sd: Vec<f64> = iv.windows(2).map(|w| (w[1] - w[0]) * 1000.0).collect();
    let rmssd = if sd.is_empty() {
        0.0
    } else {
        (sd.iter().map(|d| d * d).sum::<f64>() / sd.len() as f64).sqrt()
    };
    // Without a pulse there is no heart rate (or HRV) to be right about:
    // NaN, so that every number measured on such a video counts as wrong.
    let pulse = p.pulse > 0.0;
    Truth {
        hr_bpm: if pulse { hr } else { f64::NAN },
        rr_bpm: p.rr_bpm,
        rmssd_ms: if pulse { rmssd } else { f64::NAN },
    }
}

impl FrameSource for SyntheticSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn truth_between(&self, t0_s: f64, t1_s: f64) -> Option<Truth> {
        Some(truth_between(&self.params, &self.beats[0], t0_s, t1_s))
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
        let Some((index, t)) = self.next_time() else {
            return Ok(false);
        };
        let p = &self.params;
        let (w, h) = (p.width as usize, p.height as usize);
        frame.reshape_rgb(p.width, p.height);
        frame.t_s = t;
        frame.index = index;

        let f_r = p.rr_bpm / 60.0;
        let gain = p.brightness
            * (1.0 + p.light * (2.0 * PI * t / 40.0).sin())
            * (1.0 + p.flicker * (2.0 * PI * p.flicker_hz * t).sin())
            * (1.0 + 0.003 * p.breathing * (2.0 * PI * f_r * t).sin());
        // How much blood darkens each channel now, per face (the measured
        // face's pulse scaled by its skin colour's, see ITA_DEG).
        let mut darken = [[0.0f32; 3]; 3];
        for (face, d) in darken.iter_mut().enumerate().take(self.beats.len()) {
            let k = if face == 0 { self.pulse_gain } else { [1.0; 3] };
            let pulse = p.pulse / 100.0 * (self.bvp(face, t) - 0.5);
            *d = std::array::from_fn(|c| (k[c] * pulse * PBV[c] / PBV[1]) as f32);
        }
        if p.leave_s.is_some_and(|l| t >= l) {
            if let Some((base, skin, owner, others)) = self.after_leave.take() {
                (self.base, self.skin, self.owner, self.other_skin) = (base, skin, owner, others);
                self.own_skin = skin_where(&self.skin, &self.owner, |o| o == 0);
                self.lit.clear();
            }
        }
        let p = &self.params;
        // The lit scene: every skin pixel darkened by its face's blood volume
        // now; the rest is the base scene, copied once.
        if self.lit.len() != self.base.len() {
            self.lit.clone_from(&self.base);
        }
        let d0 = darken[0];
        for &i in &self.own_skin {
            let i = i as usize;
            let m = self.skin[i];
            let base = &self.base[i * 3..i * 3 + 3];
            for ((lit, b), d) in self.lit[i * 3..i * 3 + 3].iter_mut().zip(base).zip(d0) {
                *lit = b * (1.0 - m * d);
            }
        }
        for &i in &self.other_skin {
            let i = i as usize;
            let (d, m) = (darken[self.owner[i] as usize], self.skin[i]);
            let base = &self.base[i * 3..i * 3 + 3];
            for ((lit, b), d) in self.lit[i * 3..i * 3 + 3].iter_mut().zip(base).zip(d) {
                *lit = b * (1.0 - m * d);
            }
        }

        let (dx, dy) = self.displacement(t);
        let (angle, scale) = self.pose(t);
        let gain = gain as f32;
        let sigma = p.noise as f32;
        let clamp_x = |x: isize| x.clamp(0, w as isize - 1) as usize;
        let clamp_y = |y: isize| y.clamp(0, h as isize - 1) as usize;
        let bilinear = |fx: f32, fy: f32| {
            [
                (1.0 - fx) * (1.0 - fy),
                fx * (1.0 - fy),
                (1.0 - fx) * fy,
                fx * fy,
            ]
        };
        self.row.resize(w * 3, 0.0);
        self.column.resize(w * 3, 0.0);
        let affine = angle != 0.0 || scale != 1.0;
        // Output (x, y) shows the scene at `src = c + R(-angle) (out - c - d) / scale`:
        // an affine map, so each row steps by a constant (ax, ay). Without
        // rotation or zoom it is a shift shared by every pixel: one set of
        // cubic weights per frame, applied down the columns and then along
        // the row, in loops that vectorise (see [`keys_weights`] for why
        // cubic and not bilinear).
        let (c, sn) = (angle.cos() / scale, -angle.sin() / scale);
        let (cx, cy) = self.center;
        let (ax, ay) = (c, sn);
        let (bx, by) = (-sn, c);
        let (tx, ty) = ((-dx).floor(), (-dy).floor());
        let kx = keys_weights((-dx - tx) as f32);
        let ky = keys_weights((-dy - ty) as f32);
        let (tx, ty) = (tx as isize, ty as isize);
        // Output columns whose four source columns are all inside the frame.
        let inner = (1 - tx).max(0) as usize..((w as isize - 2 - tx).clamp(0, w as isize)) as usize;
        for y in 0..h {
            let acc = &mut self.row;
            if affine {
                let (ry, rx0) = (y as f64 - cy - dy, -cx - dx);
                let mut sx = cx + ax * rx0 + bx * ry;
                let mut sy = cy + ay * rx0 + by * ry;
                for x in 0..w {
                    let (fx0, fy0) = (sx.floor(), sy.floor());
                    let wt = bilinear((sx - fx0) as f32, (sy - fy0) as f32);
                    sx += ax;
                    sy += ay;
                    let (ix, iy) = (fx0 as isize, fy0 as isize);
                    let (x0, x1) = (clamp_x(ix), clamp_x(ix + 1));
                    let (y0, y1) = (clamp_y(iy), clamp_y(iy + 1));
                    let taps = [y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1];
                    for c in 0..3 {
                        acc[x * 3 + c] = taps
                            .iter()
                            .zip(wt)
                            .map(|(tap, k)| k * self.lit[tap * 3 + c])
                            .sum();
                    }
                }
            } else {
                // Down the columns: the four scene rows around this one
                // (the frame's edge rows repeat the scene's edge).
                let col = &mut self.column;
                let rows: [&[f32]; 4] = std::array::from_fn(|j| {
                    let sy = clamp_y(y as isize + ty + j as isize - 1);
                    &self.lit[sy * w * 3..(sy + 1) * w * 3]
                });
                for (k, v) in col.iter_mut().enumerate() {
                    *v = ky[0] * rows[0][k]
                        + ky[1] * rows[1][k]
                        + ky[2] * rows[2][k]
                        + ky[3] * rows[3][k];
                }
                // Along the row: the edge columns repeat the scene's edge.
                for x in (0..inner.start.min(w)).chain(inner.end.max(inner.start)..w) {
                    let taps: [usize; 4] =
                        std::array::from_fn(|i| clamp_x(x as isize + tx + i as isize - 1));
                    for c in 0..3 {
                        acc[x * 3 + c] = (0..4).map(|i| kx[i] * col[taps[i] * 3 + c]).sum();
                    }
                }
                if inner.start < inner.end {
                    let off = (inner.start as isize + tx - 1) as usize * 3;
                    let n = (inner.end - inner.start) * 3;
                    let out = &mut acc[inner.start * 3..inner.end * 3];
                    let taps: [&[f32]; 4] =
                        std::array::from_fn(|i| &col[off + 3 * i..off + 3 * i + n]);
                    for k in 0..n {
                        out[k] = kx[0] * taps[0][k]
                            + kx[1] * taps[1][k]
                            + kx[2] * taps[2][k]
                            + kx[3] * taps[3][k];
                    }
                }
            }
            // Sensor noise: a run of the seeded table at a random place,
            // drawn anew for every row of every frame.
            let start = (self.rng.next_u64() % (self.noise.len() - 3 * w) as u64) as usize;
            let noise = &self.noise[start..start + 3 * w];
            let row_out = &mut frame.rgb_mut()[y * w * 3..(y + 1) * w * 3];
            for ((o, &v), &n) in row_out.iter_mut().zip(acc.iter()).zip(noise) {
                let v = v * gain + sigma * n;
                // `+ 0.5` then truncate: f32::round is a libm call on baseline
                // x86-64 and was a fifth of all generation work (callgrind).
                // max/min (not clamp) map NaN to 0, so the value is always in
                // 0.5..255.5 and the unchecked conversion (which vectorises;
                // `as u8` saturates lane by lane) truncates it exactly as
                // `as u8` would.
                #[allow(clippy::manual_clamp)] // clamp keeps NaN, which is UB below
                let v = v.max(0.0).min(255.0) + 0.5;
                // SAFETY: `v` is finite and within 0.5..=255.5, inside i32.
                *o = unsafe { v.to_int_unchecked::<i32>() } as u8;
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(extra: &str) -> SyntheticSource {
        let spec = format!("width=160,height=120,seconds=2{extra}");
        SyntheticSource::new(SyntheticParams::parse("synthetic", &spec).unwrap()).unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_another_seed_differs() {
        let mut a = small(",seed=4");
        let mut b = small(",seed=4");
        let mut c = small(",seed=5");
        let (mut fa, mut fb, mut fc) = (Frame::default(), Frame::default(), Frame::default());
        for _ in 0..3 {
            a.next_frame(&mut fa).unwrap();
            b.next_frame(&mut fb).unwrap();
            c.next_frame(&mut fc).unwrap();
        }
        assert_eq!(fa.data(), fb.data());
        assert_ne!(fa.data(), fc.data());
    }

    #[test]
    fn it_ends_after_the_requested_duration_with_uniform_timestamps() {
        let mut s = small("");
        let mut f = Frame::default();
        let mut n = 0;
        while s.next_frame(&mut f).unwrap() {
            assert!((f.t_s - n as f64 / 30.0).abs() < 1e-12);
            n += 1;
        }
        assert_eq!(n, 60);
        assert_eq!(f.data().len(), 160 * 120 * 3);
    }

    #[test]
    fn the_pulse_darkens_skin_in_the_blood_volume_direction() {
        let p = SyntheticParams {
            width: 160,
            height: 120,
            noise: 0.0,
            pulse: 5.0,
            rsa: 0.0,
            rr_bpm: 60.0,
            ..Default::default()
        };
        let s = SyntheticSource::new(p).unwrap();
        // Compare the skin mean at a systolic peak and at a trough of the same breath phase.
        let skin_px = s.skin.iter().filter(|&&v| v > 0.5).count();
        assert!(skin_px > 1000, "the photo must contain skin: {skin_px}");
        let shape: Vec<f64> = (0..100).map(|i| beat_shape(i as f64 / 100.0)).collect();
        let max = shape.iter().cloned().fold(0.0, f64::max);
        let min = shape.iter().cloned().fold(1.0, f64::min);
        assert!(
            max > 0.99 && min < 0.01,
            "waveform spans 0..1: {min}..{max}"
        );
    }

    #[test]
    fn truth_reports_the_mean_rate_and_a_physiological_rmssd() {
        let s = SyntheticSource::new(SyntheticParams::default()).unwrap();
        let t = s.info().truth.unwrap();
        assert!((t.hr_bpm - 72.0).abs() < 1.5, "{t:?}");
        assert!((10.0..80.0).contains(&t.rmssd_ms), "{t:?}");
        // Over the whole video it is the same; over a stretch, that stretch's.
        assert_eq!(s.truth_between(0.0, s.params.seconds), Some(t));
        let part = s.truth_between(5.0, 15.0).unwrap();
        assert!(
            (part.hr_bpm - 72.0).abs() < 3.0 && part.hr_bpm != t.hr_bpm,
            "{part:?}"
        );
    }

    #[test]
    fn a_video_without_a_pulse_has_no_true_heart_rate_to_be_right_about() {
        let params = SyntheticParams::parse("synthetic:pulse=0", "pulse=0").unwrap();
        let t = SyntheticSource::new(params).unwrap().info().truth.unwrap();
        assert!(t.hr_bpm.is_nan() && t.rmssd_ms.is_nan(), "{t:?}");
        // The breathing is still there, and still true.
        assert_eq!(t.rr_bpm, 15.0);
    }

    #[test]
    fn unknown_or_out_of_range_options_are_rejected_clearly() {
        let e = SyntheticParams::parse("synthetic:hz=3", "hz=3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown option \"hz\""), "{e}");
        let e = SyntheticParams::parse("synthetic:hr=500", "hr=500")
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside"), "{e}");
        // A face box is only for a photo file; given alone it would be ignored.
        let e = SyntheticParams::parse("synthetic:box=1:1:9:9", "box=1:1:9:9")
            .unwrap_err()
            .to_string();
        assert!(e.contains("use it with photo=PATH"), "{e}");
        let p = SyntheticParams::parse("s", "photo=a/face.png,box=1:2:30:30").unwrap();
        assert_eq!(
            p.to_spec()
                .matches("photo=a/face.png,box=1:2:30:30")
                .count(),
            1
        );
    }

    #[test]
    fn dropped_frames_and_capture_jitter_give_fewer_frames_with_increasing_true_timestamps() {
        let mut s = small(",drop=0.2,jitter=8");
        let mut f = Frame::default();
        let (mut n, mut last, mut off_grid) = (0, -1.0, 0);
        while s.next_frame(&mut f).unwrap() {
            assert!(f.t_s > last, "timestamps increase");
            let nominal = f.index as f64 / 30.0;
            assert!((f.t_s - nominal).abs() < 0.05, "{} vs {nominal}", f.t_s);
            off_grid += usize::from((f.t_s - nominal).abs() > 1e-6);
            (last, n) = (f.t_s, n + 1);
        }
        assert!(
            (35..58).contains(&n),
            "about 20 % of 60 frames dropped: {n}"
        );
        assert!(off_grid > n / 2, "jitter moves most capture times");
        // Without them the stream is the old one, frame for frame.
        let mut plain = small("");
        let mut g = Frame::default();
        let mut count = 0;
        while plain.next_frame(&mut g).unwrap() {
            count += 1;
        }
        assert_eq!(count, 60);
    }

    #[test]
    fn a_darker_skin_tone_darkens_skin_and_shrinks_the_pulse_but_the_wall_changes_only_by_exposure()
    {
        let light = small("");
        let dark = small(",tone=6");
        let mean = |src: &SyntheticSource, on_skin: bool| {
            let (mut sum, mut n) = (0.0, 0.0);
            for (px, &m) in src.base.chunks_exact(3).zip(&src.skin) {
                if (m > 0.5) == on_skin {
                    sum += px[1] as f64;
                    n += 1.0;
                }
            }
            sum / n
        };
        // Type VI green (L* 36) is about half the photo's (about type II).
        assert!(mean(&dark, true) < 0.6 * mean(&light, true));
        // The highlight-protecting auto-exposure may darken the lighter
        // face's whole scene; the wall's colours are otherwise untouched.
        let gain = mean(&dark, false) / mean(&light, false);
        assert!(gain >= 1.0 - 1e-6, "{gain}");
        for ((d, l), &m) in dark
            .base
            .iter()
            .zip(&light.base)
            .zip(light.skin.iter().flat_map(|m| [m; 3]))
        {
            if m <= 0.5 {
                assert!(
                    (d - gain as f32 * l).abs() < 1e-3 * (1.0 + l),
                    "{d} vs {gain} x {l}"
                );
            }
        }
        // Type VI's pulse: about half of type II's in green, a fifth in blue.
        assert!(
            (0.45..0.65).contains(&dark.pulse_gain[1]),
            "{:?}",
            dark.pulse_gain
        );
        assert!(dark.pulse_gain[2] < dark.pulse_gain[1] && dark.pulse_gain[1] < dark.pulse_gain[0]);
    }

    #[test]
    fn skin_types_follow_their_ita_bands_and_darker_skin_carries_a_smaller_pulse() {
        // Back from linear sRGB to CIELAB: each type's ITA lies in its band.
        let lab = |rgb: [f64; 3]| {
            let [r, g, b] = rgb;
            let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
            let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
            let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
            let f = |t: f64| {
                if t > 0.008856 {
                    t.cbrt()
                } else {
                    7.787 * t + 16.0 / 116.0
                }
            };
            (
                116.0 * f(y) - 16.0,
                500.0 * (f(x) - f(y)),
                200.0 * (f(y) - f(z)),
            )
        };
        let bands = [
            (55.0, 90.0),
            (41.0, 55.0),
            (28.0, 41.0),
            (10.0, 28.0),
            (-30.0, 10.0),
            (-90.0, -30.0),
        ];
        let mut last = [f64::INFINITY; 3];
        for t in 1..=6u8 {
            let rgb = skin_reflectance(t);
            let (l, _, b) = lab(rgb);
            let ita = ((l - 50.0) / b).atan().to_degrees();
            let (lo, hi) = bands[usize::from(t) - 1];
            assert!(ita > lo && ita < hi, "type {t}: ITA {ita:.1}");
            let gain = pulse_gain(rgb);
            for c in 0..3 {
                assert!(gain[c] < last[c], "type {t}: {gain:?}");
            }
            last = gain;
        }
        let two = pulse_gain(skin_reflectance(2));
        assert!(two.iter().all(|g| (g - 1.0).abs() < 1e-9));
    }

    #[test]
    fn sudden_moves_alternate_between_an_offset_and_home() {
        let s = small(",jump=20,seconds=30");
        assert!(s.jumps.len() >= 2, "{:?}", s.jumps);
        let (t0, dx, dy) = s.jumps[0];
        assert!(((dx * dx + dy * dy).sqrt() - 20.0).abs() < 1e-9);
        let before = s.displacement(t0 - 0.01);
        let after = s.displacement(t0 + 0.01);
        assert!((after.0 - before.0 - dx).abs() < 0.5 && (after.1 - before.1 - dy).abs() < 0.5);
        assert_eq!((s.jumps[1].1, s.jumps[1].2), (0.0, 0.0));
    }

    #[test]
    fn fast_gaussians_have_unit_variance() {
        let mut rng = Rng(3);
        let (mut s, mut s2, mut n) = (0.0f64, 0.0f64, 0.0f64);
        for _ in 0..20_000 {
            for v in fast_gaussians(rng.next_u64()) {
                s += v as f64;
                s2 += (v * v) as f64;
                n += 1.0;
            }
        }
        assert!((s / n).abs() < 0.02);
        assert!((s2 / n - 1.0).abs() < 0.03);
    }

    #[test]
    fn a_sub_pixel_shift_keeps_the_detail_at_every_phase_unlike_bilinear() {
        // Gain of a shift by `f` at spatial frequency `nu` (cycles/pixel).
        let gain = |w: [f32; 4], f: f64, nu: f64| {
            let (mut re, mut im) = (0.0, 0.0);
            for (k, &wk) in w.iter().enumerate() {
                let a = 2.0 * PI * nu * (k as f64 - 1.0 - f);
                re += f64::from(wk) * a.cos();
                im += f64::from(wk) * a.sin();
            }
            (re * re + im * im).sqrt()
        };
        let bilinear = |f: f32| [0.0, 1.0 - f, f, 0.0];
        for i in 0..=20 {
            let f = i as f64 / 20.0;
            let w = keys_weights(f as f32);
            assert!(
                (w.iter().sum::<f32>() - 1.0).abs() < 1e-6,
                "f={f}: weights sum to 1"
            );
            // Detail 8 px and coarser keeps ≥ 98 % of its contrast at every
            // phase; bilinear keeps 92 % at half a pixel.
            for nu in [0.05, 0.1, 0.125] {
                assert!(gain(w, f, nu) > 0.98, "f={f} nu={nu}: {}", gain(w, f, nu));
            }
        }
        assert!(gain(bilinear(0.5), 0.5, 0.125) < 0.93);
        // Whole pixels are copied exactly.
        assert_eq!(keys_weights(0.0), [0.0, 1.0, 0.0, 0.0]);
    }
}
