//! Image math on one frame: skin-masked ROI means, face-box profiles,
//! grayscale downscaling for the detector, frame brightness.
//!
//! Owns: the skin rule, the ROI geometry inside a face box, and every
//! per-pixel loop of the vision stage (so that is where to look for cost).
//!
//! Skin rule: YCbCr (BT.601 full range, integer) with Cr in 133..=173 and Cb
//! in 77..=127 (Chai & Ngan 1999), luma in 30..=245 so clipped highlights and
//! deep shadows, which carry no pulse, are excluded, and every channel
//! below [`CLIPPED_LEVEL`] (a clipped channel cannot show the pulse's
//! change). Its edges are soft ([`skin_weight`]): a pixel near a bound
//! counts in part, so sensor noise cannot flip it in and out of the mean.
//!
//! ROI: forehead plus both cheeks, as fractions of the face box (SeetaFace
//! boxes run from mid-forehead to below the chin): these areas are
//! thin-skinned, well perfused and free of eyes, brows, nostrils and lips;
//! their pooled mean is what respiration and the skin checks use. The
//! pulse comes from eleven regions ([`REGIONS`]: those three, temples,
//! nose, under the eyes, jaw, chin), each reported on its own so the signal
//! stage can weight it by its own SNR. Regions never overlap, so their
//! noises are independent.

use super::FaceBox;
use crate::capture::frame::{PairPixels, PairRow, RgbPlanes};
use crate::capture::Frame;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// ROI rectangles as `(x0, y0, x1, y1)` fractions of the face box. Larger
/// cheeks and a nose region were tried for small faces: they add skin
/// pixels but also the shading of folds and the nose, which the breathing
/// head motion modulates at harmonics that reach the heart-rate band (SNR
/// at 45 bpm fell from 3.2-3.8 to 0.8-2.1 dB), so these three stay the
/// pooled ROI ([`RoiStats::mean_rgb`], which respiration and the skin
/// checks use). The other skin is measured region by region instead
/// ([`REGIONS`]), where the signal stage weights each by its own SNR.
pub const ROI_REGIONS: [(f64, f64, f64, f64); 3] = [
    (0.28, 0.02, 0.72, 0.16), // forehead
    (0.14, 0.50, 0.36, 0.72), // left cheek
    (0.64, 0.50, 0.86, 0.72), // right cheek
];

/// Number of skin regions measured one by one ([`REGIONS`]).
pub const REGION_COUNT: usize = 11;

/// Every skin area of the face as its own region, `(name, x0, y0, x1, y1)`
/// in fractions of the face box: the three pooled ROI regions first, then
/// the temples, between the eyes and down the nose, under the eyes, the
/// jaw and the chin. Each gives its own colour trace; the signal stage
/// projects each to a pulse and fuses them weighted by each region's SNR
/// (DistancePPG: Kumar, Veeraraghavan & Sabharwal, Biomed. Opt. Express
/// 6(5), 2015), so a region that hair, glasses, a beard or moving shading
/// spoils is outweighed instead of spoiling the rest, and the skin a small
/// or dark face has is all used.
pub const REGIONS: [(&str, f64, f64, f64, f64); REGION_COUNT] = [
    ("forehead", 0.28, 0.02, 0.72, 0.16),
    ("left cheek", 0.14, 0.50, 0.36, 0.72),
    ("right cheek", 0.64, 0.50, 0.86, 0.72),
    ("left temple", 0.10, 0.02, 0.28, 0.16),
    ("right temple", 0.72, 0.02, 0.90, 0.16),
    ("nose", 0.42, 0.28, 0.58, 0.56),
    ("left under-eye", 0.16, 0.40, 0.38, 0.50),
    ("right under-eye", 0.62, 0.40, 0.84, 0.50),
    ("left jaw", 0.14, 0.72, 0.34, 0.88),
    ("right jaw", 0.66, 0.72, 0.86, 0.88),
    ("chin", 0.38, 0.86, 0.62, 0.98),
];

/// Integer box inside the frame: `[x0, x1) x [y0, y1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRect {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

impl PixelRect {
    /// Rounds `b` to pixels and clips it to a `width x height` frame.
    pub fn clipped(b: &FaceBox, width: u32, height: u32) -> PixelRect {
        let c = |v: f64, max: u32| v.round().clamp(0.0, max as f64) as u32;
        PixelRect {
            x0: c(b.x, width),
            y0: c(b.y, height),
            x1: c(b.x + b.w, width),
            y1: c(b.y + b.h, height),
        }
    }

    pub fn width(&self) -> u32 {
        self.x1.saturating_sub(self.x0)
    }

    pub fn height(&self) -> u32 {
        self.y1.saturating_sub(self.y0)
    }

    pub fn is_empty(&self) -> bool {
        self.width() == 0 || self.height() == 0
    }
}

/// Width of the skin rule's soft edge, in 8-bit levels (see [`skin_weight`]).
pub const SKIN_RAMP: i32 = 16;

/// The skin rule on one pixel, as a weight in `0..=SKIN_RAMP` (sixteenths):
/// full weight well inside every bound, falling linearly to 0 across a
/// band of [`SKIN_RAMP`] levels centred on each bound.
///
/// Why soft: with a hard rule, every pixel near a bound flips in and out
/// of the mask with sensor noise, frame by frame, and the mean colour jumps
/// with the set of pixels averaged. The soft edge makes the mean a
/// continuous function of the pixels. Measured on the built-in portraits
/// (30 s scans, face 20 % of 640 px): on the two bright ones (many skin
/// pixels near the clipping bound) the SNR rose by 1.3-1.7 dB at full and
/// 80 % brightness (e.g. 0.2 to 1.7 dB); elsewhere it moved by less than
/// 0.3 dB.
///
/// Computed in 16-bit integers (every intermediate fits: `77R + 150G +
/// 29B` is at most 65,280 unsigned, the chroma sums stay within ±32,640),
/// so a vector register holds twice the pixels it would in 32 bits; the
/// tests check it against the 32-bit formula on all 2^24 colours.
#[inline(always)]
pub fn skin_weight(r: u8, g: u8, b: u8) -> i32 {
    let max = r.max(g).max(b) as i16;
    let y = ((77 * r as u16 + 150 * g as u16 + 29 * b as u16) >> 8) as i16;
    let (r, g, b) = (r as i16, g as i16, b as i16);
    let cr = ((128 * r - 107 * g - 21 * b) >> 8) + 128;
    let cb = ((-43 * r - 85 * g + 128 * b) >> 8) + 128;
    let margin = (y - 30)
        .min(245 - y)
        .min(cr - 133)
        .min(173 - cr)
        .min(cb - 77)
        .min(127 - cb)
        .min(CLIPPED_LEVEL as i16 - 1 - max);
    (margin + SKIN_RAMP as i16 / 2).clamp(0, SKIN_RAMP as i16) as i32
}

/// The skin rule's sums over a run of whole pixels given as planes:
/// `weighted` is `[Σk·R, Σk·G, Σk·B, Σk]` with `k` the [`skin_weight`] in
/// sixteenths; `clipped` and `dark` count the pixels with a channel at or
/// above [`CLIPPED_LEVEL`] / at or below [`NEAR_BLACK_LEVEL`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct RunSums {
    weighted: [u32; 4],
    clipped: u32,
    dark: u32,
}

/// The running sums of a run loop, one scalar each (so the vectoriser
/// keeps them in registers).
#[derive(Debug, Default, Clone, Copy)]
struct Acc {
    r: u32,
    g: u32,
    b: u32,
    k: u32,
    clipped: u32,
    dark: u32,
}

impl Acc {
    /// Adds one pixel (the per-pixel step of every run loop).
    #[inline(always)]
    fn add(&mut self, r: u8, g: u8, b: u8) {
        self.clipped += u32::from(r.max(g).max(b) >= CLIPPED_LEVEL);
        self.dark += u32::from(r.min(g).min(b) <= NEAR_BLACK_LEVEL);
        let k = skin_weight(r, g, b) as u32;
        self.r += k * r as u32;
        self.g += k * g as u32;
        self.b += k * b as u32;
        self.k += k;
    }

    fn sums(self) -> RunSums {
        RunSums {
            weighted: [self.r, self.g, self.b, self.k],
            clipped: self.clipped,
            dark: self.dark,
        }
    }
}

/// [`RunSums`] of pixels `(r[i], g[i], b[i])`: the inner loop of
/// [`roi_stats`] for RGB rows, in integers with no branch, so it runs on
/// vector lanes. (Sums fit: a pixel adds at most 16 × 255, so a run of up
/// to 1,000,000 pixels cannot overflow.)
fn run_sums(r: &[u8], g: &[u8], b: &[u8]) -> RunSums {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { run_sums_avx2(r, g, b) };
    }
    run_sums_any(r, g, b)
}

/// [`run_sums`] compiled for AVX2 (16 pixels a step where the x86-64
/// baseline, SSE2, takes 4).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn run_sums_avx2(r: &[u8], g: &[u8], b: &[u8]) -> RunSums {
    run_sums_any(r, g, b)
}

#[inline(always)]
fn run_sums_any(r: &[u8], g: &[u8], b: &[u8]) -> RunSums {
    let mut acc = Acc::default();
    for ((&r, &g), &b) in r.iter().zip(g).zip(b) {
        acc.add(r, g, b);
    }
    acc.sums()
}

/// [`RunSums`] of a run of Y'CbCr pixel pairs ([`Frame::pair_row`]),
/// converted to RGB as they are summed: the chroma terms once a pair, no
/// row of RGB written and read back. On x86-64 with AVX2 the run goes to
/// [`avx2`] (16-bit lanes, 16 pixels a step); the sums are the same as
/// converting first either way (the tests check).
fn pair_sums(row: &PairRow) -> Acc {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe {
            match row.pixels {
                PairPixels::Planar { luma, cb, cr } => avx2::planar(&row.ycc, luma, cb, cr),
                PairPixels::Yuyv(quads) => avx2::yuyv(&row.ycc, quads),
            }
        };
    }
    pair_sums_any(row)
}

#[inline(always)]
fn pair_sums_any(row: &PairRow) -> Acc {
    let ycc = row.ycc;
    let mut acc = Acc::default();
    // (One pair a step, not one pixel: a stride-2 walk over luma does not
    // run on vector lanes, a pair of adjacent loads does.)
    match row.pixels {
        PairPixels::Planar { luma, cb, cr } => {
            for ((y, &cb), &cr) in luma.chunks_exact(2).zip(cb).zip(cr) {
                let c = ycc.chroma(cb, cr);
                let [r, g, b] = ycc.rgb_with(y[0], c);
                acc.add(r, g, b);
                let [r, g, b] = ycc.rgb_with(y[1], c);
                acc.add(r, g, b);
            }
        }
        PairPixels::Yuyv(quads) => {
            for q in quads.chunks_exact(4) {
                let c = ycc.chroma(q[1], q[3]);
                let [r, g, b] = ycc.rgb_with(q[0], c);
                acc.add(r, g, b);
                let [r, g, b] = ycc.rgb_with(q[2], c);
                acc.add(r, g, b);
            }
        }
    }
    acc
}

/// One region row's pixels, as [`roi_stats_with`] reads them.
enum RowPixels<'a> {
    /// Pixel `off + i` of a run of chroma pairs is the row's pixel `i`
    /// (the run starts at the even pixel at or before the row's first).
    Pairs(PairRow<'a>, usize),
    /// The row converted to RGB planes.
    Planes(&'a RgbPlanes),
}

impl RowPixels<'_> {
    /// RGB of the row's pixel `i`.
    #[inline(always)]
    fn rgb(&self, i: usize) -> [u8; 3] {
        match self {
            RowPixels::Pairs(run, off) => run.rgb(off + i),
            RowPixels::Planes(p) => [p.r[i], p.g[i], p.b[i]],
        }
    }

    /// [`RunSums`] of the row's pixels `lo..hi`: pair by pair
    /// ([`pair_sums`]) where the frame pairs chroma, else [`run_sums`].
    fn sums(&self, lo: usize, hi: usize) -> RunSums {
        if lo >= hi {
            return RunSums::default();
        }
        match self {
            RowPixels::Planes(p) => run_sums(&p.r[lo..hi], &p.g[lo..hi], &p.b[lo..hi]),
            RowPixels::Pairs(run, off) => {
                // The whole pairs inside (`a <= b` since `s < e`); an odd
                // end pixel shares its chroma with one outside and is
                // added alone.
                let (s, e) = (off + lo, off + hi);
                let (a, b) = (s.next_multiple_of(2), e & !1);
                let mut acc = pair_sums(&run.sub(a / 2, b / 2));
                for (i, lone) in [(s, s < a), (b, b < e)] {
                    if lone {
                        let [r, g, b] = run.rgb(i);
                        acc.add(r, g, b);
                    }
                }
                acc.sums()
            }
        }
    }
}

/// The skin rule as a yes/no: at least half weight.
#[inline]
pub fn is_skin(r: u8, g: u8, b: u8) -> bool {
    2 * skin_weight(r, g, b) >= SKIN_RAMP
}

/// A channel at or above this level is clipped (over-exposed).
pub const CLIPPED_LEVEL: u8 = 250;

/// A channel at or below this level is near black (under-exposed): one
/// 8-bit step is 8 % of it or more, twenty times a typical pulse, so the
/// pulse there is lost in quantisation.
pub const NEAR_BLACK_LEVEL: u8 = 12;

/// Mean colour of the skin pixels in the ROI of a face box.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RoiStats {
    pub mean_rgb: [f64; 3],
    pub skin_pixels: u32,
    pub roi_pixels: u32,
    /// ROI pixels with any channel at or above [`CLIPPED_LEVEL`].
    pub clipped_pixels: u32,
    /// ROI pixels with any channel at or below [`NEAR_BLACK_LEVEL`].
    pub dark_pixels: u32,
    /// Each of [`REGIONS`] on its own.
    pub regions: [RegionMean; REGION_COUNT],
}

/// Scratch buffers of the per-frame pixel loops, kept by the caller so a
/// warm frame allocates nothing.
#[derive(Debug, Default)]
pub struct Scratch {
    col_weight: Vec<f64>,
    row: Vec<u8>,
    planes: RgbPlanes,
    col_sum: Vec<u32>,
    luma: Vec<u8>,
}

/// Skin-masked mean colour of one region, and its skin pixels (weighted
/// by the soft skin rule and the sub-pixel edges).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RegionMean {
    pub mean_rgb: [f64; 3],
    pub skin: f64,
}

/// Coverage of pixel `i` (spanning `[i, i + 1)`) by the interval `[lo, hi)`.
#[inline]
fn coverage(i: u32, lo: f64, hi: f64) -> f64 {
    let a = (i as f64).max(lo);
    let b = (i as f64 + 1.0).min(hi);
    (b - a).max(0.0)
}

/// Skin-masked mean RGB over the forehead and cheek regions of `face`
/// (pooled), and over each of [`REGIONS`] on its own.
///
/// Region edges are sub-pixel: an edge pixel counts with the fraction of it
/// that the region covers, so the mean is a continuous function of the box
/// position. (With whole pixels, a box tracked at sub-pixel precision would
/// snap by a pixel now and then, and each snap is a broadband step that
/// lands in the heart-rate band.)
pub fn roi_stats(frame: &Frame, face: &FaceBox) -> RoiStats {
    roi_stats_with(frame, face, &mut Scratch::default())
}

/// [`roi_stats`] with the caller's scratch, so the per-frame path allocates
/// nothing once it is warm. Reads RGB rows of the regions only (a Y'CbCr
/// frame converts just those pixels).
pub fn roi_stats_with(frame: &Frame, face: &FaceBox, scratch: &mut Scratch) -> RoiStats {
    let Scratch {
        col_weight, planes, ..
    } = scratch;
    let mut out = RoiStats::default();
    let mut sum = [0f64; 3];
    let mut skin = 0f64;
    let mut total = 0f64;
    let mut clipped = 0f64;
    let mut dark = 0f64;
    let (fw, fh) = (frame.width as f64, frame.height as f64);
    for (k, &(_, fx0, fy0, fx1, fy1)) in REGIONS.iter().enumerate() {
        let pooled = k < ROI_REGIONS.len();
        let x0 = (face.x + fx0 * face.w).clamp(0.0, fw);
        let x1 = (face.x + fx1 * face.w).clamp(0.0, fw);
        let y0 = (face.y + fy0 * face.h).clamp(0.0, fh);
        let y1 = (face.y + fy1 * face.h).clamp(0.0, fh);
        if x1 <= x0 || y1 <= y0 {
            continue;
        }
        let (px0, px1) = (x0.floor() as u32, (x1.ceil() as u32).min(frame.width));
        let (py0, py1) = (y0.floor() as u32, (y1.ceil() as u32).min(frame.height));
        col_weight.clear();
        col_weight.extend((px0..px1).map(|x| coverage(x, x0, x1)));
        let mut region_sum = [0f64; 3];
        let mut region_skin = 0f64;
        // Columns wholly inside the region sum in integers; only the
        // partly covered edge columns need fractional weights.
        let inner_lo = col_weight.iter().position(|&w| w == 1.0).unwrap_or(0);
        let inner_hi = col_weight
            .iter()
            .rposition(|&w| w == 1.0)
            .map_or(inner_lo, |i| i + 1);
        // Pair runs start and end on even pixels; at the right edge of an
        // odd-width frame the planes take the row instead.
        let (ax0, ax1) = (px0 & !1, (px1 + 1) & !1);
        for y in py0..py1 {
            let wy = coverage(y, y0, y1);
            let px = match (ax1 <= frame.width)
                .then(|| frame.pair_row(y, ax0, ax1))
                .flatten()
            {
                Some(run) => RowPixels::Pairs(run, (px0 - ax0) as usize),
                None => {
                    frame.rgb_planes_row(y, px0, px1, planes);
                    RowPixels::Planes(planes)
                }
            };
            let mut row_sum = [0f64; 3];
            let mut row_skin = 0f64;
            let mut row_clipped = 0f64;
            let mut row_dark = 0f64;
            for i in (0..inner_lo).chain(inner_hi..col_weight.len()) {
                let (p, wx) = (px.rgb(i), col_weight[i]);
                if pooled && p[0].max(p[1]).max(p[2]) >= CLIPPED_LEVEL {
                    row_clipped += wx;
                }
                if pooled && p[0].min(p[1]).min(p[2]) <= NEAR_BLACK_LEVEL {
                    row_dark += wx;
                }
                let k = skin_weight(p[0], p[1], p[2]);
                if k > 0 {
                    let w = wx * k as f64 / SKIN_RAMP as f64;
                    row_sum[0] += w * p[0] as f64;
                    row_sum[1] += w * p[1] as f64;
                    row_sum[2] += w * p[2] as f64;
                    row_skin += w;
                }
            }
            let RunSums {
                weighted: inner,
                clipped: inner_clipped,
                dark: inner_dark,
            } = px.sums(inner_lo, inner_hi);
            let ramp = SKIN_RAMP as f64;
            for c in 0..3 {
                row_sum[c] += inner[c] as f64 / ramp;
            }
            row_skin += inner[3] as f64 / ramp;
            if pooled {
                row_clipped += inner_clipped as f64;
                row_dark += inner_dark as f64;
            }
            for c in 0..3 {
                region_sum[c] += wy * row_sum[c];
            }
            region_skin += wy * row_skin;
            if pooled {
                clipped += wy * row_clipped;
                dark += wy * row_dark;
                total += wy * (x1 - x0);
            }
        }
        if pooled {
            for c in 0..3 {
                sum[c] += region_sum[c];
            }
            skin += region_skin;
        }
        if region_skin > 0.0 {
            out.regions[k] = RegionMean {
                mean_rgb: region_sum.map(|s| s / region_skin),
                skin: region_skin,
            };
        }
    }
    let mean = |s: f64| if skin > 0.0 { s / skin } else { 0.0 };
    out.mean_rgb = [mean(sum[0]), mean(sum[1]), mean(sum[2])];
    out.skin_pixels = skin.round() as u32;
    out.roi_pixels = total.round() as u32;
    out.clipped_pixels = clipped.round() as u32;
    out.dark_pixels = dark.round() as u32;
    out
}

/// Row and column mean-luma profiles of `rect` (one pass), and its mean luma.
pub fn profiles(
    frame: &Frame,
    rect: &PixelRect,
    rows: &mut Vec<f64>,
    cols: &mut Vec<f64>,
    scratch: &mut Scratch,
) -> f64 {
    rows.clear();
    cols.clear();
    if rect.is_empty() {
        return 0.0;
    }
    let (w, h) = (rect.width() as usize, rect.height() as usize);
    let Scratch { row, col_sum, .. } = scratch;
    col_sum.clear();
    col_sum.resize(w, 0);
    let mut total = 0u64;
    for y in rect.y0..rect.y1 {
        let row_sum = frame.add_luma_row(y, rect.x0, rect.x1, col_sum, row);
        total += row_sum as u64;
        rows.push(row_sum as f64 / w as f64);
    }
    cols.extend(col_sum.iter().map(|&s| s as f64 / h as f64));
    total as f64 / (w * h) as f64
}

/// Mean luma of the frame from a sparse grid (every 8th pixel each way).
pub fn frame_luma(frame: &Frame) -> f64 {
    let (mut sum, mut n) = (0u64, 0u64);
    for y in (0..frame.height).step_by(8) {
        for x in (0..frame.width).step_by(8) {
            sum += frame.luma(x, y) as u64;
            n += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        sum as f64 / n as f64
    }
}

/// Area-averaged grayscale of `rect` scaled to `out_w x out_h`, into `out`.
/// Each output row sums its block of luma rows column by column, then
/// each output pixel its block of those column sums.
pub fn downscale_gray(
    frame: &Frame,
    rect: &PixelRect,
    out_w: u32,
    out_h: u32,
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
) {
    out.clear();
    let (rw, rh) = (rect.width() as usize, rect.height() as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    if rw == 0 || rh == 0 || ow == 0 || oh == 0 {
        return;
    }
    out.reserve(ow * oh);
    let Scratch { row, col_sum, .. } = scratch;
    for oy in 0..oh {
        let sy0 = rect.y0 as usize + oy * rh / oh;
        let sy1 = (rect.y0 as usize + ((oy + 1) * rh).div_ceil(oh)).max(sy0 + 1);
        col_sum.clear();
        col_sum.resize(rw, 0);
        for y in sy0..sy1 {
            frame.add_luma_row(y as u32, rect.x0, rect.x1, col_sum, row);
        }
        for ox in 0..ow {
            let sx0 = ox * rw / ow;
            let sx1 = ((ox + 1) * rw).div_ceil(ow).max(sx0 + 1);
            let sum: u32 = col_sum[sx0..sx1].iter().sum();
            out.push((sum / ((sy1 - sy0) * (sx1 - sx0)) as u32) as u8);
        }
    }
}

/// Grayscale of `rect` at `out_w x out_h`: area-averaged when shrinking
/// ([`downscale_gray`]), bilinear when enlarging (the search upscales the
/// frame for the smallest faces, and the detector needs smooth edges, not
/// blocks).
pub fn resample_gray(
    frame: &Frame,
    rect: &PixelRect,
    out_w: u32,
    out_h: u32,
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
) {
    let (rw, rh) = (rect.width() as usize, rect.height() as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    if ow <= rw && oh <= rh {
        return downscale_gray(frame, rect, out_w, out_h, out, scratch);
    }
    out.clear();
    if rw == 0 || rh == 0 || ow == 0 || oh == 0 {
        return;
    }
    let mut luma_buf = std::mem::take(&mut scratch.luma);
    downscale_gray(
        frame,
        rect,
        rect.width(),
        rect.height(),
        &mut luma_buf,
        scratch,
    );
    out.reserve(ow * oh);
    let (sx, sy) = (rw as f32 / ow as f32, rh as f32 / oh as f32);
    for oy in 0..oh {
        let fy = ((oy as f32 + 0.5) * sy - 0.5).clamp(0.0, (rh - 1) as f32);
        let y0 = fy as usize;
        let y1 = (y0 + 1).min(rh - 1);
        let wy = fy - y0 as f32;
        let (r0, r1) = (
            &luma_buf[y0 * rw..(y0 + 1) * rw],
            &luma_buf[y1 * rw..(y1 + 1) * rw],
        );
        for ox in 0..ow {
            let fx = ((ox as f32 + 0.5) * sx - 0.5).clamp(0.0, (rw - 1) as f32);
            let x0 = fx as usize;
            let x1 = (x0 + 1).min(rw - 1);
            let wx = fx - x0 as f32;
            let top = r0[x0] as f32 * (1.0 - wx) + r0[x1] as f32 * wx;
            let bottom = r1[x0] as f32 * (1.0 - wx) + r1[x1] as f32 * wx;
            out.push((top * (1.0 - wy) + bottom * wy + 0.5) as u8);
        }
    }
    scratch.luma = luma_buf;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{Chroma, Layout};

    fn frame(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Frame {
        let mut fr = Frame::default();
        fr.reshape_rgb(w, h);
        for y in 0..h {
            for x in 0..w {
                let i = ((y * w + x) * 3) as usize;
                fr.rgb_mut()[i..i + 3].copy_from_slice(&f(x, y));
            }
        }
        fr
    }

    #[test]
    fn the_skin_rule_accepts_skin_tones_and_rejects_other_colours() {
        for skin in [
            [224, 172, 140],
            [198, 134, 66],
            [141, 85, 36],
            [245, 214, 170],
            [120, 70, 50],
        ] {
            assert!(is_skin(skin[0], skin[1], skin[2]), "{skin:?}");
        }
        for other in [
            [0, 0, 0],
            [255, 255, 255],
            [40, 90, 200],
            [30, 160, 60],
            [128, 128, 128],
            [250, 10, 10],
            // Skin-coloured but clipped in red: no pulse survives.
            [255, 219, 172],
        ] {
            assert!(!is_skin(other[0], other[1], other[2]), "{other:?}");
        }
    }

    #[test]
    fn the_16_bit_skin_rule_equals_the_32_bit_formula_on_every_colour() {
        let reference = |r: u8, g: u8, b: u8| {
            let max = r.max(g).max(b) as i32;
            let (r, g, b) = (r as i32, g as i32, b as i32);
            let y = (77 * r + 150 * g + 29 * b) >> 8;
            let cr = ((128 * r - 107 * g - 21 * b) >> 8) + 128;
            let cb = ((-43 * r - 85 * g + 128 * b) >> 8) + 128;
            let margin = (y - 30)
                .min(245 - y)
                .min(cr - 133)
                .min(173 - cr)
                .min(cb - 77)
                .min(127 - cb)
                .min(CLIPPED_LEVEL as i32 - 1 - max);
            (margin + SKIN_RAMP / 2).clamp(0, SKIN_RAMP)
        };
        let mut skin = 0u32;
        for c in 0..1u32 << 24 {
            let [r, g, b] = [(c >> 16) as u8, (c >> 8) as u8, c as u8];
            let k = skin_weight(r, g, b);
            assert_eq!(k, reference(r, g, b), "({r}, {g}, {b})");
            skin += u32::from(k > 0);
        }
        // Not vacuous: the rule takes a real share of the colour cube.
        assert!(skin > 100_000 && skin < 4_000_000, "{skin} colours");
    }

    #[test]
    fn run_sums_add_up_what_the_per_pixel_rule_says() {
        let mut x = 12345u32;
        let mut next = || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        };
        for n in [0usize, 1, 7, 16, 33, 1000] {
            let px: Vec<[u8; 3]> = (0..n)
                .map(|i| match i % 3 {
                    // Skin, a random colour, an extreme one.
                    0 => [200 - (i % 40) as u8, 150, 120],
                    1 => [next(), next(), next()],
                    _ => [255, 252, (i % 13) as u8],
                })
                .collect();
            let plane = |c: usize| px.iter().map(|p| p[c]).collect::<Vec<u8>>();
            let got = run_sums(&plane(0), &plane(1), &plane(2));
            let mut want = RunSums::default();
            for p in &px {
                let k = skin_weight(p[0], p[1], p[2]) as u32;
                for (sum, &v) in want.weighted.iter_mut().zip(p) {
                    *sum += k * v as u32;
                }
                want.weighted[3] += k;
                want.clipped += u32::from(*p.iter().max().unwrap() >= CLIPPED_LEVEL);
                want.dark += u32::from(*p.iter().min().unwrap() <= NEAR_BLACK_LEVEL);
            }
            assert_eq!(got, want, "{n} pixels");
            if n >= 33 {
                assert!(got.weighted[3] > 0 && got.clipped > 0 && got.dark > 0);
            }
        }
    }

    /// Frames of every layout whose chroma comes in pairs, filled from a
    /// seeded generator: random bytes (every clamp and edge of the skin
    /// rule is hit) or, with `skin`, skin-like Y'CbCr with noise.
    fn pair_frames(w: u32, h: u32, skin: bool) -> Vec<Frame> {
        let mut layouts = vec![Layout::Yuyv];
        for chroma in [Chroma::C420, Chroma::C422] {
            for full_range in [false, true] {
                layouts.push(Layout::Planar { chroma, full_range });
            }
        }
        let mut x = 99u32;
        layouts
            .into_iter()
            .map(|layout| {
                let mut fr = Frame::default();
                fr.reshape(w, h, layout);
                for b in fr.data_mut() {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    let r = (x >> 16) as u8;
                    // Skin: Y' 100..164, Cb 100..116, Cr 145..161 (a YUYV
                    // byte is either; the middle band suits both).
                    *b = if skin { 105 + r % 48 } else { r };
                }
                fr
            })
            .collect()
    }

    #[test]
    fn pair_sums_equal_converting_then_summing_for_every_run_length_and_layout() {
        let frames = pair_frames(160, 3, false);
        let mut planes = RgbPlanes::default();
        let mut checked = 0;
        for fr in &frames {
            for y in 0..fr.height {
                // Around the vector step (16 pixels) and its padded tail.
                for (x0, x1) in [
                    (0, 0),
                    (0, 2),
                    (2, 16),
                    (0, 30),
                    (4, 36),
                    (0, 160),
                    (10, 44),
                ] {
                    let run = fr.pair_row(y, x0, x1).expect("pairs");
                    fr.rgb_planes_row(y, x0, x1, &mut planes);
                    let want = run_sums(&planes.r, &planes.g, &planes.b);
                    assert_eq!(pair_sums(&run).sums(), want, "{:?} {x0}..{x1}", fr.layout());
                    assert_eq!(pair_sums_any(&run).sums(), want, "{:?}", fr.layout());
                    checked += u32::from(want.weighted[3] > 0 && want.clipped > 0 && want.dark > 0);
                }
            }
        }
        // Not vacuous: random bytes give skin, clipped and dark pixels.
        assert!(checked > 20, "{checked}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_paths_padding_pixel_adds_nothing_in_either_range() {
        for full_range in [false, true] {
            let mut fr = Frame::default();
            let layout = Layout::Planar {
                chroma: Chroma::C422,
                full_range,
            };
            fr.reshape(2, 1, layout);
            let (y, cb, cr) = avx2::PAD;
            fr.data_mut().copy_from_slice(&[y, y, cb, cr]);
            let mut acc = Acc::default();
            let [r, g, b] = fr.pixel(0, 0);
            acc.add(r, g, b);
            assert_eq!(acc.sums(), RunSums::default(), "full range {full_range}");
        }
    }

    #[test]
    fn the_roi_of_a_ycc_frame_is_the_roi_of_its_rgb_conversion() {
        // Odd and even box edges, sub-pixel boxes, an odd-width frame
        // (whose last column has no pair) and a box past the frame's edge.
        for (w, h) in [(96u32, 80u32), (97, 81)] {
            for fr in pair_frames(w, h, true) {
                let rgb = Frame::from_rgb(w, h, fr.to_rgb());
                for face in [
                    FaceBox {
                        x: 10.0,
                        y: 8.0,
                        w: 60.0,
                        h: 60.0,
                    },
                    FaceBox {
                        x: 11.3,
                        y: 7.6,
                        w: 57.9,
                        h: 61.2,
                    },
                    FaceBox {
                        x: 50.5,
                        y: 30.25,
                        w: 60.0,
                        h: 60.0,
                    },
                    FaceBox {
                        x: 37.0,
                        y: 20.0,
                        w: 3.0,
                        h: 3.0,
                    },
                ] {
                    let (a, b) = (
                        roi_stats_with(&fr, &face, &mut Scratch::default()),
                        roi_stats(&rgb, &face),
                    );
                    assert_eq!(a, b, "{:?} {w}x{h} {face:?}", fr.layout());
                    assert!(face.w < 10.0 || a.skin_pixels > 20, "{a:?}");
                }
            }
        }
    }

    #[test]
    fn the_pooled_roi_is_the_first_regions_and_no_two_regions_overlap() {
        for (k, r) in ROI_REGIONS.iter().enumerate() {
            let (_, x0, y0, x1, y1) = REGIONS[k];
            assert_eq!(*r, (x0, y0, x1, y1));
        }
        for (i, a) in REGIONS.iter().enumerate() {
            assert!(a.1 < a.3 && a.2 < a.4 && a.1 >= 0.0 && a.3 <= 1.0 && a.4 <= 1.0);
            for b in &REGIONS[i + 1..] {
                let apart = a.3 <= b.1 || b.3 <= a.1 || a.4 <= b.2 || b.4 <= a.2;
                assert!(apart, "{} overlaps {}", a.0, b.0);
            }
        }
    }

    #[test]
    fn near_black_and_clipped_roi_pixels_are_counted_apart_from_skin() {
        // Top half: dark skin in dim light (blue at 9, near black); bottom
        // half: lit skin. Only the top counts as near black.
        let fr = frame(
            100,
            100,
            |_, y| if y < 50 { [60, 30, 9] } else { [200, 150, 120] },
        );
        let face = FaceBox {
            x: 10.0,
            y: 10.0,
            w: 80.0,
            h: 80.0,
        };
        let s = roi_stats(&fr, &face);
        assert!(s.dark_pixels > 0 && s.dark_pixels < s.roi_pixels, "{s:?}");
        assert_eq!(s.clipped_pixels, 0);
        let lit = roi_stats(&frame(100, 100, |_, _| [200, 150, 120]), &face);
        assert_eq!(lit.dark_pixels, 0);
        let black = roi_stats(&frame(100, 100, |_, _| [12, 12, 12]), &face);
        assert_eq!(black.dark_pixels, black.roi_pixels);
    }

    #[test]
    fn the_pooled_roi_and_each_region_count_only_skin_pixels() {
        // Skin on the left half only: the cheeks straddle both halves; the
        // left regions see skin, the right ones none.
        let fr = frame(100, 100, |x, y| {
            if x < 50 {
                [200, 150, 120 + (y / 50) as u8]
            } else {
                [20, 40, 200]
            }
        });
        let face = FaceBox {
            x: 0.0,
            y: 0.0,
            w: 100.0,
            h: 100.0,
        };
        let s = roi_stats(&fr, &face);
        assert!((s.mean_rgb[0] - 200.0).abs() < 1e-9, "{:?}", s.mean_rgb);
        assert!((s.mean_rgb[1] - 150.0).abs() < 1e-9, "{:?}", s.mean_rgb);
        assert!(s.skin_pixels > 0 && s.skin_pixels < s.roi_pixels);
        for (k, &(name, x0, _, x1, _)) in REGIONS.iter().enumerate() {
            let r = s.regions[k];
            if x1 <= 0.5 {
                assert!(
                    (r.skin - (x1 - x0) * 100.0 * (REGIONS[k].4 - REGIONS[k].2) * 100.0).abs()
                        < 1e-6,
                    "{name}: {r:?}"
                );
                assert!((r.mean_rgb[0] - 200.0).abs() < 1e-9, "{name}: {r:?}");
                assert!((r.mean_rgb[1] - 150.0).abs() < 1e-9, "{name}: {r:?}");
            } else if x0 >= 0.5 {
                assert_eq!(r, RegionMean::default(), "{name}");
            }
        }
        // The chin straddles the middle: only its skin half counts.
        let chin = s.regions[10].mean_rgb;
        assert!((chin[2] - 121.0).abs() < 1e-9, "{chin:?}");
    }

    #[test]
    fn a_box_outside_the_frame_has_no_pixels_not_a_panic() {
        let fr = frame(10, 10, |_, _| [200, 150, 120]);
        let face = FaceBox {
            x: 50.0,
            y: -80.0,
            w: 30.0,
            h: 30.0,
        };
        assert_eq!(roi_stats(&fr, &face).skin_pixels, 0);
        let r = PixelRect::clipped(&face, 10, 10);
        assert!(r.is_empty());
        let (mut rows, mut cols) = (Vec::new(), Vec::new());
        assert_eq!(
            profiles(&fr, &r, &mut rows, &mut cols, &mut Scratch::default()),
            0.0
        );
    }

    #[test]
    fn a_sub_pixel_box_move_changes_the_mean_continuously() {
        // A vertical colour gradient: moving the box by 0.1 px must move the mean a little, not jump.
        let fr = frame(200, 200, |_, y| [150 + (y / 4) as u8, 110, 90]);
        let at = |x: f64| {
            let face = FaceBox {
                x,
                y: x,
                w: 120.0,
                h: 120.0,
            };
            roi_stats(&fr, &face).mean_rgb[0]
        };
        let steps: Vec<f64> = (0..20)
            .map(|i| at(30.0 + 0.1 * (i + 1) as f64) - at(30.0 + 0.1 * i as f64))
            .collect();
        let max = steps.iter().cloned().fold(0.0, f64::max);
        let mean = steps.iter().sum::<f64>() / steps.len() as f64;
        assert!(max < 3.0 * mean.abs() + 1e-9, "steps {steps:?}");
    }

    #[test]
    fn downscaling_averages_areas() {
        let fr = frame(4, 2, |x, _| if x < 2 { [0, 0, 0] } else { [200, 200, 200] });
        let mut out = Vec::new();
        let all = PixelRect {
            x0: 0,
            y0: 0,
            x1: 4,
            y1: 2,
        };
        downscale_gray(&fr, &all, 2, 1, &mut out, &mut Scratch::default());
        assert_eq!(out, vec![0, 200]);
        downscale_gray(&fr, &all, 1, 1, &mut out, &mut Scratch::default());
        assert_eq!(out, vec![100]);
    }

    #[test]
    fn upscaling_interpolates_between_pixels() {
        let fr = frame(
            2,
            1,
            |x, _| if x == 0 { [0, 0, 0] } else { [200, 200, 200] },
        );
        let all = PixelRect {
            x0: 0,
            y0: 0,
            x1: 2,
            y1: 1,
        };
        let (mut scratch, mut out) = (Scratch::default(), Vec::new());
        resample_gray(&fr, &all, 4, 2, &mut out, &mut scratch);
        assert_eq!(out, vec![0, 50, 150, 200, 0, 50, 150, 200]);
        // Shrinking is the area average.
        resample_gray(&fr, &all, 1, 1, &mut out, &mut scratch);
        assert_eq!(out, vec![100]);
    }

    #[test]
    fn profiles_and_frame_luma_measure_brightness() {
        let fr = frame(
            16,
            16,
            |_, y| if y < 8 { [40, 40, 40] } else { [120, 120, 120] },
        );
        let r = PixelRect {
            x0: 0,
            y0: 0,
            x1: 16,
            y1: 16,
        };
        let (mut rows, mut cols) = (Vec::new(), Vec::new());
        assert_eq!(
            profiles(&fr, &r, &mut rows, &mut cols, &mut Scratch::default()),
            80.0
        );
        assert_eq!(rows[0], 40.0);
        assert_eq!(rows[15], 120.0);
        assert!(cols.iter().all(|&c| c == 80.0));
        assert_eq!(frame_luma(&fr), 80.0);
    }
}
