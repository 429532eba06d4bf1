//! kaprobe's kernel side: tracepoint programs that follow TCP keepalive and connection
//! death, and stream records to the agent through one ring buffer.
//!
//! Every struct offset comes from the running kernel's BTF, written by the agent into
//! [`CONFIG`] before load (see kaprobe-user/src/kernel/facts.rs). Nothing here hard-codes a
//! kernel layout. Kernel memory is read two ways ([`kernel::Mem`]): under BTF tracepoints,
//! direct loads from the BTF-typed arguments, which the verifier checks against the struct's
//! layout; under raw tracepoints, and from pointers computed by hand (the socket behind a
//! timer), `bpf_probe_read_kernel`, which can never fault the kernel.
#![no_std]
#![no_main]
#![deny(warnings)]

mod hooks;
mod kernel;
mod maps;
mod reset;
mod state;
mod timer;

use kaprobe_common::Config;

/// Filled in by the agent before load. The programs read it with `read_volatile` (through
/// [`conf!`]) so that the compiler cannot fold the zeroes below into the code; the verifier
/// then sees the real values, because aya freezes `.rodata`.
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    keepalive_timer_fn: 0,
    flags: 0,
    sock_flag_keepopen: 0,
    sock_flag_dead: 0,
    timer_function: 0,
    timer_expires: 0,
    sk_timer: 0,
    sk_flags: 0,
    sk_err: 0,
    sk_protocol: 0,
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    inet_sport: 0,
    skc_family: 0,
    skc_state: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_net: 0,
    net_ns_inum: 0,
    net_keepalive_time: 0,
    net_keepalive_intvl: 0,
    net_keepalive_probes: 0,
    icsk_probes_out: 0,
    icsk_user_timeout: 0,
    tp_keepalive_time: 0,
    tp_keepalive_intvl: 0,
    tp_keepalive_probes: 0,
    tp_rcv_tstamp: 0,
    icsk_lrcvtime: 0,
    tp_packets_out: 0,
    tp_write_seq: 0,
    tp_snd_una: 0,
    tp_bytes_sent: 0,
    tp_bytes_retrans: 0,
    tp_bytes_received: 0,
    tp_segs_in: 0,
    tp_segs_out: 0,
    skc_cookie: 0,
    sock_flag_done: 0,
    task_group_leader: 0,
    task_comm: 0,
    n_filter_netns: 0,
    n_filter_ports: 0,
    filter_netns: [0; kaprobe_common::MAX_KERNEL_FILTERS],
    filter_ports: [0; kaprobe_common::MAX_KERNEL_FILTERS],
    _pad: 0,
    skb_head: 0,
    skb_network_header: 0,
    skb_transport_header: 0,
    skb_dev: 0,
    dev_nd_net: 0,
    wakeup_bytes: 0,
    sock_sets_mask: 0,
    tp_lsndtime: 0,
    tp_retrans_stamp: 0,
    tp_tcp_mstamp: 0,
    idle_close_jiffies: 0,
    birth_budget: 0,
    birth_window_jiffies: 0,
    birth_jiffy_ns: 0,
    _pad2: 0,
    birth_start_ns: 0,
    sk_cgroup: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    _pad3: 0,
};

/// Reads one field of [`CONFIG`].
#[macro_export]
macro_rules! conf {
    ($field:ident) => {
        // SAFETY: CONFIG is a plain static; a volatile read of one of its fields is
        // always valid.
        unsafe { core::ptr::read_volatile(&raw const $crate::CONFIG.$field) }
    };
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The programs' licence as the kernel reads it: dual MIT / GPL-2.0 (GPL-compatible, which
/// the helpers kaprobe calls require; see kaprobe-ebpf/Cargo.toml and LICENSE-GPL-2.0).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
