//! The event log: what kaprobe reports, as one serde model used by every output format.
//! This is a public contract, documented in docs/events.md.
pub(crate) mod diagnosis;
pub(crate) mod names;
pub(crate) mod owner;
mod ser;
pub(crate) mod summary;
pub(crate) mod time;
pub(crate) mod totals;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use kaprobe_common::{AF_INET6, Tuple};
use serde::Serialize;

pub(crate) use diagnosis::Diagnosis;
pub(crate) use names::{errno_name, state_name};
pub(crate) use owner::Owner;
pub(crate) use time::Timestamp;
pub(crate) use totals::{LostRecords, Totals};

/// The version of the event log's schema (docs/events.md, docs/events.schema.json), in
/// `agent_start`: it grows when a field changes meaning, type or nullability, or goes away;
/// a new field or a new value of an enumerated field (a verdict, a cause) does not change it.
pub(crate) const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Family {
    Ipv4,
    Ipv6,
}

/// Both ends of a connection, from the traced socket's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Endpoints {
    pub(crate) saddr: IpAddr,
    pub(crate) sport: u16,
    pub(crate) daddr: IpAddr,
    pub(crate) dport: u16,
    pub(crate) family: Family,
    pub(crate) netns: u32,
}

impl Endpoints {
    /// From the kernel's tuple. An IPv6 socket talking IPv4 (v4-mapped addresses on both
    /// ends) is reported as `ipv4` with plain IPv4 addresses: that is what is on the wire.
    pub(crate) fn from_tuple(t: &Tuple) -> Endpoints {
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
pub(crate) enum Cause {
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
    pub(crate) const ALL: [Cause; 6] = [
        Cause::KeepaliveTimeout,
        Cause::ResetReceived,
        Cause::ResetSent,
        Cause::RetransmitTimeout,
        Cause::Fin,
        Cause::Other,
    ];

    pub(crate) fn as_str(&self) -> &'static str {
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
pub(crate) enum Side {
    Local,
    Remote,
}

/// One hook as attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct HookInfo {
    pub(crate) tracepoint: String,
    /// `tp_btf`, `raw_tracepoint` or `tracepoint`.
    pub(crate) attach: String,
}

/// Optional kernel facts, so a user on an old kernel sees what is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct KernelFeatures {
    /// `tcp_send_reset` has its `reason` argument (6.10+).
    pub(crate) reset_reason: bool,
    /// The kernel names the RST of a keepalive timeout (`SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT`,
    /// 6.12+); before, that RST's reason is `not_specified` or `unknown` (the timeout is
    /// still classified, from the timer hook).
    pub(crate) keepalive_reset_reason: bool,
    pub(crate) hz: u32,
    pub(crate) hz_source: String,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Body {
    AgentStart {
        version: &'static str,
        /// [`SCHEMA_VERSION`].
        schema_version: u32,
        kernel: String,
        mode: &'static str,
        hooks: Vec<HookInfo>,
        features: KernelFeatures,
        ring_buffer_bytes: u32,
        max_connections: u32,
        /// Starts of connections without keepalive recorded per CPU and second
        /// (`--birth-budget`); 0 under `--lean` (none), null when every one is (`--all`,
        /// `unlimited`).
        birth_budget: Option<u32>,
    },
    AgentStop {
        duration_ms: u64,
        totals: Box<Totals>,
        /// The whole run, grouped as in `summary` events.
        summary: Box<summary::Report>,
    },
    Summary {
        /// The period covered (`--summary-interval`).
        interval_ms: u64,
        summary: Box<summary::Report>,
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
        inferred: bool,
    },
    ResetSent {
        reason: String,
        state: Option<&'static str>,
        /// What the RST answered: `syn`, `data`, `fin`, `ack` (a segment that came), or null
        /// (this side aborted on its own).
        answering: Option<&'static str>,
        /// Only on an RST that closes no connection (from a TIME_WAIT socket, or with no
        /// socket): why, as for `connection_closed`. Absent otherwise.
        diagnosis: Option<Arc<Diagnosis>>,
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
        /// Why the connection died, in words, with the evidence and what to change.
        diagnosis: Arc<Diagnosis>,
        /// When `owner` is null: the cgroup v2 path the socket belongs to (that of the
        /// process that created it, read from the socket by the kernel at the close), so that
        /// a failure whose start was not recorded still names its service or container.
        /// Absent when `owner` is known or the cgroup is not.
        socket_cgroup: Option<Arc<str>>,
    },
    EventsLost {
        /// What was lost since the previous report.
        count: u64,
        /// `ring_buffer` (records dropped), `kernel_conn_table` (sockets' records evicted) or
        /// `recursion` (hook runs the kernel skipped).
        source: &'static str,
        total: u64,
        /// For `ring_buffer`: what the lost records were, since the previous report.
        records: Option<LostRecords>,
    },
}

impl Body {
    /// The `event` field.
    pub(crate) fn name(&self) -> &'static str {
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
pub(crate) struct Event {
    pub(crate) ts: Timestamp,
    pub(crate) conn: Option<Endpoints>,
    /// The connection's owner (connection events only; `null` when unknown).
    pub(crate) owner: Option<Owner>,
    pub(crate) body: Body,
}

impl Event {
    /// An event of the agent itself (no connection, no owner).
    pub(crate) fn agent(ts: Timestamp, body: Body) -> Event {
        Event {
            ts,
            conn: None,
            owner: None,
            body,
        }
    }
}

/// An event of a connection, for unit tests.
#[cfg(test)]
pub(crate) fn test_event(sport: u16, dport: u16, saddr: &str, daddr: &str) -> Event {
    Event {
        ts: Timestamp(1_764_000_000_123_456_789),
        conn: Some(Endpoints {
            saddr: saddr.parse().unwrap(),
            sport,
            daddr: daddr.parse().unwrap(),
            dport,
            family: Family::Ipv4,
            netns: 1,
        }),
        owner: None,
        body: Body::KeepaliveAck {
            probes_unanswered: 1,
        },
    }
}
