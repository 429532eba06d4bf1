//! The rules for a connection's end (`connection_closed.diagnosis`), by the kernel's cause.
use std::borrow::Cow;

use kaprobe_common::tcp_state;

use super::{
    Death, OtherEnd, Settings,
    text::{self, dur},
};
use crate::event::{
    Cause,
    diagnosis::{Confidence, Diagnosis, Evidence, Verdict},
    errno_name,
};

const ETIMEDOUT: i32 = 110;

fn diagnosis(
    verdict: Verdict,
    confidence: Confidence,
    text: impl Into<Cow<'static, str>>,
    evidence: Evidence,
    advice: Option<&'static str>,
) -> Diagnosis {
    Diagnosis {
        verdict,
        confidence,
        text: text.into(),
        evidence,
        advice,
    }
}

/// The diagnosis of a connection's end.
pub(crate) fn closed(d: &Death, s: &Settings) -> Diagnosis {
    let handshake = matches!(d.last_state, tcp_state::SYN_SENT | tcp_state::SYN_RECV);
    match d.cause {
        Some(Cause::Fin) => orderly(d),
        Some(Cause::ResetReceived) if d.last_state == tcp_state::SYN_SENT => refused(d),
        Some(Cause::ResetReceived) => reset_received(d, s),
        Some(Cause::KeepaliveTimeout) => keepalive_timeout(d, s),
        Some(Cause::RetransmitTimeout) if handshake => no_answer_to_syn(d),
        Some(Cause::RetransmitTimeout) => retransmit_timeout(d, s),
        Some(Cause::ResetSent) => reset_sent(d),
        Some(Cause::Other) | None if handshake && d.error != 0 => no_answer_to_syn(d),
        Some(Cause::Other) | None => unknown(d),
    }
}

fn orderly(d: &Death) -> Diagnosis {
    let mut evidence = Evidence::default();
    let text = if d.closed_locally {
        match d.fin_idle_ms {
            Some(idle) if idle >= 1000 => {
                evidence.idle_before_close_ms = Some(idle);
                Cow::Owned(format!(
                    "Orderly close: this side closed the connection after {} without data (its keep-alive or pool idle timeout) and holds TIME_WAIT.",
                    dur(idle)
                ))
            }
            _ => Cow::Borrowed("Orderly close: this side sent the first FIN and holds TIME_WAIT."),
        }
    } else {
        Cow::Borrowed("Orderly close: the peer sent the first FIN (and holds TIME_WAIT).")
    };
    diagnosis(Verdict::Orderly, Confidence::Certain, text, evidence, None)
}

fn refused(d: &Death) -> Diagnosis {
    let err = errno_name(d.error).unwrap_or("ECONNREFUSED");
    diagnosis(
        Verdict::Refused,
        Confidence::Likely,
        format!(
            "Connection refused ({err}): the peer's host answered the SYN with an RST, so nothing listens on that port (or a firewall rejects the connection with a reset, which looks the same from here)."
        ),
        Evidence::default(),
        Some(text::REFUSED),
    )
}

/// The silence before this side sent what the RST (or nothing) answered: from the last
/// segment heard to this side's last data (or probe).
fn silence_before_send(d: &Death) -> Option<u64> {
    if d.probe_outstanding {
        return d.last_probe_idle_ms.or(d.since_heard_ms);
    }
    match (d.since_heard_ms, d.since_sent_ms) {
        (Some(heard), Some(sent)) if sent <= heard => Some(heard - sent),
        _ => None,
    }
}

fn reset_received(d: &Death, s: &Settings) -> Diagnosis {
    if d.peer_fin {
        if let Some(race) = race_after_peer_fin(d) {
            return race;
        }
    }
    let prompted = d.probe_outstanding || d.unacked > 0;
    let what = if d.probe_outstanding {
        "keepalive probe"
    } else {
        "data"
    };
    let mut evidence = Evidence {
        nat_timeout_ms: Some(s.nat_timeout_ms),
        bytes_received: d.bytes_received,
        other_end: d.other_end.map(OtherEnd::as_str),
        ..Evidence::default()
    };
    match d.other_end {
        Some(OtherEnd::TimewaitReset | OtherEnd::AbortOnData) => {
            evidence.silence_ms = silence_before_send(d);
            return diagnosis(
                Verdict::KeepaliveRace,
                Confidence::Certain,
                "Keep-alive race: this side sent data on the connection just as the peer closed it for being idle (their FIN and this side's data crossed); the peer's host, seen on this host too, answered from the connection it had closed.",
                evidence,
                Some(text::RACE_CLIENT),
            );
        }
        Some(OtherEnd::NoSocketReset) => {
            evidence.silence_ms = silence_before_send(d);
            return diagnosis(
                Verdict::PeerRestarted,
                Confidence::Certain,
                format!(
                    "The peer no longer had the connection: its host (seen on this host too) answered this side's {what} with an RST for no socket (its process restarted, or it closed the connection longer ago than TIME_WAIT)."
                ),
                evidence,
                Some(text::RESTARTED),
            );
        }
        Some(OtherEnd::KeepaliveTimeout) => {
            evidence.silence_ms = d.since_heard_ms;
            return diagnosis(
                Verdict::PeerReset,
                Confidence::Certain,
                "The peer's keepalive gave up on the connection: it had stopped hearing this side (this side's segments, or their answers, were lost on the way) and reset it; the peer is on this host too.",
                evidence,
                Some(text::UNREACHABLE),
            );
        }
        None => {}
    }
    if prompted {
        let silence = silence_before_send(d);
        evidence.silence_ms = silence;
        match silence {
            Some(ms) if ms >= s.nat_timeout_ms => diagnosis(
                Verdict::MiddleboxIdleTimeout,
                Confidence::Likely,
                format!(
                    "The first {what} after {} of silence (at least --nat-timeout, {}) was answered by an RST: a NAT, firewall or load balancer on the path had forgotten the idle connection. From one host an RST made by a middlebox looks like the peer's: a peer that restarted during the silence would look the same.",
                    dur(ms),
                    dur(s.nat_timeout_ms)
                ),
                evidence,
                Some(text::MIDDLEBOX),
            ),
            _ => diagnosis(
                Verdict::PeerRestarted,
                Confidence::Likely,
                format!(
                    "The peer answered this side's {what}{} with an RST: it no longer had the connection (its process or host restarted, or another host took its address). A middlebox that forgets connections sooner than --nat-timeout ({}) would look the same.",
                    silence
                        .map(|ms| format!(" after {} of silence", dur(ms)))
                        .unwrap_or_default(),
                    dur(s.nat_timeout_ms)
                ),
                evidence,
                Some(text::RESTARTED),
            ),
        }
    } else {
        evidence.silence_ms = d.since_heard_ms;
        match d.since_heard_ms {
            Some(ms) if ms >= s.nat_timeout_ms => diagnosis(
                Verdict::MiddleboxIdleTimeout,
                Confidence::Likely,
                format!(
                    "An RST came, answering nothing this side sent, after {} of silence (at least --nat-timeout, {}): a middlebox that resets both ends when it expires an idle connection (e.g. a load balancer with TCP reset on idle timeout), or the peer aborting it.",
                    dur(ms),
                    dur(s.nat_timeout_ms)
                ),
                evidence,
                Some(text::MIDDLEBOX),
            ),
            _ => diagnosis(
                Verdict::PeerReset,
                Confidence::Likely,
                "The peer reset the connection without being prompted (nothing this side sent was outstanding): its application aborted it (a close with unread data, SO_LINGER 0, a timeout of its own) or an operator killed it.",
                evidence,
                Some(text::PEER_RESET),
            ),
        }
    }
}

/// The RST came after the peer's FIN: this side used a connection the peer had closed.
fn race_after_peer_fin(d: &Death) -> Option<Diagnosis> {
    let heard = d.since_heard_ms?; // the FIN is the last segment heard before the RST
    let sent = d.since_sent_ms?;
    if d.unacked == 0 && sent >= heard && d.other_end.is_none() {
        // Nothing sent since the FIN: the peer closed, then reset on its own.
        return None;
    }
    // The peer's idle time before its FIN: from the last data (either way, as far as this
    // side still knows: its own last send was overwritten if it sent again) to the FIN.
    let last_data = match d.since_received_ms {
        Some(received) if sent > heard => Some(received.min(sent)),
        r => r,
    };
    let peer_idle = last_data.and_then(|l| l.checked_sub(heard));
    let mut evidence = Evidence {
        peer_idle_before_close_ms: peer_idle,
        other_end: d.other_end.map(OtherEnd::as_str),
        ..Evidence::default()
    };
    let idle_words = peer_idle
        .map(|ms| format!(" after {} without data (its keep-alive timeout)", dur(ms)))
        .unwrap_or_default();
    let err = errno_name(d.error)
        .map(|e| format!(" ({e})"))
        .unwrap_or_default();
    let text = if sent < heard {
        evidence.reused_after_ms = Some(heard - sent);
        format!(
            "Keep-alive race: the peer closed this idle connection{idle_words}, and this side sent data on it {} later; the peer's host answered with an RST{err}.",
            dur(heard - sent)
        )
    } else {
        format!(
            "Keep-alive race: the peer closed this idle connection{idle_words} while this side's data was on its way (they crossed); the peer's host answered with an RST{err}."
        )
    };
    Some(diagnosis(
        Verdict::KeepaliveRace,
        Confidence::Certain,
        text,
        evidence,
        Some(text::RACE_CLIENT),
    ))
}

fn keepalive_timeout(d: &Death, s: &Settings) -> Diagnosis {
    let evidence = Evidence {
        keepalive_idle_ms: d.keepalive_idle_ms,
        probes_sent: Some(d.keepalive_probes),
        probes_answered: Some(d.keepalive_acks),
        silence_ms: d.since_heard_ms,
        nat_timeout_ms: Some(s.nat_timeout_ms),
        bytes_received: d.bytes_received,
        ..Evidence::default()
    };
    match d.keepalive_idle_ms {
        // Never answered, after an idle time the middlebox outlasts: the usual case of a
        // keepalive set too late for the path. (Probes answered earlier, after the same
        // idle time, rule it out.)
        Some(idle) if idle >= s.nat_timeout_ms && d.keepalive_acks == 0 => diagnosis(
            Verdict::MiddleboxIdleTimeout,
            Confidence::Likely,
            format!(
                "Keepalive probes went unanswered; the first went out after {} idle, at least --nat-timeout ({}): a NAT or firewall on the path had likely forgotten the connection before the first probe (ls calls this risk keepalive_too_late). The peer dying during the silence would look the same.",
                dur(idle),
                dur(s.nat_timeout_ms)
            ),
            evidence,
            Some(text::KEEPALIVE_TOO_LATE),
        ),
        _ => diagnosis(
            Verdict::PeerUnreachable,
            Confidence::Likely,
            format!(
                "The peer stopped answering: {} keepalive probe(s) in a row went unanswered{}, and no RST came. Its host is down, the network is partitioned, or a firewall drops the traffic: TCP cannot tell which.",
                d.keepalive_probes.saturating_sub(d.keepalive_acks).max(1),
                d.since_heard_ms
                    .map(|ms| format!(" ({} after it was last heard)", dur(ms)))
                    .unwrap_or_default()
            ),
            evidence,
            Some(text::UNREACHABLE),
        ),
    }
}

fn retransmit_timeout(d: &Death, s: &Settings) -> Diagnosis {
    // Retransmissions refresh `lsndtime`: the silence before the data first went out is
    // measured to its first retransmission instead (longer by the first timeout, 0.2 s or
    // more).
    let silence = match (d.since_heard_ms, d.since_first_retransmit_ms) {
        (Some(heard), Some(retrans)) if retrans <= heard => Some(heard - retrans),
        _ => silence_before_send(d),
    };
    let evidence = Evidence {
        silence_ms: silence,
        nat_timeout_ms: Some(s.nat_timeout_ms),
        bytes_received: d.bytes_received,
        ..Evidence::default()
    };
    let err = errno_name(d.error).unwrap_or("ETIMEDOUT");
    match silence {
        Some(ms) if ms >= s.nat_timeout_ms && d.error == ETIMEDOUT => diagnosis(
            Verdict::MiddleboxIdleTimeout,
            Confidence::Likely,
            format!(
                "Data sent after {} of silence (at least --nat-timeout, {}) was never acknowledged and the retransmissions timed out ({err}): a NAT or firewall on the path had likely forgotten the idle connection and drops its packets. The peer dying during the silence would look the same.",
                dur(ms),
                dur(s.nat_timeout_ms)
            ),
            evidence,
            Some(text::MIDDLEBOX),
        ),
        _ if d.error != ETIMEDOUT && d.error != 0 => diagnosis(
            Verdict::PeerUnreachable,
            Confidence::Certain,
            format!(
                "Data went unacknowledged and the network reported the peer unreachable ({err}, from an ICMP error) until the retransmissions timed out."
            ),
            evidence,
            Some(text::UNREACHABLE),
        ),
        _ => diagnosis(
            Verdict::PeerUnreachable,
            Confidence::Likely,
            format!(
                "The peer stopped acknowledging data and the retransmissions timed out ({err}), with no RST: its host is down, the network is partitioned, or a firewall drops the traffic; TCP cannot tell which."
            ),
            evidence,
            Some(text::UNREACHABLE),
        ),
    }
}

fn no_answer_to_syn(d: &Death) -> Diagnosis {
    let err = errno_name(d.error).unwrap_or("ETIMEDOUT");
    let (confidence, text) = if d.error == ETIMEDOUT || d.error == 0 {
        (
            Confidence::Likely,
            format!(
                "The connection attempt was never answered ({err}): the peer's host is down or unreachable, or a firewall drops the SYN; TCP cannot tell which."
            ),
        )
    } else {
        (
            Confidence::Certain,
            format!(
                "The connection attempt failed: the network reported the peer unreachable ({err}, from an ICMP error)."
            ),
        )
    };
    diagnosis(
        Verdict::PeerUnreachable,
        confidence,
        text,
        Evidence::default(),
        Some(text::UNREACHABLE),
    )
}

fn reset_sent(d: &Death) -> Diagnosis {
    let reason = d.reset_reason.as_deref().unwrap_or("unknown");
    if reason == "tcp_abort_on_data" {
        let evidence = Evidence {
            idle_before_close_ms: d.fin_idle_ms,
            closed_before_ms: d.since_fin_sent_ms,
            ..Evidence::default()
        };
        let idle = d
            .fin_idle_ms
            .map(|ms| format!(" after {} without data", dur(ms)))
            .unwrap_or_default();
        let before = d
            .since_fin_sent_ms
            .map(|ms| format!(" {} later", dur(ms)))
            .unwrap_or_default();
        return diagnosis(
            Verdict::KeepaliveRace,
            Confidence::Certain,
            format!(
                "Keep-alive race, seen from the side that closed: this side had shut the connection down{idle}, and the peer sent data on it{before}; the kernel reset it (tcp_abort_on_data)."
            ),
            evidence,
            Some(text::RACE_SERVER),
        );
    }
    let how = match reason {
        "tcp_abort_on_close" => "it closed the socket with unread data",
        "tcp_abort_on_linger" => "it closed the socket with SO_LINGER 0",
        "tcp_abort_on_memory" => "the kernel was out of memory for orphaned sockets",
        // (tcp_disconnect(): SO_LINGER 0, disconnect(), and sock_destroy with ECONNABORTED.)
        "tcp_state" if d.error == 103 => {
            "the socket was destroyed by an operator or a program (ss -K, sock_destroy)"
        }
        "tcp_state" => "it aborted the connection (a close with SO_LINGER 0, or disconnect())",
        _ => {
            "the application aborted it (a close with unread data, SO_LINGER 0) or an operator killed it (ss -K)"
        }
    };
    diagnosis(
        Verdict::LocalAbort,
        Confidence::Certain,
        format!("This side reset the connection ({reason}): {how}."),
        Evidence::default(),
        None,
    )
}

fn unknown(d: &Death) -> Diagnosis {
    let err = errno_name(d.error)
        .map(|e| format!(" with {e}"))
        .unwrap_or_default();
    diagnosis(
        Verdict::Unknown,
        Confidence::Undecided,
        format!(
            "The kernel closed the connection{err} without a FIN exchange, RST or timeout that kaprobe saw: the evidence does not say why."
        ),
        Evidence::default(),
        None,
    )
}
