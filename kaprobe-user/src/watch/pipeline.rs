//! The data path of `watch` for each record: decode, correlate, name the owners' cgroups,
//! then every sink (filter, totals, summaries, metrics, the event log). The agent
//! ([`super::agent`]) feeds it from the ring buffer; the agent-throughput benchmark
//! (examples/agent_throughput.rs) drives it with made-up records.
use std::{io, sync::Arc};

use crate::{
    bpf::decode::decode,
    correlate::Correlator,
    error::{Fatal, exit},
    event::{Endpoints, Event, Totals},
    sink::{Filter, Output, metrics::Metrics, summary::Summary},
};

/// Events made but not yet written are written in batches of this many.
const BATCH: usize = 256;

/// Everything between a decoded record and the outputs.
pub struct Pipeline {
    pub(crate) correlator: Correlator,
    filter: Filter,
    output: Output,
    pub(crate) totals: Totals,
    /// Events made by the correlator, not yet written.
    pub(crate) scratch: Vec<Event>,
    /// Since the last `summary` event (with `--summary-interval`).
    pub(crate) summary: Option<Summary>,
    /// The whole run, for `agent_stop`.
    pub(crate) summary_all: Summary,
    pub(crate) metrics: Option<Arc<Metrics>>,
    /// Set when the reader of the output went away (`kaprobe watch | head`).
    pub(crate) closed: bool,
    written: u64,
}

impl Pipeline {
    /// `periodic_summary`: keep a summary of each interval besides the whole run's.
    pub fn new(
        correlator: Correlator,
        filter: Filter,
        output: Output,
        periodic_summary: bool,
    ) -> Pipeline {
        Pipeline {
            correlator,
            filter,
            output,
            totals: Totals::default(),
            scratch: Vec::with_capacity(2 * BATCH),
            summary: periodic_summary.then(Summary::default),
            summary_all: Summary::default(),
            metrics: None,
            closed: false,
            written: 0,
        }
    }

    /// One record as the kernel wrote it into the ring buffer; false if it does not decode
    /// (counted in the totals).
    pub fn record(&mut self, bytes: &[u8]) -> Result<bool, Fatal> {
        match decode(bytes) {
            Ok(raw) => self.correlator.handle(&raw, &mut self.scratch),
            Err(e) => {
                self.totals.bad_records += 1;
                log::debug!("undecodable record: {e}");
                return Ok(false);
            }
        }
        if self.scratch.len() >= BATCH {
            self.write_scratch()?;
        }
        Ok(true)
    }

    /// Reports what the correlator still holds (the end of the run).
    pub fn finish(&mut self) -> Result<(), Fatal> {
        self.correlator.flush(&mut self.scratch);
        self.write_scratch()
    }

    /// Connections followed (for the benchmark's report).
    pub fn tracked(&self) -> usize {
        self.correlator.tracked()
    }

    /// Events written (they passed the filter).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes one event to every sink, if it passes the filter.
    pub(crate) fn write(&mut self, e: &Event) -> Result<(), Fatal> {
        if self.closed || !self.filter.matches(e) {
            return Ok(());
        }
        self.written += 1;
        self.totals.count(e);
        self.summary_all.observe(e);
        if let Some(s) = &mut self.summary {
            s.observe(e);
        }
        if let Some(m) = &self.metrics {
            m.observe(e);
        }
        let written = self.output.write(e);
        self.output_result(written)
    }

    /// Writes the events the correlator made.
    pub fn write_scratch(&mut self) -> Result<(), Fatal> {
        let mut events = std::mem::take(&mut self.scratch);
        for o in events.iter_mut().filter_map(|e| e.owner.as_mut()) {
            self.correlator.resolve_owner(o);
        }
        for e in &events {
            self.write(e)?;
        }
        self.scratch = events;
        self.scratch.clear();
        self.idle_closes();
        Ok(())
    }

    /// This side's idle closes of connections that are not reported (the summaries' keep-
    /// alive picture), as far as the filter lets them through.
    fn idle_closes(&mut self) {
        for mut c in self.correlator.take_idle_closes() {
            if let Some(o) = c.owner.as_mut() {
                self.correlator.resolve_owner(o);
            }
            let e = Endpoints::from_tuple(&c.tuple);
            let wanted = self
                .filter
                .matches_endpoints(&e.saddr, e.sport, &e.daddr, e.dport)
                && self.filter.matches_netns(e.netns)
                && self.filter.matches_owner(c.owner.as_ref());
            if wanted {
                self.summary_all.idle_close(&c);
                if let Some(s) = &mut self.summary {
                    s.idle_close(&c);
                }
            }
        }
    }

    pub fn flush(&mut self) -> Result<(), Fatal> {
        if self.closed {
            return Ok(());
        }
        let flushed = self.output.flush();
        self.output_result(flushed)
    }

    /// Writes to `out` from now on (`-o FILE` reopened).
    pub(crate) fn replace_output(&mut self, out: Box<dyn io::Write + Send>) -> Result<(), Fatal> {
        self.flush()?;
        self.output.replace(out);
        Ok(())
    }

    /// A write's result: a reader gone away (broken pipe) ends the output quietly.
    fn output_result(&mut self, r: io::Result<()>) -> Result<(), Fatal> {
        match r {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(err) => Err(Fatal::new(
                exit::OUTPUT,
                format!("cannot write events: {err}"),
            )),
        }
    }
}
