//! Output: filters, JSON Lines and the human format, and the running totals of what was
//! written (for the exit summary).
pub mod json;
pub mod metrics;
pub mod summary;

use std::{
    fmt::Write as _,
    io::{self, Write},
    net::IpAddr,
    str::FromStr,
};

use clap::ValueEnum;

use crate::event::{Body, Cause, Endpoints, Event, Owner, Side, Totals};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One aligned line per event.
    Human,
    /// JSON Lines (one object per line), see docs/events.md.
    Json,
}

/// An address block, `10.0.0.0/8` or `fd00::/8` (a bare address means a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        fn bits(ip: &IpAddr) -> (u128, u32) {
            match ip {
                IpAddr::V4(a) => (u32::from(*a) as u128, 32),
                IpAddr::V6(a) => (u128::from(*a), 128),
            }
        }
        let (net, width) = bits(&self.addr);
        let (host, host_width) = bits(ip);
        if width != host_width {
            return false;
        }
        let shift = width - self.prefix as u32;
        if shift >= width {
            return true;
        }
        (net >> shift) == (host >> shift)
    }
}

/// The event filters of `watch`: an event passes when every kind of filter given matches
/// (`--port` and `--addr` either end of the connection; `--netns` its namespace; `--pid`,
/// `--comm` and `--cgroup` (a path prefix) its owner, so a connection whose owner is unknown
/// does not pass those). Several values of one kind are alternatives. Events without a
/// connection (agent_start, events_lost, summaries) always pass.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub ports: Vec<u16>,
    pub nets: Vec<Cidr>,
    pub netns: Vec<u32>,
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub cgroups: Vec<String>,
}

impl Filter {
    pub fn from_args(a: &crate::cli::FilterArgs) -> Filter {
        Filter {
            ports: a.port.clone(),
            nets: a.addr.clone(),
            netns: a.netns.clone(),
            pids: a.pid.clone(),
            comms: a.comm.clone(),
            cgroups: a.cgroup.clone(),
        }
    }

    pub fn matches(&self, e: &Event) -> bool {
        let Some(c) = &e.conn else { return true };
        self.matches_endpoints(&c.saddr, c.sport, &c.daddr, c.dport)
            && self.matches_netns(c.netns)
            && self.matches_owner(e.owner.as_ref())
    }

    /// `--port` and `--addr` alone: either end.
    pub fn matches_endpoints(
        &self,
        saddr: &IpAddr,
        sport: u16,
        daddr: &IpAddr,
        dport: u16,
    ) -> bool {
        let port_ok = self.ports.is_empty() || self.ports.iter().any(|&p| p == sport || p == dport);
        let addr_ok = self.nets.is_empty()
            || self
                .nets
                .iter()
                .any(|n| n.contains(saddr) || n.contains(daddr));
        port_ok && addr_ok
    }

    /// `--netns` alone.
    pub fn matches_netns(&self, netns: u32) -> bool {
        self.netns.is_empty() || self.netns.contains(&netns)
    }

    /// `--pid`, `--comm` and `--cgroup` alone.
    pub fn matches_owner(&self, owner: Option<&Owner>) -> bool {
        if !self.by_owner() {
            return true;
        }
        let Some(o) = owner else { return false };
        let pid_ok = self.pids.is_empty() || self.pids.contains(&o.pid);
        let comm_ok = self.comms.is_empty() || self.comms.iter().any(|c| **c == *o.comm);
        let cgroup_ok = self.cgroups.is_empty()
            || o.cgroup
                .as_deref()
                .is_some_and(|path| self.cgroups.iter().any(|p| cgroup_under(path, p)));
        pid_ok && comm_ok && cgroup_ok
    }

    /// Whether any owner filter is set.
    fn by_owner(&self) -> bool {
        !(self.pids.is_empty() && self.comms.is_empty() && self.cgroups.is_empty())
    }
}

/// Is cgroup path `path` the cgroup `prefix` or inside it (whole path components:
/// `/system.slice` covers `/system.slice/nginx.service`, not `/system.slice2`)?
pub fn cgroup_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Adds an event to the totals.
pub fn count(t: &mut Totals, e: &Event) {
    match &e.body {
        Body::KeepaliveProbe { .. } => t.keepalive_probes += 1,
        Body::KeepaliveAck { .. } => t.keepalive_acks += 1,
        Body::KeepaliveTimeout { .. } => t.keepalive_timeouts += 1,
        Body::ResetSent { .. } => t.resets_sent += 1,
        Body::ResetReceived { .. } => t.resets_received += 1,
        Body::FinSent { .. } => t.fins_sent += 1,
        Body::FinReceived { .. } => t.fins_received += 1,
        Body::ConnectionClosed { cause, .. } => {
            t.connections_closed += 1;
            *t.closed_by_cause.entry(cause.as_str()).or_default() += 1;
        }
        Body::AgentStart { .. }
        | Body::AgentStop { .. }
        | Body::Summary { .. }
        | Body::EventsLost { .. } => {}
    }
}

/// Writes events in one format.
pub struct Output {
    out: Box<dyn Write + Send>,
    format: Format,
    /// The line being made (reused: no allocation per event once it has grown).
    line: String,
    /// JSON lines not yet handed to `out`: written in batches of [`JSON_BATCH`] bytes (or
    /// at [`Output::flush`]), one copy and one `write_all` per batch instead of per event.
    json: Vec<u8>,
    owners: crate::sink::json::OwnerCache,
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
            owners: Default::default(),
        }
    }

    /// Writes to `out` from now on (the old sink is dropped: flush it first).
    pub fn replace(&mut self, out: Box<dyn Write + Send>) {
        debug_assert!(self.json.is_empty(), "replaced before a flush");
        self.out = out;
    }

    pub fn write(&mut self, e: &Event) -> io::Result<()> {
        match self.format {
            Format::Json => {
                // Serialising our own model into memory cannot fail (no maps with
                // non-string keys).
                crate::sink::json::write_event_with(&mut self.json, e, &mut self.owners)
                    .map_err(io::Error::other)?;
                self.json.push(b'\n');
                if self.json.len() >= JSON_BATCH {
                    self.write_json()?;
                }
                Ok(())
            }
            Format::Human => {
                self.line.clear();
                human(&mut self.line, e);
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

    pub fn flush(&mut self) -> io::Result<()> {
        self.write_json()?;
        self.out.flush()
    }
}

fn endpoints(c: &Endpoints) -> String {
    let one = |a: &IpAddr, p: u16| match a {
        IpAddr::V4(a) => format!("{a}:{p}"),
        IpAddr::V6(a) => format!("[{a}]:{p}"),
    };
    format!("{} > {}", one(&c.saddr, c.sport), one(&c.daddr, c.dport))
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

fn cause_text(c: Cause) -> &'static str {
    match c {
        Cause::KeepaliveTimeout => "keepalive timeout",
        Cause::ResetReceived => "reset by peer",
        Cause::ResetSent => "reset by this side",
        Cause::RetransmitTimeout => "retransmission timeout",
        Cause::Fin => "FIN",
        Cause::Other => "other",
    }
}

/// The human line of an event: time, event, endpoints, what happened in words.
pub fn human(line: &mut String, e: &Event) {
    let ts = e.ts.rfc3339();
    let time = ts.get(11..26).unwrap_or(&ts);
    let conn = e.conn.as_ref().map(endpoints).unwrap_or_default();
    let _ = write!(line, "{time}  {:<18} {conn:<47} ", e.body.name());
    let _ = match &e.body {
        Body::AgentStart {
            version,
            kernel,
            mode,
            hooks,
            features,
            ..
        } => {
            let kinds: Vec<&str> = hooks.iter().map(|h| h.attach.as_str()).collect();
            let mut kinds_u = kinds.clone();
            kinds_u.dedup();
            write!(
                line,
                "kaprobe {version} on Linux {kernel}: {} hooks ({}), HZ {}, reset reasons {}, mode {mode}",
                hooks.len(),
                kinds_u.join("+"),
                features.hz,
                if features.reset_reason {
                    "available"
                } else {
                    "unavailable (kernel < 6.10)"
                }
            )
        }
        Body::Summary {
            interval_ms,
            summary,
        } => {
            let _ = write!(
                line,
                "{} connection events in the last {}",
                summary.events,
                secs(*interval_ms)
            );
            let mut tables = String::new();
            crate::sink::summary::human(&mut tables, summary);
            if !tables.is_empty() {
                line.push('\n');
                line.push_str(tables.trim_end_matches('\n'));
            }
            Ok(())
        }
        Body::AgentStop {
            duration_ms,
            totals,
            ..
        } => {
            let causes: Vec<String> = totals
                .closed_by_cause
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            write!(
                line,
                "after {}: keepalive {} probes, {} acks, {} timeouts; resets {} sent, {} received; \
                 FINs {} sent, {} received; {} closed ({}); lost {} records, {} untracked sockets",
                secs(*duration_ms),
                totals.keepalive_probes,
                totals.keepalive_acks,
                totals.keepalive_timeouts,
                totals.resets_sent,
                totals.resets_received,
                totals.fins_sent,
                totals.fins_received,
                totals.connections_closed,
                if causes.is_empty() {
                    "none".to_owned()
                } else {
                    causes.join(", ")
                },
                totals.events_lost,
                totals.untracked_sockets,
            )
        }
        Body::KeepaliveProbe {
            probe,
            max_probes,
            idle_ms,
            interval_ms,
            inferred,
        } => write!(
            line,
            "probe {probe}/{max_probes} sent after {} without hearing the peer (interval {}){}",
            secs(*idle_ms),
            secs(*interval_ms),
            if *inferred {
                "; not traced, inferred from the next firing"
            } else {
                ""
            }
        ),
        Body::KeepaliveAck { probes_unanswered } => {
            write!(
                line,
                "peer answered ({probes_unanswered} probe(s) were outstanding)"
            )
        }
        Body::KeepaliveTimeout {
            probes,
            max_probes,
            idle_ms,
            error,
            user_timeout_ms,
            inferred,
        } => {
            let ut = user_timeout_ms
                .map(|ms| format!(", TCP_USER_TIMEOUT {ms} ms"))
                .unwrap_or_default();
            write!(
                line,
                "keepalive timeout: {probes}/{max_probes} probes unanswered after {} idle{ut} ({}){}",
                secs(*idle_ms),
                error.unwrap_or("no error"),
                if *inferred {
                    "; not traced: the socket was gone when its timer was due"
                } else {
                    ""
                }
            )
        }
        Body::ResetSent { reason, state } => match state {
            Some(s) => write!(line, "RST sent ({reason}) from {s}"),
            None => write!(
                line,
                "RST sent ({reason}) answering a segment with no socket"
            ),
        },
        Body::ResetReceived {
            during_keepalive,
            state,
        } => write!(
            line,
            "RST received in {state}{}",
            if *during_keepalive {
                " while a keepalive probe was outstanding"
            } else {
                ""
            }
        ),
        Body::FinSent { state } => write!(line, "FIN sent (now {state})"),
        Body::FinReceived { state } => write!(line, "FIN received (now {state})"),
        Body::ConnectionClosed {
            cause,
            error,
            closed_by,
            time_wait,
            lifetime_ms,
            idle_ms,
            keepalive_probes,
            keepalive_acks,
            bytes_sent,
            bytes_received,
            ..
        } => {
            let by = if *closed_by == Side::Local {
                "this side"
            } else {
                "the peer"
            };
            let life = lifetime_ms
                .map(|ms| format!(" after {}", secs(ms)))
                .unwrap_or_default();
            let err = error.map(|e| format!(" ({e})")).unwrap_or_default();
            // Worth saying when the peer had been silent for a while (a second or more).
            let idle = idle_ms
                .filter(|ms| *ms >= 1000)
                .map(|ms| format!(", {} after the peer was last heard", secs(ms)))
                .unwrap_or_default();
            let tw = if *time_wait {
                ", this side holds TIME_WAIT"
            } else {
                ""
            };
            let bytes = match (bytes_sent, bytes_received) {
                (Some(s), Some(r)) => format!("; {s} bytes sent, {r} received"),
                _ => String::new(),
            };
            write!(
                line,
                "closed{life}: {}{err}{idle}, ended by {by}; keepalive {keepalive_probes} probes, {keepalive_acks} acks{bytes}{tw}",
                cause_text(*cause)
            )
        }
        Body::EventsLost {
            count,
            source,
            total,
            records,
        } => match *source {
            "ring_buffer" => {
                let ends = records.as_ref().map_or(0, |r| r.connection_ends);
                write!(
                    line,
                    "LOST {count} records: ring buffer full ({total} in total); {ends} connection ends unreported"
                )
            }
            "recursion" => write!(
                line,
                "LOST {count} hook runs: skipped by the kernel, program already running ({total} in total)"
            ),
            "agent_conn_table" => write!(
                line,
                "{count} connections no longer followed: agent table full ({total} in total)"
            ),
            _ => write!(
                line,
                "{count} sockets not tracked: kernel connection table full ({total} in total)"
            ),
        },
    };
    if let Some(c) = &e.conn {
        let _ = write!(line, " [netns {}", c.netns);
        if let Some(o) = &e.owner {
            let _ = write!(line, ", pid {} {}", o.pid, o.comm);
            if let Some(id) = &o.container_id {
                let _ = write!(line, ", container {}", id.get(..12).unwrap_or(id));
            }
        }
        line.push(']');
    }
    while line.ends_with(' ') {
        line.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Family, Timestamp};

    fn event(sport: u16, dport: u16, saddr: &str, daddr: &str) -> Event {
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

    #[test]
    fn cidr_parsing_and_matching() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(&"10.1.2.3".parse().unwrap()));
        assert!(!net.contains(&"11.0.0.1".parse().unwrap()));
        assert!(!net.contains(&"::1".parse().unwrap()));
        let host: Cidr = "fd00::1".parse().unwrap();
        assert!(host.contains(&"fd00::1".parse().unwrap()));
        assert!(!host.contains(&"fd00::2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(&"192.0.2.1".parse().unwrap()));
        assert!("1.2.3/99".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn filters_match_either_end() {
        let e = event(5000, 80, "10.0.0.1", "192.0.2.7");
        assert!(Filter::default().matches(&e));
        assert!(
            Filter {
                ports: vec![80],
                nets: vec![],
                ..Filter::default()
            }
            .matches(&e)
        );
        assert!(
            Filter {
                ports: vec![5000],
                nets: vec![],
                ..Filter::default()
            }
            .matches(&e)
        );
        assert!(
            !Filter {
                ports: vec![443],
                nets: vec![],
                ..Filter::default()
            }
            .matches(&e)
        );
        assert!(
            Filter {
                ports: vec![],
                nets: vec!["192.0.2.0/24".parse().unwrap()],
                ..Filter::default()
            }
            .matches(&e)
        );
        assert!(
            !Filter {
                ports: vec![80],
                nets: vec!["198.51.100.0/24".parse().unwrap()],
                ..Filter::default()
            }
            .matches(&e)
        );
        let start = Event { conn: None, ..e };
        assert!(
            Filter {
                ports: vec![1],
                nets: vec![],
                ..Filter::default()
            }
            .matches(&start),
            "agent events always pass"
        );
    }

    #[test]
    fn owner_filters() {
        let mut e = event(5000, 80, "10.0.0.1", "192.0.2.7");
        let by_pid = Filter {
            pids: vec![42],
            ..Filter::default()
        };
        assert!(
            !by_pid.matches(&e),
            "an unknown owner does not pass an owner filter"
        );
        e.owner = Some(Owner::new(
            42,
            "nginx".into(),
            Some("/system.slice/nginx.service".into()),
        ));
        assert!(by_pid.matches(&e));
        let f = |comms: &[&str], cgroups: &[&str], netns: &[u32]| Filter {
            comms: comms.iter().map(|s| s.to_string()).collect(),
            cgroups: cgroups.iter().map(|s| s.to_string()).collect(),
            netns: netns.to_vec(),
            ..Filter::default()
        };
        assert!(f(&["nginx"], &[], &[]).matches(&e));
        assert!(!f(&["curl"], &[], &[]).matches(&e));
        assert!(
            f(&["curl", "nginx"], &[], &[]).matches(&e),
            "values of one kind: any"
        );
        assert!(f(&[], &["/system.slice"], &[]).matches(&e));
        assert!(f(&[], &["/system.slice/"], &[]).matches(&e));
        assert!(f(&[], &["/system.slice/nginx.service"], &[]).matches(&e));
        assert!(
            !f(&[], &["/system.slice/nginx"], &[]).matches(&e),
            "whole components"
        );
        assert!(!f(&[], &["/user.slice"], &[]).matches(&e));
        assert!(f(&["nginx"], &["/system.slice"], &[1]).matches(&e));
        assert!(
            !f(&["nginx"], &["/system.slice"], &[2]).matches(&e),
            "kinds: all"
        );
    }

    #[test]
    fn json_line_layout() {
        let line = serde_json::to_string(&event(5000, 80, "10.0.0.1", "192.0.2.7")).unwrap();
        assert_eq!(
            line,
            r#"{"ts":"2025-11-24T16:00:00.123456Z","event":"keepalive_ack","saddr":"10.0.0.1","sport":5000,"daddr":"192.0.2.7","dport":80,"family":"ipv4","netns":1,"owner":null,"probes_unanswered":1}"#
        );
    }

    #[test]
    fn human_line_spells_out_the_cause() {
        let e = Event {
            body: Body::KeepaliveTimeout {
                probes: 3,
                max_probes: 3,
                idle_ms: 4096,
                error: Some("ETIMEDOUT"),
                user_timeout_ms: None,
                inferred: false,
            },
            ..event(5000, 80, "10.0.0.1", "192.0.2.7")
        };
        let mut line = String::new();
        human(&mut line, &e);
        assert!(
            line.starts_with("16:00:00.123456  keepalive_timeout  10.0.0.1:5000 > 192.0.2.7:80"),
            "{line}"
        );
        assert!(
            line.contains("keepalive timeout: 3/3 probes unanswered after 4.1 s idle (ETIMEDOUT)"),
            "{line}"
        );
    }
}
