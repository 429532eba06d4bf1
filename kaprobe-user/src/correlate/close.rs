//! A connection's end: why (the cause, as the kernel decided it), who closed first and
//! holds TIME_WAIT, and the `connection_closed` event with the FINs the kernel aggregated.
use kaprobe_common::{CloseInfo, close_flag, tcp_state};

use super::{Conn, Correlator, ETIMEDOUT, Pending};
use crate::{
    event::{Body, Cause, Event, Side, errno_name, state_name},
    host::diag::ConnKey,
};

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
    /// an answer to outstanding probes seen only now, and `connection_closed`.
    pub(super) fn finish(&mut self, p: Pending, forced: Option<Cause>, out: &mut Vec<Event>) {
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
