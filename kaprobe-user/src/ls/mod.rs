//! `kaprobe ls`: a keepalive audit of the host's live TCP connections, in every network
//! namespace, from one snapshot (no eBPF). The output is documented in docs/events.md
//! ("`kaprobe ls`").
//!
//! Sources: sock_diag ([`diag`]) in each namespace for the connections, their timers and
//! `tcp_info`; /proc/*/fd for who holds each socket; a copy of that descriptor
//! (pidfd_getfd) for its keepalive options; /proc/sys inside each namespace for the
//! defaults ([`sys`]).

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
    io::{self, BufWriter, IsTerminal, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use kaprobe_common::tcp_state;
use serde::Serialize;

use crate::{
    cli::{Format, LsArgs, StateArg},
    error::{Fatal, exit},
    event::Owner,
    event::{Family, state_name},
    host::netns,
    host::owner,
    host::{diag, sys},
    kernel::privileges,
    sink::Filter,
};
use diag::{DiagSock, TcpInfo};
use sys::{SockOpts, Sysctls};

/// The sock_diag state mask: the states asked for, or every state but LISTEN (request
/// sockets, NEW_SYN_RECV, come with SYN_RECV).
pub fn state_mask(states: &[StateArg]) -> u32 {
    if states.is_empty() {
        return ((1u32 << (tcp_state::NEW_SYN_RECV + 1)) - 2) & !(1 << tcp_state::LISTEN);
    }
    let mut mask = 0;
    for s in states {
        mask |= 1 << s.code();
        if *s == StateArg::SynRecv {
            mask |= 1 << tcp_state::NEW_SYN_RECV;
        }
    }
    mask
}

/// Where the effective keepalive values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// At least one of idle, interval, probes differs from the namespace's sysctl: the
    /// socket set it.
    Socket,
    /// All three equal the namespace's sysctls (the socket set none, or set the same values).
    Sysctl,
}

/// A connection's keepalive: null fields when unknown (nobody holds the socket, or its
/// descriptor could not be copied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Keepalive {
    pub enabled: Option<bool>,
    pub idle_s: Option<u32>,
    pub interval_s: Option<u32>,
    pub probes: Option<u32>,
    pub source: Option<Source>,
}

impl Keepalive {
    /// From the socket's options and its namespace's sysctls. getsockopt(TCP_KEEPIDLE,
    /// TCP_KEEPINTVL, TCP_KEEPCNT) answers with the sysctl when the socket set none, so the
    /// values are always the effective ones, and the source is told by comparison: all three
    /// equal to the sysctls → `sysctl`, else `socket` (null when the sysctls are unreadable).
    pub fn new(o: &SockOpts, sys: &Sysctls) -> Keepalive {
        let source = match (sys.time_s, sys.intvl_s, sys.probes) {
            (Some(t), Some(i), Some(p)) => Some(if (o.idle_s, o.intvl_s, o.probes) == (t, i, p) {
                Source::Sysctl
            } else {
                Source::Socket
            }),
            _ => None,
        };
        Keepalive {
            enabled: Some(o.keepalive),
            idle_s: Some(o.idle_s),
            interval_s: Some(o.intvl_s),
            probes: Some(o.probes),
            source,
        }
    }
}

/// What may go wrong with a connection's keepalive, from one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    NoKeepaliveIdle,
    KeepaliveTooLate,
    KeepaliveSuppressed,
}

impl Risk {
    pub const ALL: [Risk; 3] = [
        Risk::NoKeepaliveIdle,
        Risk::KeepaliveTooLate,
        Risk::KeepaliveSuppressed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Risk::NoKeepaliveIdle => "no_keepalive_idle",
            Risk::KeepaliveTooLate => "keepalive_too_late",
            Risk::KeepaliveSuppressed => "keepalive_suppressed",
        }
    }

    fn explain(self, nat: Duration) -> String {
        let nat = format!("{}s", nat.as_secs_f64());
        match self {
            Risk::NoKeepaliveIdle => format!(
                "keepalive is off and the peer has not been heard for longer than the NAT/firewall \
                 idle timeout ({nat}): a middlebox may have dropped the connection's state already, \
                 so the next send may hang or be reset, and a vanished peer is never detected. \
                 Turn SO_KEEPALIVE on with TCP_KEEPIDLE below {nat}."
            ),
            Risk::KeepaliveTooLate => format!(
                "keepalive is on, but its first probe comes only after an idle time at least the \
                 NAT/firewall idle timeout ({nat}): the middlebox forgets the connection before \
                 keepalive refreshes it. Set TCP_KEEPIDLE (or net.ipv4.tcp_keepalive_time) below \
                 {nat}."
            ),
            Risk::KeepaliveSuppressed => "data is unacknowledged and the retransmission (or \
                 zero-window probe) timer has already fired: keepalive never probes while data is \
                 in flight, so if the peer is gone only retransmissions giving up (tcp_retries2, \
                 about 15 min) or TCP_USER_TIMEOUT end the connection. Set TCP_USER_TIMEOUT."
                .to_owned(),
        }
    }
}

/// Milliseconds since the peer was last heard: the later of the last data and the last ACK
/// received (what the kernel's keepalive timer measures idle time from).
pub fn last_heard_ms(info: &TcpInfo) -> u32 {
    info.last_data_recv_ms.min(info.last_ack_recv_ms)
}

/// The risk flags of a connection (only ESTABLISHED connections have any):
/// - `no_keepalive_idle`: keepalive off, peer not heard for longer than `nat`;
/// - `keepalive_too_late`: keepalive on, effective idle time ≥ `nat`;
/// - `keepalive_suppressed`: keepalive on, data unacknowledged (`tcpi_unacked` > 0 or the
///   write queue not empty: the kernel's own test for skipping a probe), and the
///   retransmission or zero-window probe timer has fired since the peer last acknowledged
///   anything (`tcpi_backoff` or `tcpi_retransmits` > 0), so that a busy healthy
///   connection with data momentarily in flight is not flagged.
pub fn risks(
    state: u8,
    ka: &Keepalive,
    info: Option<&TcpInfo>,
    wqueue: u32,
    nat: Duration,
) -> Vec<Risk> {
    let mut out = Vec::new();
    if state != tcp_state::ESTABLISHED {
        return out;
    }
    let nat_ms = nat.as_millis();
    let idle_past_nat = info.is_some_and(|i| u128::from(last_heard_ms(i)) > nat_ms);
    if ka.enabled == Some(false) && idle_past_nat {
        out.push(Risk::NoKeepaliveIdle);
    }
    if ka.enabled != Some(true) {
        return out;
    }
    if ka.idle_s.is_some_and(|s| u128::from(s) * 1000 >= nat_ms) {
        out.push(Risk::KeepaliveTooLate);
    }
    if let Some(i) = info {
        // tcp_keepalive_timer() does nothing while packets are out or the write queue holds
        // data: exactly then keepalive cannot fire (even on a healthy busy connection, for
        // that moment; a stalled one stays flagged until the retransmissions give up).
        if i.unacked > 0 || wqueue > 0 {
            out.push(Risk::KeepaliveSuppressed);
        }
    }
    out
}

/// One connection, as `ls --format json` writes it.
#[derive(Debug, Clone, Serialize)]
pub struct Conn {
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub family: Family,
    pub netns: u64,
    pub state: &'static str,
    pub owner: Option<Owner>,
    pub keepalive: Keepalive,
    pub user_timeout_ms: Option<u32>,
    pub last_heard_ms: Option<u32>,
    pub probes_outstanding: Option<u8>,
    pub timer_expires_ms: Option<u32>,
    pub unacked_bytes: Option<u32>,
    pub queued_bytes: u32,
    pub risks: Vec<Risk>,
}

/// Addresses as on the wire: an IPv6 socket with v4-mapped addresses on both ends is
/// IPv4, as in the event log.
pub fn endpoints(s: &DiagSock) -> (IpAddr, IpAddr, Family) {
    if s.family == libc::AF_INET6 as u8 {
        let src = Ipv6Addr::from(s.src);
        let dst = Ipv6Addr::from(s.dst);
        match (src.to_ipv4_mapped(), dst.to_ipv4_mapped()) {
            (Some(a), Some(b)) => (IpAddr::V4(a), IpAddr::V4(b), Family::Ipv4),
            _ => (IpAddr::V6(src), IpAddr::V6(dst), Family::Ipv6),
        }
    } else {
        let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
        (v4(&s.src), v4(&s.dst), Family::Ipv4)
    }
}

/// What one namespace gave.
struct NsDump {
    inode: u64,
    sysctls: Sysctls,
    socks: Vec<DiagSock>,
}

fn missing_caps() -> Vec<&'static str> {
    let caps = privileges::effective_caps();
    let mut missing = Vec::new();
    if caps & (1 << privileges::CAP_SYS_ADMIN) == 0 {
        missing.push("CAP_SYS_ADMIN (to enter network namespaces)");
    }
    if caps & (1 << privileges::CAP_SYS_PTRACE) == 0 {
        missing.push("CAP_SYS_PTRACE (to read other processes' sockets and their options)");
    }
    missing
}

/// Takes the snapshot: every connection passing `filter`, sorted by namespace and
/// endpoints; and how many namespaces were read.
pub fn snapshot(filter: &Filter, mask: u32, nat: Duration) -> Result<(Vec<Conn>, usize), Fatal> {
    let fds = owner::socket_fds();
    let mut namespaces = netns::namespaces();
    if !filter.netns.is_empty() {
        for want in &filter.netns {
            if !namespaces.contains_key(&u64::from(*want)) {
                log::warn!("no network namespace with inode {want}");
            }
        }
        namespaces.retain(|inode, _| u32::try_from(*inode).is_ok_and(|n| filter.matches_netns(n)));
    }
    let mut dumps = Vec::new();
    let mut first_error = None;
    for (inode, paths) in &namespaces {
        match netns::dump_netns(*inode, paths, mask) {
            Ok((sysctls, socks)) => dumps.push(NsDump {
                inode: *inode,
                sysctls,
                socks,
            }),
            // The namespace went away meanwhile: nothing to report.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                log::warn!("network namespace {inode}: cannot list its sockets: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    if dumps.is_empty() {
        if let Some(e) = first_error {
            return Err(Fatal::new(
                exit::RUNTIME,
                format!("cannot list TCP sockets (sock_diag): {e}"),
            ));
        }
    }

    let mut owners: HashMap<u32, Option<Owner>> = HashMap::new();
    let mut borrower = sys::Borrower::default();
    let mut conns = Vec::new();
    for d in &dumps {
        for s in &d.socks {
            let (saddr, daddr, family) = endpoints(s);
            if !filter.matches_endpoints(&saddr, s.sport, &daddr, s.dport) {
                continue;
            }
            let held = (s.inode != 0)
                .then(|| fds.get(&u64::from(s.inode)))
                .flatten()
                .copied();
            let owner = held.and_then(|(pid, _)| {
                owners
                    .entry(pid)
                    .or_insert_with(|| owner::owner_of_pid(pid))
                    .clone()
            });
            if !filter.matches_owner(owner.as_ref()) {
                continue;
            }
            let opts = held.and_then(|(pid, fd)| {
                borrower
                    .sockopts(pid, fd, u64::from(s.inode))
                    .map_err(|e| {
                        log::debug!("socket {} of pid {pid} (fd {fd}): {e}", s.inode);
                    })
                    .ok()
            });
            conns.push(conn(s, saddr, daddr, family, d, owner, opts, nat));
        }
    }
    conns.sort_by(|a, b| {
        (a.netns, a.saddr, a.sport, a.daddr, a.dport)
            .cmp(&(b.netns, b.saddr, b.sport, b.daddr, b.dport))
    });
    Ok((conns, dumps.len()))
}

#[allow(clippy::too_many_arguments)]
fn conn(
    s: &DiagSock,
    saddr: IpAddr,
    daddr: IpAddr,
    family: Family,
    d: &NsDump,
    owner: Option<Owner>,
    opts: Option<SockOpts>,
    nat: Duration,
) -> Conn {
    let keepalive = opts
        .map(|o| Keepalive::new(&o, &d.sysctls))
        .unwrap_or_default();
    let info = s.info.as_ref();
    // sk_timer of a socket someone holds is its keepalive timer (an orphan's is its
    // FIN_WAIT2 timeout). A pending retransmission or zero-window probe timer hides it.
    let timer_expires_ms = (s.timer == diag::timer::KEEPALIVE && keepalive.enabled == Some(true))
        .then_some(s.expires_ms);
    let probes_outstanding = match info {
        Some(i) => Some(i.probes),
        None => (s.timer == diag::timer::KEEPALIVE).then_some(s.retrans),
    };
    Conn {
        saddr,
        sport: s.sport,
        daddr,
        dport: s.dport,
        family,
        netns: d.inode,
        state: state_name(s.state),
        owner,
        keepalive,
        user_timeout_ms: opts.and_then(|o| (o.user_timeout_ms != 0).then_some(o.user_timeout_ms)),
        last_heard_ms: info.map(last_heard_ms),
        probes_outstanding,
        timer_expires_ms,
        // Sent and unacknowledged: the send queue less what is not sent yet.
        unacked_bytes: info
            .and_then(|i| i.notsent_bytes)
            .map(|n| s.wqueue.saturating_sub(n)),
        queued_bytes: s.wqueue,
        risks: risks(s.state, &keepalive, info, s.wqueue, nat),
    }
}

/// `kaprobe ls`.
pub fn run(args: LsArgs) -> Result<(), Fatal> {
    let missing = missing_caps();
    if !missing.is_empty() {
        return Err(Fatal::new(
            exit::PERMISSION,
            format!(
                "kaprobe ls must run as root: missing {}",
                missing.join(", ")
            ),
        ));
    }
    let filter = Filter::from_args(&args.filter);
    let (mut conns, scanned) = snapshot(&filter, state_mask(&args.state), args.nat_timeout)?;
    if args.at_risk {
        conns.retain(|c| !c.risks.is_empty());
    }
    let stdout = io::stdout();
    let format = args.format.unwrap_or(if stdout.is_terminal() {
        Format::Human
    } else {
        Format::Json
    });
    let text = match format {
        Format::Json => json_lines(&conns),
        Format::Human => human(&conns, scanned, args.nat_timeout),
    };
    let mut out = BufWriter::new(stdout.lock());
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // `kaprobe ls | head`: the reader has what it wanted.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Fatal::new(
            exit::OUTPUT,
            format!("cannot write the output: {e}"),
        )),
    }
}

/// One JSON object per line.
pub fn json_lines(conns: &[Conn]) -> String {
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
pub fn short_ms(ms: u64) -> String {
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
pub fn human(conns: &[Conn], scanned: usize, nat: Duration) -> String {
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

#[cfg(test)]
mod tests;
