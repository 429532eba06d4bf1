//! What the agent learns of the connections that were open before it started: their owners
//! (looked up once at start-up, [`crate::host::existing`]), forgotten once those
//! connections are gone.
use std::{sync::mpsc, time::Duration};

use super::{EXISTING_RECHECK, agent::Agent};
use crate::host::existing::{self, Existing};

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
}
