//! Aggregates over many connections: the periodic `summary` event
//! (`watch --summary-interval`) and the summary in `agent_stop`, made by the same code.
//!
//! - Activity by remote endpoint and by owner: keepalive probes, acks, timeouts, resets by
//!   direction and reason, closes by cause.
//! - Closes by local listening port (accepted connections) and by remote endpoint
//!   (connections this side opened): count, median lifetime, median bytes, the share
//!   closed by each side, and who holds TIME_WAIT.
//!
//! Memory is bounded: each table keeps at most [`MAX_GROUPS`] groups (later ones are
//! counted under an `other` group) and each group at most [`MAX_SAMPLES`] samples for its
//! medians (reservoir sampling beyond).
mod human;
mod pictures;
mod tables;

use std::collections::BTreeMap;

pub(crate) use human::human;
use tables::{Samples, Table};

use crate::{
    correlate::IdleClose,
    event::{
        Body, Cause, Endpoints, Event, Owner, Side,
        summary::{Activity, CloseStats, Listener, OwnerKey, Remote, Report, Row, Rows},
    },
};

/// Groups per table.
pub(crate) const MAX_GROUPS: usize = 1000;
/// Samples per group kept for the medians.
pub(crate) const MAX_SAMPLES: usize = 1024;
/// Groups shown per table in a summary (the busiest).
pub(crate) const SHOWN: usize = 20;

impl Activity {
    fn observe(&mut self, body: &Body) {
        match body {
            Body::KeepaliveProbe { .. } => self.keepalive_probes += 1,
            Body::KeepaliveAck { .. } => self.keepalive_acks += 1,
            Body::KeepaliveTimeout { .. } => self.keepalive_timeouts += 1,
            Body::ResetSent { reason, .. } => self.add_reset("sent", reason),
            Body::ResetReceived {
                during_keepalive, ..
            } => {
                let why = if *during_keepalive {
                    "answer_to_keepalive_probe"
                } else {
                    "peer_reset"
                };
                self.add_reset("received", why)
            }
            Body::ConnectionClosed { cause, .. } => {
                *self.closes_by_cause.entry(cause.as_str()).or_default() += 1
            }
            _ => {}
        }
    }

    /// Counts a reset (allocating only for a reason not seen before).
    fn add_reset(&mut self, direction: &'static str, reason: &str) {
        let reasons = self.resets.entry(direction).or_default();
        match reasons.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                reasons.insert(reason.to_owned(), 1);
            }
        }
    }

    fn weight(&self) -> u64 {
        self.keepalive_probes
            + self.keepalive_acks
            + self.keepalive_timeouts
            + self.resets.values().flat_map(|m| m.values()).sum::<u64>()
            + self.closes_by_cause.values().sum::<u64>()
    }
}

/// Closes of a group.
#[derive(Debug, Clone, Default)]
struct Closes {
    count: u64,
    closed_locally: u64,
    closed_remotely: u64,
    time_wait_local: u64,
    time_wait_remote: u64,
    by_cause: BTreeMap<&'static str, u64>,
    lifetimes: Samples,
    bytes: Samples,
}

impl Closes {
    fn observe(&mut self, body: &Body, rng: &mut u64) {
        let Body::ConnectionClosed {
            cause,
            closed_by,
            time_wait,
            lifetime_ms,
            bytes_sent,
            bytes_received,
            ..
        } = body
        else {
            return;
        };
        self.count += 1;
        match closed_by {
            Side::Local => self.closed_locally += 1,
            Side::Remote => self.closed_remotely += 1,
        }
        if *time_wait {
            self.time_wait_local += 1;
        } else if *cause == Cause::Fin && *closed_by == Side::Remote {
            self.time_wait_remote += 1;
        }
        *self.by_cause.entry(cause.as_str()).or_default() += 1;
        if let Some(ms) = lifetime_ms {
            self.lifetimes.add(*ms, rng);
        }
        if let (Some(s), Some(r)) = (bytes_sent, bytes_received) {
            self.bytes.add(s + r, rng);
        }
    }

    fn stats(&self) -> CloseStats {
        let share = |n: u64| {
            if self.count == 0 {
                0.0
            } else {
                (n as f64 / self.count as f64 * 1000.0).round() / 1000.0
            }
        };
        CloseStats {
            count: self.count,
            median_lifetime_ms: self.lifetimes.median(),
            median_bytes: self.bytes.median(),
            closed_locally: share(self.closed_locally),
            closed_remotely: share(self.closed_remotely),
            time_wait_local: self.time_wait_local,
            time_wait_remote: self.time_wait_remote,
            by_cause: self.by_cause.clone(),
        }
    }
}

/// The aggregation.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    events: u64,
    by_remote: Table<Remote, Activity>,
    by_owner: Table<OwnerKey, Activity>,
    closes_by_port: Table<Listener, Closes>,
    closes_by_remote: Table<Remote, Closes>,
    servers: Table<Listener, pictures::Server>,
    paths: Table<Remote, pictures::Path>,
    rng: u64,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            events: 0,
            by_remote: Table::default(),
            by_owner: Table::default(),
            closes_by_port: Table::default(),
            closes_by_remote: Table::default(),
            servers: Table::default(),
            paths: Table::default(),
            rng: 0x2545_f491_4f6c_dd1d,
        }
    }
}

fn owner_key(o: &Owner) -> OwnerKey {
    OwnerKey {
        pid: o.pid,
        comm: o.comm.clone(),
        cgroup: o.cgroup.clone(),
    }
}

impl Summary {
    /// Adds one event (as written to the log).
    pub(crate) fn observe(&mut self, e: &Event) {
        let Some(c) = &e.conn else { return };
        self.events += 1;
        // FINs are counted in no table: looking their groups up cost ~10 % of the agent's
        // time under `--all` churn, and made empty groups (an accepted connection's FINs
        // have the client's ephemeral port in their remote).
        if matches!(e.body, Body::FinSent { .. } | Body::FinReceived { .. }) {
            return;
        }
        let listener = Listener {
            netns: c.netns,
            port: c.sport,
        };
        // Accepted: its close says so; its other events (probes, resets) are known to be on a
        // listening port once the summary has seen that port serve (a close of an accepted
        // connection, an idle close, a server's RST).
        let inbound = match &e.body {
            Body::ConnectionClosed { direction, .. } => *direction == Some("inbound"),
            _ => self.servers.contains(&listener),
        };
        let remote = Remote {
            daddr: c.daddr,
            dport: c.dport,
        };
        // An accepted connection's remote endpoint is a client's ephemeral port: group
        // its activity by the client address alone.
        let activity_remote = if inbound {
            Remote {
                daddr: c.daddr,
                dport: 0,
            }
        } else {
            remote.clone()
        };
        self.by_remote.get(activity_remote).observe(&e.body);
        if let Some(o) = &e.owner {
            self.by_owner.get(owner_key(o)).observe(&e.body);
        }
        match &e.body {
            Body::ConnectionClosed {
                direction,
                diagnosis,
                time_wait,
                ..
            } => {
                let rng = &mut self.rng;
                if *direction == Some("inbound") {
                    self.closes_by_port
                        .get(listener.clone())
                        .observe(&e.body, rng);
                    let server = self.servers.get(listener);
                    server.diagnosis(diagnosis, rng);
                    if *time_wait {
                        server.time_wait();
                    }
                } else {
                    self.closes_by_remote
                        .get(remote.clone())
                        .observe(&e.body, rng);
                    self.paths.get(remote).diagnosis(diagnosis);
                }
            }
            // An RST that closed no connection, for a port a local server listens on.
            Body::ResetSent {
                diagnosis: Some(d), ..
            } if e.owner.is_some() => self.servers.get(listener).diagnosis(d, &mut self.rng),
            _ => {}
        }
    }

    /// This side closed a connection after an idle time (reported by the kernel even when
    /// the connection is not: [`crate::correlate::IdleClose`]).
    pub(crate) fn idle_close(&mut self, c: &IdleClose) {
        let e = Endpoints::from_tuple(&c.tuple);
        if c.inbound {
            self.servers
                .get(Listener {
                    netns: e.netns,
                    port: e.sport,
                })
                .idle_close(c.idle_ms, &mut self.rng);
        } else {
            self.paths
                .get(Remote {
                    daddr: e.daddr,
                    dport: e.dport,
                })
                .survived(c.idle_ms);
        }
    }

    /// The report, busiest groups first.
    pub(crate) fn report(&self) -> Report {
        fn rows<K: Clone + Ord, V: Clone, S: Clone>(
            t: &Table<K, V>,
            weight: impl Fn(&V) -> u64,
            show: impl Fn(&V) -> S,
        ) -> Rows<K, S> {
            let mut all: Vec<(&K, &V)> = t.groups.iter().collect();
            all.sort_by(|a, b| weight(b.1).cmp(&weight(a.1)).then_with(|| a.0.cmp(b.0)));
            let more = all.len().saturating_sub(SHOWN) as u64 + t.others;
            Rows {
                top: all
                    .into_iter()
                    .take(SHOWN)
                    .map(|(k, v)| Row {
                        key: k.clone(),
                        value: show(v),
                    })
                    .collect(),
                more_groups: more,
            }
        }
        Report {
            events: self.events,
            by_remote: rows(&self.by_remote, Activity::weight, Activity::clone),
            by_owner: rows(&self.by_owner, Activity::weight, Activity::clone),
            closes_by_listening_port: rows(&self.closes_by_port, |c| c.count, Closes::stats),
            closes_by_remote: rows(&self.closes_by_remote, |c| c.count, Closes::stats),
            keepalive_by_listening_port: rows(
                &self.servers,
                pictures::Server::weight,
                pictures::Server::picture,
            ),
            paths_by_remote: rows(&self.paths, pictures::Path::weight, pictures::Path::picture),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::event::{
        Endpoints, Family, Timestamp,
        diagnosis::{Verdict, test_diagnosis},
        summary::Spread,
    };

    fn closed(
        sport: u16,
        dport: u16,
        direction: &'static str,
        by: Side,
        life: u64,
        bytes: u64,
    ) -> Event {
        Event {
            ts: Timestamp(0),
            conn: Some(Endpoints {
                saddr: "10.0.0.1".parse().unwrap(),
                sport,
                daddr: "10.0.0.2".parse().unwrap(),
                dport,
                family: Family::Ipv4,
                netns: 7,
            }),
            owner: Some(Owner::new(42, "app".into(), Some("/app.slice".into()))),
            body: Body::ConnectionClosed {
                cause: Cause::Fin,
                error: None,
                closed_by: by,
                time_wait: by == Side::Local,
                lifetime_ms: Some(life),
                idle_ms: None,
                keepalive_probes: 0,
                keepalive_acks: 0,
                last_state: None,
                direction: Some(direction),
                bytes_sent: Some(bytes),
                bytes_received: Some(0),
                segments: Some(4),
                segments_sent: Some(2),
                segments_received: Some(2),
                diagnosis: std::sync::Arc::new(test_diagnosis(Verdict::Orderly)),
                socket_cgroup: None,
            },
        }
    }

    #[test]
    fn closes_are_grouped_by_listening_port_and_remote_endpoint() {
        let mut s = Summary::default();
        // Three accepted connections on port 8080 from different client ports.
        s.observe(&closed(8080, 40001, "inbound", Side::Remote, 10, 100));
        s.observe(&closed(8080, 40002, "inbound", Side::Remote, 30, 300));
        s.observe(&closed(8080, 40003, "inbound", Side::Local, 20, 200));
        // Two connections this side opened to 10.0.0.2:5432.
        s.observe(&closed(50001, 5432, "outbound", Side::Local, 1000, 5));
        s.observe(&closed(50002, 5432, "outbound", Side::Local, 3000, 7));
        let r = s.report();
        assert_eq!(r.events, 5);
        let port = &r.closes_by_listening_port.top;
        assert_eq!(port.len(), 1);
        assert_eq!(
            port[0].key,
            Listener {
                netns: 7,
                port: 8080
            }
        );
        let p = &port[0].value;
        assert_eq!(
            (p.count, p.median_lifetime_ms, p.median_bytes),
            (3, Some(20), Some(200))
        );
        assert_eq!((p.closed_locally, p.closed_remotely), (0.333, 0.667));
        assert_eq!((p.time_wait_local, p.time_wait_remote), (1, 2));
        let remote = &r.closes_by_remote.top;
        assert_eq!(remote.len(), 1);
        assert_eq!(remote[0].key.dport, 5432);
        assert_eq!(remote[0].value.count, 2);
        assert_eq!(remote[0].value.closed_locally, 1.0);
        // Activity: the clients of port 8080 are one remote group (address only).
        assert!(
            r.by_remote
                .top
                .iter()
                .any(|row| row.key.dport == 0 && row.value.closes_by_cause["fin"] == 3)
        );
        assert_eq!(r.by_owner.top.len(), 1);
        assert_eq!(r.by_owner.top[0].value.closes_by_cause["fin"], 5);
        let mut text = String::new();
        human(&mut text, &r);
        assert!(
            text.contains("closes by listening port:") && text.contains("port 8080"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["closes_by_listening_port"]["top"][0]["port"], 8080);
        assert_eq!(json["closes_by_listening_port"]["top"][0]["count"], 3);
    }

    #[test]
    fn keepalive_pictures_of_servers_and_paths() {
        use kaprobe_common::{AF_INET, Tuple};

        use crate::event::diagnosis::Diagnosis;
        let with = |mut e: Event, verdict: Verdict, silence: Option<u64>| {
            if let Body::ConnectionClosed { diagnosis, .. } = &mut e.body {
                *diagnosis = std::sync::Arc::new(Diagnosis {
                    evidence: crate::event::diagnosis::Evidence {
                        silence_ms: silence,
                        ..Default::default()
                    },
                    ..test_diagnosis(verdict)
                });
            }
            e
        };
        let mut s = Summary::default();
        // A server on 8080: three idle closes after ~1 s, one client that raced it (its
        // TIME_WAIT RST), one orderly close.
        let idle = |sport: u16, dport: u16, idle_ms: u64, inbound: bool| {
            let mut tuple = Tuple {
                sport,
                dport,
                family: AF_INET,
                netns: 7,
                ..Tuple::default()
            };
            tuple.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
            tuple.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
            IdleClose {
                tuple,
                fin_ns: 0,
                idle_ms,
                inbound,
                owner: None,
            }
        };
        for (port, ms) in [(40001, 1000), (40002, 1000), (40003, 1012)] {
            s.idle_close(&idle(8080, port, ms, true));
        }
        let mut rst = closed(8080, 40001, "inbound", Side::Local, 10, 10);
        rst.body = Body::ResetSent {
            reason: "tcp_timewait_socket".into(),
            state: Some("time_wait"),
            answering: Some("data"),
            diagnosis: Some(std::sync::Arc::new(test_diagnosis(Verdict::KeepaliveRace))),
        };
        s.observe(&rst);
        s.observe(&closed(8080, 40004, "inbound", Side::Remote, 10, 10));
        // A path to 10.0.0.2:5432: survived 1.5 s of silence, died after 4 s.
        s.idle_close(&idle(50000, 5432, 1500, false));
        s.observe(&with(
            closed(50001, 5432, "outbound", Side::Remote, 10, 10),
            Verdict::MiddleboxIdleTimeout,
            Some(4000),
        ));
        let r = s.report();
        let server = &r.keepalive_by_listening_port.top[0];
        assert_eq!((server.key.netns, server.key.port), (7, 8080));
        let p = &server.value;
        assert_eq!(p.idle_closes, 3);
        assert_eq!(
            p.idle_before_close,
            Some(Spread {
                min_ms: 1000,
                median_ms: 1000,
                max_ms: 1012
            })
        );
        assert_eq!(p.clients_raced, 1);
        assert_eq!(p.time_wait_here, 3);
        assert_eq!(p.verdicts.get("orderly"), Some(&1));
        let path = &r.paths_by_remote.top[0];
        assert_eq!(path.key.dport, 5432);
        assert_eq!(path.value.longest_silence_survived_ms, Some(1500));
        assert_eq!(path.value.shortest_silence_died_ms, Some(4000));
        assert_eq!(path.value.idle_timeout_between_ms, Some((1500, 4000)));
        let mut text = String::new();
        human(&mut text, &r);
        assert!(
            text.contains("idle closes     3 after 1.0 s (min 1.0 s, max 1.0 s)"),
            "{text}"
        );
        assert!(
            text.contains("idle timeout on the path between 1.5 s and 4.0 s"),
            "{text}"
        );
    }

    #[test]
    fn tables_and_samples_are_bounded() {
        let mut s = Summary::default();
        for i in 0..(MAX_GROUPS as u32 + 50) {
            let mut e = closed(40000, 1, "outbound", Side::Local, i as u64, 1);
            if let Some(c) = &mut e.conn {
                c.daddr = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            }
            s.observe(&e);
        }
        let r = s.report();
        assert_eq!(r.closes_by_remote.top.len(), SHOWN);
        assert_eq!(
            r.closes_by_remote.more_groups,
            (MAX_GROUPS - SHOWN) as u64 + 50
        );
        let mut samples = Samples::default();
        let mut rng = 1;
        for v in 0..10_000 {
            samples.add(v, &mut rng);
        }
        assert_eq!(samples.kept.len(), MAX_SAMPLES);
        let m = samples.median().unwrap();
        assert!((3000..7000).contains(&m), "a sampled median near 5000: {m}");
    }
}
