//! What the kernel counts for each of our programs (`struct bpf_prog_info`):
//! - `recursion_misses`: how often it skipped a run (a tracepoint hit while the same program
//!   was already running on that CPU, e.g. a softirq interrupting it in process context).
//!   Each miss is a hook run whose event is lost, so it is counted and reported like a
//!   ring-buffer drop.
//! - `run_cnt` and `run_time_ns`: the runs and the time they took, counted while the
//!   kernel's BPF run-time statistics are on (`kernel.bpf_stats_enabled`, or
//!   [`enable_run_time_stats`]): kaprobe's own cost in the kernel, for its metrics.
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::kernel::facts::ProgInfoLayout;

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// One program's counters (see the module's documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ProgStats {
    pub(crate) recursion_misses: u64,
    pub(crate) run_cnt: u64,
    pub(crate) run_time_ns: u64,
}

/// Turns the kernel's BPF run-time statistics on, for every program of the host, for as
/// long as the returned descriptor is open (`BPF_ENABLE_STATS`, Linux 5.8; needs
/// CAP_SYS_ADMIN). Each program run then costs two clock reads more.
pub(crate) fn enable_run_time_stats() -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct EnableStats {
        kind: u32,
    }
    let attr = EnableStats {
        kind: BPF_STATS_RUN_TIME,
    };
    // SAFETY: BPF_ENABLE_STATS only reads `bpf_attr.enable_stats` (its `type`), a valid,
    // initialised struct of the size passed; it returns a new descriptor or -1.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            &attr as *const EnableStats,
            size_of::<EnableStats>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `rc` is a descriptor the kernel just opened for us, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// The counters of the program behind `fd`.
pub(crate) fn prog_stats(
    layout: &ProgInfoLayout,
    fd: BorrowedFd<'_>,
) -> std::io::Result<ProgStats> {
    #[repr(C)]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = vec![0u8; layout.size as usize];
    let mut attr = GetInfo {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: layout.size,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most `info_len` bytes into `info`, a
    // buffer of that size that outlives the call; `attr` is a valid, initialised
    // `bpf_attr.info` of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut GetInfo,
            size_of::<GetInfo>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let field = |at: u32| -> std::io::Result<u64> {
        let at = at as usize;
        let bytes: [u8; 8] = info
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| std::io::Error::other("short bpf_prog_info"))?;
        Ok(u64::from_ne_bytes(bytes))
    };
    Ok(ProgStats {
        recursion_misses: field(layout.recursion_misses)?,
        run_cnt: field(layout.run_cnt)?,
        run_time_ns: field(layout.run_time_ns)?,
    })
}
