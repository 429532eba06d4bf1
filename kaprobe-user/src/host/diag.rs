//! NETLINK_SOCK_DIAG / inet_diag: a dump of the TCP sockets of the calling thread's network
//! namespace, with `struct tcp_info` (INET_DIAG_INFO) for full sockets.
//!
//! Layouts are those of include/uapi/linux/{netlink,inet_diag,sock_diag,tcp}.h; every read
//! is bounds-checked, so a short or damaged message is an error, never a panic.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use kaprobe_common::Tuple;

use crate::event::Family;

/// `SOCK_DIAG_BY_FAMILY` (sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Netlink control messages (netlink.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300;
/// `INET_DIAG_INFO` attribute: a `struct tcp_info`.
const INET_DIAG_INFO: u16 = 2;

const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;

/// `idiag_timer` values (net/ipv4/inet_diag.c): which timer `idiag_expires` is about
/// (1 retransmission, 3 TIME_WAIT, 4 zero-window probe: not used here).
pub(crate) mod timer {
    /// `sk_timer`: the keepalive timer (for an orphaned FIN_WAIT2 socket, its FIN_WAIT2
    /// timeout); `idiag_retrans` = keepalive probes outstanding.
    pub(crate) const KEEPALIVE: u8 = 2;
}

/// The parts of `struct tcp_info` that `ls` uses. Offsets (tcp.h): probes 3, backoff 4,
/// retransmits 2, unacked 24, last_data_recv 52, last_ack_recv 56, notsent_bytes 144.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct TcpInfo {
    /// `icsk_retransmits`: RTO firings since the last forward progress.
    pub(crate) retransmits: u8,
    /// `icsk_probes_out`: keepalive (or zero-window) probes unanswered.
    pub(crate) probes: u8,
    /// `icsk_backoff`: exponential backoff of the retransmission timer.
    pub(crate) backoff: u8,
    /// `packets_out`: segments sent and not yet acknowledged.
    pub(crate) unacked: u32,
    /// Milliseconds since data was last received.
    pub(crate) last_data_recv_ms: u32,
    /// Milliseconds since an ACK was last received (`rcv_tstamp`).
    pub(crate) last_ack_recv_ms: u32,
    /// Bytes written but not yet sent (Linux 4.6+; None on shorter `tcp_info`).
    pub(crate) notsent_bytes: Option<u32>,
}

impl TcpInfo {
    /// Decodes a `struct tcp_info` (any length from the 4.x layout on: fields past the end
    /// of a shorter one are absent).
    pub(crate) fn parse(b: &[u8]) -> Option<TcpInfo> {
        Some(TcpInfo {
            retransmits: *b.get(2)?,
            probes: *b.get(3)?,
            backoff: *b.get(4)?,
            unacked: u32_at(b, 24)?,
            last_data_recv_ms: u32_at(b, 52)?,
            last_ack_recv_ms: u32_at(b, 56)?,
            notsent_bytes: u32_at(b, 144),
        })
    }
}

/// One socket from the dump (`struct inet_diag_msg` and its INET_DIAG_INFO).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct DiagSock {
    /// AF_INET or AF_INET6.
    pub(crate) family: u8,
    /// TCP state (`TCP_ESTABLISHED` = 1, ...).
    pub(crate) state: u8,
    pub(crate) timer: u8,
    pub(crate) retrans: u8,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    /// Addresses as the kernel gives them: 4 bytes used for AF_INET, 16 for AF_INET6.
    pub(crate) src: [u8; 16],
    pub(crate) dst: [u8; 16],
    /// Milliseconds until `timer` expires.
    pub(crate) expires_ms: u32,
    pub(crate) rqueue: u32,
    /// For a connection: bytes written and not yet acknowledged (`write_seq - snd_una`).
    pub(crate) wqueue: u32,
    pub(crate) uid: u32,
    /// Socket inode; 0 for TIME_WAIT and request sockets (nobody holds them).
    pub(crate) inode: u32,
    /// Present for full sockets (not TIME_WAIT or request sockets).
    pub(crate) info: Option<TcpInfo>,
}

impl DiagSock {
    /// Addresses as on the wire: an IPv6 socket with v4-mapped addresses on both ends is
    /// IPv4, as in the event log.
    pub(crate) fn endpoints(&self) -> (IpAddr, IpAddr, Family) {
        if self.family == libc::AF_INET6 as u8 {
            let src = Ipv6Addr::from(self.src);
            let dst = Ipv6Addr::from(self.dst);
            match (src.to_ipv4_mapped(), dst.to_ipv4_mapped()) {
                (Some(a), Some(b)) => (IpAddr::V4(a), IpAddr::V4(b), Family::Ipv4),
                _ => (IpAddr::V6(src), IpAddr::V6(dst), Family::Ipv6),
            }
        } else {
            let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
            (v4(&self.src), v4(&self.dst), Family::Ipv4)
        }
    }
}

/// What a received datagram meant for the dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    More,
    Done,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"))
}

/// The dump request: `nlmsghdr` + `inet_diag_req_v2` for TCP sockets of `family` in the
/// states of the bit mask `states` (bit N = state N), asking for INET_DIAG_INFO.
pub(crate) fn dump_request(family: u8, states: u32, seq: u32) -> [u8; NLMSG_HDRLEN + REQ_LEN] {
    let mut m = [0u8; NLMSG_HDRLEN + REQ_LEN];
    m[0..4].copy_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in our port id.
    let r = &mut m[NLMSG_HDRLEN..];
    r[0] = family;
    r[1] = libc::IPPROTO_TCP as u8;
    r[2] = 1 << (INET_DIAG_INFO - 1); // idiag_ext
    r[4..8].copy_from_slice(&states.to_ne_bytes());
    // inet_diag_sockid all zero: every socket.
    m
}

/// Parses one datagram of the dump's answer, handing each of its sockets to `each`. Messages
/// with another sequence number are skipped. NLMSG_ERROR is the kernel's errno as an error.
pub(crate) fn parse(buf: &[u8], seq: u32, each: &mut dyn FnMut(DiagSock)) -> io::Result<Progress> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, off).ok_or_else(|| bad("short header"))? as usize;
        let kind = u16_at(buf, off + 4).ok_or_else(|| bad("short header"))?;
        let msg_seq = u32_at(buf, off + 8).ok_or_else(|| bad("short header"))?;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return Err(bad("message length out of bounds"));
        }
        let payload = &buf[off + NLMSG_HDRLEN..off + len];
        off += align4(len);
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_DONE => return Ok(Progress::Done),
            NLMSG_ERROR => {
                let err = u32_at(payload, 0).ok_or_else(|| bad("short error message"))? as i32;
                if err == 0 {
                    // An ACK, not an error.
                    continue;
                }
                return Err(io::Error::from_raw_os_error(-err));
            }
            SOCK_DIAG_BY_FAMILY => each(parse_msg(payload)?),
            _ => {}
        }
    }
    Ok(Progress::More)
}

/// One `inet_diag_msg` and its attributes.
fn parse_msg(p: &[u8]) -> io::Result<DiagSock> {
    if p.len() < MSG_LEN {
        return Err(bad("short inet_diag_msg"));
    }
    let be16 = |off: usize| u16::from_be_bytes([p[off], p[off + 1]]);
    let ne32 = |off: usize| u32::from_ne_bytes([p[off], p[off + 1], p[off + 2], p[off + 3]]);
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&p[8..24]);
    dst.copy_from_slice(&p[24..40]);
    let mut sock = DiagSock {
        family: p[0],
        state: p[1],
        timer: p[2],
        retrans: p[3],
        sport: be16(4),
        dport: be16(6),
        src,
        dst,
        expires_ms: ne32(52),
        rqueue: ne32(56),
        wqueue: ne32(60),
        uid: ne32(64),
        inode: ne32(68),
        info: None,
    };
    // Attributes: struct rtattr { u16 len; u16 type; } + payload, 4-aligned.
    let mut off = align4(MSG_LEN);
    while off + 4 <= p.len() {
        let alen = u16::from_ne_bytes([p[off], p[off + 1]]) as usize;
        let atype = u16::from_ne_bytes([p[off + 2], p[off + 3]]) & 0x3fff; // no NLA_F_* bits
        if alen < 4 || off + alen > p.len() {
            return Err(bad("attribute length out of bounds"));
        }
        if atype == INET_DIAG_INFO {
            sock.info = TcpInfo::parse(&p[off + 4..off + alen]);
        }
        off += align4(alen);
    }
    Ok(sock)
}

/// A NETLINK_SOCK_DIAG socket, bound to the network namespace of the thread that opened it.
pub(crate) struct DiagSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl DiagSocket {
    pub(crate) fn open() -> io::Result<DiagSocket> {
        // SAFETY: plain socket(2) call with constant arguments; no pointers.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A dump never blocks for long; a kernel that stops answering is an error, not a hang.
        let tv = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: setsockopt reads a live timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DiagSocket {
            fd,
            seq: 0,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// Every TCP socket of `family` (AF_INET or AF_INET6) in the states of `states`, handed
    /// to `each` as it is read (a host's sockets are not all held at once: 200k of them are
    /// ~18 MB). On an error, `each` may have had some of them.
    pub(crate) fn dump(
        &mut self,
        family: u8,
        states: u32,
        each: &mut dyn FnMut(DiagSock),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let req = dump_request(family, states, self.seq);
        // SAFETY: zeroed sockaddr_nl is valid (nl_pid 0 = the kernel); its fields are set below.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sendto reads `req` (its full length) and a live sockaddr_nl of the size given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // SAFETY: recv writes at most buf.len() bytes into our buffer. MSG_TRUNC makes it
            // return the datagram's real length, so truncation is detected below.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > self.buf.len() {
                return Err(bad("datagram larger than the receive buffer"));
            }
            if parse(&self.buf[..n], self.seq, each)? == Progress::Done {
                return Ok(());
            }
        }
    }
}

/// A connection as both the kernel's records and sock_diag name it: namespace, family and
/// both ends (address bytes past the family's length are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    pub(crate) netns: u32,
    family: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
}

impl ConnKey {
    pub(crate) fn new(
        netns: u32,
        family: u16,
        saddr: &[u8; 16],
        daddr: &[u8; 16],
        sport: u16,
        dport: u16,
    ) -> Self {
        let len = if family == libc::AF_INET as u16 {
            4
        } else {
            16
        };
        let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
        s[..len].copy_from_slice(&saddr[..len]);
        d[..len].copy_from_slice(&daddr[..len]);
        ConnKey {
            netns,
            family,
            saddr: s,
            daddr: d,
            sport,
            dport,
        }
    }

    /// The key of a kernel record's tuple.
    pub(crate) fn of_tuple(t: &Tuple) -> Self {
        Self::new(t.netns, t.family, &t.saddr, &t.daddr, t.sport, t.dport)
    }

    /// The key of a socket sock_diag listed in namespace `netns`.
    pub(crate) fn of_diag(netns: u32, s: &DiagSock) -> Self {
        Self::new(netns, u16::from(s.family), &s.src, &s.dst, s.sport, s.dport)
    }
}

#[cfg(test)]
#[path = "diag_tests.rs"]
mod tests;
