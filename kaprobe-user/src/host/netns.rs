//! Network namespaces: every one of the host, entering one, and dumping the TCP sockets of
//! a set of them (sock_diag), for `ls` and for `watch`'s checks.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::PathBuf,
};

use kaprobe_common::tcp_state;

use super::{
    diag::{ConnKey, DiagSock, DiagSocket},
    sys::{Sysctls, keepalive_sysctls},
};

/// Every network namespace of the host: inode → paths that lead to it (a process's
/// `/proc/PID/ns/net`, or a bind mount in /run/netns), from one pass over both.
pub(crate) fn namespaces() -> BTreeMap<u64, Vec<PathBuf>> {
    let mut found: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut add = |path: PathBuf| {
        // stat follows the magic link to the namespace's nsfs inode.
        if let Ok(meta) = std::fs::metadata(&path) {
            let paths = found.entry(meta.ino()).or_default();
            // A few paths suffice: the next is only tried if a process exited meanwhile.
            if paths.len() < 4 {
                paths.push(path);
            }
        }
    };
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            add(e.path());
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
            {
                add(e.path().join("ns/net"));
            }
        }
    }
    found
}

/// The inode of this process's own network namespace (0 if unreadable).
pub(crate) fn own_netns() -> u64 {
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino())
}

/// Opens the first of `paths` that still leads to a namespace.
pub(crate) fn open_netns(paths: &[PathBuf]) -> io::Result<File> {
    let mut last = io::Error::from(io::ErrorKind::NotFound);
    for p in paths {
        match File::open(p) {
            Ok(f) => return Ok(f),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Runs `f` on a new thread that has entered the network namespace `ns` (only that thread
/// moves; it ends with `f`).
pub(crate) fn in_netns<T: Send>(ns: &File, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd; it changes only this thread's network
            // namespace, and this thread ends when `f` returns.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

/// Dumps the TCP sockets of the calling thread's namespace, handing each to `each`.
fn dump_here(mask: u32, each: &mut dyn FnMut(DiagSock)) -> io::Result<Sysctls> {
    let sysctls = keepalive_sysctls();
    let mut sock = DiagSocket::open()?;
    sock.dump(libc::AF_INET as u8, mask, each)?;
    match sock.dump(libc::AF_INET6 as u8, mask, each) {
        Ok(()) => {}
        // A kernel without IPv6 has no such sockets.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    Ok(sysctls)
}

/// For each connection, whether the kernel no longer has its socket (sock_diag in its
/// network namespace). `None` where that cannot be told: the namespace could not be
/// entered or read, or this process does not see it at all (not among /proc/*/ns/net and
/// /run/netns: gone, or only invisible to an agent in a container without the host's pid
/// namespace). An unseen namespace is unknown, not gone: a connection there is never taken
/// for dead.
pub(crate) fn sockets_gone(tuples: &[kaprobe_common::Tuple]) -> Vec<Option<bool>> {
    let wanted = tuples.iter().map(|t| u64::from(t.netns)).collect();
    let keys: HashSet<ConnKey> = tuples.iter().map(ConnKey::of_tuple).collect();
    let dumps = dump_namespaces(&wanted, u32::MAX, &|netns, s| {
        keys.contains(&ConnKey::of_diag(netns as u32, s))
    });
    judge_gone(&dumps, tuples)
}

/// [`sockets_gone`]'s answer from the dumps of the namespaces.
fn judge_gone(
    dumps: &HashMap<u64, Option<Vec<DiagSock>>>,
    tuples: &[kaprobe_common::Tuple],
) -> Vec<Option<bool>> {
    let present: HashSet<ConnKey> = dumps
        .iter()
        .flat_map(|(&netns, socks)| {
            socks
                .iter()
                .flatten()
                .filter(|s| s.state != tcp_state::CLOSE)
                .map(move |s| ConnKey::of_diag(netns as u32, s))
        })
        .collect();
    tuples
        .iter()
        .map(|t| match dumps.get(&u64::from(t.netns)) {
            Some(Some(_)) => Some(!present.contains(&ConnKey::of_tuple(t))),
            Some(None) | None => None,
        })
        .collect()
}

/// The TCP sockets (states in `mask`) of each network namespace in `wanted` (inodes) that
/// `keep` (namespace, socket) keeps: a namespace that no longer exists is absent, one that
/// cannot be read (also part way) is `None`.
pub(crate) fn dump_namespaces(
    wanted: &HashSet<u64>,
    mask: u32,
    keep: &(dyn Fn(u64, &DiagSock) -> bool + Sync),
) -> HashMap<u64, Option<Vec<DiagSock>>> {
    namespaces()
        .into_iter()
        .filter(|(netns, _)| wanted.contains(netns))
        .map(|(netns, paths)| {
            let mut socks = Vec::new();
            let read = dump_netns(netns, &paths, mask, &mut |s| {
                if keep(netns, &s) {
                    socks.push(s);
                }
            })
            .inspect_err(|e| {
                log::debug!("network namespace {netns}: cannot list its sockets: {e}");
            });
            (netns, read.ok().map(|_| socks))
        })
        .collect()
}

/// Dumps the TCP sockets of network namespace `netns` at `paths` (from
/// [`namespaces`]), handing each to `each` as it is read. This process's own is dumped in
/// place: no setns, so no CAP_SYS_ADMIN.
pub(crate) fn dump_netns(
    netns: u64,
    paths: &[std::path::PathBuf],
    mask: u32,
    each: &mut (dyn FnMut(DiagSock) + Send),
) -> io::Result<Sysctls> {
    if netns == own_netns() {
        return dump_here(mask, each);
    }
    open_netns(paths)
        .and_then(|ns| in_netns(&ns, || dump_here(mask, each)))
        .and_then(|r| r)
}

#[cfg(test)]
mod tests {
    use kaprobe_common::{AF_INET, Tuple};

    use super::*;

    fn conn(netns: u32, sport: u16) -> (Tuple, DiagSock) {
        let mut t = Tuple {
            sport,
            dport: 80,
            family: AF_INET,
            netns,
            ..Tuple::default()
        };
        t.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        t.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let s = DiagSock {
            family: libc::AF_INET as u8,
            state: tcp_state::ESTABLISHED,
            sport,
            dport: 80,
            src: t.saddr,
            dst: t.daddr,
            ..DiagSock::default()
        };
        (t, s)
    }

    #[test]
    fn only_a_namespace_read_can_say_a_socket_is_gone() {
        let (alive, alive_sock) = conn(1, 1000);
        let (dead, _) = conn(1, 1001);
        let (unreadable, _) = conn(2, 1002);
        let (unseen, _) = conn(3, 1003);
        let mut dumps = HashMap::new();
        dumps.insert(1, Some(vec![alive_sock]));
        dumps.insert(2, None);
        assert_eq!(
            judge_gone(&dumps, &[alive, dead, unreadable, unseen]),
            [Some(false), Some(true), None, None],
            "a namespace this process cannot see is unknown, not gone"
        );
    }
}
