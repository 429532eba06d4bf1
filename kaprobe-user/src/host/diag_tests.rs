//! sock_diag parsing against datagrams recorded from Linux 6.18 (fixtures/record.py): a
//! namespace with 127.0.0.1:45650 → 127.0.0.1:5000 (keepalive on, TCP_KEEPIDLE 1234 s, 5
//! bytes sent and read by nobody), its accepted socket, a TIME_WAIT socket and an IPv6
//! connection [::1]:40576 → [::1]:6000.
use super::*;

const V4: &[u8] = include_bytes!("fixtures/diag_v4.bin");
const V6: &[u8] = include_bytes!("fixtures/diag_v6.bin");
const DONE: &[u8] = include_bytes!("fixtures/diag_done.bin");

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a);
    b
}

#[test]
fn ipv4_dump_with_keepalive_timer_time_wait_and_tcp_info() {
    let mut out = Vec::new();
    assert_eq!(parse(V4, 7, &mut |s| out.push(s)).unwrap(), Progress::More);
    assert_eq!(out.len(), 3, "{out:#?}");

    let client = &out[0];
    assert_eq!(client.family, libc::AF_INET as u8);
    assert_eq!(client.state, 1, "established");
    assert_eq!((client.sport, client.dport), (45650, 5000));
    assert_eq!(client.src, v4([127, 0, 0, 1]));
    assert_eq!(client.dst, v4([127, 0, 0, 1]));
    assert_eq!(client.timer, timer::KEEPALIVE);
    assert!(client.expires_ms > 1_233_000 && client.expires_ms <= 1_234_000);
    assert_eq!(client.retrans, 0);
    assert_eq!(client.inode, 169_728);
    let info = client.info.expect("tcp_info");
    assert_eq!(info.unacked, 0);
    assert_eq!(info.probes, 0);
    assert_eq!(info.notsent_bytes, Some(0));
    assert_eq!(info.last_data_recv_ms, 152);
    assert_eq!(info.last_ack_recv_ms, 152);

    let tw = &out[1];
    assert_eq!(tw.state, 6, "time_wait");
    assert_eq!(tw.timer, 3, "idiag_timer of TIME_WAIT");
    assert_eq!(tw.inode, 0);
    assert_eq!(tw.info, None, "no tcp_info for TIME_WAIT");

    let server = &out[2];
    assert_eq!((server.sport, server.dport), (5000, 45650));
    assert_eq!(server.rqueue, 5, "the 5 unread bytes");
    assert_eq!(server.timer, 0);
    assert_eq!(server.inode, 169_729);
}

#[test]
fn ipv6_dump_and_done() {
    let mut out = Vec::new();
    assert_eq!(parse(V6, 8, &mut |s| out.push(s)).unwrap(), Progress::More);
    assert_eq!(out.len(), 2);
    let mut loopback = [0u8; 16];
    loopback[15] = 1;
    assert!(out.iter().all(|s| s.family == libc::AF_INET6 as u8));
    assert!(out.iter().all(|s| s.src == loopback && s.dst == loopback));
    assert_eq!((out[1].sport, out[1].dport), (40576, 6000));
    assert!(out.iter().all(|s| s.info.is_some()));
    assert_eq!(
        parse(DONE, 7, &mut |s| out.push(s)).unwrap(),
        Progress::Done
    );
    assert_eq!(out.len(), 2, "DONE adds nothing");
}

#[test]
fn other_sequence_numbers_are_skipped() {
    let mut out = Vec::new();
    assert_eq!(parse(V4, 99, &mut |s| out.push(s)).unwrap(), Progress::More);
    assert!(out.is_empty());
    assert_eq!(
        parse(DONE, 99, &mut |s| out.push(s)).unwrap(),
        Progress::More
    );
}

#[test]
fn netlink_error_is_the_kernels_errno() {
    // nlmsghdr{len 36, NLMSG_ERROR, seq 5} + nlmsgerr{error -EPERM, the request's header}.
    let mut m = Vec::new();
    m.extend_from_slice(&36u32.to_ne_bytes());
    m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&5u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
    m.extend_from_slice(&[0u8; 16]);
    let err = parse(&m, 5, &mut |_| {}).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    // error 0 is an ACK.
    m[16..20].copy_from_slice(&0i32.to_ne_bytes());
    assert_eq!(parse(&m, 5, &mut |_| {}).unwrap(), Progress::More);
}

#[test]
fn damaged_datagrams_are_errors_not_panics() {
    // Every truncation of a real datagram: an error or fewer sockets, never a panic.
    for cut in 0..V4.len() {
        let mut out = Vec::new();
        let _ = parse(&V4[..cut], 7, &mut |s| out.push(s));
        assert!(out.len() <= 3);
    }
    // A length field pointing past the end.
    let mut m = V4.to_vec();
    m[0..4].copy_from_slice(&10_000u32.to_ne_bytes());
    assert!(parse(&m, 7, &mut |_| {}).is_err());
    // A length shorter than a header.
    m[0..4].copy_from_slice(&8u32.to_ne_bytes());
    assert!(parse(&m, 7, &mut |_| {}).is_err());
    // An attribute length running past the message.
    let mut m = V4.to_vec();
    let first_attr = NLMSG_HDRLEN + MSG_LEN;
    m[first_attr..first_attr + 2].copy_from_slice(&4000u16.to_ne_bytes());
    assert!(parse(&m, 7, &mut |_| {}).is_err());
    // Garbage of every byte value.
    for b in 0..=255u8 {
        let _ = parse(&[b; 200], 7, &mut |_| {});
    }
}

#[test]
fn short_tcp_info_has_no_notsent_bytes() {
    let mut b = vec![0u8; 104]; // the 4.1-era size
    b[3] = 2;
    b[24..28].copy_from_slice(&3u32.to_ne_bytes());
    let info = TcpInfo::parse(&b).unwrap();
    assert_eq!(
        (info.probes, info.unacked, info.notsent_bytes),
        (2, 3, None)
    );
    assert_eq!(TcpInfo::parse(&b[..40]), None);
}

#[test]
fn request_layout() {
    let r = dump_request(libc::AF_INET6 as u8, 0x0fff, 42);
    assert_eq!(r.len(), 72);
    assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
    assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 20);
    assert_eq!(u16::from_ne_bytes(r[6..8].try_into().unwrap()), 0x301);
    assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 42);
    assert_eq!(&r[16..20], &[libc::AF_INET6 as u8, 6, 2, 0]);
    assert_eq!(u32::from_ne_bytes(r[20..24].try_into().unwrap()), 0x0fff);
    assert!(r[24..].iter().all(|&b| b == 0));
}
