//! Pulse projection: from skin mean RGB traces to one pulse signal.
//!
//! Owns: POS (Wang, den Brinker, Stuijk & de Haan 2017, "Algorithmic
//! principles of remote PPG"), CHROM (de Haan & Jeanne 2013), GREEN
//! (Verkruysse et al. 2008) and RED (contact PPG, finger on the lens).
//!
//! Invariants: input rows are uniformly sampled `[R, G, B]` means; output has
//! one sample per row, is zero-mean over each window and carries no units
//! (relative colour change). Polarity is that of a finger PPG: the output
//! rises with blood volume, which darkens the skin (so GREEN, RED and POS,
//! whose raw projections follow brightness, are negated). A channel whose window mean is not positive
//! contributes nothing rather than dividing by zero.

use ndarray::{ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

/// Which projection turns RGB into pulse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Plane-orthogonal-to-skin (default): robust to intensity and specular changes.
    Pos,
    /// Chrominance-based: good under white light, sensitive to tint.
    Chrom,
    /// Normalised green channel: the simplest baseline.
    Green,
    /// Normalised red channel: contact PPG (finger on the lens, flash on),
    /// where green and blue are absorbed to nearly zero.
    Red,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Pos => "pos",
            Method::Chrom => "chrom",
            Method::Green => "green",
            Method::Red => "red",
        })
    }
}

fn window_means(w: &ArrayView2<f64>) -> [f64; 3] {
    let m = w.mean_axis(Axis(0)).expect("non-empty window");
    [m[0], m[1], m[2]]
}

fn normalised(v: f64, mean: f64) -> f64 {
    if mean > 1e-9 {
        v / mean
    } else {
        1.0
    }
}

fn std_dev(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt()
}

/// Projects `rgb` (`n x 3`, uniform at `fs_hz`) into `out` with windows of
/// `window_s` seconds. Inputs shorter than one window use one window.
pub fn project(
    method: Method,
    rgb: ArrayView2<f64>,
    fs_hz: f64,
    window_s: f64,
    out: &mut Vec<f64>,
) {
    let n = rgb.nrows();
    out.clear();
    out.resize(n, 0.0);
    if n < 2 {
        return;
    }
    let l = ((window_s * fs_hz).round() as usize).clamp(2, n);
    match method {
        Method::Pos => pos(rgb, l, out),
        Method::Chrom => chrom(rgb, l, out),
        Method::Green => channel(rgb.column(1), l, out),
        Method::Red => channel(rgb.column(0), l, out),
    }
}

/// POS, Algorithm 1 of Wang et al. 2017: per window of `l` samples stepping
/// by one, temporally normalise, project onto `[0, 1, -1]` and
/// `[-2, 1, 1]`, alpha-tune and overlap-add.
/// POS in O(n): the same result as projecting every window and adding the
/// windows up (the tests keep that direct form as the oracle), from prefix
/// sums. In a window, each normalised channel is `x / μ`, the two
/// projections are linear in the channels, their standard deviations
/// follow from the window's channel variances and covariances, and so the
/// window's mean-free `h = s1 + α s2` is `Σ k_c (x_c - μ_c)` with
/// per-window coefficients `k_c`: each sample then needs only the sums of
/// `k_c` and `k_c μ_c` over the windows that cover it. This runs once per
/// skin region per estimate, so it must be cheap.
fn pos(rgb: ArrayView2<f64>, l: usize, out: &mut [f64]) {
    let n = rgb.nrows();
    // Centred on the whole trace's means, so the prefix sums of products
    // stay small and their differences exact enough.
    let mut centre = [0.0; 3];
    for row in rgb.outer_iter() {
        for c in 0..3 {
            centre[c] += row[c];
        }
    }
    let centre = centre.map(|s| s / n as f64);
    let x: Vec<[f64; 3]> = rgb
        .outer_iter()
        .map(|r| [r[0] - centre[0], r[1] - centre[1], r[2] - centre[2]])
        .collect();
    // Prefix sums: 3 channels, then rr, gg, bb, rg, rb, gb.
    const PAIRS: [(usize, usize); 6] = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)];
    let mut prefix = vec![[0.0f64; 9]; n + 1];
    for (j, v) in x.iter().enumerate() {
        let mut next = prefix[j];
        for c in 0..3 {
            next[c] += v[c];
        }
        for (k, &(c, d)) in PAIRS.iter().enumerate() {
            next[3 + k] += v[c] * v[d];
        }
        prefix[j + 1] = next;
    }
    let windows = n - l + 1;
    // Per window: the coefficients k_c and Σ k_c a_c (a_c: the window's
    // mean of the centred channel), as prefix sums over windows.
    let mut coef = vec![[0.0f64; 4]; windows + 1];
    let lf = l as f64;
    for m in 0..windows {
        let s: [f64; 9] = std::array::from_fn(|k| prefix[m + l][k] - prefix[m][k]);
        let a = [s[0] / lf, s[1] / lf, s[2] / lf];
        let cov = |k: usize| {
            let (c, d) = PAIRS[k];
            s[3 + k] / lf - a[c] * a[d]
        };
        let (vr, vg, vb, crg, crb, cgb) = (cov(0), cov(1), cov(2), cov(3), cov(4), cov(5));
        // 1/μ per channel; a channel whose mean is not positive is the
        // constant 1 of `normalised`, which adds nothing once mean-free.
        let inv = std::array::from_fn::<f64, 3, _>(|c| {
            let mean = centre[c] + a[c];
            if mean > 1e-9 {
                1.0 / mean
            } else {
                0.0
            }
        });
        let [ir, ig, ib] = inv;
        let var1 = ig * ig * vg - 2.0 * ig * ib * cgb + ib * ib * vb;
        let var2 = 4.0 * ir * ir * vr + ig * ig * vg + ib * ib * vb
            - 4.0 * ir * ig * crg
            - 4.0 * ir * ib * crb
            + 2.0 * ig * ib * cgb;
        let (sd1, sd2) = (var1.max(0.0).sqrt(), var2.max(0.0).sqrt());
        let alpha = if sd2 > 1e-12 { sd1 / sd2 } else { 0.0 };
        let k = [-2.0 * alpha * ir, (1.0 + alpha) * ig, (alpha - 1.0) * ib];
        let e = k[0] * a[0] + k[1] * a[1] + k[2] * a[2];
        coef[m + 1] = [
            coef[m][0] + k[0],
            coef[m][1] + k[1],
            coef[m][2] + k[2],
            coef[m][3] + e,
        ];
    }
    for (j, (o, v)) in out.iter_mut().zip(&x).enumerate() {
        // Windows m with m <= j < m + l.
        let lo = (j + 1).saturating_sub(l);
        let hi = j.min(windows - 1) + 1;
        let sum: [f64; 4] = std::array::from_fn(|k| coef[hi][k] - coef[lo][k]);
        *o = -(v[0] * sum[0] + v[1] * sum[1] + v[2] * sum[2] - sum[3]);
    }
}

fn chrom(rgb: ArrayView2<f64>, l: usize, out: &mut [f64]) {
    let n = rgb.nrows();
    let l = l.max(4) & !1; // even, so half windows tile exactly
    let l = l.min(n & !1).max(2);
    let hop = l / 2;
    let hann: Vec<f64> = (0..l)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / l as f64).cos())
        .collect();
    let mut xs = vec![0.0; l];
    let mut ys = vec![0.0; l];
    let mut start = 0;
    loop {
        let w = rgb.slice(ndarray::s![start..start + l, ..]);
        let mean = window_means(&w);
        for (i, row) in w.outer_iter().enumerate() {
            let (r, g, b) = (
                normalised(row[0], mean[0]),
                normalised(row[1], mean[1]),
                normalised(row[2], mean[2]),
            );
            xs[i] = 3.0 * r - 2.0 * g;
            ys[i] = 1.5 * r + g - 1.5 * b;
        }
        let (sx, sy) = (std_dev(&xs), std_dev(&ys));
        let alpha = if sy > 1e-12 { sx / sy } else { 0.0 };
        let s: Vec<f64> = xs.iter().zip(&ys).map(|(x, y)| x - alpha * y).collect();
        let sm = s.iter().sum::<f64>() / l as f64;
        for i in 0..l {
            out[start + i] += (s[i] - sm) * hann[i];
        }
        if start + l >= n {
            break;
        }
        start = (start + hop).min(n - l);
    }
}

/// One channel divided by its window mean, overlap-added like POS.
fn channel(g: ArrayView1<f64>, l: usize, out: &mut [f64]) {
    let n = g.len();
    for m in 0..=(n - l) {
        let w = g.slice(ndarray::s![m..m + l]);
        let mean = w.mean().unwrap_or(0.0);
        let h: Vec<f64> = w.iter().map(|v| normalised(*v, mean)).collect();
        let hm = h.iter().sum::<f64>() / l as f64;
        for (i, v) in h.iter().enumerate() {
            out[m + i] -= v - hm;
        }
    }
}

#[cfg(test)]
mod tests {
    /// POS window by window, as the paper writes it: the oracle for `pos`.
    fn pos_direct(rgb: ArrayView2<f64>, l: usize, out: &mut [f64]) {
        let n = rgb.nrows();
        // Plain rows and reused buffers: this runs once per skin region per
        // estimate, so no allocation per window.
        let rows: Vec<[f64; 3]> = rgb.outer_iter().map(|r| [r[0], r[1], r[2]]).collect();
        let mut s1 = vec![0.0; l];
        let mut s2 = vec![0.0; l];
        for m in 0..=(n - l) {
            let w = &rows[m..m + l];
            let mut mean = [0.0; 3];
            for row in w {
                for c in 0..3 {
                    mean[c] += row[c];
                }
            }
            // Channels divided by their window means (a channel whose mean is 0
            // counts as constant 1, as `normalised` says), by one reciprocal.
            let scale = mean.map(|s| {
                let mean = s / l as f64;
                if mean > 1e-9 {
                    (1.0 / mean, 0.0)
                } else {
                    (0.0, 1.0)
                }
            });
            for (i, row) in w.iter().enumerate() {
                let r = row[0] * scale[0].0 + scale[0].1;
                let g = row[1] * scale[1].0 + scale[1].1;
                let b = row[2] * scale[2].0 + scale[2].1;
                s1[i] = g - b;
                s2[i] = -2.0 * r + g + b;
            }
            let (sd1, sd2) = (std_dev(&s1), std_dev(&s2));
            let alpha = if sd2 > 1e-12 { sd1 / sd2 } else { 0.0 };
            let hm = s1.iter().zip(&s2).map(|(a, b)| a + alpha * b).sum::<f64>() / l as f64;
            for (i, (a, b)) in s1.iter().zip(&s2).enumerate() {
                out[m + i] -= a + alpha * b - hm;
            }
        }
    }

    #[test]
    fn pos_in_linear_time_equals_pos_window_by_window() {
        let fs = 30.0;
        let mut rnd = crate::signal::test_noise::stream(5);
        for (n, l) in [(300, 48), (900, 48), (50, 48), (48, 48), (7, 5), (120, 8)] {
            // A pulse, light drift, noise, and a stretch of black red channel.
            let rgb = ndarray::Array2::from_shape_fn((n, 3), |(i, c)| {
                let t = i as f64 / fs;
                let base = [170.0, 120.0, 100.0][c] * (1.0 + 0.05 * (0.2 * t).sin());
                let v = base * (1.0 - 0.004 * (7.5 * t).sin()) + 0.5 * rnd();
                if c == 0 && (n / 3..n / 2).contains(&i) {
                    0.0
                } else {
                    v
                }
            });
            let (mut fast, mut direct) = (vec![0.0; n], vec![0.0; n]);
            pos(rgb.view(), l, &mut fast);
            pos_direct(rgb.view(), l, &mut direct);
            let scale = direct.iter().map(|v| v.abs()).fold(0.0, f64::max);
            for (j, (a, b)) in fast.iter().zip(&direct).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-7 * scale.max(1e-12),
                    "n {n}, l {l}, sample {j}: {a} vs {b}"
                );
            }
        }
    }
    use super::*;
    use ndarray::Array2;
    use std::f64::consts::PI;

    /// Skin under a flickering light, darkened by blood volume in the PBV direction.
    fn skin_trace(n: usize, fs: f64, pulse_hz: f64, flicker: f64) -> Array2<f64> {
        let skin = [180.0, 120.0, 95.0];
        let pbv = [0.33, 0.77, 0.53];
        Array2::from_shape_fn((n, 3), |(i, c)| {
            let t = i as f64 / fs;
            let light = 1.0 + flicker * (2.0 * PI * 0.23 * t).sin();
            let pulse = 0.003 * pbv[c] / pbv[1] * (2.0 * PI * pulse_hz * t).sin();
            skin[c] * light * (1.0 - pulse)
        })
    }

    fn correlation(a: &[f64], b: &[f64]) -> f64 {
        let ma = a.iter().sum::<f64>() / a.len() as f64;
        let mb = b.iter().sum::<f64>() / b.len() as f64;
        let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
        for (x, y) in a.iter().zip(b) {
            sab += (x - ma) * (y - mb);
            saa += (x - ma).powi(2);
            sbb += (y - mb).powi(2);
        }
        sab / (saa * sbb).sqrt()
    }

    #[test]
    fn every_method_recovers_a_pulse_in_the_blood_volume_direction() {
        let fs = 30.0;
        let rgb = skin_trace(300, fs, 1.2, 0.0);
        let truth: Vec<f64> = (0..300)
            .map(|i| (2.0 * PI * 1.2 * i as f64 / fs).sin())
            .collect();
        for method in [Method::Pos, Method::Chrom, Method::Green, Method::Red] {
            let mut out = Vec::new();
            project(method, rgb.view(), fs, 1.6, &mut out);
            let r = correlation(&out[48..252], &truth[48..252]);
            assert!(r > 0.95, "{method}: correlation {r}");
        }
    }

    #[test]
    fn pos_suppresses_intensity_flicker_that_dominates_green() {
        let fs = 30.0;
        // Light changes by ±2 % at 1.5 Hz-ish frequencies would swamp GREEN; POS
        // projects out the skin-tone direction so the flicker cancels.
        let rgb = Array2::from_shape_fn((300, 3), |(i, c)| {
            let t = i as f64 / fs;
            let skin = [180.0, 120.0, 95.0][c];
            let light = 1.0 + 0.02 * (2.0 * PI * 1.7 * t).sin();
            let pulse = 0.003 * [0.33, 0.77, 0.53][c] / 0.77 * (2.0 * PI * 1.2 * t).sin();
            skin * light * (1.0 - pulse)
        });
        let truth: Vec<f64> = (0..300)
            .map(|i| (2.0 * PI * 1.2 * i as f64 / fs).sin())
            .collect();
        let mut out = Vec::new();
        project(Method::Pos, rgb.view(), fs, 1.6, &mut out);
        assert!(correlation(&out[48..252], &truth[48..252]) > 0.9);
        project(Method::Green, rgb.view(), fs, 1.6, &mut out);
        assert!(correlation(&out[48..252], &truth[48..252]) < 0.5);
    }

    #[test]
    fn constant_or_black_input_gives_a_zero_signal() {
        let mut out = Vec::new();
        for value in [0.0, 128.0] {
            let rgb = Array2::from_elem((100, 3), value);
            for method in [Method::Pos, Method::Chrom, Method::Green] {
                project(method, rgb.view(), 30.0, 1.6, &mut out);
                assert_eq!(out.len(), 100);
                assert!(out.iter().all(|v| v.abs() < 1e-12), "{method} on {value}");
            }
        }
    }

    #[test]
    fn inputs_shorter_than_a_window_still_project() {
        let rgb = skin_trace(20, 30.0, 1.2, 0.0);
        let mut out = Vec::new();
        for method in [Method::Pos, Method::Chrom, Method::Green] {
            project(method, rgb.view(), 30.0, 1.6, &mut out);
            assert_eq!(out.len(), 20);
            assert!(out.iter().all(|v| v.is_finite()));
        }
        project(
            Method::Pos,
            rgb.slice(ndarray::s![..1, ..]),
            30.0,
            1.6,
            &mut out,
        );
        assert_eq!(out, vec![0.0]);
    }
}
