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
use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use crate::{
    FastMap,
    event::{
        Body, Cause, Event, Owner, Side,
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

/// Samples for a median, bounded by reservoir sampling.
#[derive(Debug, Clone, Default)]
struct Samples {
    seen: u64,
    kept: Vec<u64>,
}

impl Samples {
    fn add(&mut self, v: u64, rng: &mut u64) {
        self.seen += 1;
        if self.kept.len() < MAX_SAMPLES {
            self.kept.push(v);
            return;
        }
        // xorshift: deterministic, good enough to pick which sample to replace.
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let i = (*rng % self.seen) as usize;
        if i < MAX_SAMPLES {
            self.kept[i] = v;
        }
    }

    fn median(&self) -> Option<u64> {
        if self.kept.is_empty() {
            return None;
        }
        let mut v = self.kept.clone();
        let mid = v.len() / 2;
        let (_, m, _) = v.select_nth_unstable(mid);
        Some(*m)
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

/// A bounded map: past [`MAX_GROUPS`] keys, new keys go to `other`.
#[derive(Debug, Clone)]
struct Table<K, V> {
    groups: FastMap<K, V>,
    other: V,
    others: u64,
}

impl<K, V: Default> Default for Table<K, V> {
    fn default() -> Self {
        Table {
            groups: FastMap::default(),
            other: V::default(),
            others: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq, V: Default> Table<K, V> {
    fn get(&mut self, key: K) -> &mut V {
        if self.groups.len() < MAX_GROUPS {
            return self.groups.entry(key).or_default();
        }
        match self.groups.get_mut(&key) {
            Some(v) => v,
            None => {
                self.others += 1;
                &mut self.other
            }
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
        let inbound = matches!(
            e.body,
            Body::ConnectionClosed {
                direction: Some("inbound"),
                ..
            }
        );
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
        if let Body::ConnectionClosed { direction, .. } = &e.body {
            let rng = &mut self.rng;
            match *direction {
                Some("inbound") => self
                    .closes_by_port
                    .get(Listener {
                        netns: c.netns,
                        port: c.sport,
                    })
                    .observe(&e.body, rng),
                _ => self.closes_by_remote.get(remote).observe(&e.body, rng),
            }
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
        }
    }
}

/// Human tables for a report, one line each (after the event's own line).
pub(crate) fn human(out: &mut String, r: &Report) {
    fn activity(a: &Activity) -> String {
        let resets: u64 = a.resets.values().flat_map(|m| m.values()).sum();
        let closes: Vec<String> = a
            .closes_by_cause
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        format!(
            "probes {:>5}  acks {:>5}  timeouts {:>4}  resets {:>4}  closes {}",
            a.keepalive_probes,
            a.keepalive_acks,
            a.keepalive_timeouts,
            resets,
            if closes.is_empty() {
                "-".to_owned()
            } else {
                closes.join(", ")
            }
        )
    }
    fn closes(c: &CloseStats) -> String {
        let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} ms"));
        let b = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} B"));
        format!(
            "closes {:>5}  median life {:>9}  median bytes {:>9}  closed here {:>3.0}%  TIME_WAIT here {} / peer {}",
            c.count,
            ms(c.median_lifetime_ms),
            b(c.median_bytes),
            c.closed_locally * 100.0,
            c.time_wait_local,
            c.time_wait_remote
        )
    }
    let endpoint = |r: &Remote| {
        let host = match r.daddr {
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        };
        if r.dport == 0 {
            format!("{host}:*")
        } else {
            format!("{host}:{}", r.dport)
        }
    };
    let more = |out: &mut String, n: u64| {
        if n > 0 {
            let _ = writeln!(out, "    ... and {n} more");
        }
    };
    if !r.by_remote.top.is_empty() {
        let _ = writeln!(out, "  by remote endpoint:");
        for row in &r.by_remote.top {
            let _ = writeln!(
                out,
                "    {:<45} {}",
                endpoint(&row.key),
                activity(&row.value)
            );
        }
        more(out, r.by_remote.more_groups);
    }
    if !r.by_owner.top.is_empty() {
        let _ = writeln!(out, "  by owner:");
        for row in &r.by_owner.top {
            let who = format!(
                "{} (pid {}) {}",
                row.key.comm,
                row.key.pid,
                row.key.cgroup.as_deref().unwrap_or("")
            );
            let _ = writeln!(out, "    {who:<45} {}", activity(&row.value));
        }
        more(out, r.by_owner.more_groups);
    }
    if !r.closes_by_listening_port.top.is_empty() {
        let _ = writeln!(out, "  closes by listening port:");
        for row in &r.closes_by_listening_port.top {
            let port = format!("port {} [netns {}]", row.key.port, row.key.netns);
            let _ = writeln!(out, "    {port:<45} {}", closes(&row.value));
        }
        more(out, r.closes_by_listening_port.more_groups);
    }
    if !r.closes_by_remote.top.is_empty() {
        let _ = writeln!(out, "  closes by remote endpoint:");
        for row in &r.closes_by_remote.top {
            let _ = writeln!(out, "    {:<45} {}", endpoint(&row.key), closes(&row.value));
        }
        more(out, r.closes_by_remote.more_groups);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Endpoints, Family, Timestamp};

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
