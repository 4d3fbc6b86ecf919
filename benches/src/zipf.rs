//! Zipf-distributed ranks: rank k of n is drawn with probability proportional to 1/k^s, the
//! usual model of "a few keys carry most of the traffic". Exact inverse-CDF sampling over a
//! precomputed table (8 bytes per rank; 8 MB for a million keys) and a binary search per draw.

use rand::Rng;

/// A sampler of ranks `0..n` (0 is the most frequent).
#[derive(Debug, Clone)]
pub struct Zipf {
    /// Cumulative probabilities; the last is 1.
    cdf: Vec<f64>,
}

impl Zipf {
    /// Ranks `0..n` with exponent `s` (`s` = 0 is uniform; ~1 is typical of API traffic).
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += (rank as f64).powf(-s);
            cdf.push(total);
        }
        for value in &mut cdf {
            *value /= total;
        }
        Self { cdf }
    }

    /// Number of ranks.
    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    /// Whether there are no ranks.
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// Draws one rank.
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf
            .partition_point(|&p| p < u)
            .min(self.cdf.len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn rank_frequencies_follow_the_power_law() {
        let zipf = Zipf::new(1000, 1.0);
        let mut rng = StdRng::seed_from_u64(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..200_000 {
            counts[zipf.sample(&mut rng)] += 1;
        }
        // P(rank 1) / P(rank 2) = 2 and P(rank 1) / P(rank 10) = 10 for s = 1.
        let ratio2 = f64::from(counts[0]) / f64::from(counts[1]);
        let ratio10 = f64::from(counts[0]) / f64::from(counts[9]);
        assert!((1.8..2.2).contains(&ratio2), "{ratio2}");
        assert!((8.5..11.5).contains(&ratio10), "{ratio10}");
    }

    #[test]
    fn exponent_zero_is_uniform() {
        let zipf = Zipf::new(4, 0.0);
        let mut rng = StdRng::seed_from_u64(2);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[zipf.sample(&mut rng)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }
}
