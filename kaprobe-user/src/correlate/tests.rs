//! The state machine fed with record sequences as the kernel produces them (see the
//! scenario traces in ../shared/notes/kernel-keepalive-ground-truth.md).
use std::collections::HashMap;

use kaprobe_common::*;

use super::*;
use crate::event::{Body, Cause, Side, diagnosis::Verdict};

const SK: u64 = 0xffff_8881_0848_8000;
const HZ: u32 = 250;
const SEC: u64 = 1_000_000_000;
const J: u32 = HZ; // jiffies per second

fn tuple(sport: u16) -> Tuple {
    let mut t = Tuple {
        sport,
        dport: 9000,
        family: AF_INET,
        netns: 4026532246,
        ..Tuple::default()
    };
    t.saddr[..4].copy_from_slice(&[10, 77, 0, 1]);
    t.daddr[..4].copy_from_slice(&[10, 77, 0, 2]);
    t
}

fn correlator() -> Correlator {
    let mut reasons = HashMap::new();
    reasons.insert(1, "no_socket".to_owned());
    reasons.insert(11, "tcp_abort_on_close".to_owned());
    reasons.insert(14, "tcp_state".to_owned());
    reasons.insert(15, "tcp_keepalive_timeout".to_owned());
    Correlator::new(Settings {
        clock: Clock {
            realtime_offset_ns: 1_700_000_000 * SEC as i128,
            hz: HZ,
        },
        reset_reasons: reasons,
        max_connections: 1000,
        traced_since_ns: 0,
        nat_timeout_ms: 350_000,
    })
}

fn header(kind: u32, ts_ns: u64, sk: u64) -> Header {
    Header {
        kind,
        cpu: 0,
        ts_ns,
        sk,
    }
}

/// One firing of the keepalive timer at second `t` of a socket last heard at second `heard`
/// (KEEPIDLE 1, KEEPINTVL 1, KEEPCNT 3), with `icsk_probes_out` going `before` → `after`.
fn firing(sk: u64, sport: u16, t: u64, heard: u64, before: u8, after: u8) -> RawEvent {
    RawEvent::Timer(TimerRecord {
        header: header(kind::KA_TIMER, t * SEC, sk),
        tuple: tuple(sport),
        jiffies: 1_000_000 + t * J as u64,
        rcv_tstamp: 1_000_000 + (heard * J as u64) as u32,
        lrcvtime: 1_000_000 + (heard * J as u64) as u32,
        keepalive_time: J,
        keepalive_intvl: J,
        keepalive_probes: 3,
        flags: timer_flag::KEEPOPEN,
        state_before: tcp_state::ESTABLISHED,
        state_after: tcp_state::ESTABLISHED,
        probes_before: before,
        probes_after: after,
        expires_after: 1_000_000
            + t * J as u64
            + if after > before {
                J as u64
            } else {
                J as u64 / 20
            },
        ..TimerRecord::default()
    })
}

fn close_info(old_state: u8, sk_err: i32, flags: u32) -> CloseInfo {
    CloseInfo {
        old_state,
        sk_err,
        flags,
        reset_reason: REASON_UNKNOWN,
        ..CloseInfo::default()
    }
}

/// The firing at second `t` in which the keepalive timer gives up (`probes` unanswered):
/// its RST (reason 15, `tcp_keepalive_timeout`) and ETIMEDOUT, the socket dead in it.
fn keepalive_death(sk: u64, sport: u16, t: u64, probes: u8, heard: u64) -> TimerRecord {
    let RawEvent::Timer(mut death) = firing(sk, sport, t, heard, probes, probes) else {
        unreachable!()
    };
    death.flags |= timer_flag::DIED | timer_flag::RST_SENT | timer_flag::ERROR_REPORTED;
    death.reset_reason = 15;
    death.error = 110;
    death.close = CloseInfo {
        probes_out: probes,
        ..close_info(tcp_state::ESTABLISHED, 110, 0)
    };
    death
}

/// The id of the cgroup2 root (its directory's inode): a cgroup that exists on this host,
/// if it has cgroup2.
fn cgroup2_root_id() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(crate::host::owner::cgroup2_root())
        .map(|m| m.ino())
        .ok()
}

fn close(sk: u64, sport: u16, t_ns: u64, info: CloseInfo) -> RawEvent {
    RawEvent::Close(CloseRecord {
        header: header(kind::CLOSE, t_ns, sk),
        tuple: tuple(sport),
        close: info,
        owner: kaprobe_common::Owner::default(),
    })
}

fn run(c: &mut Correlator, records: &[RawEvent]) -> Vec<Event> {
    let mut out = Vec::new();
    for r in records {
        c.handle(r, &mut out);
    }
    out
}

fn names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.body.name()).collect()
}

fn closed(events: &[Event]) -> &Body {
    let mut it = events
        .iter()
        .filter(|e| e.body.name() == "connection_closed");
    let b = &it.next().expect("a connection_closed").body;
    assert!(it.next().is_none(), "one connection_closed only");
    b
}

#[test]
fn dead_peer_two_answered_then_three_unanswered_probes() {
    // Ground truth scenario 1: probes_out at each entry 0,0,0,1,2,3.
    let mut c = correlator();
    let mut records = vec![
        firing(SK, 5000, 1, 0, 0, 1),
        firing(SK, 5000, 2, 1, 0, 1),
        firing(SK, 5000, 3, 2, 0, 1),
        firing(SK, 5000, 4, 3, 1, 2),
        firing(SK, 5000, 5, 3, 2, 3),
    ];
    let mut death = keepalive_death(SK, 5000, 6, 3, 3);
    death.close.birth_ns = SEC / 2;
    records.push(RawEvent::Timer(death));
    let out = run(&mut c, &records);
    assert_eq!(
        names(&out),
        [
            "keepalive_probe",
            "keepalive_ack",
            "keepalive_probe",
            "keepalive_ack",
            "keepalive_probe",
            "keepalive_probe",
            "keepalive_probe",
            "keepalive_timeout",
            "reset_sent",
            "connection_closed"
        ]
    );
    let probes: Vec<u8> = out
        .iter()
        .filter_map(|e| match e.body {
            Body::KeepaliveProbe { probe, .. } => Some(probe),
            _ => None,
        })
        .collect();
    assert_eq!(probes, [1, 1, 1, 2, 3]);
    assert_eq!(
        out[7].body,
        Body::KeepaliveTimeout {
            probes: 3,
            max_probes: 3,
            idle_ms: 3000,
            error: Some("ETIMEDOUT"),
            user_timeout_ms: None,
            inferred: false,
        }
    );
    assert_eq!(
        out[8].body,
        Body::ResetSent {
            reason: "tcp_keepalive_timeout".into(),
            state: Some("established"),
            answering: None,
            diagnosis: None,
        }
    );
    let Body::ConnectionClosed { diagnosis, .. } = closed(&out) else {
        unreachable!()
    };
    assert_eq!(diagnosis.verdict, Verdict::PeerUnreachable, "{diagnosis:?}");
    assert_eq!(diagnosis.evidence.probes_sent, Some(5));
    assert_eq!(diagnosis.evidence.probes_answered, Some(2));
    assert_eq!(
        *closed(&out),
        Body::ConnectionClosed {
            diagnosis: diagnosis.clone(),
            cause: Cause::KeepaliveTimeout,
            error: Some("ETIMEDOUT"),
            closed_by: Side::Local,
            time_wait: false,
            lifetime_ms: Some(5500),
            idle_ms: Some(0),
            keepalive_probes: 5,
            keepalive_acks: 2,
            last_state: Some("established"),
            direction: None,
            bytes_sent: Some(0),
            bytes_received: Some(0),
            segments: Some(0),
            segments_sent: Some(0),
            segments_received: Some(0),
            socket_cgroup: None,
        }
    );
    assert_eq!(c.tracked(), 0, "state freed at close");
}

#[test]
fn an_answer_is_never_reported_before_its_probe() {
    let mut c = correlator();
    // Heard "at" 1.996 s by jiffies (rounded down) while the probe went out at 2.0 s.
    let mut r = firing(SK, 5000, 3, 2, 0, 1);
    if let RawEvent::Timer(t) = &mut r {
        t.rcv_tstamp -= 1;
    }
    let out = run(&mut c, &[firing(SK, 5000, 2, 1, 0, 1), r]);
    assert_eq!(
        names(&out),
        ["keepalive_probe", "keepalive_ack", "keepalive_probe"]
    );
    assert!(out[1].ts >= out[0].ts);
}

#[test]
fn a_probe_answered_before_the_exit_hook_is_still_a_probe() {
    // The probe branch was taken and the timer re-armed for the interval, but the peer's
    // ACK reset icsk_probes_out before the exit hook read it.
    let mut c = correlator();
    let mut raced = firing(SK, 5000, 2, 1, 0, 0);
    if let RawEvent::Timer(t) = &mut raced {
        t.flags |= timer_flag::PROBE_BRANCH;
        t.expires_after = t.jiffies + J as u64;
    }
    let out = run(
        &mut c,
        &[
            firing(SK, 5000, 1, 0, 0, 1),
            raced,
            firing(SK, 5000, 3, 2, 0, 1),
        ],
    );
    assert_eq!(
        names(&out),
        [
            "keepalive_probe",
            "keepalive_ack",
            "keepalive_probe",
            "keepalive_ack",
            "keepalive_probe"
        ]
    );
    // A probe held back by local congestion (re-armed for HZ/2) is counted by the kernel too.
    let mut c = correlator();
    let mut congested = firing(SK, 5000, 2, 1, 0, 0);
    if let RawEvent::Timer(t) = &mut congested {
        t.flags |= timer_flag::PROBE_BRANCH;
        t.expires_after = t.jiffies + HZ as u64 / 2;
    }
    assert_eq!(names(&run(&mut c, &[congested])), ["keepalive_probe"]);
    // Same branch, but the socket was busy (re-armed for HZ/20): no probe.
    let mut c = correlator();
    let mut busy = firing(SK, 5000, 2, 1, 0, 0);
    if let RawEvent::Timer(t) = &mut busy {
        t.flags |= timer_flag::PROBE_BRANCH;
        t.expires_after = t.jiffies + HZ as u64 / 20;
    }
    assert!(run(&mut c, &[busy]).is_empty());
    // Not idle long enough (no probe branch), whatever the re-arm: no probe.
    let mut c = correlator();
    let mut quiet = firing(SK, 5000, 2, 1, 0, 0);
    if let RawEvent::Timer(t) = &mut quiet {
        t.expires_after = t.jiffies + J as u64;
    }
    assert!(run(&mut c, &[quiet]).is_empty());
}

#[test]
fn a_probe_answered_before_the_exit_hook_of_a_late_firing_is_still_a_probe() {
    // The ACK reset icsk_probes_out on another CPU and the firing re-armed 3 jiffies late
    // (a loaded VM): the re-arm does not say it, the segment the socket sent does.
    let late = |segs_after: u32| {
        let mut f = firing(SK, 5000, 2, 1, 0, 0);
        if let RawEvent::Timer(t) = &mut f {
            t.flags |= timer_flag::PROBE_BRANCH;
            t.expires_after = t.jiffies + J as u64 + 3;
            t.segs_out_before = 10;
            t.segs_out_after = segs_after;
        }
        f
    };
    let mut c = correlator();
    assert_eq!(names(&run(&mut c, &[late(11)])), ["keepalive_probe"]);
    // Nothing sent in the firing: no probe.
    let mut c = correlator();
    assert!(run(&mut c, &[late(10)]).is_empty());
    // The entry hook read jiffies two ticks before the kernel did: no probe branch seen, but
    // idle within the slack, nothing in flight, a segment sent: a probe.
    let mut c = correlator();
    let mut early = late(11);
    if let RawEvent::Timer(t) = &mut early {
        t.flags &= !timer_flag::PROBE_BRANCH;
        t.rcv_tstamp += 2;
        t.lrcvtime += 2;
    }
    assert_eq!(names(&run(&mut c, &[early])), ["keepalive_probe"]);
    // A segment sent by a socket with data in flight, or not idle for long, is not a probe.
    for (in_flight, heard) in [(1, 1), (0, 2)] {
        let mut c = correlator();
        let mut busy = firing(SK, 5000, 2, heard, 0, 0);
        if let RawEvent::Timer(t) = &mut busy {
            t.packets_out = in_flight;
            t.segs_out_before = 10;
            t.segs_out_after = 11;
        }
        assert!(run(&mut c, &[busy]).is_empty(), "{in_flight} {heard}");
    }
}

#[test]
fn firings_that_send_nothing_are_not_probes() {
    let mut c = correlator();
    // Busy socket re-armed for 50 ms, congestion, data in flight: probes_out unchanged.
    let out = run(
        &mut c,
        &[
            firing(SK, 5000, 1, 0, 0, 1),
            firing(SK, 5000, 2, 0, 1, 1),
            firing(SK, 5000, 2, 0, 1, 1),
        ],
    );
    assert_eq!(names(&out), ["keepalive_probe"]);
}

#[test]
fn orphaned_fin_wait2_death_in_the_keepalive_timer_is_not_a_keepalive_timeout() {
    let mut c = correlator();
    let RawEvent::Timer(mut t) = firing(SK, 5000, 70, 0, 0, 0) else {
        unreachable!()
    };
    t.flags = timer_flag::ORPHAN | timer_flag::DIED;
    t.state_before = tcp_state::FIN_WAIT2;
    t.close = CloseInfo {
        fin_sent_ns: SEC,
        ..close_info(tcp_state::FIN_WAIT2, 0, 0)
    };
    let out = run(&mut c, &[RawEvent::Timer(t)]);
    assert_eq!(names(&out), ["fin_sent", "connection_closed"]);
    let Body::ConnectionClosed {
        cause,
        closed_by,
        time_wait,
        ..
    } = closed(&out)
    else {
        unreachable!()
    };
    assert_eq!(
        (*cause, *closed_by, *time_wait),
        (Cause::Fin, Side::Local, true)
    );
}

#[test]
fn user_timeout_ends_probing_before_max_probes() {
    let mut c = correlator();
    let RawEvent::Timer(mut t) = firing(SK, 5000, 4, 0, 1, 1) else {
        unreachable!()
    };
    t.flags |= timer_flag::DIED | timer_flag::RST_SENT;
    t.reset_reason = 15;
    t.user_timeout_ms = 3000;
    t.close = close_info(tcp_state::ESTABLISHED, 110, 0);
    let out = run(&mut c, &[firing(SK, 5000, 3, 0, 0, 1), RawEvent::Timer(t)]);
    assert_eq!(
        names(&out),
        [
            "keepalive_probe",
            "keepalive_timeout",
            "reset_sent",
            "connection_closed"
        ]
    );
    assert!(matches!(
        out[1].body,
        Body::KeepaliveTimeout {
            probes: 1,
            max_probes: 3,
            user_timeout_ms: Some(3000),
            ..
        }
    ));
}

#[test]
fn restarted_peer_answers_a_probe_with_rst() {
    // Ground truth scenario 2.
    let mut c = correlator();
    let rst = RawEvent::ResetRecv(ResetRecvRecord {
        header: header(kind::RST_RECV, SEC + 1000, SK),
        tuple: tuple(5000),
        state: tcp_state::ESTABLISHED,
        probes_out: 1,
        keepopen: 1,
        ..ResetRecvRecord::default()
    });
    let mut out = run(
        &mut c,
        &[
            firing(SK, 5000, 1, 0, 0, 1),
            rst,
            close(
                SK,
                5000,
                SEC + 2000,
                CloseInfo {
                    probes_out: 1,
                    ..close_info(
                        tcp_state::ESTABLISHED,
                        104,
                        close_flag::RST_RECV | close_flag::TRACKED,
                    )
                },
            ),
        ],
    );
    // (A close with an RST received waits the grace period for the other end's RST.)
    c.tick(SEC + 2000 + CLOSE_GRACE_NS, &mut out);
    assert_eq!(
        names(&out),
        ["keepalive_probe", "reset_received", "connection_closed"]
    );
    assert_eq!(
        out[1].body,
        Body::ResetReceived {
            during_keepalive: true,
            state: "established"
        }
    );
    let Body::ConnectionClosed {
        cause,
        closed_by,
        error,
        keepalive_acks,
        ..
    } = closed(&out)
    else {
        unreachable!()
    };
    assert_eq!(
        (*cause, *closed_by, *error, *keepalive_acks),
        (Cause::ResetReceived, Side::Remote, Some("ECONNRESET"), 0)
    );
}

#[test]
fn reset_without_outstanding_probe_is_not_during_keepalive() {
    let mut c = correlator();
    let rst = RawEvent::ResetRecv(ResetRecvRecord {
        header: header(kind::RST_RECV, SEC, SK),
        tuple: tuple(5000),
        state: tcp_state::ESTABLISHED,
        probes_out: 0,
        keepopen: 1,
        ..ResetRecvRecord::default()
    });
    let out = run(&mut c, &[rst]);
    assert_eq!(
        out[0].body,
        Body::ResetReceived {
            during_keepalive: false,
            state: "established"
        }
    );
}

#[test]
fn etimedout_outside_the_keepalive_timer_is_a_retransmission_timeout() {
    // Ground truth scenario 3: data in flight, TCP_USER_TIMEOUT, no probes.
    let mut c = correlator();
    let out = run(
        &mut c,
        &[close(
            SK,
            5000,
            3 * SEC,
            close_info(tcp_state::ESTABLISHED, 110, close_flag::TRACKED),
        )],
    );
    let Body::ConnectionClosed { cause, error, .. } = closed(&out) else {
        unreachable!()
    };
    assert_eq!(
        (*cause, *error),
        (Cause::RetransmitTimeout, Some("ETIMEDOUT"))
    );
    // A soft ICMP error reported instead of ETIMEDOUT is still a retransmission timeout...
    let out = run(
        &mut c,
        &[close(
            SK,
            5000,
            4 * SEC,
            close_info(tcp_state::ESTABLISHED, 113, 0),
        )],
    );
    assert!(matches!(
        closed(&out),
        Body::ConnectionClosed {
            cause: Cause::RetransmitTimeout,
            error: Some("EHOSTUNREACH"),
            ..
        }
    ));
    // ...but a hard ICMP error during the handshake is not.
    let out = run(
        &mut c,
        &[close(
            SK,
            5000,
            5 * SEC,
            close_info(tcp_state::SYN_SENT, 113, 0),
        )],
    );
    assert!(matches!(
        closed(&out),
        Body::ConnectionClosed {
            cause: Cause::Other,
            ..
        }
    ));
}

#[test]
fn rst_sent_after_close_is_the_cause_of_that_close() {
    // close() with unread data: the kernel moves to CLOSE, then sends the RST.
    let mut c = correlator();
    let mut out = run(
        &mut c,
        &[close(
            SK,
            5000,
            SEC,
            close_info(tcp_state::ESTABLISHED, 0, close_flag::TRACKED),
        )],
    );
    assert!(
        out.is_empty(),
        "a graceful-looking close waits for a trailing RST"
    );
    let rst = RawEvent::ResetSent(ResetSentRecord {
        header: header(kind::RST_SENT, SEC + 5000, SK),
        tuple: tuple(5000),
        reason: 11,
        state: tcp_state::CLOSE,
        ..ResetSentRecord::default()
    });
    c.handle(&rst, &mut out);
    assert_eq!(names(&out), ["reset_sent", "connection_closed"]);
    let Body::ConnectionClosed {
        cause, closed_by, ..
    } = closed(&out)
    else {
        unreachable!()
    };
    assert_eq!((*cause, *closed_by), (Cause::ResetSent, Side::Local));
    c.tick(u64::MAX, &mut out);
    assert_eq!(out.len(), 2, "nothing left waiting");
}

#[test]
fn rst_after_close_of_an_untracked_socket_still_closes_it() {
    let mut c = correlator();
    let rst = RawEvent::ResetSent(ResetSentRecord {
        header: header(kind::RST_SENT, SEC, SK),
        tuple: tuple(5000),
        reason: 11,
        state: tcp_state::CLOSE,
        ..ResetSentRecord::default()
    });
    let out = run(&mut c, &[rst]);
    assert_eq!(names(&out), ["reset_sent", "connection_closed"]);
    assert!(matches!(
        closed(&out),
        Body::ConnectionClosed {
            cause: Cause::ResetSent,
            lifetime_ms: None,
            last_state: None,
            ..
        }
    ));
}

#[test]
fn graceful_close_is_reported_after_the_grace_period() {
    let mut c = correlator();
    let info = CloseInfo {
        birth_ns: SEC,
        fin_sent_ns: 2 * SEC,
        ..close_info(tcp_state::FIN_WAIT2, 0, close_flag::TRACKED)
    };
    let mut out = run(&mut c, &[close(SK, 5000, 3 * SEC, info)]);
    assert!(out.is_empty());
    c.tick(3 * SEC + CLOSE_GRACE_NS - 1, &mut out);
    assert!(out.is_empty());
    c.tick(3 * SEC + CLOSE_GRACE_NS, &mut out);
    assert_eq!(names(&out), ["fin_sent", "connection_closed"]);
    assert_eq!(out[0].body, Body::FinSent { state: "fin_wait1" });
    let Body::ConnectionClosed {
        cause,
        closed_by,
        time_wait,
        lifetime_ms,
        ..
    } = closed(&out)
    else {
        unreachable!()
    };
    assert_eq!(
        (*cause, *closed_by, *time_wait, *lifetime_ms),
        (Cause::Fin, Side::Local, true, Some(2000))
    );
}

#[test]
fn an_orderly_close_waits_its_grace_for_a_trailing_rst() {
    let mut c = correlator();
    let mut out = run(
        &mut c,
        &[close(
            SK,
            5000,
            SEC,
            close_info(tcp_state::LAST_ACK, 0, close_flag::TRACKED),
        )],
    );
    c.tick(SEC + CLOSE_GRACE_NS - 1, &mut out);
    assert!(
        out.is_empty(),
        "reported before its grace: {:?}",
        names(&out)
    );
    c.tick(SEC + CLOSE_GRACE_NS, &mut out);
    let Body::ConnectionClosed {
        cause,
        closed_by,
        time_wait,
        ..
    } = closed(&out)
    else {
        unreachable!()
    };
    assert_eq!(
        (*cause, *closed_by, *time_wait),
        (Cause::Fin, Side::Remote, false)
    );
}

#[test]
fn peer_closes_first_fins_live() {
    // Ground truth scenario 4, receiving side, keepalive on: FINs come as they happen.
    let mut c = correlator();
    let fin = |t, old, new| {
        RawEvent::State(StateRecord {
            header: header(kind::STATE, t, SK),
            tuple: tuple(5000),
            old_state: old,
            new_state: new,
            _pad: [0; 6],
            owner: kaprobe_common::Owner::default(),
        })
    };
    let mut out = run(
        &mut c,
        &[
            fin(SEC, tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT),
            fin(2 * SEC, tcp_state::CLOSE_WAIT, tcp_state::LAST_ACK),
            close(
                SK,
                5000,
                2 * SEC + 100,
                CloseInfo {
                    fin_recv_ns: SEC,
                    fin_sent_ns: 2 * SEC,
                    ..close_info(tcp_state::LAST_ACK, 0, close_flag::TRACKED)
                },
            ),
        ],
    );
    c.flush(&mut out);
    assert_eq!(
        names(&out),
        ["fin_received", "fin_sent", "connection_closed"],
        "FINs are not repeated at close"
    );
    let Body::ConnectionClosed {
        cause,
        closed_by,
        time_wait,
        ..
    } = closed(&out)
    else {
        unreachable!()
    };
    assert_eq!(
        (*cause, *closed_by, *time_wait),
        (Cause::Fin, Side::Remote, false)
    );
}

#[test]
fn an_answer_seen_only_at_close_is_reported() {
    let mut c = correlator();
    let mut out = run(
        &mut c,
        &[
            firing(SK, 5000, 1, 0, 0, 1),
            close(
                SK,
                5000,
                2 * SEC,
                CloseInfo {
                    probes_out: 0,
                    ..close_info(tcp_state::FIN_WAIT2, 0, close_flag::TRACKED)
                },
            ),
        ],
    );
    c.flush(&mut out);
    assert_eq!(
        names(&out),
        ["keepalive_probe", "keepalive_ack", "connection_closed"]
    );
    assert!(matches!(
        closed(&out),
        Body::ConnectionClosed {
            keepalive_probes: 1,
            keepalive_acks: 1,
            ..
        }
    ));
}

#[test]
fn a_reused_socket_address_is_a_new_connection() {
    let mut c = correlator();
    // Socket SK probed as port 5000, its close lost; the same address now serves port 6000.
    let out = run(
        &mut c,
        &[firing(SK, 5000, 1, 0, 0, 1), firing(SK, 6000, 2, 1, 0, 1)],
    );
    assert_eq!(
        names(&out),
        ["keepalive_probe", "keepalive_probe"],
        "no ack carried over to the new connection"
    );
    assert_eq!(c.stats.replaced, 1);
}

#[test]
fn the_table_is_bounded_and_evictions_are_counted() {
    let mut c = correlator();
    c.settings.max_connections = 64;
    let records: Vec<RawEvent> = (0..200u64)
        .map(|i| firing(SK + i * 4096, 1000 + i as u16, 1 + i, 0, 0, 1))
        .collect();
    run(&mut c, &records);
    assert!(c.tracked() <= 64);
    assert_eq!(c.stats.evicted as usize + c.tracked(), 200);
}

#[test]
fn v4_mapped_ipv6_is_reported_as_ipv4() {
    let mut t = Tuple {
        family: AF_INET6,
        sport: 1,
        dport: 2,
        ..Tuple::default()
    };
    t.saddr = std::net::Ipv4Addr::new(10, 0, 0, 1)
        .to_ipv6_mapped()
        .octets();
    t.daddr = std::net::Ipv4Addr::new(10, 0, 0, 2)
        .to_ipv6_mapped()
        .octets();
    let e = crate::event::Endpoints::from_tuple(&t);
    assert_eq!(e.family, crate::event::Family::Ipv4);
    assert_eq!(e.saddr.to_string(), "10.0.0.1");
    t.daddr = "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets();
    assert_eq!(
        crate::event::Endpoints::from_tuple(&t).family,
        crate::event::Family::Ipv6
    );
}

fn raw_owner(tgid: u32, comm: &[u8]) -> kaprobe_common::Owner {
    let mut o = kaprobe_common::Owner {
        tgid,
        cgroup_id: 77,
        ..kaprobe_common::Owner::default()
    };
    o.comm[..comm.len()].copy_from_slice(comm);
    o
}

#[test]
fn owner_and_byte_counts_reach_every_event_of_the_connection() {
    let mut c = correlator();
    // The owner comes with the first probe's record; the close record carries it too, and
    // the byte and segment counts the kernel had at TCP_CLOSE.
    let RawEvent::Timer(mut probe) = firing(SK, 5000, 1, 0, 0, 1) else {
        unreachable!()
    };
    probe.owner = raw_owner(4242, b"curl");
    let mut info = close_info(tcp_state::FIN_WAIT2, 0, 0);
    info.fin_sent_ns = 2 * SEC;
    info.fin_recv_ns = 2 * SEC + 1000;
    info.bytes_sent = 1234;
    info.bytes_received = 56789;
    info.segs_out = 7;
    info.segs_in = 9;
    let RawEvent::Close(mut end) = close(SK, 5000, 3 * SEC, info) else {
        unreachable!()
    };
    // A record without an owner (e.g. the kernel lost its slot) keeps the one learned.
    end.owner = kaprobe_common::Owner::default();
    let mut out = run(&mut c, &[RawEvent::Timer(probe), RawEvent::Close(end)]);
    c.flush(&mut out);
    assert!(out.len() >= 2, "{out:?}");
    for e in &out {
        let owner = e.owner.as_ref().expect("every event has the owner");
        assert_eq!(
            (owner.pid, &*owner.comm, owner.cgroup_id),
            (4242, "curl", 77)
        );
    }
    let Body::ConnectionClosed {
        bytes_sent,
        bytes_received,
        segments,
        segments_sent,
        segments_received,
        ..
    } = closed(&out)
    else {
        unreachable!()
    };
    assert_eq!((*bytes_sent, *bytes_received), (Some(1234), Some(56789)));
    assert_eq!(
        (*segments, *segments_sent, *segments_received),
        (Some(16), Some(7), Some(9))
    );
}

fn probes_of(events: &[Event]) -> Vec<(u8, bool, u64)> {
    events
        .iter()
        .filter_map(|e| match e.body {
            Body::KeepaliveProbe {
                probe, inferred, ..
            } => Some((probe, inferred, e.ts.0)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_probe_whose_firing_was_not_traced_is_inferred_from_the_next_firing() {
    // Probe 1 at 2 s; the firing at 3 s that sent probe 2 never reached the tracepoint;
    // the one at 4 s finds 2 probes out and sends the third.
    let mut c = correlator();
    let out = run(
        &mut c,
        &[firing(SK, 5000, 2, 1, 0, 1), firing(SK, 5000, 4, 1, 2, 3)],
    );
    let wall = |s: u64| (1_700_000_000 + s) * SEC;
    assert_eq!(
        probes_of(&out),
        [(1, false, wall(2)), (2, true, wall(3)), (3, false, wall(4))]
    );
    let Body::KeepaliveProbe { idle_ms, .. } = out[1].body else {
        unreachable!()
    };
    assert_eq!(idle_ms, 2000, "idle when the inferred probe went out");
}

#[test]
fn probes_sent_before_tracing_started_are_not_inferred() {
    let mut c = correlator();
    c.settings.traced_since_ns = 10 * SEC + SEC / 2;
    // First sight at 11 s of a socket with 2 probes out: they went out at about 9 and 10 s,
    // before the agent; the third is seen.
    let out = run(&mut c, &[firing(SK, 5000, 11, 8, 2, 3)]);
    assert_eq!(probes_of(&out), [(3, false, (1_700_000_000 + 11) * SEC)]);
    // Tracing from 9.5 s: the probe of about 10 s should have been seen, and is inferred.
    let mut c = correlator();
    c.settings.traced_since_ns = 9 * SEC + SEC / 2;
    let out = run(&mut c, &[firing(SK, 5000, 11, 8, 2, 3)]);
    assert_eq!(
        probes_of(&out)
            .iter()
            .map(|&(p, i, _)| (p, i))
            .collect::<Vec<_>>(),
        [(2, true), (3, false)]
    );
}

/// Three probes out (KEEPCNT 3) at 4 s: the firing due at 5 s ends the connection.
fn every_probe_out(c: &mut Correlator) -> Vec<Event> {
    run(
        c,
        &[
            firing(SK, 5000, 2, 1, 0, 1),
            firing(SK, 5000, 3, 1, 1, 2),
            firing(SK, 5000, 4, 1, 2, 3),
        ],
    )
}

#[test]
fn a_death_no_tracepoint_saw_is_inferred_when_the_socket_is_gone() {
    let mut c = correlator();
    let out = every_probe_out(&mut c);
    assert_eq!(probes_of(&out).len(), 3);
    assert!(c.overdue(6 * SEC).is_empty(), "within the grace period");
    let overdue = c.overdue(7 * SEC + 1);
    assert_eq!(overdue.len(), 1);
    assert_eq!(overdue[0].due_ns, 5 * SEC);
    assert!(c.overdue(8 * SEC).is_empty(), "suspected once");
    let mut out = Vec::new();
    c.unseen_death(&overdue[0], &mut out);
    assert_eq!(names(&out), ["keepalive_timeout", "connection_closed"]);
    assert_eq!(out[0].ts.0, (1_700_000_000 + 5) * SEC);
    assert_eq!(
        out[0].body,
        Body::KeepaliveTimeout {
            probes: 3,
            max_probes: 3,
            idle_ms: 4000,
            error: Some("ETIMEDOUT"),
            user_timeout_ms: None,
            inferred: true,
        }
    );
    let Body::ConnectionClosed { cause, .. } = closed(&out) else {
        unreachable!()
    };
    assert_eq!(*cause, Cause::KeepaliveTimeout);
    assert_eq!(c.stats.unseen_deaths, 1);
    assert_eq!(c.tracked(), 0);
}

#[test]
fn records_of_a_connection_whose_end_was_inferred_are_not_reported_twice() {
    let mut c = correlator();
    every_probe_out(&mut c);
    let overdue = c.overdue(7 * SEC + 1);
    assert_eq!(overdue.len(), 1);
    let mut out = Vec::new();
    c.unseen_death(&overdue[0], &mut out);
    assert_eq!(names(&out), ["keepalive_timeout", "connection_closed"]);
    // The fatal firing's record comes after all, later than the grace period: nothing more
    // is reported.
    let mut fatal = firing(SK, 5000, 5, 1, 3, 3);
    if let RawEvent::Timer(r) = &mut fatal {
        r.flags |= timer_flag::DIED;
        r.close = close_info(tcp_state::ESTABLISHED, ETIMEDOUT, 0);
    }
    let late = run(&mut c, &[fatal]);
    assert!(late.is_empty(), "reported twice: {:?}", names(&late));
    assert_eq!(c.stats.late_after_inference, 1);
    // A minute later the inference is forgotten: the socket's address may serve a new
    // connection with the same addresses, reported as usual.
    c.overdue(70 * SEC);
    let out = run(&mut c, &[firing(SK, 5000, 70, 69, 0, 1)]);
    assert_eq!(names(&out), ["keepalive_probe"]);
    // Another connection on the same address is never taken for the inferred one.
    let mut c2 = correlator();
    c2.inferred_ends.insert(SK, (tuple(5000), 5 * SEC));
    let out = run(&mut c2, &[firing(SK, 6000, 9, 8, 0, 1)]);
    assert_eq!(names(&out), ["keepalive_probe"]);
    assert!(c2.inferred_ends.is_empty());
    // Inferences are forgotten after a minute.
    c2.inferred_ends.insert(SK, (tuple(5000), 5 * SEC));
    c2.overdue(66 * SEC);
    assert!(c2.inferred_ends.is_empty());
}

#[test]
fn a_connection_with_probes_left_is_not_suspected() {
    let mut c = correlator();
    run(
        &mut c,
        &[firing(SK, 5000, 2, 1, 0, 1), firing(SK, 5000, 3, 1, 1, 2)],
    );
    // The next firing (due at 4 s) would only send a probe: its absence proves nothing.
    assert!(c.overdue(60 * SEC).is_empty());
}

#[test]
fn an_overdue_end_that_may_be_a_lost_record_is_not_inferred_again() {
    let mut c = correlator();
    every_probe_out(&mut c);
    // The ring buffer lost timer records that ended connections at 5.1 s: counted as lost.
    c.note_lost_deaths(5 * SEC + SEC / 10);
    assert!(c.overdue(8 * SEC).is_empty());
}

#[test]
fn idle_time_at_close_is_known_once_synchronized() {
    let mut c = correlator();
    // A reset received 2.5 s after the peer was last heard (a firewall that forgot the
    // connection answers the next segment with an RST).
    let mut info = close_info(tcp_state::ESTABLISHED, 104, close_flag::RST_RECV);
    info.jiffies = 1_000_000 + 5 * J;
    info.rcv_tstamp = info.jiffies - J * 5 / 2;
    let mut out = run(&mut c, &[close(SK, 5000, 5 * SEC, info)]);
    c.tick(5 * SEC + CLOSE_GRACE_NS, &mut out);
    assert!(
        matches!(
            closed(&out),
            Body::ConnectionClosed {
                cause: Cause::ResetReceived,
                idle_ms: Some(2500),
                ..
            }
        ),
        "{out:?}"
    );
    // A refused connect: nothing was ever received, so no idle time.
    let mut info = close_info(tcp_state::SYN_SENT, 111, close_flag::RST_RECV);
    info.jiffies = 1_000_000 + 6 * J;
    let mut out = run(&mut c, &[close(SK + 4096, 5001, 6 * SEC, info)]);
    c.tick(6 * SEC + CLOSE_GRACE_NS, &mut out);
    assert!(
        matches!(closed(&out), Body::ConnectionClosed { idle_ms: None, .. }),
        "{out:?}"
    );
}

#[test]
fn a_connection_older_than_the_agent_is_named_by_the_look_up_until_it_ends() {
    use crate::host::diag::ConnKey;
    let mut c = correlator();
    let mut found = HashMap::new();
    let old = crate::event::Owner::new(
        31337,
        "postgres".into(),
        Some("/system.slice/pg.service".into()),
    );
    found.insert(ConnKey::of_tuple(&tuple(5000)), (old.clone(), 1));
    found.insert(ConnKey::of_tuple(&tuple(5001)), (old.clone(), 2));
    c.set_existing(found);
    // Records without an owner (no birth seen): the look-up names it, on every event.
    let rst = RawEvent::ResetRecv(ResetRecvRecord {
        header: header(kind::RST_RECV, SEC, SK),
        tuple: tuple(5000),
        state: tcp_state::ESTABLISHED,
        ..ResetRecvRecord::default()
    });
    let end = close(
        SK,
        5000,
        SEC + 10,
        close_info(tcp_state::ESTABLISHED, 104, 0),
    );
    let mut out = run(&mut c, &[rst, end]);
    c.flush(&mut out);
    assert_eq!(names(&out), ["reset_received", "connection_closed"]);
    for e in &out {
        assert_eq!(e.owner.as_ref(), Some(&old), "{e:?}");
    }
    // A record that names an owner wins (the kernel saw that connection start).
    let RawEvent::Close(mut other) = close(
        SK + 8,
        5001,
        2 * SEC,
        close_info(tcp_state::ESTABLISHED, 104, 0),
    ) else {
        unreachable!()
    };
    other.owner = raw_owner(4242, b"curl");
    let mut out = run(&mut c, &[RawEvent::Close(other)]);
    c.flush(&mut out);
    assert_eq!(out[0].owner.as_ref().map(|o| o.pid), Some(4242));
    // The entries went with their connections' ends: the same addresses used again by a
    // connection whose owner nobody knows are not given the old one.
    let again = close(
        SK + 16,
        5000,
        3 * SEC,
        close_info(tcp_state::ESTABLISHED, 104, 0),
    );
    let mut out = run(&mut c, &[again]);
    c.flush(&mut out);
    assert_eq!(names(&out), ["connection_closed"]);
    assert_eq!(out[0].owner, None);
}

#[test]
fn a_late_look_up_still_names_connections_already_followed() {
    use crate::host::diag::ConnKey;
    let mut c = correlator();
    // Probes of an old connection come before the look-up is done: no owner yet.
    let mut out = run(&mut c, &[firing(SK, 5000, 1, 0, 0, 1)]);
    assert!(out.iter().all(|e| e.owner.is_none()), "{out:?}");
    let old = crate::event::Owner::new(31337, "postgres".into(), None);
    let mut found = HashMap::new();
    found.insert(ConnKey::of_tuple(&tuple(5000)), (old.clone(), 1));
    c.set_existing(found);
    out.clear();
    c.handle(&firing(SK, 5000, 2, 0, 1, 2), &mut out);
    assert!(!out.is_empty());
    for e in &out {
        assert_eq!(e.owner.as_ref(), Some(&old), "{e:?}");
    }
}

#[test]
fn the_other_ends_rst_on_this_host_confirms_in_either_order() {
    // The peer's host is this host: its RST for no socket (kernels before 6.10 trace it
    // after sending it, so it may come after the close it caused).
    let mirrored = |t: Tuple| Tuple {
        saddr: t.daddr,
        daddr: t.saddr,
        sport: t.dport,
        dport: t.sport,
        netns: t.netns + 1,
        ..t
    };
    let peer_rst = |ts: u64| {
        RawEvent::ResetSent(ResetSentRecord {
            header: header(kind::RST_SENT, ts, 0),
            tuple: mirrored(tuple(5000)),
            reason: 1,
            no_socket: 1,
            in_flags: tcp_flag::ACK,
            ..ResetSentRecord::default()
        })
    };
    let client_close = |ts: u64| {
        let mut info = close_info(tcp_state::ESTABLISHED, 104, close_flag::RST_RECV);
        info.unacked = 1;
        close(SK, 5000, ts, info)
    };
    for peer_first in [true, false] {
        let mut c = correlator();
        let records = if peer_first {
            [peer_rst(SEC), client_close(SEC + 1000)]
        } else {
            [client_close(SEC), peer_rst(SEC + 1000)]
        };
        let mut out = run(&mut c, &records);
        c.tick(SEC + 1000 + CLOSE_GRACE_NS, &mut out);
        let Body::ConnectionClosed { diagnosis, .. } = closed(&out) else {
            unreachable!()
        };
        assert_eq!(
            (diagnosis.verdict, diagnosis.evidence.other_end),
            (Verdict::PeerRestarted, Some("reset_sent:no_socket")),
            "peer first: {peer_first}: {diagnosis:?}"
        );
    }
}

/// The server's side of the keep-alive race, as 6.18 records it when the client's late
/// request arrives before the client ACKed the server's FIN (measured: nginx's orphan goes
/// FIN_WAIT1 -> FIN_WAIT2 -> CLOSE on that segment, and only then the kernel sends its RST,
/// `tcp_abort_on_data`; no tcp_receive_reset), or while the FIN is in flight (a
/// `reset_received` that received nothing, in FIN_WAIT1, then the close, the socket's
/// destruction, the RST).
#[test]
fn data_on_a_connection_this_side_closed_idle_is_the_race_not_a_reset_received() {
    let abort_rst = |ts: u64| {
        RawEvent::ResetSent(ResetSentRecord {
            header: header(kind::RST_SENT, ts, SK),
            tuple: tuple(5000),
            reason: REASON_UNKNOWN, // as on kernels without reasons: the data tells
            state: tcp_state::CLOSE,
            in_flags: tcp_flag::ACK | tcp_flag::PSH,
            in_len: 78,
            ..ResetSentRecord::default()
        })
    };
    let idle_close = |old_state: u8, flags: u32| CloseInfo {
        fin_sent_ns: SEC,
        fin_idle: J, // 1 s without data before this side's FIN
        ..close_info(
            old_state,
            0,
            flags | close_flag::IDLE_CLOSE | close_flag::FIN_IDLE | close_flag::INBOUND,
        )
    };
    // The request right after the FIN: FIN_WAIT2 -> CLOSE, then the RST.
    let mut c = correlator();
    let mut out = run(
        &mut c,
        &[
            close(
                SK,
                5000,
                SEC + 40_000_000,
                idle_close(tcp_state::FIN_WAIT2, 0),
            ),
            abort_rst(SEC + 40_100_000),
        ],
    );
    c.tick(2 * SEC, &mut out);
    assert_eq!(names(&out), ["reset_sent", "connection_closed"]);
    let Body::ConnectionClosed {
        cause, diagnosis, ..
    } = closed(&out)
    else {
        unreachable!()
    };
    assert_eq!(*cause, Cause::ResetSent);
    assert_eq!(diagnosis.verdict, Verdict::KeepaliveRace, "{diagnosis:?}");
    assert_eq!(diagnosis.evidence.idle_before_close_ms, Some(1000));
    assert_eq!(diagnosis.evidence.closed_before_ms, Some(40));
    // The FIN in flight: the kernel's fake reset_received in FIN_WAIT1, the close (the
    // orphan is destroyed), then its RST.
    let mut c = correlator();
    let fake = RawEvent::ResetRecv(ResetRecvRecord {
        header: header(kind::RST_RECV, SEC + 100_000_000, SK),
        tuple: tuple(5000),
        state: tcp_state::FIN_WAIT1,
        ..ResetRecvRecord::default()
    });
    let mut out = run(
        &mut c,
        &[
            fake,
            close(
                SK,
                5000,
                SEC + 100_000_100,
                CloseInfo {
                    sk_err: 104,
                    ..idle_close(tcp_state::FIN_WAIT1, close_flag::RST_RECV)
                },
            ),
            abort_rst(SEC + 100_000_300),
        ],
    );
    c.tick(2 * SEC, &mut out);
    assert_eq!(
        names(&out),
        ["reset_sent", "connection_closed"],
        "no reset_received: none came"
    );
    let Body::ConnectionClosed {
        cause, diagnosis, ..
    } = closed(&out)
    else {
        unreachable!()
    };
    assert_eq!(
        (*cause, diagnosis.verdict),
        (Cause::ResetSent, Verdict::KeepaliveRace)
    );
    // A real RST to a socket in FIN_WAIT2 (no RST of this side follows): reported.
    let mut c = correlator();
    let real = RawEvent::ResetRecv(ResetRecvRecord {
        header: header(kind::RST_RECV, SEC, SK),
        tuple: tuple(5000),
        state: tcp_state::FIN_WAIT2,
        ..ResetRecvRecord::default()
    });
    let mut out = run(
        &mut c,
        &[
            real,
            close(
                SK,
                5000,
                SEC + 100,
                close_info(tcp_state::FIN_WAIT2, 104, close_flag::RST_RECV),
            ),
        ],
    );
    c.tick(2 * SEC, &mut out);
    assert_eq!(names(&out), ["reset_received", "connection_closed"]);
    assert!(matches!(
        closed(&out),
        Body::ConnectionClosed {
            cause: Cause::ResetReceived,
            ..
        }
    ));
}

/// Closes that tell the same story in the same words share one diagnosis; others get
/// their own, and the stories kept are the latest few.
#[test]
fn recent_diagnoses_are_shared() {
    use crate::event::diagnosis::test_diagnosis;
    let mut recent = close::RecentDiagnoses::default();
    let a = recent.share(test_diagnosis(Verdict::Orderly));
    let b = recent.share(test_diagnosis(Verdict::Orderly));
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    let other = recent.share(test_diagnosis(Verdict::Refused));
    assert_eq!(other.verdict, Verdict::Refused);
    assert!(!std::sync::Arc::ptr_eq(&a, &other));
    // Evidence is part of the story.
    let mut with_evidence = test_diagnosis(Verdict::Orderly);
    with_evidence.evidence.idle_before_close_ms = Some(1000);
    let c = recent.share(with_evidence);
    assert_eq!(c.evidence.idle_before_close_ms, Some(1000));
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
    // Four newer stories push the first out: it is made anew (and equal).
    for v in [
        Verdict::PeerReset,
        Verdict::LocalAbort,
        Verdict::Unknown,
        Verdict::PeerRestarted,
    ] {
        recent.share(test_diagnosis(v));
    }
    let d = recent.share(test_diagnosis(Verdict::Orderly));
    assert_eq!(*d, *a);
    assert!(!std::sync::Arc::ptr_eq(&a, &d));
}

#[test]
fn a_close_without_owner_names_the_sockets_cgroup_and_one_with_an_owner_does_not() {
    let Some(id) = cgroup2_root_id() else {
        return; // no cgroup2 here: nothing to resolve
    };
    let refused = || {
        close_info(
            tcp_state::SYN_SENT,
            libc::ECONNREFUSED,
            close_flag::RST_RECV,
        )
    };
    let mut c = correlator();
    let RawEvent::Close(mut shed) = close(SK, 5000, SEC, refused()) else {
        unreachable!()
    };
    // What the kernel sends when no process is known: tgid 0, the socket's cgroup.
    shed.owner.cgroup_id = id;
    let RawEvent::Close(mut owned) = close(SK + 1, 5001, SEC, refused()) else {
        unreachable!()
    };
    owned.owner = kaprobe_common::Owner {
        tgid: 4242,
        cgroup_id: id,
        comm: *b"app\0\0\0\0\0\0\0\0\0\0\0\0\0",
        ..Default::default()
    };
    let mut out = run(&mut c, &[RawEvent::Close(shed), RawEvent::Close(owned)]);
    c.flush(&mut out);
    let closes: Vec<&Event> = out
        .iter()
        .filter(|e| e.body.name() == "connection_closed")
        .collect();
    assert_eq!(closes.len(), 2, "{out:?}");
    for e in closes {
        let Body::ConnectionClosed { socket_cgroup, .. } = &e.body else {
            unreachable!()
        };
        match &e.owner {
            None => assert_eq!(socket_cgroup.as_deref(), Some("/"), "{e:?}"),
            Some(o) => {
                assert_eq!(o.pid, 4242);
                assert_eq!(*socket_cgroup, None, "the owner names it: {e:?}");
            }
        }
    }
}

#[test]
fn a_keepalive_death_without_owner_names_the_sockets_cgroup() {
    let Some(id) = cgroup2_root_id() else {
        return; // no cgroup2 here: nothing to resolve
    };
    let mut c = correlator();
    // Three probes unanswered (the peer last heard at second 0), then the death.
    let mut records = vec![
        firing(SK, 5000, 1, 0, 0, 1),
        firing(SK, 5000, 2, 0, 1, 2),
        firing(SK, 5000, 3, 0, 2, 3),
    ];
    let mut death = keepalive_death(SK, 5000, 4, 3, 0);
    // No process known (tgid 0): the socket's cgroup, as the timer hook reads it.
    death.owner.cgroup_id = id;
    records.push(RawEvent::Timer(death));
    let out = run(&mut c, &records);
    let e = out
        .iter()
        .find(|e| e.body.name() == "connection_closed")
        .expect("a connection_closed");
    assert!(e.owner.is_none(), "{e:?}");
    let Body::ConnectionClosed {
        cause,
        socket_cgroup,
        ..
    } = &e.body
    else {
        unreachable!()
    };
    assert_eq!(*cause, Cause::KeepaliveTimeout);
    assert_eq!(socket_cgroup.as_deref(), Some("/"), "{e:?}");
}
