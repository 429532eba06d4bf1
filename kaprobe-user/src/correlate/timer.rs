//! Records of `tcp_keepalive_timer` firings (kaprobe-ebpf/src/timer.rs): probes sent,
//! answers, keepalive timeouts, and the timeouts of firings no tracepoint saw (inferred
//! when the socket is gone after its timer was due).
//!
//! - a keepalive timeout is a death *inside* `tcp_keepalive_timer` of a socket with
//!   `SO_KEEPALIVE` (not an orphaned FIN_WAIT2 socket, which uses the same timer);
//! - a probe was sent exactly when `icsk_probes_out` grew by one across a firing (a busy
//!   socket's 50 ms re-arm, local congestion, data in flight or a not-yet-idle socket send
//!   nothing and are not probes);
//! - an answer is seen as `icsk_probes_out` back to 0 (any ACK from the peer resets it).
use kaprobe_common::{
    CloseInfo, REASON_UNKNOWN, TimerRecord, Tuple, close_flag, tcp_state, timer_flag,
};

use super::{Conn, Correlator, ETIMEDOUT, Pending, conn_event, socket_cgroup_of};
use crate::event::{Body, Cause, Event, Owner, errno_name, state_name};
use crate::{bpf::decode::RawEvent, diagnose::OtherEnd};

/// A followed connection with every keepalive probe out: its timer's next firing ends it.
#[derive(Debug, Clone)]
pub(super) struct Dying {
    tuple: Tuple,
    /// When that firing is due (CLOCK_MONOTONIC ns).
    due_ns: u64,
    max_probes: u8,
    /// How long the peer will have been silent by then.
    idle_ms: u64,
}

/// A followed connection whose keepalive timer should have ended it by now, with no record
/// of it: the firing may have been one the kernel never traced (see `on_timer`). The agent
/// asks the kernel (sock_diag) whether the socket still exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overdue {
    pub(crate) sk: u64,
    pub(crate) tuple: Tuple,
    /// When its keepalive timer was due (CLOCK_MONOTONIC ns).
    pub(crate) due_ns: u64,
    max_probes: u8,
    idle_ms: u64,
}

/// How long after its due time a keepalive timer that should end its connection may still
/// come (softirq delays, a slow vCPU, records from other CPUs) before it is suspected unseen.
const OVERDUE_GRACE_NS: u64 = 2_000_000_000;

/// How long the records of a connection whose end was inferred are still dropped (they
/// come within milliseconds if they come at all; a connection on the same socket with the
/// same four addresses within a minute is not expected).
const INFERRED_MEMORY_NS: u64 = 60_000_000_000;

/// What one firing says, worked out once.
struct Firing {
    /// How long the peer had been silent at the firing (the kernel's idle time).
    idle_ms: u64,
    interval_ms: u64,
    /// The connection ended inside the firing.
    died: bool,
    /// The socket has `SO_KEEPALIVE` and the timer is its keepalive timer.
    keepalive: bool,
}

/// What happened since the last firing seen for this connection: the peer answered the
/// probes then outstanding, or probes went out in firings not seen.
fn catch_up(
    conn: &mut Conn,
    r: &TimerRecord,
    f: &Firing,
    owner: &Option<Owner>,
    traced_since: u64,
    clock: super::Clock,
    out: &mut Vec<Event>,
) {
    let ts = r.header.ts_ns;
    if r.probes_before == 0 && conn.unanswered > 0 {
        // The peer was heard (icsk_probes_out went back to 0) at rcv_tstamp.
        let heard_ns = ts
            .saturating_sub(f.idle_ms * 1_000_000)
            .max(conn.last_probe_ns);
        out.push(conn_event(
            &clock,
            heard_ns,
            Some(&r.tuple),
            owner,
            Body::KeepaliveAck {
                probes_unanswered: conn.unanswered,
            },
        ));
        conn.acks += 1;
        conn.unanswered = 0;
    } else if r.probes_before > conn.unanswered {
        // Probes went out since the last firing seen for this socket, without a firing of
        // their own: before tracing started (not ours to report), or in firings the kernel
        // ran without reaching the timer_expire_entry tracepoint. Measured on 6.18: in
        // about one burst of 300 keepalive timers in 30, up to a third of a burst's
        // firings never reach the tracepoint (a bpftrace counter misses them too,
        // kaprobe not loaded), while icsk_probes_out and TcpExtTCPKeepAlive count their
        // probes. Each such probe sent after tracing started is reported, marked
        // inferred, one interval before the next.
        let interval_ns = f.interval_ms * 1_000_000;
        for probe in conn.unanswered + 1..=r.probes_before {
            let back = u64::from(r.probes_before - probe + 1) * interval_ns;
            let sent_ns = ts.saturating_sub(back);
            if sent_ns < traced_since || sent_ns <= conn.last_probe_ns {
                continue;
            }
            conn.probes += 1;
            conn.last_probe_ns = sent_ns;
            out.push(conn_event(
                &clock,
                sent_ns,
                Some(&r.tuple),
                owner,
                Body::KeepaliveProbe {
                    probe,
                    max_probes: r.keepalive_probes,
                    idle_ms: f.idle_ms.saturating_sub(back / 1_000_000),
                    interval_ms: f.interval_ms,
                    inferred: true,
                },
            ));
        }
        conn.unanswered = r.probes_before;
    }
}

impl Correlator {
    /// Followed connections whose fatal keepalive firing is overdue by `OVERDUE_GRACE_NS`
    /// at `now_ns` (each is returned once: check it, then call [`Correlator::unseen_death`]).
    pub(crate) fn overdue(&mut self, now_ns: u64) -> Vec<Overdue> {
        self.inferred_ends
            .retain(|_, (_, at)| now_ns <= at.saturating_add(INFERRED_MEMORY_NS));
        let mut found = Vec::new();
        let lost = self.deaths_lost_ns;
        let conns = &self.conns;
        self.dying.retain(|&sk, d| {
            if now_ns <= d.due_ns.saturating_add(OVERDUE_GRACE_NS) {
                return true;
            }
            let followed = conns.get(&sk).is_some_and(|c| c.tuple == d.tuple);
            // Its end may be one of the records the ring buffer lost, which are counted and
            // reported as lost: not inferred a second time.
            let maybe_lost = lost != 0 && lost.saturating_add(OVERDUE_GRACE_NS) >= d.due_ns;
            if followed && !maybe_lost {
                found.push(Overdue {
                    sk,
                    tuple: d.tuple,
                    due_ns: d.due_ns,
                    max_probes: d.max_probes,
                    idle_ms: d.idle_ms,
                });
            }
            false
        });
        found
    }

    /// Is `raw` a record of a connection whose end was already inferred? A record of
    /// another connection on the same socket (address reused) forgets the inference.
    pub(super) fn after_inferred_end(&mut self, raw: &RawEvent) -> bool {
        let sk = raw.header().sk;
        let Some((tuple, _)) = self.inferred_ends.get(&sk) else {
            return false;
        };
        if raw.tuple() == tuple {
            return true;
        }
        self.inferred_ends.remove(&sk);
        false
    }

    /// The kernel counted lost records of keepalive firings that ended connections, up to
    /// `now_ns`.
    pub(crate) fn note_lost_deaths(&mut self, now_ns: u64) {
        self.deaths_lost_ns = now_ns;
    }

    /// The kernel no longer has the socket of an overdue connection: its keepalive timer
    /// ended it in a firing no tracepoint saw. Reports the timeout (inferred, at the time it
    /// was due) and the close.
    pub(crate) fn unseen_death(&mut self, o: &Overdue, out: &mut Vec<Event>) {
        let due_ns = o.due_ns;
        let Some(conn) = self.conns.remove(&o.sk).filter(|c| c.tuple == o.tuple) else {
            return;
        };
        let owner = conn.owner.clone();
        self.stats.unseen_deaths += 1;
        self.inferred_ends.insert(o.sk, (o.tuple, due_ns));
        out.push(self.event(
            due_ns,
            Some(&o.tuple),
            &owner,
            Body::KeepaliveTimeout {
                probes: conn.unanswered,
                max_probes: o.max_probes,
                idle_ms: o.idle_ms,
                error: errno_name(ETIMEDOUT),
                user_timeout_ms: None,
                inferred: true,
            },
        ));
        let info = CloseInfo {
            old_state: tcp_state::ESTABLISHED,
            sk_err: ETIMEDOUT,
            probes_out: conn.unanswered,
            reset_reason: REASON_UNKNOWN,
            ..CloseInfo::default()
        };
        self.finish(
            Pending {
                ts_ns: due_ns,
                tuple: o.tuple,
                info,
                conn: Some(Box::new(conn)),
                owner,
                counted: false,
                held_reset: None,
                abort_on_data: false,
                socket_cgroup: 0,
            },
            Some(Cause::KeepaliveTimeout),
            out,
        );
    }

    pub(super) fn on_timer(&mut self, r: &TimerRecord, out: &mut Vec<Event>) {
        let ts = r.header.ts_ns;
        log::debug!(
            "keepalive timer sk={:#x} cpu={} port={} state={}->{} probes_out={}->{} rcv_tstamp={} lrcvtime={} jiffies={} expires={} intvl={} flags={:#x}",
            r.header.sk,
            r.header.cpu,
            r.tuple.sport,
            r.state_before,
            r.state_after,
            r.probes_before,
            r.probes_after,
            r.rcv_tstamp,
            r.lrcvtime,
            r.jiffies,
            r.expires_after,
            r.keepalive_intvl,
            r.flags
        );
        let clock = self.settings.clock;
        let now_j = r.jiffies as u32;
        let idle_j = now_j
            .wrapping_sub(r.rcv_tstamp)
            .min(now_j.wrapping_sub(r.lrcvtime));
        let f = Firing {
            idle_ms: clock.jiffies_to_ms(idle_j),
            interval_ms: clock.jiffies_to_ms(r.keepalive_intvl),
            died: r.flags & timer_flag::DIED != 0,
            // The timer of an orphan in FIN_WAIT2 is not keepalive (the same timer ends it).
            keepalive: r.flags & timer_flag::KEEPOPEN != 0
                && !(r.state_before == tcp_state::FIN_WAIT2 && r.flags & timer_flag::ORPHAN != 0),
        };
        let by_rearm = self.probe_by_rearm(r);
        let traced_since = self.settings.traced_since_ns;
        let named = self.owners.named(&r.owner);
        let conn = self.conn(r.header.sk, &r.tuple, ts);
        let owner = conn.learn_owner(&r.owner, named);
        conn.keepalive_idle_ms = Some(clock.jiffies_to_ms(r.keepalive_time));
        catch_up(conn, r, &f, &owner, traced_since, clock, out);
        let probe_sent = !f.died
            && (r.probes_after == r.probes_before.wrapping_add(1)
                || by_rearm
                || (f.keepalive && probe_by_segment(r, idle_j)));
        if probe_sent {
            conn.probes += 1;
            conn.last_probe_ns = ts;
            conn.last_probe_idle_ms = Some(f.idle_ms);
            conn.unanswered = r.probes_before.wrapping_add(1);
            out.push(conn_event(
                &clock,
                ts,
                Some(&r.tuple),
                &owner,
                Body::KeepaliveProbe {
                    probe: r.probes_before.wrapping_add(1),
                    max_probes: r.keepalive_probes,
                    idle_ms: f.idle_ms,
                    interval_ms: f.interval_ms,
                    inferred: false,
                },
            ));
        }
        if f.died {
            self.dying.remove(&r.header.sk);
            self.death_in_timer(r, &f, owner, out);
        } else {
            self.note_dying(r, &f);
        }
    }

    /// A firing that did not end its connection: if every probe is out, the next one will
    /// (it is watched for, in case no tracepoint sees it: [`Correlator::overdue`]).
    fn note_dying(&mut self, r: &TimerRecord, f: &Firing) {
        let unanswered = self.conns.get(&r.header.sk).map_or(0, |c| c.unanswered);
        let ends_next = f.keepalive
            && r.state_after == tcp_state::ESTABLISHED
            && r.keepalive_probes > 0
            && unanswered >= r.keepalive_probes;
        if !ends_next {
            self.dying.remove(&r.header.sk);
            return;
        }
        let clock = self.settings.clock;
        let rearm_ms = clock.jiffies_to_ms((r.expires_after as u32).wrapping_sub(r.jiffies as u32));
        let d = Dying {
            tuple: r.tuple,
            due_ns: r.header.ts_ns + rearm_ms * 1_000_000,
            max_probes: r.keepalive_probes,
            idle_ms: f.idle_ms + rearm_ms,
        };
        self.dying.insert(r.header.sk, d);
    }

    /// The connection ended inside the firing: a keepalive timeout (or an orphan's end),
    /// with the RST the timer sent, then its close.
    fn death_in_timer(
        &mut self,
        r: &TimerRecord,
        f: &Firing,
        owner: Option<Owner>,
        out: &mut Vec<Event>,
    ) {
        let ts = r.header.ts_ns;
        let mut info = r.close;
        let error = if r.flags & timer_flag::ERROR_REPORTED != 0 {
            r.error
        } else {
            info.sk_err
        };
        if info.sk_err == 0 {
            info.sk_err = error;
        }
        if f.keepalive {
            out.push(self.event(
                ts,
                Some(&r.tuple),
                &owner,
                Body::KeepaliveTimeout {
                    probes: r.probes_before,
                    max_probes: r.keepalive_probes,
                    idle_ms: f.idle_ms,
                    error: errno_name(error),
                    user_timeout_ms: (r.user_timeout_ms != 0).then_some(r.user_timeout_ms),
                    inferred: false,
                },
            ));
        }
        if r.flags & timer_flag::RST_SENT != 0 {
            info.flags |= close_flag::RST_SENT;
            info.reset_reason = r.reset_reason;
            if f.keepalive {
                // (The other end, if on this host, learns why it was reset.)
                self.memory
                    .reset_sent(&r.tuple, OtherEnd::KeepaliveTimeout, ts);
            }
            out.push(self.event(
                ts,
                Some(&r.tuple),
                &owner,
                Body::ResetSent {
                    reason: self.reason_name(r.reset_reason),
                    state: Some(state_name(r.state_before)),
                    answering: None,
                    diagnosis: None,
                },
            ));
        }
        let conn = self.conns.remove(&r.header.sk);
        let forced = f.keepalive.then_some(Cause::KeepaliveTimeout);
        self.finish(
            Pending {
                ts_ns: ts,
                tuple: r.tuple,
                info,
                conn: conn.map(Box::new),
                owner,
                counted: true,
                held_reset: None,
                abort_on_data: false,
                socket_cgroup: socket_cgroup_of(&r.owner),
            },
            forced,
            out,
        );
    }

    /// Did the firing send a probe, judging by what the kernel did rather than by
    /// `icsk_probes_out` (which the peer's ACK may reset before the exit hook reads it: the
    /// timer releases the socket first)? The firing took the probe branch (idle, nothing in
    /// flight) and re-armed the timer for exactly the keepalive interval, as
    /// tcp_keepalive_timer() does after a probe, or for TCP_RESOURCE_PROBE_INTERVAL (HZ/2)
    /// after a probe that local congestion held back (counted by the kernel all the same).
    /// A busy socket is re-armed for HZ/20, an idle-not-long-enough one for the rest of its
    /// idle time, which was ruled out at entry.
    fn probe_by_rearm(&self, r: &TimerRecord) -> bool {
        if r.flags & timer_flag::PROBE_BRANCH == 0 {
            return false;
        }
        let rearm = (r.expires_after as u32).wrapping_sub(r.jiffies as u32);
        let congested = self.settings.clock.hz / 2;
        [r.keepalive_intvl, congested]
            .iter()
            .any(|&d| rearm == d || rearm == d + 1)
    }
}

/// Jiffies of slack on the idle test of [`probe_by_segment`]: the entry hook reads jiffies
/// before the kernel does, and a stalled vCPU can put ticks between the two.
const IDLE_SLACK_JIFFIES: u32 = 5;

/// Did the firing send a probe, judging by the segments the socket sent during it? A
/// keepalive firing on a connection idle for its keepalive time with nothing in flight or
/// queued sends nothing but the probe (tcp_write_wakeup with an empty queue). This holds
/// when the answer reset `icsk_probes_out` on another CPU before the exit hook read it and
/// the re-arm was late (a loaded VM), which [`Correlator::probe_by_rearm`] misses, and when
/// the entry's idle test, a tick or more early, did not see the probe branch. Records
/// without the counts have both 0.
fn probe_by_segment(r: &TimerRecord, idle_j: u32) -> bool {
    r.segs_out_after != r.segs_out_before
        && r.packets_out == 0
        && r.unacked_bytes == 0
        && r.state_before != tcp_state::SYN_SENT
        && idle_j.saturating_add(IDLE_SLACK_JIFFIES) >= r.keepalive_time
}
