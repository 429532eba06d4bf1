//! What kaprobe learns about the running kernel at start-up: struct offsets and tracepoint
//! prototypes from BTF, the address of `tcp_keepalive_timer` from /proc/kallsyms, the
//! names of `enum sk_rst_reason`, and the tick rate (HZ) needed to turn jiffies into time.
use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
};

use kaprobe_common::{Config, config_flag};
use thiserror::Error;

use crate::kernel::btf::{Btf, BtfError};

pub(crate) const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub(crate) enum KernelError {
    #[error("no kernel BTF at {0}: kaprobe needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf(PathBuf),
    #[error("cannot read kernel BTF at {0}: {1}")]
    BtfUnreadable(PathBuf, std::io::Error),
    #[error("{0}")]
    Btf(#[from] BtfError),
    #[error("kernel field `{field}` is {got} bytes, kaprobe expects {want}")]
    FieldSize { field: String, got: u32, want: u32 },
    #[error("cannot read /proc/kallsyms: {0}")]
    KallsymsUnreadable(std::io::Error),
    #[error("`tcp_keepalive_timer` is not in /proc/kallsyms")]
    NoKeepaliveTimer,
    #[error(
        "/proc/kallsyms hides addresses (shows 0 for tcp_keepalive_timer): run as root or grant CAP_SYSLOG"
    )]
    KallsymsHidden,
    #[error("cannot tell the kernel's tick rate (HZ): {0}")]
    NoHz(String),
}

/// One tracepoint kaprobe hooks, as the running kernel declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TracepointProto {
    pub(crate) name: &'static str,
    /// Argument types (without the leading `void *` context).
    pub(crate) args: Vec<String>,
}

/// Everything learned about the kernel.
#[derive(Debug, Clone)]
pub(crate) struct KernelFacts {
    pub(crate) release: String,
    pub(crate) config: Config,
    pub(crate) hz: u32,
    /// Where `hz` came from (for `agent_start`).
    pub(crate) hz_source: String,
    /// `enum sk_rst_reason` values → lowercase names without the `SK_RST_REASON_` prefix.
    pub(crate) reset_reasons: HashMap<u32, String>,
    /// Where the kernel reports skipped program runs (absent before 5.12).
    pub(crate) prog_info: Option<ProgInfoLayout>,
}

impl KernelFacts {
    pub(crate) fn has_reset_reason(&self) -> bool {
        self.config.flags & config_flag::RESET_HAS_REASON != 0
    }
}

/// The tracepoints kaprobe attaches, all required.
pub(crate) const TRACEPOINTS: [&str; 6] = [
    "timer_expire_entry",
    "timer_expire_exit",
    "inet_sock_set_state",
    "tcp_send_reset",
    "tcp_receive_reset",
    "inet_sk_error_report",
];

/// Loads the running kernel's BTF.
pub(crate) fn load_btf(path: &Path) -> Result<Btf, KernelError> {
    match Btf::from_file(path) {
        Ok(parsed) => Ok(parsed?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(KernelError::NoBtf(path.into())),
        Err(e) => Err(KernelError::BtfUnreadable(path.into(), e)),
    }
}

/// Offset of `path` in `strukt`; `path` may list alternatives separated by `|` (a field
/// that moved between kernels), tried in order.
fn field(btf: &Btf, strukt: &str, path: &str, want: u32) -> Result<u32, KernelError> {
    let mut alternatives = path.split('|');
    let first = alternatives.next().unwrap_or(path);
    let f = match btf.field(strukt, first) {
        Ok(f) => f,
        Err(e) => alternatives
            .find_map(|alt| btf.field(strukt, alt).ok())
            .ok_or(e)?,
    };
    if f.size != want {
        return Err(KernelError::FieldSize {
            field: format!("{strukt}.{path}"),
            got: f.size,
            want,
        });
    }
    Ok(f.offset)
}

/// Fills the offsets and flags of [`Config`] from BTF. `keepalive_timer_fn` is left 0.
pub(crate) fn config_from_btf(btf: &Btf) -> Result<(Config, Vec<TracepointProto>), KernelError> {
    let mut c = Config::default();
    macro_rules! set {
        ($($dst:ident = $strukt:literal, $path:literal, $size:expr;)*) => {
            $( c.$dst = field(btf, $strukt, $path, $size)?; )*
        };
    }
    set! {
        timer_function = "timer_list", "function", 8;
        timer_expires = "timer_list", "expires", 8;
        // The keepalive timer: `inet_connection_sock.icsk_keepalive_timer` up to 6.12 (in
        // an anonymous union with MPTCP's `mptcp_tout_timer`, after `sk_timer`), `sk_timer`
        // itself since (measured: 6.1 and 6.12 in VMs, 6.18 on the host).
        sk_timer = "tcp_sock", "inet_conn.icsk_keepalive_timer|inet_conn.icsk_inet.sk.sk_timer", size_of_timer_list(btf)?;
        // sk_flags moved into sock_common as skc_flags in 6.18.
        sk_flags = "sock", "sk_flags|__sk_common.skc_flags", 8;
        sk_err = "sock", "sk_err", 4;
        sk_protocol = "sock", "sk_protocol", 2;
        skc_daddr = "sock", "__sk_common.skc_daddr", 4;
        skc_rcv_saddr = "sock", "__sk_common.skc_rcv_saddr", 4;
        skc_dport = "sock", "__sk_common.skc_dport", 2;
        skc_num = "sock", "__sk_common.skc_num", 2;
        inet_sport = "tcp_sock", "inet_conn.icsk_inet.inet_sport", 2;
        skc_family = "sock", "__sk_common.skc_family", 2;
        skc_state = "sock", "__sk_common.skc_state", 1;
        skc_v6_daddr = "sock", "__sk_common.skc_v6_daddr", 16;
        skc_v6_rcv_saddr = "sock", "__sk_common.skc_v6_rcv_saddr", 16;
        skc_net = "sock", "__sk_common.skc_net.net", 8;
        net_ns_inum = "net", "ns.inum", 4;
        net_keepalive_time = "net", "ipv4.sysctl_tcp_keepalive_time", 4;
        net_keepalive_intvl = "net", "ipv4.sysctl_tcp_keepalive_intvl", 4;
        net_keepalive_probes = "net", "ipv4.sysctl_tcp_keepalive_probes", 1;
        icsk_probes_out = "tcp_sock", "inet_conn.icsk_probes_out", 1;
        icsk_user_timeout = "tcp_sock", "inet_conn.icsk_user_timeout", 4;
        tp_keepalive_time = "tcp_sock", "keepalive_time", 4;
        tp_keepalive_intvl = "tcp_sock", "keepalive_intvl", 4;
        tp_keepalive_probes = "tcp_sock", "keepalive_probes", 1;
        tp_rcv_tstamp = "tcp_sock", "rcv_tstamp", 4;
        tp_lsndtime = "tcp_sock", "lsndtime", 4;
        tp_retrans_stamp = "tcp_sock", "retrans_stamp", 4;
        tp_tcp_mstamp = "tcp_sock", "tcp_mstamp", 8;
        icsk_lrcvtime = "tcp_sock", "inet_conn.icsk_ack.lrcvtime", 4;
        tp_packets_out = "tcp_sock", "packets_out", 4;
        tp_write_seq = "tcp_sock", "write_seq", 4;
        tp_snd_una = "tcp_sock", "snd_una", 4;
        tp_bytes_sent = "tcp_sock", "bytes_sent", 8;
        tp_bytes_retrans = "tcp_sock", "bytes_retrans", 8;
        tp_bytes_received = "tcp_sock", "bytes_received", 8;
        tp_segs_in = "tcp_sock", "segs_in", 4;
        tp_segs_out = "tcp_sock", "segs_out", 4;
        skc_cookie = "sock", "__sk_common.skc_cookie", 8;
        task_group_leader = "task_struct", "group_leader", 8;
        task_comm = "task_struct", "comm", 16;
        skb_head = "sk_buff", "head", 8;
        skb_network_header = "sk_buff", "network_header", 2;
        skb_transport_header = "sk_buff", "transport_header", 2;
        skb_dev = "sk_buff", "dev", 8;
        dev_nd_net = "net_device", "nd_net.net", 8;
    }
    // Optional: the socket's cgroup (CONFIG_SOCK_CGROUP_DATA; `sock_cgroup_data.cgroup` since
    // 5.15), for closes whose owner is unknown.
    let sock_cgroup = (
        field(btf, "sock", "sk_cgrp_data.cgroup", 8),
        field(btf, "cgroup", "kn", 8),
        field(btf, "kernfs_node", "id", 8),
    );
    if let (Ok(sk_cgroup), Ok(cgroup_kn), Ok(kernfs_node_id)) = sock_cgroup {
        c.sk_cgroup = sk_cgroup;
        c.cgroup_kn = cgroup_kn;
        c.kernfs_node_id = kernfs_node_id;
        c.flags |= config_flag::SOCK_CGROUP;
    } else {
        log::debug!("no socket cgroup in this kernel's BTF: ownerless closes name none");
    }
    // Optional: a whole byte from 5.6 on (a 2-bit field before).
    c.sock_flag_keepopen = enum_u32(btf, "sock_flags", "SOCK_KEEPOPEN")?;
    c.sock_flag_dead = enum_u32(btf, "sock_flags", "SOCK_DEAD")?;
    c.sock_flag_done = enum_u32(btf, "sock_flags", "SOCK_DONE")?;

    let mut protos = Vec::new();
    for name in TRACEPOINTS {
        let args = btf.tracepoint_args(name)?;
        protos.push(TracepointProto { name, args });
    }
    let send_reset = protos
        .iter()
        .find(|p| p.name == "tcp_send_reset")
        .map(|p| p.args.len());
    if send_reset.is_some_and(|n| n >= 3) {
        c.flags |= config_flag::RESET_HAS_REASON;
    }
    Ok((c, protos))
}

fn size_of_timer_list(btf: &Btf) -> Result<u32, KernelError> {
    // sk_timer is a whole `struct timer_list`; its size is whatever this kernel says.
    Ok(btf.field("sock", "sk_timer")?.size)
}

fn enum_u32(btf: &Btf, name: &str, variant: &str) -> Result<u32, KernelError> {
    Ok(btf.enum_value(name, variant)? as u32)
}

/// `enum sk_rst_reason` as value → `no_socket`, `tcp_keepalive_timeout`, ... (empty on
/// kernels without the enum, before 6.10).
pub(crate) fn reset_reason_names(btf: &Btf) -> HashMap<u32, String> {
    btf.enum_values("sk_rst_reason")
        .map(|values| {
            values
                .into_iter()
                .filter(|(n, _)| n != "SK_RST_REASON_MAX")
                .map(|(n, v)| {
                    let short = n
                        .strip_prefix("SK_RST_REASON_")
                        .unwrap_or(&n)
                        .to_ascii_lowercase();
                    (v as u32, short)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Finds `symbol`'s address in kallsyms-formatted text (`ffffffff81234560 t name [module]`).
pub(crate) fn kallsyms_lookup(text: &str, symbol: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_ascii_whitespace();
        let addr = it.next()?;
        let _kind = it.next()?;
        let name = it.next()?;
        (name == symbol)
            .then(|| u64::from_str_radix(addr, 16).ok())
            .flatten()
    })
}

/// Address of `tcp_keepalive_timer` from /proc/kallsyms.
pub(crate) fn keepalive_timer_address() -> Result<u64, KernelError> {
    let text =
        std::fs::read_to_string("/proc/kallsyms").map_err(KernelError::KallsymsUnreadable)?;
    match kallsyms_lookup(&text, "tcp_keepalive_timer") {
        None => Err(KernelError::NoKeepaliveTimer),
        Some(0) => Err(KernelError::KallsymsHidden),
        Some(addr) => Ok(addr),
    }
}

/// `CONFIG_HZ=` in kernel config text.
pub(crate) fn hz_from_config(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ=")?.trim().parse().ok())
}

/// The kernel's HZ: from /proc/config.gz or /boot/config-<release>, else measured from the
/// jiffies counter that /proc/schedstat shows (`timestamp`) over 100 ms.
pub(crate) fn kernel_hz(release: &str) -> Result<(u32, String), KernelError> {
    if let Ok(gz) = std::fs::read("/proc/config.gz") {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .is_ok()
        {
            if let Some(hz) = hz_from_config(&text) {
                return Ok((hz, "/proc/config.gz".into()));
            }
        }
    }
    let boot = format!("/boot/config-{release}");
    if let Ok(text) = std::fs::read_to_string(&boot) {
        if let Some(hz) = hz_from_config(&text) {
            return Ok((hz, boot));
        }
    }
    measure_hz().map(|hz| (hz, "measured from /proc/schedstat".into()))
}

fn schedstat_jiffies() -> Result<u64, KernelError> {
    let text = std::fs::read_to_string("/proc/schedstat")
        .map_err(|e| KernelError::NoHz(format!("no kernel config and /proc/schedstat: {e}")))?;
    text.lines()
        .find_map(|l| l.strip_prefix("timestamp ")?.trim().parse().ok())
        .ok_or_else(|| KernelError::NoHz("/proc/schedstat has no timestamp line".into()))
}

fn measure_hz() -> Result<u32, KernelError> {
    let t0 = std::time::Instant::now();
    let j0 = schedstat_jiffies()?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    let j1 = schedstat_jiffies()?;
    let secs = t0.elapsed().as_secs_f64();
    let raw = (j1.saturating_sub(j0)) as f64 / secs;
    // Kernels are built with one of these.
    [100u32, 250, 300, 1000]
        .into_iter()
        .min_by(|a, b| (*a as f64 - raw).abs().total_cmp(&(*b as f64 - raw).abs()))
        .filter(|hz| (*hz as f64 - raw).abs() / (*hz as f64) < 0.2)
        .ok_or_else(|| KernelError::NoHz(format!("measured {raw:.0} ticks/s")))
}

pub(crate) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Everything at once, for `watch` (`keepalive_timer_fn`: [`keepalive_timer_address`],
/// looked up while the BTF is parsed).
pub(crate) fn probe(btf: &Btf, keepalive_timer_fn: u64) -> Result<KernelFacts, KernelError> {
    let release = kernel_release();
    let (mut config, _) = config_from_btf(btf)?;
    config.keepalive_timer_fn = keepalive_timer_fn;
    let (hz, hz_source) = kernel_hz(&release)?;
    Ok(KernelFacts {
        release,
        config,
        hz,
        hz_source,
        reset_reasons: reset_reason_names(btf),
        prog_info: ProgInfoLayout::from_btf(btf).ok(),
    })
}

/// Where the counters kaprobe reads sit in `struct bpf_prog_info` (see
/// [`crate::bpf::progstats`]), from the kernel's BTF.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProgInfoLayout {
    pub(crate) size: u32,
    pub(crate) recursion_misses: u32,
    pub(crate) run_time_ns: u32,
    pub(crate) run_cnt: u32,
}

impl ProgInfoLayout {
    pub(crate) fn from_btf(btf: &Btf) -> Result<ProgInfoLayout, BtfError> {
        let misses = btf.field("bpf_prog_info", "recursion_misses")?;
        let time = btf.field("bpf_prog_info", "run_time_ns")?;
        let count = btf.field("bpf_prog_info", "run_cnt")?;
        let end = btf
            .field("bpf_prog_info", "attach_btf_id")
            .map(|f| f.offset + f.size)
            .unwrap_or(0);
        let size = [misses, time, count]
            .iter()
            .map(|f| f.offset + 8)
            .fold(end, u32::max);
        Ok(ProgInfoLayout {
            size,
            recursion_misses: misses.offset,
            run_time_ns: time.offset,
            run_cnt: count.offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms() {
        let text = "ffffffff81000000 T _stext\nffffffff81c6a2b0 t tcp_keepalive_timer\nffffffff81c6a2c0 t tcp_keepalive_timer.cold\n0000000000000000 t hidden [mod]\n";
        assert_eq!(
            kallsyms_lookup(text, "tcp_keepalive_timer"),
            Some(0xffffffff81c6a2b0)
        );
        assert_eq!(kallsyms_lookup(text, "hidden"), Some(0));
        assert_eq!(kallsyms_lookup(text, "absent"), None);
    }

    #[test]
    fn hz_from_kernel_config() {
        assert_eq!(
            hz_from_config("# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(hz_from_config("CONFIG_HZ_1000=y\n"), None);
    }
}
