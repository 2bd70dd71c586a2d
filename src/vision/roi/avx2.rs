//! The skin sums of Y'CbCr pixel pairs on AVX2, sixteen pixels a step:
//! [`super::pair_sums`] written out in 16-bit lanes, because the compiler's
//! own vectorisation of it keeps the conversion in 32-bit lanes (eight
//! pixels a step) and spent about 18 instructions a pixel.
//!
//! Invariant: the same sums as the portable loop, bit for bit (the tests
//! compare the two on every layout, range and run length). How the
//! conversion fits 16-bit lanes exactly: with `y' = Y - yo`,
//! `ys = 65536 + f` (`f < 32768`) and the chroma term `C` of
//! [`Ycc::chroma`] (rounding half included), a channel is
//! `(y'·ys + C) >> 16 = y' + ((y'·f + C) >> 16)`. Writing
//! `y'·f = Th·65536 + Tl` (`pmulhw`, `pmullw`) and `C = Ch·65536 + Cl`,
//! that is `y' + Th + Ch + carry(Tl + Cl)`: every term fits 16 bits and
//! nothing is rounded.

use super::{Acc, CLIPPED_LEVEL, NEAR_BLACK_LEVEL, SKIN_RAMP};
use crate::capture::frame::Ycc;
use std::arch::x86_64::*;

/// Pixels a step.
const STEP: usize = 16;

/// A pixel that adds nothing to any sum (no skin weight, neither clipped
/// nor dark, in either range): pads the last step of a run. A test checks.
pub(super) const PAD: (u8, u8, u8) = (128, 128, 100);

/// The conversion's constants, broadcast once a run.
struct Consts {
    yo: __m256i,
    frac: __m256i,
    rv: __m256i,
    gu: __m256i,
    gv: __m256i,
    bu: __m256i,
}

/// The running sums in lanes: 32-bit weighted sums, 16-bit counts
/// (flushed into `acc` every [`FLUSH_STEPS`] steps, before they can wrap).
struct Lanes {
    r: __m256i,
    g: __m256i,
    b: __m256i,
    k: __m256i,
    clipped: __m256i,
    dark: __m256i,
    steps: usize,
}

/// A 16-bit count gains at most 1 a step.
const FLUSH_STEPS: usize = 16_384;

#[target_feature(enable = "avx2")]
fn consts(ycc: &Ycc) -> Consts {
    debug_assert!((65536..65536 + 32768).contains(&ycc.ys));
    Consts {
        yo: _mm256_set1_epi16(ycc.yo as i16),
        frac: _mm256_set1_epi16((ycc.ys - 65536) as i16),
        rv: _mm256_set1_epi32(ycc.rv),
        gu: _mm256_set1_epi32(ycc.gu),
        gv: _mm256_set1_epi32(ycc.gv),
        bu: _mm256_set1_epi32(ycc.bu),
    }
}

impl Lanes {
    #[target_feature(enable = "avx2")]
    fn new() -> Lanes {
        let z = _mm256_setzero_si256();
        Lanes {
            r: z,
            g: z,
            b: z,
            k: z,
            clipped: z,
            dark: z,
            steps: 0,
        }
    }

    /// Moves the 16-bit counts into `acc`.
    #[target_feature(enable = "avx2")]
    fn flush_counts(&mut self, acc: &mut Acc) {
        let ones = _mm256_set1_epi16(1);
        let c = _mm256_madd_epi16(self.clipped, ones);
        let d = _mm256_madd_epi16(self.dark, ones);
        // Lane sums of both at once: [c, c, d, d | c, c, d, d] pairwise,
        // then once more, then the two halves.
        let cd = _mm256_hadd_epi32(c, d);
        let cd = _mm256_hadd_epi32(cd, cd);
        let cd = _mm_add_epi32(
            _mm256_castsi256_si128(cd),
            _mm256_extracti128_si256::<1>(cd),
        );
        acc.clipped += _mm_cvtsi128_si32(cd) as u32;
        acc.dark += _mm_extract_epi32::<1>(cd) as u32;
        self.clipped = _mm256_setzero_si256();
        self.dark = _mm256_setzero_si256();
        self.steps = 0;
    }

    #[target_feature(enable = "avx2")]
    fn finish(mut self, acc: &mut Acc) {
        self.flush_counts(acc);
        // [r, g, b, k] lane sums in one tree of pairwise additions.
        let rg = _mm256_hadd_epi32(self.r, self.g);
        let bk = _mm256_hadd_epi32(self.b, self.k);
        let s = _mm256_hadd_epi32(rg, bk);
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        acc.r += _mm_cvtsi128_si32(s) as u32;
        acc.g += _mm_extract_epi32::<1>(s) as u32;
        acc.b += _mm_extract_epi32::<2>(s) as u32;
        acc.k += _mm_extract_epi32::<3>(s) as u32;
    }

    /// One step: luma of 16 pixels in 16-bit lanes, and the Cb and Cr of
    /// their 8 pairs in 32-bit lanes (pair `j` is pixels `2j`, `2j + 1`).
    #[target_feature(enable = "avx2")]
    fn step(&mut self, c: &Consts, luma: __m256i, cb: __m256i, cr: __m256i, acc: &mut Acc) {
        let half = _mm256_set1_epi32(128);
        let round = _mm256_set1_epi32(32768);
        let (u, v) = (_mm256_sub_epi32(cb, half), _mm256_sub_epi32(cr, half));
        let chroma = [
            _mm256_add_epi32(_mm256_mullo_epi32(c.rv, v), round),
            _mm256_sub_epi32(
                round,
                _mm256_add_epi32(_mm256_mullo_epi32(c.gu, u), _mm256_mullo_epi32(c.gv, v)),
            ),
            _mm256_add_epi32(_mm256_mullo_epi32(c.bu, u), round),
        ];
        // Luma term, per pixel: y' + Th and Tl.
        let yp = _mm256_sub_epi16(luma, c.yo);
        let tl = _mm256_mullo_epi16(yp, c.frac);
        let base = _mm256_add_epi16(yp, _mm256_mulhi_epi16(yp, c.frac));
        let low16 = _mm256_set1_epi32(0xFFFF);
        let one = _mm256_set1_epi32(1);
        let [r, g, b] = chroma.map(|ch| {
            // Ch + 1 and Cl of each pair, copied into both of its pixels'
            // 16-bit lanes (a 32-bit lane is two 16-bit ones, in order).
            let hi = _mm256_add_epi32(_mm256_srai_epi32::<16>(ch), one);
            let hi = _mm256_or_si256(_mm256_and_si256(hi, low16), _mm256_slli_epi32::<16>(hi));
            let lo = _mm256_and_si256(ch, low16);
            let lo = _mm256_or_si256(lo, _mm256_slli_epi32::<16>(lo));
            // Tl + Cl carries unless the 16-bit sum is at least Tl;
            // `no_carry` is -1 then, which takes back the 1 added to Ch.
            let s = _mm256_add_epi16(tl, lo);
            let no_carry = _mm256_cmpeq_epi16(_mm256_max_epu16(s, tl), s);
            let x = _mm256_add_epi16(_mm256_add_epi16(base, hi), no_carry);
            _mm256_min_epi16(
                _mm256_max_epi16(x, _mm256_setzero_si256()),
                _mm256_set1_epi16(255),
            )
        });
        self.add(r, g, b);
        self.steps += 1;
        if self.steps == FLUSH_STEPS {
            self.flush_counts(acc);
        }
    }

    /// [`Acc::add`] of 16 pixels (`r`, `g`, `b` in 0..=255, 16-bit lanes).
    #[target_feature(enable = "avx2")]
    fn add(&mut self, r: __m256i, g: __m256i, b: __m256i) {
        let k16 = |v: i16| _mm256_set1_epi16(v);
        let (mul, add, sub) = (_mm256_mullo_epi16, _mm256_add_epi16, _mm256_sub_epi16);
        // skin_weight, term by term (same 16-bit arithmetic).
        let max = _mm256_max_epi16(r, _mm256_max_epi16(g, b));
        let min = _mm256_min_epi16(r, _mm256_min_epi16(g, b));
        let y =
            _mm256_srli_epi16::<8>(add(add(mul(r, k16(77)), mul(g, k16(150))), mul(b, k16(29))));
        let cr = _mm256_srai_epi16::<8>(sub(
            sub(_mm256_slli_epi16::<7>(r), mul(g, k16(107))),
            mul(b, k16(21)),
        ));
        let cb = _mm256_srai_epi16::<8>(sub(
            sub(_mm256_slli_epi16::<7>(b), mul(r, k16(43))),
            mul(g, k16(85)),
        ));
        // With cr, cb before their +128: y-30, 245-y, cr-5 (Cr-133),
        // 45-cr (173-Cr), cb+51 (Cb-77), -1-cb (127-Cb), 249-max.
        let min16 = _mm256_min_epi16;
        let margin = min16(
            min16(
                min16(sub(y, k16(30)), sub(k16(245), y)),
                min16(sub(cr, k16(5)), sub(k16(45), cr)),
            ),
            min16(
                min16(add(cb, k16(51)), sub(k16(-1), cb)),
                sub(k16(CLIPPED_LEVEL as i16 - 1), max),
            ),
        );
        let k = min16(
            _mm256_max_epi16(
                add(margin, k16(SKIN_RAMP as i16 / 2)),
                _mm256_setzero_si256(),
            ),
            k16(SKIN_RAMP as i16),
        );
        // Counts: a true compare is -1.
        self.clipped = sub(
            self.clipped,
            _mm256_cmpgt_epi16(max, k16(CLIPPED_LEVEL as i16 - 1)),
        );
        self.dark = sub(
            self.dark,
            _mm256_cmpgt_epi16(k16(NEAR_BLACK_LEVEL as i16 + 1), min),
        );
        // k·channel pairs summed into 32-bit lanes (at most 2·16·255).
        self.r = _mm256_add_epi32(self.r, _mm256_madd_epi16(k, r));
        self.g = _mm256_add_epi32(self.g, _mm256_madd_epi16(k, g));
        self.b = _mm256_add_epi32(self.b, _mm256_madd_epi16(k, b));
        self.k = _mm256_add_epi32(self.k, _mm256_madd_epi16(k, k16(1)));
    }
}

/// 16 bytes from `p` as 16 lanes of 16 bits.
#[target_feature(enable = "avx2")]
fn widen16(p: &[u8; 16]) -> __m256i {
    // SAFETY: `p` is 16 readable bytes; the load has no alignment need.
    _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(p.as_ptr().cast()) })
}

/// 8 bytes from `p` as 8 lanes of 32 bits.
#[target_feature(enable = "avx2")]
fn widen8(p: &[u8; 8]) -> __m256i {
    // SAFETY: `p` is 8 readable bytes; the load has no alignment need.
    _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(p.as_ptr().cast()) })
}

/// [`super::pair_sums`] of planar pairs: `luma[2j]`, `luma[2j + 1]` with
/// `cb[j]`, `cr[j]`.
#[target_feature(enable = "avx2")]
pub(super) fn planar(ycc: &Ycc, luma: &[u8], cb: &[u8], cr: &[u8]) -> Acc {
    let n = cb.len().min(cr.len()).min(luma.len() / 2);
    let (c, mut lanes, mut acc) = (consts(ycc), Lanes::new(), Acc::default());
    let full = n / (STEP / 2) * (STEP / 2);
    let runs = luma[..2 * full]
        .chunks_exact(STEP)
        .zip(cb[..full].chunks_exact(STEP / 2))
        .zip(cr[..full].chunks_exact(STEP / 2));
    for ((y, b), r) in runs {
        let (y, b, r) = (
            y.try_into().expect("chunk"),
            b.try_into().expect("chunk"),
            r.try_into().expect("chunk"),
        );
        lanes.step(&c, widen16(y), widen8(b), widen8(r), &mut acc);
    }
    if full < n {
        let m = n - full;
        let (mut y, mut b, mut r) = ([PAD.0; STEP], [PAD.1; STEP / 2], [PAD.2; STEP / 2]);
        y[..2 * m].copy_from_slice(&luma[2 * full..2 * n]);
        b[..m].copy_from_slice(&cb[full..n]);
        r[..m].copy_from_slice(&cr[full..n]);
        lanes.step(&c, widen16(&y), widen8(&b), widen8(&r), &mut acc);
    }
    lanes.finish(&mut acc);
    acc
}

/// [`super::pair_sums`] of YUYV quads (`Y0 Cb Y1 Cr`).
#[target_feature(enable = "avx2")]
pub(super) fn yuyv(ycc: &Ycc, quads: &[u8]) -> Acc {
    let n = quads.len() / 4;
    let (c, mut lanes, mut acc) = (consts(ycc), Lanes::new(), Acc::default());
    let full = n / (STEP / 2) * (STEP / 2);
    let one = |q: &[u8; 2 * STEP], lanes: &mut Lanes, acc: &mut Acc| {
        // SAFETY: `q` is 32 readable bytes; the load has no alignment need.
        let v = unsafe { _mm256_loadu_si256(q.as_ptr().cast()) };
        let low8 = _mm256_set1_epi16(0xFF);
        // Bytes 2p are luma; bytes 2p + 1 alternate Cb, Cr, so as 32-bit
        // lanes the odd bytes are `Cb | Cr << 16`, one lane a pair.
        let luma = _mm256_and_si256(v, low8);
        let chroma = _mm256_srli_epi16::<8>(v);
        let cb = _mm256_and_si256(chroma, _mm256_set1_epi32(0xFFFF));
        let cr = _mm256_srli_epi32::<16>(chroma);
        lanes.step(&c, luma, cb, cr, acc);
    };
    for q in quads[..4 * full].chunks_exact(2 * STEP) {
        one(q.try_into().expect("chunk"), &mut lanes, &mut acc);
    }
    if full < n {
        let pad = [PAD.0, PAD.1, PAD.0, PAD.2];
        let mut q: [u8; 2 * STEP] = std::array::from_fn(|i| pad[i % 4]);
        q[..4 * (n - full)].copy_from_slice(&quads[4 * full..4 * n]);
        one(&q, &mut lanes, &mut acc);
    }
    lanes.finish(&mut acc);
    acc
}
