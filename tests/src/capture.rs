//! Packet captures (tshark) inside a namespace.

use super::*;

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
        // tshark takes long to start on a loaded machine (dissector
        // registration): 20 s was not always enough with six builders.
        let deadline = Instant::now() + Duration::from_secs(90);
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
            "-e",
            "tcp.flags",
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
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
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
        let tcp_flags = f
            .get(14)
            .and_then(|v| u16::from_str_radix(first(v).trim_start_matches("0x"), 16).ok())
            .unwrap_or(0) as u8;
        Some(CapturedPacket {
            src: src.parse().ok()?,
            dst: dst.parse().ok()?,
            proto,
            sport: sport as u16,
            dport: dport as u16,
            ip_len,
            tcp_flags,
        })
    }
}
