//! Load generators that run inside the pods' network namespaces: a 64-byte
//! UDP blaster that is not syscall-bound (sendmmsg/recvmmsg batches, many
//! flows), a TCP connection storm with a paced rate, and iperf3.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tests::Pod;

/// Messages per sendmmsg/recvmmsg call.
const BATCH: usize = 64;

/// UDP payload of a 64-byte Ethernet frame: 64 - 4 (FCS) - 14 (Ethernet)
/// - 20 (IPv4) - 8 (UDP) = 18 bytes.
pub const SMALL_PAYLOAD: usize = 18;

#[derive(Clone, Copy, Debug, Default)]
pub struct UdpLoad {
    pub sent: u64,
    pub received: u64,
    pub secs: f64,
    /// CPU seconds the path took: sender and receiver threads plus the
    /// ksoftirqd threads. Without IRQ time accounting the kernel charges
    /// softirq work (veth, forwarding, tc programs) to the task it
    /// interrupted, which here is almost always the sender; ksoftirqd takes
    /// over under pressure. Other processes' CPU does not count, so this
    /// stays meaningful on a busy machine.
    pub cpu_s: f64,
}

impl UdpLoad {
    /// Packets delivered to the receiving socket per second.
    pub fn pps(&self) -> f64 {
        self.received as f64 / self.secs
    }

    /// Packets delivered per CPU second spent on the path.
    pub fn per_cpu_s(&self) -> f64 {
        self.received as f64 / self.cpu_s
    }
}

/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID), in seconds.
pub fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; the clock always exists for this thread.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// CPU seconds so far of every ksoftirqd thread.
pub fn ksoftirqd_cpu_s() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .filter_map(|pid| crate::kernel::cpu_seconds(pid).ok())
        .sum()
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32) {
    // SAFETY: a valid fd and an int option value of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
}

/// A socket address as libc wants it (IPv4 only; the bench runs on IPv4).
fn sockaddr_in(addr: SocketAddr) -> libc::sockaddr_in {
    let IpAddr::V4(ip) = addr.ip() else {
        panic!("the bench traffic is IPv4")
    };
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
    sa
}

/// Sends `payload`-byte datagrams from `src` to `dst` for `dur` with
/// `senders` threads, each round-robin over its own `flows_per_sender`
/// connected sockets (one flow each) in sendmmsg batches; a receiver in
/// `dst_pod` counts with recvmmsg. Returns what was sent and delivered.
pub fn udp_blast(
    src: &Pod,
    dst_pod: &Pod,
    dst: SocketAddr,
    senders: usize,
    flows_per_sender: usize,
    payload: usize,
    dur: Duration,
) -> Result<UdpLoad> {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let rx = {
        let stop = stop.clone();
        let received = received.clone();
        dst_pod.ns.run(move || -> Result<f64> {
            let s = std::net::UdpSocket::bind(dst).with_context(|| format!("bind {dst}"))?;
            let fd = s.as_raw_fd();
            // A deep receive queue so bursts are not dropped at the socket.
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20);
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            ready_tx.send(()).ok();
            let mut bufs = vec![[0u8; 2048]; BATCH];
            let mut iov: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iov
                .iter_mut()
                .map(|v| {
                    // SAFETY: all-zero is a valid mmsghdr.
                    let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    h.msg_hdr.msg_iov = v;
                    h.msg_hdr.msg_iovlen = 1;
                    h
                })
                .collect();
            let cpu0 = thread_cpu_s();
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: msgs point at live iovecs/buffers of the given sizes.
                let n = unsafe {
                    libc::recvmmsg(
                        fd,
                        msgs.as_mut_ptr(),
                        BATCH as u32,
                        libc::MSG_WAITFORONE,
                        std::ptr::null_mut(),
                    )
                };
                if n > 0 {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Ok(thread_cpu_s() - cpu0)
        })
    };
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the UDP receiver did not start")?;

    let soft0 = ksoftirqd_cpu_s();
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..senders {
        handles.push(src.ns.run(move || -> Result<(u64, f64)> {
            let mut socks = Vec::new();
            for _ in 0..flows_per_sender {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").context("bind sender")?;
                s.connect(dst).with_context(|| format!("connect {dst}"))?;
                setsockopt_int(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUFFORCE,
                    8 << 20,
                );
                socks.push(s);
            }
            let data = vec![0x42u8; payload];
            let mut iov: Vec<libc::iovec> = (0..BATCH)
                .map(|_| libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: payload,
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iov
                .iter_mut()
                .map(|v| {
                    // SAFETY: all-zero is a valid mmsghdr.
                    let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    h.msg_hdr.msg_iov = v;
                    h.msg_hdr.msg_iovlen = 1;
                    h
                })
                .collect();
            let mut sent = 0u64;
            let mut i = 0usize;
            let cpu0 = thread_cpu_s();
            let deadline = Instant::now() + dur;
            while Instant::now() < deadline {
                for _ in 0..16 {
                    let fd = socks[i % socks.len()].as_raw_fd();
                    i += 1;
                    // SAFETY: msgs point at live iovecs over `data`.
                    let n = unsafe {
                        libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT)
                    };
                    if n > 0 {
                        sent += n as u64;
                    }
                }
            }
            Ok((sent, thread_cpu_s() - cpu0))
        }));
    }
    let mut sent = 0;
    let mut cpu_s = 0.0;
    for h in handles {
        let (n, c) = h
            .join()
            .map_err(|_| anyhow::anyhow!("UDP sender panicked"))??;
        sent += n;
        cpu_s += c;
    }
    let secs = start.elapsed().as_secs_f64();
    // Let what is in flight arrive, then stop the receiver.
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    cpu_s += rx
        .join()
        .map_err(|_| anyhow::anyhow!("UDP receiver panicked"))??;
    cpu_s += ksoftirqd_cpu_s() - soft0;
    Ok(UdpLoad {
        sent,
        received: received.load(Ordering::Relaxed),
        secs,
        cpu_s,
    })
}

/// Sends one datagram to each of `ports` on `dst` from each of `sources`
/// sockets in `pod`, at about `rate` datagrams per second (a flow each).
pub fn udp_fanout(
    pod: &Pod,
    dst: IpAddr,
    ports: std::ops::Range<u16>,
    sources: usize,
    rate: u64,
) -> Result<u64> {
    pod.ns
        .run(move || -> Result<u64> {
            let mut sent = 0u64;
            let start = Instant::now();
            let data = [0x17u8; SMALL_PAYLOAD];
            for _ in 0..sources {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").context("bind")?;
                for p in ports.clone() {
                    let sa = sockaddr_in(SocketAddr::new(dst, p));
                    // SAFETY: data and sa are valid for their sizes.
                    let n = unsafe {
                        libc::sendto(
                            s.as_raw_fd(),
                            data.as_ptr().cast(),
                            data.len(),
                            0,
                            (&sa as *const libc::sockaddr_in).cast(),
                            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                        )
                    };
                    if n < 0 {
                        let e = errno();
                        // A full queue: slow down and retry once.
                        std::thread::sleep(Duration::from_millis(5));
                        if e.raw_os_error() != Some(libc::EAGAIN)
                            && e.raw_os_error() != Some(libc::ENOBUFS)
                        {
                            bail!("sendto {dst}:{p}: {e}");
                        }
                        continue;
                    }
                    sent += 1;
                    // Pace: never more than `rate` per second on average.
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    let el = start.elapsed();
                    if due > el {
                        std::thread::sleep(due - el);
                    }
                }
            }
            Ok(sent)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("UDP fan-out panicked"))?
}

/// A TCP listener in a pod that accepts and at once closes every connection.
pub fn tcp_closer(pod: &Pod, addr: SocketAddr) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    pod.ns.run(move || {
        let l = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let _ = tx.send(Ok(()));
        for s in l.incoming() {
            drop(s);
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("TCP listener did not start")?
        .with_context(|| format!("bind {addr}"))
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Storm {
    /// Connections that completed the handshake.
    pub made: u64,
    /// connect() failures (the generator's or the stack's limit).
    pub failed: u64,
    pub secs: f64,
}

/// Opens connections from `pod` to `dsts` (in turn) for `dur` with `threads` threads,
/// paced to `rate` per second in total (None: as fast as they go). Each
/// connection is closed right after the handshake.
pub fn tcp_storm(
    pod: &Pod,
    dsts: &[SocketAddr],
    threads: usize,
    rate: Option<f64>,
    dur: Duration,
) -> Result<Storm> {
    let start = Instant::now();
    let mut hs = Vec::new();
    for _ in 0..threads {
        let dsts = dsts.to_vec();
        hs.push(pod.ns.run(move || {
            let mut made = 0u64;
            let mut failed = 0u64;
            let t0 = Instant::now();
            let per_thread = rate.map(|r| r / threads as f64);
            while t0.elapsed() < dur {
                if let Some(r) = per_thread {
                    let due = Duration::from_secs_f64((made + failed) as f64 / r);
                    let el = t0.elapsed();
                    if due > el {
                        std::thread::sleep(due - el);
                    }
                }
                let dst = dsts[(made + failed) as usize % dsts.len()];
                match TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
                    Ok(s) => {
                        made += 1;
                        drop(s);
                    }
                    Err(_) => failed += 1,
                }
            }
            (made, failed)
        }));
    }
    let mut out = Storm::default();
    for h in hs {
        let (m, f) = h
            .join()
            .map_err(|_| anyhow::anyhow!("storm thread panicked"))?;
        out.made += m;
        out.failed += f;
    }
    out.secs = start.elapsed().as_secs_f64();
    Ok(out)
}

/// An iperf3 server in a pod, killed on drop.
pub struct Iperf3Server {
    child: Child,
}

impl Iperf3Server {
    pub fn start(netns: &str, addr: IpAddr, port: u16) -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "iperf3", "-s", "-B"])
            .arg(addr.to_string())
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        // Give it a moment to listen.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Iperf3Server { child })
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One iperf3 TCP run from `netns` to `addr:port`: received bits per second
/// (the first second, slow start, is omitted).
pub fn iperf3_bps(netns: &str, addr: IpAddr, port: u16, secs: u32) -> Result<f64> {
    let mut last_err = String::new();
    for _ in 0..3 {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "iperf3", "-c"])
            .arg(addr.to_string())
            .args([
                "-p",
                &port.to_string(),
                "-t",
                &secs.to_string(),
                "-O",
                "1",
                // Client on CPU 0, server on CPU 1: left to the scheduler,
                // where the two land changes the rate by up to 2x between
                // runs on this kind of 2-core machine.
                "-A",
                "0,1",
                "-J",
            ])
            .output()
            .context("running iperf3 -c")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps);
        }
        last_err = v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned());
        // The server is busy finishing the previous test: retry shortly.
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("iperf3 -c {addr}: {last_err}")
}
