//! What `ls` asks the system besides sock_diag: a namespace's keepalive sysctls, and the
//! options of other processes' sockets.
use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// A namespace's `net.ipv4.tcp_keepalive_*` (each None if unreadable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Sysctls {
    pub(crate) time_s: Option<u32>,
    pub(crate) intvl_s: Option<u32>,
    pub(crate) probes: Option<u32>,
}

/// The keepalive sysctls of the calling thread's network namespace (/proc/sys/net shows
/// the namespace of the task that opens it).
pub(crate) fn keepalive_sysctls() -> Sysctls {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Sysctls {
        time_s: read("tcp_keepalive_time"),
        intvl_s: read("tcp_keepalive_intvl"),
        probes: read("tcp_keepalive_probes"),
    }
}

/// A socket's keepalive options, as getsockopt returns them: the effective values (the
/// kernel answers TCP_KEEPIDLE/INTVL/CNT with the namespace's sysctl when the socket set
/// none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SockOpts {
    pub(crate) keepalive: bool,
    pub(crate) idle_s: u32,
    pub(crate) intvl_s: u32,
    pub(crate) probes: u32,
    /// 0: not set.
    pub(crate) user_timeout_ms: u32,
}

fn getsockopt_int(fd: &OwnedFd, level: i32, name: i32) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a live c_int and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.max(0) as u32)
}

/// Copies of other processes' descriptors (pidfd_open + pidfd_getfd), one pidfd per
/// process per snapshot.
#[derive(Default)]
pub(crate) struct Borrower {
    pidfds: HashMap<u32, Option<OwnedFd>>,
}

impl Borrower {
    fn pidfd(&mut self, pid: u32) -> io::Result<&OwnedFd> {
        let entry = self.pidfds.entry(pid).or_insert_with(|| {
            // SAFETY: pidfd_open(pid, 0) takes no pointers; it returns a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
            // SAFETY: a non-negative result is a fresh descriptor owned by nothing else.
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
        });
        entry
            .as_ref()
            .ok_or_else(|| io::Error::other(format!("pidfd_open({pid}) failed")))
    }

    /// The keepalive options of socket `inode`, held by process `pid` as `fd`. The copy is
    /// checked to still be that socket (the fd may have been closed and reused since /proc
    /// was read) and closed before returning.
    pub(crate) fn sockopts(&mut self, pid: u32, fd: i32, inode: u64) -> io::Result<SockOpts> {
        let pidfd = self.pidfd(pid)?.as_raw_fd();
        // SAFETY: pidfd_getfd(pidfd, fd, 0) takes no pointers; it returns a new fd or -1.
        let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a non-negative result is a fresh descriptor (O_CLOEXEC) owned by nothing
        // else; OwnedFd closes it on every path out of this function.
        let copy = unsafe { OwnedFd::from_raw_fd(copy as i32) };
        // SAFETY: zeroed `stat` is a valid value for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into a live `stat`.
        if unsafe { libc::fstat(copy.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if st.st_ino != inode {
            return Err(io::Error::other("descriptor reused for another file"));
        }
        let tcp = libc::IPPROTO_TCP;
        Ok(SockOpts {
            keepalive: getsockopt_int(&copy, libc::SOL_SOCKET, libc::SO_KEEPALIVE)? != 0,
            idle_s: getsockopt_int(&copy, tcp, libc::TCP_KEEPIDLE)?,
            intvl_s: getsockopt_int(&copy, tcp, libc::TCP_KEEPINTVL)?,
            probes: getsockopt_int(&copy, tcp, libc::TCP_KEEPCNT)?,
            user_timeout_ms: getsockopt_int(&copy, tcp, libc::TCP_USER_TIMEOUT)?,
        })
    }
}
