//! The kernel's loss counters, turned into `events_lost` events and the totals: nothing is
//! lost silently.
use super::{agent::Agent, monotonic_ns};
use crate::{
    bpf::loader::KernelStats,
    error::Fatal,
    event::{Body, Event, LostRecords},
};

impl Agent {
    /// What the records lost since the last call were; updates the totals.
    fn lost_records(&mut self, stats: &KernelStats) -> LostRecords {
        let mut delta = LostRecords::default();
        let seen = &mut self.pipe.totals.lost_records;
        for (kind, total) in stats.lost_by_kind() {
            let name = kind_name(kind);
            let before = seen.by_kind.get(name).copied().unwrap_or(0);
            if total > before {
                delta.by_kind.insert(name, total - before);
                seen.by_kind.insert(name, total);
            }
        }
        let timer_ends = stats.lost_timer_deaths();
        delta.keepalive_timer_ends = timer_ends - seen.keepalive_timer_ends;
        if delta.keepalive_timer_ends > 0 {
            self.pipe.correlator.note_lost_deaths(monotonic_ns());
        }
        delta.connection_ends =
            delta.keepalive_timer_ends + delta.by_kind.get("close").copied().unwrap_or(0);
        seen.keepalive_timer_ends = timer_ends;
        seen.connection_ends += delta.connection_ends;
        delta
    }

    /// Turns growth of the kernel's loss counters into `events_lost` events. `skipped` is
    /// the number of hook runs the kernel skipped (recursion), if known.
    pub(super) fn poll_losses(
        &mut self,
        stats: &KernelStats,
        skipped: Option<u64>,
    ) -> Result<(), Fatal> {
        if let Some(skipped) = skipped.filter(|&n| n > self.pipe.totals.skipped_hook_runs) {
            let count = skipped - self.pipe.totals.skipped_hook_runs;
            self.pipe.totals.skipped_hook_runs = skipped;
            log::warn!(
                "{count} hook runs skipped by the kernel (a program was already running on that CPU)"
            );
            let now = self.clock.wall(monotonic_ns());
            self.pipe.write(&Event::agent(
                now,
                Body::EventsLost {
                    count,
                    source: "recursion",
                    total: skipped,
                    records: None,
                },
            ))?;
        }
        let pairing = stats.timer_unpaired();
        if pairing != self.timer_pairing {
            log::warn!(
                "keepalive timer firings lost: {} exits without entry, {} overlapping entries",
                pairing.0,
                pairing.1
            );
            self.timer_pairing = pairing;
        }
        let now = self.clock.wall(monotonic_ns());
        let ring = stats.ringbuf_full();
        // The per-kind counters are bumped after the total: read after it, and reported
        // whenever either moved, so that the last report's sums match.
        let records = self.lost_records(stats);
        if ring > self.pipe.totals.events_lost || records != LostRecords::default() {
            let count = ring.saturating_sub(self.pipe.totals.events_lost);
            self.pipe.totals.events_lost = self.pipe.totals.events_lost.max(ring);
            log::warn!(
                "{count} records lost: the ring buffer was full (raise --ring-size); {} connection ends will not be reported",
                records.connection_ends
            );
            self.pipe.write(&Event::agent(
                now,
                Body::EventsLost {
                    count,
                    source: "ring_buffer",
                    total: ring,
                    records: Some(records),
                },
            ))?;
        }
        self.poll_births_shed(stats);
        let conns = stats.conn_table_full();
        if conns > self.pipe.totals.untracked_sockets {
            let count = conns - self.pipe.totals.untracked_sockets;
            self.pipe.totals.untracked_sockets = conns;
            log::warn!(
                "{count} sockets not tracked: the kernel connection table was full (raise --max-connections)"
            );
            self.pipe.write(&Event::agent(
                now,
                Body::EventsLost {
                    count,
                    source: "kernel_conn_table",
                    total: conns,
                    records: None,
                },
            ))?;
        }
        self.pipe.flush()
    }
}

impl Agent {
    /// Births shed over `--birth-budget`: counted in the totals and the metrics, and said
    /// once in the log (under sustained churn they grow every tick: an event each time would
    /// be noise; the counter and `agent_stop` carry the number).
    fn poll_births_shed(&mut self, stats: &KernelStats) {
        let shed = stats.births_shed();
        if shed <= self.pipe.totals.births_shed {
            return;
        }
        if self.pipe.totals.births_shed == 0 {
            log::warn!(
                "more connections without keepalive started than --birth-budget records (per CPU and second, bursts up to 10 s' worth): {shed} start(s) not recorded so far; those of them that fail are reported without owner or lifetime (counted in kaprobe_births_shed_total and agent_stop's births_shed; raise --birth-budget or say `unlimited` to record every one)"
            );
        }
        self.pipe.totals.births_shed = shed;
        if let Some(m) = &self.pipe.metrics {
            m.births_shed(shed);
        }
    }
}

/// Name of a record kind in loss reports.
fn kind_name(kind: u32) -> &'static str {
    match kind {
        kaprobe_common::kind::KA_TIMER => "keepalive_timer",
        kaprobe_common::kind::STATE => "state",
        kaprobe_common::kind::CLOSE => "close",
        kaprobe_common::kind::RST_SENT => "reset_sent",
        kaprobe_common::kind::RST_RECV => "reset_received",
        kaprobe_common::kind::SK_ERROR => "error",
        _ => "other",
    }
}
