//! Where events go: the user's filter ([`filter`]), then the event log in one format
//! (JSON Lines, [`json`], or [`human`] lines), the Prometheus metrics ([`metrics`]) and the
//! summaries ([`summary`]).
pub(crate) mod filter;
pub(crate) mod human;
pub(crate) mod json;
pub(crate) mod metrics;
pub(crate) mod summary;

use std::io::{self, Write};

pub use filter::Filter;

use crate::{cli::Format, event::Event};

/// Writes events in one format.
pub struct Output {
    out: Box<dyn Write + Send>,
    format: Format,
    /// The line being made (reused: no allocation per event once it has grown).
    line: String,
    /// JSON lines not yet handed to `out`: written in batches of [`JSON_BATCH`] bytes (or
    /// at [`Output::flush`]), one copy and one `write_all` per batch instead of per event.
    json: Vec<u8>,
    recent: json::Recent,
}

/// See [`Output::json`].
const JSON_BATCH: usize = 64 * 1024;

impl Output {
    pub fn new(out: Box<dyn Write + Send>, format: Format) -> Self {
        Output {
            out,
            format,
            line: String::with_capacity(512),
            json: Vec::with_capacity(JSON_BATCH + 4096),
            recent: Default::default(),
        }
    }

    /// Writes to `out` from now on (the old sink is dropped: flush it first).
    pub(crate) fn replace(&mut self, out: Box<dyn Write + Send>) {
        debug_assert!(self.json.is_empty(), "replaced before a flush");
        self.out = out;
    }

    pub(crate) fn write(&mut self, e: &Event) -> io::Result<()> {
        match self.format {
            Format::Json => {
                // Serialising our own model into memory cannot fail (no maps with
                // non-string keys).
                json::write_event_with(&mut self.json, e, &mut self.recent)
                    .map_err(io::Error::other)?;
                self.json.push(b'\n');
                if self.json.len() >= JSON_BATCH {
                    self.write_json()?;
                }
                Ok(())
            }
            Format::Human => {
                self.line.clear();
                human::human(&mut self.line, e);
                self.line.push('\n');
                self.out.write_all(self.line.as_bytes())
            }
        }
    }

    /// Hands the JSON lines made so far to `out`. (Dropped if `out` fails: the caller
    /// stops writing then.)
    fn write_json(&mut self) -> io::Result<()> {
        let r = self.out.write_all(&self.json);
        self.json.clear();
        r
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.write_json()?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use crate::event::test_event as event;

    #[test]
    fn json_line_layout() {
        let line = serde_json::to_string(&event(5000, 80, "10.0.0.1", "192.0.2.7")).unwrap();
        assert_eq!(
            line,
            r#"{"ts":"2025-11-24T16:00:00.123456Z","event":"keepalive_ack","saddr":"10.0.0.1","sport":5000,"daddr":"192.0.2.7","dport":80,"family":"ipv4","netns":1,"owner":null,"probes_unanswered":1}"#
        );
    }
}
