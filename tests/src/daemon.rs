//! `segwatch run` under test: the binary, the process, its flow log and
//! metrics.

use super::*;

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
    /// `--probe-addr`'s port, when the args give one: /healthz and /readyz
    /// are asked there.
    pub probe_port: Option<u16>,
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
        let probe_port = args
            .iter()
            .position(|a| *a == "--probe-addr")
            .and_then(|i| args.get(i + 1))
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok());
        let mut d = Daemon {
            child: Some(child),
            flow_log,
            stderr_log,
            netns: netns.to_string(),
            metrics_port: port,
            probe_port,
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

    /// HTTP GET on the daemon's metrics address (inside its namespace);
    /// /healthz and /readyz on its probe address when it has one.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let port = match self.probe_port {
            Some(p) if path == "/healthz" || path == "/readyz" => p,
            _ => self.metrics_port,
        };
        lab::http_get(&self.netns, port, path).map_err(std::io::Error::other)
    }

    /// HTTPS GET of `path` on the metrics address with curl (inside the
    /// daemon's namespace), with a bearer token if given and `tls` as
    /// curl's certificate options (`-k`, `--cacert FILE`); (status, body).
    /// Status 0: no HTTP answer (curl's error is the body).
    pub fn https(&self, path: &str, token: Option<&str>, tls: &[&str]) -> (u16, String) {
        let url = format!("https://127.0.0.1:{}{path}", self.metrics_port);
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.netns,
            "curl",
            "-sS",
            "--max-time",
            "10",
        ])
        .args(tls)
        .args(["-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = cmd
            .arg(&url)
            .output()
            .expect("curl (Debian curl, installed by `cargo xtask test`'s setup) must run");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        match code.trim().parse::<u16>() {
            Ok(c) if c != 0 => (c, body.to_string()),
            _ => (0, String::from_utf8_lossy(&out.stderr).into_owned()),
        }
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
