//! deploy/examples/otel-collector-loki.yaml, checked for structure: no
//! OpenTelemetry Collector binary is available to this build (Debian,
//! PyPI and crates.io ship none; `otelcol-contrib validate` would be the
//! full check), so this test checks what the collector's config loader
//! checks first: only the top-level sections it knows, every component a
//! pipeline names defined in its section with a type the Collector
//! (contrib) distribution has, every defined component used, and the
//! settings segwatch relies on (OTLP on the ports the agent's
//! `--otlp-endpoint` uses, memory_limiter first, Loki's OTLP endpoint).

use std::collections::BTreeSet;

use serde_yaml_ng::Value;

fn config() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/otel-collector-loki.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: not YAML: {e}"))
}

/// `type[/name]` → type.
fn kind(id: &str) -> &str {
    id.split('/').next().unwrap_or(id)
}

fn names(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("a list of component ids, got {v:?}"))
        .iter()
        .map(|x| x.as_str().expect("component id").to_owned())
        .collect()
}

#[test]
fn the_collector_example_is_a_complete_otlp_to_loki_logs_pipeline() {
    let c = config();
    let top: BTreeSet<&str> = c
        .as_mapping()
        .expect("a mapping")
        .keys()
        .map(|k| k.as_str().expect("key"))
        .collect();
    let known: BTreeSet<&str> = [
        "receivers",
        "processors",
        "exporters",
        "extensions",
        "connectors",
        "service",
    ]
    .into_iter()
    .collect();
    assert!(top.is_subset(&known), "unknown top-level sections: {top:?}");

    // Component types of the Collector's core and contrib distributions
    // that this example may use.
    let types = [
        ("receivers", &["otlp"][..]),
        (
            "processors",
            &[
                "memory_limiter",
                "batch",
                "attributes",
                "resource",
                "filter",
                "transform",
            ][..],
        ),
        ("exporters", &["otlphttp", "otlp", "debug", "loki"][..]),
    ];
    let pipelines = c["service"]["pipelines"]
        .as_mapping()
        .expect("service.pipelines");
    assert!(!pipelines.is_empty(), "at least one pipeline");
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for (pname, p) in pipelines {
        let pname = pname.as_str().expect("pipeline id");
        assert_eq!(kind(pname), "logs", "segwatch sends logs: pipeline {pname}");
        for (section, allowed) in types {
            let ids = names(&p[section]);
            if section != "processors" {
                assert!(!ids.is_empty(), "pipeline {pname} has {section}");
            }
            for id in ids {
                assert!(
                    c[section].get(id.as_str()).is_some(),
                    "pipeline {pname} names {section}.{id}, which is not defined"
                );
                assert!(
                    allowed.contains(&kind(&id)),
                    "{section}.{id}: type {} is not a Collector component",
                    kind(&id)
                );
                used.insert((section.to_owned(), id));
            }
        }
        let procs = names(&p["processors"]);
        assert_eq!(
            procs.first().map(|s| kind(s)),
            Some("memory_limiter"),
            "memory_limiter comes first in a pipeline (the Collector's advice)"
        );
    }
    for (section, _) in types {
        for id in c[section]
            .as_mapping()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str().expect("id"))
        {
            assert!(
                used.contains(&(section.to_owned(), id.to_owned())),
                "{section}.{id} is defined but no pipeline uses it"
            );
        }
    }

    // OTLP on the ports the agent's --otlp-endpoint uses (gRPC 4317, HTTP 4318).
    let otlp = &c["receivers"]["otlp"]["protocols"];
    let port = |v: &Value| {
        v["endpoint"]
            .as_str()
            .and_then(|e| e.rsplit(':').next())
            .map(str::to_owned)
    };
    assert_eq!(port(&otlp["grpc"]).as_deref(), Some("4317"));
    assert_eq!(port(&otlp["http"]).as_deref(), Some("4318"));
    let ml = &c["processors"]["memory_limiter"];
    assert!(
        ml["check_interval"].is_string(),
        "memory_limiter needs check_interval"
    );
    assert!(
        ml["limit_mib"].is_number() || ml["limit_percentage"].is_number(),
        "memory_limiter needs a limit"
    );
    // Loki's native OTLP endpoint.
    let loki = c["exporters"]
        .as_mapping()
        .expect("exporters")
        .iter()
        .find(|(k, _)| kind(k.as_str().unwrap_or("")) == "otlphttp")
        .map(|(_, v)| v)
        .expect("an otlphttp exporter");
    let ep = loki["endpoint"].as_str().expect("endpoint");
    assert!(
        ep.starts_with("http") && ep.ends_with("/otlp"),
        "Loki's OTLP endpoint: {ep}"
    );
}
