//! Reading kernel structures at offsets the agent found in BTF.
use aya_ebpf::helpers::{
    bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_kernel,
    generated::{
        bpf_get_current_task, bpf_get_current_task_btf, bpf_get_socket_cookie, bpf_skc_to_tcp_sock,
    },
};
use kaprobe_common::{AF_INET, AF_INET6, Header, IPPROTO_TCP, Tuple, config_flag};

use crate::conf;

/// How a program reads kernel memory.
///
/// BTF tracepoints receive their pointer arguments typed by the kernel's BTF: the verifier
/// checks a load at `ptr + offset` against the struct's layout and the JIT emits a plain
/// load ([`Btf`]). Raw tracepoints get untyped values, and pointers computed by hand (the
/// socket behind a timer) are not BTF-typed either: those are read with
/// `bpf_probe_read_kernel` ([`Probe`]), which costs a helper call (~50 ns here) but can never
/// fault.
pub trait Mem {
    /// Reads a `T` at `base + off`; zero when the read fails.
    fn read<T: Copy + Default>(base: u64, off: u32) -> T;
    /// The `struct tcp_sock` of `sk` (same address), or 0 when `sk` is not a full TCP socket.
    fn tcp_sock(sk: u64) -> u64;
    /// A number identifying socket `sk` for the `SOCKS` table (never 0).
    fn sock_key(sk: u64) -> u64;
    /// The key socket `sk` has if it was ever given one (for finding its slot, not for
    /// claiming one): never generates a cookie, 0 when there is none. A socket kaprobe saw
    /// born has one; a cookie generated now could not be in `SOCKS`.
    fn existing_key(sk: u64) -> u64;
    /// The same for a socket known only by its address (the socket behind a timer).
    fn sock_key_of_address(sk: u64) -> u64;
    /// The `struct task_struct` running now, readable with this `Mem`.
    fn current_task() -> u64;
    /// Whether `sk` (a socket in a TCP state change) is TCP, by its protocol field: no
    /// helper call (cheaper than [`Mem::tcp_sock`] where no `tcp_sock` field is read).
    #[inline(always)]
    fn is_tcp(sk: u64) -> bool {
        Self::read::<u16>(sk, conf!(sk_protocol)) == IPPROTO_TCP
    }
}

/// `bpf_probe_read_kernel`: any address.
pub struct Probe;

/// Direct loads: only from a BTF-typed pointer (a `tp_btf` argument, or a pointer loaded
/// through one), at offsets inside the pointed-to struct.
pub struct Btf;

impl Mem for Probe {
    #[inline(always)]
    fn read<T: Copy + Default>(base: u64, off: u32) -> T {
        // SAFETY: bpf_probe_read_kernel copies with fault handling: a bad address gives an
        // error, never a crash.
        unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.unwrap_or_default()
    }

    #[inline(always)]
    fn tcp_sock(sk: u64) -> u64 {
        if sk != 0 && Probe::read::<u16>(sk, conf!(sk_protocol)) == IPPROTO_TCP {
            sk
        } else {
            0
        }
    }

    /// The socket's address (an untyped value here, so it can be hashed).
    #[inline(always)]
    fn sock_key(sk: u64) -> u64 {
        sk
    }

    #[inline(always)]
    fn existing_key(sk: u64) -> u64 {
        sk
    }

    #[inline(always)]
    fn sock_key_of_address(sk: u64) -> u64 {
        sk
    }

    #[inline(always)]
    fn current_task() -> u64 {
        // SAFETY: helper without arguments; the result is only read with
        // bpf_probe_read_kernel.
        unsafe { bpf_get_current_task() }
    }
}

impl Mem for Btf {
    #[inline(always)]
    fn read<T: Copy + Default>(base: u64, off: u32) -> T {
        // SAFETY: `base` is a BTF-typed kernel pointer and `off` a field offset read from the
        // same kernel's BTF; the verifier checks the access against the type and the JIT
        // handles a fault on it.
        unsafe { core::ptr::read_volatile((base + off as u64) as *const T) }
    }

    #[inline(always)]
    fn tcp_sock(sk: u64) -> u64 {
        if sk == 0 {
            return 0;
        }
        // SAFETY: the helper checks the socket's family and protocol and returns NULL
        // for anything but a full TCP socket.
        unsafe { bpf_skc_to_tcp_sock(sk as *mut core::ffi::c_void) as u64 }
    }

    /// The socket cookie (unique for the boot, never reused): the verifier allows no
    /// arithmetic on a typed pointer, so the address itself cannot be hashed here.
    #[inline(always)]
    fn sock_key(sk: u64) -> u64 {
        // SAFETY: for tracing programs this helper is bpf_get_socket_ptr_cookie, which takes
        // a BTF-typed socket pointer (checked by the verifier) and generates the cookie if
        // the socket has none yet.
        unsafe { bpf_get_socket_cookie(sk as *mut core::ffi::c_void) }
    }

    /// `skc_cookie` as stored, a plain load (the helper costs a call, ~3 % of kaprobe's
    /// kernel time under churn when every close made one).
    #[inline(always)]
    fn existing_key(sk: u64) -> u64 {
        Btf::read::<u64>(sk, conf!(skc_cookie))
    }

    /// `skc_cookie` as stored (a cookie is generated at the socket's birth by
    /// [`Mem::sock_key`]).
    #[inline(always)]
    fn sock_key_of_address(sk: u64) -> u64 {
        Probe::read::<u64>(sk, conf!(skc_cookie))
    }

    /// A BTF-typed (trusted) `task_struct` pointer: its fields, and those of the tasks it
    /// points to, are plain loads (two `bpf_probe_read_kernel` calls fewer per connect).
    #[inline(always)]
    fn current_task() -> u64 {
        // SAFETY: helper without arguments (tracing programs, kernel 5.11+).
        unsafe { bpf_get_current_task_btf() as u64 }
    }
}

/// Plain data that may be zeroed and copied eight bytes at a time.
///
/// # Safety
/// Implement only for `#[repr(C)]` types made of integers and integer arrays (zero is a
/// valid value), 8-byte aligned, whose size is a multiple of 8.
pub unsafe trait Words: Copy {}

// SAFETY: kaprobe_common's records: `#[repr(C)]`, integers only, padding spelled out; the
// size and alignment are checked again in `zero_raw`.
unsafe impl Words for kaprobe_common::ConnState {}
// SAFETY: as above.
unsafe impl Words for kaprobe_common::CloseRecord {}

/// `*v = zeroed`, with 8-byte stores. A plain assignment of a struct (`*v =
/// T::default()`) becomes a call to aya-ebpf's `memset`, which stores one byte per loop
/// turn: ~300 instructions for a 64-byte slot, the largest cost of a connection's birth
/// (measured: 0.2 µs per birth). Volatile, so that LLVM cannot merge the stores back
/// into that call.
#[inline(always)]
pub fn zero<T: Words>(v: &mut T) {
    // SAFETY: `v` is a valid, exclusively borrowed `T`.
    unsafe { zero_raw(v as *mut T) }
}

/// [`zero`] through a raw pointer, for memory that is not a valid `T` yet (reserved in the
/// ring buffer).
///
/// # Safety
/// `p` must be valid for writes of a `T` and 8-byte aligned, and nothing else may access
/// it meanwhile.
#[inline(always)]
pub unsafe fn zero_raw<T: Words>(p: *mut T) {
    const { assert!(size_of::<T>() % 8 == 0 && align_of::<T>() % 8 == 0) };
    let p = p.cast::<u64>();
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: `i` words of 8 bytes are inside `*p`, 8-byte aligned (checked above) and
        // writable (the caller's promise); zero is a valid `T` (`Words`).
        unsafe { p.add(i).write_volatile(0) };
    }
}

/// Reads with [`Probe`] (for the places where only that can work).
#[inline(always)]
pub fn read<T: Copy + Default>(base: u64, off: u32) -> T {
    Probe::read(base, off)
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn jiffies() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_jiffies64() }
}

#[inline(always)]
pub fn header(kind: u32, sk: u64) -> Header {
    header_at(kind, sk, now_ns())
}

/// A record's header with a time already read.
#[inline(always)]
pub fn header_at(kind: u32, sk: u64, ts_ns: u64) -> Header {
    Header {
        kind,
        // SAFETY: helper without arguments.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ts_ns,
        sk,
    }
}

#[inline(always)]
pub fn state<M: Mem>(sk: u64) -> u8 {
    M::read::<u8>(sk, conf!(skc_state))
}

/// The id of the cgroup socket `sk` belongs to (that of the process that created it, as
/// `bpf_get_current_cgroup_id` would have read then), 0 where the kernel's BTF does not
/// say where it is or the socket has none.
#[inline(always)]
pub fn socket_cgroup_id<M: Mem>(sk: u64) -> u64 {
    if conf!(flags) & config_flag::SOCK_CGROUP == 0 {
        return 0;
    }
    let cgroup = M::read::<u64>(sk, conf!(sk_cgroup));
    if cgroup == 0 {
        return 0;
    }
    let kn = M::read::<u64>(cgroup, conf!(cgroup_kn));
    if kn == 0 {
        return 0;
    }
    M::read::<u64>(kn, conf!(kernfs_node_id))
}

/// `sk->sk_flags` (only valid on full sockets, not on request or timewait minisocks).
#[inline(always)]
pub fn sk_flags<M: Mem>(sk: u64) -> u64 {
    M::read::<u64>(sk, conf!(sk_flags))
}

#[inline(always)]
pub fn flag_set(flags: u64, bit: u32) -> bool {
    bit < 64 && (flags >> bit) & 1 != 0
}

/// Inode number of the network namespace `net` (a `struct net *`).
#[inline(always)]
pub fn netns_inum<M: Mem>(net: u64) -> u32 {
    if net == 0 {
        return 0;
    }
    M::read::<u32>(net, conf!(net_ns_inum))
}

/// `sock_net(sk)`.
#[inline(always)]
pub fn sk_net<M: Mem>(sk: u64) -> u64 {
    M::read::<u64>(sk, conf!(skc_net))
}

/// Addresses, ports and namespace of a full TCP socket (`tp` is its `tcp_sock`, see
/// [`Mem::tcp_sock`]).
#[inline(always)]
pub fn tuple_of_sock<M: Mem>(sk: u64, tp: u64) -> Tuple {
    let mut t = tuple_of_sock_common::<M>(sk);
    // skc_num is zeroed when the port is released (inet_put_port, on the way to
    // TCP_CLOSE); inet_sport keeps the port the connection used.
    if tp != 0 {
        t.sport = u16::from_be(M::read::<u16>(tp, conf!(inet_sport)));
    }
    t
}

/// Addresses, ports and namespace from `struct sock_common`: valid for full sockets and for
/// request and timewait minisocks alike.
#[inline(always)]
pub fn tuple_of_sock_common<M: Mem>(sk: u64) -> Tuple {
    let mut t = Tuple::default();
    let family = M::read::<u16>(sk, conf!(skc_family));
    t.family = family;
    t.sport = M::read::<u16>(sk, conf!(skc_num));
    t.dport = u16::from_be(M::read::<u16>(sk, conf!(skc_dport)));
    if family == AF_INET {
        let s = M::read::<u32>(sk, conf!(skc_rcv_saddr)).to_ne_bytes();
        let d = M::read::<u32>(sk, conf!(skc_daddr)).to_ne_bytes();
        t.saddr[..4].copy_from_slice(&s);
        t.daddr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 {
        let s = [
            M::read::<u64>(sk, conf!(skc_v6_rcv_saddr)),
            M::read::<u64>(sk, conf!(skc_v6_rcv_saddr) + 8),
        ];
        let d = [
            M::read::<u64>(sk, conf!(skc_v6_daddr)),
            M::read::<u64>(sk, conf!(skc_v6_daddr) + 8),
        ];
        t.saddr[..8].copy_from_slice(&s[0].to_ne_bytes());
        t.saddr[8..].copy_from_slice(&s[1].to_ne_bytes());
        t.daddr[..8].copy_from_slice(&d[0].to_ne_bytes());
        t.daddr[8..].copy_from_slice(&d[1].to_ne_bytes());
    }
    t.netns = netns_inum::<M>(sk_net::<M>(sk));
    t
}

/// TCP flags and payload length of the segment in `skb` (an incoming one); zeros when
/// there is none. Read with [`Probe`], as in [`tuple_of_incoming_skb`].
#[inline(always)]
pub fn segment_of_skb(skb: u64) -> (u8, u32) {
    if skb == 0 {
        return (0, 0);
    }
    let head = read::<u64>(skb, conf!(skb_head));
    if head == 0 {
        return (0, 0);
    }
    let nh = read::<u16>(skb, conf!(skb_network_header)) as u64;
    let th = read::<u16>(skb, conf!(skb_transport_header)) as u64;
    let ip = head + nh;
    // The IP datagram's whole length: IPv4's total length, IPv6's payload length plus its
    // fixed header.
    let total = match read::<u8>(ip, 0) >> 4 {
        4 => u32::from(u16::from_be_bytes(read::<[u8; 2]>(ip, 2))),
        6 => 40 + u32::from(u16::from_be_bytes(read::<[u8; 2]>(ip, 4))),
        _ => return (0, 0),
    };
    // Data offset (high nibble of byte 12) and flags (byte 13) of the TCP header.
    let off_flags = read::<[u8; 2]>(head + th, 12);
    let tcp_header = u32::from(off_flags[0] >> 4) * 4;
    let headers = (th.wrapping_sub(nh) as u32).wrapping_add(tcp_header);
    (off_flags[1], total.saturating_sub(headers))
}

/// Addresses and ports of the segment in `skb`, seen from the receiving host: the local side
/// is the packet's destination. Used for an RST that answers a segment with no socket.
/// (The packet bytes are read with [`Probe`]: they are not a struct BTF describes.)
#[inline(always)]
pub fn tuple_of_incoming_skb(skb: u64) -> Tuple {
    let mut t = Tuple::default();
    if skb == 0 {
        return t;
    }
    let head = read::<u64>(skb, conf!(skb_head));
    let nh = read::<u16>(skb, conf!(skb_network_header)) as u64;
    let th = read::<u16>(skb, conf!(skb_transport_header)) as u64;
    if head == 0 {
        return t;
    }
    let version = read::<u8>(head + nh, 0) >> 4;
    if version == 4 {
        t.family = AF_INET;
        let src = read::<[u8; 4]>(head + nh, 12);
        let dst = read::<[u8; 4]>(head + nh, 16);
        t.daddr[..4].copy_from_slice(&src);
        t.saddr[..4].copy_from_slice(&dst);
    } else if version == 6 {
        t.family = AF_INET6;
        t.daddr = read::<[u8; 16]>(head + nh, 8);
        t.saddr = read::<[u8; 16]>(head + nh, 24);
    }
    let ports = read::<[u8; 4]>(head + th, 0);
    t.dport = u16::from_be_bytes([ports[0], ports[1]]);
    t.sport = u16::from_be_bytes([ports[2], ports[3]]);
    let dev = read::<u64>(skb, conf!(skb_dev));
    if dev != 0 {
        t.netns = netns_inum::<Probe>(read::<u64>(dev, conf!(dev_nd_net)));
    }
    t
}
