//! Checking, before anything is loaded, that the agent may do what it needs.

/// Capability numbers (include/uapi/linux/capability.h).
pub(crate) const CAP_DAC_READ_SEARCH: u32 = 2;
pub(crate) const CAP_SYS_PTRACE: u32 = 19;
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
pub(crate) const CAP_SYSLOG: u32 = 34;
pub(crate) const CAP_PERFMON: u32 = 38;
pub(crate) const CAP_BPF: u32 = 39;

/// Effective capabilities of this process, from /proc/self/status.
pub(crate) fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Names of the capabilities `watch` needs that `caps` lacks. CAP_SYS_ADMIN stands in for
/// CAP_BPF and CAP_PERFMON, as in the kernel.
pub(crate) fn missing_for_watch(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    let admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !admin {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !admin {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_SYSLOG) {
        missing.push("CAP_SYSLOG");
    }
    missing
}
