//! `segwatch suggest --from-prometheus` against a real Prometheus (the
//! Debian `prometheus` binary) scraping a running `segwatch run`, compared
//! with `segwatch suggest --flows` on the flow log of the same run.
//!
//! ```text
//!  node netns: segwatch run --inventory (judges, exports
//!              segwatch_workload_flows_total on 127.0.0.1:9810)
//!              prometheus (scrapes it every second, serves 127.0.0.1:9090)
//!  pods: shop/web (Deployment), shop/db (StatefulSet), api/api (Deployment)
//!  traffic: web -> api 8080/TCP (IPv4 and IPv6), web -> api 5353/UDP,
//!           web -> db 5432/TCP, api -> db 5432/TCP
//! ```
//!
//! Both suggestions must pass their replay and be the same policies
//! (evidence annotations aside: flow logs carry first/last seen, metrics a
//! window).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tests::*;

/// The Prometheus binary, or `None` (after a note) when it is missing and
/// the run does not require it.
fn prometheus_bin() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("prometheus"))
            .find(|c| c.exists())
    });
    if found.is_none() {
        assert!(
            std::env::var("SEGWATCH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "prometheus is required (SEGWATCH_REQUIRE_PRIVILEGED=1) but not found; run `cargo xtask setup` (Debian package prometheus)"
        );
        eprintln!("note: prometheus not found (apt-get install prometheus); test skipped");
    }
    found
}

/// A process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workload(kind: &str, ns: &str, name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": app}},
                 "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}
    })
}

/// The policies of `segwatch suggest -o json` without annotations, after
/// checking that the replay passed.
fn policies(out: &std::process::Output, what: &str) -> Vec<Value> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "suggest {what} must succeed with a passing replay: {:?}\n{stderr}",
        out.status
    );
    assert!(stderr.contains("PASS"), "{what}: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("-o json output");
    let mut items = v["items"].as_array().expect("a List").clone();
    for i in &mut items {
        i["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("annotations");
    }
    items
}

#[test]
fn from_prometheus_gives_the_same_policies_as_the_flow_log() {
    let Some(prom) = prometheus_bin() else {
        return;
    };
    let topo = Topo::new(3, true);
    let (web, api, db) = (&topo.pods[0], &topo.pods[1], &topo.pods[2]);
    tcp_server(api, api.ip4, 8080, 100);
    tcp_server(api, api.ip6, 8080, 100);
    udp_sink(api, SocketAddr::new(api.ip4, 5353));
    tcp_server(db, db.ip4, 5432, 10);

    let dir = TempDir::new("suggest-prom");
    let mut node_addrs = Vec::new();
    for p in &topo.pods {
        node_addrs.push(json!({"type": "InternalIP", "address": p.gw4.to_string()}));
        node_addrs.push(json!({"type": "InternalIP", "address": p.gw6.to_string()}));
    }
    let http = json!([{"name": "http", "containerPort": 8080}]);
    let inventory = json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "api"}},
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "status": {"addresses": node_addrs}},
            workload("Deployment", "shop", "web", "web"),
            workload("StatefulSet", "shop", "db", "db"),
            workload("Deployment", "api", "api", "api"),
            PodObject::new("shop", "web-5d8f7c9b6-abcde").labels(json!({"app": "web", "pod-template-hash": "5d8f7c9b6"})).owner("ReplicaSet", "web-5d8f7c9b6").ports(json!([])).ips(web).json(),
            PodObject::new("shop", "db-0").labels(json!({"app": "db", "controller-revision-hash": "db-7f9c", "statefulset.kubernetes.io/pod-name": "db-0"})).owner("StatefulSet", "db").ports(json!([])).ips(db).json(),
            PodObject::new("api", "api-6c7d8e9f0-xyz12").labels(json!({"app": "api", "pod-template-hash": "6c7d8e9f0"})).owner("ReplicaSet", "api-6c7d8e9f0").ports(http).ips(api).json(),
        ]
    });
    let inv_path = dir.0.join("inventory.json");
    std::fs::write(&inv_path, serde_json::to_vec_pretty(&inventory).unwrap()).unwrap();
    let inv = inv_path.to_str().unwrap();

    let daemon = Daemon::start(
        &topo.node.name,
        &[
            "--idle-timeout",
            "2",
            "--sweep-interval-ms",
            "200",
            "--inventory",
            inv,
            "--node-name",
            "n1",
        ],
    );

    // Prometheus in the node namespace, scraping the daemon every second.
    let cfg = dir.0.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: segwatch\n    static_configs: [{{targets: ['127.0.0.1:{}']}}]\n",
            daemon.metrics_port
        ),
    )
    .unwrap();
    let tsdb = dir.0.join("tsdb");
    let _prom = Proc(
        Command::new("ip")
            .args(["netns", "exec", &topo.node.name])
            .arg(&prom)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg("--web.listen-address=127.0.0.1:9090")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    assert!(
        wait_for(Duration::from_secs(30), || {
            matches!(
                lab::http_get(&topo.node.name, 9090, "/-/ready"),
                Ok((200, _))
            )
            .then_some(())
        })
        .is_some(),
        "prometheus not ready within 30 s"
    );

    tcp_client(web, SocketAddr::new(api.ip4, 8080), 100);
    tcp_client(web, SocketAddr::new(api.ip6, 8080), 100);
    udp_send(web, SocketAddr::new(api.ip4, 5353), 2, 40);
    tcp_client(web, SocketAddr::new(db.ip4, 5432), 100);
    tcp_client(api, SocketAddr::new(db.ip4, 5432), 100);

    // Every edge in Prometheus (and so in the flow log before it).
    let edges = [
        (
            "shop",
            "Deployment/web",
            "api",
            "Deployment/api",
            "8080",
            "TCP",
        ),
        (
            "shop",
            "Deployment/web",
            "api",
            "Deployment/api",
            "5353",
            "UDP",
        ),
        (
            "shop",
            "Deployment/web",
            "shop",
            "StatefulSet/db",
            "5432",
            "TCP",
        ),
        (
            "api",
            "Deployment/api",
            "shop",
            "StatefulSet/db",
            "5432",
            "TCP",
        ),
    ];
    let seen = wait_for(Duration::from_secs(30), || {
        let (_, body) = lab::http_get(
            &topo.node.name,
            9090,
            "/api/v1/query?query=segwatch_workload_flows_total",
        )
        .ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?.clone();
        let has = |e: &(&str, &str, &str, &str, &str, &str)| {
            result.iter().any(|s| {
                let m = &s["metric"];
                m["src_namespace"] == e.0
                    && m["src_workload"] == e.1
                    && m["dst_namespace"] == e.2
                    && m["dst_workload"] == e.3
                    && m["dst_port"] == e.4
                    && m["protocol"] == e.5
            })
        };
        edges.iter().all(has).then_some(result)
    });
    assert!(
        seen.is_some(),
        "Prometheus must have scraped every workload edge within 30 s; daemon metrics:\n{}",
        daemon
            .metrics()
            .lines()
            .filter(|l| l.starts_with("segwatch_workload_flows_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Wait until the flow log has every flow (reported at the idle timeout).
    assert!(
        wait_for(Duration::from_secs(15), || {
            let r = daemon.reports();
            let n = |port: u64| r.iter().filter(|f| f["dst"]["port"] == port).count();
            (n(8080) >= 2 && n(5353) >= 1 && n(5432) >= 2).then_some(())
        })
        .is_some(),
        "flow log incomplete: {:?}",
        daemon.reports()
    );

    // A few more scrapes, so the window's end lies after the edges' first
    // samples (and increase() has two samples of each).
    std::thread::sleep(Duration::from_secs(3));
    let at = chrono_now_rfc3339();
    let from_prom = Command::new("ip")
        .args(["netns", "exec", &topo.node.name])
        .arg(segwatch_bin())
        .args([
            "suggest",
            "--from-prometheus",
            "http://127.0.0.1:9090",
            "--window",
            "1h",
            "--at",
            &at,
            "--inventory",
            inv,
            "-o",
            "json",
        ])
        .output()
        .expect("segwatch suggest runs");
    let from_flows = Command::new(segwatch_bin())
        .args(["suggest", "--flows"])
        .arg(&daemon.flow_log)
        .args(["--inventory", inv, "-o", "json"])
        .output()
        .expect("segwatch suggest runs");
    let a = policies(&from_prom, "--from-prometheus");
    let b = policies(&from_flows, "--flows");
    assert!(
        a.iter().any(
            |p| p["metadata"]["name"] == "segwatch-web" && p["metadata"]["namespace"] == "shop"
        ),
        "a policy for shop/web: {a:#?}\n{}",
        String::from_utf8_lossy(&from_prom.stderr)
    );
    assert_eq!(
        serde_json::to_string_pretty(&a).unwrap(),
        serde_json::to_string_pretty(&b).unwrap(),
        "--from-prometheus and --flows on the same traffic must suggest the same policies\nprometheus stderr:\n{}\nflows stderr:\n{}",
        String::from_utf8_lossy(&from_prom.stderr),
        String::from_utf8_lossy(&from_flows.stderr)
    );
}

/// Now as RFC 3339 (nanoseconds), without a date crate in this test crate.
fn chrono_now_rfc3339() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"])
        .output()
        .expect("date runs");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
