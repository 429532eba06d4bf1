//! Why a connection died, in the operator's words: the rules that turn what the kernel
//! recorded at a connection's end ([`Death`]), or at an RST that closed no connection
//! ([`StrayReset`]), into a [`Diagnosis`]. Pure functions of their input (the correlator
//! gathers it), so each rule is tested on recorded sequences; docs/events.md states each
//! rule, the kernel evidence it rests on and its limits.
mod closed;
mod stray;
mod text;

#[cfg(test)]
mod tests;

pub(crate) use closed::closed;
pub(crate) use stray::stray_reset;

use crate::event::Cause;

/// What the rules need besides the evidence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// `--nat-timeout`: the idle time after which middleboxes may forget a connection.
    pub(crate) nat_timeout_ms: u64,
}

/// What the other end of the connection recorded, when it is on this host too (namespaces,
/// pods on one node): the RST its kernel sent, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OtherEnd {
    /// `reset_sent` from a TIME_WAIT socket: it had closed the connection.
    TimewaitReset,
    /// `reset_sent` for data after it had shut the connection down (`tcp_abort_on_data`).
    AbortOnData,
    /// `reset_sent` with no socket: its host no longer had the connection.
    NoSocketReset,
    /// `reset_sent` of its keepalive timeout: it had stopped hearing this side.
    KeepaliveTimeout,
}

impl OtherEnd {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OtherEnd::TimewaitReset => "reset_sent:tcp_timewait_socket",
            OtherEnd::AbortOnData => "reset_sent:tcp_abort_on_data",
            OtherEnd::NoSocketReset => "reset_sent:no_socket",
            OtherEnd::KeepaliveTimeout => "reset_sent:tcp_keepalive_timeout",
        }
    }
}

/// A connection's end, as the correlator saw it. Times are milliseconds; `None` where the
/// kernel did not say (a close it did not report, the handshake).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Death {
    /// The kernel's cause (`connection_closed.cause`).
    pub(crate) cause: Option<Cause>,
    /// This side sent the first FIN (for `fin`).
    pub(crate) closed_locally: bool,
    /// The TCP state the socket left for CLOSE (`tcp_state`), 0 when unknown.
    pub(crate) last_state: u8,
    /// The socket's error (positive errno), 0 none.
    pub(crate) error: i32,
    /// The reason name of the RST this side sent, if it sent one.
    pub(crate) reset_reason: Option<String>,
    /// The peer's FIN had arrived before the end.
    pub(crate) peer_fin: bool,
    /// A keepalive probe was outstanding when the RST came (or at the end).
    pub(crate) probe_outstanding: bool,
    /// Bytes (or a FIN) this side had sent that the peer had not acknowledged at the end.
    pub(crate) unacked: u32,
    /// Since the peer was last heard (any segment), at the end.
    pub(crate) since_heard_ms: Option<u64>,
    /// Since this side last sent data (retransmissions too), at the end.
    pub(crate) since_sent_ms: Option<u64>,
    /// Since the first retransmission of the data still unacknowledged at the end (that
    /// data was first sent one retransmission timeout before).
    pub(crate) since_first_retransmit_ms: Option<u64>,
    /// Since data last came from the peer, at the end.
    pub(crate) since_received_ms: Option<u64>,
    /// How long no data had gone either way when this side sent its first FIN.
    pub(crate) fin_idle_ms: Option<u64>,
    /// How long before the end this side sent its first FIN.
    pub(crate) since_fin_sent_ms: Option<u64>,
    pub(crate) keepalive_probes: u32,
    pub(crate) keepalive_acks: u32,
    /// The keepalive idle time of the connection's timer, if it ran.
    pub(crate) keepalive_idle_ms: Option<u64>,
    /// How long the peer had been silent when the last keepalive probe went out.
    pub(crate) last_probe_idle_ms: Option<u64>,
    pub(crate) bytes_received: Option<u64>,
    /// The other end's record, when it is on this host.
    pub(crate) other_end: Option<OtherEnd>,
}

/// An RST this side sent that closed no connection: from a TIME_WAIT socket, or for a
/// segment no socket of this host wanted.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StrayReset {
    /// From a TIME_WAIT socket (else: no socket at all, or a request socket).
    pub(crate) time_wait: bool,
    /// No socket at all.
    pub(crate) no_socket: bool,
    /// TCP flags of the segment the RST answered (`kaprobe_common::tcp_flag`).
    pub(crate) segment_flags: u8,
    /// Its payload bytes.
    pub(crate) segment_bytes: u32,
    /// A listener of this host owns the local port.
    pub(crate) listener: bool,
    /// This side had closed this very connection after an idle time, and how long ago.
    pub(crate) closed: Option<EarlierClose>,
}

/// An idle close of a connection this side made earlier (the kernel reported it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EarlierClose {
    /// How long no data had gone either way when this side sent its FIN.
    pub(crate) idle_before_ms: u64,
    /// How long before the stray segment this side sent its FIN.
    pub(crate) fin_before_ms: u64,
}
