//! Traffic from inside a pod's namespace: real sockets, known byte counts.

use super::*;

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
