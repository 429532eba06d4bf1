//! The event log: what kaprobe reports, as one serde model used by every output format.
//! This is a public contract, documented in docs/events.md.
use std::{
    cell::Cell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, UNIX_EPOCH},
};

use kaprobe_common::{AF_INET6, Tuple, tcp_state};
use serde::{Serialize, Serializer};

pub use crate::host::owner::Owner;

/// Wall-clock time, nanoseconds since the Unix epoch; serialised as RFC 3339 UTC with
/// microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp(pub u64);

/// `2025-11-24T16:00:00.123456Z`.
pub(crate) const RFC3339_MICROS_LEN: usize = 27;
/// Its date and time, `2025-11-24T16:00:00`.
const RFC3339_SECONDS_LEN: usize = 19;

thread_local! {
    /// The date and time of the last second formatted: events come in bursts within a
    /// second, and only the microseconds change between them.
    static LAST_SECOND: Cell<(u64, [u8; RFC3339_SECONDS_LEN])> =
        const { Cell::new((u64::MAX, [0; RFC3339_SECONDS_LEN])) };
}

impl Timestamp {
    pub fn rfc3339(&self) -> String {
        self.rfc3339_str(&mut [0; RFC3339_MICROS_LEN]).to_owned()
    }

    /// The text of [`Timestamp::rfc3339`], made in `buf`.
    fn rfc3339_str<'a>(&self, buf: &'a mut [u8; RFC3339_MICROS_LEN]) -> &'a str {
        self.rfc3339_ascii(buf);
        std::str::from_utf8(buf).expect("ASCII digits and separators")
    }

    /// The text of [`Timestamp::rfc3339`] (what humantime's `format_rfc3339_micros`
    /// writes) as ASCII, into `buf`.
    pub(crate) fn rfc3339_ascii(&self, buf: &mut [u8; RFC3339_MICROS_LEN]) {
        let secs = self.0 / 1_000_000_000;
        let micros = (self.0 % 1_000_000_000 / 1_000) as u32;
        let date_time = LAST_SECOND.with(|last| {
            let (cached, text) = last.get();
            if cached == secs {
                return text;
            }
            let mut text = [0; RFC3339_SECONDS_LEN];
            let full = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs))
                .to_string();
            // Always `YYYY-MM-DDTHH:MM:SSZ`: u64 nanoseconds end in the year 2554.
            text.copy_from_slice(&full.as_bytes()[..RFC3339_SECONDS_LEN]);
            last.set((secs, text));
            text
        });
        buf[..RFC3339_SECONDS_LEN].copy_from_slice(&date_time);
        buf[RFC3339_SECONDS_LEN] = b'.';
        let mut rest = micros;
        for b in buf[RFC3339_SECONDS_LEN + 1..RFC3339_MICROS_LEN - 1]
            .iter_mut()
            .rev()
        {
            *b = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        buf[RFC3339_MICROS_LEN - 1] = b'Z';
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.rfc3339_str(&mut [0; RFC3339_MICROS_LEN]))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// Both ends of a connection, from the traced socket's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Endpoints {
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub family: Family,
    pub netns: u32,
}

impl Endpoints {
    /// From the kernel's tuple. An IPv6 socket talking IPv4 (v4-mapped addresses on both
    /// ends) is reported as `ipv4` with plain IPv4 addresses: that is what is on the wire.
    pub fn from_tuple(t: &Tuple) -> Endpoints {
        let (saddr, daddr, family) = if t.family == AF_INET6 {
            let s = Ipv6Addr::from(t.saddr);
            let d = Ipv6Addr::from(t.daddr);
            match (s.to_ipv4_mapped(), d.to_ipv4_mapped()) {
                (Some(s4), Some(d4)) => (IpAddr::V4(s4), IpAddr::V4(d4), Family::Ipv4),
                _ => (IpAddr::V6(s), IpAddr::V6(d), Family::Ipv6),
            }
        } else {
            // AF_INET (or, from a damaged record, anything else: never a panic).
            let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
            (v4(&t.saddr), v4(&t.daddr), Family::Ipv4)
        };
        Endpoints {
            saddr,
            sport: t.sport,
            daddr,
            dport: t.dport,
            family,
            netns: t.netns,
        }
    }
}

/// Why a connection ended, as the kernel decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Keepalive probes went unanswered (or TCP_USER_TIMEOUT ran out while probing).
    KeepaliveTimeout,
    /// The peer sent an RST.
    ResetReceived,
    /// This side sent an RST (abort, close with unread data, SO_LINGER 0, `ss -K`, ...).
    ResetSent,
    /// Retransmissions went unanswered (data in flight; TCP_USER_TIMEOUT or tcp_retries2),
    /// or the SYN was never answered.
    RetransmitTimeout,
    /// Orderly FIN exchange.
    Fin,
    Other,
}

impl Cause {
    pub const ALL: [Cause; 6] = [
        Cause::KeepaliveTimeout,
        Cause::ResetReceived,
        Cause::ResetSent,
        Cause::RetransmitTimeout,
        Cause::Fin,
        Cause::Other,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Cause::KeepaliveTimeout => "keepalive_timeout",
            Cause::ResetReceived => "reset_received",
            Cause::ResetSent => "reset_sent",
            Cause::RetransmitTimeout => "retransmit_timeout",
            Cause::Fin => "fin",
            Cause::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Local,
    Remote,
}

/// One hook as attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookInfo {
    pub tracepoint: String,
    /// `tp_btf`, `raw_tracepoint` or `tracepoint`.
    pub attach: String,
}

/// Optional kernel facts, so a user on an old kernel sees what is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelFeatures {
    /// `tcp_send_reset` has its `reason` argument (6.10+).
    pub reset_reason: bool,
    /// The kernel names the RST of a keepalive timeout (`SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT`,
    /// 6.12+); before, that RST's reason is `not_specified` or `unknown` (the timeout is
    /// still classified, from the timer hook).
    pub keepalive_reset_reason: bool,
    pub hz: u32,
    pub hz_source: String,
}

/// What the records lost from a full ring buffer were.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LostRecords {
    /// Lost records by kind (`keepalive_timer`, `state`, `close`, `reset_sent`,
    /// `reset_received`, `error`, `destroy`); kinds with none lost are left out.
    pub by_kind: std::collections::BTreeMap<&'static str, u64>,
    /// Connection ends that will not be reported (no `connection_closed`): lost close
    /// records, and lost keepalive timer records of firings that ended the connection.
    pub connection_ends: u64,
    /// Of those, the keepalive timer's: each a `keepalive_timeout` (or an orphan's end in
    /// the same timer) that will not be reported.
    pub keepalive_timer_ends: u64,
}

/// Totals for the exit summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub keepalive_probes: u64,
    pub keepalive_acks: u64,
    pub keepalive_timeouts: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub fins_sent: u64,
    pub fins_received: u64,
    pub connections_closed: u64,
    /// Closes by cause, in a fixed order.
    pub closed_by_cause: std::collections::BTreeMap<&'static str, u64>,
    /// Records the kernel could not deliver (ring buffer full).
    pub events_lost: u64,
    /// What those records were.
    pub lost_records: LostRecords,
    /// Sockets the kernel could not track (its connection table was full).
    pub untracked_sockets: u64,
    /// Connections the agent stopped following because its table was full.
    pub evicted_connections: u64,
    /// Records that failed to decode.
    pub bad_records: u64,
    /// Runs of kaprobe's programs the kernel skipped because the same program was already
    /// running on that CPU (`recursion_misses`): their events are lost.
    pub skipped_hook_runs: u64,
    /// Records of other connections the kernel side did not send, by `--netns`/`--port`.
    pub filtered_in_kernel: u64,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Body {
    AgentStart {
        version: &'static str,
        kernel: String,
        mode: &'static str,
        hooks: Vec<HookInfo>,
        features: KernelFeatures,
        ring_buffer_bytes: u32,
        max_connections: u32,
    },
    AgentStop {
        duration_ms: u64,
        totals: Totals,
        /// The whole run, grouped as in `summary` events.
        summary: crate::sink::summary::Report,
    },
    Summary {
        /// The period covered (`--summary-interval`).
        interval_ms: u64,
        summary: crate::sink::summary::Report,
    },
    KeepaliveProbe {
        probe: u8,
        max_probes: u8,
        idle_ms: u64,
        interval_ms: u64,
        /// The probe was not seen going out: its firing of the keepalive timer never
        /// reached the `timer_expire_entry` tracepoint (the kernel does this to some firings
        /// in a burst), and the next firing found it counted in `icsk_probes_out`. Its time
        /// is estimated (one keepalive interval per probe before that firing). Written only
        /// when true.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        inferred: bool,
    },
    KeepaliveAck {
        probes_unanswered: u8,
    },
    KeepaliveTimeout {
        probes: u8,
        max_probes: u8,
        idle_ms: u64,
        error: Option<&'static str>,
        user_timeout_ms: Option<u32>,
        /// The firing that ended the connection was not traced: its keepalive timer was due
        /// with every probe out, no record came, and the kernel (sock_diag) no longer had
        /// the socket. `ts` is when the timer was due. Written only when true.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        inferred: bool,
    },
    ResetSent {
        reason: String,
        state: Option<&'static str>,
    },
    ResetReceived {
        during_keepalive: bool,
        state: &'static str,
    },
    FinSent {
        state: &'static str,
    },
    FinReceived {
        state: &'static str,
    },
    ConnectionClosed {
        cause: Cause,
        error: Option<&'static str>,
        closed_by: Side,
        time_wait: bool,
        lifetime_ms: Option<u64>,
        /// How long the peer had been silent (since the last segment received) when the
        /// connection ended: a NAT or firewall that forgets idle connections shows as
        /// resets after a steady idle time. Null during the handshake (nothing received
        /// yet) and when the close was not seen by the kernel side.
        idle_ms: Option<u64>,
        keepalive_probes: u32,
        keepalive_acks: u32,
        last_state: Option<&'static str>,
        /// Payload bytes sent (retransmissions not counted) and received, from the kernel
        /// at close; null when the close was not seen by the kernel side.
        bytes_sent: Option<u64>,
        bytes_received: Option<u64>,
        /// `outbound` (this side connected), `inbound` (accepted from a listener), or null
        /// when the connection's start was not seen.
        direction: Option<&'static str>,
        /// Segments sent plus received.
        segments: Option<u64>,
        segments_sent: Option<u32>,
        segments_received: Option<u32>,
    },
    EventsLost {
        /// What was lost since the previous report.
        count: u64,
        /// `ring_buffer` (records dropped), `kernel_conn_table` (sockets' records evicted) or
        /// `recursion` (hook runs the kernel skipped).
        source: &'static str,
        total: u64,
        /// For `ring_buffer`: what the lost records were, since the previous report.
        #[serde(skip_serializing_if = "Option::is_none")]
        records: Option<LostRecords>,
    },
}

impl Body {
    /// The `event` field.
    pub fn name(&self) -> &'static str {
        match self {
            Body::AgentStart { .. } => "agent_start",
            Body::AgentStop { .. } => "agent_stop",
            Body::Summary { .. } => "summary",
            Body::KeepaliveProbe { .. } => "keepalive_probe",
            Body::KeepaliveAck { .. } => "keepalive_ack",
            Body::KeepaliveTimeout { .. } => "keepalive_timeout",
            Body::ResetSent { .. } => "reset_sent",
            Body::ResetReceived { .. } => "reset_received",
            Body::FinSent { .. } => "fin_sent",
            Body::FinReceived { .. } => "fin_received",
            Body::ConnectionClosed { .. } => "connection_closed",
            Body::EventsLost { .. } => "events_lost",
        }
    }
}

/// One line of the event log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub ts: Timestamp,
    pub conn: Option<Endpoints>,
    /// The connection's owner (connection events only; `null` when unknown).
    pub owner: Option<Owner>,
    pub body: Body,
}

impl Event {
    /// An event of the agent itself (no connection, no owner).
    pub fn agent(ts: Timestamp, body: Body) -> Event {
        Event {
            ts,
            conn: None,
            owner: None,
            body,
        }
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Line<'a> {
            ts: &'a Timestamp,
            event: &'static str,
            #[serde(flatten)]
            conn: &'a Option<Endpoints>,
            /// Present (possibly null) exactly on connection events.
            #[serde(skip_serializing_if = "Option::is_none")]
            owner: Option<&'a Option<Owner>>,
            #[serde(flatten)]
            body: &'a Body,
        }
        Line {
            ts: &self.ts,
            event: self.body.name(),
            conn: &self.conn,
            owner: self.conn.is_some().then_some(&self.owner),
            body: &self.body,
        }
        .serialize(s)
    }
}

/// Lowercase TCP state name.
pub fn state_name(state: u8) -> &'static str {
    match state {
        tcp_state::ESTABLISHED => "established",
        tcp_state::SYN_SENT => "syn_sent",
        tcp_state::SYN_RECV => "syn_recv",
        tcp_state::FIN_WAIT1 => "fin_wait1",
        tcp_state::FIN_WAIT2 => "fin_wait2",
        tcp_state::TIME_WAIT => "time_wait",
        tcp_state::CLOSE => "close",
        tcp_state::CLOSE_WAIT => "close_wait",
        tcp_state::LAST_ACK => "last_ack",
        tcp_state::LISTEN => "listen",
        tcp_state::CLOSING => "closing",
        tcp_state::NEW_SYN_RECV => "new_syn_recv",
        _ => "unknown",
    }
}

/// errno name (Linux numbering, from include/uapi/asm-generic/errno*.h).
pub fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        4 => "EINTR",
        5 => "EIO",
        6 => "ENXIO",
        7 => "E2BIG",
        8 => "ENOEXEC",
        9 => "EBADF",
        10 => "ECHILD",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        15 => "ENOTBLK",
        16 => "EBUSY",
        17 => "EEXIST",
        18 => "EXDEV",
        19 => "ENODEV",
        20 => "ENOTDIR",
        21 => "EISDIR",
        22 => "EINVAL",
        23 => "ENFILE",
        24 => "EMFILE",
        25 => "ENOTTY",
        26 => "ETXTBSY",
        27 => "EFBIG",
        28 => "ENOSPC",
        29 => "ESPIPE",
        30 => "EROFS",
        31 => "EMLINK",
        32 => "EPIPE",
        33 => "EDOM",
        34 => "ERANGE",
        35 => "EDEADLK",
        36 => "ENAMETOOLONG",
        37 => "ENOLCK",
        38 => "ENOSYS",
        39 => "ENOTEMPTY",
        40 => "ELOOP",
        42 => "ENOMSG",
        43 => "EIDRM",
        44 => "ECHRNG",
        45 => "EL2NSYNC",
        46 => "EL3HLT",
        47 => "EL3RST",
        48 => "ELNRNG",
        49 => "EUNATCH",
        50 => "ENOCSI",
        51 => "EL2HLT",
        52 => "EBADE",
        53 => "EBADR",
        54 => "EXFULL",
        55 => "ENOANO",
        56 => "EBADRQC",
        57 => "EBADSLT",
        59 => "EBFONT",
        60 => "ENOSTR",
        61 => "ENODATA",
        62 => "ETIME",
        63 => "ENOSR",
        64 => "ENONET",
        65 => "ENOPKG",
        66 => "EREMOTE",
        67 => "ENOLINK",
        68 => "EADV",
        69 => "ESRMNT",
        70 => "ECOMM",
        71 => "EPROTO",
        72 => "EMULTIHOP",
        73 => "EDOTDOT",
        74 => "EBADMSG",
        75 => "EOVERFLOW",
        76 => "ENOTUNIQ",
        77 => "EBADFD",
        78 => "EREMCHG",
        79 => "ELIBACC",
        80 => "ELIBBAD",
        81 => "ELIBSCN",
        82 => "ELIBMAX",
        83 => "ELIBEXEC",
        84 => "EILSEQ",
        85 => "ERESTART",
        86 => "ESTRPIPE",
        87 => "EUSERS",
        88 => "ENOTSOCK",
        89 => "EDESTADDRREQ",
        90 => "EMSGSIZE",
        91 => "EPROTOTYPE",
        92 => "ENOPROTOOPT",
        93 => "EPROTONOSUPPORT",
        94 => "ESOCKTNOSUPPORT",
        95 => "EOPNOTSUPP",
        96 => "EPFNOSUPPORT",
        97 => "EAFNOSUPPORT",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        100 => "ENETDOWN",
        101 => "ENETUNREACH",
        102 => "ENETRESET",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        105 => "ENOBUFS",
        106 => "EISCONN",
        107 => "ENOTCONN",
        108 => "ESHUTDOWN",
        109 => "ETOOMANYREFS",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        112 => "EHOSTDOWN",
        113 => "EHOSTUNREACH",
        114 => "EALREADY",
        115 => "EINPROGRESS",
        116 => "ESTALE",
        117 => "EUCLEAN",
        118 => "ENOTNAM",
        119 => "ENAVAIL",
        120 => "EISNAM",
        121 => "EREMOTEIO",
        122 => "EDQUOT",
        123 => "ENOMEDIUM",
        124 => "EMEDIUMTYPE",
        125 => "ECANCELED",
        126 => "ENOKEY",
        127 => "EKEYEXPIRED",
        128 => "EKEYREVOKED",
        129 => "EKEYREJECTED",
        130 => "EOWNERDEAD",
        131 => "ENOTRECOVERABLE",
        132 => "ERFKILL",
        133 => "EHWPOISON",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_formatted_as_humantime_does() {
        let humantime = |ns: u64| {
            humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut cases = vec![
            0,
            999,
            1_000,
            999_999_999,
            1_000_000_000,
            951_782_400_000_000_000, // 2000-02-29
            1_764_000_000_123_456_789,
            1_764_000_000_999_999_999,
            1_764_000_001_000_000_000,
            u64::MAX,
        ];
        for _ in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            cases.push(seed);
            // Neighbours in the same second and across it (the cached date and time).
            cases.push(seed.wrapping_add(seed % 1_000_000_000));
            cases.push(seed.wrapping_sub(1_000_000_000));
        }
        for ns in cases {
            let t = Timestamp(ns);
            assert_eq!(t.rfc3339(), humantime(ns), "{ns}");
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", humantime(ns)),
                "{ns}"
            );
        }
    }
}
