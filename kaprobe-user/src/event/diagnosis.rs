//! Why a connection died, in the operator's words: the `diagnosis` object of
//! `connection_closed` (and of a `reset_sent` that closes nothing). A public contract: the
//! verdict names, the evidence names and the rules are documented in docs/events.md.
use std::borrow::Cow;

use serde::Serialize;

/// The story a connection's death tells. Names are a public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    /// An idle keep-alive connection was used after the other side had closed it.
    KeepaliveRace,
    /// A NAT, conntrack, firewall or load balancer forgot the connection while it was idle.
    MiddleboxIdleTimeout,
    /// The peer is reachable but no longer has the connection (it restarted).
    PeerRestarted,
    /// The peer stopped answering (host down, network partition, or a firewall dropping).
    PeerUnreachable,
    /// The peer reset the connection without being prompted (its application or an
    /// operator aborted it).
    PeerReset,
    /// Nothing listens on the peer's port (RST to the SYN).
    Refused,
    /// This side reset the connection (close() with unread data, SO_LINGER 0, `ss -K`).
    LocalAbort,
    /// An orderly FIN exchange.
    Orderly,
    /// The evidence does not decide.
    Unknown,
}

impl Verdict {
    pub(crate) const ALL: [Verdict; 9] = [
        Verdict::KeepaliveRace,
        Verdict::MiddleboxIdleTimeout,
        Verdict::PeerRestarted,
        Verdict::PeerUnreachable,
        Verdict::PeerReset,
        Verdict::Refused,
        Verdict::LocalAbort,
        Verdict::Orderly,
        Verdict::Unknown,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verdict::KeepaliveRace => "keepalive_race",
            Verdict::MiddleboxIdleTimeout => "middlebox_idle_timeout",
            Verdict::PeerRestarted => "peer_restarted",
            Verdict::PeerUnreachable => "peer_unreachable",
            Verdict::PeerReset => "peer_reset",
            Verdict::Refused => "refused",
            Verdict::LocalAbort => "local_abort",
            Verdict::Orderly => "orderly",
            Verdict::Unknown => "unknown",
        }
    }
}

/// How far the kernel's evidence carries the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Confidence {
    /// What the kernel recorded on this host decides it (e.g. both ends were seen here, or
    /// the story is this side's own action).
    Certain,
    /// The most likely story for what was seen, but another one leaves the same trace from
    /// one host (the text says which).
    Likely,
    /// The evidence decides nothing (`unknown`): the text says what is known.
    Undecided,
}

/// The numbers a verdict rests on, named. Each is present only when known and relevant;
/// times are milliseconds, at jiffy precision (1-10 ms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Evidence {
    /// How long the peer had been idle when it closed the connection (its FIN came this
    /// long after the last data either side sent): its keep-alive timeout, seen from here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) peer_idle_before_close_ms: Option<u64>,
    /// How long after the peer's FIN this side sent data on the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reused_after_ms: Option<u64>,
    /// How long this side had let the connection idle when it closed it (its FIN came this
    /// long after the last data either side sent): this side's keep-alive (or pool idle)
    /// timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) idle_before_close_ms: Option<u64>,
    /// How long before the peer's segment this side had closed the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) closed_before_ms: Option<u64>,
    /// How long the connection had been silent (nothing heard from the peer) when this side
    /// sent the segment that was answered by an RST or never answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) silence_ms: Option<u64>,
    /// `--nat-timeout`: the idle time after which middleboxes may forget a connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) nat_timeout_ms: Option<u64>,
    /// The keepalive idle time (TCP_KEEPIDLE, or the namespace's sysctl).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) keepalive_idle_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) probes_sent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) probes_answered: Option<u32>,
    /// Bytes the peer had sent on the connection (it had been answering).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bytes_received: Option<u64>,
    /// Payload bytes in the segment an RST answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) segment_bytes: Option<u32>,
    /// The other end was seen on this host too, and what it recorded: e.g.
    /// `reset_sent:tcp_timewait_socket` (the server's RST confirms the client's story).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) other_end: Option<&'static str>,
}

/// A diagnosis of `verdict` with no evidence, for unit tests.
#[cfg(test)]
pub(crate) fn test_diagnosis(verdict: Verdict) -> Diagnosis {
    Diagnosis {
        verdict,
        confidence: Confidence::Certain,
        text: format!("a test's {}", verdict.as_str()).into(),
        evidence: Evidence::default(),
        advice: None,
    }
}

/// A verdict with what it rests on and what to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Diagnosis {
    pub(crate) verdict: Verdict,
    pub(crate) confidence: Confidence,
    /// One or two sentences, with the numbers (most stories without numbers are static
    /// texts: no allocation per connection).
    pub(crate) text: Cow<'static, str>,
    pub(crate) evidence: Evidence,
    /// What to change; null where nothing applies.
    pub(crate) advice: Option<&'static str>,
}
