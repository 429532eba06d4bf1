//! Records of `inet_sock_set_state` (kaprobe-ebpf/src/state.rs): FINs as they happen, and
//! closes (held a moment for an RST that may follow).
use kaprobe_common::{CloseRecord, StateRecord, close_flag, tcp_state};

use super::{Correlator, Pending, owner_named, socket_cgroup_of};
use crate::{
    event::{Body, Event, state_name},
    host::existing,
};

impl Correlator {
    pub(super) fn on_state(&mut self, r: &StateRecord, out: &mut Vec<Event>) {
        let ts = r.header.ts_ns;
        let named = self.owners.named(&r.owner);
        let conn = self.conn(r.header.sk, &r.tuple, ts);
        let owner = conn.learn_owner(&r.owner, named);
        let body = match r.new_state {
            tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK => {
                conn.fin_sent_ns = ts;
                Body::FinSent {
                    state: state_name(r.new_state),
                }
            }
            tcp_state::CLOSE_WAIT | tcp_state::CLOSING => {
                conn.fin_recv_ns = ts;
                Body::FinReceived {
                    state: state_name(r.new_state),
                }
            }
            _ => return,
        };
        out.push(self.event(ts, Some(&r.tuple), &owner, body));
    }

    pub(super) fn on_close(&mut self, r: &CloseRecord, out: &mut Vec<Event>) {
        let sk = r.header.sk;
        log::debug!(
            "close sk={sk:#x} cpu={} port={} old_state={} sk_err={} flags={:#x} probes_out={}",
            r.header.cpu,
            r.tuple.sport,
            r.close.old_state,
            r.close.sk_err,
            r.close.flags,
            r.close.probes_out
        );
        // A close already waiting for this socket (should not happen): report it first.
        if let Some(p) = self.pending.remove(&sk) {
            self.finish(p, None, out);
        }
        let conn = self.conns.remove(&sk).filter(|c| c.tuple == r.tuple);
        let known = conn.as_ref().and_then(|c| c.owner.clone());
        let owner = owner_named(
            &r.owner,
            self.owners.named(&r.owner),
            known.or_else(|| existing::owner_of(&self.existing, &r.tuple)),
        );
        let held_reset = if self.held_resets.is_empty() {
            None
        } else {
            self.held_resets.remove(&sk)
        };
        let p = Pending {
            ts_ns: r.header.ts_ns,
            tuple: r.tuple,
            info: r.close,
            conn: conn.map(Box::new),
            owner,
            counted: true,
            held_reset,
            abort_on_data: false,
            socket_cgroup: socket_cgroup_of(&r.owner),
        };
        let failed = r.close.sk_err != 0
            || r.close.flags & (close_flag::RST_SENT | close_flag::RST_RECV) != 0
            || p.conn
                .as_ref()
                .is_some_and(|c| c.rst_recv || c.rst_sent.is_some());
        let rst_may_follow = matches!(
            r.close.old_state,
            tcp_state::ESTABLISHED
                | tcp_state::CLOSE_WAIT
                | tcp_state::FIN_WAIT1
                | tcp_state::FIN_WAIT2
                | tcp_state::SYN_RECV
                | tcp_state::CLOSING
                | tcp_state::LAST_ACK
        );
        // A held `reset_received`: the kernel's RST for data after shutdown may follow. An RST
        // received: the other end's RST may still come, when it is on this host too (before
        // 6.10 the kernel traces an RST after sending it, and the receiver's close comes
        // first), to confirm the diagnosis.
        let rst_recv = r.close.flags & close_flag::RST_RECV != 0
            || p.conn.as_ref().is_some_and(|c| c.rst_recv);
        if (!failed && rst_may_follow) || p.held_reset.is_some() || rst_recv {
            self.hold(sk, p);
        } else {
            self.finish(p, None, out);
        }
    }
}
