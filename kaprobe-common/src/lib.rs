//! Types shared by the eBPF programs (`kaprobe-ebpf`) and the agent (`kaprobe-user`).
//!
//! Everything here crosses the kernel/user boundary, so every struct is `#[repr(C)]`,
//! holds integers only, and spells out its padding. Record kinds are stable numbers that
//! are never reused. The agent decodes records in exactly one place
//! (`kaprobe_user::bpf::decode`), with length checks.
#![no_std]

/// Kinds of ring-buffer records. Stable numbers: never reuse or renumber one.
pub mod kind {
    /// One firing of `tcp_keepalive_timer` on a socket with `SO_KEEPALIVE` (or one that died
    /// in it), with the socket's state before and after. [`super::TimerRecord`].
    pub const KA_TIMER: u32 = 1;
    /// A FIN went out or came in on a tracked socket. [`super::StateRecord`].
    pub const STATE: u32 = 2;
    /// A tracked or failing socket reached `TCP_CLOSE`. [`super::CloseRecord`].
    pub const CLOSE: u32 = 3;
    /// `tcp:tcp_send_reset`. [`super::ResetSentRecord`].
    pub const RST_SENT: u32 = 4;
    /// `tcp:tcp_receive_reset`. [`super::ResetRecvRecord`].
    pub const RST_RECV: u32 = 5;
    /// `sock:inet_sk_error_report` on a TCP socket. [`super::ErrorRecord`].
    pub const SK_ERROR: u32 = 6;
    // 7 was `DESTROY` (`tcp:tcp_destroy_sock`, no longer attached: docs/design.md); not reused.
}

/// TCP states, as in the kernel's `include/net/tcp_states.h` (a userspace ABI, stable).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// Most `--netns` and `--port` values applied in the kernel.
pub const MAX_KERNEL_FILTERS: usize = 8;

/// `reason` value meaning "this kernel's tracepoint has no reason argument".
pub const REASON_UNKNOWN: u32 = u32::MAX;

/// Flags in [`TimerRecord::flags`].
pub mod timer_flag {
    /// `SOCK_KEEPOPEN` was set at timer entry.
    pub const KEEPOPEN: u32 = 1 << 0;
    /// `SOCK_DEAD` (orphan: no process holds the socket) at timer entry.
    pub const ORPHAN: u32 = 1 << 1;
    /// The socket reached `TCP_CLOSE` inside this firing; `close` is valid.
    pub const DIED: u32 = 1 << 2;
    /// The timer sent an RST (`reset_reason` is valid).
    pub const RST_SENT: u32 = 1 << 3;
    /// `inet_sk_error_report` ran inside this firing (`error` is valid).
    pub const ERROR_REPORTED: u32 = 1 << 4;
    /// `keepalive_time` came from the namespace's sysctl (the socket sets none).
    pub const TIME_FROM_SYSCTL: u32 = 1 << 5;
    /// `keepalive_intvl` came from the namespace's sysctl.
    pub const INTVL_FROM_SYSCTL: u32 = 1 << 6;
    /// `keepalive_probes` came from the namespace's sysctl.
    pub const PROBES_FROM_SYSCTL: u32 = 1 << 7;
    /// At entry the socket was idle for the keepalive time with no data in flight: this
    /// firing sends a probe (or gives up), unless the socket is busy. Its re-arm delay
    /// tells which (`keepalive_intvl` after a probe).
    pub const PROBE_BRANCH: u32 = 1 << 8;
}

/// Flags in [`CloseInfo::flags`].
pub mod close_flag {
    /// This CPU had just sent an RST on the socket (`reset_reason` valid).
    pub const RST_SENT: u32 = 1 << 0;
    /// This CPU had just processed an RST for the socket.
    pub const RST_RECV: u32 = 1 << 1;
    /// The socket is reported at close: it had SO_KEEPALIVE at some transition, or
    /// `--all` is on.
    pub const TRACKED: u32 = 1 << 2;
    /// `SOCK_KEEPOPEN` was set at close.
    pub const KEEPOPEN: u32 = 1 << 3;
    /// `SOCK_DEAD` (orphan) at close.
    pub const ORPHAN: u32 = 1 << 4;
    /// This side connected (its SYN_SENT was seen).
    pub const OUTBOUND: u32 = 1 << 5;
    /// Accepted from a listener (its SYN_RECV was seen).
    pub const INBOUND: u32 = 1 << 6;
    /// This side sent the first FIN after the connection had been idle (no data either way)
    /// for at least [`super::Config::idle_close_jiffies`]: an idle close (a keep-alive or
    /// pool idle timeout). The close is sent for it even when the connection is not
    /// otherwise reported.
    pub const IDLE_CLOSE: u32 = 1 << 7;
    /// [`super::CloseInfo::fin_idle`] is valid: this side sent the first FIN (FIN_WAIT1) and
    /// the idle time then was measured.
    pub const FIN_IDLE: u32 = 1 << 8;
}

/// Indexes in the per-CPU `STATS` array.
pub mod stat {
    /// Records dropped because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// Sockets whose lifecycle data was dropped because their set of the `SOCKS` table was
    /// full (the oldest entry of the set is evicted).
    pub const CONN_TABLE_FULL: u32 = 1;
    /// `timer_expire_exit` of a keepalive timer with no matching entry on this CPU (the
    /// firing's record is lost).
    pub const TIMER_UNPAIRED: u32 = 2;
    /// `timer_expire_entry` of a keepalive timer while this CPU's scratch still held another.
    pub const TIMER_OVERLAP: u32 = 3;
    /// Records written into the ring buffer (the agent compares with what it read).
    pub const RECORDS_SENT: u32 = 4;
    /// Keepalive timer records lost (ring buffer full) whose firing ended the connection:
    /// each is a keepalive timeout (or an orphan's end) the agent cannot report.
    pub const LOST_TIMER_DEATHS: u32 = 5;
    /// Records not sent because `--port`/`--netns` filtered them out in the kernel.
    pub const FILTERED: u32 = 6;
    /// First of the per-kind counts of records lost because the ring buffer was full:
    /// `LOST_BY_KIND + kind` for each [`super::kind`] (1..=7).
    pub const LOST_BY_KIND: u32 = 8;
    /// Firings of keepalive timers (`timer_expire_entry` of `tcp_keepalive_timer`).
    pub const TIMER_FIRINGS: u32 = 16;
    /// ... of which on a socket without `SO_KEEPALIVE` (nothing to follow).
    pub const TIMER_NOT_KEEPOPEN: u32 = 17;
    /// ... of which paired with their exit but not sent: no probe was due, none out.
    pub const TIMER_QUIET: u32 = 18;
    /// Births of connections without keepalive not recorded because this CPU's birth budget
    /// (its token bucket) was spent ([`super::Config::birth_budget`]): if such a
    /// connection fails, it is reported without owner or lifetime.
    pub const BIRTHS_SHED: u32 = 19;
    pub const COUNT: u32 = 24;
}

/// Every ring-buffer record starts with a [`Header`].
pub trait Record {
    fn header(&self) -> &Header;
    /// The connection the record is about.
    fn tuple(&self) -> &Tuple;
}

macro_rules! records {
    ($($t:ty),*) => {$(
        impl Record for $t {
            #[inline(always)]
            fn header(&self) -> &Header {
                &self.header
            }

            #[inline(always)]
            fn tuple(&self) -> &Tuple {
                &self.tuple
            }
        }
    )*};
}
records!(
    TimerRecord,
    StateRecord,
    CloseRecord,
    ResetSentRecord,
    ResetRecvRecord,
    ErrorRecord
);

/// Map names, shared so the agent and the programs cannot drift apart.
pub mod map_name {
    pub const EVENTS: &str = "EVENTS";
    pub const STATS: &str = "STATS";
    pub const SOCKS: &str = "SOCKS";
    pub const LISTENERS: &str = "LISTENERS";
}

/// Name of the read-only global holding [`Config`].
pub const CONFIG_GLOBAL: &str = "CONFIG";

/// Configuration flags in [`Config::flags`].
pub mod config_flag {
    /// `--all`: report the lifecycle of every TCP connection.
    pub const ALL: u32 = 1 << 0;
    /// `tcp_send_reset` has a `reason` argument (kernel ≥ 6.10).
    pub const RESET_HAS_REASON: u32 = 1 << 1;
    /// `--lean`: the start of a connection without `SO_KEEPALIVE` is not recorded (no
    /// owner, no birth time): the cheapest mode under connection churn.
    pub const LEAN: u32 = 1 << 2;
    /// Benchmarks only: every program returns at once (the cost floor of the hooks).
    pub const EMPTY: u32 = 1 << 3;
    /// The kernel's BTF has the socket's cgroup (`sock.sk_cgrp_data.cgroup`, `cgroup.kn`,
    /// `kernfs_node.id`): a close whose owner is unknown carries it ([`Owner`]).
    pub const SOCK_CGROUP: u32 = 1 << 4;
}

/// Everything the programs need to know about the running kernel and the user's choices.
/// Filled by the agent from BTF and /proc/kallsyms at start-up and written into the
/// programs' `.rodata` before load, so the verifier sees constants.
///
/// Offsets are in bytes from the start of the named struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Address of `tcp_keepalive_timer` (from /proc/kallsyms).
    pub keepalive_timer_fn: u64,
    /// [`config_flag`] bits.
    pub flags: u32,
    /// `enum sock_flags` bit numbers.
    pub sock_flag_keepopen: u32,
    pub sock_flag_dead: u32,
    /// `struct timer_list`.
    pub timer_function: u32,
    pub timer_expires: u32,
    /// `struct sock` / `struct sock_common`.
    pub sk_timer: u32,
    pub sk_flags: u32,
    pub sk_err: u32,
    pub sk_protocol: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    /// `inet_sock.inet_sport`: the local port of a full socket, kept after `inet_put_port()`
    /// zeroes `skc_num` on the way to TCP_CLOSE.
    pub inet_sport: u32,
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_net: u32,
    /// `struct net` → `ns.inum`, and the keepalive sysctls in `net.ipv4`.
    pub net_ns_inum: u32,
    pub net_keepalive_time: u32,
    pub net_keepalive_intvl: u32,
    pub net_keepalive_probes: u32,
    /// `struct inet_connection_sock`.
    pub icsk_probes_out: u32,
    pub icsk_user_timeout: u32,
    /// `struct tcp_sock`.
    pub tp_keepalive_time: u32,
    pub tp_keepalive_intvl: u32,
    pub tp_keepalive_probes: u32,
    pub tp_rcv_tstamp: u32,
    /// `inet_connection_sock.icsk_ack.lrcvtime`.
    pub icsk_lrcvtime: u32,
    pub tp_packets_out: u32,
    pub tp_write_seq: u32,
    pub tp_snd_una: u32,
    pub tp_bytes_sent: u32,
    pub tp_bytes_retrans: u32,
    pub tp_bytes_received: u32,
    pub tp_segs_in: u32,
    pub tp_segs_out: u32,
    /// `sock_common.skc_cookie` (the cookie of a socket known only by its address).
    pub skc_cookie: u32,
    /// `SOCK_DONE`: set when the peer's FIN arrived (`tcp_fin`), which `bytes_received`
    /// counts as one byte. (Not `sk_shutdown`'s `RCV_SHUTDOWN`: close() sets that too.)
    pub sock_flag_done: u32,
    /// `task_struct.group_leader` and `.comm`: the owner's process name (not its
    /// thread's).
    pub task_group_leader: u32,
    pub task_comm: u32,
    /// `--netns` and `--port` applied in the kernel: records of other connections are not
    /// sent (counted in `stat::FILTERED`). `n_*` values are used; 0 means no filter of that
    /// kind (also when the user gave more than fit: user space filters then).
    pub n_filter_netns: u32,
    pub n_filter_ports: u32,
    pub filter_netns: [u32; MAX_KERNEL_FILTERS],
    pub filter_ports: [u16; MAX_KERNEL_FILTERS],
    pub _pad: u32,
    /// `struct sk_buff` (addresses of a reset sent with no socket).
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub skb_dev: u32,
    /// `struct net_device` → `nd_net`.
    pub dev_nd_net: u32,
    /// Bytes waiting in the ring buffer above which a bulk record wakes the agent up (below,
    /// the agent's periodic drain collects it).
    pub wakeup_bytes: u32,
    /// Number of 8-slot sets in `SOCKS`, minus one (a power of two, minus one).
    pub sock_sets_mask: u32,
    /// `tcp_sock.lsndtime`: jiffies when this side last sent data.
    pub tp_lsndtime: u32,
    /// `tcp_sock.retrans_stamp` (u32, ms) and `tcp_sock.tcp_mstamp` (u64, µs).
    pub tp_retrans_stamp: u32,
    pub tp_tcp_mstamp: u32,
    /// Idle time (jiffies, no data either way) before this side's first FIN from which the
    /// close of a connection that is not otherwise reported is sent all the same
    /// ([`close_flag::IDLE_CLOSE`]).
    pub idle_close_jiffies: u32,
    /// Births of connections without keepalive recorded per CPU and second, on average
    /// (`--birth-budget`): a token bucket per CPU, refilled at this rate, holding up to
    /// [`BIRTH_BURST_SECONDS`] of it; beyond, births are shed and counted
    /// ([`stat::BIRTHS_SHED`]). `u32::MAX`: no limit.
    pub birth_budget: u32,
    /// Jiffies per second (HZ), for the bucket's refill.
    pub birth_window_jiffies: u32,
    /// Nanoseconds per jiffy.
    pub birth_jiffy_ns: u32,
    pub _pad2: u32,
    /// CLOCK_MONOTONIC (ktime) when the agent configured the programs: a CPU's bucket, made
    /// at its first birth, has been filling since then.
    pub birth_start_ns: u64,
    /// `sock.sk_cgrp_data.cgroup` (a `struct cgroup *`), `cgroup.kn` (a `struct kernfs_node
    /// *`) and `kernfs_node.id` (the cgroup's id): with [`config_flag::SOCK_CGROUP`].
    pub sk_cgroup: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub _pad3: u32,
}

/// How many seconds of `--birth-budget` a CPU's bucket holds: a burst of starts after a
/// quiet time (a pool warming up) is recorded whole up to this many seconds' worth.
pub const BIRTH_BURST_SECONDS: u64 = 10;

/// This CPU's birth token bucket ([`Config::birth_budget`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BirthBudget {
    /// Jiffies of the last refill (0: not started yet).
    pub last: u64,
    /// Tokens, in 1/HZ of a birth (a birth costs HZ of them; a jiffy adds `birth_budget`).
    pub units: u64,
}

/// Common header of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// One of [`kind`].
    pub kind: u32,
    /// CPU the record was made on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// Kernel address of the socket (0 when there is none).
    pub sk: u64,
}

/// Both ends of a connection, from the traced socket's point of view.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    /// Local address: 4 bytes (IPv4) or 16 (IPv6), network order.
    pub saddr: [u8; 16],
    /// Peer address.
    pub daddr: [u8; 16],
    /// Local port, host order.
    pub sport: u16,
    /// Peer port, host order.
    pub dport: u16,
    /// `AF_INET` or `AF_INET6` (an IPv6 socket may carry a v4-mapped address).
    pub family: u16,
    pub _pad: u16,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    pub _pad2: u32,
}

/// The process that owns a connection, recorded by the kernel in process context: at
/// `connect()` (the SYN_SENT transition) for a client, at `listen()` for a listener, whose
/// owner its accepted connections inherit. `tgid` 0: unknown; then, in a close or keepalive
/// timer record, `cgroup_id` may still name the socket's cgroup (that of the process that
/// created it, read from the socket by the hook), 0 if not known either.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Thread-group id (the process id).
    pub tgid: u32,
    /// [`owner_flag`] bits (0 in records).
    pub flags: u32,
    /// cgroup v2 id (`bpf_get_current_cgroup_id`: the cgroup directory's inode number).
    pub cgroup_id: u64,
    /// `comm`, NUL-padded.
    pub comm: [u8; 16],
}

/// Flags in [`Owner::flags`].
pub mod owner_flag {
    /// In `LISTENERS`: the listener was closed (by the process recorded). Its connections
    /// still name it; an RST for no socket on that port does not.
    pub const LISTENER_CLOSED: u32 = 1 << 0;
}

/// Key of the `LISTENERS` map: a listening port in a network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

/// What the kernel knows about a connection when it reaches `TCP_CLOSE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseInfo {
    /// ktime of the connection's first state (SYN_SENT / SYN_RECV); 0 when not seen.
    pub birth_ns: u64,
    /// ktime this side sent its FIN; 0 when not seen.
    pub fin_sent_ns: u64,
    /// ktime the peer's FIN arrived; 0 when not seen.
    pub fin_recv_ns: u64,
    /// `sk_err` at close (positive errno, 0 none).
    pub sk_err: i32,
    /// `enum sk_rst_reason` of an RST sent just before (or [`REASON_UNKNOWN`]).
    pub reset_reason: u32,
    /// `tcp_sock.rcv_tstamp` (jiffies, low 32 bits) at close.
    pub rcv_tstamp: u32,
    /// jiffies (low 32 bits) at close.
    pub jiffies: u32,
    /// [`close_flag`] bits.
    pub flags: u32,
    /// State the socket left for `TCP_CLOSE`.
    pub old_state: u8,
    /// `icsk_probes_out` at close.
    pub probes_out: u8,
    pub _pad: [u8; 2],
    /// Payload bytes sent, retransmissions not counted (`bytes_sent - bytes_retrans`).
    pub bytes_sent: u64,
    /// Payload bytes received (`bytes_received`).
    pub bytes_received: u64,
    /// Segments sent and received (`segs_out`, `segs_in`).
    pub segs_out: u32,
    pub segs_in: u32,
    /// `tcp_sock.lsndtime` at close: jiffies (low 32 bits) when this side last sent data.
    pub lsndtime: u32,
    /// `icsk_ack.lrcvtime` at close: jiffies when data was last received.
    pub lrcvtime: u32,
    /// With [`close_flag::FIN_IDLE`]: jiffies without data either way when this side sent
    /// the first FIN.
    pub fin_idle: u32,
    /// `write_seq - snd_una` at close: bytes (and a FIN) this side had sent that the peer had
    /// not acknowledged.
    pub unacked: u32,
    /// `tcp_sock.retrans_stamp` at close: when the first retransmission of the data still
    /// unacknowledged went out (ms, TCP's clock), 0 when none did.
    pub retrans_stamp: u32,
    /// `tcp_sock.tcp_mstamp` at close, in ms (the same clock as `retrans_stamp`).
    pub mstamp_ms: u32,
}

/// [`kind::KA_TIMER`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerRecord {
    pub header: Header,
    pub tuple: Tuple,
    /// jiffies at entry (`bpf_jiffies64`).
    pub jiffies: u64,
    /// `timer->expires` after the firing (the re-arm), 0 if the socket died.
    pub expires_after: u64,
    /// `tcp_sock.rcv_tstamp` at entry: jiffies when the peer was last heard.
    pub rcv_tstamp: u32,
    /// Effective keepalive idle time, jiffies.
    pub keepalive_time: u32,
    /// Effective keepalive interval, jiffies.
    pub keepalive_intvl: u32,
    /// `icsk_user_timeout` (TCP_USER_TIMEOUT), ms; 0 none.
    pub user_timeout_ms: u32,
    /// `tcp_sock.packets_out` at entry.
    pub packets_out: u32,
    /// `write_seq - snd_una` at entry: bytes queued or unacknowledged.
    pub unacked_bytes: u32,
    /// Error reported inside the firing (positive errno), if `ERROR_REPORTED`.
    pub error: i32,
    /// `enum sk_rst_reason` of the RST sent inside the firing, if `RST_SENT`.
    pub reset_reason: u32,
    /// [`timer_flag`] bits.
    pub flags: u32,
    /// `icsk_ack.lrcvtime` at entry: jiffies when data was last received (the kernel's idle
    /// time is the smaller of the times since this and since `rcv_tstamp`).
    pub lrcvtime: u32,
    /// `tcp_sock.segs_out` at entry and at exit: the probe is a segment, so a firing that
    /// took the probe branch and sent one sent a probe, even when the peer's answer, on
    /// another CPU, reset `icsk_probes_out` before the exit hook read it.
    pub segs_out_before: u32,
    pub segs_out_after: u32,
    pub state_before: u8,
    pub state_after: u8,
    pub probes_before: u8,
    pub probes_after: u8,
    /// Effective keepalive probe count.
    pub keepalive_probes: u8,
    pub _pad: [u8; 3],
    /// Valid when `DIED` is set.
    pub close: CloseInfo,
    pub owner: Owner,
}

/// [`kind::STATE`]: a FIN transition on a tracked socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateRecord {
    pub header: Header,
    pub tuple: Tuple,
    pub old_state: u8,
    pub new_state: u8,
    pub _pad: [u8; 6],
    pub owner: Owner,
}

/// [`kind::CLOSE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseRecord {
    pub header: Header,
    pub tuple: Tuple,
    pub close: CloseInfo,
    pub owner: Owner,
}

/// [`kind::RST_SENT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetSentRecord {
    pub header: Header,
    pub tuple: Tuple,
    /// `enum sk_rst_reason`, or [`REASON_UNKNOWN`].
    pub reason: u32,
    /// Socket state (0 when there is no socket).
    pub state: u8,
    /// 1 when the RST answers a segment for which no socket exists (`skaddr` 0).
    pub no_socket: u8,
    /// TCP flags of the segment the RST answers (0 when the RST answers none: this side
    /// aborted the connection).
    pub in_flags: u8,
    pub _pad: u8,
    /// Payload bytes of the segment the RST answers.
    pub in_len: u32,
    pub _pad2: u32,
    pub owner: Owner,
}

/// TCP header flags (RFC 9293), as in [`ResetSentRecord::in_flags`].
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// [`kind::RST_RECV`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetRecvRecord {
    pub header: Header,
    pub tuple: Tuple,
    pub packets_out: u32,
    pub state: u8,
    /// `icsk_probes_out` when the RST arrived.
    pub probes_out: u8,
    /// 1 when `SOCK_KEEPOPEN` is set.
    pub keepopen: u8,
    pub _pad: u8,
    pub owner: Owner,
}

/// [`kind::SK_ERROR`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorRecord {
    pub header: Header,
    pub tuple: Tuple,
    /// Positive errno.
    pub error: i32,
    pub state: u8,
    pub _pad: [u8; 3],
    pub owner: Owner,
}

/// The kernel's per-socket aggregation: the value of one slot of the `SOCKS` table, claimed
/// when the connection is born (SYN sent or received) or first becomes of interest,
/// released at `TCP_CLOSE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// ktime of the connection's first SYN (sent or received), 0 when not seen.
    pub birth_ns: u64,
    pub fin_sent_ns: u64,
    pub fin_recv_ns: u64,
    /// [`conn_flag`] bits.
    pub flags: u32,
    /// With [`conn_flag::FIN_IDLE`]: jiffies without data either way when this side sent the
    /// first FIN.
    pub fin_idle: u32,
    /// Who made the connection (client) or listened for it (server); see [`Owner`].
    pub owner: Owner,
}

/// Slots per set of the `SOCKS` table.
pub const SOCK_WAYS: usize = 8;

/// One set of the `SOCKS` table (an 8-way set-associative array indexed by a hash of the
/// socket key). The keys share one cache line, so finding a socket touches two lines.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockSet {
    /// Key of the socket owning each slot (its cookie, or its address for raw
    /// tracepoints); 0 when free.
    pub keys: [u64; SOCK_WAYS],
    pub slots: [ConnState; SOCK_WAYS],
}

/// Flags in [`ConnState::flags`].
pub mod conn_flag {
    /// The connection is reported at close (it had SO_KEEPALIVE at some transition, or
    /// `--all` is on). Without it the entry only remembers the birth time, for the
    /// lifetime of a connection that fails.
    pub const REPORT: u32 = 1 << 0;
    /// Born in SYN_RECV (accepted from a listener): the owner is the listener's, looked up
    /// in `LISTENERS` when a record needs it.
    pub const PASSIVE: u32 = 1 << 1;
    /// Born in SYN_SENT (this side connected).
    pub const ACTIVE: u32 = 1 << 2;
    /// This side sent the first FIN; `fin_idle` holds the idle time then.
    pub const FIN_IDLE: u32 = 1 << 3;
    /// ... and that idle time was at least `Config::idle_close_jiffies`: the close is sent.
    pub const IDLE_CLOSE: u32 = 1 << 4;
}

/// Per-CPU scratch of the keepalive timer being run (entry → exit pairing).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerScratch {
    /// `struct timer_list *` being run; 0 when no keepalive timer runs on this CPU.
    pub timer: u64,
    pub record: TimerRecord,
}

/// Per-CPU memory of the last RST seen on this CPU, so that the `TCP_CLOSE` that follows
/// it in the same call chain can be attributed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentReset {
    pub sk: u64,
    pub ts_ns: u64,
    /// [`close_flag::RST_SENT`] or [`close_flag::RST_RECV`].
    pub flags: u32,
    pub reason: u32,
}

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}
assert_size!(Config, 8 + 64 * 4 + 8 * 4 + 8 * 2 + 8);
assert_size!(Header, 24);
assert_size!(Tuple, 48);
assert_size!(CloseInfo, 48 + 24 + 24);
assert_size!(Owner, 32);
assert_size!(ListenKey, 8);
assert_size!(TimerRecord, 24 + 48 + 16 + 40 + 8 + 8 + 96 + 32);
assert_size!(StateRecord, 24 + 48 + 8 + 32);
assert_size!(CloseRecord, 24 + 48 + 96 + 32);
assert_size!(ResetSentRecord, 24 + 48 + 16 + 32);
assert_size!(ResetRecvRecord, 24 + 48 + 8 + 32);
assert_size!(ErrorRecord, 24 + 48 + 8 + 32);
assert_size!(ConnState, 64);
assert_size!(SockSet, 64 + 8 * 64);
assert_size!(RecentReset, 24);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each type is `#[repr(C)]`, made only of integers and integer arrays, with
    // every padding byte spelled out as a field (checked by the size assertions above),
    // so any bit pattern is a valid value.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above (the `LISTENERS` map's key and value).
    unsafe impl aya::Pod for ListenKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Owner {}
}
