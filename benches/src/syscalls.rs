//! The side-by-side comparison's syscall census: what `strace -c -f` counted in a proxy's
//! processes while the load tool sent it a short open-loop run, as system calls per answered
//! request. strace stops the traced process at every call, so these runs are a phase of their
//! own whose throughput, latency and CPU figures mean nothing; only the counts are kept.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::report::LoadReport;
use crate::summary::median;

/// How many of the most frequent system calls a census lists.
pub const TOP: usize = 5;

/// The calls of one `strace -c` table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyscallCounts {
    /// Calls by system call name (summed when strace lists several personalities).
    pub calls: BTreeMap<String, u64>,
    /// What the `total` line(s) say.
    pub total: u64,
}

/// Parses the table `strace -c` prints when it detaches (columns `% time`, `seconds`,
/// `usecs/call`, `calls`, `errors` (blank when none), `syscall`; a `total` row at the end; one
/// table per personality under a "System call usage summary for …" title when there are
/// several). Header, separator and title lines are skipped; a row that does not have those
/// columns, a missing `total` row, or rows that do not add up to it are errors.
pub fn parse_strace_summary(text: &str) -> anyhow::Result<SyscallCounts> {
    let mut counts = SyscallCounts::default();
    let mut totals = 0;
    for (number, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Rows start with the share of time; anything else is a header, separator or title.
        let Some(first) = fields.first() else {
            continue;
        };
        if first.parse::<f64>().is_err() {
            continue;
        }
        let (calls, name) = match fields.as_slice() {
            [_, _, _, calls, name] | [_, _, _, calls, _, name] => (*calls, *name),
            _ => anyhow::bail!(
                "line {} of the strace table has {} columns, not 5 or 6: {line:?}",
                number + 1,
                fields.len()
            ),
        };
        let calls: u64 = calls
            .parse()
            .with_context(|| format!("line {}: calls {calls:?} is not a count", number + 1))?;
        if name == "total" {
            counts.total += calls;
            totals += 1;
        } else {
            *counts.calls.entry(name.to_owned()).or_insert(0) += calls;
        }
    }
    anyhow::ensure!(totals > 0, "no `total` row: not an `strace -c` table");
    let sum: u64 = counts.calls.values().sum();
    anyhow::ensure!(
        sum == counts.total,
        "the strace table's rows add up to {sum} calls but its total says {}",
        counts.total
    );
    Ok(counts)
}

/// A system call's rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRate {
    pub syscall: String,
    /// Calls per answered request, median over rounds.
    pub per_request: f64,
}

/// One target's census, medians over rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallCensus {
    pub mode: String,
    pub target: String,
    pub rounds: usize,
    /// The open-loop rate the load tool offered.
    pub offered_rps: Option<f64>,
    /// Length of one census run, s.
    pub duration_s: f64,
    /// Responses the load tool counted, summed over rounds (the divisor).
    pub requests: u64,
    /// Requests of the window never sent (the traced proxy could not keep up) and failed
    /// requests, summed over rounds.
    pub unsent: u64,
    pub errors: u64,
    /// Every system call of the traced processes per answered request; none when no request
    /// was answered.
    pub syscalls_per_request: Option<f64>,
    /// The most frequent calls, most first.
    pub top: Vec<SyscallRate>,
}

/// The census of one (mode, target) from its rounds: each round's load report and strace
/// counts.
pub fn census(mode: &str, target: &str, rounds: &[(LoadReport, SyscallCounts)]) -> SyscallCensus {
    let answered: Vec<&(LoadReport, SyscallCounts)> = rounds
        .iter()
        .filter(|(report, _)| report.requests > 0)
        .collect();
    let per_request = |calls: &dyn Fn(&SyscallCounts) -> u64| -> Option<f64> {
        let mut values: Vec<f64> = answered
            .iter()
            .map(|(report, counts)| calls(counts) as f64 / report.requests as f64)
            .collect();
        (!values.is_empty()).then(|| median(&mut values))
    };
    let mut summed: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, counts) in &answered {
        for (name, calls) in &counts.calls {
            *summed.entry(name).or_insert(0) += calls;
        }
    }
    let mut by_calls: Vec<(&str, u64)> = summed.into_iter().collect();
    by_calls.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let top = by_calls
        .iter()
        .take(TOP)
        .filter_map(|(name, _)| {
            Some(SyscallRate {
                syscall: (*name).to_owned(),
                per_request: per_request(&|counts| counts.calls.get(*name).copied().unwrap_or(0))?,
            })
        })
        .collect();
    let first = rounds.first().map(|(report, _)| report);
    SyscallCensus {
        mode: mode.to_owned(),
        target: target.to_owned(),
        rounds: rounds.len(),
        offered_rps: first.and_then(|report| report.offered_rps),
        duration_s: first.map_or(0.0, |report| report.duration_s),
        requests: rounds.iter().map(|(report, _)| report.requests).sum(),
        unsent: rounds.iter().map(|(report, _)| report.unsent).sum(),
        errors: rounds.iter().map(|(report, _)| report.errors).sum(),
        syscalls_per_request: per_request(&|counts| counts.total),
        top,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `strace -c -f -o FILE -p PID` (strace 6.1) on keygate's fixed-response upstream (three
    /// threads) while the load tool sent it 4000 requests, detached with SIGINT.
    pub(crate) const UPSTREAM_SAMPLE: &str = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 43.58    0.201293          91      2204        36 futex
 22.70    0.104830          26      4000           writev
 18.79    0.086798          21      4013         4 recvfrom
 14.73    0.068042          39      1734           epoll_wait
  0.08    0.000371          41         9           shutdown
  0.06    0.000295          32         9           close
  0.06    0.000274          15        18           epoll_ctl
  0.00    0.000000           0         4           write
  0.00    0.000000           0         9           setsockopt
  0.00    0.000000           0        11         2 accept4
------ ----------- ----------- --------- --------- ----------------
100.00    0.461903          38     12011        42 total
";

    /// An open-loop report with `requests` answered in 2 s, without CPU figures.
    pub(crate) fn report(requests: u64) -> LoadReport {
        serde_json::from_value(serde_json::json!({
            "label": "upstream", "url": "http://127.0.0.1:1/x", "mode": "open",
            "offeredRps": 2000.0, "connections": 8, "durationS": 2.0, "requests": requests,
            "rps": requests as f64 / 2.0, "errors": 0, "unsent": 0,
            "latency": {"p50": 0.0, "p90": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0, "mean": 0.0},
            "service": {"p50": 0.0, "p90": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0, "mean": 0.0},
            "curve": [], "codes": {"200": requests}, "cpu": []
        }))
        .expect("a load report")
    }

    #[test]
    fn parses_a_real_strace_table() {
        let counts = parse_strace_summary(UPSTREAM_SAMPLE).expect("strace's own table");
        assert_eq!(counts.total, 12011);
        assert_eq!(counts.calls.len(), 10);
        assert_eq!(counts.calls["futex"], 2204);
        assert_eq!(counts.calls["writev"], 4000, "a row without errors");
        assert_eq!(counts.calls["accept4"], 11, "a row with errors");
    }

    #[test]
    fn sums_personalities_and_refuses_broken_tables() {
        let two = format!(
            "System call usage summary for 64 bit mode:\n{UPSTREAM_SAMPLE}\n\
             System call usage summary for 32 bit mode:\n\
             % time     seconds  usecs/call     calls    errors syscall\n\
             100.00    0.000010          10         1           read\n\
             100.00    0.000010          10         1           total\n"
        );
        let counts = parse_strace_summary(&two).expect("two personalities");
        assert_eq!(counts.total, 12012);
        assert_eq!(counts.calls["read"], 1);

        let no_total = UPSTREAM_SAMPLE.replace("total", "openat");
        assert!(parse_strace_summary(&no_total).is_err());
        let short = UPSTREAM_SAMPLE.replace("     2204        36 futex", " futex");
        assert!(parse_strace_summary(&short).is_err());
        let not_a_count = UPSTREAM_SAMPLE.replace("2204", "22x4");
        assert!(parse_strace_summary(&not_a_count).is_err());
        let wrong_total = UPSTREAM_SAMPLE.replace("12011", "12000");
        assert!(parse_strace_summary(&wrong_total).is_err());
        assert!(
            parse_strace_summary(
                "strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted\n"
            )
            .is_err()
        );
    }

    #[test]
    fn calls_per_answered_request() {
        let counts = parse_strace_summary(UPSTREAM_SAMPLE).expect("strace's own table");
        let mut half = counts.clone();
        half.calls.values_mut().for_each(|calls| *calls /= 2);
        half.total = half.calls.values().sum();
        let census = census(
            "pinned",
            "upstream",
            &[
                (report(4000), counts),
                (report(1000), half),
                (report(0), SyscallCounts::default()),
            ],
        );
        assert_eq!(census.rounds, 3);
        assert_eq!(census.requests, 5000);
        assert_eq!(census.offered_rps, Some(2000.0));
        // Rounds: 12011 / 4000 and 6003 / 1000; the silent round has no rate.
        let expected = (12011.0 / 4000.0 + 6003.0 / 1000.0) / 2.0;
        assert!(
            (census.syscalls_per_request.expect("requests were answered") - expected).abs() < 1e-9
        );
        let names: Vec<&str> = census
            .top
            .iter()
            .map(|rate| rate.syscall.as_str())
            .collect();
        assert_eq!(
            names,
            ["recvfrom", "writev", "futex", "epoll_wait", "epoll_ctl",]
        );
        assert!((census.top[1].per_request - (1.0 + 2.0) / 2.0).abs() < 1e-9);

        let silent = super::census("pinned", "nginx", &[(report(0), SyscallCounts::default())]);
        assert_eq!(silent.syscalls_per_request, None);
        assert!(silent.top.is_empty());
    }
}
