//! The crate's seeded random number generator.
//!
//! Candle's CPU backend cannot be seeded, so dropout masks, initialisation and data
//! shuffling draw from this generator instead. Its whole state is four `u64` words, which
//! checkpoints store so that a resumed run continues the same random stream.

use serde::{Deserialize, Serialize};

/// xoshiro256++ (Blackman and Vigna, 2019), seeded through SplitMix64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// Returns a generator whose stream depends only on `seed`.
    pub fn seed(seed: u64) -> Self {
        let mut mix = seed;
        let mut next = || {
            mix = mix.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = mix;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self {
            state: [next(), next(), next(), next()],
        }
    }

    /// Returns the state, for checkpoints.
    pub fn state(&self) -> [u64; 4] {
        self.state
    }

    /// Restores a generator from a saved state. An all-zero state, which xoshiro cannot
    /// leave, is replaced by the state of `seed(0)`.
    pub fn from_state(state: [u64; 4]) -> Self {
        if state == [0; 4] {
            Self::seed(0)
        } else {
            Self { state }
        }
    }

    /// Returns the next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.state;
        let result = s0.wrapping_add(*s3).rotate_left(23).wrapping_add(*s0);
        let t = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= t;
        *s3 = s3.rotate_left(45);
        result
    }

    /// Returns a uniform `f32` in `[0, 1)` with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Returns a uniform `f64` in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Returns a uniform integer in `0..bound` without modulo bias. `bound` must be > 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        let zone = u64::MAX - u64::MAX % bound;
        loop {
            let value = self.next_u64();
            if value < zone {
                return value % bound;
            }
        }
    }

    /// Returns `n` values drawn uniformly from `[low, high)`.
    pub fn uniform(&mut self, n: usize, low: f32, high: f32) -> Vec<f32> {
        (0..n)
            .map(|_| low + (high - low) * self.next_f32())
            .collect()
    }

    /// Returns an inverted-dropout mask of `n` values: `0` with probability `p`, else
    /// `1 / (1 - p)`. With `p == 0` every value is 1; with `p >= 1` every value is 0.
    pub fn dropout_mask(&mut self, n: usize, p: f32) -> Vec<f32> {
        if p <= 0.0 {
            return vec![1.0; n];
        }
        if p >= 1.0 {
            return vec![0.0; n];
        }
        let scale = 1.0 / (1.0 - p);
        (0..n)
            .map(|_| if self.next_f32() < p { 0.0 } else { scale })
            .collect()
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Rng::seed(42);
        let mut b = Rng::seed(42);
        let first: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let second: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(first, second);
        assert_ne!(Rng::seed(43).next_u64(), first[0]);
    }

    #[test]
    fn state_round_trip_continues_stream() {
        let mut a = Rng::seed(7);
        a.next_u64();
        let mut b = Rng::from_state(a.state());
        assert_eq!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn floats_in_unit_interval() {
        let mut rng = Rng::seed(1);
        for _ in 0..10_000 {
            let x = rng.next_f32();
            assert!((0.0..1.0).contains(&x), "{x}");
        }
    }

    #[test]
    fn dropout_mask_rate_and_scale() {
        let mut rng = Rng::seed(3);
        let mask = rng.dropout_mask(100_000, 0.25);
        let zeros = mask.iter().filter(|&&v| v == 0.0).count();
        assert!((24_000..26_000).contains(&zeros), "{zeros} zeros");
        assert!(mask
            .iter()
            .all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::seed(9);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let v = rng.below(7) as usize;
            seen[v] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
