//! Records of `tcp_send_reset`, `tcp_receive_reset` and `inet_sk_error_report`
//! (kaprobe-ebpf/src/reset.rs). An RST answering a probe ends the connection at once
//! (`reset_received`); ETIMEDOUT outside the keepalive timer is a retransmission timeout.
use kaprobe_common::{
    CloseInfo, ErrorRecord, REASON_UNKNOWN, ResetRecvRecord, ResetSentRecord, close_flag, tcp_state,
};

use super::{Correlator, MAX_HELD_RESETS, Pending};
use crate::{
    diagnose::{self, EarlierClose, OtherEnd, StrayReset},
    event::{Body, Event, state_name},
};

impl Correlator {
    pub(super) fn on_reset_sent(&mut self, r: &ResetSentRecord, out: &mut Vec<Event>) {
        let sk = r.header.sk;
        let ts = r.header.ts_ns;
        let reason = self.reason_name(r.reason);
        // An RST that closes no connection: for a segment no socket wanted, from a TIME_WAIT
        // socket, or from a request socket in the handshake. The kernel names the listener's
        // owner where there is one.
        let stray = r.no_socket != 0
            || r.state == tcp_state::TIME_WAIT
            || r.state == tcp_state::NEW_SYN_RECV;
        let owner = if stray {
            self.owners.named(&r.owner)
        } else {
            self.owner(sk, &r.tuple, &r.owner)
                .or_else(|| self.pending.get(&sk).and_then(|p| p.owner.clone()))
        };
        // Data after this side shut down: the kernel ran its RST path on the socket first
        // (a `reset_received` that received nothing, held with the close), then sends this.
        // (Kernels before 6.10 name no reason: then data answered on a socket closed from
        // FIN_WAIT1/2 tells it.)
        let pending = self.pending.get(&sk).filter(|p| p.tuple == r.tuple);
        let abort_on_data = !stray
            && r.state == tcp_state::CLOSE
            && (reason == "tcp_abort_on_data"
                || pending.is_some_and(|p| {
                    p.held_reset.is_some()
                        || (r.in_len > 0
                            && matches!(
                                p.info.old_state,
                                tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2
                            ))
                }));
        let other_end = if r.no_socket != 0 {
            Some(OtherEnd::NoSocketReset)
        } else if r.state == tcp_state::TIME_WAIT {
            Some(OtherEnd::TimewaitReset)
        } else if abort_on_data {
            Some(OtherEnd::AbortOnData)
        } else {
            None
        };
        if let Some(kind) = other_end {
            self.memory.reset_sent(&r.tuple, kind, ts);
        }
        let diagnosis = stray.then(|| {
            let d = diagnose::stray_reset(&self.stray(r), &self.diagnose_settings());
            self.diagnoses.share(d)
        });
        let state = (r.no_socket == 0).then(|| state_name(r.state));
        out.push(self.event(
            ts,
            Some(&r.tuple),
            &owner,
            Body::ResetSent {
                reason,
                state,
                answering: answering(r.in_flags, r.in_len),
                diagnosis,
            },
        ));
        if stray {
            return;
        }
        if r.state != tcp_state::CLOSE {
            if let Some(c) = self.known(sk, &r.tuple) {
                c.rst_sent = Some(r.reason);
            }
            return;
        }
        // The kernel closed the socket, then reset the peer (close() with unread data,
        // SO_LINGER 0, disconnect(), data after shutdown).
        let mut p = match self.pending.remove(&sk) {
            Some(p) => p,
            None => Pending {
                ts_ns: ts,
                tuple: r.tuple,
                info: CloseInfo {
                    reset_reason: REASON_UNKNOWN,
                    ..CloseInfo::default()
                },
                conn: self
                    .conns
                    .remove(&sk)
                    .filter(|c| c.tuple == r.tuple)
                    .map(Box::new),
                owner: owner.clone(),
                counted: false,
                held_reset: None,
                abort_on_data: false,
                socket_cgroup: 0,
            },
        };
        if p.owner.is_none() {
            p.owner = owner;
        }
        if abort_on_data {
            // No RST was received: the held `reset_received` is dropped.
            p.held_reset = None;
            p.abort_on_data = true;
            p.info.flags &= !close_flag::RST_RECV;
            if let Some(c) = &mut p.conn {
                c.rst_recv = false;
            }
        }
        p.info.flags |= close_flag::RST_SENT;
        p.info.reset_reason = r.reason;
        self.finish(p, None, out);
    }

    /// What the diagnosis of a stray RST rests on.
    fn stray(&self, r: &ResetSentRecord) -> StrayReset {
        StrayReset {
            time_wait: r.state == tcp_state::TIME_WAIT && r.no_socket == 0,
            no_socket: r.no_socket != 0,
            segment_flags: r.in_flags,
            segment_bytes: r.in_len,
            listener: r.owner.tgid != 0,
            closed: self.memory.idle_close_of(&r.tuple).map(|c| EarlierClose {
                idle_before_ms: c.idle_ms,
                fin_before_ms: r.header.ts_ns.saturating_sub(c.fin_ns) / 1_000_000,
            }),
        }
    }

    pub(super) fn on_reset_recv(&mut self, r: &ResetRecvRecord, out: &mut Vec<Event>) {
        let owner = self.owner(r.header.sk, &r.tuple, &r.owner);
        let kernel_says = r.probes_out > 0 && r.keepopen != 0 && r.packets_out == 0;
        let mut during = kernel_says;
        if let Some(c) = self.known(r.header.sk, &r.tuple) {
            during |= c.unanswered > 0;
            c.rst_recv = true;
            c.rst_answered_probe = during;
        }
        let event = self.event(
            r.header.ts_ns,
            Some(&r.tuple),
            &owner,
            Body::ResetReceived {
                during_keepalive: during,
                state: state_name(r.state),
            },
        );
        if matches!(r.state, tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2) {
            // Perhaps no RST at all: data after this side shut down takes the same path.
            // Held with the close until the RST the kernel may send next tells (see
            // `Pending::held_reset`).
            if self.held_resets.len() >= MAX_HELD_RESETS {
                // Closes that never came for them (lost records): reported, not kept forever.
                out.extend(self.held_resets.drain().map(|(_, e)| *e));
            }
            self.held_resets.insert(r.header.sk, Box::new(event));
        } else {
            out.push(event);
        }
    }

    pub(super) fn on_error(&mut self, r: &ErrorRecord) {
        let sk = r.header.sk;
        if let Some(p) = self.pending.get_mut(&sk) {
            if p.info.sk_err == 0 {
                p.info.sk_err = r.error;
            }
        } else if let Some(c) = self.known(sk, &r.tuple) {
            c.error = r.error;
        }
    }
}

/// What the segment an RST answered was (`reset_sent.answering`): null when it answered
/// none (this side aborted on its own).
fn answering(flags: u8, len: u32) -> Option<&'static str> {
    use kaprobe_common::tcp_flag::{ACK, FIN, RST, SYN};
    Some(match flags {
        0 => return None,
        f if f & SYN != 0 => "syn",
        f if f & RST != 0 => "rst",
        _ if len > 0 => "data",
        f if f & FIN != 0 => "fin",
        f if f & ACK != 0 => "ack",
        _ => return None,
    })
}
