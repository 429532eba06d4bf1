//! What the correlator remembers of connections after they end, for the diagnosis of what
//! comes later: this side's idle closes (a peer that then reuses the connection is the
//! keep-alive race), and the RSTs this host sent without a connection (where both ends are
//! on this host, the other end's close then finds the RST that confirms its story).
use std::collections::VecDeque;

use kaprobe_common::Tuple;

use crate::{FastMap, diagnose::OtherEnd, event::Owner, host::diag::ConnKey};

/// How long an idle close is remembered: longer than TIME_WAIT (60 s) and a default
/// `tcp_fin_timeout` (60 s) together, so that an RST with no socket left still finds it.
const IDLE_CLOSE_MEMORY_NS: u64 = 300_000_000_000;
/// At most this many idle closes are remembered (the oldest go first).
const MAX_IDLE_CLOSES: usize = 65_536;
/// How long an RST sent on this host may precede the other end's close, on this host too
/// (the same softirq chain: microseconds; a loaded host: milliseconds).
const OTHER_END_NS: u64 = 2_000_000_000;
/// At most this many such RSTs are remembered.
const MAX_OTHER_ENDS: usize = 4096;

/// An idle close by this side: when its FIN went out and after how long without data.
#[derive(Debug, Clone)]
pub(crate) struct IdleClose {
    pub(crate) tuple: Tuple,
    pub(crate) fin_ns: u64,
    pub(crate) idle_ms: u64,
    /// Accepted from a listener (the local port is the listener's).
    pub(crate) inbound: bool,
    pub(crate) owner: Option<Owner>,
}

/// Both ends' addresses and ports, without the namespace (the two ends of a connection on
/// one host are usually in two namespaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Ends {
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
}

impl Ends {
    fn of(t: &Tuple) -> Ends {
        Ends {
            saddr: t.saddr,
            daddr: t.daddr,
            sport: t.sport,
            dport: t.dport,
        }
    }

    /// As the other end names the same connection.
    fn mirrored(t: &Tuple) -> Ends {
        Ends {
            saddr: t.daddr,
            daddr: t.saddr,
            sport: t.dport,
            dport: t.sport,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Memory {
    idle_closes: FastMap<ConnKey, IdleClose>,
    /// `(FIN time, key)` in arrival order, for expiry.
    idle_order: VecDeque<(u64, ConnKey)>,
    other_ends: FastMap<Ends, (OtherEnd, u64)>,
    /// Idle closes not yet taken by the summaries ([`Memory::take_idle_closes`]).
    fresh: Vec<IdleClose>,
}

impl Memory {
    /// This side closed `c.tuple` after an idle time; `unreported`: no event says so (the
    /// summaries take it from [`Memory::take_idle_closes`]).
    pub(crate) fn idle_close(&mut self, c: IdleClose, unreported: bool) {
        let key = ConnKey::of_tuple(&c.tuple);
        self.idle_order.push_back((c.fin_ns, key));
        if unreported && self.fresh.len() < MAX_IDLE_CLOSES {
            self.fresh.push(c.clone());
        }
        self.idle_closes.insert(key, c);
        while self.idle_order.len() > MAX_IDLE_CLOSES {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((at, key)) = self.idle_order.pop_front() {
            if self.idle_closes.get(&key).is_some_and(|c| c.fin_ns == at) {
                self.idle_closes.remove(&key);
            }
        }
    }

    /// The idle close of the connection `tuple` names (this side's view), if remembered.
    pub(crate) fn idle_close_of(&self, tuple: &Tuple) -> Option<&IdleClose> {
        if self.idle_closes.is_empty() {
            return None;
        }
        self.idle_closes.get(&ConnKey::of_tuple(tuple))
    }

    /// The idle closes since the last call (for the summaries).
    pub(crate) fn take_idle_closes(&mut self) -> Vec<IdleClose> {
        std::mem::take(&mut self.fresh)
    }

    /// This host sent an RST of kind `kind` on `tuple` (its own view) at `ts_ns`.
    pub(crate) fn reset_sent(&mut self, tuple: &Tuple, kind: OtherEnd, ts_ns: u64) {
        if self.other_ends.len() >= MAX_OTHER_ENDS {
            self.other_ends
                .retain(|_, (_, at)| ts_ns.saturating_sub(*at) < OTHER_END_NS);
            if self.other_ends.len() >= MAX_OTHER_ENDS {
                return; // a flood of RSTs: confirmation is a nicety, memory is bounded
            }
        }
        self.other_ends.insert(Ends::mirrored(tuple), (kind, ts_ns));
    }

    /// The RST the other end of `tuple` (this side's view) sent around `ts_ns`, if it is on
    /// this host and was seen.
    pub(crate) fn other_end(&mut self, tuple: &Tuple, ts_ns: u64) -> Option<OtherEnd> {
        if self.other_ends.is_empty() {
            return None;
        }
        let (kind, at) = self.other_ends.remove(&Ends::of(tuple))?;
        (ts_ns.abs_diff(at) < OTHER_END_NS).then_some(kind)
    }

    /// Forgets what is too old at `now_ns`.
    pub(crate) fn expire(&mut self, now_ns: u64) {
        while self
            .idle_order
            .front()
            .is_some_and(|(at, _)| now_ns.saturating_sub(*at) > IDLE_CLOSE_MEMORY_NS)
        {
            self.forget_oldest();
        }
    }
}
