//! The agent run under exactly the DaemonSet's privileges.

use super::*;

/// A network namespace of this test, deleted on drop.
struct TestNetns(String);

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ip_cmd(args: &[&str]) {
    let (ok, out) = run(Command::new("ip").args(args));
    assert!(ok, "ip {args:?}: {out}");
}

/// HTTP GET on 127.0.0.1:`port` inside network namespace `ns`.
fn get_in(ns: &str, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    use std::os::fd::AsRawFd as _;
    let ns_path = Path::new("/var/run/netns").join(ns);
    let path = path.to_string();
    std::thread::spawn(move || -> Option<(u16, String)> {
        let f = std::fs::File::open(&ns_path).ok()?;
        // SAFETY: a valid namespace fd; CLONE_NEWNET moves only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: segwatch\r\n\r\n").ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let code = buf.get(9..12)?.parse().ok()?;
        Some((
            code,
            buf.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        ))
    })
    .join()
    .ok()
    .flatten()
}

/// Capability bit numbers (include/uapi/linux/capability.h).
fn cap_bit(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("no bit known for capability {other}"),
    }
}

/// Starts the agent with the DaemonSet's args, uid 0 and exactly `caps` (as
/// bounding = permitted = effective set, inheritable and ambient empty,
/// no_new_privs), every mount but /proc, /sys and /dev read-only, inside
/// network namespace `ns`. Returns the child; stdout and stderr go to files
/// in `dir`.
fn spawn_confined(ns: &str, caps: &[&str], args: &[String], dir: &Path) -> std::process::Child {
    let bounding = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    // readOnlyRootFilesystem, approximated: a private mount namespace whose
    // mounts are remounted read-only (the host's stay as they are).
    let script = r#"
        for m in $(findmnt -rno TARGET); do
          case "$m" in /proc*|/sys*|/dev*) ;; *) mount -o remount,bind,ro "$m" 2>/dev/null ;; esac
        done
        if touch /.segwatch-rw-probe 2>/dev/null; then echo "root filesystem still writable" >&2; exit 97; fi
        exec "$@"
    "#;
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg("setpriv")
        .arg(format!("--bounding-set={bounding}"))
        .args([
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--no-new-privs",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_segwatch"))
        .args(args)
        .env("NODE_NAME", "deploy-test-node")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).expect("stdout file"))
        .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr file"))
        .spawn()
        .expect("spawn the confined agent")
}

#[test]
fn the_agent_loads_and_attaches_with_exactly_the_daemonsets_privileges() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let msg = "needs root (network namespace, BPF programs); `cargo xtask test` runs as root";
        assert!(!require_tools(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    }
    for t in ["ip", "setpriv", "unshare", "findmnt"] {
        if tool(t, "Debian util-linux / iproute2").is_none() {
            return;
        }
    }
    let objects = kustomize(&deploy());
    let c = &find(&objects, "DaemonSet").value["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["securityContext"]["runAsUser"], 0,
        "this test runs the agent as uid 0, like the manifest"
    );
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // The DaemonSet's own arguments; only the cluster view comes from a file
    // here, as there is no API server.
    let mut args: Vec<String> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect();
    let port_of = |flag: &str| -> u16 {
        args.iter()
            .find_map(|a| a.strip_prefix(flag))
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("{flag}ADDR:PORT in the DaemonSet args"))
    };
    let port = port_of("--metrics-addr=");
    let probe_port = port_of("--probe-addr=");
    // Reviewing scrapers' tokens needs an API server, which this test has
    // not: /metrics is read without authentication here (the authenticated
    // mode is tested in tests/tests/security.rs with a fake API server).
    for a in args
        .iter_mut()
        .filter(|a| *a == "--metrics-auth=kubernetes")
    {
        *a = "--metrics-auth=none".into();
    }
    let dir = scratch("confined");
    let inventory = dir.join("inventory.yaml");
    std::fs::write(
        &inventory,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n",
    )
    .expect("inventory");
    args.push(format!("--inventory={}", inventory.display()));

    let ns = TestNetns(format!("swdpl{}", std::process::id()));
    let _ = Command::new("ip").args(["netns", "del", &ns.0]).output();
    ip_cmd(&["netns", "add", &ns.0]);
    ip_cmd(&["-n", &ns.0, "link", "set", "lo", "up"]);
    ip_cmd(&[
        "-n", &ns.0, "link", "add", "swd0", "type", "veth", "peer", "name", "swd1",
    ]);
    ip_cmd(&["-n", &ns.0, "link", "set", "swd0", "up"]);
    ip_cmd(&["-n", &ns.0, "link", "set", "swd1", "up"]);

    // Negative control first: one capability less must fail, or the
    // confinement would not be real. The DaemonSet's agent says why on
    // /readyz (--load-failure-hold) before it exits with the reason.
    let fewer: Vec<&str> = caps.iter().copied().filter(|c| *c != "PERFMON").collect();
    let mut child = spawn_confined(&ns.0, &fewer, &args, &dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let why = loop {
        if let Some((503, body)) = get_in(&ns.0, probe_port, "/readyz") {
            if body.starts_with("cannot load") {
                break body;
            }
        }
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!(
                "without CAP_PERFMON the agent must stay up and say why on /readyz, exited ({st}): {}",
                std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no load failure on /readyz within 30 s: {:?}",
            get_in(&ns.0, probe_port, "/readyz")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        why.contains("missing capabilities CAP_PERFMON"),
        "/readyz names the missing capability: {why}"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    assert!(
        !status.success() && stderr.contains("PERFMON"),
        "without CAP_PERFMON the agent must refuse to start ({status}): {stderr}"
    );

    let mut child = spawn_confined(&ns.0, &caps, &args, &dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let stderr = || std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!(
                "the agent exited ({st}) under the DaemonSet's privileges: {}",
                stderr()
            );
        }
        if get_in(&ns.0, probe_port, "/readyz").is_some_and(|(code, _)| code == 200) {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent was not ready within 30 s: {}", stderr());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("/proc/PID/status");
    let field = |name: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} in /proc/PID/status"))
            .trim()
            .to_string()
    };
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "segwatch",
        "the child is the agent itself (exec all the way)"
    );
    let want: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    let eff = u64::from_str_radix(&field("CapEff"), 16).expect("CapEff hex");
    assert_eq!(
        eff, want,
        "effective capabilities are exactly the DaemonSet's"
    );
    assert_eq!(field("NoNewPrivs"), "1");
    assert!(field("Uid").starts_with("0\t"), "uid 0");
    // Ready does not wait for every interface netlink announces; poll.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = get_in(&ns.0, port, "/metrics").expect("GET /metrics").1;
        if metrics
            .lines()
            .any(|l| l == "segwatch_interfaces_attached 2")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both veth ends must be attached under the DaemonSet's privileges:\n{}\n{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("segwatch_interfaces"))
                .collect::<Vec<_>>()
                .join("\n"),
            stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let code = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent ignored SIGTERM for 20 s: {}", stderr());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        code,
        Some(0),
        "SIGTERM ends the agent cleanly: {}",
        stderr()
    );
}
