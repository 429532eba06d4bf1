//! What `ls` prints: JSON Lines, or a table with the risks explained.
use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr, time::Duration};

use super::audit::{Conn, Risk, Source};

/// One JSON object per line.
pub(crate) fn json_lines(conns: &[Conn]) -> String {
    let mut text = String::new();
    for c in conns {
        // Serialising our own model cannot fail (no maps with non-string keys).
        if let Ok(line) = serde_json::to_string(c) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
}

/// A duration in milliseconds, short: `850ms`, `4.2s`, `42s`, `12m05s`, `3h20m`.
pub(crate) fn short_ms(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if s < 100 {
        format!("{s}s")
    } else if s < 6000 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s / 60) % 60)
    }
}

fn addr_port(a: &IpAddr, p: u16) -> String {
    match a {
        IpAddr::V4(a) => format!("{a}:{p}"),
        IpAddr::V6(a) => format!("[{a}]:{p}"),
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".to_owned())
}

/// The human format: an aligned table, a summary line and each risk found in words.
pub(crate) fn human(conns: &[Conn], scanned: usize, nat: Duration) -> String {
    const HEAD: [&str; 13] = [
        "NETNS",
        "LOCAL",
        "REMOTE",
        "STATE",
        "OWNER",
        "KEEPALIVE idle/intvl/cnt",
        "USER_TIMEOUT",
        "HEARD",
        "KA_TIMER",
        "PROBES",
        "UNACKED",
        "SEND_Q",
        "RISKS",
    ];
    let mut rows: Vec<[String; 13]> = vec![HEAD.map(str::to_owned)];
    for c in conns {
        let ka = &c.keepalive;
        let keepalive = match ka.enabled {
            None => "?".to_owned(),
            Some(false) => "off".to_owned(),
            Some(true) => format!(
                "on {}/{}/{}{}",
                opt(ka.idle_s, |v| v.to_string()),
                opt(ka.interval_s, |v| v.to_string()),
                opt(ka.probes, |v| v.to_string()),
                match ka.source {
                    Some(Source::Socket) => " socket",
                    Some(Source::Sysctl) => " sysctl",
                    None => "",
                }
            ),
        };
        let risks: Vec<&str> = c.risks.iter().map(|r| r.as_str()).collect();
        rows.push([
            c.netns.to_string(),
            addr_port(&c.saddr, c.sport),
            addr_port(&c.daddr, c.dport),
            c.state.to_owned(),
            opt(c.owner.as_ref(), |o| format!("{}/{}", o.pid, o.comm)),
            keepalive,
            opt(c.user_timeout_ms, |v| short_ms(v.into())),
            opt(c.last_heard_ms, |v| short_ms(v.into())),
            opt(c.timer_expires_ms, |v| short_ms(v.into())),
            opt(c.probes_outstanding, |v| v.to_string()),
            opt(c.unacked_bytes, |v| v.to_string()),
            c.queued_bytes.to_string(),
            if risks.is_empty() {
                "-".to_owned()
            } else {
                risks.join(",")
            },
        ]);
    }
    let mut widths = [0usize; 13];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    if !conns.is_empty() {
        for r in &rows {
            let mut line = String::new();
            for (i, (cell, w)) in r.iter().zip(widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let _ = write!(line, "{cell:<w$}");
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
    }
    // Summary.
    let mut counts: Vec<(Risk, usize)> = Risk::ALL
        .iter()
        .map(|&r| (r, conns.iter().filter(|c| c.risks.contains(&r)).count()))
        .collect();
    counts.retain(|&(_, n)| n > 0);
    let at_risk = conns.iter().filter(|c| !c.risks.is_empty()).count();
    let namespaces: BTreeSet<u64> = conns.iter().map(|c| c.netns).collect();
    let _ = write!(
        text,
        "{} connection(s) in {} of {} network namespace(s) scanned; ",
        conns.len(),
        namespaces.len(),
        scanned
    );
    if at_risk == 0 {
        let _ = writeln!(
            text,
            "no keepalive risks (NAT timeout {}s)",
            nat.as_secs_f64()
        );
    } else {
        let list: Vec<String> = counts
            .iter()
            .map(|(r, n)| format!("{n} {}", r.as_str()))
            .collect();
        let _ = writeln!(
            text,
            "{at_risk} at risk (NAT timeout {}s): {}",
            nat.as_secs_f64(),
            list.join(", ")
        );
        for (r, _) in &counts {
            let _ = writeln!(text, "  {}: {}", r.as_str(), r.explain(nat));
        }
    }
    text
}
