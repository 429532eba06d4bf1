//! Owners of the sockets that were open before the agent started. The kernel records an
//! owner when a connection starts (`connect()`) or a port starts listening (`listen()`):
//! for a server started before kaprobe, or a connection already open, it never saw that
//! moment. Once, right after the programs are attached, the agent looks them up the way
//! `ls` does (sock_diag in every network namespace, socket inodes in /proc/*/fd):
//! - listeners go into the kernel's `LISTENERS` map (unless `listen()` was seen since), so
//!   the connections they accept get their owner in the kernel, as if kaprobe had seen
//!   `listen()`;
//! - connections go to the correlator, keyed by namespace and addresses, which names their
//!   owner when a record has none (a socket the kernel saw born has its own).
//!
//! It needs root: CAP_SYS_ADMIN (to enter namespaces), CAP_DAC_READ_SEARCH and
//! CAP_SYS_PTRACE (to read other processes' /proc/PID/fd), and the host's pid namespace.
//! Without them it finds what it can (nothing of other users' processes) and says so.
use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use kaprobe_common::{ListenKey, Tuple, tcp_state};

use crate::{
    bpf::loader::Listeners,
    event::Owner,
    host::{diag::ConnKey, netns, owner},
    kernel::privileges::{self, CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN, CAP_SYS_PTRACE},
};

/// Open connections (any state but LISTEN, TIME_WAIT and request sockets): the process
/// holding each, and the socket's inode (which tells a connection from a later one with the
/// same addresses).
pub(crate) type Conns = HashMap<ConnKey, (Owner, u32)>;

/// The owner `conns` holds for the connection of a kernel record's `tuple`.
pub(crate) fn owner_of(conns: &Conns, tuple: &Tuple) -> Option<Owner> {
    if conns.is_empty() {
        return None; // (no key to build once every older connection is gone)
    }
    conns
        .get(&ConnKey::of_tuple(tuple))
        .map(|(owner, _)| owner.clone())
}

/// What the look-up found.
#[derive(Debug, Default)]
pub(crate) struct Existing {
    /// Listening ports and their owners, in the form the kernel records them.
    pub(crate) listeners: Vec<(ListenKey, kaprobe_common::Owner)>,
    pub(crate) conns: Conns,
    /// Why nothing was looked up, if so.
    pub(crate) skipped: Option<&'static str>,
    /// Network namespaces read, and those that could not be.
    pub(crate) namespaces: usize,
    pub(crate) unreadable: usize,
    /// Sockets found with no process holding them that this agent could see.
    pub(crate) unowned: usize,
    /// Listeners written into the kernel's map (not those whose `listen()` it saw since).
    pub(crate) listeners_seeded: usize,
    /// How long the look-up took.
    pub(crate) took: Duration,
}

/// `BPF_NOEXIST`: a `listen()` the kernel recorded since the programs were attached wins.
const BPF_NOEXIST: u64 = 1;

/// Runs [`scan`] (of the `wanted` connections, or all) on a thread of its own, writes the
/// listeners it found into `listeners` (the kernel's map) and sends the rest. At start-up,
/// call once the programs are attached: what starts after that, the kernel sees itself.
pub(crate) fn spawn(
    mut listeners: Option<Listeners>,
    wanted: Option<HashSet<ConnKey>>,
) -> mpsc::Receiver<Existing> {
    let (tx, rx) = mpsc::channel();
    let job = move || {
        let started = Instant::now();
        let mut found = scan(wanted.as_ref());
        if let Some(map) = &mut listeners {
            for (key, owner) in &found.listeners {
                match map.insert(key, owner, BPF_NOEXIST) {
                    Ok(()) => found.listeners_seeded += 1,
                    Err(e) => log::debug!("listener {}/{}: not seeded: {e}", key.netns, key.port),
                }
            }
        }
        found.took = started.elapsed();
        let _ = tx.send(found);
    };
    if let Err(e) = std::thread::Builder::new()
        .name("existing".into())
        .spawn(job)
    {
        log::warn!("owners of connections: not looked up (no thread): {e}");
    }
    rx
}

/// Sockets of every state that a process can hold: all but TIME_WAIT and request sockets.
fn held_states() -> u32 {
    let all = (1u32 << (tcp_state::NEW_SYN_RECV + 1)) - 2;
    all & !(1 << tcp_state::TIME_WAIT) & !(1 << tcp_state::NEW_SYN_RECV)
}

/// `PROC_PID_INIT_INO` and `PROC_CGROUP_INIT_INO` (include/linux/proc_ns.h): the inodes of
/// the host's (initial) pid and cgroup namespaces.
const INIT_PID_NS: u64 = 0xEFFF_FFFC;
const INIT_CGROUP_NS: u64 = 0xEFFF_FFFB;

fn in_init_ns(kind: &str, init: u64) -> bool {
    std::fs::metadata(format!("/proc/self/ns/{kind}")).is_ok_and(|m| m.ino() == init)
}

/// What the look-up lacks to see every process's sockets: entering namespaces, reading
/// other users' /proc/PID/fd (a directory of mode 0500, then ptrace access).
pub(crate) fn missing_caps() -> Vec<&'static str> {
    let caps = privileges::effective_caps();
    [
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
    ]
    .into_iter()
    .filter(|&(cap, _)| caps & (1u64 << cap) == 0)
    .map(|(_, name)| name)
    .collect()
}

/// Looks up every TCP socket of the host and the process holding it.
/// `wanted`: only these connections (and the listeners) are looked up and kept (the
/// agent's look-up of the owners of connections it follows without one): on a host with
/// many connections the answer stays small.
pub(crate) fn scan(wanted: Option<&HashSet<ConnKey>>) -> Existing {
    let mut found = Existing::default();
    // In a container without the host's pid namespace, /proc shows other pids than the
    // kernel records (and only the container's processes): nothing to look up.
    if !in_init_ns("pid", INIT_PID_NS) {
        found.skipped = Some("kaprobe does not run in the host's pid namespace (hostPID)");
        return found;
    }
    // In another cgroup namespace, /proc/PID/cgroup paths are relative to its root.
    let cgroups = in_init_ns("cgroup", INIT_CGROUP_NS);
    let holders = owner::socket_fds();
    let mut seen_listeners = HashSet::new();
    let mut owners: HashMap<u32, Option<(Owner, kaprobe_common::Owner)>> = HashMap::new();
    let root = owner::cgroup2_root();
    for (netns, paths) in netns::namespaces() {
        let netns32 = netns as u32;
        // Each socket is looked at as the dump reads it: only the wanted ones are kept.
        let read = netns::dump_netns(netns, &paths, held_states(), &mut |s| {
            let key = (s.state != tcp_state::LISTEN).then(|| ConnKey::of_diag(netns32, &s));
            if let (Some(w), Some(k)) = (wanted, &key) {
                if !w.contains(k) {
                    return;
                }
            }
            let Some(&(pid, _)) = holders.get(&u64::from(s.inode)) else {
                found.unowned += usize::from(s.inode != 0);
                return;
            };
            let Some((owner, raw)) = owners
                .entry(pid)
                .or_insert_with(|| process(pid, cgroups.then_some(root.as_path())))
                .clone()
            else {
                return; // exited meanwhile
            };
            let Some(key) = key else {
                let key = ListenKey {
                    netns: netns32,
                    port: s.sport,
                    _pad: 0,
                };
                // One per port (IPv4 and IPv6, SO_REUSEPORT groups): the first, lowest pid.
                if seen_listeners.insert((key.netns, key.port)) {
                    found.listeners.push((key, raw));
                }
                return;
            };
            found.conns.insert(key, (owner, s.inode));
        });
        match read {
            Ok(_) => found.namespaces += 1,
            Err(e) => {
                // (What it read before the error is kept: those sockets were there.)
                log::debug!("network namespace {netns}: cannot list its sockets: {e}");
                found.unreadable += 1;
            }
        }
    }
    found
}

/// Which of `conns` (key, socket inode) are still open: those of a namespace that is gone
/// are not, those of one that cannot be read are assumed to be. For forgetting the owners of
/// the connections that ended without a reported close.
pub(crate) fn still_open(conns: &[(ConnKey, u32)]) -> HashSet<(ConnKey, u32)> {
    let wanted = conns.iter().map(|(k, _)| u64::from(k.netns)).collect();
    let asked: HashSet<(ConnKey, u32)> = conns.iter().copied().collect();
    let dumps = netns::dump_namespaces(&wanted, held_states(), &|netns, s| {
        s.state != tcp_state::LISTEN
            && asked.contains(&(ConnKey::of_diag(netns as u32, s), s.inode))
    });
    // Only the asked-for sockets were kept: the open ones.
    let open: HashSet<(ConnKey, u32)> = dumps
        .iter()
        .flat_map(|(&netns, socks)| {
            socks
                .iter()
                .flatten()
                .map(move |s| (ConnKey::of_diag(netns as u32, s), s.inode))
        })
        .collect();
    conns
        .iter()
        .filter(|c| matches!(dumps.get(&u64::from(c.0.netns)), Some(None)) || open.contains(c))
        .copied()
        .collect()
}

/// [`still_open`] on a thread of its own (it reads every namespace concerned).
pub(crate) fn spawn_still_open(
    conns: Vec<(ConnKey, u32)>,
) -> Option<mpsc::Receiver<HashSet<(ConnKey, u32)>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("existing-check".into())
        .spawn(move || {
            let _ = tx.send(still_open(&conns));
        })
        .inspect_err(|e| log::debug!("older connections not re-checked: {e}"))
        .ok()?;
    Some(rx)
}

/// A process as `watch` names owners, and as the kernel records them (`bpf_get_current_*`:
/// tgid, the main thread's comm, the cgroup's id, which is its directory's inode number
/// under `cgroup_root`; none when cgroup paths cannot be trusted, `cgroup_root` None).
fn process(pid: u32, cgroup_root: Option<&Path>) -> Option<(Owner, kaprobe_common::Owner)> {
    let mut owner = owner::owner_of_pid(pid)?;
    if cgroup_root.is_none() {
        let data = owner.data_mut();
        data.cgroup = None;
        data.container_id = None;
    }
    let mut raw = kaprobe_common::Owner {
        tgid: pid,
        ..Default::default()
    };
    let name = owner.comm.as_bytes();
    let n = name.len().min(raw.comm.len() - 1);
    raw.comm[..n].copy_from_slice(&name[..n]);
    if let (Some(path), Some(root)) = (owner.cgroup.as_deref(), cgroup_root) {
        raw.cgroup_id =
            std::fs::metadata(root.join(path.trim_start_matches('/'))).map_or(0, |m| m.ino());
    }
    Some((owner, raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::diag::DiagSock;

    #[test]
    fn a_record_and_a_dump_of_one_connection_have_one_key() {
        let mut t = Tuple {
            family: libc::AF_INET as u16,
            netns: 7,
            sport: 40000,
            dport: 80,
            ..Default::default()
        };
        t.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        t.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let mut s = DiagSock {
            family: libc::AF_INET as u8,
            state: tcp_state::ESTABLISHED,
            timer: 0,
            retrans: 0,
            sport: 40000,
            dport: 80,
            src: [0; 16],
            dst: [0; 16],
            expires_ms: 0,
            rqueue: 0,
            wqueue: 0,
            uid: 0,
            inode: 1,
            info: None,
        };
        s.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        s.dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        // Bytes past an IPv4 address do not count.
        s.src[8] = 0xff;
        assert_eq!(ConnKey::of_tuple(&t), ConnKey::of_diag(7, &s));
        assert_ne!(ConnKey::of_tuple(&t), ConnKey::of_diag(8, &s));
        s.dport = 81;
        assert_ne!(ConnKey::of_tuple(&t), ConnKey::of_diag(7, &s));
    }

    /// The key of one end of a loopback connection of this process.
    fn key_of(s: &std::net::TcpStream) -> ConnKey {
        let (local, peer) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
        let v4 = |a: std::net::SocketAddr| match a.ip() {
            std::net::IpAddr::V4(ip) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&ip.octets());
                b
            }
            std::net::IpAddr::V6(_) => unreachable!("a v4 loopback connection"),
        };
        let family = libc::AF_INET as u16;
        let netns = crate::host::netns::own_netns() as u32;
        ConnKey::new(
            netns,
            family,
            &v4(local),
            &v4(peer),
            local.port(),
            peer.port(),
        )
    }

    fn inode_of(s: &std::net::TcpStream) -> u32 {
        use std::os::fd::AsRawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", s.as_raw_fd())).unwrap();
        let text = link.to_str().unwrap();
        text["socket:[".len()..text.len() - 1].parse().unwrap()
    }

    #[test]
    fn a_connection_is_still_open_until_it_ends() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (c, s) = (
            (key_of(&client), inode_of(&client)),
            (key_of(&server), inode_of(&server)),
        );
        let open = still_open(&[c, s]);
        assert!(open.contains(&c) && open.contains(&s), "{open:?}");
        // Another socket with the same addresses would be another connection.
        let other = (c.0, c.1 + 1);
        assert!(!still_open(&[other]).contains(&other));
        // The client closes first (it goes to TIME_WAIT, which nobody holds), then the
        // server (LAST_ACK, then gone once the client's ACK is in: loopback, at once).
        drop(client);
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &server, &mut buf).unwrap(), 0);
        drop(server);
        // (Loopback teardown is done when close() returns; allow for a busy machine.)
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut open = still_open(&[c, s]);
        while !open.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            open = still_open(&[c, s]);
        }
        assert!(open.is_empty(), "{open:?}");
    }

    #[test]
    fn this_process_is_recorded_as_the_kernel_would() {
        let me = std::process::id();
        let root = owner::cgroup2_root();
        let (owner, raw) = process(me, Some(&root)).expect("this process");
        assert_eq!(raw.tgid, me);
        assert_eq!(
            crate::event::owner::comm_text(&raw.comm),
            owner.comm.as_ref()
        );
        if owner.cgroup.is_some() {
            assert_ne!(raw.cgroup_id, 0, "{owner:?}");
        }
    }
}
