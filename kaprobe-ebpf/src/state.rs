//! `sock:inet_sock_set_state` (include/trace/events/sock.h): the hot hook, ~6.5 calls per
//! connection. One load (`sk_flags`) and a compare decide that a socket without
//! `SO_KEEPALIVE` is of no interest, unless it is closing (`TCP_CLOSE`, once per
//! connection: a failure is always reported) or `--all` is on.
//!
//! Work is aggregated per socket in `SOCKS` (birth, FIN times) and sent once, at
//! `TCP_CLOSE`; FIN transitions of keepalive sockets are also sent as they happen.
use aya_ebpf::{EbpfContext, helpers::bpf_get_current_pid_tgid};
use kaprobe_common::{
    CloseInfo, ConnState, ListenKey, REASON_UNKNOWN, StateRecord, close_flag, config_flag,
    conn_flag, kind, owner_flag, tcp_state, timer_flag,
};

use crate::{
    conf,
    kernel::{
        Mem, flag_set, header_at, jiffies, netns_inum, now_ns, sk_flags, sk_net, socket_cgroup_id,
        tuple_of_sock, tuple_of_sock_common,
    },
    maps::{
        LISTENERS, birth_allowed, claim_conn, claim_new, current_owner, emit_bulk, emit_close,
        netns_wanted, owner_of_slot, recent_reset, running_timer_of, take_conn,
    },
};

/// How long an RST seen on this CPU may precede the `TCP_CLOSE` it caused (the same call
/// chain: microseconds, unless the CPU is stalled, see `TIMER_STALE_NS`). Only an RST of
/// the same socket counts.
const RESET_TO_CLOSE_NS: u64 = 1_000_000_000;

/// SYN_RECV -> ESTABLISHED as `old << 8 | new`: an accepted connection's handshake done.
const HANDSHAKE_DONE: u32 = (tcp_state::SYN_RECV as u32) << 8 | tcp_state::ESTABLISHED as u32;

#[inline(always)]
pub fn on_state<M: Mem, C: EbpfContext>(_ctx: &C, sk: u64, old: u8, new: u8) {
    if sk == 0 {
        return;
    }
    let all = conf!(flags) & config_flag::ALL != 0;
    let skflags = sk_flags::<M>(sk);
    let keepopen = flag_set(skflags, conf!(sock_flag_keepopen));
    // A connection is born in SYN_SENT (connect) or, accepted from a listener, when its
    // handshake completes (SYN_RECV -> ESTABLISHED, in the softirq that made the child, or
    // for a TCP Fast Open child when the client's ACK comes). Not at SYN_RECV: there the
    // child is still being made by inet_csk_clone_lock, which then (6.12, measured; 6.1 has
    // the same code) sets its cookie to the request's, so that a slot keyed by a cookie made
    // at SYN_RECV would never be found again (docs/design.md). The transition is compared
    // as one word: comparing `old` and `new` apart made the default mode's program fail the
    // verifier ("verifier bug: stack slot 24, total slots 22", 6.12 and 6.18).
    // Every birth is remembered, so that a connection's owner and lifetime are known when it
    // fails or when keepalive is turned on later; with `--lean`, only the births of
    // sockets that already have keepalive on (set before connect(), or inherited from the
    // listener): recording a birth is most of this hook's cost under connection churn
    // (docs/design.md).
    // Beyond this CPU's birth budget (a token bucket), the births of sockets without
    // keepalive are shed (counted): the cost of a churning host stays bounded. Births in
    // namespaces `--netns` leaves out are never recorded (their records would not be sent):
    // they neither spend the budget nor count as shed.
    let transition = (old as u32) << 8 | new as u32;
    let born = (new == tcp_state::SYN_SENT || transition == HANDSHAKE_DONE)
        && (keepopen || all || conf!(flags) & config_flag::LEAN == 0)
        && (conf!(n_filter_netns) == 0 || netns_wanted(netns_inum::<M>(sk_net::<M>(sk))))
        && (keepopen || all || birth_allowed());
    // This side's first FIN: how long the connection had been idle is measured (below).
    let fin_first = new == tcp_state::FIN_WAIT1;
    if !keepopen
        && !all
        && !born
        && !fin_first
        && new != tcp_state::CLOSE
        && new != tcp_state::LISTEN
    {
        return;
    }
    if new == tcp_state::LISTEN {
        // listen(), in the owner's context (rare): its accepted connections inherit it.
        let t = tuple_of_sock_common::<M>(sk);
        let key = ListenKey {
            netns: t.netns,
            port: t.sport,
            _pad: 0,
        };
        let _ = LISTENERS.insert(&key, &current_owner::<M>(), 0);
        return;
    }
    if !M::is_tcp(sk) {
        return; // not TCP (MPTCP's meta socket, SCTP)
    }
    if new == tcp_state::CLOSE {
        on_close::<M>(sk, old, skflags, keepopen, all);
        return;
    }
    let fin_sent = fin_first || new == tcp_state::LAST_ACK;
    let fin_recv = new == tcp_state::CLOSE_WAIT || new == tcp_state::CLOSING;
    if !born && !fin_sent && !fin_recv && !keepopen {
        return; // --all: nothing to remember of this transition (the close is reported anyway)
    }
    let report = keepopen || all;
    // How long no data went either way before this side's first FIN: a connection closed
    // after an idle time (a server's keep-alive timeout, a client pool's idle timeout) has
    // its close sent even when it is not otherwise reported, for the diagnosis of what may
    // come after (a peer reusing it: the keep-alive race). Under `Connection: close` churn
    // the FIN follows the last data at once: two loads and a compare per connection.
    let fin_idle = if fin_first {
        idle_jiffies::<M>(sk)
    } else {
        None
    };
    let idle_close = fin_idle.is_some_and(|j| j >= conf!(idle_close_jiffies));
    if !report && !born && !idle_close {
        return;
    }
    let conn = if born {
        claim_new(M::sock_key(sk))
    } else {
        // A socket seen born has its key already: a load, not the helper that makes one.
        match M::existing_key(sk) {
            0 => claim_conn(M::sock_key(sk)),
            key => claim_conn(key),
        }
    };
    let Some(conn) = conn else {
        return;
    };
    // Only when a time is kept: a clock read costs ~95 ns in this VM (docs/design.md).
    let now = if born || fin_sent {
        now_ns()
    } else if fin_recv {
        fin_received_ns::<M>(sk)
    } else {
        0
    };
    if born {
        // A new connection on this socket (a socket can connect() again after failing):
        // claim_new gave a zeroed slot.
        conn.birth_ns = now;
        if new == tcp_state::SYN_SENT {
            // connect(): the process is current.
            conn.owner = current_owner::<M>();
            conn.flags |= conn_flag::ACTIVE;
        } else {
            // A child of a listener, born in softirq: the listener's owner, when needed.
            conn.flags |= conn_flag::PASSIVE;
        }
    }
    if let Some(j) = fin_idle {
        conn.flags |= conn_flag::FIN_IDLE;
        conn.fin_idle = j;
        if idle_close {
            conn.flags |= conn_flag::IDLE_CLOSE;
            conn.fin_sent_ns = now;
        }
    }
    if !report {
        return;
    }
    conn.flags |= conn_flag::REPORT;
    if fin_sent && conn.fin_sent_ns == 0 {
        conn.fin_sent_ns = now;
    }
    if fin_recv && conn.fin_recv_ns == 0 {
        conn.fin_recv_ns = now;
    }
    if keepopen && (fin_sent || fin_recv) {
        let tuple = tuple_of_sock::<M>(sk, M::tcp_sock(sk));
        let owner = owner_of_slot(Some(conn), tuple.netns, tuple.sport);
        let rec = StateRecord {
            header: header_at(kind::STATE, sk, now),
            tuple,
            old_state: old,
            new_state: new,
            _pad: [0; 6],
            owner,
        };
        let _ = emit_bulk(&rec);
    }
}

#[inline(always)]
fn on_close<M: Mem>(sk: u64, old: u8, skflags: u64, keepopen: bool, all: bool) {
    if old == tcp_state::LISTEN {
        // A listener closing is not a connection ending; its owner is forgotten (in the
        // closing process's context), unless another process listened on the port since
        // (SO_REUSEPORT: the last listen() is the one recorded). The port from `inet_sport`:
        // an auto-bound port is released (skc_num zeroed) before this tracepoint.
        let t = tuple_of_sock::<M>(sk, M::tcp_sock(sk));
        let key = ListenKey {
            netns: t.netns,
            port: t.sport,
            _pad: 0,
        };
        // SAFETY: the value is copied out at once (see `maps::listener_owner`).
        if let Some(mut o) = unsafe { LISTENERS.get(&key) }.copied() {
            if o.tgid == (bpf_get_current_pid_tgid() >> 32) as u32 {
                // Kept for its accepted connections, which may outlive it; marked closed for
                // RSTs of no socket on its port.
                o.flags |= owner_flag::LISTENER_CLOSED;
                let _ = LISTENERS.insert(&key, &o, 0);
            }
        }
        return;
    }
    let saved = take_conn(M::existing_key(sk));
    let sk_err = M::read::<i32>(sk, conf!(sk_err));
    // Closing inside the keepalive timer: the timer's record carries the close. The timer
    // ends only sockets with SO_KEEPALIVE and orphans in FIN_WAIT2: other closes skip the
    // look-up.
    let scratch = if keepopen || old == tcp_state::FIN_WAIT2 {
        running_timer_of(sk)
    } else {
        None
    };
    // An RST this CPU just sent or processed for this socket.
    let mut rst_flags = 0;
    let mut rst_reason = REASON_UNKNOWN;
    if scratch.is_none() {
        if let Some(recent) = recent_reset() {
            if recent.sk == sk && now_ns().wrapping_sub(recent.ts_ns) < RESET_TO_CLOSE_NS {
                rst_flags = recent.flags;
                rst_reason = recent.reason;
                recent.sk = 0;
            }
        }
    }
    let tracked = saved.is_some_and(|c| c.flags & conn_flag::REPORT != 0);
    let idle_closed = saved.is_some_and(|c| c.flags & conn_flag::IDLE_CLOSE != 0);
    // close() with unread data, SO_LINGER 0 and disconnect() close a synchronized
    // connection at once, and only then reset the peer (that RST is not seen yet): a
    // failure too. An orderly close comes from a FIN state (or TIME_WAIT).
    let aborted = old == tcp_state::ESTABLISHED || old == tcp_state::CLOSE_WAIT;
    let failed = sk_err != 0 || rst_flags != 0 || aborted;
    if scratch.is_none() && !(tracked || keepopen || all || failed || idle_closed) {
        return;
    }
    let tp = M::tcp_sock(sk);
    if tp == 0 {
        return;
    }
    if let Some(scratch) = scratch {
        // (Zeroed at the firing's entry.)
        fill_close::<M>(
            &mut scratch.record.close,
            tp,
            skflags,
            old,
            sk_err,
            0,
            REASON_UNKNOWN,
        );
        fill_close_saved(
            &mut scratch.record.close,
            saved.as_ref(),
            tracked,
            keepopen,
            skflags,
        );
        scratch.record.flags |= timer_flag::DIED;
        return;
    }
    // A failure is worth waking up for; an orderly close is bulk. Written in place in the
    // ring buffer: the record is too big for the BPF stack.
    let ends = || {
        (
            netns_inum::<M>(sk_net::<M>(sk)),
            u16::from_be(M::read::<u16>(tp, conf!(inet_sport))),
            u16::from_be(M::read::<u16>(sk, conf!(skc_dport))),
        )
    };
    let _ = emit_close(failed, ends, |rec| {
        let info = &mut rec.close;
        let mstamp_us = fill_close::<M>(info, tp, skflags, old, sk_err, rst_flags, rst_reason);
        fill_close_saved(info, saved.as_ref(), tracked, keepopen, skflags);
        rec.header = header_at(
            kind::CLOSE,
            sk,
            close_ns(info, saved.as_ref(), mstamp_us, !failed),
        );
        rec.tuple = tuple_of_sock::<M>(sk, tp);
        rec.owner = owner_of_slot(saved.as_ref(), rec.tuple.netns, rec.tuple.sport);
        if rec.owner.tgid == 0 {
            // No process known (its start shed or not seen): the socket still tells whose
            // cgroup made it. Three loads, on this path only.
            rec.owner.cgroup_id = socket_cgroup_id::<M>(sk);
        }
    });
}

/// What the closing socket tells ([`read_close_info`]) and what the close hook found:
/// `info` must be zeroed. Returns `tcp_mstamp` (µs).
#[inline(always)]
pub fn fill_close<M: Mem>(
    info: &mut CloseInfo,
    tp: u64,
    skflags: u64,
    old: u8,
    sk_err: i32,
    rst_flags: u32,
    rst_reason: u32,
) -> u64 {
    let mstamp_us = read_close_info::<M>(tp, skflags, info);
    info.reset_reason = rst_reason;
    info.sk_err = sk_err;
    info.flags = rst_flags;
    info.old_state = old;
    mstamp_us
}

/// The close's facts from the socket's slot (times, direction, idle; none when `saved` is
/// None) and its flags.
#[inline(always)]
pub fn fill_close_saved(
    info: &mut CloseInfo,
    saved: Option<&ConnState>,
    tracked: bool,
    keepopen: bool,
    skflags: u64,
) {
    if let Some(c) = saved {
        info.birth_ns = c.birth_ns;
        info.fin_sent_ns = c.fin_sent_ns;
        info.fin_recv_ns = c.fin_recv_ns;
        if c.flags & conn_flag::ACTIVE != 0 {
            info.flags |= close_flag::OUTBOUND;
        }
        if c.flags & conn_flag::PASSIVE != 0 {
            info.flags |= close_flag::INBOUND;
        }
        if c.flags & conn_flag::FIN_IDLE != 0 {
            info.flags |= close_flag::FIN_IDLE;
            info.fin_idle = c.fin_idle;
        }
        if c.flags & conn_flag::IDLE_CLOSE != 0 {
            info.flags |= close_flag::IDLE_CLOSE;
        }
    }
    if tracked {
        info.flags |= close_flag::TRACKED;
    }
    if keepopen {
        info.flags |= close_flag::KEEPOPEN;
    }
    if flag_set(skflags, conf!(sock_flag_dead)) {
        info.flags |= close_flag::ORPHAN;
    }
}

/// Jiffies since data last went either way on `sk` (the later of `lsndtime` and
/// `icsk_ack.lrcvtime`), or None if `sk` is not a full TCP socket.
#[inline(always)]
fn idle_jiffies<M: Mem>(sk: u64) -> Option<u32> {
    let tp = M::tcp_sock(sk);
    if tp == 0 {
        return None;
    }
    let sent = M::read::<u32>(tp, conf!(tp_lsndtime));
    let received = M::read::<u32>(tp, conf!(icsk_lrcvtime));
    // The later of two jiffies stamps (they wrap).
    let last = if (received.wrapping_sub(sent) as i32) > 0 {
        received
    } else {
        sent
    };
    Some((jiffies() as u32).wrapping_sub(last))
}

/// When the peer's FIN was received (the socket entering CLOSE_WAIT or CLOSING): the time
/// its segment began to be processed, `tcp_mstamp` (µs, the same clock as
/// `bpf_ktime_get_ns`), which the kernel refreshes at the start of `tcp_rcv_established` and
/// `tcp_rcv_state_process`, the only paths to `tcp_fin`, the only function that sets these
/// states (measured with bpftrace on 6.18: 0-4 µs before this tracepoint). A load instead
/// of a clock read; the clock where the socket is not a full TCP socket or has no stamp.
#[inline(always)]
fn fin_received_ns<M: Mem>(sk: u64) -> u64 {
    let tp = M::tcp_sock(sk);
    let us = if tp == 0 {
        0
    } else {
        M::read::<u64>(tp, conf!(tp_tcp_mstamp))
    };
    if us == 0 { now_ns() } else { us * 1000 }
}

/// When the connection closed. An orderly close whose socket had an ACK in this very jiffy
/// (`rcv_tstamp`, set by `tcp_ack`) happens in that segment's receive path (the last ACK in
/// LAST_ACK, the peer's FIN in FIN_WAIT2 or CLOSING: nearly every orderly close): then
/// `tcp_mstamp`, refreshed when the segment's processing began (bpftrace on 6.18: 0-32 µs
/// before this tracepoint), is the time, a load instead of a clock read (~95 ns here). Any
/// other close reads the clock; so does one whose stamp would come before a time already
/// recorded for the connection. (A close from another path in the jiffy of an ACK, such as
/// `close()` of an orphan-to-be FIN_WAIT2 socket with `TCP_LINGER2` < 0, would be dated at
/// most one jiffy early.)
#[inline(always)]
fn close_ns(info: &CloseInfo, saved: Option<&ConnState>, mstamp_us: u64, orderly: bool) -> u64 {
    let ns = mstamp_us.wrapping_mul(1000);
    let latest = saved.map_or(0, |c| c.birth_ns.max(c.fin_sent_ns).max(c.fin_recv_ns));
    if orderly && mstamp_us != 0 && info.rcv_tstamp == info.jiffies && ns >= latest {
        ns
    } else {
        now_ns()
    }
}

/// Fills in what the closing socket `tp` tells (counters, stamps) into `info`, which must
/// be zeroed (a record reserved zeroed in the ring, or the timer scratch's, zeroed at the
/// firing's entry); returns `tcp_mstamp` (µs). The caller sets the rest (error, state,
/// flags, times).
#[inline(always)]
fn read_close_info<M: Mem>(tp: u64, skflags: u64, info: &mut CloseInfo) -> u64 {
    info.rcv_tstamp = M::read::<u32>(tp, conf!(tp_rcv_tstamp));
    info.jiffies = jiffies() as u32;
    info.probes_out = M::read::<u8>(tp, conf!(icsk_probes_out));
    info.bytes_sent = M::read::<u64>(tp, conf!(tp_bytes_sent))
        .wrapping_sub(M::read::<u64>(tp, conf!(tp_bytes_retrans)));
    info.bytes_received = M::read::<u64>(tp, conf!(tp_bytes_received));
    // The peer's FIN advanced rcv_nxt by one: not a byte of data.
    if flag_set(skflags, conf!(sock_flag_done)) && info.bytes_received > 0 {
        info.bytes_received -= 1;
    }
    info.segs_out = M::read::<u32>(tp, conf!(tp_segs_out));
    info.segs_in = M::read::<u32>(tp, conf!(tp_segs_in));
    info.lsndtime = M::read::<u32>(tp, conf!(tp_lsndtime));
    info.lrcvtime = M::read::<u32>(tp, conf!(icsk_lrcvtime));
    info.unacked =
        M::read::<u32>(tp, conf!(tp_write_seq)).wrapping_sub(M::read::<u32>(tp, conf!(tp_snd_una)));
    info.retrans_stamp = M::read::<u32>(tp, conf!(tp_retrans_stamp));
    let mstamp_us = M::read::<u64>(tp, conf!(tp_tcp_mstamp));
    info.mstamp_ms = (mstamp_us / 1000) as u32;
    mstamp_us
}
