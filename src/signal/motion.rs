//! Head-motion harmonics out of the pulse wave.
//!
//! Owns: the regression of a band-passed pulse wave on band-passed powers of
//! the face's vertical displacement.
//!
//! Why: breathing moves the head by a pixel or less, and what a skin region
//! averages is not a linear function of where the face is (skin meets hair,
//! brow and shadow at the regions' edges; light skin sits near the sensor's
//! top). A colour that is a memoryless function `f(v)` of a displacement
//! `v = a sin(ωt)` holds harmonics of the breathing rate: `sin((2m+1)ωt)`
//! and `cos(2mωt)`, exactly the terms of `v, v², v³, …`. The 3rd and 4th
//! harmonics of 12–20 breaths/min land in the heart-rate band (36–80 bpm),
//! where a face without a pulse then shows a "heart rate" (a light-skinned
//! face at 15 breaths/min showed 60 bpm). Least-squares regression on the
//! band-passed powers of the measured displacement removes what is
//! explained by head position and nothing else; a pulse, which the head's
//! position does not explain, keeps all but its chance correlation with
//! [`POWERS`] regressors over the window (a few samples of a thousand).
//!
//! Invariants: pure; a displacement that does not move (or is absent) changes
//! nothing; the regression is solved in the normal equations with a ridge
//! relative to their diagonal, so collinear regressors cannot blow it up.

use super::filter::Bandpass;

/// How many powers of the displacement are regressed out (`v … v⁶`: the
/// harmonics up to the 6th; at 10-20 breaths/min the 3rd to 6th are the
/// ones in the heart-rate band below 2 Hz, where resting pulses are).
pub const POWERS: usize = 6;

/// Displacements whose standard deviation is below this (pixels) carry no
/// measurable motion.
const MIN_MOTION_PX: f64 = 1e-3;

/// Band-passed powers of a displacement, ready to regress pulse waves on.
#[derive(Debug, Clone, Default)]
pub struct MotionBasis {
    regressors: Vec<Vec<f64>>,
}

impl MotionBasis {
    /// The basis of `vertical_px` (one value per pulse sample), each power
    /// of its standardised form band-passed by `band` as the pulse is.
    /// Empty when the displacement does not move.
    pub fn new(vertical_px: &[f64], band: &Bandpass) -> MotionBasis {
        let n = vertical_px.len();
        if n < 8 {
            return MotionBasis::default();
        }
        let mean = vertical_px.iter().sum::<f64>() / n as f64;
        let sd = (vertical_px.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        if !sd.is_finite() || sd < MIN_MOTION_PX {
            return MotionBasis::default();
        }
        let z: Vec<f64> = vertical_px.iter().map(|v| (v - mean) / sd).collect();
        let mut regressors = Vec::with_capacity(POWERS);
        let mut filtered = Vec::new();
        for k in 1..=POWERS {
            let power: Vec<f64> = z.iter().map(|v| v.powi(k as i32)).collect();
            band.filtfilt(&power, &mut filtered);
            if filtered.iter().all(|v| v.is_finite()) {
                regressors.push(filtered.clone());
            }
        }
        MotionBasis { regressors }
    }

    pub fn is_empty(&self) -> bool {
        self.regressors.is_empty()
    }

    /// Removes from `pulse` (same length as the displacement) its
    /// least-squares fit on the basis. Leaves it as it is when the lengths
    /// differ or the fit cannot be solved.
    pub fn remove_from(&self, pulse: &mut [f64]) {
        let m = self.regressors.len();
        if m == 0 || self.regressors.iter().any(|r| r.len() != pulse.len()) {
            return;
        }
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let mut gram: Vec<Vec<f64>> = self
            .regressors
            .iter()
            .map(|a| self.regressors.iter().map(|b| dot(a, b)).collect())
            .collect();
        let rhs: Vec<f64> = self.regressors.iter().map(|r| dot(r, pulse)).collect();
        let ridge = 1e-6 * (0..m).map(|i| gram[i][i]).fold(0.0, f64::max);
        for (i, row) in gram.iter_mut().enumerate() {
            row[i] += ridge;
        }
        let Some(beta) = solve(gram, rhs) else {
            return;
        };
        for (b, r) in beta.iter().zip(&self.regressors) {
            pulse.iter_mut().zip(r).for_each(|(p, x)| *p -= b * x);
        }
    }
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting; `None`
/// when `a` is singular or the result is not finite.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if !super::is_positive(a[pivot][col].abs()) {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (done, rest) = a.split_at_mut(col + 1);
        let pivot_row = &done[col];
        for (offset, row) in rest.iter_mut().enumerate() {
            let f = row[col] / pivot_row[col];
            row.iter_mut()
                .zip(pivot_row)
                .skip(col)
                .for_each(|(x, p)| *x -= f * p);
            b[col + 1 + offset] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::test_noise::white;
    use std::f64::consts::PI;

    fn rms(x: &[f64]) -> f64 {
        (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn colour_that_follows_head_position_is_removed_and_a_pulse_is_kept() {
        let fs = 30.0;
        let band = Bandpass::new(0.7 / 1.2, 4.0 * 1.15, fs, 2).unwrap();
        let n = 1800;
        let noise = white(3, n);
        // Breathing at 15 /min moves the head 0.7 px (as the tracker
        // measures it, with its own noise); the region's colour is a
        // nonlinear function of that position.
        let t: Vec<f64> = (0..n).map(|i| i as f64 / fs).collect();
        let v: Vec<f64> = t
            .iter()
            .zip(&noise)
            .map(|(t, e)| 0.7 * (2.0 * PI * 0.25 * t).sin() + 0.02 * e)
            .collect();
        let colour: Vec<f64> = t
            .iter()
            .map(|t| {
                let x = 0.7 * (2.0 * PI * 0.25 * t).sin();
                (2.0 * x).tanh() + 0.3 * x * x * x * x
            })
            .collect();
        let pulse: Vec<f64> = t
            .iter()
            .map(|t| 0.05 * (2.0 * PI * 1.3 * t).sin())
            .collect();
        let basis = MotionBasis::new(&v, &band);
        assert!(!basis.is_empty());
        // The artefact alone: its in-band part is almost all removed.
        let mut art = Vec::new();
        band.filtfilt(&colour, &mut art);
        let before = rms(&art);
        basis.remove_from(&mut art);
        assert!(rms(&art) < 0.1 * before, "{} -> {}", before, rms(&art));
        // A pulse alone: kept.
        let mut p = Vec::new();
        band.filtfilt(&pulse, &mut p);
        let before = rms(&p);
        basis.remove_from(&mut p);
        assert!(rms(&p) > 0.97 * before, "{} -> {}", before, rms(&p));
        // No motion: nothing to regress on, nothing changes.
        let still = MotionBasis::new(&vec![3.0; n], &band);
        assert!(still.is_empty());
        let mut q = p.clone();
        still.remove_from(&mut q);
        assert_eq!(p, q);
    }

    #[test]
    fn singular_systems_have_no_solution_rather_than_a_huge_one() {
        assert!(solve(vec![vec![0.0, 0.0], vec![0.0, 0.0]], vec![1.0, 1.0]).is_none());
        let x = solve(vec![vec![2.0, 1.0], vec![1.0, 3.0]], vec![3.0, 5.0]).unwrap();
        assert!((x[0] - 0.8).abs() < 1e-12 && (x[1] - 1.4).abs() < 1e-12);
    }
}
