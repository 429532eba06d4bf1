//! What a `summary` event (and `agent_stop`'s `summary`) holds: tables of groups of
//! connections (made by [`crate::sink::summary`]).
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use serde::Serialize;

/// What a `summary` event (and `agent_stop`'s `summary`) holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Report {
    /// Connection events summarised.
    pub(crate) events: u64,
    pub(crate) by_remote: Rows<Remote, Activity>,
    pub(crate) by_owner: Rows<OwnerKey, Activity>,
    /// Closes of accepted connections, by the port they were accepted on.
    pub(crate) closes_by_listening_port: Rows<Listener, CloseStats>,
    /// Closes of connections this side opened, by the endpoint they went to.
    pub(crate) closes_by_remote: Rows<Remote, CloseStats>,
    /// The keep-alive picture of each local server port: diagnoses of its accepted
    /// connections and of the RSTs sent for it, and how long it lets connections idle.
    pub(crate) keepalive_by_listening_port: Rows<Listener, ServerPicture>,
    /// The path to each remote endpoint this side connects to: diagnoses, and the silences
    /// its connections survived and died of.
    pub(crate) paths_by_remote: Rows<Remote, PathPicture>,
}

/// Smallest, median and largest of a set of durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Spread {
    pub(crate) min_ms: u64,
    pub(crate) median_ms: u64,
    pub(crate) max_ms: u64,
}

/// A local server port's keep-alive picture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ServerPicture {
    /// Diagnoses (`connection_closed` of accepted connections, `reset_sent` for the port)
    /// by verdict.
    pub(crate) verdicts: BTreeMap<&'static str, u64>,
    /// Connections this side closed after an idle time (a FIN at least 250 ms after the
    /// last data either way), and that idle time: this server's effective keep-alive
    /// timeout. Null when there were none.
    pub(crate) idle_closes: u64,
    pub(crate) idle_before_close: Option<Spread>,
    /// Clients that sent on a connection after this side had closed it (keep-alive races).
    pub(crate) clients_raced: u64,
    /// Closes after which this side held TIME_WAIT (its idle closes included).
    pub(crate) time_wait_here: u64,
}

/// A path's picture: what connections to a remote endpoint died of, and the silences they
/// survived and died of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PathPicture {
    pub(crate) verdicts: BTreeMap<&'static str, u64>,
    /// The longest silence after which a connection still worked (this side closed it after
    /// that idle time, and its FIN went through).
    pub(crate) longest_silence_survived_ms: Option<u64>,
    /// The shortest silence after which the first segment was answered by an RST or never
    /// answered (middlebox, restarted or unreachable peer).
    pub(crate) shortest_silence_died_ms: Option<u64>,
    /// When the two separate (every silence survived is shorter than every silence died
    /// of): something on the path forgets connections idle longer than the first and not
    /// longer than the second. Null otherwise.
    pub(crate) idle_timeout_between_ms: Option<(u64, u64)>,
}

/// Who a remote endpoint is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub(crate) struct Remote {
    pub(crate) daddr: IpAddr,
    pub(crate) dport: u16,
}

/// Who an owner is, for grouping (the pid changes across restarts; comm and cgroup don't).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub(crate) struct OwnerKey {
    pub(crate) pid: u32,
    pub(crate) comm: Arc<str>,
    pub(crate) cgroup: Option<Arc<str>>,
}

/// A listening port in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub(crate) struct Listener {
    pub(crate) netns: u32,
    pub(crate) port: u16,
}

/// Keepalive and failure activity of a group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Activity {
    pub(crate) keepalive_probes: u64,
    pub(crate) keepalive_acks: u64,
    pub(crate) keepalive_timeouts: u64,
    /// `sent` / `received` → reason → count (received resets have no reason).
    pub(crate) resets: BTreeMap<&'static str, BTreeMap<String, u64>>,
    pub(crate) closes_by_cause: BTreeMap<&'static str, u64>,
}

/// What a summary says about the closes of one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct CloseStats {
    pub(crate) count: u64,
    pub(crate) median_lifetime_ms: Option<u64>,
    /// Median of bytes sent plus received.
    pub(crate) median_bytes: Option<u64>,
    /// Share of closes this side started (its FIN or RST first, or its timeout).
    pub(crate) closed_locally: f64,
    pub(crate) closed_remotely: f64,
    /// Closes after which this side held TIME_WAIT, and after which the peer did (the peer
    /// sent the first FIN).
    pub(crate) time_wait_local: u64,
    pub(crate) time_wait_remote: u64,
    pub(crate) by_cause: BTreeMap<&'static str, u64>,
}

/// One row of a summary table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Row<K, V> {
    #[serde(flatten)]
    pub(crate) key: K,
    #[serde(flatten)]
    pub(crate) value: V,
}

/// A table as reported: the busiest groups, and how many more there were.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Rows<K, V> {
    pub(crate) top: Vec<Row<K, V>>,
    /// Groups not shown (past the busiest shown, or past the limit of groups per table: crate::sink::summary).
    pub(crate) more_groups: u64,
}
