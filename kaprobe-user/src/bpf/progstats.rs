//! How often the kernel skipped a run of one of our programs (`recursion_misses` of
//! `struct bpf_prog_info`): a tracepoint hit while the same program was already running on
//! that CPU, e.g. a softirq interrupting it in process context. Each miss is a hook run
//! whose event is lost, so it is counted and reported like a ring-buffer drop.
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::kernel::facts::ProgInfoLayout;

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `recursion_misses` of the program behind `fd`.
pub(crate) fn recursion_misses(
    layout: &ProgInfoLayout,
    fd: BorrowedFd<'_>,
) -> std::io::Result<u64> {
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
    let at = layout.recursion_misses as usize;
    let bytes: [u8; 8] = info
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| std::io::Error::other("short bpf_prog_info"))?;
    Ok(u64::from_ne_bytes(bytes))
}
