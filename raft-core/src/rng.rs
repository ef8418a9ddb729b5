//! A small seeded generator (SplitMix64) for election jitter. The engine has no other source
//! of randomness, so the same seed and inputs give the same outputs.

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Stream `stream` (for example a node id) under `seed`. Both are scrambled before use:
    /// seeding SplitMix64 with `seed ^ stream * constant` would give streams that are
    /// shifted copies of each other whenever the constant is the generator's own increment,
    /// and nodes whose election timeouts repeat each other's one round later keep splitting
    /// votes (the simulator's liveness check found exactly that).
    pub fn with_stream(seed: u64, stream: u64) -> Rng {
        let scrambled_stream = Rng(stream).next_u64();
        Rng(Rng(seed ^ scrambled_stream).next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `[0, bound)`; `bound` must not be 0. (The modulo bias is negligible for
    /// the small bounds used here.)
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No two node streams under one seed repeat each other, at any shift up to 8 draws.
    #[test]
    fn node_streams_are_not_shifted_copies() {
        for seed in 0..2_000 {
            let draws = |id| {
                let mut rng = Rng::with_stream(seed, id);
                (0..32).map(|_| rng.next_u64()).collect::<Vec<_>>()
            };
            let streams: Vec<Vec<u64>> = (1..=7).map(draws).collect();
            for (a, sa) in streams.iter().enumerate() {
                for (b, sb) in streams.iter().enumerate().filter(|(b, _)| *b != a) {
                    for shift in 0..8 {
                        let same = sa[shift..].iter().zip(sb).filter(|(x, y)| x == y).count();
                        assert_eq!(same, 0, "seed {seed}: node {b} repeats node {a} at {shift}");
                    }
                }
            }
        }
    }
}
