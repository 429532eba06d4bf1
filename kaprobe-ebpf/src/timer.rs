//! `timer:timer_expire_entry` / `timer:timer_expire_exit`, narrowed to
//! `tcp_keepalive_timer` (net/ipv4/tcp_timer.c).
//!
//! The keepalive timer is `sk->sk_timer`, so the socket is `timer - offsetof(sock, sk_timer)`.
//! Entry and exit are paired per CPU: timers run in softirq context, never nested, and the
//! thread id there is whatever was interrupted. At entry the socket's keepalive state is
//! saved in this CPU's scratch; the RST, `TCP_CLOSE` and error report that a timeout causes
//! inside the firing are folded into the same record by their own hooks (see
//! [`crate::state`], [`crate::reset`]); at exit the record is completed with the state after
//! the firing and sent once. A probe was sent exactly when `icsk_probes_out` grew by one.
use kaprobe_common::{REASON_UNKNOWN, TimerRecord, kind, stat, tcp_state, timer_flag};

use crate::{
    conf,
    kernel::{
        Mem, Probe, flag_set, header, jiffies, read, sk_flags, sk_net, socket_cgroup_id, state,
        tuple_of_sock,
    },
    maps::{count, emit, owner_of_sock, timer_scratch},
    state::{fill_close, fill_close_saved},
};

/// `M` reads the `struct timer_list`; the socket behind it, found by subtraction, is not a
/// BTF-typed pointer and is always read with [`Probe`].
#[inline(always)]
pub fn on_entry<M: Mem>(timer: u64) {
    if timer == 0 {
        return;
    }
    // The hot part: every timer_list expiry in the system comes here; one load and a
    // compare send all but the keepalive timer away (`keepalive_timer_fn` is never 0).
    if !is_keepalive_timer::<M>(timer) {
        return;
    }
    count(stat::TIMER_FIRINGS);
    let Some(scratch) = timer_scratch() else {
        return;
    };
    if scratch.timer != 0 {
        count(stat::TIMER_OVERLAP);
    }
    scratch.timer = 0;
    let sk = timer.wrapping_sub(conf!(sk_timer) as u64);
    let skflags = sk_flags::<Probe>(sk);
    let keepopen = flag_set(skflags, conf!(sock_flag_keepopen));
    let orphan = flag_set(skflags, conf!(sock_flag_dead));
    let st = state::<Probe>(sk);
    // Without SO_KEEPALIVE the timer does nothing, except for an orphaned FIN_WAIT2 socket,
    // whose end it decides (that is not keepalive, but the socket may die here).
    if !keepopen && st != tcp_state::FIN_WAIT2 {
        count(stat::TIMER_NOT_KEEPOPEN);
        return;
    }
    let rec = &mut scratch.record;
    *rec = TimerRecord::default();
    rec.header = header(kind::KA_TIMER, sk);
    rec.tuple = tuple_of_sock::<Probe>(sk, sk);
    rec.owner = owner_of_sock(M::sock_key_of_address(sk), &rec.tuple);
    if rec.owner.tgid == 0 {
        // No process known: the socket's cgroup, for a death in this firing (as at a close).
        rec.owner.cgroup_id = socket_cgroup_id::<Probe>(sk);
    }
    rec.jiffies = jiffies();
    rec.rcv_tstamp = read::<u32>(sk, conf!(tp_rcv_tstamp));
    let mut flags = 0;
    if keepopen {
        flags |= timer_flag::KEEPOPEN;
    }
    if orphan {
        flags |= timer_flag::ORPHAN;
    }
    // keepalive_time_when() & co.: the socket's value, or the namespace's sysctl when 0.
    let net = sk_net::<Probe>(sk);
    let mut time = read::<u32>(sk, conf!(tp_keepalive_time));
    if time == 0 {
        time = read::<u32>(net, conf!(net_keepalive_time));
        flags |= timer_flag::TIME_FROM_SYSCTL;
    }
    let mut intvl = read::<u32>(sk, conf!(tp_keepalive_intvl));
    if intvl == 0 {
        intvl = read::<u32>(net, conf!(net_keepalive_intvl));
        flags |= timer_flag::INTVL_FROM_SYSCTL;
    }
    let mut probes = read::<u8>(sk, conf!(tp_keepalive_probes));
    if probes == 0 {
        probes = read::<u8>(net, conf!(net_keepalive_probes));
        flags |= timer_flag::PROBES_FROM_SYSCTL;
    }
    rec.keepalive_time = time;
    rec.keepalive_intvl = intvl;
    rec.keepalive_probes = probes;
    rec.user_timeout_ms = read::<u32>(sk, conf!(icsk_user_timeout));
    rec.packets_out = read::<u32>(sk, conf!(tp_packets_out));
    rec.unacked_bytes =
        read::<u32>(sk, conf!(tp_write_seq)).wrapping_sub(read::<u32>(sk, conf!(tp_snd_una)));
    rec.state_before = st;
    rec.probes_before = read::<u8>(sk, conf!(icsk_probes_out));
    rec.lrcvtime = read::<u32>(sk, conf!(icsk_lrcvtime));
    rec.segs_out_before = read::<u32>(sk, conf!(tp_segs_out));
    // tcp_keepalive_timer()'s own test: idle (keepalive_time_elapsed(): since the last
    // segment or data from the peer) for the keepalive time, nothing in flight. One jiffy of
    // slack: the kernel may read jiffies a tick later than this hook.
    let now = rec.jiffies as u32;
    let idle = now
        .wrapping_sub(rec.rcv_tstamp)
        .min(now.wrapping_sub(rec.lrcvtime));
    let fin_wait2_orphan = st == tcp_state::FIN_WAIT2 && orphan;
    if keepopen
        && !fin_wait2_orphan
        && st != tcp_state::CLOSE
        && st != tcp_state::SYN_SENT
        && rec.packets_out == 0
        && rec.unacked_bytes == 0
        && idle.saturating_add(1) >= time
    {
        flags |= timer_flag::PROBE_BRANCH;
    }
    rec.flags = flags;
    scratch.timer = timer;
}

/// Whether `timer` runs `tcp_keepalive_timer`.
#[inline(always)]
fn is_keepalive_timer<M: Mem>(timer: u64) -> bool {
    M::read::<u64>(timer, conf!(timer_function)) == conf!(keepalive_timer_fn)
}

#[inline(always)]
pub fn on_exit<M: Mem>(timer: u64) {
    // As at entry, the other timers leave after one load and a compare, before any map
    // lookup. The timer is read after its function ran: a keepalive firing may have freed
    // the socket, but TCP sockets are SLAB_TYPESAFE_BY_RCU (the memory stays a socket, its
    // timer function in place, and a load from it cannot fault the kernel).
    if timer == 0 || !is_keepalive_timer::<M>(timer) {
        return;
    }
    let Some(scratch) = timer_scratch() else {
        return;
    };
    if scratch.timer == 0 || scratch.timer != timer {
        if flag_set(
            sk_flags::<Probe>(timer.wrapping_sub(conf!(sk_timer) as u64)),
            conf!(sock_flag_keepopen),
        ) {
            count(stat::TIMER_UNPAIRED);
        }
        return;
    }
    scratch.timer = 0;
    let rec = &mut scratch.record;
    let sk = rec.header.sk;
    let unseen = if rec.flags & timer_flag::DIED == 0 {
        unseen_death_error(rec, sk)
    } else {
        None
    };
    if let Some(sk_err) = unseen {
        // The socket closed in this firing, but its TCP_CLOSE was not recorded: the kernel
        // skipped that run of `inet_sock_set_state`'s program because the same program was
        // already running on this CPU (this timer softirq interrupted it; counted in its
        // `recursion_misses`, which the agent reports). What the close hook would have
        // recorded is read here, so that the death is still reported as one (not as a probe:
        // the timer's RST counts as a segment sent).
        let skflags = sk_flags::<Probe>(sk);
        let keepopen = flag_set(skflags, conf!(sock_flag_keepopen));
        let info = &mut rec.close;
        fill_close::<Probe>(
            info,
            sk,
            skflags,
            rec.state_before,
            sk_err,
            0,
            REASON_UNKNOWN,
        );
        fill_close_saved(info, None, false, keepopen, skflags);
        rec.flags |= timer_flag::DIED;
    }
    if rec.flags & timer_flag::DIED == 0 {
        rec.state_after = state::<Probe>(sk);
        rec.probes_after = read::<u8>(sk, conf!(icsk_probes_out));
        rec.segs_out_after = read::<u32>(sk, conf!(tp_segs_out));
        rec.expires_after = M::read::<u64>(timer, conf!(timer_expires));
    } else {
        rec.state_after = tcp_state::CLOSE;
        rec.probes_after = rec.close.probes_out;
    }
    // A firing that could not send a probe and found none outstanding changes nothing the
    // agent reports (not idle long enough, data in flight): skip it.
    let worth_it = rec.flags & (timer_flag::DIED | timer_flag::PROBE_BRANCH) != 0
        || rec.probes_before != 0
        || rec.probes_after != rec.probes_before
        || rec.segs_out_after != rec.segs_out_before;
    if !worth_it {
        count(stat::TIMER_QUIET);
    } else if !emit::<TimerRecord>(rec) && rec.flags & timer_flag::DIED != 0 {
        count(stat::LOST_TIMER_DEATHS);
    }
}

/// errnos a socket gets from another path than the keepalive timer's own end
/// (`tcp_write_err`: ETIMEDOUT, or the soft error ICMP left): `ss -K` (ECONNABORTED), an RST
/// (ECONNRESET, EPIPE).
const ECONNABORTED: i32 = 103;
const ECONNRESET: i32 = 104;
const EPIPE: i32 = 32;

/// The socket's error if this firing ended it although no close was recorded in it: the
/// firing was to probe or give up (idle, probes outstanding), the socket is closed now, with
/// an error the timer's end sets. (A close by another CPU in the microseconds of a firing
/// that found the socket busy leaves another errno, or none.)
#[inline(always)]
fn unseen_death_error(rec: &TimerRecord, sk: u64) -> Option<i32> {
    if rec.flags & timer_flag::PROBE_BRANCH == 0
        || rec.probes_before == 0
        || rec.state_before == tcp_state::CLOSE
        || state::<Probe>(sk) != tcp_state::CLOSE
    {
        return None;
    }
    let err = read::<i32>(sk, conf!(sk_err));
    (err != 0 && err != ECONNABORTED && err != ECONNRESET && err != EPIPE).then_some(err)
}
