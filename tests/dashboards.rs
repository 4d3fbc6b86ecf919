//! The Grafana dashboard (deploy/grafana/keygate.json) and the Prometheus alert rules
//! (deploy/prometheus/keygate-alerts.yaml) name only metrics that exist: every metric name in
//! their PromQL is found on the `/metrics` page of a live control plane or gateway (real
//! processes), so renaming a metric fails here. The Traefik and Gateway API examples are checked
//! for shape (no YAML parser in the tree) and for the identity headers a live gateway forwards.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::processes::{
    ControlPlaneProcess, GatewayProcess, Tokens, eventually_within, keygate_cli, sqlite_url,
    start_echo_upstream,
};
use support::{DEADLINE, expect_verdict, get_with_key, send};

const DASHBOARD: &str = "deploy/grafana/keygate.json";
const ALERTS: &str = "deploy/prometheus/keygate-alerts.yaml";
const TRAEFIK: &str = "deploy/examples/traefik/dynamic.yaml";
const GATEWAY_API: &str = "deploy/examples/gateway-api/httproute.yaml";

fn repo_file(path: &str) -> String {
    let full: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|error| panic!("{}: {error}", full.display()))
}

/// PromQL keywords that look like identifiers but name no metric, aggregation operators
/// included (`sum by (le) (…)`: not directly followed by `(`).
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names in one PromQL expression: identifiers outside strings, label matchers
/// (`{…}`), ranges (`[…]`) and label lists (`by (…)`), not followed by `(` (a function), not
/// a keyword, not a Grafana variable (`$gateway`) and not a number.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_next_parens = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            '(' if skip_next_parens => {
                skip_next_parens = false;
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let is_call = chars.get(next) == Some(&'(');
                if LABEL_LISTS.contains(&word.as_str()) {
                    skip_next_parens = true;
                } else if !is_call && !KEYWORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The PromQL of every panel target (`expr`) and template variable query (`definition`).
fn dashboard_expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    // Grafana's `label_values(metric, label)`: the metric.
                    ("definition", Value::String(query)) => {
                        let inner = query
                            .strip_prefix("label_values(")
                            .and_then(|inner| inner.strip_suffix(')'))
                            .unwrap_or(query);
                        let metric = inner.rsplit_once(',').map_or(inner, |(metric, _)| metric);
                        out.push(metric.to_owned());
                    }
                    _ => dashboard_expressions(value, out),
                }
            }
        }
        Value::Array(values) => values
            .iter()
            .for_each(|value| dashboard_expressions(value, out)),
        _ => {}
    }
}

/// The `expr:` values of a rules file, plain (`expr: a > 1`) or block scalars (`expr: |`
/// followed by more-indented lines).
fn rule_expressions(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if !rest.starts_with(['|', '>']) {
            out.push(rest.trim_matches(['"', '\'']).to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let block: Vec<&str> = lines[index + 1..]
            .iter()
            .take_while(|next| {
                next.trim().is_empty() || next.len() - next.trim_start().len() > indent
            })
            .map(|next| next.trim())
            .collect();
        out.push(block.join(" "));
    }
    out
}

/// The sample names on a Prometheus text page (`name{labels} value` or `name value`).
fn sample_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

async fn scrape(url: &str) -> String {
    let reply = send("GET", url, &[], b"").await;
    assert_eq!(reply.status, 200, "{url}");
    String::from_utf8(reply.body.to_vec()).unwrap()
}

/// Every metric the dashboard and the rules name, with where it is named.
fn used_metrics() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(&repo_file(DASHBOARD)).unwrap();
    let mut exprs = Vec::new();
    dashboard_expressions(&dashboard, &mut exprs);
    let dashboard_exprs = exprs.len();
    exprs.extend(rule_expressions(&repo_file(ALERTS)));
    assert!(dashboard_exprs >= 6, "dashboard expressions: {exprs:?}");
    assert!(
        exprs.len() >= dashboard_exprs + 4,
        "rule expressions: {exprs:?}"
    );
    let mut used = Vec::new();
    for expr in exprs {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "no metric in {expr:?}");
        used.extend(names.into_iter().map(|name| (name, expr.clone())));
    }
    used
}

#[test]
fn the_tokenizer_finds_metric_names_and_nothing_else() {
    let expr = "histogram_quantile(0.99, sum by (le, instance) (rate(\
                keygate_cp_propagation_seconds_bucket{job=\"cp\", code=~'A|B'}[5m]))) > 1";
    assert_eq!(
        metric_names(expr),
        BTreeSet::from(["keygate_cp_propagation_seconds_bucket".to_owned()])
    );
    let expr = "keygate_staleness_seconds{instance=~\"$gateway\"} > 0.5 * \
                on (instance) keygate_propagation_bound_seconds offset 1m";
    assert_eq!(
        metric_names(expr),
        BTreeSet::from([
            "keygate_propagation_bound_seconds".to_owned(),
            "keygate_staleness_seconds".to_owned(),
        ])
    );
    assert_eq!(
        metric_names("sum(rate(x[$__rate_interval])) / 1e3"),
        BTreeSet::from(["x".to_owned()])
    );
    let rules = "      - alert: A\n        expr: |\n          a_total\n            > b\n        for: 1m\n      - alert: B\n        expr: c == 0\n";
    assert_eq!(rule_expressions(rules), vec!["a_total > b", "c == 0"]);
}

#[test]
fn the_dashboard_and_rules_cover_what_operators_watch() {
    let dashboard: Value = serde_json::from_str(&repo_file(DASHBOARD)).unwrap();
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|panel| panel["title"].as_str())
        .collect();
    for wanted in [
        "Verifications by code",
        "Verification latency p50 / p99",
        "Staleness per gateway",
        "Propagation time p50 / p99",
        "Miss lookups",
        "Upstream errors",
    ] {
        assert!(titles.contains(&wanted), "{wanted:?} in {titles:?}");
    }
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|variable| variable["type"] == "datasource"
                && variable["query"] == "prometheus"
                && variable["name"] == "datasource"),
        "a Prometheus datasource variable"
    );
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
    }

    let rules = repo_file(ALERTS);
    for alert in [
        "KeygateGatewayStale",
        "KeygateStaleResponses",
        "KeygatePropagationSlow",
        "KeygateControlPlaneWithoutGateways",
    ] {
        assert!(
            rules.contains(&format!("- alert: {alert}\n")),
            "{alert} in {ALERTS}"
        );
    }
    assert!(rules.contains(r#"keygate_verifications_total{code="STALE"}"#));
}

/// A YAML shape check without a parser: spaces only, two-space indentation steps, and every
/// line a comment, `key:`, `key: value`, `- item` or inside a block scalar (`key: >-`).
fn assert_plain_yaml(path: &str) -> String {
    let text = repo_file(path);
    let mut indents = vec![0];
    let mut block_scalar_above: Option<usize> = None;
    for (number, line) in text.lines().enumerate() {
        let at = format!("{path}:{}: {line:?}", number + 1);
        assert!(!line.contains('\t'), "tab at {at}");
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        if block_scalar_above.is_some_and(|above| indent > above) {
            continue;
        }
        block_scalar_above = ["|", "|-", ">", ">-"]
            .iter()
            .any(|style| content.ends_with(&format!(": {style}")))
            .then_some(indent);
        assert_eq!(indent % 2, 0, "odd indentation at {at}");
        let deepest = *indents.last().unwrap();
        assert!(indent <= deepest + 4, "jump in indentation at {at}");
        indents.retain(|&open| open < indent);
        indents.push(indent);
        let item = content.strip_prefix("- ").unwrap_or(content);
        let key = item.split(": ").next().unwrap().trim_end_matches(':');
        let is_pair = item.ends_with(':') || item.contains(": ");
        let is_scalar = content.starts_with("- ") && !item.contains(": ");
        assert!(
            is_scalar || (is_pair && !key.is_empty() && !key.contains(' ')),
            "not key: value or - item at {at}"
        );
    }
    text
}

#[test]
fn the_proxy_examples_have_the_documented_shape() {
    let traefik = assert_plain_yaml(TRAEFIK);
    for line in [
        "forwardAuth:",
        "address: http://keygate:8080/_keygate/v1/authz",
        "trustForwardHeader: true",
        "authResponseHeaders:",
        "- keygate-auth",
    ] {
        assert!(traefik.contains(line), "{line:?} in {TRAEFIK}");
    }
    let route = assert_plain_yaml(GATEWAY_API);
    for line in [
        "apiVersion: gateway.networking.k8s.io/v1",
        "kind: HTTPRoute",
        "- type: ExternalAuth",
        "externalAuth:",
        "protocol: HTTP",
        "backendRef:",
        "path: /_keygate/v1/authz",
        "allowedHeaders:",
        "allowedResponseHeaders:",
    ] {
        assert!(route.contains(line), "{line:?} in {GATEWAY_API}");
    }
    assert_plain_yaml(ALERTS);
}

/// The `- item` lines under `key:` (up to the next line that is not an item).
fn list_after(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .skip_while(|line| line.trim() != key)
        .skip(1)
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .map_while(|line| line.strip_prefix("- "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_exists_on_a_live_deployment() {
    let used = used_metrics();
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::random();
    let control_plane =
        ControlPlaneProcess::start("cp", &sqlite_url(dir.path()), &tokens, "127.0.0.1:0").await;
    let cp_metrics = format!("{}/metrics", control_plane.http);
    // Before any gateway: the alert on connected gateways needs a 0, not a missing series.
    let cp = &cp_metrics;
    eventually_within(DEADLINE, "connected gateways 0", move || async move {
        scrape(cp).await.lines().any(|line| {
            line.strip_prefix("keygate_cp_connected_gateways ")
                .and_then(|value| value.parse::<f64>().ok())
                == Some(0.0)
        })
    })
    .await;

    let (upstream, upstream_url) = start_echo_upstream().await;
    let gateway = GatewayProcess::start(
        "gw-dash",
        &upstream_url,
        &[&control_plane.grpc],
        &tokens,
        &[],
    )
    .await;
    let created = keygate_cli(
        &control_plane.grpc,
        &tokens,
        &["keys", "create", "--owner", "dashboards"],
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let key = created.json["key"].as_str().unwrap();
    expect_verdict(&gateway.url("/"), key, 200, None).await;
    expect_verdict(&gateway.url("/"), "not-a-key", 401, Some("MALFORMED")).await;

    // The identity headers the examples pass on are the ones the gateway sends upstream.
    let echoed = get_with_key(&gateway.url("/"), key).await.json();
    let sent: BTreeSet<String> = echoed["headers"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|name| name.starts_with("x-keygate-"))
        .cloned()
        .collect();
    assert!(sent.contains("x-keygate-owner"), "{echoed}");
    let traefik = list_after(&repo_file(TRAEFIK), "authResponseHeaders:");
    let route = list_after(&repo_file(GATEWAY_API), "allowedResponseHeaders:");
    for header in &sent {
        assert!(
            traefik.contains(header),
            "{header} in {TRAEFIK}: {traefik:?}"
        );
        assert!(
            route.contains(header),
            "{header} in {GATEWAY_API}: {route:?}"
        );
    }

    // The key's creation was acked: the propagation histogram has a sample.
    eventually_within(DEADLINE, "a propagation sample", move || async move {
        scrape(cp)
            .await
            .contains("keygate_cp_propagation_seconds_count")
    })
    .await;

    // An upstream that is gone is counted as an upstream error.
    assert_eq!(
        gateway
            .metric("keygate_upstream_errors_total{reason=\"unavailable\"}")
            .await,
        Some(0.0)
    );
    upstream.terminate().await;
    expect_verdict(&gateway.url("/"), key, 502, Some("UPSTREAM_UNAVAILABLE")).await;
    let gw = &gateway;
    eventually_within(DEADLINE, "an upstream error counted", move || async move {
        gw.metric("keygate_upstream_errors_total{reason=\"unavailable\"}")
            .await
            .is_some_and(|count| count >= 1.0)
    })
    .await;
    assert_eq!(
        gateway.metric("keygate_propagation_bound_seconds").await,
        Some(60.0)
    );

    let mut present = sample_names(&scrape(&cp_metrics).await);
    present.extend(sample_names(
        &scrape(&format!("{}/metrics", gateway.admin)).await,
    ));
    let missing: Vec<String> = used
        .iter()
        .filter(|(name, _)| !present.contains(name))
        .map(|(name, expr)| format!("{name} (in {expr})"))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics the dashboard or alerts use but no live /metrics page has:\n{}\npresent: {present:?}",
        missing.join("\n")
    );

    gateway.process.terminate().await;
    control_plane.process.terminate().await;
}
