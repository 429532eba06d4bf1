//! What the agent learns of the connections that were open before it started: their owners
//! (looked up once at start-up, [`crate::host::existing`]), forgotten once those
//! connections are gone.
use std::{sync::mpsc, time::Duration};

use super::{EXISTING_RECHECK, OWNERLESS_RESCAN, agent::Agent};
use crate::host::existing::{self, Existing};

/// The longest wait between two fruitless look-ups of owners: 2^6 x OWNERLESS_RESCAN.
const OWNERLESS_MAX_BACKOFF: u32 = 64;
/// How often at most the agent checks whether a followed connection lacks an owner.
const OWNERLESS_CHECK_NS: u64 = 1_000_000_000;
/// A look-up of owners walks every socket and process of the host (on a thread): the next
/// one waits at least this many times as long as the last took, so that on a host where
/// that is slow the look-ups take at most ~2 % of a CPU, however many connections keep
/// coming without an owner.
const OWNERLESS_SPACING: u64 = 50;

/// How long after a look-up of owners the next may run: [`OWNERLESS_RESCAN`] times the
/// backoff, and at least [`OWNERLESS_SPACING`] times what the last one took.
fn lookup_interval_ns(backoff: u32, took_ns: u64) -> u64 {
    let rescan = OWNERLESS_RESCAN.as_nanos() as u64 * u64::from(backoff.max(1));
    rescan.max(took_ns.saturating_mul(OWNERLESS_SPACING))
}

impl Agent {
    /// Takes the start-up look-up's answer if it comes within `wait`.
    pub(super) fn poll_existing(&mut self, wait: Duration) {
        let Some(rx) = &self.existing_lookup else {
            return;
        };
        match rx.recv_timeout(wait) {
            Ok(found) => self.learn_existing(found),
            Err(mpsc::RecvTimeoutError::Timeout) => return,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                log::warn!("owners of what was open before kaprobe started: the look-up failed");
            }
        }
        self.existing_lookup = None;
    }

    /// Takes what [`existing::scan`] found (and says it).
    fn learn_existing(&mut self, found: Existing) {
        if let Some(why) = found.skipped {
            log::info!("owners of what was open before kaprobe started: not looked up: {why}");
            return;
        }
        log::info!(
            "owners of what was open before kaprobe started: {} connection(s), {} listener(s) ({} seeded in the kernel), in {} network namespace(s), {} ms",
            found.conns.len(),
            found.listeners.len(),
            found.listeners_seeded,
            found.namespaces,
            found.took.as_millis()
        );
        let missing = existing::missing_caps();
        if (found.unreadable > 0 || found.unowned > 0) && !missing.is_empty() {
            log::warn!(
                "owners of what was open before kaprobe started: not found for {} socket(s), {} network namespace(s) not read; missing {}",
                found.unowned,
                found.unreadable,
                missing.join(", ")
            );
        }
        self.pipe.correlator.set_existing(found.conns);
    }

    /// Every [`EXISTING_RECHECK`], while owners of connections older than the agent are kept:
    /// forgets those whose connection ended without a reported close (an orderly close of a
    /// connection without keepalive, in the default mode), so that a later connection with
    /// the same addresses is not given that owner.
    /// (The check runs on a thread of its own; its answer is taken on a later tick.)
    pub(super) fn forget_ended_existing(&mut self, now_mono: u64) {
        if let Some(rx) = &self.existing_check {
            match rx.try_recv() {
                Ok(open) => {
                    log::debug!(
                        "owners of connections older than the agent: {} still open",
                        open.len()
                    );
                    self.pipe.correlator.retain_existing(&open);
                    self.existing_check = None;
                }
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => self.existing_check = None,
            }
        }
        if now_mono.saturating_sub(self.existing_checked_ns) < EXISTING_RECHECK.as_nanos() as u64 {
            return;
        }
        self.existing_checked_ns = now_mono;
        let keys = self.pipe.correlator.existing_keys();
        if !keys.is_empty() {
            self.existing_check = existing::spawn_still_open(keys);
        }
    }

    /// While the correlator follows connections whose owner it does not know (a keepalive
    /// connection whose start was shed by `--birth-budget`, or not recorded with `--lean`:
    /// typically one that turned keepalive on after connect()), looks up the processes
    /// holding them as the start-up look-up does (on a thread; the answer is taken on a
    /// later tick): within a second of seeing one, then every [`OWNERLESS_RESCAN`] at most,
    /// and less often where a look-up is slow ([`lookup_interval_ns`]).
    /// Their later events, and their close, then name the owner. Nothing is looked up while
    /// every followed connection has one.
    pub(super) fn find_ownerless(&mut self, now_mono: u64) {
        if let Some(rx) = &self.ownerless_scan {
            match rx.try_recv() {
                Ok(found) => {
                    let filled = self.pipe.correlator.fill_owners(&found.conns);
                    log::debug!(
                        "owners of followed connections without one: {filled} found in {} ms",
                        found.took.as_millis()
                    );
                    // A look-up that finds nothing (processes this agent may not see) is
                    // tried again less and less often, up to every OWNERLESS_MAX_BACKOFF.
                    self.ownerless_backoff = if filled == 0 {
                        (self.ownerless_backoff * 2).min(OWNERLESS_MAX_BACKOFF)
                    } else {
                        1
                    };
                    self.ownerless_took_ns = found.took.as_nanos() as u64;
                    self.ownerless_scan = None;
                }
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => self.ownerless_scan = None,
            }
        }
        // Whether any followed connection lacks an owner: a walk over the table, once a
        // second at most (so a new one is looked up within a second of being seen, unless
        // a look-up ran less than OWNERLESS_RESCAN x backoff ago).
        if now_mono.saturating_sub(self.ownerless_checked_ns) < OWNERLESS_CHECK_NS {
            return;
        }
        self.ownerless_checked_ns = now_mono;
        let interval = lookup_interval_ns(self.ownerless_backoff, self.ownerless_took_ns);
        if self.ownerless_scanned_ns != 0
            && now_mono.saturating_sub(self.ownerless_scanned_ns) < interval
        {
            return;
        }
        let wanted = self.pipe.correlator.ownerless();
        if wanted.is_empty() {
            return;
        }
        self.ownerless_scanned_ns = now_mono;
        self.ownerless_scan = Some(existing::spawn(None, Some(wanted)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_ups_are_spaced_by_their_cost() {
        let rescan = OWNERLESS_RESCAN.as_nanos() as u64;
        // Fast look-ups (a quiet host: 7-10 ms): every OWNERLESS_RESCAN, times the backoff.
        assert_eq!(lookup_interval_ns(1, 10_000_000), rescan);
        assert_eq!(lookup_interval_ns(4, 10_000_000), 4 * rescan);
        assert_eq!(lookup_interval_ns(0, 0), rescan);
        // A look-up of 1 s (a host with hundreds of thousands of sockets): 50 s apart.
        assert_eq!(lookup_interval_ns(1, 1_000_000_000), 50_000_000_000);
        // The backoff still wins when longer.
        assert_eq!(
            lookup_interval_ns(OWNERLESS_MAX_BACKOFF, 1_000_000_000),
            u64::from(OWNERLESS_MAX_BACKOFF) * rescan
        );
        assert_eq!(lookup_interval_ns(1, u64::MAX), u64::MAX);
    }
}
