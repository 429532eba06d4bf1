//! The run's totals (`agent_stop`) and what lost records were (`events_lost`).
use serde::Serialize;

use super::{Body, Event};

/// What the records lost from a full ring buffer were.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct LostRecords {
    /// Lost records by kind (`keepalive_timer`, `state`, `close`, `reset_sent`,
    /// `reset_received`, `error`); kinds with none lost are left out.
    pub(crate) by_kind: std::collections::BTreeMap<&'static str, u64>,
    /// Connection ends that will not be reported (no `connection_closed`): lost close
    /// records, and lost keepalive timer records of firings that ended the connection.
    pub(crate) connection_ends: u64,
    /// Of those, the keepalive timer's: each a `keepalive_timeout` (or an orphan's end in
    /// the same timer) that will not be reported.
    pub(crate) keepalive_timer_ends: u64,
}

/// Totals for the exit summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Totals {
    pub(crate) keepalive_probes: u64,
    pub(crate) keepalive_acks: u64,
    pub(crate) keepalive_timeouts: u64,
    pub(crate) resets_sent: u64,
    pub(crate) resets_received: u64,
    pub(crate) fins_sent: u64,
    pub(crate) fins_received: u64,
    pub(crate) connections_closed: u64,
    /// Closes by cause, in a fixed order.
    pub(crate) closed_by_cause: std::collections::BTreeMap<&'static str, u64>,
    /// Records the kernel could not deliver (ring buffer full).
    pub(crate) events_lost: u64,
    /// What those records were.
    pub(crate) lost_records: LostRecords,
    /// Sockets the kernel could not track (its connection table was full).
    pub(crate) untracked_sockets: u64,
    /// Connections the agent stopped following because its table was full.
    pub(crate) evicted_connections: u64,
    /// Starts of connections without keepalive the kernel did not record, over
    /// `--birth-budget`: if such a connection fails, it is reported without owner or
    /// lifetime.
    pub(crate) births_shed: u64,
    /// Records that failed to decode.
    pub(crate) bad_records: u64,
    /// Runs of kaprobe's programs the kernel skipped because the same program was already
    /// running on that CPU (`recursion_misses`): their events are lost.
    pub(crate) skipped_hook_runs: u64,
    /// Records of other connections the kernel side did not send, by `--netns`/`--port`.
    pub(crate) filtered_in_kernel: u64,
}

impl Totals {
    /// Adds an event to the totals.
    pub(crate) fn count(&mut self, e: &Event) {
        match &e.body {
            Body::KeepaliveProbe { .. } => self.keepalive_probes += 1,
            Body::KeepaliveAck { .. } => self.keepalive_acks += 1,
            Body::KeepaliveTimeout { .. } => self.keepalive_timeouts += 1,
            Body::ResetSent { .. } => self.resets_sent += 1,
            Body::ResetReceived { .. } => self.resets_received += 1,
            Body::FinSent { .. } => self.fins_sent += 1,
            Body::FinReceived { .. } => self.fins_received += 1,
            Body::ConnectionClosed { cause, .. } => {
                self.connections_closed += 1;
                *self.closed_by_cause.entry(cause.as_str()).or_default() += 1;
            }
            Body::AgentStart { .. }
            | Body::AgentStop { .. }
            | Body::Summary { .. }
            | Body::EventsLost { .. } => {}
        }
    }
}
