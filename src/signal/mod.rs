//! Signal stage: per-frame skin colour traces in, vital signs out.
//!
//! Owns every piece of DSP, as pure functions on slices and plan-once
//! objects: resampling irregular frame times to a uniform rate
//! ([`resample`]), Butterworth band-passes ([`filter`]), the RGB-to-pulse
//! projections POS/CHROM/GREEN ([`projection`]), spectra, peaks and SNR
//! ([`spectrum`]), beats and HRV ([`beats`]), respiration by surrogate fusion
//! ([`respiration`]) and the whole chain that turns traces into [`Vitals`]
//! ([`vitals`]).
//!
//! Must not: do I/O, read a clock, allocate per sample in a hot loop, or know
//! about frames, faces or events. Time enters as sample timestamps.

pub mod beats;
pub mod filter;
pub mod projection;
pub mod resample;
pub mod respiration;
pub mod spectrum;
pub mod vitals;

#[cfg(test)]
pub(crate) mod test_noise;

pub use projection::Method;
pub use vitals::{HeartRate, SignalConfig, Traces, Vitals, VitalsEstimator};

/// `x > 0`, and false for NaN: the guard for rates, powers and amplitudes.
#[inline]
pub(crate) fn is_positive(x: f64) -> bool {
    x > 0.0
}

/// Errors from designing the signal chain (bad parameters, never bad data:
/// data problems show up as low confidence, not as errors).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SignalError {
    #[error("invalid signal parameter: {0}")]
    InvalidParameter(String),
}
