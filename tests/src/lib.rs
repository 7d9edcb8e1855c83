//! Shared harness for segwatch's privileged end-to-end tests.
//!
//! ```text
//!   pod netns "p0" ──veth──┐                  ┌──veth── pod netns "p1"
//!     10.77.0.2/30 eth0    │   node netns     │    eth0 10.77.1.2/30
//!     fd77:0::2/64         └─ sw<tag>0  sw<tag>1 ┘    fd77:1::2/64
//!                             (routes between pods, runs `segwatch run`)
//! ```
//!
//! Each test builds its own *node* network namespace standing for the host,
//! with pods as further namespaces routed through it, as a CNI does. The
//! daemon runs inside the node namespace, so tests never touch the real
//! host's interfaces, routes or sysctls, run in parallel without seeing each
//! other, and no packet can leave the machine (the node has no uplink).
//! Everything is removed on drop.
//!
//! Traffic is made by this process itself: a thread enters a pod's
//! namespace (setns) and opens real sockets, so the byte counts the tests
//! expect are exactly what the sockets sent.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Privileged tests need root (network namespaces, BPF). They fail loudly
/// instead of skipping, so a CI run without privileges cannot pass silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces, BPF programs); run `cargo xtask test` as root"
    );
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`sh`] inside a network namespace.
pub fn sh_in(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    sh(&full)
}

/// A short tag unique to this process and call, for interface and namespace
/// names (interface names are at most 15 bytes).
pub fn unique_tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{n}", std::process::id() % 0xfff)
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh_in(&name, &["ip", "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: a valid namespace fd; CLONE_NEWNET affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns into {} failed: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// A pod: its namespace, the host-side interface name, and its addresses.
pub struct Pod {
    pub ns: Netns,
    pub host_if: String,
    pub ip4: IpAddr,
    pub ip6: IpAddr,
    pub gw4: IpAddr,
    pub gw6: IpAddr,
}

/// A node namespace with pods routed through it.
pub struct Topo {
    pub tag: String,
    pub pods: Vec<Pod>,
    pub node: Netns,
}

impl Topo {
    /// A node with `n` pods; pod `i` has 10.77.i.2/30 and fd77:0:0:i::2/64,
    /// the node side .1 / ::1. `offload` false turns TSO/GSO/GRO off on
    /// both veth ends, so every skb is one wire packet (what tshark counts).
    pub fn new(n: usize, offload: bool) -> Self {
        Self::with_prefix("sw", n, offload)
    }

    /// [`Topo::new`] with every namespace and interface name starting with
    /// `prefix` (at most 4 bytes: interface names are at most 15), so that
    /// test suites run side by side can tell their objects apart.
    pub fn with_prefix(prefix: &str, n: usize, offload: bool) -> Self {
        require_root();
        assert!(prefix.len() <= 4, "prefix {prefix:?} longer than 4 bytes");
        let tag = format!("{}{}", &prefix[2.min(prefix.len())..], unique_tag());
        let node = Netns::new(format!("{prefix}-node-{tag}"));
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            sh_in(&node.name, &["sysctl", "-q", "-w", key]);
        }
        let mut pods = Vec::new();
        for i in 0..n {
            let ns = Netns::new(format!("{prefix}-pod-{tag}-{i}"));
            let host_if = format!("sw{tag}p{i}");
            let tmp = format!("sw{tag}t{i}");
            sh_in(
                &node.name,
                &[
                    "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &tmp,
                ],
            );
            sh_in(&node.name, &["ip", "link", "set", &tmp, "netns", &ns.name]);
            sh_in(&ns.name, &["ip", "link", "set", &tmp, "name", "eth0"]);
            let (ip4, gw4) = (format!("10.77.{i}.2"), format!("10.77.{i}.1"));
            let (ip6, gw6) = (format!("fd77:0:0:{i:x}::2"), format!("fd77:0:0:{i:x}::1"));
            sh_in(
                &node.name,
                &["ip", "addr", "add", &format!("{gw4}/30"), "dev", &host_if],
            );
            sh_in(
                &node.name,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{gw6}/64"),
                    "dev",
                    &host_if,
                    "nodad",
                ],
            );
            sh_in(&node.name, &["ip", "link", "set", &host_if, "up"]);
            sh_in(
                &ns.name,
                &["ip", "addr", "add", &format!("{ip4}/30"), "dev", "eth0"],
            );
            sh_in(
                &ns.name,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{ip6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
            sh_in(&ns.name, &["ip", "link", "set", "eth0", "up"]);
            sh_in(&ns.name, &["ip", "route", "add", "default", "via", &gw4]);
            sh_in(
                &ns.name,
                &["ip", "-6", "route", "add", "default", "via", &gw6],
            );
            if !offload {
                for (netns, dev) in [(&node.name, host_if.as_str()), (&ns.name, "eth0")] {
                    sh_in(
                        netns,
                        &[
                            "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
                        ],
                    );
                }
            }
            pods.push(Pod {
                ns,
                host_if,
                ip4: ip4.parse().expect("valid"),
                ip6: ip6.parse().expect("valid"),
                gw4: gw4.parse().expect("valid"),
                gw6: gw6.parse().expect("valid"),
            });
        }
        Topo { tag, pods, node }
    }

    /// Adds an address to the node (on a node-side veth whose peer end is
    /// a dead-end namespace), e.g. a node IP or the metadata address, so
    /// that `ip route get` in the node says `local`.
    pub fn add_node_address(&self, cidr: &str) {
        let dev = format!("sw{}l", self.tag);
        let exists = Command::new("ip")
            .args(["netns", "exec", &self.node.name, "ip", "link", "show", &dev])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !exists {
            sh_in(
                &self.node.name,
                &[
                    "ip",
                    "link",
                    "add",
                    &dev,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &format!("{dev}x"),
                ],
            );
            sh_in(&self.node.name, &["ip", "link", "set", &dev, "up"]);
        }
        sh_in(
            &self.node.name,
            &["ip", "addr", "add", cidr, "dev", &dev, "nodad"],
        );
    }
}

/// The segwatch binary cargo built next to the running executable: tests
/// run from `target/<profile>/deps/`, the benchmark binary from
/// `target/<profile>/`; the daemon sits in `target/<profile>/` either way.
pub fn segwatch_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    let candidates = [Some(dir), dir.parent()];
    let found = candidates
        .iter()
        .flatten()
        .map(|d| d.join("segwatch"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "segwatch missing next to {}: build the workspace first (`cargo build`; `cargo xtask test` does)",
            exe.display()
        )
    })
}

/// A `segwatch run` process inside a namespace, killed on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub flow_log: PathBuf,
    pub stderr_log: PathBuf,
    pub netns: String,
    pub metrics_port: u16,
    _dir: TempDir,
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("segwatch-test-{tag}-{}", unique_tag()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Daemon {
    /// Starts `segwatch run` in `netns` with `args` plus a flow log file and a
    /// metrics address on the namespace's loopback; waits until /readyz.
    pub fn start(netns: &str, args: &[&str]) -> Self {
        Self::start_with_env(netns, args, &[])
    }

    /// Like [`Daemon::start`] with extra environment variables (KUBECONFIG).
    pub fn start_with_env(netns: &str, args: &[&str], env: &[(&str, &Path)]) -> Self {
        let dir = TempDir::new("daemon");
        let flow_log = dir.0.join("flows.jsonl");
        let stderr_log = dir.0.join("stderr.log");
        let port = 9810;
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(segwatch_bin())
            .args(["run", "--flow-log"])
            .arg(&flow_log)
            .args(["--metrics-addr", &addr])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr_log).expect("stderr log"));
        let child = cmd.spawn().expect("spawn segwatch");
        let mut d = Daemon {
            child: Some(child),
            flow_log,
            stderr_log,
            netns: netns.to_string(),
            metrics_port: port,
            _dir: dir,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("segwatch exited early ({status}): {}", self.stderr());
            }
            if let Ok((200, _)) = self.get("/readyz") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "segwatch not ready after 30 s: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// HTTP GET on the daemon's metrics address (inside its namespace).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let ns = Path::new("/var/run/netns").join(&self.netns);
        let port = self.metrics_port;
        let path = path.to_string();
        std::thread::spawn(move || -> std::io::Result<(u16, String)> {
            enter(&ns);
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            let code = buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
            let body = buf
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            Ok((code, body))
        })
        .join()
        .expect("http thread")
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").expect("GET /metrics").1
    }

    /// Value of one sample line (`name{labels}` exactly as exposed), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// Sends SIGTERM and waits; returns the exit status code.
    pub fn stop(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "segwatch did not exit within 20 s of SIGTERM: {}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every flow report written so far.
    pub fn reports(&self) -> Vec<serde_json::Value> {
        read_reports(&self.flow_log)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn read_reports(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("flow log line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Value of `series` in a Prometheus text exposition, 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP server in a pod: accepts connections and reads until EOF, echoing
/// `reply` bytes back on each; runs until the namespace thread ends.
pub fn tcp_server(pod: &Pod, addr: IpAddr, port: u16, reply: usize) {
    let (tx, rx) = std::sync::mpsc::channel();
    pod.ns.run(move || {
        let l = TcpListener::bind(SocketAddr::new(addr, port)).expect("bind server");
        tx.send(()).expect("ready");
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
                let _ = s.write_all(&vec![0x5a; reply]);
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
}

/// Connects from `pod` to `dst`, sends `send` bytes, half-closes, reads the
/// reply to EOF. Returns the client's local port.
pub fn tcp_client(pod: &Pod, dst: SocketAddr, send: usize) -> u16 {
    pod.ns
        .run(move || {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).expect("connect");
            let port = s.local_addr().expect("local addr").port();
            s.write_all(&vec![0xa5; send]).expect("send");
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
            port
        })
        .join()
        .expect("client thread")
}

/// Sends `count` UDP datagrams of `size` bytes from `pod` to `dst` (nobody
/// needs to listen). Returns the local port.
pub fn udp_send(pod: &Pod, dst: SocketAddr, count: usize, size: usize) -> u16 {
    pod.ns
        .run(move || {
            let bind: SocketAddr = if dst.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            let s = UdpSocket::bind(bind).expect("udp bind");
            for _ in 0..count {
                s.send_to(&vec![7u8; size], dst).expect("udp send");
            }
            s.local_addr().expect("local addr").port()
        })
        .join()
        .expect("udp thread")
}

/// A packet capture with tshark inside a namespace, stopped on `finish`.
pub struct Capture {
    child: Child,
    file: PathBuf,
    _dir: TempDir,
}

impl Capture {
    pub fn start(netns: &str, iface: &str) -> Self {
        let dir = TempDir::new("pcap");
        let file = dir.0.join("cap.pcapng");
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "tshark", "-q", "-i", iface, "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tshark must be installed (cargo xtask setup installs it)");
        // tshark says "Capturing on ..." once the capture is live.
        let mut child = child;
        let mut err = child.stderr.take().expect("stderr");
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 256];
        while !seen.contains("Capturing on") {
            assert!(Instant::now() < deadline, "tshark did not start: {seen}");
            let n = err.read(&mut buf).unwrap_or(0);
            if n == 0 {
                panic!("tshark exited: {seen}");
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = err.read_to_end(&mut sink);
        });
        // tshark announces the capture a moment before dumpcap's socket
        // receives packets; give it that moment.
        std::thread::sleep(Duration::from_millis(1500));
        Capture {
            child,
            file,
            _dir: dir,
        }
    }

    /// Stops the capture and returns, per packet, (src, dst, proto, sport,
    /// dport, ip_len) as tshark decodes them.
    pub fn finish(mut self) -> Vec<CapturedPacket> {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let out = sh(&[
            "tshark",
            "-r",
            self.file.to_str().expect("utf-8 path"),
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.src",
            "-e",
            "ipv6.dst",
            "-e",
            "ip.proto",
            "-e",
            "ipv6.nxt",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
            "-e",
            "udp.srcport",
            "-e",
            "udp.dstport",
            "-e",
            "ip.len",
            "-e",
            "ipv6.plen",
            "-e",
            "icmp.ident",
            "-e",
            "icmpv6.echo.identifier",
        ]);
        out.lines().filter_map(CapturedPacket::parse).collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedPacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub ip_len: u64,
}

impl CapturedPacket {
    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split('|').collect();
        let first = |a: &str| a.split(',').next().unwrap_or("").to_string();
        let (src, dst) = if !f[0].is_empty() {
            (first(f[0]), first(f[1]))
        } else {
            (first(f[2]), first(f[3]))
        };
        if src.is_empty() {
            return None; // not IP (ARP, NDP-less frames)
        }
        let proto: u8 = if !f[4].is_empty() {
            first(f[4]).parse().ok()?
        } else {
            first(f[5]).parse().ok()?
        };
        let num = |s: &str| first(s).parse::<u64>().ok();
        let (sport, dport) = match proto {
            6 => (num(f[6])?, num(f[7])?),
            17 => (num(f[8])?, num(f[9])?),
            // icmp.ident prints in decimal (BASE_DEC_HEX), the ICMPv6
            // identifier in hex (BASE_HEX): `tshark -G fields`.
            1 => {
                let id = num(f[12])?;
                (id, id)
            }
            58 => {
                let id = u64::from_str_radix(first(f[13]).trim_start_matches("0x"), 16).ok()?;
                (id, id)
            }
            _ => (0, 0),
        };
        let ip_len = if !f[10].is_empty() {
            num(f[10])?
        } else {
            num(f[11])? + 40
        };
        Some(CapturedPacket {
            src: src.parse().ok()?,
            dst: dst.parse().ok()?,
            proto,
            sport: sport as u16,
            dport: dport as u16,
            ip_len,
        })
    }
}

/// Sends `count` ICMP (or ICMPv6) echo requests with identifier `id` from
/// `pod` to `dst` over a raw socket and waits briefly for the replies.
pub fn icmp_echo(pod: &Pod, dst: IpAddr, id: u16, count: u16) {
    pod.ns
        .run(move || {
            let (domain, proto, ty) = match dst {
                IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8),
                IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8),
            };
            // SAFETY: plain socket(2); the fd is closed below.
            let fd = unsafe { libc::socket(domain, libc::SOCK_RAW, proto) };
            assert!(
                fd >= 0,
                "raw ICMP socket: {}",
                std::io::Error::last_os_error()
            );
            for seq in 0..count {
                let mut msg = vec![ty, 0, 0, 0];
                msg.extend(id.to_be_bytes());
                msg.extend(seq.to_be_bytes());
                msg.extend([0x42u8; 32]);
                if dst.is_ipv4() {
                    // RFC 792 checksum; the kernel fills it in for ICMPv6 only.
                    let mut sum: u32 = msg
                        .chunks(2)
                        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
                        .sum();
                    while sum > 0xffff {
                        sum = (sum & 0xffff) + (sum >> 16);
                    }
                    msg[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
                }
                let sa = socket2_addr(dst);
                // SAFETY: msg and sa are valid for the given lengths.
                let rc = unsafe {
                    libc::sendto(
                        fd,
                        msg.as_ptr().cast(),
                        msg.len(),
                        0,
                        sa.0.as_ptr().cast(),
                        sa.1,
                    )
                };
                assert!(rc >= 0, "sendto: {}", std::io::Error::last_os_error());
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
        })
        .join()
        .expect("icmp thread");
}

/// A sockaddr for `ip` (port 0) as bytes and length.
fn socket2_addr(ip: IpAddr) -> (Vec<u8>, libc::socklen_t) {
    match ip {
        IpAddr::V4(a) => {
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            let len = std::mem::size_of::<libc::sockaddr_in>();
            // SAFETY: reading the plain struct's bytes.
            let b = unsafe {
                std::slice::from_raw_parts((&sa as *const libc::sockaddr_in).cast::<u8>(), len)
            }
            .to_vec();
            (b, len as libc::socklen_t)
        }
        IpAddr::V6(a) => {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as u16;
            sa.sin6_addr.s6_addr = a.octets();
            let len = std::mem::size_of::<libc::sockaddr_in6>();
            // SAFETY: reading the plain struct's bytes.
            let b = unsafe {
                std::slice::from_raw_parts((&sa as *const libc::sockaddr_in6).cast::<u8>(), len)
            }
            .to_vec();
            (b, len as libc::socklen_t)
        }
    }
}

/// A UDP socket bound in a pod that swallows whatever arrives.
pub fn udp_sink(pod: &Pod, addr: SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    pod.ns.run(move || {
        let s = UdpSocket::bind(addr).expect("bind udp sink");
        tx.send(()).expect("ready");
        let mut buf = [0u8; 65536];
        while s.recv(&mut buf).is_ok() {}
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("sink up");
}

/// Connects and aborts with RST (SO_LINGER 0) after sending `send` bytes.
pub fn tcp_client_rst(pod: &Pod, dst: SocketAddr, send: usize) -> u16 {
    pod.ns
        .run(move || {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).expect("connect");
            let port = s.local_addr().expect("local addr").port();
            s.write_all(&vec![1u8; send]).expect("send");
            std::thread::sleep(Duration::from_millis(100));
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: valid fd and option struct.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            drop(s);
            port
        })
        .join()
        .expect("rst client thread")
}

/// An IPv4 TCP connection from a chosen source port (`SO_REUSEADDR`, so a
/// port whose last connection ended with RST can be taken again at once).
pub fn tcp_connect_from(src_port: u16, dst: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd as _;
    let SocketAddr::V4(dst) = dst else {
        panic!("tcp_connect_from: IPv4 only, not {dst}")
    };
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; every
    // pointer is to a live local of the size passed with it; the fd goes
    // to exactly one TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let src = sin(std::net::Ipv4Addr::UNSPECIFIED, src_port);
        assert_eq!(
            libc::bind(fd, (&src as *const libc::sockaddr_in).cast(), len),
            0,
            "bind :{src_port}: {}",
            std::io::Error::last_os_error()
        );
        let to = sin(*dst.ip(), dst.port());
        assert_eq!(
            libc::connect(fd, (&to as *const libc::sockaddr_in).cast(), len),
            0,
            "connect {dst} from :{src_port}: {}",
            std::io::Error::last_os_error()
        );
        stream
    }
}

/// Tries to connect to a port nobody listens on (answered with RST).
pub fn tcp_refused(pod: &Pod, dst: SocketAddr) {
    pod.ns
        .run(move || {
            let r = TcpStream::connect_timeout(&dst, Duration::from_secs(2));
            assert!(r.is_err(), "{dst} must refuse");
        })
        .join()
        .expect("refused thread");
}

/// Names of the tcx programs attached to `iface` in `netns`, ingress then
/// egress (queried from the kernel; bpftool 7.1 does not list tcx links).
pub fn tcx_programs(netns: &str, iface: &str) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let path = Path::new("/var/run/netns").join(netns);
    let iface = iface.to_string();
    std::thread::spawn(move || {
        enter(&path);
        let mut names = Vec::new();
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, progs) = SchedClassifier::query_tcx(&iface, t)
                .unwrap_or_else(|e| panic!("query tcx on {iface}: {e}"));
            names.extend(
                progs
                    .iter()
                    .map(|p| p.name_as_str().unwrap_or("?").to_string()),
            );
        }
        names
    })
    .join()
    .expect("tcx query thread")
}

pub use segwatch::testing::FakeApiServer;

/// A [`FakeApiServer`] on 127.0.0.1:`port` inside `netns` (0: any free
/// port), answering lists with `objects`.
pub fn fake_api_server(netns: &Netns, port: u16, objects: Vec<serde_json::Value>) -> FakeApiServer {
    // Sockets belong to the namespace they were made in; the threads that
    // use them may live anywhere.
    let listener = netns
        .run(move || TcpListener::bind(("127.0.0.1", port)))
        .join()
        .expect("bind thread")
        .expect("bind the fake API server");
    FakeApiServer::serve(listener, objects)
}
