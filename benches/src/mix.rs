//! Which credential each generated request carries: valid keys drawn uniformly or
//! Zipf-distributed, plus chosen shares of malformed, disabled and unknown (revoked) keys.
//! Header values are built once up front, so picking one per request costs a random number and
//! a reference-count increment.

use http::HeaderValue;
use rand::Rng;

use crate::zipf::Zipf;

/// How valid keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    /// Every valid key equally often.
    Uniform,
    /// Key k (in file order) with probability ∝ 1/k^s.
    Zipf(f64),
}

impl std::str::FromStr for Distribution {
    type Err = String;

    /// `uniform`, `zipf` (s = 1) or `zipf:S`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "uniform" => Ok(Self::Uniform),
            "zipf" => Ok(Self::Zipf(1.0)),
            _ => text
                .strip_prefix("zipf:")
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Self::Zipf)
                .ok_or_else(|| format!("expected uniform, zipf or zipf:S, got {text:?}")),
        }
    }
}

/// The kind of credential a request carried, for per-category accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Valid,
    Malformed,
    Disabled,
    Unknown,
    /// No credential at all.
    None,
}

/// Pools of credentials and the shares to draw them in.
#[derive(Debug, Clone)]
pub struct KeyMix {
    valid: Vec<HeaderValue>,
    zipf: Option<Zipf>,
    malformed: Vec<HeaderValue>,
    disabled: Vec<HeaderValue>,
    unknown: Vec<HeaderValue>,
    /// Cumulative shares: malformed, + disabled, + unknown.
    thresholds: [f64; 3],
}

/// The pools and shares a [`KeyMix`] is built from.
#[derive(Debug, Clone, Default)]
pub struct KeyMixSpec {
    pub valid: Vec<String>,
    pub malformed: Vec<String>,
    pub disabled: Vec<String>,
    pub unknown: Vec<String>,
    pub malformed_share: f64,
    pub disabled_share: f64,
    pub unknown_share: f64,
}

impl KeyMix {
    /// Builds the pools. A share whose pool is empty is an error, as is a total share above 1.
    pub fn new(spec: KeyMixSpec, distribution: Distribution) -> anyhow::Result<Self> {
        let pools = [
            ("malformed", spec.malformed_share, spec.malformed.len()),
            ("disabled", spec.disabled_share, spec.disabled.len()),
            ("unknown", spec.unknown_share, spec.unknown.len()),
        ];
        let mut total = 0.0;
        let mut thresholds = [0.0; 3];
        for (index, (name, share, len)) in pools.into_iter().enumerate() {
            anyhow::ensure!(
                (0.0..=1.0).contains(&share),
                "the {name} share must be within 0..=1, got {share}"
            );
            anyhow::ensure!(
                share == 0.0 || len > 0,
                "a {name} share of {share} needs {name} keys"
            );
            total += share;
            thresholds[index] = total;
        }
        anyhow::ensure!(total <= 1.0, "the shares add up to {total}, more than 1");
        anyhow::ensure!(
            total == 1.0 || !spec.valid.is_empty() || total == 0.0,
            "valid requests are wanted but there are no valid keys"
        );
        let zipf = match distribution {
            Distribution::Zipf(s) if !spec.valid.is_empty() => Some(Zipf::new(spec.valid.len(), s)),
            _ => None,
        };
        Ok(Self {
            valid: bearer_values(&spec.valid)?,
            zipf,
            malformed: bearer_values(&spec.malformed)?,
            disabled: bearer_values(&spec.disabled)?,
            unknown: bearer_values(&spec.unknown)?,
            thresholds,
        })
    }

    /// Always the same single key (or none).
    pub fn single(key: Option<&str>) -> anyhow::Result<Self> {
        Self::new(
            KeyMixSpec {
                valid: key.map(str::to_owned).into_iter().collect(),
                ..KeyMixSpec::default()
            },
            Distribution::Uniform,
        )
    }

    /// The `Authorization` value for the next request, if any.
    pub fn pick(&self, rng: &mut impl Rng) -> (Option<&HeaderValue>, Category) {
        let roll: f64 = rng.random();
        let [malformed, disabled, unknown] = self.thresholds;
        let (pool, category) = if roll < malformed {
            (&self.malformed, Category::Malformed)
        } else if roll < disabled {
            (&self.disabled, Category::Disabled)
        } else if roll < unknown {
            (&self.unknown, Category::Unknown)
        } else if let Some(zipf) = &self.zipf {
            return (self.valid.get(zipf.sample(rng)), Category::Valid);
        } else {
            (&self.valid, Category::Valid)
        };
        if pool.is_empty() {
            return (None, Category::None);
        }
        (Some(&pool[rng.random_range(0..pool.len())]), category)
    }
}

fn bearer_values(keys: &[String]) -> anyhow::Result<Vec<HeaderValue>> {
    keys.iter()
        .map(|key| {
            HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| anyhow::anyhow!("a key contains characters a header cannot carry"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn shares_are_respected() {
        let mix = KeyMix::new(
            KeyMixSpec {
                valid: vec!["v1".into(), "v2".into()],
                malformed: vec!["m".into()],
                disabled: vec!["d".into()],
                unknown: vec!["u".into()],
                malformed_share: 0.1,
                disabled_share: 0.2,
                unknown_share: 0.3,
            },
            Distribution::Zipf(1.0),
        )
        .expect("valid mix");
        let mut rng = StdRng::seed_from_u64(5);
        let mut counts = [0u32; 4];
        for _ in 0..100_000 {
            let (value, category) = mix.pick(&mut rng);
            assert!(value.is_some());
            counts[match category {
                Category::Valid => 0,
                Category::Malformed => 1,
                Category::Disabled => 2,
                Category::Unknown => 3,
                Category::None => unreachable!("every pool is filled"),
            }] += 1;
        }
        let share = |count: u32| f64::from(count) / 100_000.0;
        assert!((share(counts[0]) - 0.4).abs() < 0.01, "{counts:?}");
        assert!((share(counts[1]) - 0.1).abs() < 0.01, "{counts:?}");
        assert!((share(counts[2]) - 0.2).abs() < 0.01, "{counts:?}");
        assert!((share(counts[3]) - 0.3).abs() < 0.01, "{counts:?}");
    }

    #[test]
    fn bad_mixes_are_refused() {
        let no_pool = KeyMixSpec {
            valid: vec!["v".into()],
            malformed_share: 0.5,
            ..KeyMixSpec::default()
        };
        assert!(KeyMix::new(no_pool, Distribution::Uniform).is_err());
        assert!("zipf:x".parse::<Distribution>().is_err());
        assert_eq!("zipf:1.2".parse(), Ok(Distribution::Zipf(1.2)));
        let none = KeyMix::single(None).expect("no key is fine");
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(none.pick(&mut rng).1, Category::None);
    }
}
