//! Seeded random numbers for weight init and data: xoshiro256** seeded by splitmix64.
//! Written here rather than taken from `rand` so that the state is four plain words a
//! checkpoint can save and restore, and so the stream never changes under a dependency bump.

use super::{DType, Shape, Tensor};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng { state: [next(), next(), next(), next()] }
    }

    /// The raw state, for checkpoints.
    pub fn state(&self) -> [u64; 4] {
        self.state
    }

    pub fn from_state(state: [u64; 4]) -> Self {
        Rng { state }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }

    /// Shuffles `items` in place (Fisher-Yates: every order equally likely).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }

    /// Standard normal (Box-Muller; one draw per call keeps the stream simple to reason about).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // in (0, 1], so ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A tensor of N(0, std^2) draws.
    pub fn normal_tensor(&mut self, shape: impl Into<Shape>, std: f64, dtype: DType) -> Tensor {
        let shape = shape.into();
        let data: Vec<f64> = (0..shape.numel()).map(|_| self.normal() * std).collect();
        Tensor::from_f64(&data, shape, dtype).expect("length matches by construction")
    }

    /// A tensor of U(-bound, bound) draws.
    pub fn uniform_tensor(&mut self, shape: impl Into<Shape>, bound: f64, dtype: DType) -> Tensor {
        let shape = shape.into();
        let data: Vec<f64> = (0..shape.numel()).map(|_| (2.0 * self.uniform() - 1.0) * bound).collect();
        Tensor::from_f64(&data, shape, dtype).expect("length matches by construction")
    }
}
