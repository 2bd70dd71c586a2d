//! Seeded white noise for the DSP tests (a 64-bit LCG: tiny, and the same
//! on every platform).

/// An endless stream of uniform samples in -0.5..0.5.
pub fn stream(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
}

/// `n` uniform samples in -0.5..0.5.
pub fn white(seed: u64, n: usize) -> Vec<f64> {
    let mut next = stream(seed);
    (0..n).map(|_| next()).collect()
}
