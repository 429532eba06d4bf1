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
    /// `(RST time, ends)` in arrival order, for expiry.
    other_order: VecDeque<(u64, Ends)>,
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
    /// Constant time: the oldest are forgotten first, when too old or when the memory is
    /// full (a flood of RSTs: confirmation is a nicety, memory is bounded). (It once swept
    /// the whole map on every RST while full: under a flood, 13 % of the agent's time.)
    pub(crate) fn reset_sent(&mut self, tuple: &Tuple, kind: OtherEnd, ts_ns: u64) {
        while let Some(&(at, ends)) = self.other_order.front() {
            let stale = ts_ns.saturating_sub(at) >= OTHER_END_NS;
            if !stale && self.other_order.len() < MAX_OTHER_ENDS {
                break;
            }
            self.other_order.pop_front();
            // Only if the entry is still this one (not replaced by a later RST, or taken).
            if self.other_ends.get(&ends).is_some_and(|(_, t)| *t == at) {
                self.other_ends.remove(&ends);
            }
        }
        let ends = Ends::mirrored(tuple);
        self.other_ends.insert(ends, (kind, ts_ns));
        self.other_order.push_back((ts_ns, ends));
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

#[cfg(test)]
mod tests {
    use kaprobe_common::AF_INET;

    use super::*;

    /// Connection `port` as this side names it, and as the other end does.
    fn ends(port: u16) -> (Tuple, Tuple) {
        let mut a = Tuple {
            sport: port,
            dport: 9000,
            family: AF_INET,
            ..Tuple::default()
        };
        a.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        a.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let mut b = a;
        (b.saddr, b.daddr, b.sport, b.dport) = (a.daddr, a.saddr, a.dport, a.sport);
        (a, b)
    }

    #[test]
    fn a_flood_of_resets_keeps_the_newest_within_bounds() {
        let mut m = Memory::default();
        // 3 x the bound within one second: the memory stays bounded, the newest are kept.
        let n = 3 * MAX_OTHER_ENDS as u64;
        for i in 0..n {
            let (_, other) = ends(i as u16 + 1);
            m.reset_sent(&other, OtherEnd::NoSocketReset, 1_000 + i);
        }
        assert!(m.other_ends.len() <= MAX_OTHER_ENDS);
        assert!(m.other_order.len() <= MAX_OTHER_ENDS);
        let (newest, _) = ends(n as u16);
        assert_eq!(
            m.other_end(&newest, 1_000 + n),
            Some(OtherEnd::NoSocketReset)
        );
        let (oldest, _) = ends(1);
        assert_eq!(m.other_end(&oldest, 1_000 + n), None);
    }

    #[test]
    fn a_reset_is_forgotten_once_too_old_and_a_newer_one_replaces_it() {
        let mut m = Memory::default();
        let (mine, other) = ends(7);
        m.reset_sent(&other, OtherEnd::TimewaitReset, 0);
        // The same connection's RST again, later: the newer one counts.
        m.reset_sent(&other, OtherEnd::AbortOnData, OTHER_END_NS);
        // Another RST after that: the first queue entry goes, not the newer RST.
        let (_, third) = ends(8);
        m.reset_sent(&third, OtherEnd::NoSocketReset, OTHER_END_NS + 1);
        assert_eq!(
            m.other_end(&mine, OTHER_END_NS + 2),
            Some(OtherEnd::AbortOnData)
        );
        // Too old by the time the other end closes.
        let (third_mine, _) = ends(8);
        assert_eq!(m.other_end(&third_mine, 3 * OTHER_END_NS + 2), None);
    }
}
