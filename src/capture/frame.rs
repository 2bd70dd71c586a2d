//! One video frame, kept in the layout its source delivered, and the ways
//! the vision stage reads it: luma rows, RGB rows, and runs of Y'CbCr
//! pixel pairs that share chroma ([`Frame::pair_row`], for loops that
//! convert as they sum).
//!
//! Owns: [`Frame`], its [`Layout`]s, and every Y'CbCr -> RGB conversion of
//! the capture stage ([`ycc_to_rgb`], BT.601, limited or full range).
//!
//! Why native layouts: converting every pixel of every frame to RGB cost
//! more than all of vision (a 640x480 frame is 307,200 conversions, the
//! skin regions of a face are a few thousand pixels). Detection and
//! tracking need only luma, which a Y'CbCr source already has as its Y
//! plane; colour is needed only inside the skin regions, and converting
//! just those pixels gives exactly the bytes a whole-frame conversion would.
//!
//! Invariants:
//! - `data` holds exactly [`Layout::bytes`] for `width x height`.
//! - [`Frame::rgb_row`] of a Y'CbCr frame is byte for byte the whole-frame
//!   conversion's row: the skin means, and so the pulse, do not depend on
//!   where the conversion happens.
//! - [`Frame::luma_row`] is the frame's own brightness measure, 0..=255:
//!   `(R + 2G + B) / 4` for RGB, Y' (stretched to full range when the
//!   source is limited range) for Y'CbCr. The two agree on grey and differ
//!   by a few levels on saturated colours (BT.601 weighs red 0.30 and blue
//!   0.11 where the RGB rule weighs both 0.25: skin of RGB (200, 150, 120)
//!   is 155 one way and 161 the other). Detection and tracking compare
//!   luma with itself (edges, profile shifts), never across layouts.
//! - Reading a row allocates nothing once the caller's scratch is warm.

/// Chroma subsampling of a planar Y'CbCr frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chroma {
    /// 4:2:0: one Cb and one Cr per 2x2 pixels.
    C420,
    /// 4:2:2: one Cb and one Cr per 2x1 pixels.
    C422,
    /// 4:4:4: full-resolution chroma.
    C444,
    /// Luma only (grey).
    Mono,
}

impl Chroma {
    /// Width and height of one chroma plane of a `w x h` frame.
    pub fn plane(self, w: usize, h: usize) -> (usize, usize) {
        match self {
            Chroma::C420 => (w.div_ceil(2), h.div_ceil(2)),
            Chroma::C422 => (w.div_ceil(2), h),
            Chroma::C444 => (w, h),
            Chroma::Mono => (0, 0),
        }
    }

    /// Chroma row of luma row `y`.
    #[inline]
    fn row(self, y: usize) -> usize {
        match self {
            Chroma::C420 => y / 2,
            _ => y,
        }
    }

    /// log2 of the horizontal subsampling.
    #[inline]
    fn x_shift(self) -> u32 {
        match self {
            Chroma::C444 | Chroma::Mono => 0,
            Chroma::C420 | Chroma::C422 => 1,
        }
    }
}

/// How a frame's bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Packed 8-bit RGB, 3 bytes a pixel (the generator, PNG/JPEG stills,
    /// MJPEG and RGB cameras).
    #[default]
    Rgb,
    /// Planar 8-bit Y'CbCr (YUV4MPEG2): the Y plane, then the Cb and Cr
    /// planes at the subsampling of `chroma`.
    Planar { chroma: Chroma, full_range: bool },
    /// Packed 4:2:2 `Y0 Cb Y1 Cr` (V4L2 YUYV), limited range.
    Yuyv,
}

impl Layout {
    /// Bytes of one `width x height` frame.
    pub fn bytes(self, width: u32, height: u32) -> usize {
        let (w, h) = (width as usize, height as usize);
        match self {
            Layout::Rgb => w * h * 3,
            Layout::Planar { chroma, .. } => {
                let (cw, ch) = chroma.plane(w, h);
                w * h + 2 * cw * ch
            }
            Layout::Yuyv => w.div_ceil(2) * 4 * h,
        }
    }

    /// Short name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Rgb => "rgb24",
            Layout::Planar {
                chroma: Chroma::C420,
                ..
            } => "yuv420p",
            Layout::Planar {
                chroma: Chroma::C422,
                ..
            } => "yuv422p",
            Layout::Planar {
                chroma: Chroma::C444,
                ..
            } => "yuv444p",
            Layout::Planar {
                chroma: Chroma::Mono,
                ..
            } => "gray",
            Layout::Yuyv => "yuyv422",
        }
    }
}

/// Fixed-point (16.16) BT.601 Y'CbCr -> RGB coefficients for one range.
///
/// A conversion is a luma term plus a chroma term per channel; the chroma
/// term ([`Ycc::chroma`]) can be computed once for the pixels that share a
/// chroma sample and finished per pixel with [`Ycc::rgb_with`], which gives
/// the same bytes as converting each pixel whole (integer arithmetic, no
/// step is rounded twice).
///
/// The fields are public for vector code that does the same arithmetic
/// in its own lanes (`vision::roi`); `ys` is 65536 plus a fraction below
/// 32768, so that fraction fits a 16-bit lane.
#[derive(Debug, Clone, Copy)]
pub struct Ycc {
    /// Luma scale and offset: `(Y - yo) * ys`.
    pub ys: i32,
    pub yo: i32,
    /// Cr's share of R, Cb's and Cr's of G (subtracted), Cb's of B.
    pub rv: i32,
    pub gu: i32,
    pub gv: i32,
    pub bu: i32,
}

impl Ycc {
    const fn new(full_range: bool) -> Ycc {
        // (coefficient x chroma scale x 65536), rounded; chroma scale is 1
        // for full range and 255/224 for limited range.
        if full_range {
            Ycc {
                ys: 65536,
                yo: 0,
                rv: 91881,
                gu: 22553,
                gv: 46802,
                bu: 116130,
            }
        } else {
            Ycc {
                ys: 76309,
                yo: 16,
                rv: 104597,
                gu: 25675,
                gv: 53279,
                bu: 132201,
            }
        }
    }

    #[inline(always)]
    fn rgb(&self, y: u8, cb: u8, cr: u8) -> [u8; 3] {
        self.rgb_with(y, self.chroma(cb, cr))
    }

    /// The chroma terms of `(cb, cr)` for R, G and B, with the rounding
    /// half folded in (the sums stay far inside `i32`: at most about
    /// 18.2 M luma plus 16.8 M chroma).
    #[inline(always)]
    pub fn chroma(&self, cb: u8, cr: u8) -> [i32; 3] {
        let (u, v) = (cb as i32 - 128, cr as i32 - 128);
        [
            self.rv * v + 32768,
            32768 - self.gu * u - self.gv * v,
            self.bu * u + 32768,
        ]
    }

    /// RGB of luma `y` with the chroma terms `c` of [`Ycc::chroma`].
    #[inline(always)]
    pub fn rgb_with(&self, y: u8, c: [i32; 3]) -> [u8; 3] {
        let l = (y as i32 - self.yo) * self.ys;
        c.map(|c| ((l + c) >> 16).clamp(0, 255) as u8)
    }
}

const LIMITED: Ycc = Ycc::new(false);
const FULL: Ycc = Ycc::new(true);

/// BT.601 Y'CbCr -> RGB of one pixel, limited (16..235) or full range.
#[inline]
pub fn ycc_to_rgb(y: u8, cb: u8, cr: u8, full_range: bool) -> [u8; 3] {
    if full_range {
        FULL.rgb(y, cb, cr)
    } else {
        LIMITED.rgb(y, cb, cr)
    }
}

/// Limited-range Y' (16..=235) stretched to 0..=255, rounded.
static LIMITED_LUMA: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let v = (i as i32 - 16) * 255 * 2 + 219;
        let v = if v < 0 { 0 } else { v / (2 * 219) };
        t[i] = if v > 255 { 255 } else { v as u8 };
        i += 1;
    }
    t
};

/// `out` = `src` stretched from limited to full range: [`LIMITED_LUMA`]
/// as arithmetic (16.16 fixed point, equal on all 256 values; a test
/// checks), so a row converts on vector lanes instead of one table load a
/// pixel.
fn stretch_limited_row(src: &[u8], out: &mut Vec<u8>) {
    // Every byte is overwritten below: only a longer row zero-fills.
    out.resize(src.len(), 0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { stretch_limited_avx2(src, out) };
    }
    stretch_limited_any(src, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn stretch_limited_avx2(src: &[u8], out: &mut [u8]) {
    stretch_limited_any(src, out)
}

#[inline(always)]
fn stretch_limited_any(src: &[u8], out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(src) {
        *o = (((v as i32 - 16) * LIMITED.ys + 32768) >> 16).clamp(0, 255) as u8;
    }
}

/// `col_sum[i] += row[i]`; returns the row's sum.
#[inline]
fn add_row(row: &[u8], col_sum: &mut [u32]) -> u32 {
    let mut sum = 0u32;
    for (c, &l) in col_sum.iter_mut().zip(row) {
        sum += l as u32;
        *c += l as u32;
    }
    sum
}

/// [`add_row`] of `src` stretched from limited to full range (the values
/// of [`stretch_limited_row`]).
fn add_limited_row(src: &[u8], col_sum: &mut [u32]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { add_limited_avx2(src, col_sum) };
    }
    add_limited_any(src, col_sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn add_limited_avx2(src: &[u8], col_sum: &mut [u32]) -> u32 {
    add_limited_any(src, col_sum)
}

#[inline(always)]
fn add_limited_any(src: &[u8], col_sum: &mut [u32]) -> u32 {
    let mut sum = 0u32;
    for (c, &v) in col_sum.iter_mut().zip(src) {
        let l = (((v as i32 - 16) * LIMITED.ys + 32768) >> 16).clamp(0, 255) as u32;
        sum += l;
        *c += l;
    }
    sum
}

/// The RGB rule's luma, `(R + 2G + B) / 4`.
#[inline(always)]
fn rgb_luma(p: &[u8]) -> u8 {
    ((p[0] as u32 + 2 * p[1] as u32 + p[2] as u32) >> 2) as u8
}

/// A run of Y'CbCr pixels whose neighbours share chroma in pairs (see
/// [`Frame::pair_row`]).
#[derive(Debug, Clone, Copy)]
pub struct PairRow<'a> {
    /// The conversion of this frame's range.
    pub ycc: Ycc,
    pub pixels: PairPixels<'a>,
}

impl<'a> PairRow<'a> {
    /// Pairs in the run.
    #[inline]
    pub fn pairs(&self) -> usize {
        match self.pixels {
            PairPixels::Planar { luma, cb, cr } => (luma.len() / 2).min(cb.len()).min(cr.len()),
            PairPixels::Yuyv(quads) => quads.len() / 4,
        }
    }

    /// Pairs `j0..j1` of the run.
    #[inline]
    pub fn sub(&self, j0: usize, j1: usize) -> PairRow<'a> {
        let pixels = match self.pixels {
            PairPixels::Planar { luma, cb, cr } => PairPixels::Planar {
                luma: &luma[2 * j0..2 * j1],
                cb: &cb[j0..j1],
                cr: &cr[j0..j1],
            },
            PairPixels::Yuyv(quads) => PairPixels::Yuyv(&quads[4 * j0..4 * j1]),
        };
        PairRow {
            ycc: self.ycc,
            pixels,
        }
    }

    /// RGB of pixel `i` of the run.
    #[inline(always)]
    pub fn rgb(&self, i: usize) -> [u8; 3] {
        let (y, cb, cr) = match self.pixels {
            PairPixels::Planar { luma, cb, cr } => (luma[i], cb[i / 2], cr[i / 2]),
            PairPixels::Yuyv(quads) => {
                let q = &quads[(i / 2) * 4..(i / 2) * 4 + 4];
                (q[(i & 1) * 2], q[1], q[3])
            }
        };
        self.ycc.rgb_with(y, self.ycc.chroma(cb, cr))
    }
}

/// The bytes of a [`PairRow`], as the frame stores them.
#[derive(Debug, Clone, Copy)]
pub enum PairPixels<'a> {
    /// Pixels `luma[2j]` and `luma[2j + 1]` have chroma `cb[j]`, `cr[j]`.
    Planar {
        luma: &'a [u8],
        cb: &'a [u8],
        cr: &'a [u8],
    },
    /// `Y0 Cb Y1 Cr`, four bytes a pair.
    Yuyv(&'a [u8]),
}

/// One row of RGB as three planes (see [`Frame::rgb_planes_row`]); kept
/// by the caller so a warm frame allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct RgbPlanes {
    pub r: Vec<u8>,
    pub g: Vec<u8>,
    pub b: Vec<u8>,
}

impl RgbPlanes {
    /// `n` bytes a plane; [`Frame::rgb_planes_row`] overwrites every one,
    /// so only a longer row zero-fills.
    fn resize(&mut self, n: usize) {
        for p in [&mut self.r, &mut self.g, &mut self.b] {
            p.resize(n, 0);
        }
    }
}

/// Fills `out[i]` with the chroma sample of pixel `x0 + i` from a chroma
/// row subsampled by `2^shift` horizontally.
#[inline]
fn spread_chroma(row: &[u8], x0: usize, shift: u32, out: &mut [u8]) {
    if shift == 0 {
        out.copy_from_slice(&row[x0..x0 + out.len()]);
        return;
    }
    if out.is_empty() {
        return;
    }
    // An odd start shares its sample with the pixel before it.
    let (head, rest) = out.split_at_mut(x0 & 1);
    head.fill(row[x0 >> 1]);
    let first = (x0 + head.len()) >> 1;
    let last = first + rest.len() / 2;
    let mut pairs = rest.chunks_exact_mut(2);
    for (pair, &c) in (&mut pairs).zip(&row[first..]) {
        pair.fill(c);
    }
    let tail = pairs.into_remainder();
    if !tail.is_empty() {
        tail.fill(row[last]);
    }
}

/// Converts one row of planes in place: on entry `r` holds Cr, `g` Y' and
/// `b` Cb; on return they hold R, G and B. One uniform loop, so it runs on
/// vector lanes.
fn ycc_in_place(ycc: Ycc, r: &mut [u8], g: &mut [u8], b: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { ycc_in_place_avx2(ycc, r, g, b) };
    }
    ycc_in_place_any(ycc, r, g, b)
}

/// [`ycc_in_place`] compiled for AVX2 (8 pixels a step where the x86-64
/// baseline, SSE2, takes 4 and emulates the 32-bit multiplies).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn ycc_in_place_avx2(ycc: Ycc, r: &mut [u8], g: &mut [u8], b: &mut [u8]) {
    ycc_in_place_any(ycc, r, g, b)
}

#[inline(always)]
fn ycc_in_place_any(ycc: Ycc, r: &mut [u8], g: &mut [u8], b: &mut [u8]) {
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        [*r, *g, *b] = ycc.rgb(*g, *b, *r);
    }
}

/// One video frame in its source's layout.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    /// Seconds since the source's first frame.
    pub t_s: f64,
    /// 0-based index in the source.
    pub index: u64,
    layout: Layout,
    data: Vec<u8>,
}

impl Frame {
    /// An RGB frame from its packed bytes (`width * height * 3`).
    pub fn from_rgb(width: u32, height: u32, rgb: Vec<u8>) -> Frame {
        assert_eq!(
            rgb.len(),
            Layout::Rgb.bytes(width, height),
            "RGB frame size"
        );
        Frame {
            width,
            height,
            t_s: 0.0,
            index: 0,
            layout: Layout::Rgb,
            data: rgb,
        }
    }

    /// Makes this a `width x height` frame of `layout`, reusing the buffer
    /// (its bytes are then the caller's to fill).
    pub fn reshape(&mut self, width: u32, height: u32, layout: Layout) {
        self.width = width;
        self.height = height;
        self.layout = layout;
        self.data.resize(layout.bytes(width, height), 0);
    }

    /// [`Frame::reshape`] to packed RGB.
    pub fn reshape_rgb(&mut self, width: u32, height: u32) {
        self.reshape(width, height, Layout::Rgb);
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The frame's bytes, in its layout.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The frame's bytes to fill, in its layout.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// The packed RGB bytes of an RGB frame.
    ///
    /// # Panics
    /// When the frame is not RGB (a programming error: sources that fill
    /// RGB reshape to it first).
    pub fn rgb_mut(&mut self) -> &mut [u8] {
        assert_eq!(
            self.layout,
            Layout::Rgb,
            "rgb_mut on a {} frame",
            self.layout.name()
        );
        &mut self.data
    }

    /// The whole frame as packed RGB (for tests, stills and encoders).
    pub fn to_rgb(&self) -> Vec<u8> {
        if self.layout == Layout::Rgb {
            return self.data.clone();
        }
        let mut out = Vec::with_capacity(Layout::Rgb.bytes(self.width, self.height));
        let mut scratch = Vec::new();
        for y in 0..self.height {
            out.extend_from_slice(self.rgb_row(y, 0, self.width, &mut scratch));
        }
        out
    }

    /// The RGB triple at `(x, y)`.
    #[inline]
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let (x, y, w) = (x as usize, y as usize, self.width as usize);
        match self.layout {
            Layout::Rgb => {
                let i = (y * w + x) * 3;
                [self.data[i], self.data[i + 1], self.data[i + 2]]
            }
            Layout::Planar { chroma, full_range } => {
                let (cb, cr) = self.planar_chroma(chroma, x, y);
                ycc_to_rgb(self.data[y * w + x], cb, cr, full_range)
            }
            Layout::Yuyv => {
                let q = y * w.div_ceil(2) * 4 + (x / 2) * 4;
                ycc_to_rgb(
                    self.data[q + (x & 1) * 2],
                    self.data[q + 1],
                    self.data[q + 3],
                    false,
                )
            }
        }
    }

    /// Luma (see the module docs) at `(x, y)`.
    #[inline]
    pub fn luma(&self, x: u32, y: u32) -> u8 {
        let (x, y, w) = (x as usize, y as usize, self.width as usize);
        match self.layout {
            Layout::Rgb => rgb_luma(&self.data[(y * w + x) * 3..]),
            Layout::Planar { full_range, .. } => stretch(self.data[y * w + x], full_range),
            Layout::Yuyv => {
                LIMITED_LUMA[self.data[y * w.div_ceil(2) * 4 + (x / 2) * 4 + (x & 1) * 2] as usize]
            }
        }
    }

    fn planar_chroma(&self, chroma: Chroma, x: usize, y: usize) -> (u8, u8) {
        if chroma == Chroma::Mono {
            return (128, 128);
        }
        let (w, h) = (self.width as usize, self.height as usize);
        let (cw, ch) = chroma.plane(w, h);
        let i = w * h + chroma.row(y) * cw + (x >> chroma.x_shift());
        (self.data[i], self.data[i + cw * ch])
    }

    /// Luma of pixels `x0..x1` of row `y`: a slice of the frame itself when
    /// its layout stores it (full-range planar), else computed into
    /// `scratch`.
    pub fn luma_row<'a>(&'a self, y: u32, x0: u32, x1: u32, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        debug_assert!(x0 <= x1 && x1 <= self.width && y < self.height);
        let (w, y, x0, x1) = (self.width as usize, y as usize, x0 as usize, x1 as usize);
        match self.layout {
            Layout::Planar {
                full_range: true, ..
            } => &self.data[y * w + x0..y * w + x1],
            Layout::Planar {
                full_range: false, ..
            } => {
                stretch_limited_row(&self.data[y * w + x0..y * w + x1], scratch);
                scratch
            }
            Layout::Rgb => {
                scratch.clear();
                scratch.extend(
                    self.data[(y * w + x0) * 3..(y * w + x1) * 3]
                        .chunks_exact(3)
                        .map(rgb_luma),
                );
                scratch
            }
            Layout::Yuyv => {
                let row = y * w.div_ceil(2) * 4;
                scratch.clear();
                scratch
                    .extend((x0..x1).map(|x| {
                        LIMITED_LUMA[self.data[row + (x / 2) * 4 + (x & 1) * 2] as usize]
                    }));
                scratch
            }
        }
    }

    /// Adds the luma of pixels `x0..x1` of row `y` to `col_sum` (one
    /// entry a pixel) and returns their sum: [`Frame::luma_row`]'s values,
    /// but a limited-range row is stretched as it is summed instead of
    /// being written out first (the tracker's profiles and the detector's
    /// downscaling read every pixel of a face box this way each frame).
    pub fn add_luma_row(
        &self,
        y: u32,
        x0: u32,
        x1: u32,
        col_sum: &mut [u32],
        scratch: &mut Vec<u8>,
    ) -> u32 {
        debug_assert!(x0 <= x1 && x1 <= self.width && y < self.height);
        debug_assert_eq!(col_sum.len(), (x1 - x0) as usize);
        let w = self.width as usize;
        match self.layout {
            Layout::Planar {
                full_range: false, ..
            } => {
                let (y, x0, x1) = (y as usize, x0 as usize, x1 as usize);
                add_limited_row(&self.data[y * w + x0..y * w + x1], col_sum)
            }
            _ => add_row(self.luma_row(y, x0, x1, scratch), col_sum),
        }
    }

    /// RGB of pixels `x0..x1` of row `y` as three planes (`out.r[i]` is
    /// pixel `x0 + i`): the same bytes as [`Frame::rgb_row`], laid out so
    /// the per-pixel loops that read them run on vector lanes.
    pub fn rgb_planes_row(&self, y: u32, x0: u32, x1: u32, out: &mut RgbPlanes) {
        debug_assert!(x0 <= x1 && x1 <= self.width && y < self.height);
        let (w, h) = (self.width as usize, self.height as usize);
        let (y, x0, x1) = (y as usize, x0 as usize, x1 as usize);
        out.resize(x1 - x0);
        let RgbPlanes { r, g, b } = out;
        match self.layout {
            Layout::Rgb => {
                let px = &self.data[(y * w + x0) * 3..(y * w + x1) * 3];
                let planes = r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut());
                for (p, ((r, g), b)) in px.chunks_exact(3).zip(planes) {
                    (*r, *g, *b) = (p[0], p[1], p[2]);
                }
            }
            Layout::Planar { chroma, full_range } => {
                // Each plane first holds what its pixel is made from (G:
                // Y', B: Cb, R: Cr), then one uniform pass converts.
                g.copy_from_slice(&self.data[y * w + x0..y * w + x1]);
                if chroma == Chroma::Mono {
                    r.fill(128);
                    b.fill(128);
                } else {
                    let (cw, ch) = chroma.plane(w, h);
                    let row = w * h + chroma.row(y) * cw;
                    let cb = &self.data[row..row + cw];
                    let cr = &self.data[row + cw * ch..row + cw * ch + cw];
                    spread_chroma(cb, x0, chroma.x_shift(), b);
                    spread_chroma(cr, x0, chroma.x_shift(), r);
                }
                ycc_in_place(if full_range { FULL } else { LIMITED }, r, g, b);
            }
            Layout::Yuyv => {
                let row = &self.data[y * w.div_ceil(2) * 4..(y + 1) * w.div_ceil(2) * 4];
                for (i, x) in (x0..x1).enumerate() {
                    let q = &row[(x / 2) * 4..(x / 2) * 4 + 4];
                    (g[i], b[i], r[i]) = (q[(x & 1) * 2], q[1], q[3]);
                }
                ycc_in_place(LIMITED, r, g, b);
            }
        }
    }

    /// Pixels `x0..x1` of row `y` as Y'CbCr in pairs that share one chroma
    /// sample (pixels `2j` and `2j + 1`), for loops that convert as they
    /// go: `None` unless the layout pairs chroma this way (4:2:0 and 4:2:2
    /// planar, YUYV) and `x0` and `x1` are even. Each pixel's RGB is
    /// `ycc.rgb_with(y, ycc.chroma(cb, cr))`, the bytes [`Frame::rgb_row`]
    /// gives.
    #[inline]
    pub fn pair_row(&self, y: u32, x0: u32, x1: u32) -> Option<PairRow<'_>> {
        debug_assert!(x0 <= x1 && x1 <= self.width && y < self.height);
        if !x0.is_multiple_of(2) || !x1.is_multiple_of(2) {
            return None;
        }
        let (w, h) = (self.width as usize, self.height as usize);
        let (y, x0, x1) = (y as usize, x0 as usize, x1 as usize);
        match self.layout {
            Layout::Planar { chroma, full_range } if chroma.x_shift() == 1 => {
                let (cw, ch) = chroma.plane(w, h);
                let row = w * h + chroma.row(y) * cw;
                let (c0, c1) = (x0 / 2, x1 / 2);
                Some(PairRow {
                    ycc: if full_range { FULL } else { LIMITED },
                    pixels: PairPixels::Planar {
                        luma: &self.data[y * w + x0..y * w + x1],
                        cb: &self.data[row + c0..row + c1],
                        cr: &self.data[row + cw * ch + c0..row + cw * ch + c1],
                    },
                })
            }
            Layout::Yuyv => {
                let row = y * w.div_ceil(2) * 4;
                Some(PairRow {
                    ycc: LIMITED,
                    pixels: PairPixels::Yuyv(&self.data[row + x0 * 2..row + x1 * 2]),
                })
            }
            Layout::Planar { .. } | Layout::Rgb => None,
        }
    }

    /// Packed RGB of pixels `x0..x1` of row `y`: a slice of the frame when
    /// it is RGB, else those pixels (and only those) converted into
    /// `scratch`.
    pub fn rgb_row<'a>(&'a self, y: u32, x0: u32, x1: u32, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        debug_assert!(x0 <= x1 && x1 <= self.width && y < self.height);
        let (w, h) = (self.width as usize, self.height as usize);
        let (y, x0, x1) = (y as usize, x0 as usize, x1 as usize);
        match self.layout {
            Layout::Rgb => &self.data[(y * w + x0) * 3..(y * w + x1) * 3],
            Layout::Planar { chroma, full_range } => {
                let ycc = if full_range { FULL } else { LIMITED };
                let luma = &self.data[y * w + x0..y * w + x1];
                scratch.clear();
                scratch.resize((x1 - x0) * 3, 0);
                if chroma == Chroma::Mono {
                    for (out, &l) in scratch.chunks_exact_mut(3).zip(luma) {
                        out.copy_from_slice(&ycc.rgb(l, 128, 128));
                    }
                    return scratch;
                }
                let (cw, ch) = chroma.plane(w, h);
                let row = w * h + chroma.row(y) * cw;
                let cb = &self.data[row..row + cw];
                let cr = &self.data[row + cw * ch..row + cw * ch + cw];
                let s = chroma.x_shift();
                for ((out, &l), x) in scratch.chunks_exact_mut(3).zip(luma).zip(x0..) {
                    out.copy_from_slice(&ycc.rgb(l, cb[x >> s], cr[x >> s]));
                }
                scratch
            }
            Layout::Yuyv => {
                let row = &self.data[y * w.div_ceil(2) * 4..(y + 1) * w.div_ceil(2) * 4];
                scratch.clear();
                scratch.resize((x1 - x0) * 3, 0);
                for (out, x) in scratch.chunks_exact_mut(3).zip(x0..x1) {
                    let q = &row[(x / 2) * 4..(x / 2) * 4 + 4];
                    out.copy_from_slice(&LIMITED.rgb(q[(x & 1) * 2], q[1], q[3]));
                }
                scratch
            }
        }
    }
}

#[inline(always)]
fn stretch(y: u8, full_range: bool) -> u8 {
    if full_range {
        y
    } else {
        LIMITED_LUMA[y as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w x h` frame of `layout` with every byte from `f(index)`.
    fn filled(w: u32, h: u32, layout: Layout, f: impl Fn(usize) -> u8) -> Frame {
        let mut fr = Frame::default();
        fr.reshape(w, h, layout);
        for (i, b) in fr.data_mut().iter_mut().enumerate() {
            *b = f(i);
        }
        fr
    }

    fn all_layouts() -> Vec<Layout> {
        let mut v = vec![Layout::Rgb, Layout::Yuyv];
        for chroma in [Chroma::C420, Chroma::C422, Chroma::C444, Chroma::Mono] {
            for full_range in [false, true] {
                v.push(Layout::Planar { chroma, full_range });
            }
        }
        v
    }

    #[test]
    fn the_conversion_matches_bt601_at_the_primaries_and_range_ends() {
        assert_eq!(ycc_to_rgb(16, 128, 128, false), [0, 0, 0]);
        assert_eq!(ycc_to_rgb(235, 128, 128, false), [255, 255, 255]);
        assert_eq!(ycc_to_rgb(0, 128, 128, true), [0, 0, 0]);
        assert_eq!(ycc_to_rgb(255, 128, 128, true), [255, 255, 255]);
        // BT.601 limited-range red, green and blue (their Y'CbCr rounded to
        // integers, so within a level of the primary).
        let near = |got: [u8; 3], want: [u8; 3]| {
            got.iter()
                .zip(want)
                .all(|(&g, w)| (g as i32 - w as i32).abs() <= 1)
        };
        assert!(near(ycc_to_rgb(81, 90, 240, false), [255, 0, 0]));
        assert!(near(ycc_to_rgb(145, 54, 34, false), [0, 255, 0]));
        assert!(near(ycc_to_rgb(41, 240, 110, false), [0, 0, 255]));
        // The coefficients are BT.601's, as written out in floating point.
        for (y, cb, cr) in [(100u8, 110u8, 150u8), (200, 90, 170), (60, 140, 120)] {
            let (u, v) = (cb as f64 - 128.0, cr as f64 - 128.0);
            let l = (y as f64 - 16.0) * 255.0 / 219.0;
            let k = 255.0 / 224.0;
            let want = [
                l + 1.402 * k * v,
                l - 0.344_136 * k * u - 0.714_136 * k * v,
                l + 1.772 * k * u,
            ];
            let got = ycc_to_rgb(y, cb, cr, false);
            for c in 0..3 {
                assert!(
                    (got[c] as f64 - want[c].round().clamp(0.0, 255.0)).abs() <= 1.0,
                    "{got:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn the_fixed_point_coefficients_are_the_rounded_bt601_ones() {
        for (full_range, ycc) in [(false, LIMITED), (true, FULL)] {
            let cs = if full_range { 1.0 } else { 255.0 / 224.0 };
            let k = |v: f64| (v * cs * 65536.0).round() as i32;
            assert_eq!(
                (ycc.rv, ycc.gu, ycc.gv, ycc.bu),
                (k(1.402), k(0.344_136), k(0.714_136), k(1.772)),
                "full range: {full_range}"
            );
            let ys = if full_range {
                65536
            } else {
                (255.0 / 219.0 * 65536.0) as i32
            };
            assert_eq!(ycc.ys, ys);
        }
    }

    #[test]
    fn limited_range_luma_stretches_16_to_235_onto_0_to_255() {
        assert_eq!(LIMITED_LUMA[16], 0);
        assert_eq!(LIMITED_LUMA[0], 0);
        assert_eq!(LIMITED_LUMA[235], 255);
        assert_eq!(LIMITED_LUMA[255], 255);
        assert_eq!(LIMITED_LUMA[126], 128);
        assert!(LIMITED_LUMA.windows(2).all(|w| w[0] <= w[1]));
        // The row form computes the same table.
        let all: Vec<u8> = (0..=255).collect();
        let mut row = Vec::new();
        stretch_limited_row(&all, &mut row);
        assert_eq!(row, LIMITED_LUMA);
    }

    #[test]
    fn rows_read_the_same_pixels_as_the_per_pixel_accessors_in_every_layout() {
        // Odd sizes exercise the rounded-up chroma planes.
        for layout in all_layouts() {
            for (w, h) in [(7u32, 5u32), (8, 6)] {
                let fr = filled(w, h, layout, |i| (i * 37 % 251) as u8);
                assert_eq!(fr.data().len(), layout.bytes(w, h));
                let (mut s1, mut s2, mut planes) = (Vec::new(), Vec::new(), RgbPlanes::default());
                for y in 0..h {
                    // Even and odd starts and ends, one pixel, none.
                    for (x0, x1) in [(0, w), (1, w - 2), (1, w - 1), (3, 4), (2, 2), (0, 1)] {
                        let rgb = fr.rgb_row(y, x0, x1, &mut s1).to_vec();
                        let luma = fr.luma_row(y, x0, x1, &mut s2).to_vec();
                        let mut cols = vec![7u32; (x1 - x0) as usize];
                        let sum = fr.add_luma_row(y, x0, x1, &mut cols, &mut s2);
                        assert_eq!(sum, luma.iter().map(|&l| l as u32).sum::<u32>());
                        assert!(cols.iter().zip(&luma).all(|(&c, &l)| c == 7 + l as u32));
                        fr.rgb_planes_row(y, x0, x1, &mut planes);
                        assert_eq!(rgb.len(), (x1 - x0) as usize * 3);
                        assert_eq!(planes.r.len(), (x1 - x0) as usize);
                        for x in x0..x1 {
                            let i = (x - x0) as usize;
                            assert_eq!(
                                rgb[i * 3..i * 3 + 3],
                                fr.pixel(x, y),
                                "{layout:?} rgb ({x},{y})"
                            );
                            assert_eq!(
                                [planes.r[i], planes.g[i], planes.b[i]],
                                fr.pixel(x, y),
                                "{layout:?} planes ({x},{y})"
                            );
                            assert_eq!(luma[i], fr.luma(x, y), "{layout:?} luma ({x},{y})");
                        }
                    }
                }
                assert_eq!(fr.to_rgb().len(), (w * h * 3) as usize);
            }
        }
    }

    #[test]
    fn pair_runs_read_the_per_pixel_accessors_pixels_where_chroma_comes_in_pairs() {
        for layout in all_layouts() {
            let fr = filled(10, 4, layout, |i| (i * 53 % 241) as u8);
            let pairs = matches!(
                layout,
                Layout::Yuyv
                    | Layout::Planar {
                        chroma: Chroma::C420 | Chroma::C422,
                        ..
                    }
            );
            for y in 0..4 {
                assert!(fr.pair_row(y, 1, 4).is_none() && fr.pair_row(y, 2, 5).is_none());
                let Some(run) = fr.pair_row(y, 2, 10) else {
                    assert!(!pairs, "{layout:?}");
                    continue;
                };
                assert!(pairs, "{layout:?}");
                assert_eq!(run.pairs(), 4);
                for x in 2..10 {
                    assert_eq!(
                        run.rgb(x as usize - 2),
                        fr.pixel(x, y),
                        "{layout:?} ({x},{y})"
                    );
                }
                let sub = run.sub(1, 3);
                assert_eq!(sub.pairs(), 2);
                assert_eq!(sub.rgb(0), fr.pixel(4, y), "{layout:?}");
                assert_eq!(sub.rgb(3), fr.pixel(7, y), "{layout:?}");
            }
        }
    }

    #[test]
    fn chroma_is_shared_by_the_pixels_its_subsampling_covers() {
        // A 4:2:0 frame whose Cr plane is a gradient: the 2x2 blocks share it.
        let (w, h) = (4u32, 4u32);
        let mut fr = filled(
            w,
            h,
            Layout::Planar {
                chroma: Chroma::C420,
                full_range: true,
            },
            |_| 128,
        );
        let n = (w * h) as usize;
        fr.data_mut()[n + 4..].copy_from_slice(&[100, 200, 150, 250]); // Cr
        assert_eq!(fr.pixel(0, 0), fr.pixel(1, 1));
        assert_eq!(fr.pixel(2, 0), fr.pixel(3, 1));
        assert_ne!(fr.pixel(1, 0), fr.pixel(2, 0));
        assert_eq!(fr.pixel(0, 2), fr.pixel(1, 3));
        assert_ne!(fr.pixel(0, 1), fr.pixel(0, 2));
        // YUYV: two pixels share Cb and Cr, each has its own Y.
        let yuyv = Frame {
            width: 2,
            height: 1,
            t_s: 0.0,
            index: 0,
            layout: Layout::Yuyv,
            data: vec![16, 128, 235, 128],
        };
        assert_eq!(yuyv.pixel(0, 0), [0, 0, 0]);
        assert_eq!(yuyv.pixel(1, 0), [255, 255, 255]);
        assert_eq!((yuyv.luma(0, 0), yuyv.luma(1, 0)), (0, 255));
    }

    #[test]
    fn grey_has_the_same_luma_in_every_layout() {
        for v in [0u8, 40, 128, 201, 255] {
            let rgb = Frame::from_rgb(2, 2, vec![v; 12]);
            // Full-range grey is Y = v; limited-range Y = 16 + v * 219 / 255.
            let yl = (16.0 + v as f64 * 219.0 / 255.0).round() as u8;
            let full = filled(
                2,
                2,
                Layout::Planar {
                    chroma: Chroma::C444,
                    full_range: true,
                },
                |i| if i < 4 { v } else { 128 },
            );
            let limited = filled(
                2,
                2,
                Layout::Planar {
                    chroma: Chroma::C420,
                    full_range: false,
                },
                |i| if i < 4 { yl } else { 128 },
            );
            assert_eq!(rgb.luma(1, 1), v);
            assert_eq!(full.luma(1, 1), v);
            assert!(
                (limited.luma(1, 1) as i32 - v as i32).abs() <= 1,
                "{v}: {}",
                limited.luma(1, 1)
            );
        }
    }

    #[test]
    #[should_panic(expected = "rgb_mut on a yuv420p frame")]
    fn writing_rgb_into_a_planar_frame_is_a_programming_error() {
        let mut fr = Frame::default();
        fr.reshape(
            4,
            4,
            Layout::Planar {
                chroma: Chroma::C420,
                full_range: false,
            },
        );
        fr.rgb_mut();
    }
}
