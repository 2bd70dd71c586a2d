//! Butterworth band-pass filters built from biquad sections.
//!
//! Owns: filter design (bilinear transform with pre-warping, RBJ cookbook
//! form) and zero-phase application. A band-pass of order `n` is a cascade of
//! an order-`n` Butterworth high-pass at `low_hz` and an order-`n`
//! Butterworth low-pass at `high_hz`; each order-`n` stage is `n / 2` biquads
//! whose Q values are the Butterworth pole angles.
//!
//! Invariants:
//! - Designed once (`Bandpass::new`), applied many times; `filtfilt` writes
//!   into a caller-owned buffer and allocates only the padding scratch.
//! - `filtfilt` is zero-phase (forward then backward), so beat timing is not
//!   shifted, and squares the magnitude response.
//! - Edges are handled by odd reflection plus steady-state initial
//!   conditions, so a signal with a large DC offset does not ring.

use super::SignalError;
use std::f64::consts::PI;

/// One second-order section in transposed direct form II, normalised so `a0 = 1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Biquad {
    b0: f64,
    b1: f64,
    b2: f64,
    a1: f64,
    a2: f64,
}

impl Biquad {
    /// Second-order low-pass with cutoff `fc_hz` and quality `q`.
    pub fn lowpass(fc_hz: f64, fs_hz: f64, q: f64) -> Self {
        let w0 = 2.0 * PI * fc_hz / fs_hz;
        let (sin, cos) = w0.sin_cos();
        let alpha = sin / (2.0 * q);
        let a0 = 1.0 + alpha;
        Biquad {
            b0: (1.0 - cos) / 2.0 / a0,
            b1: (1.0 - cos) / a0,
            b2: (1.0 - cos) / 2.0 / a0,
            a1: -2.0 * cos / a0,
            a2: (1.0 - alpha) / a0,
        }
    }

    /// Second-order high-pass with cutoff `fc_hz` and quality `q`.
    pub fn highpass(fc_hz: f64, fs_hz: f64, q: f64) -> Self {
        let w0 = 2.0 * PI * fc_hz / fs_hz;
        let (sin, cos) = w0.sin_cos();
        let alpha = sin / (2.0 * q);
        let a0 = 1.0 + alpha;
        Biquad {
            b0: (1.0 + cos) / 2.0 / a0,
            b1: -(1.0 + cos) / a0,
            b2: (1.0 + cos) / 2.0 / a0,
            a1: -2.0 * cos / a0,
            a2: (1.0 - alpha) / a0,
        }
    }

    /// Gain at DC (z = 1).
    fn dc_gain(&self) -> f64 {
        (self.b0 + self.b1 + self.b2) / (1.0 + self.a1 + self.a2)
    }

    /// Magnitude of the frequency response at `f_hz`.
    pub fn magnitude(&self, f_hz: f64, fs_hz: f64) -> f64 {
        let w = 2.0 * PI * f_hz / fs_hz;
        let (c1, s1) = (w.cos(), -w.sin());
        let (c2, s2) = ((2.0 * w).cos(), -(2.0 * w).sin());
        let num = (
            self.b0 + self.b1 * c1 + self.b2 * c2,
            self.b1 * s1 + self.b2 * s2,
        );
        let den = (
            1.0 + self.a1 * c1 + self.a2 * c2,
            self.a1 * s1 + self.a2 * s2,
        );
        (num.0.hypot(num.1)) / (den.0.hypot(den.1))
    }

    /// Filters `data` in place starting from the steady state for a constant
    /// input equal to `data[0]`.
    fn run(&self, data: &mut [f64]) {
        let Some(&first) = data.first() else { return };
        let y_ss = self.dc_gain() * first;
        let mut z2 = self.b2 * first - self.a2 * y_ss;
        let mut z1 = self.b1 * first - self.a1 * y_ss + z2;
        for x in data.iter_mut() {
            let input = *x;
            let y = self.b0 * input + z1;
            z1 = self.b1 * input - self.a1 * y + z2;
            z2 = self.b2 * input - self.a2 * y;
            *x = y;
        }
    }
}

/// Q values of the biquads that make up an order-`order` Butterworth filter.
fn butterworth_qs(order: usize) -> impl Iterator<Item = f64> {
    let sections = order / 2;
    (1..=sections).map(move |k| {
        let theta = (2 * k - 1) as f64 * PI / (4 * sections) as f64;
        1.0 / (2.0 * theta.cos())
    })
}

/// A designed Butterworth band-pass: plan once, apply to many windows.
#[derive(Debug, Clone)]
pub struct Bandpass {
    sections: Vec<Biquad>,
    low_hz: f64,
    high_hz: f64,
    fs_hz: f64,
}

impl Bandpass {
    /// Designs a band-pass passing `low_hz..high_hz` at sample rate `fs_hz`.
    /// `order` is the order of each edge (even, 2..=8).
    pub fn new(low_hz: f64, high_hz: f64, fs_hz: f64, order: usize) -> Result<Self, SignalError> {
        let nyquist = fs_hz / 2.0;
        if !(fs_hz.is_finite() && fs_hz > 0.0) {
            return Err(SignalError::InvalidParameter(format!(
                "sample rate must be positive, got {fs_hz} Hz"
            )));
        }
        if !(low_hz > 0.0 && low_hz < high_hz && high_hz < nyquist) {
            return Err(SignalError::InvalidParameter(format!(
                "band {low_hz}..{high_hz} Hz must satisfy 0 < low < high < Nyquist ({nyquist} Hz)"
            )));
        }
        if !(2..=8).contains(&order) || !order.is_multiple_of(2) {
            return Err(SignalError::InvalidParameter(format!(
                "filter order must be 2, 4, 6 or 8, got {order}"
            )));
        }
        let sections = butterworth_qs(order)
            .map(|q| Biquad::highpass(low_hz, fs_hz, q))
            .chain(butterworth_qs(order).map(|q| Biquad::lowpass(high_hz, fs_hz, q)))
            .collect();
        Ok(Bandpass {
            sections,
            low_hz,
            high_hz,
            fs_hz,
        })
    }

    pub fn low_hz(&self) -> f64 {
        self.low_hz
    }

    pub fn high_hz(&self) -> f64 {
        self.high_hz
    }

    pub fn fs_hz(&self) -> f64 {
        self.fs_hz
    }

    /// Magnitude of one forward pass at `f_hz` (the zero-phase response is its square).
    pub fn magnitude(&self, f_hz: f64) -> f64 {
        self.sections
            .iter()
            .map(|s| s.magnitude(f_hz, self.fs_hz))
            .product()
    }

    /// Causal single pass into `out` (used where latency matters more than phase).
    pub fn filter(&self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        out.extend_from_slice(x);
        for s in &self.sections {
            s.run(out);
        }
    }

    /// Zero-phase filtering of `x` into `out` (`out.len() == x.len()`).
    ///
    /// Non-finite samples are treated as a defect of the caller: they are
    /// replaced by the previous finite value (or 0) so one NaN cannot poison
    /// the whole window.
    pub fn filtfilt(&self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        let n = x.len();
        if n == 0 {
            return;
        }
        // One period of the low cutoff, bounded by what odd reflection can supply.
        let pad = ((self.fs_hz / self.low_hz).ceil() as usize).min(n - 1);
        let mut last = 0.0;
        let clean: Vec<f64> = x
            .iter()
            .map(|&v| {
                if v.is_finite() {
                    last = v;
                }
                last
            })
            .collect();
        let mut buf = Vec::with_capacity(n + 2 * pad);
        let (first, end) = (clean[0], clean[n - 1]);
        buf.extend((1..=pad).rev().map(|i| 2.0 * first - clean[i]));
        buf.extend_from_slice(&clean);
        buf.extend((1..=pad).map(|i| 2.0 * end - clean[n - 1 - i]));
        for s in &self.sections {
            s.run(&mut buf);
        }
        buf.reverse();
        for s in &self.sections {
            s.run(&mut buf);
        }
        buf.reverse();
        out.extend_from_slice(&buf[pad..pad + n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(f_hz: f64, fs_hz: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| (2.0 * PI * f_hz * i as f64 / fs_hz).sin())
            .collect()
    }

    fn rms(x: &[f64]) -> f64 {
        (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn response_matches_the_analytic_butterworth_magnitude_after_prewarping() {
        let fs = 30.0;
        for order in [2usize, 4, 6] {
            let bp = Bandpass::new(0.7, 4.0, fs, order).unwrap();
            for f in [0.2, 0.5, 0.7, 1.0, 2.0, 4.0, 6.0, 10.0] {
                let warp = |fc: f64| (PI * fc / fs).tan();
                let hp = 1.0 / (1.0 + (warp(0.7) / warp(f)).powi(2 * order as i32)).sqrt();
                let lp = 1.0 / (1.0 + (warp(f) / warp(4.0)).powi(2 * order as i32)).sqrt();
                let got = bp.magnitude(f);
                assert!(
                    (got - hp * lp).abs() < 1e-9,
                    "order {order} at {f} Hz: {got} vs {}",
                    hp * lp
                );
            }
        }
    }

    #[test]
    fn band_edges_are_three_decibels_down() {
        let bp = Bandpass::new(0.7, 4.0, 30.0, 4).unwrap();
        let edge = std::f64::consts::FRAC_1_SQRT_2;
        // The two edges interact slightly; each is within 2 % of -3 dB.
        assert!((bp.magnitude(0.7) - edge).abs() < 0.02);
        assert!((bp.magnitude(4.0) - edge).abs() < 0.02);
    }

    #[test]
    fn filtfilt_passes_in_band_sine_without_phase_shift() {
        let fs = 30.0;
        let x = sine(1.2, fs, 600);
        let bp = Bandpass::new(0.7, 4.0, fs, 4).unwrap();
        let mut y = Vec::new();
        bp.filtfilt(&x, &mut y);
        assert_eq!(y.len(), x.len());
        // Away from the edges the output equals the input times |H|^2, in phase.
        let gain = bp.magnitude(1.2).powi(2);
        for i in 100..500 {
            assert!((y[i] - gain * x[i]).abs() < 0.02, "sample {i}");
        }
    }

    #[test]
    fn filtfilt_rejects_out_of_band_sines_and_dc() {
        let fs = 30.0;
        let bp = Bandpass::new(0.7, 4.0, fs, 4).unwrap();
        let mut y = Vec::new();
        for f in [0.1, 8.0] {
            let x: Vec<f64> = sine(f, fs, 900).iter().map(|v| v + 150.0).collect();
            bp.filtfilt(&x, &mut y);
            assert!(rms(&y[60..840]) < 0.02, "{f} Hz leaked: rms {}", rms(&y));
        }
    }

    #[test]
    fn filtfilt_handles_empty_one_sample_and_all_zero_input() {
        let bp = Bandpass::new(0.7, 4.0, 30.0, 4).unwrap();
        let mut y = vec![1.0];
        bp.filtfilt(&[], &mut y);
        assert!(y.is_empty());
        bp.filtfilt(&[5.0], &mut y);
        assert_eq!(y.len(), 1);
        assert!(y[0].abs() < 1e-9);
        bp.filtfilt(&[0.0; 64], &mut y);
        assert!(y.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn filtfilt_replaces_nan_instead_of_poisoning_the_window() {
        let bp = Bandpass::new(0.7, 4.0, 30.0, 4).unwrap();
        let mut x = sine(1.0, 30.0, 300);
        x[150] = f64::NAN;
        let mut y = Vec::new();
        bp.filtfilt(&x, &mut y);
        assert!(y.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn invalid_bands_and_orders_are_rejected() {
        assert!(Bandpass::new(0.0, 4.0, 30.0, 4).is_err());
        assert!(Bandpass::new(4.0, 0.7, 30.0, 4).is_err());
        assert!(Bandpass::new(0.7, 15.0, 30.0, 4).is_err());
        assert!(Bandpass::new(0.7, 4.0, 30.0, 3).is_err());
        assert!(Bandpass::new(0.7, 4.0, f64::NAN, 4).is_err());
    }
}
