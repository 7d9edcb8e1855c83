//! Reading workload edges from Prometheus: the PromQL queries and the
//! parsing of `/api/v1/query` answers (the HTTP request itself is the
//! command's, `cmd/suggest.rs`).
//!
//! ```text
//!  segwatch_workload_flows_total{src_namespace,src_workload,dst_namespace,
//!                                dst_workload,dst_port,protocol}   (one series per node)
//!    ├─ Q1: sum by (edge) (increase(...[W]))            flows in the window
//!    └─ Q2: sum by (edge) (last_over_time(...[W])       series born inside the window
//!                          unless ... offset W)          (increase() misses their first count)
//!  ─► WorkloadSample per edge, flows = max(Q1, Q2), kept when > 0
//!  segwatch_violations_total{kind,<edge labels>,...}
//!    └─ Q3: count by (kind, edge) (max_over_time(...[W]))  edges that violated
//!  ─► WorkloadSample::violation (left out unless --include-violations)
//! ```
//!
//! Why Q2: a counter series starts when its first flow is counted, at 1 or
//! more; `increase()` needs two samples and measures growth between them,
//! so an edge seen once in the window, never again, has an increase of 0.
//! A series absent at the window's start but present in it was born in it,
//! and its value is what it counted since.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::observe::WorkloadSample;

/// The metric (CONTRACT.md "Metrics").
pub const METRIC: &str = "segwatch_workload_flows_total";
/// The violations counter: an edge with a series in the window violated.
pub const VIOLATIONS: &str = "segwatch_violations_total";
/// Its labels, which make one edge.
pub const EDGE_LABELS: [&str; 6] = [
    "src_namespace",
    "src_workload",
    "dst_namespace",
    "dst_workload",
    "dst_port",
    "protocol",
];

#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("--window {0:?}: expected a Prometheus duration like 30m, 24h, 7d or 1h30m")]
    Window(String),
    #[error("Prometheus answered with an error ({kind}): {message}")]
    Api { kind: String, message: String },
    #[error("not a Prometheus query answer: {0}")]
    Format(String),
}

/// A Prometheus duration (`1h30m`, `7d`): its seconds. Units as PromQL's
/// time durations: ms, s, m, h, d, w, y.
pub fn parse_window(s: &str) -> Result<u64, PromError> {
    let err = || PromError::Window(s.to_string());
    let mut total: u64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let secs = match &rest[..unit_len] {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86_400,
            "w" => n * 7 * 86_400,
            "y" => n * 365 * 86_400,
            _ => return Err(err()),
        };
        total = total.checked_add(secs).ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    if total == 0 {
        return Err(err());
    }
    Ok(total)
}

/// The three queries for a window (seconds): flows per edge (two) and the
/// violation kinds per edge.
pub fn queries(window_secs: u64) -> [String; 3] {
    let by = EDGE_LABELS.join(",");
    let w = format!("{window_secs}s");
    [
        format!("sum by ({by}) (increase({METRIC}[{w}]))"),
        format!("sum by ({by}) (last_over_time({METRIC}[{w}]) unless {METRIC} offset {w})"),
        format!("count by (kind,{by}) (max_over_time({VIOLATIONS}[{w}]))"),
    ]
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    metric: BTreeMap<String, String>,
    /// `[<unix time>, "<value>"]`
    value: (serde_json::Value, String),
}

/// Parses one `/api/v1/query` answer (an instant vector) into
/// edge -> value.
pub fn parse_answer(body: &str) -> Result<BTreeMap<[String; 6], f64>, PromError> {
    Ok(parse_series(body)?
        .into_iter()
        .map(|(labels, v)| {
            (
                EDGE_LABELS.map(|l| labels.get(l).cloned().unwrap_or_default()),
                v,
            )
        })
        .collect())
}

/// Parses the answer of the violations query into edge -> violation kind
/// (the first kind by name when an edge has several).
pub fn parse_violations(body: &str) -> Result<BTreeMap<[String; 6], String>, PromError> {
    let mut out: BTreeMap<[String; 6], String> = BTreeMap::new();
    for (labels, _) in parse_series(body)? {
        let edge = EDGE_LABELS.map(|l| labels.get(l).cloned().unwrap_or_default());
        let kind = labels.get("kind").cloned().unwrap_or_default();
        let e = out.entry(edge).or_insert_with(|| kind.clone());
        if kind < *e {
            *e = kind;
        }
    }
    Ok(out)
}

/// One instant-vector answer: each series' labels and value.
fn parse_series(body: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>, PromError> {
    let a: Answer = serde_json::from_str(body).map_err(|e| PromError::Format(e.to_string()))?;
    if a.status != "success" {
        return Err(PromError::Api {
            kind: a.error_type.unwrap_or_else(|| a.status.clone()),
            message: a.error.unwrap_or_default(),
        });
    }
    let data = a
        .data
        .ok_or_else(|| PromError::Format("no data in a successful answer".to_string()))?;
    if data.result_type != "vector" {
        return Err(PromError::Format(format!(
            "expected an instant vector, got {}",
            data.result_type
        )));
    }
    let mut out = Vec::with_capacity(data.result.len());
    for s in data.result {
        let v: f64 = s
            .value
            .1
            .parse()
            .map_err(|_| PromError::Format(format!("sample value {:?}", s.value.1)))?;
        out.push((s.metric, v));
    }
    Ok(out)
}

/// Merges the answers of the two queries into samples (flows > 0).
pub fn samples(
    increase: &BTreeMap<[String; 6], f64>,
    born: &BTreeMap<[String; 6], f64>,
    violations: &BTreeMap<[String; 6], String>,
) -> Vec<WorkloadSample> {
    let mut all: BTreeMap<&[String; 6], f64> = BTreeMap::new();
    for (k, v) in increase.iter().chain(born) {
        if v.is_finite() {
            let e = all.entry(k).or_insert(0.0);
            *e = e.max(*v);
        }
    }
    all.into_iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| WorkloadSample {
            src_namespace: k[0].clone(),
            src_workload: k[1].clone(),
            dst_namespace: k[2].clone(),
            dst_workload: k[3].clone(),
            dst_port: k[4].clone(),
            protocol: k[5].clone(),
            flows: v,
            violation: violations.get(k).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_like_promql() {
        assert_eq!(parse_window("24h").unwrap(), 86_400);
        assert_eq!(parse_window("1h30m").unwrap(), 5_400);
        assert_eq!(parse_window("7d").unwrap(), 604_800);
        for bad in ["", "h", "24", "1x", "0s", "-1h"] {
            assert!(parse_window(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn answers_merge_increase_and_born_series() {
        let inc = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"src_namespace":"shop","src_workload":"Deployment/web","dst_namespace":"api","dst_workload":"StatefulSet/backend","dst_port":"8080","protocol":"TCP"},"value":[1700000000,"2.5"]},
            {"metric":{"src_namespace":"shop","src_workload":"Deployment/web","dst_namespace":"","dst_workload":"external","dst_port":"443","protocol":"TCP"},"value":[1700000000,"0"]}]}}"#;
        let born = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"src_namespace":"shop","src_workload":"Deployment/web","dst_namespace":"","dst_workload":"external","dst_port":"443","protocol":"TCP"},"value":[1700000000,"1"]}]}}"#;
        let s = samples(
            &parse_answer(inc).unwrap(),
            &parse_answer(born).unwrap(),
            &BTreeMap::new(),
        );
        assert_eq!(
            s.len(),
            2,
            "an edge whose series was born in the window counts: {s:?}"
        );
        assert_eq!(s[0].dst_workload, "external");
        assert_eq!(s[0].flows, 1.0);
        assert_eq!(s[1].flows, 2.5);
    }

    #[test]
    fn api_errors_are_reported() {
        let e = parse_answer(r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Prometheus answered with an error (bad_data): parse error"
        );
        assert!(parse_answer("<html>").is_err());
    }
}
