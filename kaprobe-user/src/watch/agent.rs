//! The agent of `watch`: the [`Pipeline`] fed from the ring buffer, and what it does on
//! each tick besides (closes due, keepalive timers overdue, evictions); what it learns of
//! connections older than itself ([`super::existing`]) and the kernel's loss counters
//! ([`super::losses`]) are beside it.
use std::{io::BufWriter, path::PathBuf, sync::mpsc, time::Duration};

use aya::maps::{MapData, RingBuf};

use super::{monotonic_ns, open_file, pipeline::Pipeline};
use crate::{
    correlate::Clock,
    error::Fatal,
    event::{Body, Event},
    host::{diag::ConnKey, existing::Existing, netns},
    sink::summary::Summary,
};

/// The pipeline, and what the agent keeps around it.
pub(super) struct Agent {
    pub(super) pipe: Pipeline,
    pub(super) clock: Clock,
    /// Last seen (unpaired exits, overlapping entries) of the keepalive timer hooks.
    pub(super) timer_pairing: (u64, u64),
    /// Records read from the ring buffer.
    pub(super) records_read: u64,
    /// `-o FILE`, reopened on SIGHUP.
    pub(super) output_path: Option<PathBuf>,
    /// The start-up look-up of owners of what was open before
    /// ([`crate::host::existing::spawn`]), until its answer is taken.
    pub(super) existing_lookup: Option<mpsc::Receiver<Existing>>,
    /// When [`Agent::forget_ended_existing`] last looked (CLOCK_MONOTONIC ns), and its
    /// answer to come.
    pub(super) existing_checked_ns: u64,
    pub(super) existing_check: Option<mpsc::Receiver<std::collections::HashSet<(ConnKey, u32)>>>,
    /// When [`Agent::find_ownerless`] last checked the followed connections, and last
    /// looked up owners (CLOCK_MONOTONIC ns; 0: never), and that look-up's answer to come.
    pub(super) ownerless_checked_ns: u64,
    pub(super) ownerless_scanned_ns: u64,
    /// How long the last look-up took (ns): the next one waits at least
    /// `OWNERLESS_SPACING` times that.
    pub(super) ownerless_took_ns: u64,
    pub(super) ownerless_scan: Option<mpsc::Receiver<Existing>>,
    /// How many OWNERLESS_RESCAN intervals to wait: doubled after a look-up that found
    /// nothing, 1 after one that found an owner.
    pub(super) ownerless_backoff: u32,
}

impl Agent {
    /// Reads every record waiting in the ring buffer.
    pub(super) fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<(), Fatal> {
        // (Before the records, so that they find the owners the look-up found.)
        self.poll_existing(Duration::ZERO);
        let (mut records, mut bad, mut bytes) = (0u64, 0u64, 0u64);
        while let Some(item) = ring.next() {
            records += 1;
            // Each record takes an 8-byte header and is padded to 8 bytes in the ring.
            bytes += 8 + (item.len() as u64).next_multiple_of(8);
            let decoded = self.pipe.record(&item);
            drop(item);
            if !decoded? {
                bad += 1;
            }
        }
        self.records_read += records;
        if let Some(m) = &self.pipe.metrics {
            m.drained(records, bad, bytes);
        }
        self.pipe.write_scratch()?;
        self.pipe.flush()
    }

    /// SIGHUP: reopen `-o FILE` (after logrotate moved it). On failure, keep writing to the
    /// old file and say so.
    pub(super) fn reopen(&mut self) -> Result<(), Fatal> {
        let Some(path) = self.output_path.clone() else {
            log::info!("SIGHUP ignored: events go to stdout");
            return Ok(());
        };
        match open_file(&path) {
            Ok(file) => {
                self.pipe.replace_output(Box::new(BufWriter::new(file)))?;
                log::info!("reopened {}", path.display());
            }
            Err(e) => log::error!("{e}; still writing to the file open before"),
        }
        Ok(())
    }

    /// Writes the `summary` event of the interval that just ended and starts the next.
    pub(super) fn write_summary(&mut self, interval: Duration) -> Result<(), Fatal> {
        let Some(s) = self.pipe.summary.replace(Summary::default()) else {
            return Ok(());
        };
        self.pipe.write(&Event::agent(
            self.clock.wall(monotonic_ns()),
            Body::Summary {
                interval_ms: interval.as_millis() as u64,
                summary: Box::new(s.report()),
            },
        ))?;
        self.pipe.flush()
    }

    pub(super) fn tick(&mut self, now_mono: u64) -> Result<(), Fatal> {
        self.pipe.correlator.tick(now_mono, &mut self.pipe.scratch);
        self.check_overdue(now_mono);
        self.forget_ended_existing(now_mono);
        self.find_ownerless(now_mono);
        if let Some(m) = &self.pipe.metrics {
            m.table(
                self.pipe.correlator.tracked(),
                self.pipe.correlator.stats.evicted,
            );
        }
        self.pipe.write_scratch()?;
        self.report_evictions(now_mono)
    }

    /// Followed connections whose keepalive timer should have ended them and of which no
    /// record came: if the kernel no longer has the socket, its last firing was one no
    /// tracepoint saw (docs/design.md), and the timeout is reported as inferred.
    fn check_overdue(&mut self, now_mono: u64) {
        let overdue = self.pipe.correlator.overdue(now_mono);
        if overdue.is_empty() {
            return;
        }
        let tuples: Vec<_> = overdue.iter().map(|o| o.tuple).collect();
        let gone = netns::sockets_gone(&tuples);
        let mut inferred = 0;
        for (o, g) in overdue.iter().zip(gone) {
            if g == Some(true) {
                self.pipe.correlator.unseen_death(o, &mut self.pipe.scratch);
                inferred += 1;
            }
        }
        log::debug!(
            "{} overdue keepalive timer(s), {inferred} socket(s) gone: timeouts inferred",
            overdue.len()
        );
    }

    /// Connections the agent stopped following because its table was full (the least
    /// recently active go first): an `events_lost` event, never silently.
    pub(super) fn report_evictions(&mut self, now_mono: u64) -> Result<(), Fatal> {
        let total = self.pipe.correlator.stats.evicted;
        if total <= self.pipe.totals.evicted_connections {
            return Ok(());
        }
        let count = total - self.pipe.totals.evicted_connections;
        self.pipe.totals.evicted_connections = total;
        log::warn!(
            "{count} connections no longer followed: the agent's table was full (raise --max-connections)"
        );
        self.pipe.write(&Event::agent(
            self.clock.wall(now_mono),
            Body::EventsLost {
                count,
                source: "agent_conn_table",
                total,
                records: None,
            },
        ))
    }
}
