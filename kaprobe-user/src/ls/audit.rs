//! The keepalive audit of one connection: its effective keepalive (socket option or
//! sysctl) and the risks it runs against a NAT timeout.
use std::{net::IpAddr, time::Duration};

use kaprobe_common::tcp_state;
use serde::Serialize;

use crate::{
    event::{Family, Owner},
    host::{
        diag::TcpInfo,
        sys::{SockOpts, Sysctls},
    },
};

/// Where the effective keepalive values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Source {
    /// At least one of idle, interval, probes differs from the namespace's sysctl: the
    /// socket set it.
    Socket,
    /// All three equal the namespace's sysctls (the socket set none, or set the same values).
    Sysctl,
}

/// A connection's keepalive: null fields when unknown (nobody holds the socket, or its
/// descriptor could not be copied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub(crate) struct Keepalive {
    pub(crate) enabled: Option<bool>,
    pub(crate) idle_s: Option<u32>,
    pub(crate) interval_s: Option<u32>,
    pub(crate) probes: Option<u32>,
    pub(crate) source: Option<Source>,
}

impl Keepalive {
    /// From the socket's options and its namespace's sysctls. getsockopt(TCP_KEEPIDLE,
    /// TCP_KEEPINTVL, TCP_KEEPCNT) answers with the sysctl when the socket set none, so the
    /// values are always the effective ones, and the source is told by comparison: all three
    /// equal to the sysctls → `sysctl`, else `socket` (null when the sysctls are unreadable).
    pub(crate) fn new(o: &SockOpts, sys: &Sysctls) -> Keepalive {
        let source = match (sys.time_s, sys.intvl_s, sys.probes) {
            (Some(t), Some(i), Some(p)) => Some(if (o.idle_s, o.intvl_s, o.probes) == (t, i, p) {
                Source::Sysctl
            } else {
                Source::Socket
            }),
            _ => None,
        };
        Keepalive {
            enabled: Some(o.keepalive),
            idle_s: Some(o.idle_s),
            interval_s: Some(o.intvl_s),
            probes: Some(o.probes),
            source,
        }
    }
}

/// What may go wrong with a connection's keepalive, from one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Risk {
    NoKeepaliveIdle,
    KeepaliveTooLate,
    KeepaliveSuppressed,
}

impl Risk {
    pub(crate) const ALL: [Risk; 3] = [
        Risk::NoKeepaliveIdle,
        Risk::KeepaliveTooLate,
        Risk::KeepaliveSuppressed,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Risk::NoKeepaliveIdle => "no_keepalive_idle",
            Risk::KeepaliveTooLate => "keepalive_too_late",
            Risk::KeepaliveSuppressed => "keepalive_suppressed",
        }
    }

    pub(super) fn explain(self, nat: Duration) -> String {
        let nat = format!("{}s", nat.as_secs_f64());
        match self {
            Risk::NoKeepaliveIdle => format!(
                "keepalive is off and the peer has not been heard for longer than the NAT/firewall \
                 idle timeout ({nat}): a middlebox may have dropped the connection's state already, \
                 so the next send may hang or be reset, and a vanished peer is never detected. \
                 Turn SO_KEEPALIVE on with TCP_KEEPIDLE below {nat}."
            ),
            Risk::KeepaliveTooLate => format!(
                "keepalive is on, but its first probe comes only after an idle time at least the \
                 NAT/firewall idle timeout ({nat}): the middlebox forgets the connection before \
                 keepalive refreshes it. Set TCP_KEEPIDLE (or net.ipv4.tcp_keepalive_time) below \
                 {nat}."
            ),
            Risk::KeepaliveSuppressed => "data is unacknowledged and the retransmission (or \
                 zero-window probe) timer has already fired: keepalive never probes while data is \
                 in flight, so if the peer is gone only retransmissions giving up (tcp_retries2, \
                 about 15 min) or TCP_USER_TIMEOUT end the connection. Set TCP_USER_TIMEOUT."
                .to_owned(),
        }
    }
}

/// Milliseconds since the peer was last heard: the later of the last data and the last ACK
/// received (what the kernel's keepalive timer measures idle time from).
pub(crate) fn last_heard_ms(info: &TcpInfo) -> u32 {
    info.last_data_recv_ms.min(info.last_ack_recv_ms)
}

/// The risk flags of a connection (only ESTABLISHED connections have any):
/// - `no_keepalive_idle`: keepalive off, peer not heard for longer than `nat`;
/// - `keepalive_too_late`: keepalive on, effective idle time ≥ `nat`;
/// - `keepalive_suppressed`: keepalive on, data unacknowledged (`tcpi_unacked` > 0 or the
///   write queue not empty: the kernel's own test for skipping a probe), and the
///   retransmission or zero-window probe timer has fired since the peer last acknowledged
///   anything (`tcpi_backoff` or `tcpi_retransmits` > 0), so that a busy healthy
///   connection with data momentarily in flight is not flagged.
pub(crate) fn risks(
    state: u8,
    ka: &Keepalive,
    info: Option<&TcpInfo>,
    wqueue: u32,
    nat: Duration,
) -> Vec<Risk> {
    let mut out = Vec::new();
    if state != tcp_state::ESTABLISHED {
        return out;
    }
    let nat_ms = nat.as_millis();
    let idle_past_nat = info.is_some_and(|i| u128::from(last_heard_ms(i)) > nat_ms);
    if ka.enabled == Some(false) && idle_past_nat {
        out.push(Risk::NoKeepaliveIdle);
    }
    if ka.enabled != Some(true) {
        return out;
    }
    if ka.idle_s.is_some_and(|s| u128::from(s) * 1000 >= nat_ms) {
        out.push(Risk::KeepaliveTooLate);
    }
    if let Some(i) = info {
        // tcp_keepalive_timer() does nothing while packets are out or the write queue holds
        // data: exactly then keepalive cannot fire (even on a healthy busy connection, for
        // that moment; a stalled one stays flagged until the retransmissions give up).
        if i.unacked > 0 || wqueue > 0 {
            out.push(Risk::KeepaliveSuppressed);
        }
    }
    out
}

/// One connection, as `ls --format json` writes it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Conn {
    pub(crate) saddr: IpAddr,
    pub(crate) sport: u16,
    pub(crate) daddr: IpAddr,
    pub(crate) dport: u16,
    pub(crate) family: Family,
    pub(crate) netns: u64,
    pub(crate) state: &'static str,
    pub(crate) owner: Option<Owner>,
    pub(crate) keepalive: Keepalive,
    pub(crate) user_timeout_ms: Option<u32>,
    pub(crate) last_heard_ms: Option<u32>,
    pub(crate) probes_outstanding: Option<u8>,
    pub(crate) timer_expires_ms: Option<u32>,
    pub(crate) unacked_bytes: Option<u32>,
    pub(crate) queued_bytes: u32,
    pub(crate) risks: Vec<Risk>,
}
