//! Refuse to start without the capabilities loading and attaching need, and
//! say which are missing (rather than a bare EPERM from the kernel).

use super::DatapathError;

/// A capability by number (include/uapi/linux/capability.h) and name.
#[derive(Clone, Copy, Debug)]
pub struct Cap {
    pub bit: u32,
    pub name: &'static str,
}

pub const CAP_NET_ADMIN: Cap = Cap {
    bit: 12,
    name: "CAP_NET_ADMIN",
};
pub const CAP_SYS_ADMIN: Cap = Cap {
    bit: 21,
    name: "CAP_SYS_ADMIN",
};
pub const CAP_PERFMON: Cap = Cap {
    bit: 38,
    name: "CAP_PERFMON",
};
pub const CAP_BPF: Cap = Cap {
    bit: 39,
    name: "CAP_BPF",
};

/// CAP_BPF loads programs and creates maps; CAP_PERFMON lets the verifier
/// accept the pointer arithmetic of packet parsing (kernel/bpf/syscall.c,
/// `bpf_token_capable`/`perfmon_capable`); CAP_NET_ADMIN attaches to tc/tcx
/// (net/core/dev.c, `tcx_prog_attach`). CAP_SYS_ADMIN stands in for BPF and
/// PERFMON on kernels that have them folded in.
pub const NEEDED: [Cap; 3] = [CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN];

/// The effective capability set of this process, from /proc/self/status.
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Which of `needed` the effective set lacks (CAP_SYS_ADMIN covers BPF and
/// PERFMON, as the kernel's own checks accept it).
pub fn missing(eff: u64, needed: &[Cap]) -> Vec<&'static str> {
    let has = |c: Cap| eff & (1u64 << c.bit) != 0;
    needed
        .iter()
        .filter(|c| {
            let covered = has(**c)
                || ((c.bit == CAP_BPF.bit || c.bit == CAP_PERFMON.bit) && has(CAP_SYS_ADMIN));
            !covered
        })
        .map(|c| c.name)
        .collect()
}

pub fn require(needed: &[Cap]) -> Result<(), DatapathError> {
    // Without /proc we cannot tell; the kernel will say EPERM if it must.
    let Some(eff) = effective() else {
        return Ok(());
    };
    let missing = missing(eff, needed);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DatapathError::MissingCapabilities {
            missing: missing.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_exactly_the_missing_capabilities() {
        let only_net_admin = 1u64 << 12;
        assert_eq!(
            missing(only_net_admin, &NEEDED),
            vec!["CAP_BPF", "CAP_PERFMON"]
        );
        let sys_admin_and_net = (1u64 << 21) | (1u64 << 12);
        assert!(
            missing(sys_admin_and_net, &NEEDED).is_empty(),
            "SYS_ADMIN covers BPF and PERFMON"
        );
        assert_eq!(
            missing(0, &NEEDED),
            vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
    }

    #[test]
    fn parses_proc_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
    }
}
