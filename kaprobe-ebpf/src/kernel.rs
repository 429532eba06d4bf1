//! Reading kernel structures at offsets the agent found in BTF.
use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_kernel};
use kaprobe_common::{AF_INET, AF_INET6, Header, Tuple};

use crate::conf;

/// Reads a `T` at `base + off` in kernel memory; zero when the read fails.
#[inline(always)]
pub fn read<T: Copy + Default>(base: u64, off: u32) -> T {
    // SAFETY: bpf_probe_read_kernel copies with fault handling: a bad address gives an
    // error, never a crash.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.unwrap_or_default()
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
    Header {
        kind,
        // SAFETY: helper without arguments.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ts_ns: now_ns(),
        sk,
    }
}

#[inline(always)]
pub fn state(sk: u64) -> u8 {
    read::<u8>(sk, conf!(skc_state))
}

/// `sk->sk_flags` (only valid on full sockets, not on request or timewait minisocks).
#[inline(always)]
pub fn sk_flags(sk: u64) -> u64 {
    read::<u64>(sk, conf!(sk_flags))
}

#[inline(always)]
pub fn flag_set(flags: u64, bit: u32) -> bool {
    bit < 64 && (flags >> bit) & 1 != 0
}

/// Inode number of the network namespace `net` (a `struct net *`).
#[inline(always)]
pub fn netns_inum(net: u64) -> u32 {
    if net == 0 {
        return 0;
    }
    read::<u32>(net, conf!(net_ns_inum))
}

/// `sock_net(sk)`.
#[inline(always)]
pub fn sk_net(sk: u64) -> u64 {
    read::<u64>(sk, conf!(skc_net))
}

/// Addresses, ports and namespace of a full socket.
#[inline(always)]
pub fn tuple_of_sock(sk: u64) -> Tuple {
    let mut t = tuple_of_sock_common(sk);
    // skc_num is zeroed when the port is released (inet_put_port, on the way to
    // TCP_CLOSE); inet_sport keeps the port the connection used.
    t.sport = u16::from_be(read::<u16>(sk, conf!(inet_sport)));
    t
}

/// Addresses, ports and namespace from `struct sock_common`: valid for full sockets and for
/// request and timewait minisocks alike.
#[inline(always)]
pub fn tuple_of_sock_common(sk: u64) -> Tuple {
    let mut t = Tuple::default();
    let family = read::<u16>(sk, conf!(skc_family));
    t.family = family;
    t.sport = read::<u16>(sk, conf!(skc_num));
    t.dport = u16::from_be(read::<u16>(sk, conf!(skc_dport)));
    if family == AF_INET {
        let s = read::<[u8; 4]>(sk, conf!(skc_rcv_saddr));
        let d = read::<[u8; 4]>(sk, conf!(skc_daddr));
        t.saddr[..4].copy_from_slice(&s);
        t.daddr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 {
        t.saddr = read::<[u8; 16]>(sk, conf!(skc_v6_rcv_saddr));
        t.daddr = read::<[u8; 16]>(sk, conf!(skc_v6_daddr));
    }
    t.netns = netns_inum(sk_net(sk));
    t
}

/// Addresses and ports of the segment in `skb`, seen from the receiving host: the local side
/// is the packet's destination. Used for an RST that answers a segment with no socket.
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
        t.netns = netns_inum(read::<u64>(dev, conf!(dev_nd_net)));
    }
    t
}
