//! CPU time a process has used, read from `/proc`: the least noisy way to compare proxies,
//! because it does not depend on how busy the other core is.
//!
//! Two readings are kept: the sum of `/proc/PID/task/*/schedstat` (nanoseconds on the CPU of
//! every live thread, precise) and `utime + stime` from `/proc/PID/stat` (clock ticks of 10 ms,
//! coarse, but it also counts threads that have exited).

use std::path::Path;

/// Linux reports `utime`/`stime` in USER_HZ ticks, which is 100 per second on every
/// architecture keygate targets.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process's CPU time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// Sum over live threads of time on CPU, ns.
    pub on_cpu_ns: u64,
    /// utime + stime, ticks.
    pub ticks: u64,
    /// stime alone (time in the kernel on the process's behalf), ticks.
    pub system_ticks: u64,
}

impl CpuSample {
    /// Reads `pid`'s counters.
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let base = format!("/proc/{pid}");
        let stat = std::fs::read_to_string(format!("{base}/stat"))?;
        let (user, system) = ticks(&stat)?;
        Ok(Self {
            on_cpu_ns: on_cpu_ns(Path::new(&base))?,
            ticks: user + system,
            system_ticks: system,
        })
    }

    /// Share of the ticks since `earlier` spent in the kernel.
    pub fn system_share_since(&self, earlier: &CpuSample) -> f64 {
        let all = self.ticks.saturating_sub(earlier.ticks);
        let system = self.system_ticks.saturating_sub(earlier.system_ticks);
        if all == 0 {
            0.0
        } else {
            system as f64 / all as f64
        }
    }

    /// Seconds of CPU between `earlier` and `self`: (precise, from ticks).
    pub fn seconds_since(&self, earlier: &CpuSample) -> (f64, f64) {
        (
            self.on_cpu_ns.saturating_sub(earlier.on_cpu_ns) as f64 / 1e9,
            self.ticks.saturating_sub(earlier.ticks) as f64 / TICKS_PER_SECOND,
        )
    }
}

/// (busy, total) ticks of every core since boot, from the `cpuN` lines of `/proc/stat`: to see
/// how busy each core was during a window, whoever kept it busy (another process on the proxy's
/// core shows up as busy time the proxy did not use).
pub fn core_ticks() -> anyhow::Result<Vec<(u64, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    Ok(stat
        .lines()
        .filter(|line| {
            line.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .map(|line| {
            // user nice system idle iowait irq softirq steal (guest time is inside user).
            let ticks: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .take(8)
                .map(|field| field.parse().unwrap_or(0))
                .collect();
            let total: u64 = ticks.iter().sum();
            let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect())
}

/// Share of each core that was busy between two [`core_ticks`] readings.
pub fn core_busy_since(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(&(busy0, total0), &(busy1, total1))| {
            let total = total1.saturating_sub(total0);
            if total == 0 {
                0.0
            } else {
                busy1.saturating_sub(busy0) as f64 / total as f64
            }
        })
        .collect()
}

fn on_cpu_ns(process: &Path) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(process.join("task"))? {
        // A thread may exit between listing and reading; it simply no longer counts.
        let Ok(schedstat) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        let first = schedstat.split_whitespace().next().unwrap_or("0");
        total = total.saturating_add(first.parse::<u64>().unwrap_or(0));
    }
    Ok(total)
}

/// utime (field 14) and stime (field 15) of a `/proc/PID/stat` line. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after its closing parenthesis.
fn ticks(stat: &str) -> anyhow::Result<(u64, u64)> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc stat format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("/proc stat has no field {n}"))
    };
    Ok((field(14)?, field(15)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 0 0";
        assert_eq!(ticks(line).expect("parses"), (250, 75));
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let before = CpuSample::read(pid).expect("own /proc entry");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        let after = CpuSample::read(pid).expect("own /proc entry");
        assert!(after.on_cpu_ns > before.on_cpu_ns);
    }

    #[test]
    fn reads_every_core() {
        let before = core_ticks().expect("/proc/stat");
        assert!(!before.is_empty());
        let after = core_ticks().expect("/proc/stat");
        let busy = core_busy_since(&before, &after);
        assert_eq!(busy.len(), before.len());
        assert!(busy.iter().all(|share| (0.0..=1.0).contains(share)));
    }
}
