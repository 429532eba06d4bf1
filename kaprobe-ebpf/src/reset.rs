//! `tcp:tcp_send_reset`, `tcp:tcp_receive_reset`, `sock:inet_sk_error_report` and
//! `tcp:tcp_destroy_sock`: rare events, each sent as it happens, except inside the
//! keepalive timer of the same socket, where they are folded into the timer's record.
use kaprobe_common::{
    ErrorRecord, IPPROTO_TCP, REASON_UNKNOWN, ResetRecvRecord, ResetSentRecord, TimerRecord,
    close_flag, config_flag, kind, tcp_state, timer_flag,
};

use crate::{
    conf,
    kernel::{flag_set, header, now_ns, read, sk_flags, state, tuple_of_incoming_skb, tuple_of_sock,
        tuple_of_sock_common},
    maps::{CONNS, emit, recent_reset, timer_scratch},
};

/// Is the keepalive timer of `sk` running on this CPU? Then the record in the scratch is
/// handed to `f` and the caller sends nothing of its own.
#[inline(always)]
fn in_keepalive_timer(sk: u64, f: impl FnOnce(&mut TimerRecord)) -> bool {
    if let Some(scratch) = timer_scratch() {
        if scratch.timer != 0 && scratch.record.header.sk == sk {
            f(&mut scratch.record);
            return true;
        }
    }
    false
}

#[inline(always)]
pub fn on_send_reset(sk: u64, skb: u64, reason: u32) {
    let mut rec = ResetSentRecord {
        header: header(kind::RST_SENT, sk),
        reason,
        ..ResetSentRecord::default()
    };
    if sk == 0 {
        rec.tuple = tuple_of_incoming_skb(skb);
        rec.no_socket = 1;
    } else {
        // (A minisock never matches: its address is not the socket of a running timer.)
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
        let st = state(sk);
        // An RST from a TIME_WAIT or request minisock: only sock_common is there.
        let mini = st == tcp_state::TIME_WAIT || st == tcp_state::NEW_SYN_RECV;
        rec.tuple = if mini { tuple_of_sock_common(sk) } else { tuple_of_sock(sk) };
        rec.state = st;
    }
    emit(&rec);
}

#[inline(always)]
pub fn on_receive_reset(sk: u64) {
    if sk == 0 {
        return;
    }
    let now = now_ns();
    if let Some(recent) = recent_reset() {
        recent.sk = sk;
        recent.ts_ns = now;
        recent.flags = close_flag::RST_RECV;
        recent.reason = REASON_UNKNOWN;
    }
    let skflags = sk_flags(sk);
    let rec = ResetRecvRecord {
        header: header(kind::RST_RECV, sk),
        tuple: tuple_of_sock(sk),
        packets_out: read::<u32>(sk, conf!(tp_packets_out)),
        state: state(sk),
        probes_out: read::<u8>(sk, conf!(icsk_probes_out)),
        keepopen: flag_set(skflags, conf!(sock_flag_keepopen)) as u8,
        _pad: 0,
    };
    emit(&rec);
}

#[inline(always)]
pub fn on_error_report(sk: u64) {
    if sk == 0 || read::<u16>(sk, conf!(sk_protocol)) != IPPROTO_TCP {
        return;
    }
    let error = read::<i32>(sk, conf!(sk_err));
    if in_keepalive_timer(sk, |t| {
        t.flags |= timer_flag::ERROR_REPORTED;
        t.error = error;
    }) {
        return;
    }
    let rec = ErrorRecord {
        header: header(kind::SK_ERROR, sk),
        tuple: tuple_of_sock(sk),
        error,
        state: state(sk),
        _pad: [0; 3],
    };
    emit(&rec);
}

#[inline(always)]
pub fn on_destroy(sk: u64) {
    if sk == 0 {
        return;
    }
    let keepopen = flag_set(sk_flags(sk), conf!(sock_flag_keepopen));
    let all = conf!(flags) & config_flag::ALL != 0;
    if !keepopen && !all {
        return;
    }
    // An entry left here means the socket's TCP_CLOSE was not seen: drop it, and tell the
    // agent so it frees what it holds too.
    let stale = CONNS.remove(sk).is_ok();
    if keepopen || stale {
        emit(&header(kind::DESTROY, sk));
    }
}
