//! The rules for an RST this side sent that closed no connection (`reset_sent.diagnosis`):
//! from a TIME_WAIT socket, or for a segment no socket wanted.
use kaprobe_common::tcp_flag;

use super::{
    Settings, StrayReset,
    text::{self, dur},
};
use crate::event::diagnosis::{Confidence, Diagnosis, Evidence, Verdict};

/// What the segment the RST answered was, in words.
fn segment(r: &StrayReset) -> String {
    match r.segment_bytes {
        0 if r.segment_flags & tcp_flag::FIN != 0 => "a FIN".to_owned(),
        0 => "an ACK".to_owned(),
        n => format!("{n} bytes of data"),
    }
}

/// The diagnosis of an RST that closed no connection.
pub(crate) fn stray_reset(r: &StrayReset, _s: &Settings) -> Diagnosis {
    let syn = r.segment_flags & tcp_flag::SYN != 0 && r.segment_flags & tcp_flag::ACK == 0;
    let mut evidence = Evidence {
        segment_bytes: (r.segment_bytes > 0).then_some(r.segment_bytes),
        ..Evidence::default()
    };
    if r.no_socket && syn {
        return Diagnosis {
            verdict: Verdict::Refused,
            confidence: Confidence::Certain,
            text: "A connection attempt to a port of this host where nothing listens was refused (RST to its SYN).".into(),
            evidence,
            advice: Some(text::REFUSED),
        };
    }
    if let Some(c) = r.closed {
        evidence.idle_before_close_ms = Some(c.idle_before_ms);
        evidence.closed_before_ms = Some(c.fin_before_ms);
        let still = if r.time_wait {
            "its TIME_WAIT socket"
        } else {
            "no socket (TIME_WAIT was over)"
        };
        return Diagnosis {
            verdict: Verdict::KeepaliveRace,
            confidence: Confidence::Certain,
            text: format!(
                "Keep-alive race, seen from the side that closed: this side closed the connection after {} without data, and the peer sent {} on it {} later; {still} answered with an RST.",
                dur(c.idle_before_ms),
                segment(r),
                dur(c.fin_before_ms)
            )
            .into(),
            evidence,
            advice: Some(text::RACE_SERVER),
        };
    }
    if r.time_wait {
        return Diagnosis {
            verdict: Verdict::KeepaliveRace,
            confidence: Confidence::Certain,
            text: format!(
                "Keep-alive race, seen from the side that closed: the peer sent {} on a connection this side had already closed (its TIME_WAIT socket answered with an RST).",
                segment(r)
            )
            .into(),
            evidence,
            advice: Some(text::RACE_SERVER),
        };
    }
    let whose = if r.listener {
        " (a local server listens on its port)"
    } else {
        ""
    };
    Diagnosis {
        verdict: Verdict::Unknown,
        confidence: Confidence::Undecided,
        text: format!(
            "{} came for a connection this host does not have{whose}: closed longer ago than TIME_WAIT (a keep-alive race after a long pause) or lost when its process or host restarted (the peer then sees peer_restarted); the evidence does not say which.",
            capitalised(&segment(r))
        )
        .into(),
        evidence,
        advice: None,
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
