//! Per-connection state machine: turns kernel records into the events of the log, and
//! decides why each connection died.
//!
//! Connections are keyed by socket address. A socket address is reused only after the
//! socket is freed, and every socket reaches `TCP_CLOSE` (which ends its entry here) before
//! that; a record whose addresses do not match the entry's is treated as a new connection
//! all the same, so a missed close can never merge two connections.
//!
//! The classification follows the kernel (see ../shared/notes/kernel-keepalive-ground-truth.md):
//! - a keepalive timeout is a death *inside* `tcp_keepalive_timer` of a socket with
//!   `SO_KEEPALIVE` (not an orphaned FIN_WAIT2 socket, which uses the same timer);
//! - a probe was sent exactly when `icsk_probes_out` grew by one across a firing (a busy
//!   socket's 50 ms re-arm, local congestion, data in flight or a not-yet-idle socket send
//!   nothing and are not probes);
//! - an answer is seen as `icsk_probes_out` back to 0 (any ACK from the peer resets it);
//! - an RST answering a probe ends the connection at once (`reset_received`);
//! - ETIMEDOUT outside the keepalive timer is a retransmission timeout.
use std::collections::{HashMap, HashSet, VecDeque};

use kaprobe_common::{
    CloseInfo, CloseRecord, ErrorRecord, Header, REASON_UNKNOWN, ResetRecvRecord, ResetSentRecord,
    StateRecord, TimerRecord, Tuple, close_flag, tcp_state, timer_flag,
};

use crate::{
    FastMap,
    bpf::decode::RawEvent,
    event::{Body, Cause, Endpoints, Event, Owner, Side, Timestamp, errno_name, state_name},
    host::{diag::ConnKey, existing},
};

const ETIMEDOUT: i32 = 110;

/// How long a graceful-looking close waits for an RST that the kernel sends *after*
/// `TCP_CLOSE` (close() with unread data, SO_LINGER 0, disconnect), before it is reported.
pub const CLOSE_GRACE_NS: u64 = 20_000_000;

/// Converts kernel time to wall time and jiffies to milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, ns.
    pub realtime_offset_ns: i128,
    pub hz: u32,
}

impl Clock {
    pub fn wall(&self, mono_ns: u64) -> Timestamp {
        Timestamp((mono_ns as i128 + self.realtime_offset_ns).max(0) as u64)
    }

    pub fn jiffies_to_ms(&self, jiffies: u32) -> u64 {
        jiffies as u64 * 1000 / self.hz.max(1) as u64
    }
}

/// What the correlator needs to know about the kernel.
#[derive(Debug, Clone)]
pub struct Settings {
    pub clock: Clock,
    /// `enum sk_rst_reason` value → name (empty when the kernel has no reasons).
    pub reset_reasons: HashMap<u32, String>,
    /// Most connections followed at once; beyond it the least recently active are dropped
    /// (and counted).
    pub max_connections: usize,
    /// CLOCK_MONOTONIC ns from which the programs are known to be attached: a probe sent
    /// earlier predates the agent and is not reported when a firing finds it outstanding.
    pub traced_since_ns: u64,
}

/// What the agent follows of one connection.
#[derive(Debug, Clone, Default)]
struct Conn {
    tuple: Tuple,
    last_seen_ns: u64,
    /// When the last probe went out (an answer is never reported before it).
    last_probe_ns: u64,
    /// Keepalive probes sent and not (yet) answered, as of the last record.
    unanswered: u8,
    probes: u32,
    acks: u32,
    fin_sent_ns: u64,
    fin_recv_ns: u64,
    rst_recv: bool,
    /// Reason of an RST this side sent while the socket was still open.
    rst_sent: Option<u32>,
    error: i32,
    owner: Option<Owner>,
}

/// A followed connection with every keepalive probe out: its timer's next firing ends it.
#[derive(Debug, Clone)]
struct Dying {
    tuple: Tuple,
    /// When that firing is due (CLOCK_MONOTONIC ns).
    due_ns: u64,
    max_probes: u8,
    /// How long the peer will have been silent by then.
    idle_ms: u64,
}

/// A followed connection whose keepalive timer should have ended it by now, with no record
/// of it: the firing may have been one the kernel never traced (see `on_timer`). The agent
/// asks the kernel (sock_diag) whether the socket still exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overdue {
    pub sk: u64,
    pub tuple: Tuple,
    /// When its keepalive timer was due (CLOCK_MONOTONIC ns).
    pub due_ns: u64,
    max_probes: u8,
    idle_ms: u64,
}

/// How long after its due time a keepalive timer that should end its connection may still
/// come (softirq delays, a slow vCPU, records from other CPUs) before it is suspected unseen.
const OVERDUE_GRACE_NS: u64 = 2_000_000_000;

/// How long the records of a connection whose end was inferred are still dropped (they
/// come within milliseconds if they come at all; a connection on the same socket with the
/// same four addresses within a minute is not expected).
const INFERRED_MEMORY_NS: u64 = 60_000_000_000;

impl Conn {
    /// Takes the owner a record names (the kernel's is authoritative), keeping the one
    /// learned before when the record has none; returns the connection's owner.
    fn learn_owner(&mut self, raw: &kaprobe_common::Owner) -> Option<Owner> {
        self.owner = owner_named(raw, self.owner.take());
        self.owner.clone()
    }
}

fn conn_event(
    clock: &Clock,
    ts_ns: u64,
    tuple: Option<&Tuple>,
    owner: &Option<Owner>,
    body: Body,
) -> Event {
    Event {
        ts: clock.wall(ts_ns),
        conn: tuple.map(Endpoints::from_tuple),
        owner: owner.clone(),
        body,
    }
}

/// The owner a record names, else `known`; `known` itself when the record names the same
/// owner (no new texts).
fn owner_named(raw: &kaprobe_common::Owner, known: Option<Owner>) -> Option<Owner> {
    match known {
        Some(o) if raw.tgid == 0 || o.is_from_kernel(raw) => Some(o),
        _ => Owner::from_kernel(raw),
    }
}

/// A close waiting [`CLOSE_GRACE_NS`] for a trailing RST.
#[derive(Debug, Clone)]
struct Pending {
    ts_ns: u64,
    tuple: Tuple,
    info: CloseInfo,
    conn: Option<Conn>,
    owner: Option<Owner>,
    /// `info` came from the kernel at `TCP_CLOSE` (its byte and segment counts are real).
    counted: bool,
}

/// Counters kept by the correlator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorrelatorStats {
    pub evicted: u64,
    pub replaced: u64,
    /// Keepalive timeouts found after the fact (the socket gone, its firing never traced).
    pub unseen_deaths: u64,
    /// Records of a connection whose end had been inferred, that came after all (late, not
    /// lost): dropped, so that the end is not reported twice.
    pub late_after_inference: u64,
}

pub struct Correlator {
    settings: Settings,
    conns: FastMap<u64, Conn>,
    pending: FastMap<u64, Pending>,
    /// `(close time, socket)` of pending closes, in arrival order (records come in time
    /// order, per CPU). Entries whose close was reported meanwhile are skipped lazily.
    due: VecDeque<(u64, u64)>,
    /// Followed connections whose next keepalive firing ends them, by socket (few: the
    /// agent's tick checks only these, not every connection). An entry whose connection
    /// ended meanwhile is dropped when it comes due.
    dying: FastMap<u64, Dying>,
    /// Connections whose end was inferred ([`Correlator::unseen_death`]), by socket: their
    /// tuple and when. A record of one that still comes (late, not lost) is dropped; kept
    /// [`INFERRED_MEMORY_NS`].
    inferred_ends: FastMap<u64, (Tuple, u64)>,
    /// When the kernel last counted keepalive timer records that ended a connection as
    /// lost (ring buffer full): an overdue connection may be one of them, already counted.
    deaths_lost_ns: u64,
    /// Owners of the connections that were open when the agent started (see
    /// [`crate::host::existing`]): named when a record has none. An entry goes when its
    /// connection's close is reported (its addresses may be used again).
    existing: existing::Conns,
    pub stats: CorrelatorStats,
}

struct Outcome {
    cause: Cause,
    closed_by: Side,
    time_wait: bool,
}

impl Correlator {
    pub fn new(settings: Settings) -> Self {
        Correlator {
            settings,
            conns: FastMap::default(),
            pending: FastMap::default(),
            due: VecDeque::new(),
            dying: FastMap::default(),
            inferred_ends: FastMap::default(),
            deaths_lost_ns: 0,
            existing: HashMap::new(),
            stats: Default::default(),
        }
    }

    /// Owners of the connections open before the agent started ([`crate::host::existing::scan`]).
    /// Connections followed already (the look-up came late) get theirs now.
    pub fn set_existing(&mut self, conns: existing::Conns) {
        self.existing = conns;
        for c in self.conns.values_mut().filter(|c| c.owner.is_none()) {
            c.owner = existing::owner_of(&self.existing, &c.tuple);
        }
    }

    /// The connections open before the agent started whose owner is still kept.
    pub fn existing_keys(&self) -> Vec<(ConnKey, u32)> {
        self.existing
            .iter()
            .map(|(k, (_, inode))| (*k, *inode))
            .collect()
    }

    /// Forgets the owners of those that ended unreported (not in `open`).
    pub fn retain_existing(&mut self, open: &HashSet<(ConnKey, u32)>) {
        self.existing
            .retain(|k, (_, inode)| open.contains(&(*k, *inode)));
    }

    /// Connections currently followed (for metrics and tests).
    pub fn tracked(&self) -> usize {
        self.conns.len() + self.pending.len()
    }

    /// Feeds one kernel record; appends the resulting events to `out`.
    pub fn handle(&mut self, raw: &RawEvent, out: &mut Vec<Event>) {
        // Closes whose grace period ended before this record are reported first, so the
        // log stays close to time order.
        self.tick(raw.header().ts_ns, out);
        if !self.inferred_ends.is_empty() && self.after_inferred_end(raw) {
            self.stats.late_after_inference += 1;
            return;
        }
        match raw {
            RawEvent::Timer(r) => self.on_timer(r, out),
            RawEvent::State(r) => self.on_state(r, out),
            RawEvent::Close(r) => self.on_close(r, out),
            RawEvent::ResetSent(r) => self.on_reset_sent(r, out),
            RawEvent::ResetRecv(r) => self.on_reset_recv(r, out),
            RawEvent::Error(r) => self.on_error(r),
            RawEvent::Destroy(h) => self.on_destroy(h, out),
        }
    }

    /// Reports closes whose grace period is over at kernel time `now_ns`.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Event>) {
        // Records from different CPUs may arrive slightly out of time order; a close is
        // never reported early, at worst a little late.
        while let Some(&(ts, sk)) = self.due.front() {
            if now_ns.saturating_sub(ts) < CLOSE_GRACE_NS {
                break;
            }
            self.due.pop_front();
            if self.pending.get(&sk).is_some_and(|p| p.ts_ns == ts) {
                if let Some(p) = self.pending.remove(&sk) {
                    self.finish(p, None, out);
                }
            }
        }
    }

    /// Followed connections whose fatal keepalive firing is overdue by `OVERDUE_GRACE_NS`
    /// at `now_ns` (each is returned once: check it, then call [`Correlator::unseen_death`]).
    pub fn overdue(&mut self, now_ns: u64) -> Vec<Overdue> {
        self.inferred_ends
            .retain(|_, (_, at)| now_ns <= at.saturating_add(INFERRED_MEMORY_NS));
        let mut found = Vec::new();
        let lost = self.deaths_lost_ns;
        let conns = &self.conns;
        self.dying.retain(|&sk, d| {
            if now_ns <= d.due_ns.saturating_add(OVERDUE_GRACE_NS) {
                return true;
            }
            let followed = conns.get(&sk).is_some_and(|c| c.tuple == d.tuple);
            // Its end may be one of the records the ring buffer lost, which are counted and
            // reported as lost: not inferred a second time.
            let maybe_lost = lost != 0 && lost.saturating_add(OVERDUE_GRACE_NS) >= d.due_ns;
            if followed && !maybe_lost {
                found.push(Overdue {
                    sk,
                    tuple: d.tuple,
                    due_ns: d.due_ns,
                    max_probes: d.max_probes,
                    idle_ms: d.idle_ms,
                });
            }
            false
        });
        found
    }

    /// Is `raw` a record of a connection whose end was already inferred? A record of
    /// another connection on the same socket (address reused) forgets the inference; the
    /// socket's destruction ends it.
    fn after_inferred_end(&mut self, raw: &RawEvent) -> bool {
        let sk = raw.header().sk;
        let Some((tuple, _)) = self.inferred_ends.get(&sk) else {
            return false;
        };
        match raw.tuple() {
            Some(t) if t == tuple => true,
            Some(_) => {
                self.inferred_ends.remove(&sk);
                false
            }
            None => {
                self.inferred_ends.remove(&sk);
                true
            }
        }
    }

    /// The kernel counted lost records of keepalive firings that ended connections, up to
    /// `now_ns`.
    pub fn note_lost_deaths(&mut self, now_ns: u64) {
        self.deaths_lost_ns = now_ns;
    }

    /// The kernel no longer has the socket of an overdue connection: its keepalive timer
    /// ended it in a firing no tracepoint saw. Reports the timeout (inferred, at the time it
    /// was due) and the close.
    pub fn unseen_death(&mut self, o: &Overdue, out: &mut Vec<Event>) {
        let due_ns = o.due_ns;
        let Some(conn) = self.conns.remove(&o.sk).filter(|c| c.tuple == o.tuple) else {
            return;
        };
        let owner = conn.owner.clone();
        self.stats.unseen_deaths += 1;
        self.inferred_ends.insert(o.sk, (o.tuple, due_ns));
        out.push(self.event(
            due_ns,
            Some(&o.tuple),
            &owner,
            Body::KeepaliveTimeout {
                probes: conn.unanswered,
                max_probes: o.max_probes,
                idle_ms: o.idle_ms,
                error: errno_name(ETIMEDOUT),
                user_timeout_ms: None,
                inferred: true,
            },
        ));
        let info = CloseInfo {
            old_state: tcp_state::ESTABLISHED,
            sk_err: ETIMEDOUT,
            probes_out: conn.unanswered,
            reset_reason: REASON_UNKNOWN,
            ..CloseInfo::default()
        };
        self.finish(
            Pending {
                ts_ns: due_ns,
                tuple: o.tuple,
                info,
                conn: Some(conn),
                owner,
                counted: false,
            },
            Some(Cause::KeepaliveTimeout),
            out,
        );
    }

    fn hold(&mut self, sk: u64, p: Pending) {
        self.due.push_back((p.ts_ns, sk));
        self.pending.insert(sk, p);
    }

    /// Reports every close still waiting (at exit).
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        let mut rest: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        rest.sort_by_key(|p| p.ts_ns);
        self.due.clear();
        for p in rest {
            self.finish(p, None, out);
        }
    }

    fn event(&self, ts_ns: u64, tuple: Option<&Tuple>, owner: &Option<Owner>, body: Body) -> Event {
        conn_event(&self.settings.clock, ts_ns, tuple, owner, body)
    }

    /// The owner a record names, else the one learned earlier for the connection (which
    /// learns it).
    fn owner(&mut self, sk: u64, tuple: &Tuple, raw: &kaprobe_common::Owner) -> Option<Owner> {
        match self.known(sk, tuple) {
            Some(c) => c.learn_owner(raw),
            None => owner_named(raw, existing::owner_of(&self.existing, tuple)),
        }
    }

    fn reason_name(&self, reason: u32) -> String {
        if reason == REASON_UNKNOWN {
            return "unknown".into();
        }
        self.settings
            .reset_reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("reason_{reason}"))
    }

    /// The entry of `sk`, created (or replaced, if `sk` now carries other addresses).
    fn conn(&mut self, sk: u64, tuple: &Tuple, ts_ns: u64) -> &mut Conn {
        if self.conns.len() >= self.settings.max_connections && !self.conns.contains_key(&sk) {
            self.evict();
        }
        let existing = &self.existing;
        let fresh = || Conn {
            tuple: *tuple,
            owner: existing::owner_of(existing, tuple),
            ..Conn::default()
        };
        let c = self.conns.entry(sk).or_insert_with(fresh);
        if c.tuple != *tuple {
            *c = fresh();
            self.stats.replaced += 1;
        }
        c.last_seen_ns = ts_ns;
        c
    }

    /// Drops the least recently active eighth of the table (amortised O(1) per insert).
    fn evict(&mut self) {
        let mut ages: Vec<(u64, u64)> = self
            .conns
            .iter()
            .map(|(&sk, c)| (c.last_seen_ns, sk))
            .collect();
        let n = (ages.len() / 8).max(1);
        ages.select_nth_unstable(n - 1);
        for &(_, sk) in &ages[..n] {
            self.conns.remove(&sk);
        }
        self.stats.evicted += n as u64;
    }

    /// The entry of `sk` if it exists for these addresses.
    fn known(&mut self, sk: u64, tuple: &Tuple) -> Option<&mut Conn> {
        self.conns.get_mut(&sk).filter(|c| c.tuple == *tuple)
    }

    fn on_timer(&mut self, r: &TimerRecord, out: &mut Vec<Event>) {
        let ts = r.header.ts_ns;
        log::debug!(
            "keepalive timer sk={:#x} cpu={} port={} state={}->{} probes_out={}->{} rcv_tstamp={} lrcvtime={} jiffies={} expires={} intvl={} flags={:#x}",
            r.header.sk,
            r.header.cpu,
            r.tuple.sport,
            r.state_before,
            r.state_after,
            r.probes_before,
            r.probes_after,
            r.rcv_tstamp,
            r.lrcvtime,
            r.jiffies,
            r.expires_after,
            r.keepalive_intvl,
            r.flags
        );
        let clock = self.settings.clock;
        let now_j = r.jiffies as u32;
        let idle_j = now_j
            .wrapping_sub(r.rcv_tstamp)
            .min(now_j.wrapping_sub(r.lrcvtime));
        let idle_ms = clock.jiffies_to_ms(idle_j);
        let interval_ms = clock.jiffies_to_ms(r.keepalive_intvl);
        let by_rearm = self.probe_by_rearm(r);
        let traced_since = self.settings.traced_since_ns;
        let conn = self.conn(r.header.sk, &r.tuple, ts);
        let owner = conn.learn_owner(&r.owner);
        if r.probes_before == 0 && conn.unanswered > 0 {
            // The peer was heard (icsk_probes_out went back to 0) at rcv_tstamp.
            let heard_ns = ts
                .saturating_sub(idle_ms * 1_000_000)
                .max(conn.last_probe_ns);
            out.push(conn_event(
                &clock,
                heard_ns,
                Some(&r.tuple),
                &owner,
                Body::KeepaliveAck {
                    probes_unanswered: conn.unanswered,
                },
            ));
            conn.acks += 1;
            conn.unanswered = 0;
        } else if r.probes_before > conn.unanswered {
            // Probes went out since the last firing seen for this socket, without a firing of
            // their own: before tracing started (not ours to report), or in firings the kernel
            // ran without reaching the timer_expire_entry tracepoint. Measured on 6.18: in
            // about one burst of 300 keepalive timers in 30, up to a third of a burst's
            // firings never reach the tracepoint (a bpftrace counter misses them too,
            // kaprobe not loaded), while icsk_probes_out and TcpExtTCPKeepAlive count their
            // probes. Each such probe sent after tracing started is reported, marked
            // inferred, one interval before the next.
            let interval_ns = interval_ms * 1_000_000;
            for probe in conn.unanswered + 1..=r.probes_before {
                let back = u64::from(r.probes_before - probe + 1) * interval_ns;
                let sent_ns = ts.saturating_sub(back);
                if sent_ns < traced_since || sent_ns <= conn.last_probe_ns {
                    continue;
                }
                conn.probes += 1;
                conn.last_probe_ns = sent_ns;
                out.push(conn_event(
                    &clock,
                    sent_ns,
                    Some(&r.tuple),
                    &owner,
                    Body::KeepaliveProbe {
                        probe,
                        max_probes: r.keepalive_probes,
                        idle_ms: idle_ms.saturating_sub(back / 1_000_000),
                        interval_ms,
                        inferred: true,
                    },
                ));
            }
            conn.unanswered = r.probes_before;
        }
        let died = r.flags & timer_flag::DIED != 0;
        let keepopen = r.flags & timer_flag::KEEPOPEN != 0;
        let fin_wait2_orphan =
            r.state_before == tcp_state::FIN_WAIT2 && r.flags & timer_flag::ORPHAN != 0;
        let probe_sent = !died && (r.probes_after == r.probes_before.wrapping_add(1) || by_rearm);
        if probe_sent {
            conn.probes += 1;
            conn.last_probe_ns = ts;
            conn.unanswered = r.probes_before.wrapping_add(1);
            out.push(conn_event(
                &clock,
                ts,
                Some(&r.tuple),
                &owner,
                Body::KeepaliveProbe {
                    probe: r.probes_before.wrapping_add(1),
                    max_probes: r.keepalive_probes,
                    idle_ms,
                    interval_ms,
                    inferred: false,
                },
            ));
        }
        if !died {
            let ends_next = keepopen
                && !fin_wait2_orphan
                && r.state_after == tcp_state::ESTABLISHED
                && r.keepalive_probes > 0
                && conn.unanswered >= r.keepalive_probes;
            if ends_next {
                let rearm_ms = clock.jiffies_to_ms((r.expires_after as u32).wrapping_sub(now_j));
                let d = Dying {
                    tuple: r.tuple,
                    due_ns: ts + rearm_ms * 1_000_000,
                    max_probes: r.keepalive_probes,
                    idle_ms: idle_ms + rearm_ms,
                };
                self.dying.insert(r.header.sk, d);
            } else {
                self.dying.remove(&r.header.sk);
            }
            return;
        }
        self.dying.remove(&r.header.sk);
        let mut info = r.close;
        let error = if r.flags & timer_flag::ERROR_REPORTED != 0 {
            r.error
        } else {
            info.sk_err
        };
        if info.sk_err == 0 {
            info.sk_err = error;
        }
        let keepalive_kill = keepopen && !fin_wait2_orphan;
        if keepalive_kill {
            out.push(self.event(
                ts,
                Some(&r.tuple),
                &owner,
                Body::KeepaliveTimeout {
                    probes: r.probes_before,
                    max_probes: r.keepalive_probes,
                    idle_ms,
                    error: errno_name(error),
                    user_timeout_ms: (r.user_timeout_ms != 0).then_some(r.user_timeout_ms),
                    inferred: false,
                },
            ));
        }
        if r.flags & timer_flag::RST_SENT != 0 {
            info.flags |= close_flag::RST_SENT;
            info.reset_reason = r.reset_reason;
            out.push(self.event(
                ts,
                Some(&r.tuple),
                &owner,
                Body::ResetSent {
                    reason: self.reason_name(r.reset_reason),
                    state: Some(state_name(r.state_before)),
                },
            ));
        }
        let conn = self.conns.remove(&r.header.sk);
        let forced = keepalive_kill.then_some(Cause::KeepaliveTimeout);
        self.finish(
            Pending {
                ts_ns: ts,
                tuple: r.tuple,
                info,
                conn,
                owner,
                counted: true,
            },
            forced,
            out,
        );
    }

    /// Did the firing send a probe, judging by what the kernel did rather than by
    /// `icsk_probes_out` (which the peer's ACK may reset before the exit hook reads it: the
    /// timer releases the socket first)? The firing took the probe branch (idle, nothing in
    /// flight) and re-armed the timer for exactly the keepalive interval, as
    /// tcp_keepalive_timer() does after a probe, or for TCP_RESOURCE_PROBE_INTERVAL (HZ/2)
    /// after a probe that local congestion held back (counted by the kernel all the same).
    /// A busy socket is re-armed for HZ/20, an idle-not-long-enough one for the rest of its
    /// idle time, which was ruled out at entry.
    fn probe_by_rearm(&self, r: &TimerRecord) -> bool {
        if r.flags & timer_flag::PROBE_BRANCH == 0 {
            return false;
        }
        let rearm = (r.expires_after as u32).wrapping_sub(r.jiffies as u32);
        let congested = self.settings.clock.hz / 2;
        [r.keepalive_intvl, congested]
            .iter()
            .any(|&d| rearm == d || rearm == d + 1)
    }

    fn on_state(&mut self, r: &StateRecord, out: &mut Vec<Event>) {
        let ts = r.header.ts_ns;
        let conn = self.conn(r.header.sk, &r.tuple, ts);
        let owner = conn.learn_owner(&r.owner);
        let body = match r.new_state {
            tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK => {
                conn.fin_sent_ns = ts;
                Body::FinSent {
                    state: state_name(r.new_state),
                }
            }
            tcp_state::CLOSE_WAIT | tcp_state::CLOSING => {
                conn.fin_recv_ns = ts;
                Body::FinReceived {
                    state: state_name(r.new_state),
                }
            }
            _ => return,
        };
        out.push(self.event(ts, Some(&r.tuple), &owner, body));
    }

    fn on_close(&mut self, r: &CloseRecord, out: &mut Vec<Event>) {
        let sk = r.header.sk;
        log::debug!(
            "close sk={sk:#x} cpu={} port={} old_state={} sk_err={} flags={:#x} probes_out={}",
            r.header.cpu,
            r.tuple.sport,
            r.close.old_state,
            r.close.sk_err,
            r.close.flags,
            r.close.probes_out
        );
        // A close already waiting for this socket (should not happen): report it first.
        if let Some(p) = self.pending.remove(&sk) {
            self.finish(p, None, out);
        }
        let conn = self.conns.remove(&sk).filter(|c| c.tuple == r.tuple);
        let known = conn.as_ref().and_then(|c| c.owner.clone());
        let owner = owner_named(
            &r.owner,
            known.or_else(|| existing::owner_of(&self.existing, &r.tuple)),
        );
        let p = Pending {
            ts_ns: r.header.ts_ns,
            tuple: r.tuple,
            info: r.close,
            conn,
            owner,
            counted: true,
        };
        let failed = r.close.sk_err != 0
            || r.close.flags & (close_flag::RST_SENT | close_flag::RST_RECV) != 0
            || p.conn
                .as_ref()
                .is_some_and(|c| c.rst_recv || c.rst_sent.is_some());
        let rst_may_follow = matches!(
            r.close.old_state,
            tcp_state::ESTABLISHED
                | tcp_state::CLOSE_WAIT
                | tcp_state::FIN_WAIT1
                | tcp_state::FIN_WAIT2
                | tcp_state::SYN_RECV
                | tcp_state::CLOSING
                | tcp_state::LAST_ACK
        );
        if !failed && rst_may_follow {
            self.hold(sk, p);
        } else {
            self.finish(p, None, out);
        }
    }

    fn on_reset_sent(&mut self, r: &ResetSentRecord, out: &mut Vec<Event>) {
        let sk = r.header.sk;
        let ts = r.header.ts_ns;
        let owner = if r.no_socket != 0 {
            None
        } else {
            self.owner(sk, &r.tuple, &r.owner)
                .or_else(|| self.pending.get(&sk).and_then(|p| p.owner.clone()))
        };
        let state = (r.no_socket == 0).then(|| state_name(r.state));
        out.push(self.event(
            ts,
            Some(&r.tuple),
            &owner,
            Body::ResetSent {
                reason: self.reason_name(r.reason),
                state,
            },
        ));
        if r.no_socket != 0 {
            return;
        }
        if r.state != tcp_state::CLOSE {
            if let Some(c) = self.known(sk, &r.tuple) {
                c.rst_sent = Some(r.reason);
            }
            return;
        }
        // The kernel closed the socket, then reset the peer (close() with unread data,
        // SO_LINGER 0, disconnect()).
        let mut p = match self.pending.remove(&sk) {
            Some(p) => p,
            None => Pending {
                ts_ns: ts,
                tuple: r.tuple,
                info: CloseInfo {
                    reset_reason: REASON_UNKNOWN,
                    ..CloseInfo::default()
                },
                conn: self.conns.remove(&sk).filter(|c| c.tuple == r.tuple),
                owner: owner.clone(),
                counted: false,
            },
        };
        if p.owner.is_none() {
            p.owner = owner;
        }
        p.info.flags |= close_flag::RST_SENT;
        p.info.reset_reason = r.reason;
        self.finish(p, None, out);
    }

    fn on_reset_recv(&mut self, r: &ResetRecvRecord, out: &mut Vec<Event>) {
        let owner = self.owner(r.header.sk, &r.tuple, &r.owner);
        let kernel_says = r.probes_out > 0 && r.keepopen != 0 && r.packets_out == 0;
        let mut during = kernel_says;
        if let Some(c) = self.known(r.header.sk, &r.tuple) {
            during |= c.unanswered > 0;
            c.rst_recv = true;
        }
        out.push(self.event(
            r.header.ts_ns,
            Some(&r.tuple),
            &owner,
            Body::ResetReceived {
                during_keepalive: during,
                state: state_name(r.state),
            },
        ));
    }

    fn on_error(&mut self, r: &ErrorRecord) {
        let sk = r.header.sk;
        if let Some(p) = self.pending.get_mut(&sk) {
            if p.info.sk_err == 0 {
                p.info.sk_err = r.error;
            }
        } else if let Some(c) = self.known(sk, &r.tuple) {
            c.error = r.error;
        }
    }

    fn on_destroy(&mut self, h: &Header, out: &mut Vec<Event>) {
        // The socket is gone: no RST can follow its close any more.
        if let Some(p) = self.pending.remove(&h.sk) {
            self.finish(p, None, out);
        }
        self.conns.remove(&h.sk);
    }

    fn classify(info: &CloseInfo, conn: Option<&Conn>, forced: Option<Cause>) -> Outcome {
        let local = |cause| Outcome {
            cause,
            closed_by: Side::Local,
            time_wait: false,
        };
        if let Some(cause) = forced {
            return local(cause);
        }
        let rst_recv = info.flags & close_flag::RST_RECV != 0 || conn.is_some_and(|c| c.rst_recv);
        let rst_sent =
            info.flags & close_flag::RST_SENT != 0 || conn.is_some_and(|c| c.rst_sent.is_some());
        let handshake = matches!(info.old_state, tcp_state::SYN_SENT | tcp_state::SYN_RECV);
        if rst_recv {
            return Outcome {
                cause: Cause::ResetReceived,
                closed_by: Side::Remote,
                time_wait: false,
            };
        }
        // ETIMEDOUT, or a soft error (ICMP unreachable) recorded during retransmissions:
        // tcp_write_err() reports sk_err_soft instead of ETIMEDOUT when there is one.
        // Hard ICMP errors kill a socket only during the handshake.
        if info.sk_err == ETIMEDOUT || (info.sk_err != 0 && !rst_sent && !handshake) {
            return local(Cause::RetransmitTimeout);
        }
        if rst_sent {
            return local(Cause::ResetSent);
        }
        let fin_sent = info.fin_sent_ns.max(conn.map_or(0, |c| c.fin_sent_ns));
        let fin_recv = info.fin_recv_ns.max(conn.map_or(0, |c| c.fin_recv_ns));
        let fin_state = matches!(
            info.old_state,
            tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING | tcp_state::LAST_ACK
        );
        if fin_sent == 0 && fin_recv == 0 && !fin_state {
            return local(Cause::Other);
        }
        let closed_by = match (fin_sent, fin_recv) {
            (s, r) if s != 0 && r != 0 => {
                if s <= r {
                    Side::Local
                } else {
                    Side::Remote
                }
            }
            (_, r) if r != 0 => Side::Remote,
            (s, _) if s != 0 => Side::Local,
            _ if info.old_state == tcp_state::LAST_ACK => Side::Remote,
            _ => Side::Local,
        };
        // The side that sends the first FIN ends in TIME_WAIT (or the FIN_WAIT2 timewait
        // substate of an orphan): its full socket leaves from FIN_WAIT1/2 or CLOSING.
        let time_wait = closed_by == Side::Local
            && matches!(
                info.old_state,
                tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING
            );
        Outcome {
            cause: Cause::Fin,
            closed_by,
            time_wait,
        }
    }

    /// Reports a connection's end: the FINs the kernel aggregated (if not reported live),
    /// an answer to outstanding probes seen only now, and `connection_closed`.
    fn finish(&mut self, p: Pending, forced: Option<Cause>, out: &mut Vec<Event>) {
        let Pending {
            ts_ns,
            tuple,
            info,
            conn,
            owner,
            counted,
        } = p;
        if !self.existing.is_empty() {
            self.existing.remove(&ConnKey::of_tuple(&tuple));
        }
        let clock = self.settings.clock;
        let outcome = Self::classify(&info, conn.as_ref(), forced);
        let (mut probes, mut acks) = (0, 0);
        if let Some(c) = &conn {
            probes = c.probes;
            acks = c.acks;
            if c.unanswered > 0 && info.probes_out == 0 && outcome.cause == Cause::Fin {
                let idle_ms = clock.jiffies_to_ms(info.jiffies.wrapping_sub(info.rcv_tstamp));
                out.push(
                    self.event(
                        ts_ns
                            .saturating_sub(idle_ms * 1_000_000)
                            .max(c.last_probe_ns),
                        Some(&tuple),
                        &owner,
                        Body::KeepaliveAck {
                            probes_unanswered: c.unanswered,
                        },
                    ),
                );
                acks += 1;
            }
        }
        // FINs aggregated in the kernel for sockets whose FINs were not sent live.
        let live_sent = conn.as_ref().is_some_and(|c| c.fin_sent_ns != 0);
        let live_recv = conn.as_ref().is_some_and(|c| c.fin_recv_ns != 0);
        let mut fins: [Option<(u64, Body)>; 2] = [None, None];
        let sent_first = info.fin_sent_ns != 0
            && (info.fin_recv_ns == 0 || info.fin_sent_ns <= info.fin_recv_ns);
        if info.fin_sent_ns != 0 && !live_sent {
            let state = if sent_first {
                tcp_state::FIN_WAIT1
            } else {
                tcp_state::LAST_ACK
            };
            fins[0] = Some((
                info.fin_sent_ns,
                Body::FinSent {
                    state: state_name(state),
                },
            ));
        }
        if info.fin_recv_ns != 0 && !live_recv {
            let state = if sent_first {
                tcp_state::CLOSING
            } else {
                tcp_state::CLOSE_WAIT
            };
            fins[1] = Some((
                info.fin_recv_ns,
                Body::FinReceived {
                    state: state_name(state),
                },
            ));
        }
        // In time order (the FIN sent first when both have the same time).
        if let [Some((sent, _)), Some((recv, _))] = &fins {
            if recv < sent {
                fins.swap(0, 1);
            }
        }
        for (t, body) in fins.into_iter().flatten() {
            out.push(self.event(t, Some(&tuple), &owner, body));
        }
        let error = if info.sk_err != 0 {
            info.sk_err
        } else {
            conn.as_ref().map_or(0, |c| c.error)
        };
        let lifetime_ms =
            (info.birth_ns != 0).then(|| ts_ns.saturating_sub(info.birth_ns) / 1_000_000);
        let synchronized = !matches!(
            info.old_state,
            0 | tcp_state::SYN_SENT | tcp_state::SYN_RECV
        );
        let idle_ms = (counted && synchronized)
            .then(|| clock.jiffies_to_ms(info.jiffies.wrapping_sub(info.rcv_tstamp)));
        out.push(self.event(
            ts_ns,
            Some(&tuple),
            &owner,
            Body::ConnectionClosed {
                cause: outcome.cause,
                error: errno_name(error),
                closed_by: outcome.closed_by,
                time_wait: outcome.time_wait,
                lifetime_ms,
                idle_ms,
                keepalive_probes: probes,
                keepalive_acks: acks,
                last_state: (info.old_state != 0).then(|| state_name(info.old_state)),
                direction: if info.flags & close_flag::OUTBOUND != 0 {
                    Some("outbound")
                } else if info.flags & close_flag::INBOUND != 0 {
                    Some("inbound")
                } else {
                    None
                },
                bytes_sent: counted.then_some(info.bytes_sent),
                bytes_received: counted.then_some(info.bytes_received),
                segments: counted.then_some(info.segs_out as u64 + info.segs_in as u64),
                segments_sent: counted.then_some(info.segs_out),
                segments_received: counted.then_some(info.segs_in),
            },
        ));
    }
}

#[cfg(test)]
mod tests;
