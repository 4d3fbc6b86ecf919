//! The side-by-side summary: reads every run report of `benches/side-by-side.sh` and
//! `benches/tls-side-by-side.sh` (one JSON file per mode, phase, target and round, named
//! `MODE-PHASE-TARGET-rROUND.json`), takes medians over rounds, computes the ratios the
//! contract's targets are stated in, and says for each target whether it is met; [`table`]
//! renders a summary as text. The syscall census (`MODE-syscalls-TARGET-rROUND.json`, the load
//! report, beside `….strace`, what `strace -c` counted meanwhile) is read apart from the
//! phases: its runs are slowed by strace, so they feed no group, ratio or target
//! ([`crate::syscalls`]).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::report::LoadReport;
use crate::syscalls::{self, SyscallCensus};

/// Phases of a side-by-side round.
pub const SATURATION: &str = "saturation";
pub const FIXED_RATE: &str = "fixed-rate";
pub const HALF_PEAK: &str = "half-peak";
/// Closed loop, one request per new connection (over TLS: one full handshake each).
pub const NEW_CONNECTION: &str = "new-conn";
/// Every phase, in the order reports list them.
pub const PHASES: [&str; 4] = [SATURATION, FIXED_RATE, HALF_PEAK, NEW_CONNECTION];
/// The syscall census under strace: not a measured phase (not in [`PHASES`]).
pub const SYSCALLS: &str = "syscalls";

/// The mode of `benches/tls-side-by-side.sh`'s HTTPS measurements (pinned as `pinned`).
pub const PINNED_TLS: &str = "pinned-tls";

/// Targets every proxy is compared with.
pub const UPSTREAM: &str = "upstream";
pub const KEYGATE_KEY: &str = "keygate-key";
pub const KEYGATE_NO_AUTH: &str = "keygate-noauth";
pub const NGINX: &str = "nginx";
pub const HAPROXY: &str = "haproxy";

/// Medians over rounds of one (mode, phase, target).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub mode: String,
    pub phase: String,
    pub target: String,
    pub rounds: usize,
    pub offered_rps: Option<f64>,
    pub rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub cpu_us_per_request: Option<f64>,
    /// Share of a core the watched process used.
    pub cpu_utilisation: Option<f64>,
    /// Share of the watched process's CPU time spent in the kernel.
    pub cpu_system_share: Option<f64>,
    /// CPU per request in user space and in the kernel (the total split by the share of
    /// `utime` and `stime` in `/proc/PID/stat`), each the median over rounds.
    #[serde(default)]
    pub cpu_user_us_per_request: Option<f64>,
    #[serde(default)]
    pub cpu_kernel_us_per_request: Option<f64>,
    /// Connections opened, summed over rounds (warm-ups included).
    #[serde(default)]
    pub connects: u64,
    /// Over TLS: what the first handshake of the first round negotiated.
    #[serde(default)]
    pub tls: Option<String>,
    /// Over TLS: resumed handshakes, summed over rounds (0 when every handshake was full).
    #[serde(default)]
    pub tls_resumed: u64,
    /// Share of a core the load generator used.
    pub generator_utilisation: f64,
    /// Share of each core busy during the window, by anyone (median over rounds per core).
    #[serde(default)]
    pub core_busy: Vec<f64>,
    pub errors: u64,
    pub unsent: u64,
    /// Responses by status/code, summed over rounds.
    pub codes: BTreeMap<String, u64>,
    /// Per-round values, in round order: rps, p99 µs, CPU µs/request.
    pub per_round: Vec<[f64; 3]>,
    /// `[percentile, µs]`, each the median over rounds.
    pub curve: Vec<[f64; 2]>,
}

/// One contract target and how this run did against it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetCheck {
    pub target: String,
    /// What was measured, in the target's own unit.
    pub measured: f64,
    pub limit: f64,
    pub unit: String,
    pub met: bool,
    /// How the measured value was obtained.
    pub how: String,
}

/// The whole summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub machine: String,
    pub groups: Vec<Group>,
    pub targets: Vec<TargetCheck>,
    /// Round-by-round ratios keygate-key / other, median: `{mode: {"rps/nginx": x, …}}`.
    pub ratios: BTreeMap<String, BTreeMap<String, f64>>,
    /// System calls per request by mode and target, from the strace census.
    #[serde(default)]
    pub syscalls: Vec<SyscallCensus>,
}

/// Median of `values` (mean of the middle two for an even count); NaN when empty.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

struct Run {
    mode: String,
    phase: String,
    target: String,
    round: u32,
    report: LoadReport,
}

/// `MODE-PHASE-TARGET-rN` → its parts; modes and targets may contain `-`, phases are known.
fn parse_name(stem: &str) -> Option<(String, String, String, u32)> {
    parse_name_of(stem, &PHASES)
}

/// [`parse_name`] for names of one of `phases`.
fn parse_name_of(stem: &str, phases: &[&str]) -> Option<(String, String, String, u32)> {
    let (rest, round) = stem.rsplit_once("-r")?;
    let round = round.parse().ok()?;
    for &phase in phases {
        if let Some(at) = rest.find(&format!("-{phase}-")) {
            let mode = &rest[..at];
            let target = &rest[at + phase.len() + 2..];
            return Some((mode.to_owned(), phase.to_owned(), target.to_owned(), round));
        }
    }
    None
}

fn read_runs(dir: &Path) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Some((mode, phase, target, round)) = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .and_then(parse_name)
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path)?;
        let report: LoadReport = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a load report", path.display()))?;
        runs.push(Run {
            mode,
            phase,
            target,
            round,
            report,
        });
    }
    runs.sort_by_key(|run| run.round);
    Ok(runs)
}

/// The syscall census in `dir`: each `MODE-syscalls-TARGET-rN.strace` with the load report of
/// the same name (`.json`), by mode and target in round order.
fn read_censuses(dir: &Path) -> anyhow::Result<Vec<SyscallCensus>> {
    type Rounds = Vec<(u32, LoadReport, syscalls::SyscallCounts)>;
    let mut found: BTreeMap<(String, String), Rounds> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("strace") {
            continue;
        }
        let Some((mode, _, target, round)) = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .and_then(|stem| parse_name_of(stem, &[SYSCALLS]))
        else {
            continue;
        };
        let table = std::fs::read_to_string(&path)?;
        let counts = syscalls::parse_strace_summary(&table)
            .with_context(|| format!("{} is not an `strace -c` table", path.display()))?;
        let report_path = path.with_extension("json");
        let text = std::fs::read_to_string(&report_path).with_context(|| {
            format!(
                "cannot read {}, the load report of the census",
                report_path.display()
            )
        })?;
        let report: LoadReport = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a load report", report_path.display()))?;
        found
            .entry((mode, target))
            .or_default()
            .push((round, report, counts));
    }
    Ok(found
        .into_iter()
        .map(|((mode, target), mut rounds)| {
            rounds.sort_by_key(|(round, _, _)| *round);
            let rounds: Vec<_> = rounds
                .into_iter()
                .map(|(_, report, counts)| (report, counts))
                .collect();
            syscalls::census(&mode, &target, &rounds)
        })
        .collect())
}

fn group(runs: &[&Run]) -> Option<Group> {
    let first = runs.first()?;
    let values = |pick: &dyn Fn(&LoadReport) -> f64| -> f64 {
        let mut values: Vec<f64> = runs.iter().map(|run| pick(&run.report)).collect();
        median(&mut values)
    };
    let cpu = runs
        .iter()
        .all(|run| run.report.cpu_us_per_request().is_some())
        .then(|| values(&|report| report.cpu_us_per_request().unwrap_or(f64::NAN)));
    let utilisation = cpu.map(|_| values(&|report| report.cpu.iter().map(|c| c.utilisation).sum()));
    let mut codes = BTreeMap::new();
    for run in runs {
        for (code, count) in &run.report.codes {
            *codes.entry(code.clone()).or_insert(0) += count;
        }
    }
    let points = first.report.curve.len();
    let curve = (0..points)
        .map(|index| {
            let mut at: Vec<f64> = runs
                .iter()
                .filter_map(|run| run.report.curve.get(index).map(|point| point[1]))
                .collect();
            [first.report.curve[index][0], median(&mut at)]
        })
        .collect();
    Some(Group {
        mode: first.mode.clone(),
        phase: first.phase.clone(),
        target: first.target.clone(),
        rounds: runs.len(),
        offered_rps: first
            .report
            .offered_rps
            .map(|_| values(&|report| report.offered_rps.unwrap_or(0.0))),
        rps: values(&|report| report.rps),
        p50_us: values(&|report| report.latency.p50),
        p90_us: values(&|report| report.latency.p90),
        p99_us: values(&|report| report.latency.p99),
        p999_us: values(&|report| report.latency.p999),
        max_us: values(&|report| report.latency.max),
        cpu_us_per_request: cpu,
        cpu_utilisation: utilisation,
        cpu_system_share: cpu.map(|_| {
            values(&|report| {
                report.cpu.iter().map(|c| c.system_share).sum::<f64>()
                    / report.cpu.len().max(1) as f64
            })
        }),
        cpu_user_us_per_request: cpu
            .map(|_| values(&|report| report.cpu_split_us_per_request().map_or(f64::NAN, |s| s.0))),
        cpu_kernel_us_per_request: cpu
            .map(|_| values(&|report| report.cpu_split_us_per_request().map_or(f64::NAN, |s| s.1))),
        connects: runs.iter().map(|run| run.report.connects).sum(),
        tls: first.report.tls.as_ref().map(|tls| tls.description.clone()),
        tls_resumed: runs
            .iter()
            .filter_map(|run| run.report.tls.as_ref())
            .map(|tls| tls.resumed)
            .sum(),
        generator_utilisation: values(&|report| report.generator_utilisation),
        core_busy: (0..first.report.core_busy.len())
            .map(|core| values(&|report| report.core_busy.get(core).copied().unwrap_or(f64::NAN)))
            .collect(),
        errors: runs.iter().map(|run| run.report.errors).sum(),
        unsent: runs.iter().map(|run| run.report.unsent).sum(),
        codes,
        per_round: runs
            .iter()
            .map(|run| {
                [
                    run.report.rps,
                    run.report.latency.p99,
                    run.report.cpu_us_per_request().unwrap_or(f64::NAN),
                ]
            })
            .collect(),
        curve,
    })
}

/// Median over rounds of `keygate-key`'s value divided by `other`'s value in the same round.
fn round_ratio(
    runs: &[Run],
    mode: &str,
    phase: &str,
    other: &str,
    pick: impl Fn(&LoadReport) -> Option<f64>,
) -> Option<f64> {
    let find = |target: &str, round: u32| {
        runs.iter()
            .find(|run| {
                run.mode == mode && run.phase == phase && run.target == target && run.round == round
            })
            .and_then(|run| pick(&run.report))
    };
    let mut ratios: Vec<f64> = runs
        .iter()
        .filter(|run| run.mode == mode && run.phase == phase && run.target == KEYGATE_KEY)
        .filter_map(|run| Some(pick(&run.report)? / find(other, run.round)?))
        .collect();
    (!ratios.is_empty()).then(|| median(&mut ratios))
}

/// Median over rounds of `target`'s p99 minus the upstream's p99 in the same round, µs.
fn added_p99(runs: &[Run], mode: &str, target: &str) -> Option<f64> {
    let mut added: Vec<f64> = runs
        .iter()
        .filter(|run| run.mode == mode && run.phase == HALF_PEAK && run.target == target)
        .filter_map(|run| {
            let direct = runs.iter().find(|other| {
                other.mode == mode
                    && other.phase == HALF_PEAK
                    && other.target == UPSTREAM
                    && other.round == run.round
            })?;
            Some(run.report.latency.p99 - direct.report.latency.p99)
        })
        .collect();
    (!added.is_empty()).then(|| median(&mut added))
}

/// Summarises the run reports in `dir`.
pub fn summarize(dir: &Path, machine: String) -> anyhow::Result<Summary> {
    let runs = read_runs(dir)?;
    anyhow::ensure!(!runs.is_empty(), "no run reports in {}", dir.display());
    let mut keys: Vec<(String, String, String)> = runs
        .iter()
        .map(|run| (run.mode.clone(), run.phase.clone(), run.target.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    let groups: Vec<Group> = keys
        .iter()
        .filter_map(|(mode, phase, target)| {
            let members: Vec<&Run> = runs
                .iter()
                .filter(|run| &run.mode == mode && &run.phase == phase && &run.target == target)
                .collect();
            group(&members)
        })
        .collect();

    let mut ratios = BTreeMap::new();
    let modes: Vec<String> = {
        let mut modes: Vec<String> = runs.iter().map(|run| run.mode.clone()).collect();
        modes.dedup();
        modes.sort();
        modes.dedup();
        modes
    };
    let rps = |report: &LoadReport| Some(report.rps);
    let cpu = |report: &LoadReport| report.cpu_us_per_request();
    let user = |report: &LoadReport| report.cpu_split_us_per_request().map(|split| split.0);
    let kernel = |report: &LoadReport| report.cpu_split_us_per_request().map(|split| split.1);
    for mode in &modes {
        let mut of_mode = BTreeMap::new();
        for other in [NGINX, HAPROXY, KEYGATE_NO_AUTH, UPSTREAM] {
            if let Some(ratio) = round_ratio(&runs, mode, SATURATION, other, rps) {
                of_mode.insert(format!("rps key/{other}"), ratio);
            }
            if let Some(ratio) = round_ratio(&runs, mode, FIXED_RATE, other, cpu) {
                of_mode.insert(format!("cpu key/{other}"), ratio);
            }
            if let Some(ratio) = round_ratio(&runs, mode, FIXED_RATE, other, user) {
                of_mode.insert(format!("user cpu key/{other}"), ratio);
            }
            if let Some(ratio) = round_ratio(&runs, mode, FIXED_RATE, other, kernel) {
                of_mode.insert(format!("kernel cpu key/{other}"), ratio);
            }
            if let Some(ratio) = round_ratio(&runs, mode, NEW_CONNECTION, other, rps) {
                of_mode.insert(format!("new conn/s key/{other}"), ratio);
            }
            if let Some(ratio) = round_ratio(&runs, mode, NEW_CONNECTION, other, cpu) {
                of_mode.insert(format!("cpu/new conn key/{other}"), ratio);
            }
        }
        for target in [KEYGATE_KEY, KEYGATE_NO_AUTH, NGINX, HAPROXY] {
            if let Some(added) = added_p99(&runs, mode, target) {
                of_mode.insert(format!("added p99 µs {target}"), added);
            }
        }
        ratios.insert(mode.clone(), of_mode);
    }

    let mut targets = Vec::new();
    let pinned = "pinned";
    if let Some(ratio) = round_ratio(&runs, pinned, FIXED_RATE, NGINX, cpu) {
        targets.push(TargetCheck {
            target: "proxy CPU per request with key verification ≤ nginx's ÷ 1.3".into(),
            measured: ratio,
            limit: 1.0 / 1.3,
            unit: "keygate-key CPU / nginx CPU".into(),
            met: ratio <= 1.0 / 1.3,
            how: "pinned, fixed-rate phase; median over rounds of the per-round ratio".into(),
        });
    }
    if let Some(ratio) = round_ratio(&runs, pinned, FIXED_RATE, KEYGATE_NO_AUTH, cpu) {
        targets.push(TargetCheck {
            target: "proxy CPU per request with key verification ≤ 1.03 × no-auth route".into(),
            measured: ratio,
            limit: 1.03,
            unit: "keygate-key CPU / keygate-noauth CPU".into(),
            met: ratio <= 1.03,
            how: "pinned, fixed-rate phase; median over rounds of the per-round ratio".into(),
        });
    }
    for other in [NGINX, HAPROXY] {
        if let Some(ratio) = round_ratio(&runs, pinned, SATURATION, other, rps) {
            targets.push(TargetCheck {
                target: format!("requests/s at saturation ≥ {other}'s"),
                measured: ratio,
                limit: 1.0,
                unit: format!("keygate-key rps / {other} rps"),
                met: ratio >= 1.0,
                how: "pinned, closed loop; median over rounds of the per-round ratio".into(),
            });
        }
    }
    if let Some(added) = added_p99(&runs, pinned, KEYGATE_KEY) {
        targets.push(TargetCheck {
            target: "added p99 latency at half of peak rate ≤ 1 ms".into(),
            measured: added / 1000.0,
            limit: 1.0,
            unit: "ms (keygate-key p99 − direct upstream p99)".into(),
            met: added <= 1000.0,
            how: "pinned, open loop at half of keygate-key's saturation rate of the same round; \
                  latency from the intended send time"
                .into(),
        });
    }
    if let Some(ratio) = round_ratio(&runs, PINNED_TLS, FIXED_RATE, NGINX, cpu) {
        targets.push(TargetCheck {
            target: "TLS: proxy CPU per request over keep-alive HTTPS with key verification ≤ \
                     nginx's"
                .into(),
            measured: ratio,
            limit: 1.0,
            unit: "keygate-key CPU / nginx CPU".into(),
            met: ratio <= 1.0,
            how: "pinned, TLS 1.3, fixed-rate phase; median over rounds of the per-round ratio"
                .into(),
        });
    }
    if let Some(ratio) = round_ratio(&runs, PINNED_TLS, NEW_CONNECTION, NGINX, rps) {
        targets.push(TargetCheck {
            target: "TLS: new handshakes per second ≥ nginx's".into(),
            measured: ratio,
            limit: 1.0,
            unit: "keygate-key handshakes/s / nginx handshakes/s".into(),
            met: ratio >= 1.0,
            how: "pinned, closed loop, one request per new connection, full TLS 1.3 handshakes; \
                  median over rounds of the per-round ratio"
                .into(),
        });
    }
    Ok(Summary {
        machine,
        groups,
        targets,
        ratios,
        syscalls: read_censuses(dir)?,
    })
}

/// The summary as text: per mode and phase a table of the targets (medians over rounds), then
/// the ratios and the target checks.
pub fn table(summary: &Summary) -> String {
    let mut text = String::new();
    if !summary.machine.is_empty() {
        text.push_str(&format!("machine: {}\n", summary.machine));
    }
    let mut modes: Vec<&str> = summary
        .groups
        .iter()
        .map(|g| g.mode.as_str())
        .chain(summary.syscalls.iter().map(|census| census.mode.as_str()))
        .collect();
    modes.sort();
    modes.dedup();
    let number = |value: Option<f64>, decimals: usize| match value {
        Some(value) if value.is_finite() => format!("{value:.decimals$}"),
        _ => "-".into(),
    };
    for mode in &modes {
        for phase in PHASES {
            let groups: Vec<&Group> = summary
                .groups
                .iter()
                .filter(|g| g.mode == *mode && g.phase == phase)
                .collect();
            if groups.is_empty() {
                continue;
            }
            let per = if phase == NEW_CONNECTION {
                "connection"
            } else {
                "req"
            };
            text.push_str(&format!(
                "\n{mode}, {phase} (medians over {} round(s))\n",
                groups.iter().map(|g| g.rounds).max().unwrap_or(0)
            ));
            text.push_str(&format!(
                "| target | offered/s | done/s | p50 ms | p99 ms | proxy CPU µs/{per} | user | kernel | proxy core | generator core | cores busy | CPU µs/{per} by round | errors/unsent | connections |\n"
            ));
            text.push_str(
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
            );
            for group in groups {
                let rounds: Vec<String> = group
                    .per_round
                    .iter()
                    .map(|round| number(Some(round[2]), 1))
                    .collect();
                text.push_str(&format!(
                    "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} | {:.0} % | {} | {} | {}/{} | {} |\n",
                    group.target,
                    number(group.offered_rps, 0),
                    group.rps,
                    group.p50_us / 1000.0,
                    group.p99_us / 1000.0,
                    number(group.cpu_us_per_request, 1),
                    number(group.cpu_user_us_per_request, 1),
                    number(group.cpu_kernel_us_per_request, 1),
                    group
                        .cpu_utilisation
                        .map_or("-".into(), |u| format!("{:.0} %", u * 100.0)),
                    group.generator_utilisation * 100.0,
                    if group.core_busy.is_empty() {
                        "-".to_owned()
                    } else {
                        group
                            .core_busy
                            .iter()
                            .map(|busy| format!("{:.0}", busy * 100.0))
                            .collect::<Vec<_>>()
                            .join("/")
                            + " %"
                    },
                    rounds.join("/"),
                    group.errors,
                    group.unsent,
                    group.connects,
                ));
            }
            let tls: Vec<String> = summary
                .groups
                .iter()
                .filter(|g| g.mode == *mode && g.phase == phase)
                .filter_map(|g| {
                    g.tls
                        .as_ref()
                        .map(|tls| format!("{}: {tls}, resumed {}", g.target, g.tls_resumed))
                })
                .collect();
            for line in tls {
                text.push_str(&format!("  {line}\n"));
            }
        }
        census_table(&mut text, summary, mode);
    }
    for (mode, ratios) in &summary.ratios {
        if ratios.is_empty() {
            continue;
        }
        text.push_str(&format!("\nratios, {mode} (median of per-round ratios)\n"));
        for (name, value) in ratios {
            text.push_str(&format!("  {name}: {value:.3}\n"));
        }
    }
    if !summary.targets.is_empty() {
        text.push_str("\ntargets\n");
        for check in &summary.targets {
            text.push_str(&format!(
                "  {} {}: {:.3} ({}; limit {:.3})\n",
                if check.met { "MET   " } else { "MISSED" },
                check.target,
                check.measured,
                check.unit,
                check.limit
            ));
        }
    }
    text
}

/// The syscall census of `mode`, targets in the comparison's order.
fn census_table(text: &mut String, summary: &Summary, mode: &str) {
    let order = [UPSTREAM, KEYGATE_NO_AUTH, KEYGATE_KEY, NGINX, HAPROXY];
    let mut censuses: Vec<&SyscallCensus> = summary
        .syscalls
        .iter()
        .filter(|census| census.mode == mode)
        .collect();
    let Some(first) = censuses.first() else {
        return;
    };
    text.push_str(&format!(
        "\n{mode}, syscalls: strace -c -f census, open loop{} for {:.1} s, median over {} round(s); \
         slowed by strace, so counts only (no CPU or latency figures)\n",
        first
            .offered_rps
            .map(|rate| format!(" at {rate:.0}/s"))
            .unwrap_or_default(),
        first.duration_s,
        censuses.iter().map(|census| census.rounds).max().unwrap_or(0)
    ));
    text.push_str(
        "| target | answered | unsent/errors | syscalls/req | top syscalls per request |\n",
    );
    text.push_str("| --- | --- | --- | --- | --- |\n");
    censuses.sort_by_key(|census| {
        order
            .iter()
            .position(|target| *target == census.target)
            .unwrap_or(order.len())
    });
    for census in censuses {
        let top: Vec<String> = census
            .top
            .iter()
            .map(|rate| format!("{} {:.3}", rate.syscall, rate.per_request))
            .collect();
        text.push_str(&format!(
            "| {} | {} | {}/{} | {} | {} |\n",
            census.target,
            census.requests,
            census.unsent,
            census.errors,
            census
                .syscalls_per_request
                .map_or("-".into(), |calls| format!("{calls:.2}")),
            top.join(", "),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_medians() {
        assert_eq!(
            parse_name("pinned-half-peak-keygate-key-r3"),
            Some(("pinned".into(), HALF_PEAK.into(), KEYGATE_KEY.into(), 3))
        );
        assert_eq!(
            parse_name("unpinned-2w-saturation-nginx-r1"),
            Some(("unpinned-2w".into(), SATURATION.into(), NGINX.into(), 1))
        );
        assert_eq!(
            parse_name("pinned-tls-new-conn-keygate-key-r2"),
            Some((
                PINNED_TLS.into(),
                NEW_CONNECTION.into(),
                KEYGATE_KEY.into(),
                2
            ))
        );
        assert_eq!(parse_name("notes"), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn the_syscall_census_is_read_apart_from_the_phases() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("written")
        };
        let fixed = crate::syscalls::tests::report(16000);
        write(
            "pinned-fixed-rate-nginx-r1.json",
            serde_json::to_string(&fixed).expect("serializes"),
        );
        let traced = crate::syscalls::tests::report(4000);
        write(
            "pinned-syscalls-nginx-r1.json",
            serde_json::to_string(&traced).expect("serializes"),
        );
        write(
            "pinned-syscalls-nginx-r1.strace",
            crate::syscalls::tests::UPSTREAM_SAMPLE.into(),
        );

        let summary = summarize(dir.path(), "test".into()).expect("summarizes");
        assert_eq!(summary.groups.len(), 1, "the census is not a phase");
        assert_eq!(summary.groups[0].phase, FIXED_RATE);
        assert_eq!(summary.syscalls.len(), 1);
        let census = &summary.syscalls[0];
        assert_eq!(
            (census.mode.as_str(), census.target.as_str()),
            ("pinned", NGINX)
        );
        assert_eq!(census.requests, 4000);
        assert!(
            (census.syscalls_per_request.expect("requests were answered") - 12011.0 / 4000.0).abs()
                < 1e-9
        );
        let text = table(&summary);
        assert!(
            text.contains("pinned, syscalls: strace -c -f census"),
            "{text}"
        );
        assert!(
            text.contains(
                "| nginx | 4000 | 0/0 | 3.00 | recvfrom 1.003, writev 1.000, futex 0.551"
            ),
            "{text}"
        );

        // Summaries written before the census still load.
        let old: Summary = serde_json::from_str(
            r#"{"machine": "m", "groups": [], "targets": [], "ratios": {"pinned": {}}}"#,
        )
        .expect("a summary without a census loads");
        assert!(old.syscalls.is_empty());

        // A census without its load report is an error, not a silent gap.
        std::fs::remove_file(dir.path().join("pinned-syscalls-nginx-r1.json")).expect("removed");
        match summarize(dir.path(), "test".into()) {
            Ok(_) => panic!("a census without its load report was summarized"),
            Err(error) => assert!(
                format!("{error:#}").contains("load report of the census"),
                "{error:#}"
            ),
        }
    }
}
