//! Per-connection state machine: turns kernel records into the events of the log, and
//! decides why each connection died.
//!
//! Connections are keyed by socket address. A socket address is reused only after the
//! socket is freed, and every socket reaches `TCP_CLOSE` (which ends its entry here) before
//! that; a record whose addresses do not match the entry's is treated as a new connection
//! all the same, so a missed close can never merge two connections.
//!
//! The classification follows the kernel (see ../shared/notes/kernel-keepalive-ground-truth.md).
//! One module per group of hooks, as in kaprobe-ebpf: [`timer`] (keepalive timer firings),
//! [`state`] (FINs, closes, destruction), [`reset`] (RSTs and socket errors); [`close`] makes
//! the `connection_closed` event of every end.
mod close;
mod memory;
mod reset;
mod state;
mod timer;

use std::collections::{HashMap, HashSet, VecDeque};

use kaprobe_common::{CloseInfo, REASON_UNKNOWN, Tuple};

pub(crate) use memory::IdleClose;
use timer::Dying;

use crate::{
    FastMap,
    bpf::decode::RawEvent,
    event::{Body, Endpoints, Event, Owner, Timestamp},
    host::{diag::ConnKey, existing, owner::Owners},
};

const ETIMEDOUT: i32 = 110;

/// Most `reset_received` events held for their close at once (see `Pending::held_reset`).
const MAX_HELD_RESETS: usize = 1024;

/// How long a graceful-looking close waits for an RST that the kernel sends *after*
/// `TCP_CLOSE` (close() with unread data, SO_LINGER 0, disconnect), before it is reported.
pub(crate) const CLOSE_GRACE_NS: u64 = 20_000_000;

/// Converts kernel time to wall time and jiffies to milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, ns.
    pub realtime_offset_ns: i128,
    pub hz: u32,
}

impl Clock {
    pub(crate) fn wall(&self, mono_ns: u64) -> Timestamp {
        Timestamp((mono_ns as i128 + self.realtime_offset_ns).max(0) as u64)
    }

    pub(crate) fn jiffies_to_ms(&self, jiffies: u32) -> u64 {
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
    /// `--nat-timeout`, ms: the idle time after which middleboxes may forget a connection.
    pub nat_timeout_ms: u64,
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
    /// A keepalive probe was outstanding when the RST came.
    rst_answered_probe: bool,
    /// Reason of an RST this side sent while the socket was still open.
    rst_sent: Option<u32>,
    error: i32,
    owner: Option<Owner>,
    /// The keepalive idle time of its timer, and how long the peer had been silent at the
    /// last probe (for the diagnosis).
    keepalive_idle_ms: Option<u64>,
    last_probe_idle_ms: Option<u64>,
}

impl Conn {
    /// Takes the owner a record names (`raw`, interned as `named`: the kernel's is
    /// authoritative), keeping the one learned before when the record has none; returns
    /// the connection's owner.
    fn learn_owner(&mut self, raw: &kaprobe_common::Owner, named: Option<Owner>) -> Option<Owner> {
        self.owner = owner_named(raw, named, self.owner.take());
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

/// The owner a record names (`raw`, interned as `named`), else `known`; `known` itself
/// when the record names the same owner.
fn owner_named(
    raw: &kaprobe_common::Owner,
    named: Option<Owner>,
    known: Option<Owner>,
) -> Option<Owner> {
    match known {
        Some(o) if raw.tgid == 0 || o.is_from_kernel(raw) => Some(o),
        _ => named,
    }
}

/// The socket's cgroup id a record carries when it names no process (see
/// [`kaprobe_common::Owner`]), else 0.
fn socket_cgroup_of(raw: &kaprobe_common::Owner) -> u64 {
    if raw.tgid == 0 { raw.cgroup_id } else { 0 }
}

/// A close waiting [`CLOSE_GRACE_NS`] for a trailing RST.
#[derive(Debug, Clone)]
struct Pending {
    ts_ns: u64,
    tuple: Tuple,
    info: CloseInfo,
    conn: Option<Box<Conn>>,
    owner: Option<Owner>,
    /// `info` came from the kernel at `TCP_CLOSE` (its byte and segment counts are real).
    counted: bool,
    /// A `reset_received` held back with the close: in FIN_WAIT1/2 the kernel runs its RST
    /// path for data that came after this side shut down (`tcp_abort_on_data`, no RST
    /// received), and the RST it then sends tells the two apart.
    held_reset: Option<Box<Event>>,
    /// ... and it told: data came after this side shut down.
    abort_on_data: bool,
    /// The socket's cgroup id as the kernel read it at the close when it knew no owner (0:
    /// none), for `socket_cgroup`.
    socket_cgroup: u64,
}

/// Counters kept by the correlator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CorrelatorStats {
    pub(crate) evicted: u64,
    pub(crate) replaced: u64,
    /// Keepalive timeouts found after the fact (the socket gone, its firing never traced).
    pub(crate) unseen_deaths: u64,
    /// Records of a connection whose end had been inferred, that came after all (late, not
    /// lost): dropped, so that the end is not reported twice.
    pub(crate) late_after_inference: u64,
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
    /// What is remembered of ended connections for later diagnoses.
    memory: memory::Memory,
    /// `reset_received` events of sockets in FIN_WAIT1/2, held until their close (see
    /// [`Pending::held_reset`]), by socket.
    held_resets: FastMap<u64, Box<Event>>,
    /// The owners records name, interned, with their cgroup paths.
    owners: Owners,
    diagnoses: close::RecentDiagnoses,
    pub(crate) stats: CorrelatorStats,
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
            memory: memory::Memory::default(),
            held_resets: FastMap::default(),
            owners: Owners::default(),
            diagnoses: Default::default(),
            stats: Default::default(),
        }
    }

    /// Owners of the connections open before the agent started ([`crate::host::existing::scan`]).
    /// Connections followed already (the look-up came late) get theirs now.
    pub(crate) fn set_existing(&mut self, conns: existing::Conns) {
        self.existing = conns;
        for c in self.conns.values_mut().filter(|c| c.owner.is_none()) {
            c.owner = existing::owner_of(&self.existing, &c.tuple);
        }
    }

    /// The followed connections without an owner.
    pub(crate) fn ownerless(&self) -> HashSet<ConnKey> {
        self.conns
            .values()
            .filter(|c| c.owner.is_none())
            .map(|c| ConnKey::of_tuple(&c.tuple))
            .collect()
    }

    /// Gives followed connections without an owner the one a look-up of the host's sockets
    /// found for them; returns how many got one.
    pub(crate) fn fill_owners(&mut self, found: &existing::Conns) -> usize {
        let mut filled = 0;
        for c in self.conns.values_mut().filter(|c| c.owner.is_none()) {
            c.owner = existing::owner_of(found, &c.tuple);
            filled += usize::from(c.owner.is_some());
        }
        filled
    }

    /// The connections open before the agent started whose owner is still kept.
    pub(crate) fn existing_keys(&self) -> Vec<(ConnKey, u32)> {
        self.existing
            .iter()
            .map(|(k, (_, inode))| (*k, *inode))
            .collect()
    }

    /// Forgets the owners of those that ended unreported (not in `open`).
    pub(crate) fn retain_existing(&mut self, open: &HashSet<(ConnKey, u32)>) {
        self.existing
            .retain(|k, (_, inode)| open.contains(&(*k, *inode)));
    }

    /// Connections currently followed (for metrics and tests).
    pub(crate) fn tracked(&self) -> usize {
        self.conns.len() + self.pending.len()
    }

    /// Feeds one kernel record; appends the resulting events to `out`.
    pub(crate) fn handle(&mut self, raw: &RawEvent, out: &mut Vec<Event>) {
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
        }
    }

    /// Reports closes whose grace period is over at kernel time `now_ns`.
    pub(crate) fn tick(&mut self, now_ns: u64, out: &mut Vec<Event>) {
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
        self.memory.expire(now_ns);
    }

    /// This side's idle closes since the last call (for the summaries' keep-alive picture).
    pub(crate) fn take_idle_closes(&mut self) -> Vec<memory::IdleClose> {
        self.memory.take_idle_closes()
    }

    fn hold(&mut self, sk: u64, p: Pending) {
        self.due.push_back((p.ts_ns, sk));
        self.pending.insert(sk, p);
    }

    /// Reports every close still waiting (at exit).
    pub(crate) fn flush(&mut self, out: &mut Vec<Event>) {
        // In time order. The keys are sorted, not the closes (large records): sorting 10k
        // of these took 60 M instructions (callgrind), ~6k each.
        let mut order: Vec<(u64, u64)> =
            self.pending.iter().map(|(&sk, p)| (p.ts_ns, sk)).collect();
        order.sort_unstable();
        self.due.clear();
        for (_, sk) in order {
            if let Some(p) = self.pending.remove(&sk) {
                self.finish(p, None, out);
            }
        }
    }

    fn event(&self, ts_ns: u64, tuple: Option<&Tuple>, owner: &Option<Owner>, body: Body) -> Event {
        conn_event(&self.settings.clock, ts_ns, tuple, owner, body)
    }

    /// The owner a record names, else the one learned earlier for the connection (which
    /// learns it).
    fn owner(&mut self, sk: u64, tuple: &Tuple, raw: &kaprobe_common::Owner) -> Option<Owner> {
        let named = self.owners.named(raw);
        match self.known(sk, tuple) {
            Some(c) => c.learn_owner(raw, named),
            None => owner_named(raw, named, existing::owner_of(&self.existing, tuple)),
        }
    }

    /// Fills an owner's cgroup path if it was not known when the owner was named.
    pub(crate) fn resolve_owner(&mut self, owner: &mut Owner) {
        self.owners.resolve(owner);
    }

    /// What the diagnosis rules need of the settings.
    fn diagnose_settings(&self) -> crate::diagnose::Settings {
        crate::diagnose::Settings {
            nat_timeout_ms: self.settings.nat_timeout_ms,
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
}

#[cfg(test)]
mod tests;
