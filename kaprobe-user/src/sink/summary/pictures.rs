//! The keep-alive picture of local server ports and of paths to remote endpoints, from the
//! diagnoses and this side's idle closes.
use std::collections::BTreeMap;

use super::tables::Samples;
use crate::event::{
    diagnosis::{Diagnosis, Verdict},
    summary::{PathPicture, ServerPicture, Spread},
};

/// What a summary keeps of a local server port.
#[derive(Debug, Clone, Default)]
pub(super) struct Server {
    verdicts: BTreeMap<&'static str, u64>,
    idle: Samples,
    idle_min: Option<u64>,
    idle_max: u64,
    time_wait_here: u64,
}

impl Server {
    /// A diagnosis of the port's (an orderly close after an idle time counts as an idle
    /// close).
    pub(super) fn diagnosis(&mut self, d: &Diagnosis, rng: &mut u64) {
        *self.verdicts.entry(d.verdict.as_str()).or_default() += 1;
        if d.verdict == Verdict::Orderly {
            if let Some(ms) = d.evidence.idle_before_close_ms {
                self.idle_sample(ms, rng);
            }
        }
    }

    /// This side closed one of the port's connections after `idle_ms` without data (a close
    /// not reported: it held TIME_WAIT then).
    pub(super) fn idle_close(&mut self, idle_ms: u64, rng: &mut u64) {
        self.idle_sample(idle_ms, rng);
        self.time_wait_here += 1;
    }

    fn idle_sample(&mut self, idle_ms: u64, rng: &mut u64) {
        self.idle.add(idle_ms, rng);
        self.idle_min = Some(self.idle_min.map_or(idle_ms, |m| m.min(idle_ms)));
        self.idle_max = self.idle_max.max(idle_ms);
    }

    /// A reported close after which this side held TIME_WAIT.
    pub(super) fn time_wait(&mut self) {
        self.time_wait_here += 1;
    }

    pub(super) fn weight(&self) -> u64 {
        self.verdicts.values().sum::<u64>() + self.idle.seen()
    }

    pub(super) fn picture(&self) -> ServerPicture {
        ServerPicture {
            clients_raced: self
                .verdicts
                .get(Verdict::KeepaliveRace.as_str())
                .copied()
                .unwrap_or(0),
            verdicts: self.verdicts.clone(),
            idle_closes: self.idle.seen(),
            idle_before_close: self.idle.median().map(|median_ms| Spread {
                min_ms: self.idle_min.unwrap_or(median_ms),
                median_ms,
                max_ms: self.idle_max,
            }),
            time_wait_here: self.time_wait_here,
        }
    }
}

/// What a summary keeps of a path to a remote endpoint.
#[derive(Debug, Clone, Default)]
pub(super) struct Path {
    verdicts: BTreeMap<&'static str, u64>,
    survived: Option<u64>,
    died: Option<u64>,
}

impl Path {
    pub(super) fn diagnosis(&mut self, d: &Diagnosis) {
        *self.verdicts.entry(d.verdict.as_str()).or_default() += 1;
        let after_silence = matches!(
            d.verdict,
            Verdict::MiddleboxIdleTimeout | Verdict::PeerRestarted | Verdict::PeerUnreachable
        );
        if let Some(ms) = d.evidence.silence_ms.filter(|_| after_silence) {
            self.died = Some(self.died.map_or(ms, |m| m.min(ms)));
        }
        if let Some(ms) = d.evidence.idle_before_close_ms {
            self.survived(ms);
        }
    }

    /// A connection on the path was still usable after `ms` of silence.
    pub(super) fn survived(&mut self, ms: u64) {
        self.survived = Some(self.survived.map_or(ms, |m| m.max(ms)));
    }

    pub(super) fn weight(&self) -> u64 {
        self.verdicts.values().sum::<u64>() + u64::from(self.survived.is_some())
    }

    pub(super) fn picture(&self) -> PathPicture {
        PathPicture {
            verdicts: self.verdicts.clone(),
            longest_silence_survived_ms: self.survived,
            shortest_silence_died_ms: self.died,
            idle_timeout_between_ms: match (self.survived, self.died) {
                (Some(s), Some(d)) if s < d => Some((s, d)),
                _ => None,
            },
        }
    }
}
