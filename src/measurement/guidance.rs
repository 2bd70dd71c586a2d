//! Guidance: what a kiosk screen should tell the person in front of it,
//! live, before anything is cancelled.
//!
//! Owns: the machine-readable [`Constraint`] codes (hints and the reasons
//! behind cancellations), the rules that read them off one vision
//! [`Observation`] ([`assess`]), and the throttle that turns a condition
//! into a few events ([`Guide`]).
//!
//! Throttle: a condition must hold for [`HINT_AFTER_S`] ([`NO_FACE_AFTER_S`]
//! for "no face") before it is raised (`active`), is repeated at most every `interval_s` while it
//! holds (a screen that joined late still learns it), and is `cleared`
//! once it stops — so a screen can show exactly the hints that apply now.
//! A condition that flickers frame by frame therefore costs at most one
//! raise and one clear per [`HINT_AFTER_S`].
//!
//! Invariants: pure (time is the frame timestamp); one [`Hint`] per code
//! per transition; the scan's end (completed or cancelled) clears every
//! hint without a `cleared` of its own.

use crate::vision::Observation;
use serde::Serialize;

/// How long a condition must hold before its hint is raised ...
pub const HINT_AFTER_S: f64 = 0.5;
/// ... except "no face", which waits for the search to have looked at
/// every scale of the whole frame (about a second at 30 fps) first.
pub const NO_FACE_AFTER_S: f64 = 2.0;
/// A face wider than this share of the frame width, or taller than
/// [`TOO_LARGE_HEIGHT`] of its height, is too close.
pub const TOO_LARGE_WIDTH: f64 = 0.65;
pub const TOO_LARGE_HEIGHT: f64 = 0.95;
/// A face box that reaches within this share of its width of a frame
/// edge (or beyond it) is cut off. Not "more than x % outside": the
/// detector boxes what it sees, so the box of a face cut by the edge ends
/// at the edge (measured: a 192 px face with 32 px outside the frame was
/// boxed 8 px from the edge).
pub const CUT_OFF_MARGIN: f64 = 0.05;
/// A face centre farther than this share of the frame size from the
/// centre (either axis) is off-centre.
pub const OFF_CENTER_SHARE: f64 = 0.3;
/// Skin darker than this mean luma (0-255) is too dark to carry a pulse
/// through 8-bit quantisation, whatever the skin type.
pub const SKIN_DARK_LUMA: f64 = 35.0;
/// More than this share of clipped ROI pixels: over-exposed.
pub const OVEREXPOSED_SHARE: f64 = 0.1;
/// More than this share of near-black ROI pixels: under-exposed.
pub const UNDEREXPOSED_SHARE: f64 = 0.1;

/// A machine-readable condition of the scene. Hints (`CONSTRAINT_WARNING`)
/// and the causes of cancellations (`CONSTRAINT_VIOLATION`,
/// `FAILED_INIT_BLOOD_FLOW`) use the same codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Constraint {
    /// No face in view.
    NoFace,
    /// A face narrower than the minimum measured size.
    FaceTooSmall,
    /// A face too close to the camera.
    FaceTooLarge,
    /// Part of the face is outside the frame.
    FaceCutOff,
    /// The face is far from the centre of the frame.
    FaceOffCenter,
    /// The scene or the face is too dark.
    TooDark,
    /// Skin pixels are clipped (over-exposed): no pulse survives clipping.
    SkinOverexposed,
    /// Skin pixels sit near black (under-exposed): the pulse is lost in
    /// quantisation (dark skin in dim light first).
    SkinUnderexposed,
    /// The pulse is weak: the scan measures longer (up to
    /// `scan.max_duration_s`) before it decides.
    WeakPulse,
    /// The face moves too fast.
    TooMuchMotion,
    /// A face was found, but forehead and cheeks show too little skin.
    SkinNotFound,
    /// The measured face is gone.
    FaceLost,
    /// Another face replaced the measured one.
    FaceChanged,
}

impl Constraint {
    /// Every code, in documentation order.
    pub const ALL: [Constraint; 13] = [
        Constraint::NoFace,
        Constraint::FaceTooSmall,
        Constraint::FaceTooLarge,
        Constraint::FaceCutOff,
        Constraint::FaceOffCenter,
        Constraint::TooDark,
        Constraint::SkinOverexposed,
        Constraint::SkinUnderexposed,
        Constraint::WeakPulse,
        Constraint::TooMuchMotion,
        Constraint::SkinNotFound,
        Constraint::FaceLost,
        Constraint::FaceChanged,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Constraint::NoFace => "NO_FACE",
            Constraint::FaceTooSmall => "FACE_TOO_SMALL",
            Constraint::FaceTooLarge => "FACE_TOO_LARGE",
            Constraint::FaceCutOff => "FACE_CUT_OFF",
            Constraint::FaceOffCenter => "FACE_OFF_CENTER",
            Constraint::TooDark => "TOO_DARK",
            Constraint::SkinOverexposed => "SKIN_OVEREXPOSED",
            Constraint::SkinUnderexposed => "SKIN_UNDEREXPOSED",
            Constraint::WeakPulse => "WEAK_PULSE",
            Constraint::TooMuchMotion => "TOO_MUCH_MOTION",
            Constraint::SkinNotFound => "SKIN_NOT_FOUND",
            Constraint::FaceLost => "FACE_LOST",
            Constraint::FaceChanged => "FACE_CHANGED",
        }
    }

    /// How long the condition must hold before its hint is raised.
    pub fn raise_after_s(self) -> f64 {
        match self {
            Constraint::NoFace => NO_FACE_AFTER_S,
            _ => HINT_AFTER_S,
        }
    }

    /// What the person can do about it, short enough for a kiosk screen.
    pub fn advice(self) -> &'static str {
        match self {
            Constraint::NoFace => "stand in front of the camera and face it",
            Constraint::FaceTooSmall => "step closer to the camera",
            Constraint::FaceTooLarge => "step back from the camera",
            Constraint::FaceCutOff => "move so your whole face is in view",
            Constraint::FaceOffCenter => "move to the middle of the picture",
            Constraint::TooDark => "turn on a light in front of you",
            Constraint::SkinOverexposed => "dim the light on your face or move out of direct light",
            Constraint::SkinUnderexposed => "add light in front of your face",
            Constraint::WeakPulse => "hold still a little longer",
            Constraint::TooMuchMotion => "hold still",
            Constraint::SkinNotFound => {
                "uncover your forehead and cheeks and light your face evenly"
            }
            Constraint::FaceLost => "stay in front of the camera",
            Constraint::FaceChanged => "one person at a time, please",
        }
    }
}

/// A hint transition: raised, repeated or cleared.
#[derive(Debug, Clone, PartialEq)]
pub struct Hint {
    pub constraint: Constraint,
    /// `true`: the condition holds (raised or repeated); `false`: cleared.
    pub active: bool,
    /// What was measured, e.g. "the face is 18 px wide; the minimum is 24 px".
    pub detail: String,
}

/// Thresholds the rules need (from the scan and vision configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub min_face_px: f64,
    pub dark_luma: f64,
    pub max_motion_face_widths_per_s: f64,
}

/// The conditions that hold in one observation, each with what was
/// measured. `speed` is the face's recent speed in face widths per second.
pub fn assess(obs: &Observation, speed: f64, limits: &Limits) -> Vec<(Constraint, String)> {
    let mut out = Vec::new();
    let (w, h) = (obs.width as f64, obs.height as f64);
    if obs.luma < limits.dark_luma {
        out.push((
            Constraint::TooDark,
            format!(
                "the picture's mean brightness is {:.0}/255 (minimum {:.0})",
                obs.luma, limits.dark_luma
            ),
        ));
    }
    let Some(face) = obs.face else {
        out.push((Constraint::NoFace, "no face in view".to_string()));
        return out;
    };
    if face.w < limits.min_face_px {
        out.push((
            Constraint::FaceTooSmall,
            format!(
                "the face is {:.0} px wide; the minimum is {:.0} px",
                face.w, limits.min_face_px
            ),
        ));
    }
    if w > 0.0 && h > 0.0 {
        if face.w > TOO_LARGE_WIDTH * w || face.h > TOO_LARGE_HEIGHT * h {
            out.push((
                Constraint::FaceTooLarge,
                format!(
                    "the face is {:.0} % of the picture's width",
                    100.0 * face.w / w
                ),
            ));
        }
        let margin = CUT_OFF_MARGIN * face.w;
        let side = if face.x < margin {
            Some("left")
        } else if face.x + face.w > w - margin {
            Some("right")
        } else if face.y < margin {
            Some("top")
        } else if face.y + face.h > h - margin {
            Some("bottom")
        } else {
            None
        };
        if let Some(side) = side {
            out.push((
                Constraint::FaceCutOff,
                format!("the face reaches the picture's {side} edge"),
            ));
        }
        let (cx, cy) = face.center();
        let (dx, dy) = ((cx - w / 2.0) / w, (cy - h / 2.0) / h);
        if dx.abs() > OFF_CENTER_SHARE || dy.abs() > OFF_CENTER_SHARE {
            // Picture directions: with a mirrored preview, the person's own.
            let direction = if dx.abs() >= dy.abs() {
                if dx > 0.0 {
                    "right"
                } else {
                    "left"
                }
            } else if dy > 0.0 {
                "bottom"
            } else {
                "top"
            };
            out.push((
                Constraint::FaceOffCenter,
                format!("the face is near the picture's {direction} edge"),
            ));
        }
    }
    if obs.skin_pixels > 0 {
        let [r, g, b] = obs.mean_rgb;
        let luma = 0.299 * r + 0.587 * g + 0.114 * b;
        if luma < SKIN_DARK_LUMA {
            out.push((
                Constraint::TooDark,
                format!(
                    "the face's mean brightness is {luma:.0}/255 (minimum {SKIN_DARK_LUMA:.0})"
                ),
            ));
        }
    }
    if obs.roi_pixels > 0 && obs.clipped_pixels as f64 > OVEREXPOSED_SHARE * obs.roi_pixels as f64 {
        out.push((
            Constraint::SkinOverexposed,
            format!(
                "{:.0} % of forehead and cheek pixels are clipped",
                100.0 * obs.clipped_pixels as f64 / obs.roi_pixels as f64
            ),
        ));
    }
    if obs.roi_pixels > 0 && obs.dark_pixels as f64 > UNDEREXPOSED_SHARE * obs.roi_pixels as f64 {
        out.push((
            Constraint::SkinUnderexposed,
            format!(
                "{:.0} % of forehead and cheek pixels are near black (a channel at or below {})",
                100.0 * obs.dark_pixels as f64 / obs.roi_pixels as f64,
                crate::vision::roi::NEAR_BLACK_LEVEL
            ),
        ));
    }
    if speed > limits.max_motion_face_widths_per_s {
        out.push((
            Constraint::TooMuchMotion,
            format!(
                "the face moves {speed:.2} face widths/s (limit {:.2})",
                limits.max_motion_face_widths_per_s
            ),
        ));
    }
    // One entry per code: the first reason found (scene before face).
    let mut seen = Vec::new();
    out.retain(|(c, _)| {
        let first = !seen.contains(c);
        seen.push(*c);
        first
    });
    out
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    since: Option<f64>,
    last_raised: Option<f64>,
}

/// The throttle: conditions per frame in, hint transitions out.
#[derive(Debug, Clone)]
pub struct Guide {
    interval_s: f64,
    states: [State; Constraint::ALL.len()],
}

impl Guide {
    pub fn new(interval_s: f64) -> Guide {
        Guide {
            interval_s,
            states: Default::default(),
        }
    }

    /// Feeds the conditions that hold at `t_s`; pushes the transitions.
    pub fn update(&mut self, t_s: f64, holding: &[(Constraint, String)], out: &mut Vec<Hint>) {
        for (i, constraint) in Constraint::ALL.iter().enumerate() {
            let st = &mut self.states[i];
            match holding.iter().find(|(c, _)| c == constraint) {
                Some((_, detail)) => {
                    let since = *st.since.get_or_insert(t_s);
                    let due = st.last_raised.is_none_or(|r| t_s - r >= self.interval_s);
                    if t_s - since >= constraint.raise_after_s() && due {
                        st.last_raised = Some(t_s);
                        out.push(Hint {
                            constraint: *constraint,
                            active: true,
                            detail: detail.clone(),
                        });
                    }
                }
                None => {
                    st.since = None;
                    if st.last_raised.take().is_some() {
                        out.push(Hint {
                            constraint: *constraint,
                            active: false,
                            detail: String::new(),
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::FaceBox;

    fn limits() -> Limits {
        Limits {
            min_face_px: 24.0,
            dark_luma: 25.0,
            max_motion_face_widths_per_s: 0.5,
        }
    }

    fn seen(face: Option<FaceBox>) -> Observation {
        Observation {
            width: 640,
            height: 480,
            face,
            face_id: 1,
            mean_rgb: [180.0, 130.0, 110.0],
            skin_pixels: 500,
            roi_pixels: 600,
            luma: 120.0,
            ..Default::default()
        }
    }

    fn codes(obs: &Observation, speed: f64) -> Vec<Constraint> {
        assess(obs, speed, &limits())
            .into_iter()
            .map(|(c, _)| c)
            .collect()
    }

    fn face(x: f64, y: f64, w: f64) -> Option<FaceBox> {
        Some(FaceBox { x, y, w, h: w })
    }

    #[test]
    fn a_well_framed_face_raises_nothing() {
        assert!(codes(&seen(face(270.0, 170.0, 100.0)), 0.1).is_empty());
    }

    #[test]
    fn each_framing_problem_has_its_code_and_says_what_was_measured() {
        let small = assess(&seen(face(300.0, 200.0, 18.0)), 0.0, &limits());
        assert_eq!(small[0].0, Constraint::FaceTooSmall);
        assert_eq!(small[0].1, "the face is 18 px wide; the minimum is 24 px");
        assert_eq!(
            codes(&seen(face(110.0, 30.0, 420.0)), 0.0),
            vec![Constraint::FaceTooLarge]
        );
        let cut = assess(&seen(face(-40.0, 150.0, 160.0)), 0.0, &limits());
        assert_eq!(cut[0].0, Constraint::FaceCutOff);
        assert_eq!(cut[0].1, "the face reaches the picture's left edge");
        // A box that stops just short of the edge is what the detector
        // gives for a face cut by it.
        assert!(codes(&seen(face(3.0, 150.0, 160.0)), 0.0).contains(&Constraint::FaceCutOff));
        assert!(codes(&seen(face(60.0, 150.0, 160.0)), 0.0).is_empty());
        let off = assess(&seen(face(520.0, 200.0, 80.0)), 0.0, &limits());
        assert_eq!(off[0].0, Constraint::FaceOffCenter);
        assert!(off[0].1.contains("right"));
        assert_eq!(codes(&seen(None), 0.0), vec![Constraint::NoFace]);
        assert_eq!(
            codes(&seen(face(270.0, 170.0, 100.0)), 0.9),
            vec![Constraint::TooMuchMotion]
        );
    }

    #[test]
    fn darkness_and_clipping_are_read_off_the_scene_and_the_skin() {
        let mut o = seen(face(270.0, 170.0, 100.0));
        o.luma = 10.0;
        assert_eq!(codes(&o, 0.0), vec![Constraint::TooDark]);
        let mut backlit = seen(face(270.0, 170.0, 100.0));
        backlit.mean_rgb = [40.0, 25.0, 20.0];
        let d = assess(&backlit, 0.0, &limits());
        assert_eq!(d[0].0, Constraint::TooDark);
        assert!(d[0].1.contains("face's"), "{}", d[0].1);
        let mut bright = seen(face(270.0, 170.0, 100.0));
        bright.clipped_pixels = 200;
        assert_eq!(codes(&bright, 0.0), vec![Constraint::SkinOverexposed]);
        let mut dim = seen(face(270.0, 170.0, 100.0));
        dim.dark_pixels = 200;
        let d = assess(&dim, 0.0, &limits());
        assert_eq!(d[0].0, Constraint::SkinUnderexposed);
        assert!(d[0].1.contains("near black"), "{}", d[0].1);
    }

    #[test]
    fn a_hint_is_raised_after_half_a_second_repeated_every_interval_and_cleared_once() {
        let mut g = Guide::new(2.0);
        let mut out = Vec::new();
        let small = vec![(Constraint::FaceTooSmall, "x".to_string())];
        for i in 0..180 {
            // 5 s of a small face at 30 fps, then 1 s without.
            let t = i as f64 / 30.0;
            let holding = if t < 5.0 { small.clone() } else { Vec::new() };
            g.update(t, &holding, &mut out);
        }
        let raised: Vec<&Hint> = out.iter().filter(|h| h.active).collect();
        assert_eq!(raised.len(), 3, "at 0.5, 2.5 and 4.5 s: {out:?}");
        assert_eq!(out.iter().filter(|h| !h.active).count(), 1);
        assert!(!out.last().unwrap().active);
    }

    #[test]
    fn a_flickering_condition_is_never_raised_and_a_short_one_never_cleared() {
        let mut g = Guide::new(2.0);
        let mut out = Vec::new();
        let dark = vec![(Constraint::TooDark, "x".to_string())];
        for i in 0..300 {
            let holding = if i % 2 == 0 { dark.clone() } else { Vec::new() };
            g.update(i as f64 / 30.0, &holding, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }
}
