//! A summary's tables in the human format, one line per group after the event's line.
use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use crate::event::summary::{Activity, CloseStats, PathPicture, Remote, Report, ServerPicture};

/// Human tables for a report, one line each (after the event's own line).
pub(crate) fn human(out: &mut String, r: &Report) {
    fn activity(a: &Activity) -> String {
        let resets: u64 = a.resets.values().flat_map(|m| m.values()).sum();
        let closes: Vec<String> = a
            .closes_by_cause
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        format!(
            "probes {:>5}  acks {:>5}  timeouts {:>4}  resets {:>4}  closes {}",
            a.keepalive_probes,
            a.keepalive_acks,
            a.keepalive_timeouts,
            resets,
            if closes.is_empty() {
                "-".to_owned()
            } else {
                closes.join(", ")
            }
        )
    }
    fn closes(c: &CloseStats) -> String {
        let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} ms"));
        let b = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} B"));
        format!(
            "closes {:>5}  median life {:>9}  median bytes {:>9}  closed here {:>3.0}%  TIME_WAIT here {} / peer {}",
            c.count,
            ms(c.median_lifetime_ms),
            b(c.median_bytes),
            c.closed_locally * 100.0,
            c.time_wait_local,
            c.time_wait_remote
        )
    }
    let endpoint = |r: &Remote| {
        let host = match r.daddr {
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        };
        if r.dport == 0 {
            format!("{host}:*")
        } else {
            format!("{host}:{}", r.dport)
        }
    };
    let more = |out: &mut String, n: u64| {
        if n > 0 {
            let _ = writeln!(out, "    ... and {n} more");
        }
    };
    if !r.by_remote.top.is_empty() {
        let _ = writeln!(out, "  by remote endpoint:");
        for row in &r.by_remote.top {
            let _ = writeln!(
                out,
                "    {:<45} {}",
                endpoint(&row.key),
                activity(&row.value)
            );
        }
        more(out, r.by_remote.more_groups);
    }
    if !r.by_owner.top.is_empty() {
        let _ = writeln!(out, "  by owner:");
        for row in &r.by_owner.top {
            let who = format!(
                "{} (pid {}) {}",
                row.key.comm,
                row.key.pid,
                row.key.cgroup.as_deref().unwrap_or("")
            );
            let _ = writeln!(out, "    {who:<45} {}", activity(&row.value));
        }
        more(out, r.by_owner.more_groups);
    }
    if !r.closes_by_listening_port.top.is_empty() {
        let _ = writeln!(out, "  closes by listening port:");
        for row in &r.closes_by_listening_port.top {
            let port = format!("port {} [netns {}]", row.key.port, row.key.netns);
            let _ = writeln!(out, "    {port:<45} {}", closes(&row.value));
        }
        more(out, r.closes_by_listening_port.more_groups);
    }
    if !r.closes_by_remote.top.is_empty() {
        let _ = writeln!(out, "  closes by remote endpoint:");
        for row in &r.closes_by_remote.top {
            let _ = writeln!(out, "    {:<45} {}", endpoint(&row.key), closes(&row.value));
        }
        more(out, r.closes_by_remote.more_groups);
    }
    if !r.keepalive_by_listening_port.top.is_empty() {
        let _ = writeln!(out, "  keep-alive by listening port:");
        for row in &r.keepalive_by_listening_port.top {
            let port = format!("port {} [netns {}]", row.key.port, row.key.netns);
            let _ = writeln!(out, "    {port:<45} {}", server(&row.value));
        }
        more(out, r.keepalive_by_listening_port.more_groups);
    }
    if !r.paths_by_remote.top.is_empty() {
        let _ = writeln!(out, "  paths by remote endpoint:");
        for row in &r.paths_by_remote.top {
            let _ = writeln!(out, "    {:<45} {}", endpoint(&row.key), path(&row.value));
        }
        more(out, r.paths_by_remote.more_groups);
    }
}

fn verdicts(v: &BTreeMap<&'static str, u64>) -> String {
    if v.is_empty() {
        return "-".to_owned();
    }
    v.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

fn server(s: &ServerPicture) -> String {
    let idle = s.idle_before_close.map_or("-".to_owned(), |sp| {
        format!(
            "{} (min {}, max {})",
            secs(sp.median_ms),
            secs(sp.min_ms),
            secs(sp.max_ms)
        )
    });
    format!(
        "idle closes {:>5} after {idle}  clients raced {:>4}  TIME_WAIT here {:>5}  verdicts {}",
        s.idle_closes,
        s.clients_raced,
        s.time_wait_here,
        verdicts(&s.verdicts)
    )
}

fn path(p: &PathPicture) -> String {
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), secs);
    let estimate = p
        .idle_timeout_between_ms
        .map(|(lo, hi)| {
            format!(
                "  idle timeout on the path between {} and {}",
                secs(lo),
                secs(hi)
            )
        })
        .unwrap_or_default();
    format!(
        "silence survived up to {}  died after {}{estimate}  verdicts {}",
        opt(p.longest_silence_survived_ms),
        opt(p.shortest_silence_died_ms),
        verdicts(&p.verdicts)
    )
}
