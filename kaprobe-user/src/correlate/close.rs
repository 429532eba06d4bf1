//! A connection's end: why (the cause, as the kernel decided it), who closed first and
//! holds TIME_WAIT, and the `connection_closed` event with the FINs the kernel aggregated.
use std::sync::Arc;

use kaprobe_common::{CloseInfo, close_flag, tcp_state};

use super::{Conn, Correlator, ETIMEDOUT, IdleClose, Pending};
use crate::{
    LastFew,
    diagnose::{self, Death},
    event::{Body, Cause, Diagnosis, Event, Side, errno_name, state_name},
    host::diag::ConnKey,
};

/// Diagnoses made recently, shared: most closes tell one of a few stories in the same words
/// (under churn, an orderly close from either side), and their events then share one
/// diagnosis instead of allocating each its own.
#[derive(Default)]
pub(super) struct RecentDiagnoses(LastFew<Arc<Diagnosis>>);

impl RecentDiagnoses {
    pub(super) fn share(&mut self, d: Diagnosis) -> Arc<Diagnosis> {
        if let Some(same) = self.0.find(|k| **k == d) {
            return same.clone();
        }
        let d = Arc::new(d);
        self.0.keep(d.clone());
        d
    }
}

struct Outcome {
    cause: Cause,
    closed_by: Side,
    time_wait: bool,
}

impl Correlator {
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
    /// an answer to outstanding probes seen only now, a held `reset_received`, and
    /// `connection_closed` with its diagnosis. An idle close of a connection that is not
    /// otherwise reported is only remembered (for the diagnosis of what comes after it).
    pub(super) fn finish(&mut self, p: Pending, forced: Option<Cause>, out: &mut Vec<Event>) {
        if !self.existing.is_empty() {
            self.existing.remove(&ConnKey::of_tuple(&p.tuple));
        }
        let outcome = Self::classify(&p.info, p.conn.as_deref(), forced);
        if let Some(idle) = self.idle_close(&p, &outcome) {
            let reported = p.info.flags & (close_flag::TRACKED | close_flag::KEEPOPEN) != 0
                || outcome.cause != Cause::Fin;
            // (The summaries take a reported close from its event.)
            self.memory.idle_close(idle, !reported);
            if !reported {
                return;
            }
        }
        let acks = self.late_ack(&p, &outcome, out);
        self.aggregated_fins(&p, out);
        let Pending {
            ts_ns,
            tuple,
            info,
            conn,
            owner,
            counted,
            held_reset,
            abort_on_data,
            socket_cgroup,
        } = p;
        if let Some(e) = held_reset {
            out.push(*e); // a real RST after all (no RST of this side's followed)
        }
        let clock = self.settings.clock;
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
        let probes = conn.as_ref().map_or(0, |c| c.probes);
        let death = self.death(
            &info,
            conn.as_deref(),
            &outcome,
            (ts_ns, counted, error, abort_on_data),
            (probes, acks),
            &tuple,
        );
        let diagnosis = self
            .diagnoses
            .share(diagnose::closed(&death, &self.diagnose_settings()));
        let socket_cgroup = match owner {
            None => self.owners.cgroup_path(socket_cgroup),
            Some(_) => None,
        };
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
                diagnosis,
                socket_cgroup,
            },
        ));
    }

    /// The close is an idle close by this side (the kernel measured the idle time before
    /// its FIN and found it long enough): what is remembered of it.
    fn idle_close(&self, p: &Pending, outcome: &Outcome) -> Option<IdleClose> {
        let info = &p.info;
        if info.flags & close_flag::IDLE_CLOSE == 0 || outcome.closed_by != Side::Local {
            return None;
        }
        let fin_ns = if info.fin_sent_ns != 0 {
            info.fin_sent_ns
        } else {
            p.conn.as_ref().map_or(p.ts_ns, |c| c.fin_sent_ns)
        };
        Some(IdleClose {
            tuple: p.tuple,
            fin_ns,
            idle_ms: self.settings.clock.jiffies_to_ms(info.fin_idle),
            inbound: info.flags & close_flag::INBOUND != 0,
            owner: p.owner.clone(),
        })
    }

    /// An answer to probes outstanding, seen only at an orderly close (the peer's ACK
    /// reset `icsk_probes_out`): reported before the close. Returns the connection's acks.
    fn late_ack(&self, p: &Pending, outcome: &Outcome, out: &mut Vec<Event>) -> u32 {
        let Some(c) = &p.conn else {
            return 0;
        };
        if c.unanswered > 0 && p.info.probes_out == 0 && outcome.cause == Cause::Fin {
            let clock = self.settings.clock;
            let idle_ms = clock.jiffies_to_ms(p.info.jiffies.wrapping_sub(p.info.rcv_tstamp));
            out.push(
                self.event(
                    p.ts_ns
                        .saturating_sub(idle_ms * 1_000_000)
                        .max(c.last_probe_ns),
                    Some(&p.tuple),
                    &p.owner,
                    Body::KeepaliveAck {
                        probes_unanswered: c.unanswered,
                    },
                ),
            );
            return c.acks + 1;
        }
        c.acks
    }

    /// FINs aggregated in the kernel for sockets whose FINs were not sent live, in time
    /// order (the FIN sent first when both have the same time).
    fn aggregated_fins(&self, p: &Pending, out: &mut Vec<Event>) {
        let info = &p.info;
        let live_sent = p.conn.as_ref().is_some_and(|c| c.fin_sent_ns != 0);
        let live_recv = p.conn.as_ref().is_some_and(|c| c.fin_recv_ns != 0);
        let mut fins: [Option<(u64, Body)>; 2] = [None, None];
        let sent_first = info.fin_sent_ns != 0
            && (info.fin_recv_ns == 0 || info.fin_sent_ns <= info.fin_recv_ns);
        // (The FIN time of an idle close of a connection not otherwise reported is kept for
        // its diagnosis only: such connections' FINs are not events.)
        let idle_close_only =
            info.flags & close_flag::IDLE_CLOSE != 0 && info.flags & close_flag::TRACKED == 0;
        if info.fin_sent_ns != 0 && !live_sent && !idle_close_only {
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
        if let [Some((sent, _)), Some((recv, _))] = &fins {
            if recv < sent {
                fins.swap(0, 1);
            }
        }
        for (t, body) in fins.into_iter().flatten() {
            out.push(self.event(t, Some(&p.tuple), &p.owner, body));
        }
    }

    /// What the diagnosis rests on. `end` is (time, counted, error, abort_on_data),
    /// `keepalive` (probes, acks).
    fn death(
        &mut self,
        info: &CloseInfo,
        conn: Option<&Conn>,
        outcome: &Outcome,
        end: (u64, bool, i32, bool),
        keepalive: (u32, u32),
        tuple: &kaprobe_common::Tuple,
    ) -> Death {
        let (ts_ns, counted, error, abort_on_data) = end;
        let clock = self.settings.clock;
        // Times from the kernel's jiffies stamps at close (only a close the kernel saw).
        let since =
            |stamp: u32| counted.then(|| clock.jiffies_to_ms(info.jiffies.wrapping_sub(stamp)));
        let fin_sent_ns = info.fin_sent_ns.max(conn.map_or(0, |c| c.fin_sent_ns));
        let fin_recv = info.fin_recv_ns != 0
            || conn.is_some_and(|c| c.fin_recv_ns != 0)
            || matches!(
                info.old_state,
                tcp_state::CLOSE_WAIT | tcp_state::LAST_ACK | tcp_state::CLOSING
            );
        let reset_reason = if abort_on_data {
            Some("tcp_abort_on_data".to_owned())
        } else {
            (info.flags & close_flag::RST_SENT != 0 || conn.is_some_and(|c| c.rst_sent.is_some()))
                .then(|| {
                    self.reason_name(conn.and_then(|c| c.rst_sent).unwrap_or(info.reset_reason))
                })
        };
        let keepopen = info.flags & close_flag::KEEPOPEN != 0;
        let synchronized = !matches!(
            info.old_state,
            0 | tcp_state::SYN_SENT | tcp_state::SYN_RECV
        );
        Death {
            cause: Some(outcome.cause),
            closed_locally: outcome.closed_by == Side::Local,
            last_state: info.old_state,
            error,
            reset_reason,
            peer_fin: fin_recv,
            probe_outstanding: conn.is_some_and(|c| c.rst_answered_probe)
                || (keepopen && info.probes_out > 0 && info.unacked == 0),
            unacked: info.unacked,
            since_heard_ms: since(info.rcv_tstamp).filter(|_| synchronized),
            since_sent_ms: since(info.lsndtime).filter(|_| synchronized),
            since_first_retransmit_ms: (counted && info.retrans_stamp != 0)
                .then(|| u64::from(info.mstamp_ms.wrapping_sub(info.retrans_stamp))),
            since_received_ms: since(info.lrcvtime).filter(|_| synchronized),
            fin_idle_ms: (info.flags & close_flag::FIN_IDLE != 0)
                .then(|| clock.jiffies_to_ms(info.fin_idle)),
            since_fin_sent_ms: (fin_sent_ns != 0)
                .then(|| ts_ns.saturating_sub(fin_sent_ns) / 1_000_000),
            keepalive_probes: keepalive.0,
            keepalive_acks: keepalive.1,
            keepalive_idle_ms: conn.and_then(|c| c.keepalive_idle_ms),
            last_probe_idle_ms: conn.and_then(|c| c.last_probe_idle_ms),
            bytes_received: counted.then_some(info.bytes_received),
            other_end: if outcome.cause == Cause::ResetReceived {
                self.memory.other_end(tuple, ts_ns)
            } else {
                None
            },
        }
    }
}
