//! What the lab prints: progress lines, the table of flows with verdicts,
//! the violations, and the alerts the shipped Prometheus rules would fire.
//! Colour only on a terminal.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::traffic::Done;
use crate::world::World;

/// ANSI styling, or nothing when output is not a terminal.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    pub colour: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    pub fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
    pub fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }
    pub fn red(&self, s: &str) -> String {
        self.paint("1;31", s)
    }
    pub fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }
    pub fn cyan(&self, s: &str) -> String {
        self.paint("36", s)
    }
}

/// One row of the flow table: a connection, with the reports segwatch
/// wrote for it (a connection through a Service shows up once on the
/// client's veth with the ClusterIP and once on the server's with the pod).
#[derive(Clone, Debug)]
pub struct Row {
    pub step: Option<usize>,
    pub protocol: String,
    pub ip_version: u64,
    pub from: String,
    pub to: String,
    pub port: String,
    pub state: String,
    pub bytes: (u64, u64),
    pub verdict: String,
    pub kinds: Vec<String>,
    /// ICMPv6 neighbour discovery or multicast listener messages: link
    /// housekeeping, not traffic anybody opened on purpose.
    pub housekeeping: bool,
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// How segwatch names an endpoint, falling back to the bare address when it
/// attributed nothing (the lab never fills in names segwatch did not give).
pub fn endpoint(e: &Value) -> String {
    let ip = s(e, "ip");
    match s(e, "kind") {
        "pod" if !s(e, "pod").is_empty() => format!("{}/{}", s(e, "namespace"), s(e, "pod")),
        "service" if e.get("service").is_some() => format!("svc {}", service_id(&e["service"])),
        "node" => format!(
            "node {}",
            if s(e, "node").is_empty() {
                ip
            } else {
                s(e, "node")
            }
        ),
        "metadata" => format!("metadata API {ip}"),
        "external" => format!("external {ip}"),
        _ => ip.to_string(),
    }
}

/// `namespace/name` of a `service` field (an object; older flow logs wrote
/// the string).
fn service_id(v: &Value) -> String {
    match v.as_str() {
        Some(id) => id.to_string(),
        None => format!("{}/{}", s(v, "namespace"), s(v, "name")),
    }
}

fn key(r: &Value) -> (String, String, u64) {
    (
        s(r, "protocol").to_string(),
        s(&r["src"], "ip").to_string(),
        r["src"]["port"].as_u64().unwrap_or(0),
    )
}

fn kinds(r: &Value) -> Vec<String> {
    r["violations"]
        .as_array()
        .map(|a| a.iter().map(|v| s(v, "kind").to_string()).collect())
        .unwrap_or_default()
}

/// Groups the flow log into rows (one per connection) and links each to the
/// lab step that made it (by source address and port).
pub fn rows(_world: &World, reports: &[Value], done: &[Done]) -> Vec<Row> {
    let mut by_conn: BTreeMap<(String, String, u64), Vec<&Value>> = BTreeMap::new();
    let mut order = Vec::new();
    for r in reports {
        let k = key(r);
        if !by_conn.contains_key(&k) {
            order.push(k.clone());
        }
        by_conn.entry(k).or_default().push(r);
    }
    let mut rows = Vec::new();
    for k in order {
        let rs = &by_conn[&k];
        // One report per connection: a Service connection names the
        // Service the client dialled and the backend the kernel chose.
        let first = rs[0];
        let dst = &first["dst"];
        let mut to = endpoint(dst);
        let mut dsts: Vec<String> = rs.iter().map(|r| s(&r["dst"], "ip").to_string()).collect();
        let mut port = dst["port"]
            .as_u64()
            .map(|p| p.to_string())
            .unwrap_or_default();
        if let Some(svc) = dst.get("service").filter(|_| s(dst, "kind") == "pod") {
            // The backend pod, without repeating the Service's namespace.
            let name = if s(dst, "namespace") == s(svc, "namespace") {
                s(dst, "pod").to_string()
            } else {
                endpoint(dst)
            };
            to = format!("svc {} → {name}", service_id(svc));
            dsts.push(s(svc, "ip").to_string());
            if let Some(sp) = svc["port"].as_u64() {
                if sp.to_string() != port {
                    port = format!("{sp}→{port}");
                }
            }
        }
        let mut all_kinds: Vec<String> = rs.iter().flat_map(|r| kinds(r)).collect();
        all_kinds.sort();
        all_kinds.dedup();
        let verdicts: Vec<&str> = rs.iter().map(|r| s(r, "verdict")).collect();
        let verdict = if verdicts.contains(&"violation") {
            "violation"
        } else if verdicts.contains(&"allowed") {
            "allowed"
        } else {
            "unjudged"
        };
        let (src_ip, src_port) = (k.1.parse::<IpAddr>().ok(), k.2 as u16);
        let step = done.iter().position(|d| {
            Some(d.src.ip()) == src_ip
                && d.src.port() == src_port
                && dsts.iter().any(|ip| ip.parse().ok() == Some(d.dst.ip()))
        });
        let state = first["tcp"]["state"].as_str().unwrap_or("").to_string();
        // Counts: the interval reports of one connection on one interface
        // add up; the second interface saw the same packets.
        let iface = s(first, "interface");
        let bytes = rs
            .iter()
            .filter(|r| s(r, "interface") == iface)
            .fold((0, 0), |(a, b), r| {
                (
                    a + r["bytes"]["sent"].as_u64().unwrap_or(0),
                    b + r["bytes"]["received"].as_u64().unwrap_or(0),
                )
            });
        rows.push(Row {
            step: step.map(|i| i + 1),
            protocol: k.0.clone(),
            ip_version: first["ip_version"].as_u64().unwrap_or(0),
            from: endpoint(&first["src"]),
            to,
            port,
            state,
            bytes,
            verdict: verdict.to_string(),
            kinds: all_kinds,
            // RFC 4861 (types 133-137) and MLD (RFC 2710: 130-132, RFC 3810: 143).
            housekeeping: k.0 == "ICMPv6"
                && matches!(first["icmp"]["type"].as_u64(), Some(130..=137 | 143)),
        });
    }
    // In the order of the story; what no step made goes last.
    rows.sort_by_key(|r| r.step.unwrap_or(usize::MAX));
    rows
}

/// The flow table, aligned, with coloured verdicts.
pub fn table(rows: &[Row], st: Style) -> String {
    let head = [
        "#",
        "PROTO",
        "FROM",
        "TO",
        "PORT",
        "TCP",
        "BYTES →/←",
        "VERDICT",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let verdict = if r.kinds.is_empty() {
                r.verdict.clone()
            } else {
                format!("{}: {}", r.verdict, r.kinds.join(", "))
            };
            [
                r.step.map(|n| n.to_string()).unwrap_or_else(|| "·".into()),
                format!("{}/v{}", r.protocol, r.ip_version),
                r.from.clone(),
                r.to.clone(),
                r.port.clone(),
                r.state.clone(),
                format!("{}/{}", r.bytes.0, r.bytes.1),
                verdict,
            ]
        })
        .collect();
    let mut width = head.map(|h| h.chars().count());
    for c in &cells {
        for (i, cell) in c.iter().enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
    let mut out = String::new();
    let line: Vec<String> = head
        .iter()
        .enumerate()
        .map(|(i, h)| pad(h, width[i]))
        .collect();
    out.push_str(&format!("  {}\n", st.bold(line.join("  ").trim_end())));
    for (c, r) in cells.iter().zip(rows) {
        let mut parts: Vec<String> = c
            .iter()
            .enumerate()
            .map(|(i, v)| pad(v, width[i]))
            .collect();
        parts[7] = match r.verdict.as_str() {
            "violation" => st.red(c[7].as_str()),
            "allowed" => st.green(c[7].as_str()),
            _ => st.yellow(c[7].as_str()),
        };
        parts[0] = st.dim(&parts[0]);
        out.push_str(&format!("  {}\n", parts.join("  ").trim_end()));
    }
    out
}

/// Distinct violations from the flow log: kind, source, destination, port,
/// with how many reports carried each and the daemon's reason.
pub fn violations(reports: &[Value]) -> Vec<(String, String, String, String, usize)> {
    let mut m: BTreeMap<(String, String, String, String), (String, usize)> = BTreeMap::new();
    for r in reports {
        for v in r["violations"].as_array().into_iter().flatten() {
            let src = format!("{} ({})", endpoint(&r["src"]), s(&r["src"], "workload"));
            let dst = endpoint(&r["dst"]);
            let port = format!(
                "{}/{}",
                r["dst"]["port"].as_u64().unwrap_or(0),
                s(r, "protocol")
            );
            let e = m
                .entry((s(v, "kind").to_string(), src, dst, port))
                .or_insert_with(|| (s(v, "reason").to_string(), 0));
            e.1 += 1;
        }
    }
    m.into_iter()
        .map(|((k, src, dst, port), (reason, n))| (k, format!("{src} → {dst}"), port, reason, n))
        .collect()
}

/// One sample of a Prometheus text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (comments skipped, label values
/// unescaped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => (name.to_string(), parse_labels(rest.trim_end_matches('}'))),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim_start_matches(',')
            .trim()
            .to_string();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => val.push('\n'),
                    Some(o) => val.push(o),
                    None => break,
                },
                '"' => break,
                o => val.push(o),
            }
        }
        m.insert(key, val);
    }
    m
}

/// An alert the shipped rules would fire on this daemon's metrics.
#[derive(Clone, Debug)]
pub struct Alert {
    pub name: String,
    pub severity: String,
    pub summary: String,
    pub labels: BTreeMap<String, String>,
}

/// Evaluates the rules of `rules_yaml` that have the shape segwatch's
/// violation alerts have — `sum by (...) (<new series> or increase(...)) > 0`
/// over `segwatch_violations_total{kind="..."}` — and plain
/// `metric <op> number` comparisons, on one scrape of a daemon that started
/// moments ago (so every violation series is new, exactly what the "unless
/// ... offset 10m" arm catches). Returns the alerts that fire and the names
/// of rules this evaluator cannot judge from one scrape.
pub fn evaluate_rules(rules_yaml: &str, metrics: &str) -> Result<(Vec<Alert>, Vec<String>)> {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(rules_yaml).context("the alert rules are not valid YAML")?;
    let samples = parse_metrics(metrics);
    let mut fired = Vec::new();
    let mut skipped = Vec::new();
    let groups = doc["groups"].as_sequence().cloned().unwrap_or_default();
    for g in &groups {
        for r in g["rules"].as_sequence().into_iter().flatten() {
            let Some(name) = r["alert"].as_str() else {
                continue;
            };
            let expr = r["expr"].as_str().unwrap_or("");
            let severity = r["labels"]["severity"].as_str().unwrap_or("").to_string();
            let summary_t = r["annotations"]["summary"].as_str().unwrap_or("");
            let has_for = r.get("for").is_some();
            match eval_expr(expr, &samples) {
                Some(groups) => {
                    for (labels, value) in groups {
                        if has_for {
                            // A `for:` clause means pending first; say so.
                            skipped.push(format!("{name} (pending: needs `for` to elapse)"));
                            break;
                        }
                        fired.push(Alert {
                            name: name.to_string(),
                            severity: severity.clone(),
                            summary: render(summary_t, &labels, value),
                            labels,
                        });
                    }
                }
                None => skipped.push(name.to_string()),
            }
        }
    }
    Ok((fired, skipped))
}

/// Fires for each `by` group; None when the expression is of a shape this
/// evaluator does not know.
fn eval_expr(expr: &str, samples: &[Sample]) -> Option<Vec<(BTreeMap<String, String>, f64)>> {
    let e: String = expr.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(rest) = e.strip_prefix("sum by (") {
        let (by, body) = rest.split_once(')')?;
        let by: Vec<&str> = by.split(',').map(str::trim).collect();
        // The selector the new-series arm uses.
        let sel_start = body.find("segwatch_")?;
        let sel = &body[sel_start..];
        let (metric, matchers) = selector(sel)?;
        if !body.trim_end().ends_with("> 0") || !body.contains("unless") {
            return None;
        }
        let mut groups: BTreeMap<BTreeMap<String, String>, f64> = BTreeMap::new();
        for smp in samples.iter().filter(|x| x.name == metric && x.value > 0.0) {
            if matchers.iter().all(|(k, v)| smp.labels.get(k) == Some(v)) {
                let key = by
                    .iter()
                    .map(|k| {
                        (
                            k.to_string(),
                            smp.labels.get(*k).cloned().unwrap_or_default(),
                        )
                    })
                    .collect();
                *groups.entry(key).or_default() += smp.value;
            }
        }
        return Some(groups.into_iter().collect());
    }
    // `metric{...} OP number`
    let parts: Vec<&str> = e.rsplitn(3, ' ').collect();
    if parts.len() == 3 {
        let (num, op, lhs) = (parts[0], parts[1], parts[2]);
        let n: f64 = num.parse().ok()?;
        if lhs.contains('(') || lhs.contains(' ') {
            return None;
        }
        let (metric, matchers) = selector(lhs)?;
        let cmp = |v: f64| match op {
            "==" => Some(v == n),
            "!=" => Some(v != n),
            ">" => Some(v > n),
            "<" => Some(v < n),
            ">=" => Some(v >= n),
            "<=" => Some(v <= n),
            _ => None,
        };
        cmp(0.0)?;
        let mut out = Vec::new();
        for smp in samples.iter().filter(|x| x.name == metric) {
            if matchers.iter().all(|(k, v)| smp.labels.get(k) == Some(v)) && cmp(smp.value)? {
                out.push((smp.labels.clone(), smp.value));
            }
        }
        return Some(out);
    }
    None
}

/// `name{k="v",...}` → (name, equality matchers).
fn selector(s: &str) -> Option<(String, Vec<(String, String)>)> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    let name = s[..end].to_string();
    if name.is_empty() {
        return None;
    }
    let rest = &s[end..];
    let mut matchers = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let inner = &inner[..inner.find('}')?];
        for m in inner.split(',').filter(|m| !m.trim().is_empty()) {
            let (k, v) = m.split_once('=')?;
            if k.ends_with('!') || v.starts_with('~') {
                return None;
            }
            matchers.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
        }
    }
    Some((name, matchers))
}

/// Fills `{{ $labels.x }}` and `{{ $value }}` into an annotation template.
fn render(t: &str, labels: &BTreeMap<String, String>, value: f64) -> String {
    let mut out = String::new();
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find("}}") else {
            break;
        };
        let expr = rest[i + 2..i + j].trim();
        if let Some(l) = expr.strip_prefix("$labels.") {
            out.push_str(labels.get(l).map(String::as_str).unwrap_or(""));
        } else if expr == "$value" {
            out.push_str(&value.to_string());
        }
        rest = &rest[i + j + 2..];
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
groups:
  - name: seg
    rules:
      - alert: SegwatchHostAccess
        expr: |
          sum by (src_namespace, src_workload, dst_workload, dst_port, protocol) (
              (segwatch_violations_total{kind="host_access"} unless segwatch_violations_total{kind="host_access"} offset 10m)
            or
              increase(segwatch_violations_total{kind="host_access"}[10m])
          ) > 0
        labels: {severity: critical}
        annotations:
          summary: >-
            {{ $labels.src_namespace }}/{{ $labels.src_workload }} connected to port
            {{ $labels.dst_port }}/{{ $labels.protocol }} of {{ $labels.dst_workload }}.
      - alert: NoInterfaces
        expr: segwatch_interfaces_attached == 0
        labels: {severity: warning}
      - alert: Down
        expr: up{job="segwatch"} == 0
        for: 5m
      - alert: Lost
        expr: increase(segwatch_events_lost_total[10m]) > 0
"#;

    const METRICS: &str = r#"# HELP segwatch_violations_total x
# TYPE segwatch_violations_total counter
segwatch_violations_total{kind="host_access",src_namespace="analytics",src_workload="Deployment/reporter",src_service_account="default",dst_namespace="",dst_workload="node/n1",dst_port="22",protocol="TCP"} 1
segwatch_violations_total{kind="host_access",src_namespace="analytics",src_workload="Deployment/reporter",src_service_account="default",dst_namespace="",dst_workload="node/n1",dst_port="2379",protocol="TCP"} 2
segwatch_violations_total{kind="metadata_api",src_namespace="analytics",src_workload="Deployment/reporter",src_service_account="default",dst_namespace="",dst_workload="metadata-api",dst_port="80",protocol="TCP"} 1
segwatch_interfaces_attached 8
"#;

    #[test]
    fn violation_rules_fire_once_per_group_with_rendered_summaries() {
        let (fired, skipped) = evaluate_rules(RULES, METRICS).expect("valid rules");
        let names: Vec<&str> = fired.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["SegwatchHostAccess", "SegwatchHostAccess"]);
        assert_eq!(
            fired[0].summary,
            "analytics/Deployment/reporter connected to port 22/TCP of node/n1."
        );
        assert_eq!(fired[0].severity, "critical");
        assert_eq!(
            skipped,
            ["Lost"],
            "increase() is not judged from one scrape; `up` has no sample here, so Down is silent"
        );
    }

    #[test]
    fn comparisons_fire_only_when_true() {
        let m = "segwatch_interfaces_attached 0\n";
        let (fired, _) = evaluate_rules(RULES, m).expect("valid rules");
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].name, "NoInterfaces");
    }

    #[test]
    fn label_values_are_unescaped() {
        let s = parse_metrics(r#"m{a="x\"y",b="c\\d"} 3"#);
        assert_eq!(s[0].labels["a"], "x\"y");
        assert_eq!(s[0].labels["b"], "c\\d");
        assert_eq!(s[0].value, 3.0);
    }
}
