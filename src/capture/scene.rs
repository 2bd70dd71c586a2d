//! The still scene of a synthetic video: a wall, optional clutter, and one
//! to three real portraits placed where the framing says, with the mask of
//! perfused skin of each face.
//!
//! Owns: the built-in portraits ([`PORTRAITS`]: the NASA portrait of Eileen
//! Collins and five official US-government portraits of skin types I–VI,
//! all public domain, vendored in `models/` with their provenance), loading
//! a portrait from a file, placing a portrait so that its face has a given
//! width and centre in the frame (partly outside it, too), and the
//! perfusion mask.
//!
//! Placement: the portrait is scaled so its face box (as given for the
//! photo: brow to chin, cheek to cheek) is `face_width` of the frame width,
//! and moved so the box centre is at (`face_x`, `face_y`) of the frame.
//! Only the part that lands in the frame is resampled (area-averaged when
//! shrinking). Photo edges inside the frame are feathered into the wall, so
//! a small face stands in a room rather than in a pasted rectangle.
//!
//! Perfusion mask: pixels inside an ellipse over the face and neck whose
//! chromaticity is within a small distance of the face's own median skin
//! colour (measured on the cheeks and nose), or that pass the fixed RGB
//! skin rule of Kovač et al. A colour rule fitted to the face itself works
//! for every skin type, where the fixed rule misses most pixels of dark
//! skin; the fixed rule adds the lit parts of a light face that stray from
//! its median (highlights, the hairline). With the face's own rule alone,
//! patches of the astronaut's forehead carried no pulse; with `tone=5`
//! they stayed light beside darkened skin, and 0 of 8 such scans at
//! 640×480 completed (8 of 8 with both rules).
//!
//! Invariants: deterministic (the same parameters give the same pixels);
//! the mask is 0 outside faces; `owner` says whose pulse a pixel carries
//! (0 = the face to be measured, 1.. = people behind).

use super::CaptureError;
use std::path::PathBuf;

/// A portrait the agent ships with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Portrait {
    /// Name in `synthetic:photo=NAME`.
    pub name: &'static str,
    pub bytes: &'static [u8],
    /// Face box `[x, y, w, h]` in the photo's pixels.
    pub face_box: [f64; 4],
    /// Approximate Fitzpatrick type, judged by eye (see models/README.md).
    pub skin_type: u8,
}

/// The built-in portraits. `astronaut` is the default face of the
/// synthetic video; the others come from the public-domain set described
/// in models/README.md (its face boxes are OpenCV Haar boxes; the
/// astronaut's is the SeetaFace box widened by the 1/0.96 that SeetaFace
/// and Haar boxes differ by on that set, so `face_width` means the same for all).
pub const PORTRAITS: &[Portrait] = &[
    Portrait {
        name: "astronaut",
        bytes: include_bytes!("../../models/astronaut.png"),
        face_box: [171.0, 66.0, 103.0, 103.0],
        skin_type: 2,
    },
    Portrait {
        name: "001",
        bytes: include_bytes!("../../models/faces/001.jpg"),
        face_box: [42.0, 133.0, 314.0, 314.0],
        skin_type: 1,
    },
    Portrait {
        name: "013",
        bytes: include_bytes!("../../models/faces/013.jpg"),
        face_box: [63.0, 119.0, 315.0, 315.0],
        skin_type: 3,
    },
    Portrait {
        name: "016",
        bytes: include_bytes!("../../models/faces/016.jpg"),
        face_box: [89.0, 108.0, 275.0, 275.0],
        skin_type: 4,
    },
    Portrait {
        name: "021",
        bytes: include_bytes!("../../models/faces/021.jpg"),
        face_box: [142.0, 104.0, 162.0, 162.0],
        skin_type: 5,
    },
    Portrait {
        name: "032",
        bytes: include_bytes!("../../models/faces/032.jpg"),
        face_box: [59.0, 106.0, 309.0, 309.0],
        skin_type: 6,
    },
];

/// Which portrait: a built-in one, or an image file with its face box.
#[derive(Debug, Clone, PartialEq)]
pub enum PhotoSpec {
    Builtin(usize),
    File { path: PathBuf, face_box: [f64; 4] },
}

impl PhotoSpec {
    /// A built-in name, or a path (anything with `/` or `.` in it).
    pub fn parse(value: &str, face_box: Option<[f64; 4]>) -> Result<PhotoSpec, String> {
        if let Some(i) = PORTRAITS.iter().position(|p| p.name == value) {
            if face_box.is_some() {
                return Err(format!(
                    "box= is for photos given by path; the built-in photo {value} has its own face box"
                ));
            }
            return Ok(PhotoSpec::Builtin(i));
        }
        if value.contains('/') || value.contains('.') {
            let face_box = face_box.ok_or_else(|| {
                format!("photo={value} needs the face box in the photo: box=X:Y:W:H (pixels)")
            })?;
            return Ok(PhotoSpec::File {
                path: PathBuf::from(value),
                face_box,
            });
        }
        let names: Vec<&str> = PORTRAITS.iter().map(|p| p.name).collect();
        Err(format!(
            "unknown photo {value:?}; built-in: {}, or a path to a JPEG/PNG with box=X:Y:W:H",
            names.join(", ")
        ))
    }

    /// How it is written in a spec.
    pub fn to_spec(&self) -> String {
        match self {
            PhotoSpec::Builtin(i) => PORTRAITS[*i].name.to_string(),
            PhotoSpec::File { path, face_box } => {
                let [x, y, w, h] = face_box;
                format!("{},box={x}:{y}:{w}:{h}", path.display())
            }
        }
    }
}

/// A decoded portrait.
pub struct Photo {
    pub rgb: image::RgbImage,
    pub face_box: [f64; 4],
}

/// Photos larger than this (pixels) are refused: a portrait needs no more.
pub const MAX_PHOTO_PIXELS: u64 = 40_000_000;

/// Decodes the portrait named by `spec`.
pub fn load(spec: &PhotoSpec) -> Result<Photo, CaptureError> {
    let problem = |p: String| CaptureError::Spec {
        spec: format!("synthetic:photo={}", spec.to_spec()),
        problem: p,
    };
    let (img, face_box) = match spec {
        PhotoSpec::Builtin(i) => {
            let p = &PORTRAITS[*i];
            let img = image::load_from_memory(p.bytes)
                .map_err(|e| problem(format!("built-in photo failed to decode: {e}")))?;
            (img, p.face_box)
        }
        PhotoSpec::File { path, face_box } => {
            if let Err(source) = std::fs::metadata(path) {
                return Err(CaptureError::Open {
                    path: path.clone(),
                    source,
                });
            }
            let img = super::decode_still(path, MAX_PHOTO_PIXELS)
                .map_err(|e| problem(format!("{}: {e}", path.display())))?;
            (image::DynamicImage::ImageRgb8(img), *face_box)
        }
    };
    let rgb = img.into_rgb8();
    let [x, y, w, h] = face_box;
    let fits = w > 0.0
        && h > 0.0
        && x + w <= rgb.width() as f64 + 1.0
        && y + h <= rgb.height() as f64 + 1.0;
    if !fits || x < 0.0 || y < 0.0 {
        return Err(problem(format!(
            "face box {x}:{y}:{w}:{h} is not inside the {}x{} photo",
            rgb.width(),
            rgb.height()
        )));
    }
    Ok(Photo { rgb, face_box })
}

/// Where a face is in the frame: centre and width, frame pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FacePlace {
    pub cx: f64,
    pub cy: f64,
    pub w: f64,
}

/// The composed still scene.
pub struct Scene {
    /// RGB as f32, `width * height * 3`.
    pub base: Vec<f32>,
    /// 1.0 on perfused skin, 0.0 elsewhere.
    pub blood: Vec<f32>,
    /// Whose pulse each pixel carries (index into `faces`).
    pub owner: Vec<u8>,
    /// Every placed face: the measured one (when present) first.
    pub faces: Vec<FacePlace>,
}

/// The wall behind everyone: a soft gradient with a faint pattern.
pub fn wall(width: u32, height: u32) -> Vec<f32> {
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            let u = x as f32 / width as f32;
            let v = y as f32 / height as f32;
            let shade = 150.0 + 40.0 * u - 30.0 * v + 8.0 * (12.0 * u).sin() * (9.0 * v).cos();
            out.extend_from_slice(&[shade * 0.92, shade * 0.97, shade]);
        }
    }
    out
}

/// Background clutter: posters, shelves, a door, textured and plain, some
/// of them skin-coloured (beige paint and wood are, to a skin rule).
pub fn clutter(base: &mut [f32], width: u32, height: u32, seed: u64) {
    let mut rng = super::synthetic::Rng::new(seed ^ 0xC1A7_7E12);
    let (w, h) = (width as f64, height as f64);
    let palette: [[f32; 3]; 8] = [
        [200.0, 160.0, 120.0], // beige (skin-like)
        [150.0, 100.0, 60.0],  // wood (skin-like)
        [40.0, 60.0, 120.0],
        [180.0, 40.0, 40.0],
        [60.0, 140.0, 70.0],
        [230.0, 230.0, 220.0],
        [30.0, 30.0, 35.0],
        [210.0, 180.0, 60.0],
    ];
    for k in 0..14 {
        let rw = (0.05 + 0.25 * rng.uniform()) * w;
        let rh = (0.05 + 0.35 * rng.uniform()) * h;
        let x0 = rng.uniform() * (w - rw);
        let y0 = rng.uniform() * (h - rh);
        let c = palette[(rng.next_u64() % palette.len() as u64) as usize];
        let texture = k % 3;
        let period = 3.0 + 10.0 * rng.uniform();
        for y in y0 as u32..(y0 + rh) as u32 {
            for x in x0 as u32..(x0 + rw) as u32 {
                let shade = match texture {
                    0 => 1.0,
                    1 => {
                        if ((x as f64 / period) as i64 + (y as f64 / period) as i64) % 2 == 0 {
                            1.0
                        } else {
                            0.6
                        }
                    }
                    _ => 0.8 + 0.2 * ((x as f64 + 2.0 * y as f64) / period).sin() as f32,
                };
                let i = (y as usize * width as usize + x as usize) * 3;
                for ch in 0..3 {
                    base[i + ch] = c[ch] * shade;
                }
            }
        }
    }
}

/// Draws `photo` over the scene so its face is at `place`; its perfused
/// skin carries the pulse of face `owner`. Nothing is drawn over the head
/// of `keep_clear` (an ellipse over that face and its hair). Returns false
/// when none of it is visible.
pub fn place(
    scene: &mut Scene,
    width: u32,
    height: u32,
    photo: &Photo,
    place: FacePlace,
    owner: u8,
    keep_clear: Option<FacePlace>,
) -> bool {
    let clear = |x: f64, y: f64| {
        keep_clear.is_some_and(|k| {
            ((x - k.cx) / (0.8 * k.w)).powi(2) + ((y - k.cy + 0.1 * k.w) / (1.1 * k.w)).powi(2)
                <= 1.0
        })
    };
    let [bx, by, bw, bh] = photo.face_box;
    let (pw, ph) = (photo.rgb.width() as f64, photo.rgb.height() as f64);
    let s = place.w / bw;
    let ox = place.cx - (bx + bw / 2.0) * s;
    let oy = place.cy - (by + bh / 2.0) * s;
    // The part of the photo that lands in the frame.
    let u0 = (-ox / s).floor().max(0.0);
    let u1 = ((width as f64 - ox) / s).ceil().min(pw);
    let v0 = (-oy / s).floor().max(0.0);
    let v1 = ((height as f64 - oy) / s).ceil().min(ph);
    if u1 <= u0 || v1 <= v0 {
        return false;
    }
    let cw = (((u1 - u0) * s).round() as u32).max(1);
    let ch = (((v1 - v0) * s).round() as u32).max(1);
    let crop = image::imageops::crop_imm(
        &photo.rgb,
        u0 as u32,
        v0 as u32,
        (u1 - u0) as u32,
        (v1 - v0) as u32,
    )
    .to_image();
    let scaled = image::imageops::resize(&crop, cw, ch, image::imageops::FilterType::Triangle);
    let (px0, py0) = ((ox + u0 * s).round() as i64, (oy + v0 * s).round() as i64);
    // Photo edges in frame coordinates, for feathering.
    let (left, right, top, bottom) = (ox, ox + pw * s, oy, oy + ph * s);
    let feather = (0.04 * pw.min(ph) * s).max(1.0);
    let mut alpha = vec![0f32; cw as usize * ch as usize];
    for (j, row) in scaled.rows().enumerate() {
        let y = py0 + j as i64;
        if y < 0 || y >= height as i64 {
            continue;
        }
        for (i, p) in row.enumerate() {
            let x = px0 + i as i64;
            if x < 0 || x >= width as i64 {
                continue;
            }
            let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
            let d = (fx - left).min(right - fx).min(fy - top).min(bottom - fy);
            let a = if clear(fx, fy) {
                0.0
            } else {
                (d / feather).clamp(0.0, 1.0) as f32
            };
            alpha[j * cw as usize + i] = a;
            let k = (y as usize * width as usize + x as usize) * 3;
            for c in 0..3 {
                scene.base[k + c] = a * p.0[c] as f32 + (1.0 - a) * scene.base[k + c];
            }
        }
    }
    // The perfusion mask of this face, where the photo covers the frame.
    let (cx, cy, fw) = (place.cx, place.cy, place.w);
    let (ecy, rx, ry) = (cy + 0.2 * fw, 0.55 * fw, 0.85 * fw);
    let reference = reference_colour(&scene.base, width, height, place);
    for j in 0..ch as usize {
        let y = py0 + j as i64;
        if y < 0 || y >= height as i64 {
            continue;
        }
        for i in 0..cw as usize {
            let x = px0 + i as i64;
            if x < 0 || x >= width as i64 || alpha[j * cw as usize + i] < 0.5 {
                continue;
            }
            let n = y as usize * width as usize + x as usize;
            let inside =
                ((x as f64 + 0.5 - cx) / rx).powi(2) + ((y as f64 + 0.5 - ecy) / ry).powi(2) <= 1.0;
            let k = n * 3;
            let px = &scene.base[k..k + 3];
            let skin =
                inside && (reference.is_some_and(|r| is_skin_like(px, r)) || is_skin_rgb(px));
            scene.blood[n] = if skin { 1.0 } else { 0.0 };
            scene.owner[n] = owner;
        }
    }
    true
}

/// The face's median colour over cheeks and nose (the central part of the
/// face box), or `None` if that part is outside the frame.
fn reference_colour(base: &[f32], width: u32, height: u32, face: FacePlace) -> Option<[f32; 3]> {
    let (x0, x1) = (face.cx - 0.25 * face.w, face.cx + 0.25 * face.w);
    let (y0, y1) = (face.cy - 0.05 * face.w, face.cy + 0.25 * face.w);
    let mut ch: [Vec<f32>; 3] = Default::default();
    let step = ((face.w / 40.0) as usize).max(1);
    for y in (y0.max(0.0) as u32..y1.min(height as f64).max(0.0) as u32).step_by(step) {
        for x in (x0.max(0.0) as u32..x1.min(width as f64).max(0.0) as u32).step_by(step) {
            let k = (y as usize * width as usize + x as usize) * 3;
            for c in 0..3 {
                ch[c].push(base[k + c]);
            }
        }
    }
    if ch[0].len() < 4 {
        return None;
    }
    let median = |v: &mut Vec<f32>| {
        v.sort_by(f32::total_cmp);
        v[v.len() / 2]
    };
    Some([median(&mut ch[0]), median(&mut ch[1]), median(&mut ch[2])])
}

/// The generic RGB skin rule of Kovač, Peer & Solina (2003, uniform
/// daylight). Beside [`is_skin_like`]: a face's own colour varies more than
/// that rule allows over a lit forehead (highlights, the hairline), and
/// skin that is not perfused there would be a pulse-free patch in every ROI;
/// the rule alone misses darker skin, which the face's own colour finds.
fn is_skin_rgb(px: &[f32]) -> bool {
    let (r, g, b) = (px[0], px[1], px[2]);
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    r > 95.0 && g > 40.0 && b > 20.0 && max - min > 15.0 && (r - g).abs() > 15.0 && r > g && r > b
}

/// Skin of this face: chromaticity close to its reference colour, and
/// neither much darker (hair, eyes, brows) nor much brighter (highlights).
fn is_skin_like(px: &[f32], reference: [f32; 3]) -> bool {
    let sum = px[0] + px[1] + px[2];
    let rsum = reference[0] + reference[1] + reference[2];
    if sum < 30.0 || rsum < 30.0 {
        return false;
    }
    let (r, g) = (px[0] / sum, px[1] / sum);
    let (rr, rg) = (reference[0] / rsum, reference[1] / rsum);
    let luma = sum / rsum;
    (r - rr).abs() <= 0.04 && (g - rg).abs() <= 0.03 && (0.5..=1.6).contains(&luma)
}

/// The scene for a frame of `width x height`: the wall, clutter when
/// asked, `main` (the person to be measured, perfusion owner 0) and
/// `others` (people beside and behind, owners 1, 2, ...). Nothing of the
/// others is drawn over the head at `clear_around` (where the measured
/// person stands, whether or not they are in this scene).
pub fn compose(
    width: u32,
    height: u32,
    main: Option<(&Photo, FacePlace)>,
    others: &[(Photo, FacePlace)],
    clear_around: Option<FacePlace>,
    with_clutter: bool,
    seed: u64,
) -> Scene {
    let n = width as usize * height as usize;
    let mut base = wall(width, height);
    if with_clutter {
        clutter(&mut base, width, height, seed);
    }
    let mut scene = Scene {
        base,
        blood: vec![0.0; n],
        owner: vec![0; n],
        faces: Vec::new(),
    };
    // The measured face is drawn first, and the people beside and behind it
    // after, never over its head: a portrait's backdrop is no wall, and
    // would hide everyone else.
    if let Some((photo, at)) = main {
        scene.faces.push(at);
        place(&mut scene, width, height, photo, at, 0, None);
    }
    for (k, (photo, at)) in others.iter().enumerate() {
        scene.faces.push(*at);
        place(
            &mut scene,
            width,
            height,
            photo,
            *at,
            (k + 1) as u8,
            clear_around,
        );
    }
    scene
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Share of perfused pixels (owner 0) in a part of the face box:
    /// `[x0, y0, x1, y1]` as shares of the box.
    fn perfused_share(scene: &Scene, width: u32, at: FacePlace, part: [f64; 4]) -> f64 {
        let (x0, y0) = (at.cx - at.w / 2.0, at.cy - at.w / 2.0);
        let (mut n, mut k) = (0.0, 0.0);
        for y in (y0 + part[1] * at.w) as usize..(y0 + part[3] * at.w) as usize {
            for x in (x0 + part[0] * at.w) as usize..(x0 + part[2] * at.w) as usize {
                let i = y * width as usize + x;
                n += 1.0;
                if scene.blood[i] > 0.5 && scene.owner[i] == 0 {
                    k += 1.0;
                }
            }
        }
        k / n
    }

    #[test]
    fn every_builtin_portrait_is_placed_where_asked_with_its_cheeks_and_forehead_perfused() {
        let (w, h) = (640, 480);
        let at = FacePlace {
            cx: 300.0,
            cy: 230.0,
            w: 200.0,
        };
        for (i, p) in PORTRAITS.iter().enumerate() {
            let photo = load(&PhotoSpec::Builtin(i)).unwrap();
            let [bx, by, bw, bh] = photo.face_box;
            assert!(bx + bw <= photo.rgb.width() as f64 && by + bh <= photo.rgb.height() as f64);
            let scene = compose(w, h, Some((&photo, at)), &[], None, false, 1);
            assert_eq!(scene.faces, vec![at]);
            // Cheeks and nose: skin, all of it carrying the pulse.
            let cheeks = perfused_share(&scene, w, at, [0.3, 0.45, 0.7, 0.65]);
            assert!(cheeks > 0.85, "{}: cheeks {cheeks:.2} perfused", p.name);
            // Outside the face: nothing pulses.
            assert!(
                scene.blood[..w as usize * 20].iter().all(|&b| b == 0.0),
                "{}",
                p.name
            );
        }
        // The astronaut's lit forehead, which the face's own colour rule
        // alone left partly without a pulse.
        let photo = load(&PhotoSpec::Builtin(0)).unwrap();
        let scene = compose(w, h, Some((&photo, at)), &[], None, false, 1);
        let forehead = perfused_share(&scene, w, at, [0.3, 0.05, 0.7, 0.2]);
        assert!(forehead > 0.9, "astronaut forehead {forehead:.2} perfused");
    }

    #[test]
    fn people_behind_never_cover_the_measured_head_and_carry_their_own_pulse() {
        let w = 640;
        let main = FacePlace {
            cx: 320.0,
            cy: 216.0,
            w: 128.0,
        };
        let behind = FacePlace {
            cx: 470.0,
            cy: 200.0,
            w: 77.0,
        };
        let a = load(&PhotoSpec::Builtin(4)).unwrap();
        let b = load(&PhotoSpec::Builtin(0)).unwrap();
        let scene = compose(
            w,
            480,
            Some((&a, main)),
            &[(b, behind)],
            Some(main),
            false,
            1,
        );
        assert!(perfused_share(&scene, w, main, [0.3, 0.45, 0.7, 0.65]) > 0.85);
        let theirs = {
            let (x0, y0) = ((behind.cx - behind.w / 4.0) as usize, (behind.cy) as usize);
            (0..10)
                .filter(|d| scene.owner[(y0 + d) * w as usize + x0 + d] == 1)
                .count()
        };
        assert!(theirs >= 8, "the face behind is theirs: {theirs} of 10");
    }
}
