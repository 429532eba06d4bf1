//! `sock:inet_sock_set_state` (include/trace/events/sock.h): the hot hook, ~6.5 calls per
//! connection. It decides with one read (`sk_flags`) and one compare that a socket without
//! `SO_KEEPALIVE` is of no interest, unless it is closing (`TCP_CLOSE`, once per
//! connection) or `--all` is on.
//!
//! Work is aggregated per socket in `CONNS` (birth, FIN times) and sent once, at
//! `TCP_CLOSE`; FIN transitions of keepalive sockets are also sent as they happen.
use aya_ebpf::EbpfContext;
use aya_log_ebpf::warn;
use kaprobe_common::{
    CloseInfo, CloseRecord, ConnState, IPPROTO_TCP, REASON_UNKNOWN, StateRecord, close_flag,
    config_flag, conn_flag, kind, stat, tcp_state, timer_flag,
};

use crate::{
    conf,
    kernel::{flag_set, header, jiffies, now_ns, read, sk_flags, tuple_of_sock},
    maps::{CONNS, count, emit, recent_reset, timer_scratch},
};

/// How long an RST seen on this CPU may precede the `TCP_CLOSE` it caused.
const RESET_TO_CLOSE_NS: u64 = 10_000_000;

#[inline(always)]
pub fn on_state<C: EbpfContext>(ctx: &C, sk: u64, old: u8, new: u8) {
    let all = conf!(flags) & config_flag::ALL != 0;
    let skflags = sk_flags(sk);
    let keepopen = flag_set(skflags, conf!(sock_flag_keepopen));
    // A connection is born in SYN_SENT (connect) or SYN_RECV (a child of a listener). Its
    // birth is remembered even when it is of no interest yet, so that its lifetime is
    // known if keepalive is turned on later or if it fails.
    let born = new == tcp_state::SYN_SENT || new == tcp_state::SYN_RECV;
    if !keepopen && !all && !born && new != tcp_state::CLOSE {
        return;
    }
    if read::<u16>(sk, conf!(sk_protocol)) != IPPROTO_TCP || new == tcp_state::LISTEN {
        return;
    }
    if new == tcp_state::CLOSE {
        on_close(sk, old, skflags, keepopen, all);
        return;
    }
    let now = now_ns();
    let report = keepopen || all;
    let fin_sent = report && (new == tcp_state::FIN_WAIT1 || new == tcp_state::LAST_ACK);
    let fin_recv = report && (new == tcp_state::CLOSE_WAIT || new == tcp_state::CLOSING);
    match CONNS.get_ptr_mut(sk) {
        Some(entry) => {
            // SAFETY: pointer from a successful lookup; the socket is locked while it
            // changes state, so no other program updates or deletes this entry meanwhile.
            let entry = unsafe { &mut *entry };
            if report {
                entry.flags |= conn_flag::REPORT;
            }
            if fin_sent && entry.fin_sent_ns == 0 {
                entry.fin_sent_ns = now;
            }
            if fin_recv && entry.fin_recv_ns == 0 {
                entry.fin_recv_ns = now;
            }
        }
        None => {
            let entry = ConnState {
                birth_ns: if born { now } else { 0 },
                fin_sent_ns: if fin_sent { now } else { 0 },
                fin_recv_ns: if fin_recv { now } else { 0 },
                flags: if report { conn_flag::REPORT } else { 0 },
                _pad: 0,
            };
            if CONNS.insert(sk, entry, 0).is_err() {
                count(stat::CONN_TABLE_FULL);
                warn!(ctx, "kaprobe: connection table full: a socket is not tracked");
            }
        }
    }
    if keepopen && (fin_sent || fin_recv) {
        let rec = StateRecord {
            header: header(kind::STATE, sk),
            tuple: tuple_of_sock(sk),
            old_state: old,
            new_state: new,
            _pad: [0; 6],
        };
        emit(&rec);
    }
}

#[inline(always)]
pub fn on_close(sk: u64, old: u8, skflags: u64, keepopen: bool, all: bool) {
    if old == tcp_state::LISTEN {
        // A listener closing is not a connection ending.
        let _ = CONNS.remove(sk);
        return;
    }
    let orphan = flag_set(skflags, conf!(sock_flag_dead));
    let mut info = close_info(sk, old, keepopen, orphan);
    let _ = CONNS.remove(sk);
    // Closing inside the keepalive timer: the timer's record carries the close.
    if let Some(scratch) = timer_scratch() {
        if scratch.timer != 0 && scratch.record.header.sk == sk {
            scratch.record.flags |= timer_flag::DIED;
            scratch.record.close = info;
            return;
        }
    }
    if let Some(recent) = recent_reset() {
        if recent.sk == sk && now_ns().wrapping_sub(recent.ts_ns) < RESET_TO_CLOSE_NS {
            info.flags |= recent.flags;
            if recent.flags & close_flag::RST_SENT != 0 {
                info.reset_reason = recent.reason;
            }
            recent.sk = 0;
        }
    }
    let tracked = info.flags & close_flag::TRACKED != 0;
    let failed = info.sk_err != 0 || info.flags & (close_flag::RST_SENT | close_flag::RST_RECV) != 0;
    if !(tracked || keepopen || all || failed) {
        return;
    }
    let rec = CloseRecord {
        header: header(kind::CLOSE, sk),
        tuple: tuple_of_sock(sk),
        close: info,
    };
    emit(&rec);
}

/// What is known of the socket at `TCP_CLOSE` (its `CONNS` entry included).
#[inline(always)]
pub fn close_info(sk: u64, old: u8, keepopen: bool, orphan: bool) -> CloseInfo {
    let mut info = CloseInfo {
        reset_reason: REASON_UNKNOWN,
        ..CloseInfo::default()
    };
    // SAFETY: `get` hands out a reference valid until the entry is removed, which only
    // happens after this copy.
    if let Some(entry) = unsafe { CONNS.get(sk) } {
        info.birth_ns = entry.birth_ns;
        info.fin_sent_ns = entry.fin_sent_ns;
        info.fin_recv_ns = entry.fin_recv_ns;
        if entry.flags & conn_flag::REPORT != 0 {
            info.flags |= close_flag::TRACKED;
        }
    }
    if keepopen {
        info.flags |= close_flag::KEEPOPEN;
    }
    if orphan {
        info.flags |= close_flag::ORPHAN;
    }
    info.sk_err = read::<i32>(sk, conf!(sk_err));
    info.rcv_tstamp = read::<u32>(sk, conf!(tp_rcv_tstamp));
    info.jiffies = jiffies() as u32;
    info.old_state = old;
    info.probes_out = read::<u8>(sk, conf!(icsk_probes_out));
    info
}
