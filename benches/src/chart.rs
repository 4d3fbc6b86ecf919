//! Draws a side-by-side [`Summary`] as one SVG, written by hand (no plotting dependency):
//! requests/s at saturation per target and mode, proxy CPU per request at the fixed rate
//! (stacked: user space, then the kernel hatched, where the split is known), and the latency
//! percentile curves at half of peak rate (log-log, tail to the right).

use std::fmt::Write;

use crate::summary::{FIXED_RATE, Group, HALF_PEAK, SATURATION, Summary};

const WIDTH: f64 = 1320.0;
const HEIGHT: f64 = 470.0;
const PANEL_TOP: f64 = 70.0;
const PANEL_HEIGHT: f64 = 300.0;
/// The pattern that marks the kernel's share of a stacked bar.
const KERNEL_HATCH: &str = "kernel-hatch";

/// Targets in drawing order, with their colours.
const TARGETS: [(&str, &str); 5] = [
    ("upstream", "#9e9e9e"),
    ("keygate-noauth", "#64b5f6"),
    ("keygate-key", "#1565c0"),
    ("nginx", "#2e7d32"),
    ("haproxy", "#ef6c00"),
];

fn colour(target: &str) -> &'static str {
    TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, colour)| *colour)
        .unwrap_or("#000000")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct Svg(String);

impl Svg {
    fn text(&mut self, x: f64, y: f64, size: f64, anchor: &str, text: &str) {
        let _ = writeln!(
            self.0,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}">{}</text>"#,
            escape(text)
        );
    }

    fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str) {
        let _ = writeln!(
            self.0,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}"/>"#
        );
    }

    fn rect(&mut self, x: f64, y: f64, width: f64, height: f64, fill: &str, opacity: f64) {
        let _ = writeln!(
            self.0,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{height:.1}" fill="{fill}" fill-opacity="{opacity}"/>"#
        );
    }

    /// The kernel's share of a stacked bar: hatching over the bar's own colour.
    fn hatch(&mut self, x: f64, y: f64, width: f64, height: f64) {
        let _ = writeln!(
            self.0,
            r#"<rect class="kernel" x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{height:.1}" fill="url(#{KERNEL_HATCH})"/>"#
        );
    }
}

fn nice_ceiling(value: f64) -> f64 {
    if !(value.is_finite() && value > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= value {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn groups<'a>(summary: &'a Summary, phase: &str) -> Vec<&'a Group> {
    summary
        .groups
        .iter()
        .filter(|group| group.phase == phase)
        .collect()
}

fn modes(groups: &[&Group]) -> Vec<String> {
    let mut modes: Vec<String> = groups.iter().map(|group| group.mode.clone()).collect();
    modes.sort();
    modes.dedup();
    modes
}

/// A bar's height, and the (user, kernel) parts it is stacked from when they are known.
struct Bar {
    total: f64,
    split: Option<(f64, f64)>,
}

impl Bar {
    fn plain(total: f64) -> Self {
        Self { total, split: None }
    }

    /// The kernel's share of the bar, when there is a split to draw.
    fn kernel_share(&self) -> Option<f64> {
        let (user, kernel) = self.split?;
        let sum = user + kernel;
        (user.is_finite() && kernel.is_finite() && user >= 0.0 && kernel >= 0.0 && sum > 0.0)
            .then(|| kernel / sum)
    }
}

/// Grouped bars: one cluster per target, one bar per mode; a bar with a split is stacked, user
/// space below and the kernel hatched above.
fn bars(
    svg: &mut Svg,
    left: f64,
    width: f64,
    title: &str,
    groups: &[&Group],
    value: impl Fn(&Group) -> Option<Bar>,
    format: impl Fn(f64) -> String,
) {
    svg.text(left + width / 2.0, PANEL_TOP - 25.0, 15.0, "middle", title);
    let modes = modes(groups);
    let top = groups
        .iter()
        .filter_map(|group| value(group).map(|bar| bar.total))
        .fold(0.0, f64::max);
    let ceiling = nice_ceiling(top * 1.1);
    let bottom = PANEL_TOP + PANEL_HEIGHT;
    let plot_left = left + 50.0;
    let plot_width = width - 60.0;
    svg.line(plot_left, PANEL_TOP, plot_left, bottom, "#444");
    svg.line(plot_left, bottom, plot_left + plot_width, bottom, "#444");
    for tick in 0..=4 {
        let fraction = f64::from(tick) / 4.0;
        let y = bottom - fraction * PANEL_HEIGHT;
        svg.line(plot_left - 4.0, y, plot_left + plot_width, y, "#e0e0e0");
        svg.text(
            plot_left - 6.0,
            y + 4.0,
            11.0,
            "end",
            &format(ceiling * fraction),
        );
    }
    let targets: Vec<&str> = TARGETS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| groups.iter().any(|group| group.target == *name))
        .collect();
    let mut stacked = false;
    let cluster = plot_width / targets.len().max(1) as f64;
    let bar = (cluster * 0.8) / modes.len().max(1) as f64;
    for (index, target) in targets.iter().enumerate() {
        let cluster_left = plot_left + cluster * index as f64 + cluster * 0.1;
        for (mode_index, mode) in modes.iter().enumerate() {
            let Some(found) = groups
                .iter()
                .find(|group| group.target == *target && &group.mode == mode)
            else {
                continue;
            };
            let Some(value) = value(found) else { continue };
            let kernel_share = value.kernel_share();
            let value = value.total;
            let height = (value / ceiling) * PANEL_HEIGHT;
            let x = cluster_left + bar * mode_index as f64;
            let opacity = if mode_index == 0 { 1.0 } else { 0.55 };
            svg.rect(
                x,
                bottom - height,
                bar - 2.0,
                height,
                colour(target),
                opacity,
            );
            if let Some(share) = kernel_share {
                svg.hatch(x, bottom - height, bar - 2.0, height * share);
                stacked = true;
            }
            svg.text(
                x + bar / 2.0,
                bottom - height - 4.0,
                10.0,
                "middle",
                &format(value),
            );
        }
        svg.text(
            cluster_left + cluster * 0.4,
            bottom + 16.0,
            11.0,
            "middle",
            target,
        );
    }
    let legend: Vec<String> = modes
        .iter()
        .enumerate()
        .map(|(index, mode)| format!("{mode}{}", if index == 0 { " (solid)" } else { " (pale)" }))
        .collect();
    if stacked {
        svg.text(
            left + width / 2.0,
            PANEL_TOP - 9.0,
            11.0,
            "middle",
            "stacked: user space (plain, below) + kernel (hatched, above)",
        );
    }
    svg.text(
        left + width / 2.0,
        bottom + 34.0,
        11.0,
        "middle",
        &legend.join(" · "),
    );
}

/// Latency percentile curves, log-log: x is 1/(1−p), y is µs.
fn curves(svg: &mut Svg, left: f64, width: f64, title: &str, groups: &[&Group]) {
    svg.text(left + width / 2.0, PANEL_TOP - 25.0, 15.0, "middle", title);
    let bottom = PANEL_TOP + PANEL_HEIGHT;
    let plot_left = left + 55.0;
    let plot_width = width - 70.0;
    // x: log10(1/(1-p)) from p=50 % (0.3) to p=99.99 % (4); max drawn at 4.5.
    let x_of = |p: f64| {
        let position = if p >= 100.0 {
            4.5
        } else {
            (1.0 / (1.0 - p / 100.0)).log10()
        };
        plot_left + (position - 0.3) / (4.5 - 0.3) * plot_width
    };
    let points: Vec<f64> = groups
        .iter()
        .flat_map(|group| group.curve.iter().map(|point| point[1]))
        .filter(|value| *value > 0.0)
        .collect();
    let low = points.iter().copied().fold(f64::INFINITY, f64::min);
    let high = points.iter().copied().fold(0.0, f64::max);
    let (low_decade, high_decade) = if points.is_empty() {
        (1.0, 4.0)
    } else {
        (
            low.log10().floor(),
            high.log10().ceil().max(low.log10().floor() + 1.0),
        )
    };
    let y_of = |us: f64| {
        let position =
            (us.max(10f64.powf(low_decade)).log10() - low_decade) / (high_decade - low_decade);
        bottom - position * PANEL_HEIGHT
    };
    svg.line(plot_left, PANEL_TOP, plot_left, bottom, "#444");
    svg.line(plot_left, bottom, plot_left + plot_width, bottom, "#444");
    let mut decade = low_decade;
    while decade <= high_decade {
        let y = y_of(10f64.powf(decade));
        svg.line(plot_left - 4.0, y, plot_left + plot_width, y, "#e0e0e0");
        let us = 10f64.powf(decade);
        let label = if us >= 1000.0 {
            format!("{} ms", us / 1000.0)
        } else {
            format!("{us} µs")
        };
        svg.text(plot_left - 6.0, y + 4.0, 11.0, "end", &label);
        decade += 1.0;
    }
    for (p, label) in [
        (50.0, "p50"),
        (90.0, "p90"),
        (99.0, "p99"),
        (99.9, "p99.9"),
        (99.99, "p99.99"),
        (100.0, "max"),
    ] {
        let x = x_of(p);
        svg.line(x, bottom, x, bottom + 4.0, "#444");
        svg.text(x, bottom + 16.0, 11.0, "middle", label);
    }
    let mut legend_y = PANEL_TOP + 10.0;
    for (target, stroke) in TARGETS {
        let Some(group) = groups.iter().find(|group| group.target == target) else {
            continue;
        };
        let path: Vec<String> = group
            .curve
            .iter()
            .filter(|point| point[0] >= 50.0 && point[1] > 0.0)
            .map(|point| format!("{:.1},{:.1}", x_of(point[0]), y_of(point[1])))
            .collect();
        let _ = writeln!(
            svg.0,
            r#"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="2"/>"#,
            path.join(" ")
        );
        svg.line(
            plot_left + 10.0,
            legend_y,
            plot_left + 30.0,
            legend_y,
            stroke,
        );
        svg.text(
            plot_left + 34.0,
            legend_y + 4.0,
            11.0,
            "start",
            &format!("{target} (p99 {:.2} ms)", group.p99_us / 1000.0),
        );
        legend_y += 15.0;
    }
    let rate = groups
        .iter()
        .find_map(|group| group.offered_rps)
        .map(|rate| format!("open loop at {rate:.0} req/s; latency from the intended send time"))
        .unwrap_or_default();
    svg.text(left + width / 2.0, bottom + 34.0, 11.0, "middle", &rate);
}

/// The SVG document for `summary`.
pub fn render(summary: &Summary) -> String {
    let mut svg = Svg(String::new());
    let _ = writeln!(
        svg.0,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        svg.0,
        r##"<defs><pattern id="{KERNEL_HATCH}" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="#ffffff" stroke-width="2.5" stroke-opacity="0.85"/></pattern></defs>"##
    );
    svg.rect(0.0, 0.0, WIDTH, HEIGHT, "#ffffff", 1.0);
    svg.text(
        WIDTH / 2.0,
        24.0,
        17.0,
        "middle",
        &format!(
            "keygate side by side with nginx and HAProxy — medians over rounds; {}",
            summary.machine
        ),
    );
    let panel = WIDTH / 3.0;
    bars(
        &mut svg,
        10.0,
        panel - 20.0,
        "Requests/s at saturation (closed loop)",
        &groups(summary, SATURATION),
        |group| Some(Bar::plain(group.rps)),
        |value| format!("{:.0}k", value / 1000.0),
    );
    let fixed = groups(summary, FIXED_RATE);
    let rate = fixed
        .iter()
        .find_map(|group| group.offered_rps)
        .unwrap_or(0.0);
    bars(
        &mut svg,
        panel + 10.0,
        panel - 20.0,
        &format!("Process CPU µs per request at {rate:.0} req/s"),
        &fixed,
        |group| {
            group.cpu_us_per_request.map(|total| Bar {
                total,
                split: group
                    .cpu_user_us_per_request
                    .zip(group.cpu_kernel_us_per_request),
            })
        },
        |value| format!("{value:.1}"),
    );
    let half: Vec<&Group> = groups(summary, HALF_PEAK)
        .into_iter()
        .filter(|group| group.mode == "pinned")
        .collect();
    curves(
        &mut svg,
        2.0 * panel + 10.0,
        panel - 20.0,
        "Latency at half of peak rate (pinned)",
        &half,
    );
    let verdicts: Vec<String> = summary
        .targets
        .iter()
        .map(|check| {
            format!(
                "{} {}: {:.3}",
                if check.met { "✔" } else { "✘" },
                check.target,
                check.measured
            )
        })
        .collect();
    let mut y = HEIGHT - 52.0;
    for pair in verdicts.chunks(3) {
        svg.text(20.0, y, 11.0, "start", &pair.join("   |   "));
        y += 16.0;
    }
    svg.0.push_str("</svg>\n");
    svg.0
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn group(phase: &str, target: &str, cpu: Option<(f64, Option<(f64, f64)>)>) -> Group {
        Group {
            mode: "pinned".into(),
            phase: phase.into(),
            target: target.into(),
            rounds: 1,
            offered_rps: (phase == FIXED_RATE).then_some(8000.0),
            rps: 8000.0,
            p50_us: 100.0,
            p90_us: 150.0,
            p99_us: 300.0,
            p999_us: 500.0,
            max_us: 900.0,
            cpu_us_per_request: cpu.map(|(total, _)| total),
            cpu_utilisation: cpu.map(|_| 0.5),
            cpu_system_share: None,
            cpu_user_us_per_request: cpu.and_then(|(_, split)| split).map(|split| split.0),
            cpu_kernel_us_per_request: cpu.and_then(|(_, split)| split).map(|split| split.1),
            connects: 32,
            tls: None,
            tls_resumed: 0,
            generator_utilisation: 0.3,
            core_busy: Vec::new(),
            errors: 0,
            unsent: 0,
            codes: BTreeMap::new(),
            per_round: Vec::new(),
            curve: vec![[50.0, 100.0], [99.0, 300.0], [100.0, 900.0]],
        }
    }

    /// Every opened element is closed, in order (self-closing ones aside).
    fn assert_balanced(svg: &str) {
        let mut open: Vec<&str> = Vec::new();
        for tag in svg.split('<').skip(1) {
            let tag = &tag[..tag.find('>').expect("an unterminated tag")];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name), "</{name}> closes the wrong element");
            } else if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().expect("a tag name"));
            }
        }
        assert!(open.is_empty(), "unclosed: {open:?}");
    }

    /// The `height` of each rect of class `kernel`.
    fn kernel_heights(svg: &str) -> Vec<f64> {
        svg.lines()
            .filter(|line| line.starts_with(r#"<rect class="kernel""#))
            .map(|line| {
                let at = line.find(r#"height=""#).expect("a height") + r#"height=""#.len();
                line[at..]
                    .split('"')
                    .next()
                    .and_then(|height| height.parse().ok())
                    .expect("a number")
            })
            .collect()
    }

    #[test]
    fn cpu_bars_are_stacked_where_the_split_is_known() {
        let summary = Summary {
            machine: "test".into(),
            groups: vec![
                group(SATURATION, "keygate-key", None),
                group(FIXED_RATE, "keygate-key", Some((10.0, Some((6.0, 4.0))))),
                group(FIXED_RATE, "nginx", Some((20.0, None))),
                group(HALF_PEAK, "keygate-key", None),
            ],
            targets: Vec::new(),
            ratios: BTreeMap::new(),
            syscalls: Vec::new(),
        };
        let svg = render(&summary);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_balanced(&svg);
        assert!(svg.contains(&format!(r#"<pattern id="{KERNEL_HATCH}""#)));
        assert!(
            svg.contains("kernel (hatched, above)"),
            "the legend says which is which"
        );
        // One stacked bar (keygate-key): its kernel part is 4/10 of its height. The ceiling is
        // nice_ceiling(20 × 1.1) = 25 µs over the panel's height.
        let bar = 10.0 / 25.0 * PANEL_HEIGHT;
        let heights = kernel_heights(&svg);
        assert_eq!(heights.len(), 1, "{svg}");
        assert!((heights[0] - bar * 0.4).abs() < 0.1, "{heights:?}");

        // Without any split, the panel looks as before: no hatching, no legend for it.
        let mut plain = summary.clone();
        for group in &mut plain.groups {
            group.cpu_user_us_per_request = None;
            group.cpu_kernel_us_per_request = None;
        }
        let svg = render(&plain);
        assert_balanced(&svg);
        assert!(kernel_heights(&svg).is_empty());
        assert!(!svg.contains("kernel (hatched"));
    }
}
