//! `tcp:tcp_send_reset`, `tcp:tcp_receive_reset` and `sock:inet_sk_error_report`: rare
//! events, each sent as it happens, except inside the keepalive timer of the same socket,
//! where they are folded into the timer's record.
use kaprobe_common::{
    ErrorRecord, REASON_UNKNOWN, ResetRecvRecord, ResetSentRecord, TimerRecord, close_flag, kind,
    tcp_state, timer_flag,
};

use crate::{
    conf,
    kernel::{
        Mem, flag_set, header, now_ns, segment_of_skb, sk_flags, state, tuple_of_incoming_skb,
        tuple_of_sock, tuple_of_sock_common,
    },
    maps::{
        emit, listener_owner, open_listener_owner, owner_of_sock, recent_reset, running_timer_of,
    },
};

/// Is the keepalive timer of `sk` running on this CPU? Then the record in the scratch is
/// handed to `f` and the caller sends nothing of its own.
#[inline(always)]
fn in_keepalive_timer(sk: u64, f: impl FnOnce(&mut TimerRecord)) -> bool {
    match running_timer_of(sk) {
        Some(scratch) => {
            f(&mut scratch.record);
            true
        }
        None => false,
    }
}

#[inline(always)]
pub fn on_send_reset<M: Mem>(sk: u64, skb: u64, reason: u32) {
    let mut rec = ResetSentRecord {
        header: header(kind::RST_SENT, sk),
        reason,
        ..ResetSentRecord::default()
    };
    // The segment the RST answers (none when this side aborts on its own): its flags and
    // payload tell a SYN to a closed port from data on a connection this side no longer has.
    let (in_flags, in_len) = segment_of_skb(skb);
    rec.in_flags = in_flags;
    rec.in_len = in_len;
    if sk == 0 {
        rec.tuple = tuple_of_incoming_skb(skb);
        rec.no_socket = 1;
        // No connection, but maybe a listener on the port: the server it was meant for.
        rec.owner = open_listener_owner(rec.tuple.netns, rec.tuple.sport);
    } else {
        let st = state::<M>(sk);
        // An RST from a TIME_WAIT or request minisock: only sock_common is there. Its owner
        // is its listener's, if it was accepted (a TIME_WAIT socket keeps no process).
        if st == tcp_state::TIME_WAIT || st == tcp_state::NEW_SYN_RECV {
            rec.tuple = tuple_of_sock_common::<M>(sk);
            rec.owner = listener_owner(rec.tuple.netns, rec.tuple.sport);
        } else {
            if in_keepalive_timer(sk, |t| {
                t.flags |= timer_flag::RST_SENT;
                t.reset_reason = reason;
            }) {
                return;
            }
            if let Some(recent) = recent_reset() {
                recent.sk = sk;
                recent.ts_ns = rec.header.ts_ns;
                recent.flags = close_flag::RST_SENT;
                recent.reason = reason;
            }
            rec.tuple = tuple_of_sock::<M>(sk, M::tcp_sock(sk));
            rec.owner = owner_of_sock(M::existing_key(sk), &rec.tuple);
        }
        rec.state = st;
    }
    let _ = emit(&rec);
}

#[inline(always)]
pub fn on_receive_reset<M: Mem>(sk: u64) {
    let tp = M::tcp_sock(sk);
    if tp == 0 {
        return;
    }
    if let Some(recent) = recent_reset() {
        recent.sk = sk;
        recent.ts_ns = now_ns();
        recent.flags = close_flag::RST_RECV;
        recent.reason = REASON_UNKNOWN;
    }
    let tuple = tuple_of_sock::<M>(sk, tp);
    let rec = ResetRecvRecord {
        header: header(kind::RST_RECV, sk),
        tuple,
        packets_out: M::read::<u32>(tp, conf!(tp_packets_out)),
        state: state::<M>(sk),
        probes_out: M::read::<u8>(tp, conf!(icsk_probes_out)),
        keepopen: flag_set(sk_flags::<M>(sk), conf!(sock_flag_keepopen)) as u8,
        _pad: 0,
        owner: owner_of_sock(M::existing_key(sk), &tuple),
    };
    let _ = emit(&rec);
}

#[inline(always)]
pub fn on_error_report<M: Mem>(sk: u64) {
    let tp = M::tcp_sock(sk);
    if tp == 0 {
        return;
    }
    let error = M::read::<i32>(sk, conf!(sk_err));
    if in_keepalive_timer(sk, |t| {
        t.flags |= timer_flag::ERROR_REPORTED;
        t.error = error;
    }) {
        return;
    }
    let tuple = tuple_of_sock::<M>(sk, tp);
    let rec = ErrorRecord {
        header: header(kind::SK_ERROR, sk),
        tuple,
        error,
        state: state::<M>(sk),
        _pad: [0; 3],
        owner: owner_of_sock(M::existing_key(sk), &tuple),
    };
    let _ = emit(&rec);
}
