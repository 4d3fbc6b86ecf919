//! The machine's memory latency, to know the floor under a lookup that reads memory once: a
//! dependent pointer chase through a random cyclic permutation of 64-byte lines, so every read
//! waits for the one before it and no prefetcher can guess the next. With `huge_pages`, the
//! region is advised as the key table is (`keygate-hugepages`); without, nothing is asked (in
//! THP `always` mode the kernel may still use huge pages: the report says what it got).

use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

/// Words in a 64-byte line.
const LINE_WORDS: usize = 8;

/// What one chase measured.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryLatency {
    pub region_bytes: usize,
    pub huge_pages_asked: bool,
    /// `AnonHugePages` of the whole process after the region was written (`smaps_rollup`).
    pub anon_huge_pages_bytes: u64,
    pub accesses: u64,
    pub nanoseconds_per_access: f64,
}

/// Chases `accesses` dependent reads through `region_bytes` of memory.
pub fn measure(
    region_bytes: usize,
    huge_pages: bool,
    accesses: u64,
) -> anyhow::Result<MemoryLatency> {
    let lines = (region_bytes / (LINE_WORDS * 8)).max(2);
    let mut words: Vec<u64> = Vec::with_capacity(lines * LINE_WORDS);
    if huge_pages {
        keygate_hugepages::advise(words.spare_capacity_mut())?;
    }
    words.resize(lines * LINE_WORDS, 0);
    let mut at = link_in_one_cycle(&mut words, 1);
    let anon_huge_pages_bytes = anon_huge_pages()?;
    let started = Instant::now();
    for _ in 0..accesses {
        at = words[at] as usize;
    }
    let elapsed = started.elapsed();
    std::hint::black_box(at);
    Ok(MemoryLatency {
        region_bytes: lines * LINE_WORDS * 8,
        huge_pages_asked: huge_pages,
        anon_huge_pages_bytes,
        accesses,
        nanoseconds_per_access: elapsed.as_secs_f64() * 1e9 / accesses as f64,
    })
}

/// Links the lines of `words` into one cycle in a random order: each line's first word holds
/// the index of the next line's first word. Returns where the cycle starts.
fn link_in_one_cycle(words: &mut [u64], seed: u64) -> usize {
    let lines = words.len() / LINE_WORDS;
    let mut order: Vec<usize> = (0..lines).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    for (at, &line) in order.iter().enumerate() {
        let next = order[(at + 1) % lines];
        words[line * LINE_WORDS] = (next * LINE_WORDS) as u64;
    }
    order[0] * LINE_WORDS
}

/// `AnonHugePages` of this process, bytes.
fn anon_huge_pages() -> anyhow::Result<u64> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup")?;
    let kib = rollup
        .lines()
        .find_map(|line| line.strip_prefix("AnonHugePages:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("no AnonHugePages in /proc/self/smaps_rollup"))?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chase_visits_every_line_once_before_it_comes_back() {
        let lines = 1000;
        let mut words = vec![0; lines * LINE_WORDS];
        let start = link_in_one_cycle(&mut words, 7);
        let mut seen = vec![false; lines];
        let mut at = start;
        for _ in 0..lines {
            assert_eq!(at % LINE_WORDS, 0, "a line's first word");
            assert!(
                !seen[at / LINE_WORDS],
                "line {} visited twice",
                at / LINE_WORDS
            );
            seen[at / LINE_WORDS] = true;
            at = words[at] as usize;
        }
        assert_eq!(at, start);
        assert!(seen.iter().all(|&visited| visited));
    }

    #[test]
    fn a_measurement_reports_the_region_it_chased() {
        let measured = measure(4096, false, 1000).expect("measure");
        assert_eq!(measured.region_bytes, 4096);
        assert!(!measured.huge_pages_asked);
        assert!(measured.nanoseconds_per_access > 0.0);
    }
}
