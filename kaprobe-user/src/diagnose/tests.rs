//! The rules on recorded sequences: what the correlator gathered at the end of each kind of
//! death made on the real kernel (docs/events.md; the integration tests make them for real).
use kaprobe_common::tcp_state;

use super::*;
use crate::event::diagnosis::{Confidence, Verdict};

const NAT: Settings = Settings {
    nat_timeout_ms: 350_000,
};

fn death(cause: Cause, last_state: u8) -> Death {
    Death {
        cause: Some(cause),
        last_state,
        ..Death::default()
    }
}

/// The client's end in the nginx race (recorded on 6.18: nginx `keepalive_timeout 1s`,
/// Python http.client reusing the connection 2.5 s after its first request): an RST in
/// CLOSE_WAIT, 1.5 s after the FIN, data outstanding.
fn client_race() -> Death {
    Death {
        peer_fin: true,
        error: 32, // EPIPE
        unacked: 67,
        since_heard_ms: Some(1500),
        since_sent_ms: Some(0),
        since_received_ms: Some(2500),
        bytes_received: Some(150),
        ..death(Cause::ResetReceived, tcp_state::CLOSE_WAIT)
    }
}

#[test]
fn reuse_after_the_peers_fin_is_the_keepalive_race() {
    let d = closed(&client_race(), &NAT);
    assert_eq!(d.verdict, Verdict::KeepaliveRace);
    assert_eq!(d.confidence, Confidence::Certain);
    assert_eq!(d.evidence.peer_idle_before_close_ms, Some(1000));
    assert_eq!(d.evidence.reused_after_ms, Some(1500));
    assert!(d.text.contains("after 1.0 s without data"), "{}", d.text);
    assert!(d.text.contains("1.5 s later"), "{}", d.text);
    assert!(d.text.contains("(EPIPE)"), "{}", d.text);
    assert!(d.advice.is_some_and(|a| a.contains("pool idle timeout")));
    // The server's RST seen on this host too is named.
    let confirmed = closed(
        &Death {
            other_end: Some(OtherEnd::TimewaitReset),
            ..client_race()
        },
        &NAT,
    );
    assert_eq!(
        confirmed.evidence.other_end,
        Some("reset_sent:tcp_timewait_socket")
    );
}

#[test]
fn data_crossing_the_peers_fin_is_the_keepalive_race() {
    // The request left before the FIN arrived (since_sent > since_heard).
    let d = closed(
        &Death {
            since_heard_ms: Some(2),
            since_sent_ms: Some(4),
            since_received_ms: Some(1004),
            ..client_race()
        },
        &NAT,
    );
    assert_eq!(d.verdict, Verdict::KeepaliveRace);
    assert_eq!(d.evidence.reused_after_ms, None);
    assert!(d.text.contains("crossed"), "{}", d.text);
    // In ESTABLISHED (the FIN not seen), only the other end on this host tells.
    let d = closed(
        &Death {
            peer_fin: false,
            other_end: Some(OtherEnd::TimewaitReset),
            ..death(Cause::ResetReceived, tcp_state::ESTABLISHED)
        },
        &NAT,
    );
    assert_eq!(d.verdict, Verdict::KeepaliveRace);
}

#[test]
fn an_rst_after_the_peers_fin_with_nothing_sent_is_the_peers_reset() {
    let d = closed(
        &Death {
            unacked: 0,
            since_heard_ms: Some(100),
            since_sent_ms: Some(3000),
            ..client_race()
        },
        &NAT,
    );
    assert_eq!(d.verdict, Verdict::PeerReset);
}

/// An RST answering this side's data in ESTABLISHED after `silence_ms` of silence.
fn reset_after_silence(silence_ms: u64) -> Death {
    Death {
        error: 104,
        unacked: 5,
        since_heard_ms: Some(silence_ms),
        since_sent_ms: Some(0),
        since_received_ms: Some(silence_ms),
        bytes_received: Some(5),
        ..death(Cause::ResetReceived, tcp_state::ESTABLISHED)
    }
}

#[test]
fn an_rst_to_the_first_send_after_a_long_silence_is_a_middlebox() {
    let short_nat = Settings {
        nat_timeout_ms: 2000,
    };
    let d = closed(&reset_after_silence(4000), &short_nat);
    assert_eq!(d.verdict, Verdict::MiddleboxIdleTimeout);
    assert_eq!(d.confidence, Confidence::Likely);
    assert_eq!(d.evidence.silence_ms, Some(4000));
    assert_eq!(d.evidence.nat_timeout_ms, Some(2000));
    assert!(d.text.contains("looks like the peer's"), "{}", d.text);
    // The same silence under a longer --nat-timeout: the peer no longer had it.
    let d = closed(&reset_after_silence(4000), &NAT);
    assert_eq!(d.verdict, Verdict::PeerRestarted);
    assert_eq!(d.evidence.silence_ms, Some(4000));
}

#[test]
fn an_rst_answering_a_keepalive_probe_is_a_restarted_peer() {
    let d = closed(
        &Death {
            probe_outstanding: true,
            unacked: 0,
            since_heard_ms: Some(1000),
            since_sent_ms: Some(1500),
            last_probe_idle_ms: Some(1000),
            keepalive_idle_ms: Some(1000),
            keepalive_probes: 1,
            ..death(Cause::ResetReceived, tcp_state::ESTABLISHED)
        },
        &NAT,
    );
    assert_eq!(d.verdict, Verdict::PeerRestarted);
    assert_eq!(d.evidence.silence_ms, Some(1000));
    assert!(d.text.contains("keepalive probe"), "{}", d.text);
    // The peer's host, on this host too, had no socket for it: certain.
    let d = closed(
        &Death {
            other_end: Some(OtherEnd::NoSocketReset),
            ..reset_after_silence(1000)
        },
        &NAT,
    );
    assert_eq!(
        (d.verdict, d.confidence),
        (Verdict::PeerRestarted, Confidence::Certain)
    );
}

#[test]
fn an_unprompted_rst_is_the_peers_reset() {
    let unprompted = Death {
        unacked: 0,
        since_heard_ms: Some(10),
        since_sent_ms: Some(10),
        ..death(Cause::ResetReceived, tcp_state::ESTABLISHED)
    };
    let d = closed(&unprompted, &NAT);
    assert_eq!(d.verdict, Verdict::PeerReset);
    // The peer on this host reset it from its keepalive timeout: it stopped hearing us.
    let d = closed(
        &Death {
            other_end: Some(OtherEnd::KeepaliveTimeout),
            ..unprompted
        },
        &NAT,
    );
    assert_eq!(
        (d.verdict, d.confidence),
        (Verdict::PeerReset, Confidence::Certain)
    );
    assert!(d.text.contains("keepalive gave up"), "{}", d.text);
}

#[test]
fn unanswered_probes_are_an_unreachable_peer_unless_keepalive_comes_too_late() {
    let timeout = |idle_ms, acks| Death {
        keepalive_idle_ms: Some(idle_ms),
        keepalive_probes: 3 + acks,
        keepalive_acks: acks,
        since_heard_ms: Some(idle_ms + 3000),
        error: 110,
        ..death(Cause::KeepaliveTimeout, tcp_state::ESTABLISHED)
    };
    let nat = Settings {
        nat_timeout_ms: 2000,
    };
    // Idle 4 s against a 2 s middlebox, never answered: keepalive came too late.
    let d = closed(&timeout(4000, 0), &nat);
    assert_eq!(d.verdict, Verdict::MiddleboxIdleTimeout);
    assert_eq!(d.evidence.keepalive_idle_ms, Some(4000));
    assert!(d.advice.is_some_and(|a| a.contains("TCP_KEEPIDLE")));
    // Probes answered before after the same idle time: the middlebox kept it then.
    assert_eq!(
        closed(&timeout(4000, 2), &nat).verdict,
        Verdict::PeerUnreachable
    );
    // Idle 1 s: the peer stopped answering.
    let d = closed(&timeout(1000, 2), &nat);
    assert_eq!(d.verdict, Verdict::PeerUnreachable);
    assert_eq!(d.evidence.probes_answered, Some(2));
    assert!(d.text.contains("TCP cannot tell which"), "{}", d.text);
}

#[test]
fn retransmissions_timing_out_after_a_long_silence_are_a_middlebox_dropping() {
    // Data sent after the silence, retransmitted for 3 s (the retransmissions refresh the
    // last send: the first retransmission, 0.2 s after the send, dates the send).
    let dropped = |silence_ms: u64, error| Death {
        error,
        unacked: 5,
        since_heard_ms: Some(silence_ms + 3200),
        since_sent_ms: Some(100),
        since_first_retransmit_ms: Some(3000),
        ..death(Cause::RetransmitTimeout, tcp_state::ESTABLISHED)
    };
    let nat = Settings {
        nat_timeout_ms: 2000,
    };
    let d = closed(&dropped(4000, 110), &nat);
    assert_eq!(d.verdict, Verdict::MiddleboxIdleTimeout);
    assert_eq!(
        d.evidence.silence_ms,
        Some(4200),
        "an upper bound, by the first RTO"
    );
    assert_eq!(
        closed(&dropped(4000, 110), &NAT).verdict,
        Verdict::PeerUnreachable
    );
    // An ICMP error says so: unreachable, for certain.
    let d = closed(&dropped(10, 113), &nat);
    assert_eq!(
        (d.verdict, d.confidence),
        (Verdict::PeerUnreachable, Confidence::Certain)
    );
    assert!(d.text.contains("EHOSTUNREACH"), "{}", d.text);
}

#[test]
fn handshake_failures() {
    let refused = closed(
        &Death {
            error: 111,
            ..death(Cause::ResetReceived, tcp_state::SYN_SENT)
        },
        &NAT,
    );
    assert_eq!(refused.verdict, Verdict::Refused);
    assert!(refused.text.contains("ECONNREFUSED"), "{}", refused.text);
    let unanswered = closed(
        &Death {
            error: 110,
            ..death(Cause::RetransmitTimeout, tcp_state::SYN_SENT)
        },
        &NAT,
    );
    assert_eq!(unanswered.verdict, Verdict::PeerUnreachable);
    let icmp = closed(
        &Death {
            error: 113,
            ..death(Cause::Other, tcp_state::SYN_SENT)
        },
        &NAT,
    );
    assert_eq!(
        (icmp.verdict, icmp.confidence),
        (Verdict::PeerUnreachable, Confidence::Certain)
    );
}

#[test]
fn this_sides_resets() {
    let abort = |reason: &str| Death {
        reset_reason: Some(reason.to_owned()),
        ..death(Cause::ResetSent, tcp_state::ESTABLISHED)
    };
    let d = closed(&abort("tcp_abort_on_close"), &NAT);
    assert_eq!(d.verdict, Verdict::LocalAbort);
    assert!(d.text.contains("unread data"), "{}", d.text);
    assert_eq!(closed(&abort("unknown"), &NAT).verdict, Verdict::LocalAbort);
    let killed = closed(
        &Death {
            error: 103, // ECONNABORTED
            ..abort("tcp_state")
        },
        &NAT,
    );
    assert!(killed.text.contains("ss -K"), "{}", killed.text);
    // Data after this side shut the connection down: the server's side of the race.
    let d = closed(
        &Death {
            fin_idle_ms: Some(1000),
            since_fin_sent_ms: Some(1500),
            ..abort("tcp_abort_on_data")
        },
        &NAT,
    );
    assert_eq!(d.verdict, Verdict::KeepaliveRace);
    assert_eq!(d.evidence.idle_before_close_ms, Some(1000));
    assert_eq!(d.evidence.closed_before_ms, Some(1500));
}

#[test]
fn orderly_closes_name_who_closed_and_after_what_idle() {
    let d = closed(
        &Death {
            closed_locally: true,
            fin_idle_ms: Some(75_000),
            ..death(Cause::Fin, tcp_state::FIN_WAIT2)
        },
        &NAT,
    );
    assert_eq!(d.verdict, Verdict::Orderly);
    assert_eq!(d.evidence.idle_before_close_ms, Some(75_000));
    assert!(d.text.contains("75 s without data"), "{}", d.text);
    let d = closed(&death(Cause::Fin, tcp_state::LAST_ACK), &NAT);
    assert!(d.text.contains("the peer sent the first FIN"), "{}", d.text);
    assert_eq!(
        closed(&death(Cause::Other, tcp_state::ESTABLISHED), &NAT).verdict,
        Verdict::Unknown
    );
}

fn stray(time_wait: bool, flags: u8, bytes: u32) -> StrayReset {
    StrayReset {
        time_wait,
        no_socket: !time_wait,
        segment_flags: flags,
        segment_bytes: bytes,
        ..StrayReset::default()
    }
}

#[test]
fn stray_resets() {
    use kaprobe_common::tcp_flag::{ACK, PSH, SYN};
    // nginx's TIME_WAIT socket answering the reused connection's request (6.18 recording).
    let d = stray_reset(
        &StrayReset {
            closed: Some(EarlierClose {
                idle_before_ms: 1000,
                fin_before_ms: 1499,
            }),
            listener: true,
            ..stray(true, ACK | PSH, 67)
        },
        &NAT,
    );
    assert_eq!(d.verdict, Verdict::KeepaliveRace);
    assert_eq!(d.evidence.idle_before_close_ms, Some(1000));
    assert_eq!(d.evidence.closed_before_ms, Some(1499));
    assert_eq!(d.evidence.segment_bytes, Some(67));
    assert!(d.text.contains("67 bytes of data"), "{}", d.text);
    assert_eq!(
        stray_reset(&stray(true, ACK, 0), &NAT).verdict,
        Verdict::KeepaliveRace
    );
    // No socket: a SYN is refused; data with no memory of the connection decides nothing.
    assert_eq!(
        stray_reset(&stray(false, SYN, 0), &NAT).verdict,
        Verdict::Refused
    );
    let d = stray_reset(&stray(false, ACK | PSH, 10), &NAT);
    assert_eq!(
        (d.verdict, d.confidence),
        (Verdict::Unknown, Confidence::Undecided)
    );
    // ... but an idle close remembered past TIME_WAIT is the race.
    let d = stray_reset(
        &StrayReset {
            closed: Some(EarlierClose {
                idle_before_ms: 5000,
                fin_before_ms: 70_000,
            }),
            ..stray(false, ACK | PSH, 10)
        },
        &NAT,
    );
    assert_eq!(d.verdict, Verdict::KeepaliveRace);
    assert!(d.text.contains("TIME_WAIT was over"), "{}", d.text);
}
