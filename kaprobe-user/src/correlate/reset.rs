//! Records of `tcp_send_reset`, `tcp_receive_reset` and `inet_sk_error_report`
//! (kaprobe-ebpf/src/reset.rs). An RST answering a probe ends the connection at once
//! (`reset_received`); ETIMEDOUT outside the keepalive timer is a retransmission timeout.
use kaprobe_common::{
    CloseInfo, ErrorRecord, REASON_UNKNOWN, ResetRecvRecord, ResetSentRecord, close_flag, tcp_state,
};

use super::{Correlator, Pending};
use crate::event::{Body, Event, state_name};

impl Correlator {
    pub(super) fn on_reset_sent(&mut self, r: &ResetSentRecord, out: &mut Vec<Event>) {
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

    pub(super) fn on_reset_recv(&mut self, r: &ResetRecvRecord, out: &mut Vec<Event>) {
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
