//! `kaprobe ls`: a keepalive audit of the host's live TCP connections, in every network
//! namespace, from one snapshot (no eBPF). The output is documented in docs/events.md
//! ("`kaprobe ls`").
//!
//! Sources: sock_diag ([`crate::host::diag`]) in each namespace for the connections, their timers and
//! `tcp_info`; /proc/*/fd for who holds each socket; a copy of that descriptor
//! (pidfd_getfd) for its keepalive options; /proc/sys inside each namespace for the
//! defaults ([`crate::host::sys`]).

mod audit;
mod render;

use std::{
    collections::HashMap,
    io::{self, BufWriter, IsTerminal, Write},
    time::Duration,
};

use kaprobe_common::tcp_state;

use audit::{Conn, Keepalive, last_heard_ms, risks};
use render::{human, json_lines};

use crate::{
    cli::{Format, LsArgs, StateArg},
    error::{Fatal, exit},
    event::{Owner, state_name},
    host::{
        diag::{self, DiagSock},
        netns, owner,
        sys::{self, SockOpts, Sysctls},
    },
    kernel::privileges,
    sink::Filter,
};

/// The sock_diag state mask: the states asked for, or every state but LISTEN (request
/// sockets, NEW_SYN_RECV, come with SYN_RECV).
pub(crate) fn state_mask(states: &[StateArg]) -> u32 {
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
pub(crate) fn snapshot(
    filter: &Filter,
    mask: u32,
    nat: Duration,
) -> Result<(Vec<Conn>, usize), Fatal> {
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
        let mut socks = Vec::new();
        match netns::dump_netns(*inode, paths, mask, &mut |s| socks.push(s)) {
            Ok(sysctls) => dumps.push(NsDump {
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
            let (saddr, daddr, _) = s.endpoints();
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
            conns.push(conn(s, d, owner, opts, nat));
        }
    }
    conns.sort_by(|a, b| {
        (a.netns, a.saddr, a.sport, a.daddr, a.dport)
            .cmp(&(b.netns, b.saddr, b.sport, b.daddr, b.dport))
    });
    Ok((conns, dumps.len()))
}

/// The audit of socket `s` of namespace `d`, held by `owner` with options `opts`.
fn conn(
    s: &DiagSock,
    d: &NsDump,
    owner: Option<Owner>,
    opts: Option<SockOpts>,
    nat: Duration,
) -> Conn {
    let (saddr, daddr, family) = s.endpoints();
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
pub(crate) fn run(args: LsArgs) -> Result<(), Fatal> {
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

#[cfg(test)]
mod tests;
