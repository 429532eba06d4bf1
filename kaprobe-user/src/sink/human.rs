//! The human format: one aligned line per event, what happened in words.
use std::{fmt::Write as _, net::IpAddr};

use crate::event::{Body, Cause, Endpoints, Event, Side};

fn endpoints(c: &Endpoints) -> String {
    let one = |a: &IpAddr, p: u16| match a {
        IpAddr::V4(a) => format!("{a}:{p}"),
        IpAddr::V6(a) => format!("[{a}]:{p}"),
    };
    format!("{} > {}", one(&c.saddr, c.sport), one(&c.daddr, c.dport))
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

fn cause_text(c: Cause) -> &'static str {
    match c {
        Cause::KeepaliveTimeout => "keepalive timeout",
        Cause::ResetReceived => "reset by peer",
        Cause::ResetSent => "reset by this side",
        Cause::RetransmitTimeout => "retransmission timeout",
        Cause::Fin => "FIN",
        Cause::Other => "other",
    }
}

/// The human line of an event: time, event, endpoints, what happened in words.
pub(crate) fn human(line: &mut String, e: &Event) {
    let ts = e.ts.rfc3339();
    // UTC, as in the JSON, marked so (`Z`): a reader would take a bare time for local time.
    let time = ts.get(11..26).unwrap_or(&ts);
    let conn = e.conn.as_ref().map(endpoints).unwrap_or_default();
    // A column wide enough for IPv4 ends; longer (IPv6) ends keep two spaces before the words.
    let gap = if conn.len() >= 47 { " " } else { "" };
    let _ = write!(line, "{time}Z {:<18} {conn:<47} {gap}", e.body.name());
    let _ = match &e.body {
        Body::AgentStart { .. } | Body::Summary { .. } | Body::AgentStop { .. } => {
            agent(line, &e.body)
        }
        Body::KeepaliveProbe { .. } | Body::KeepaliveAck { .. } | Body::KeepaliveTimeout { .. } => {
            keepalive(line, &e.body)
        }
        Body::ResetSent { .. }
        | Body::ResetReceived { .. }
        | Body::FinSent { .. }
        | Body::FinReceived { .. } => reset_or_fin(line, &e.body),
        Body::ConnectionClosed { .. } => closed(line, &e.body),
        Body::EventsLost { .. } => lost(line, &e.body),
    };
    if let Some(c) = &e.conn {
        let _ = write!(line, " [netns {}", c.netns);
        if let Some(o) = &e.owner {
            let _ = write!(line, ", pid {} {}", o.pid, o.comm);
            if let Some(id) = &o.container_id {
                let _ = write!(line, ", container {}", id.get(..12).unwrap_or(id));
            } else if let (Some(cg), Body::ConnectionClosed { .. }) = (&o.cgroup, &e.body) {
                // (On the close, where who owned the connection matters most.)
                let _ = write!(line, ", cgroup {cg}");
            }
        } else if let Body::ConnectionClosed {
            socket_cgroup: Some(cg),
            ..
        } = &e.body
        {
            // No process known: whose cgroup the socket is in.
            let _ = write!(line, ", cgroup {cg}");
        }
        line.push(']');
    }
    while line.ends_with(' ') {
        line.pop();
    }
    // The line ends with why, in words.
    let diagnosis = match &e.body {
        Body::ConnectionClosed { diagnosis, .. } => Some(diagnosis),
        Body::ResetSent { diagnosis, .. } => diagnosis.as_ref(),
        _ => None,
    };
    if let Some(d) = diagnosis {
        let _ = write!(line, " -- {}: {}", d.verdict.as_str(), d.text);
    }
}

/// `agent_start`, `summary`, `agent_stop`.
fn agent(line: &mut String, body: &Body) -> std::fmt::Result {
    match body {
        Body::AgentStart {
            version,
            kernel,
            mode,
            hooks,
            features,
            birth_budget,
            ..
        } => {
            let kinds: Vec<&str> = hooks.iter().map(|h| h.attach.as_str()).collect();
            let mut kinds_u = kinds.clone();
            kinds_u.dedup();
            write!(
                line,
                "kaprobe {version} on Linux {kernel}: {} hooks ({}), HZ {}, reset reasons {}, mode {mode}",
                hooks.len(),
                kinds_u.join("+"),
                features.hz,
                if features.reset_reason {
                    "available"
                } else {
                    "unavailable (kernel < 6.10)"
                }
            )?;
            match birth_budget {
                Some(n) if *mode == "default" => write!(
                    line,
                    ", starts of connections without keepalive recorded up to {n} per CPU and second (bursts of 10 s' worth)"
                ),
                _ => Ok(()),
            }
        }
        Body::Summary {
            interval_ms,
            summary,
        } => {
            let _ = write!(
                line,
                "{} connection events in the last {}",
                summary.events,
                secs(*interval_ms)
            );
            let mut tables = String::new();
            super::summary::human(&mut tables, summary);
            if !tables.is_empty() {
                line.push('\n');
                line.push_str(tables.trim_end_matches('\n'));
            }
            Ok(())
        }
        Body::AgentStop {
            duration_ms,
            totals,
            ..
        } => {
            let causes: Vec<String> = totals
                .closed_by_cause
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            write!(
                line,
                "after {}: keepalive {} probes, {} acks, {} timeouts; resets {} sent, {} received; \
             FINs {} sent, {} received; {} closed ({}); lost {} records, {} untracked sockets, \
             {} connection starts not recorded (--birth-budget)",
                secs(*duration_ms),
                totals.keepalive_probes,
                totals.keepalive_acks,
                totals.keepalive_timeouts,
                totals.resets_sent,
                totals.resets_received,
                totals.fins_sent,
                totals.fins_received,
                totals.connections_closed,
                if causes.is_empty() {
                    "none".to_owned()
                } else {
                    causes.join(", ")
                },
                totals.events_lost,
                totals.untracked_sockets,
                totals.births_shed,
            )
        }
        _ => Ok(()),
    }
}

/// `keepalive_probe`, `keepalive_ack`, `keepalive_timeout`.
fn keepalive(line: &mut String, body: &Body) -> std::fmt::Result {
    match body {
        Body::KeepaliveProbe {
            probe,
            max_probes,
            idle_ms,
            interval_ms,
            inferred,
        } => write!(
            line,
            "probe {probe}/{max_probes} sent after {} without hearing the peer (interval {}){}",
            secs(*idle_ms),
            secs(*interval_ms),
            if *inferred {
                "; not traced, inferred from the next firing"
            } else {
                ""
            }
        ),
        Body::KeepaliveAck { probes_unanswered } => {
            write!(
                line,
                "peer answered ({probes_unanswered} probe(s) were outstanding)"
            )
        }
        Body::KeepaliveTimeout {
            probes,
            max_probes,
            idle_ms,
            error,
            user_timeout_ms,
            inferred,
        } => {
            let ut = user_timeout_ms
                .map(|ms| format!(", TCP_USER_TIMEOUT {ms} ms"))
                .unwrap_or_default();
            write!(
                line,
                "keepalive timeout: {probes}/{max_probes} probes unanswered after {} idle{ut} ({}){}",
                secs(*idle_ms),
                error.unwrap_or("no error"),
                if *inferred {
                    "; not traced: the socket was gone when its timer was due"
                } else {
                    ""
                }
            )
        }
        _ => Ok(()),
    }
}

/// `reset_sent`, `reset_received`, `fin_sent`, `fin_received`.
fn reset_or_fin(line: &mut String, body: &Body) -> std::fmt::Result {
    match body {
        Body::ResetSent {
            reason,
            state,
            answering,
            ..
        } => {
            let answering = answering
                .map(|a| format!(" answering {a}"))
                .unwrap_or_default();
            match state {
                Some(s) => write!(line, "RST sent ({reason}) from {s}{answering}"),
                None => write!(
                    line,
                    "RST sent ({reason}){answering}, with no socket for it"
                ),
            }
        }
        Body::ResetReceived {
            during_keepalive,
            state,
        } => write!(
            line,
            "RST received in {state}{}",
            if *during_keepalive {
                " while a keepalive probe was outstanding"
            } else {
                ""
            }
        ),
        Body::FinSent { state } => write!(line, "FIN sent (now {state})"),
        Body::FinReceived { state } => write!(line, "FIN received (now {state})"),
        _ => Ok(()),
    }
}

/// `connection_closed`.
fn closed(line: &mut String, body: &Body) -> std::fmt::Result {
    match body {
        Body::ConnectionClosed {
            cause,
            error,
            closed_by,
            time_wait,
            lifetime_ms,
            idle_ms,
            keepalive_probes,
            keepalive_acks,
            bytes_sent,
            bytes_received,
            direction,
            ..
        } => {
            let by = if *closed_by == Side::Local {
                "this side"
            } else {
                "the peer"
            };
            let life = lifetime_ms
                .map(|ms| format!(" after {}", secs(ms)))
                .unwrap_or_default();
            // Who opened it: `>` always reads this side > the peer.
            let dir = match direction {
                Some("outbound") => " (this side connected)",
                Some("inbound") => " (accepted from the peer)",
                _ => "",
            };
            let err = error.map(|e| format!(" ({e})")).unwrap_or_default();
            // Worth saying when the peer had been silent for a while (a second or more).
            let idle = idle_ms
                .filter(|ms| *ms >= 1000)
                .map(|ms| format!(", {} after the peer was last heard", secs(ms)))
                .unwrap_or_default();
            let tw = if *time_wait {
                ", this side holds TIME_WAIT"
            } else {
                ""
            };
            let bytes = match (bytes_sent, bytes_received) {
                (Some(s), Some(r)) => format!("; {s} bytes sent, {r} received"),
                _ => String::new(),
            };
            write!(
                line,
                "closed{life}{dir}: {}{err}{idle}, ended by {by}; keepalive {keepalive_probes} probes, {keepalive_acks} acks{bytes}{tw}",
                cause_text(*cause)
            )
        }
        _ => Ok(()),
    }
}

/// `events_lost`.
fn lost(line: &mut String, body: &Body) -> std::fmt::Result {
    match body {
        Body::EventsLost {
            count,
            source,
            total,
            records,
        } => match *source {
            "ring_buffer" => {
                let ends = records.as_ref().map_or(0, |r| r.connection_ends);
                write!(
                    line,
                    "LOST {count} records: ring buffer full ({total} in total); {ends} connection ends unreported"
                )
            }
            "recursion" => write!(
                line,
                "LOST {count} hook runs: skipped by the kernel, program already running ({total} in total)"
            ),
            "agent_conn_table" => write!(
                line,
                "{count} connections no longer followed: agent table full ({total} in total)"
            ),
            _ => write!(
                line,
                "{count} sockets not tracked: kernel connection table full ({total} in total)"
            ),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_event as event;

    #[test]
    fn human_line_spells_out_the_cause() {
        let e = Event {
            body: Body::KeepaliveTimeout {
                probes: 3,
                max_probes: 3,
                idle_ms: 4096,
                error: Some("ETIMEDOUT"),
                user_timeout_ms: None,
                inferred: false,
            },
            ..event(5000, 80, "10.0.0.1", "192.0.2.7")
        };
        let mut line = String::new();
        human(&mut line, &e);
        assert!(
            line.starts_with("16:00:00.123456Z keepalive_timeout  10.0.0.1:5000 > 192.0.2.7:80"),
            "{line}"
        );
        assert!(
            line.contains("keepalive timeout: 3/3 probes unanswered after 4.1 s idle (ETIMEDOUT)"),
            "{line}"
        );
    }
}
