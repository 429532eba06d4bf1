//! The risk rules, the keepalive source rule, filters and the output of `ls`.
use std::{
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use clap::ValueEnum;
use kaprobe_common::tcp_state;

use super::{
    audit::{Keepalive, Risk, Source, risks},
    render::{human, json_lines, short_ms},
    *,
};
use crate::{
    event::Family,
    host::{
        diag::{self, TcpInfo},
        sys::SockOpts,
    },
};

const NAT: Duration = Duration::from_secs(350);
const EST: u8 = tcp_state::ESTABLISHED;

fn ka(enabled: bool, idle_s: u32) -> Keepalive {
    Keepalive {
        enabled: Some(enabled),
        idle_s: Some(idle_s),
        interval_s: Some(75),
        probes: Some(9),
        source: Some(Source::Sysctl),
    }
}

fn info(heard_ms: u32) -> TcpInfo {
    TcpInfo {
        last_data_recv_ms: heard_ms + 500,
        last_ack_recv_ms: heard_ms,
        notsent_bytes: Some(0),
        ..TcpInfo::default()
    }
}

#[test]
fn no_keepalive_idle_needs_keepalive_off_and_idle_past_the_nat_timeout() {
    let idle = info(351_000);
    assert_eq!(
        risks(EST, &ka(false, 7200), Some(&idle), 0, NAT),
        [Risk::NoKeepaliveIdle]
    );
    // Exactly the timeout is not longer than it.
    assert!(risks(EST, &ka(false, 7200), Some(&info(350_000)), 0, NAT).is_empty());
    // Heard recently.
    assert!(risks(EST, &ka(false, 7200), Some(&info(1_000)), 0, NAT).is_empty());
    // Last heard is the later of data and ACK.
    let acked = TcpInfo {
        last_data_recv_ms: 900_000,
        last_ack_recv_ms: 10,
        ..TcpInfo::default()
    };
    assert!(risks(EST, &ka(false, 7200), Some(&acked), 0, NAT).is_empty());
    // Unknown keepalive (no owner): no claim.
    assert!(risks(EST, &Keepalive::default(), Some(&idle), 0, NAT).is_empty());
    // Only established connections.
    assert!(risks(tcp_state::CLOSE_WAIT, &ka(false, 7200), Some(&idle), 0, NAT).is_empty());
    assert!(risks(tcp_state::TIME_WAIT, &ka(false, 7200), None, 0, NAT).is_empty());
}

#[test]
fn keepalive_too_late_when_the_first_probe_comes_at_or_after_the_nat_timeout() {
    let fresh = info(10);
    assert_eq!(
        risks(EST, &ka(true, 7200), Some(&fresh), 0, NAT),
        [Risk::KeepaliveTooLate]
    );
    assert_eq!(
        risks(EST, &ka(true, 350), Some(&fresh), 0, NAT),
        [Risk::KeepaliveTooLate]
    );
    assert!(risks(EST, &ka(true, 349), Some(&fresh), 0, NAT).is_empty());
    assert_eq!(
        risks(EST, &ka(true, 2), Some(&fresh), 0, Duration::from_secs(2)),
        [Risk::KeepaliveTooLate]
    );
    // Keepalive off is the other flag's business, whatever TCP_KEEPIDLE says.
    assert!(risks(EST, &ka(false, 7200), Some(&fresh), 0, NAT).is_empty());
}

#[test]
fn keepalive_suppressed_is_data_in_flight() {
    let ok = ka(true, 60);
    let stalled = |unacked, backoff| TcpInfo {
        unacked,
        backoff,
        ..info(5_000)
    };
    assert_eq!(
        risks(EST, &ok, Some(&stalled(3, 2)), 4096, NAT),
        [Risk::KeepaliveSuppressed]
    );
    // Unsent data only (zero window, probe0 timer backing off).
    assert_eq!(
        risks(EST, &ok, Some(&stalled(0, 1)), 100, NAT),
        [Risk::KeepaliveSuppressed]
    );
    // The retransmission timer fired once without backoff yet.
    let retrans = TcpInfo {
        unacked: 1,
        retransmits: 1,
        ..info(300)
    };
    assert_eq!(
        risks(EST, &ok, Some(&retrans), 10, NAT),
        [Risk::KeepaliveSuppressed]
    );
    // Data in flight on a healthy connection (no timer fired): keepalive cannot fire either.
    assert_eq!(
        risks(EST, &ok, Some(&stalled(3, 0)), 4096, NAT),
        [Risk::KeepaliveSuppressed]
    );
    // Nothing in flight.
    assert!(risks(EST, &ok, Some(&stalled(0, 3)), 0, NAT).is_empty());
    // Keepalive off: nothing is suppressed.
    assert!(risks(EST, &ka(false, 60), Some(&stalled(3, 2)), 4096, NAT).is_empty());
    // Only established.
    assert!(risks(tcp_state::FIN_WAIT1, &ok, Some(&stalled(3, 2)), 4096, NAT).is_empty());
    // Both flags at once, in a stable order.
    assert_eq!(
        risks(EST, &ka(true, 7200), Some(&stalled(3, 2)), 4096, NAT),
        [Risk::KeepaliveTooLate, Risk::KeepaliveSuppressed]
    );
}

#[test]
fn source_is_sysctl_only_when_all_three_equal_the_namespace_defaults() {
    let sys = Sysctls {
        time_s: Some(7200),
        intvl_s: Some(75),
        probes: Some(9),
    };
    let opts = |idle_s, intvl_s, probes| SockOpts {
        keepalive: true,
        idle_s,
        intvl_s,
        probes,
        user_timeout_ms: 0,
    };
    assert_eq!(
        Keepalive::new(&opts(7200, 75, 9), &sys).source,
        Some(Source::Sysctl)
    );
    for o in [opts(60, 75, 9), opts(7200, 10, 9), opts(7200, 75, 3)] {
        assert_eq!(
            Keepalive::new(&o, &sys).source,
            Some(Source::Socket),
            "{o:?}"
        );
    }
    let k = Keepalive::new(&opts(60, 10, 3), &sys);
    assert_eq!(
        (k.enabled, k.idle_s, k.interval_s, k.probes),
        (Some(true), Some(60), Some(10), Some(3))
    );
    let unreadable = Sysctls {
        probes: None,
        ..sys
    };
    assert_eq!(Keepalive::new(&opts(60, 10, 3), &unreadable).source, None);
}

#[test]
fn default_state_mask_is_everything_but_listen() {
    let m = state_mask(&[]);
    for s in 1..=12u8 {
        assert_eq!(m & (1 << s) != 0, s != tcp_state::LISTEN, "state {s}");
    }
    assert_eq!(m & 1, 0);
    assert_eq!(m >> 13, 0);
    assert_eq!(
        state_mask(&[StateArg::Established, StateArg::TimeWait]),
        (1 << 1) | (1 << 6)
    );
    assert_eq!(state_mask(&[StateArg::SynRecv]), (1 << 3) | (1 << 12));
}

#[test]
fn state_names_match_the_event_log() {
    for s in StateArg::value_variants() {
        let name = s.to_possible_value().unwrap().get_name().to_owned();
        assert_eq!(name, state_name(s.code()));
    }
}

fn owner(pid: u32, comm: &str, cgroup: Option<&str>) -> Owner {
    Owner::new(pid, comm.to_owned(), cgroup.map(str::to_owned))
}

#[test]
fn filters_and_across_kinds_or_within_one() {
    let a: IpAddr = "10.0.0.1".parse().unwrap();
    let b: IpAddr = "192.0.2.7".parse().unwrap();
    let all = Filter::default();
    assert!(all.matches_endpoints(&a, 5000, &b, 80));
    assert!(all.matches_owner(None));
    let ports = Filter {
        ports: vec![443, 80],
        ..Filter::default()
    };
    assert!(ports.matches_endpoints(&a, 5000, &b, 80));
    assert!(!ports.matches_endpoints(&a, 5000, &b, 81));
    let both = Filter {
        ports: vec![80],
        nets: vec!["198.51.100.0/24".parse().unwrap()],
        ..Filter::default()
    };
    assert!(!both.matches_endpoints(&a, 5000, &b, 80));

    let nginx = owner(42, "nginx", Some("/system.slice/nginx.service"));
    let pids = Filter {
        pids: vec![1, 42],
        ..Filter::default()
    };
    assert!(pids.matches_owner(Some(&nginx)));
    assert!(
        !pids.matches_owner(None),
        "owner filters exclude sockets nobody holds"
    );
    let comm_and_pid = Filter {
        pids: vec![42],
        comms: vec!["curl".into()],
        ..Filter::default()
    };
    assert!(!comm_and_pid.matches_owner(Some(&nginx)));
    let cg = Filter {
        cgroups: vec!["/system.slice/".into()],
        ..Filter::default()
    };
    assert!(cg.matches_owner(Some(&nginx)));
    assert!(!cg.matches_owner(Some(&owner(42, "nginx", None))));
}

#[test]
fn cgroup_prefixes_match_whole_components() {
    use crate::sink::filter::cgroup_under;
    assert!(cgroup_under("/system.slice/nginx.service", "/system.slice"));
    assert!(cgroup_under(
        "/system.slice/nginx.service",
        "/system.slice/"
    ));
    assert!(cgroup_under("/system.slice", "/system.slice"));
    assert!(!cgroup_under("/system.slice2/x", "/system.slice"));
    assert!(cgroup_under("/anything", "/"));
}

#[test]
fn v4_mapped_ipv6_is_ipv4() {
    let mut s = DiagSock {
        family: libc::AF_INET6 as u8,
        state: EST,
        timer: 0,
        retrans: 0,
        sport: 1,
        dport: 2,
        src: "::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets(),
        dst: "::ffff:10.0.0.2".parse::<Ipv6Addr>().unwrap().octets(),
        expires_ms: 0,
        rqueue: 0,
        wqueue: 0,
        uid: 0,
        inode: 0,
        info: None,
    };
    let (a, b, f) = s.endpoints();
    assert_eq!(
        (a.to_string(), b.to_string(), f),
        ("10.0.0.1".into(), "10.0.0.2".into(), Family::Ipv4)
    );
    s.dst = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
    assert_eq!(s.endpoints().2, Family::Ipv6);
}

fn sample() -> Conn {
    let sock = DiagSock {
        family: libc::AF_INET as u8,
        state: EST,
        timer: diag::timer::KEEPALIVE,
        retrans: 0,
        sport: 40000,
        dport: 5432,
        src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        dst: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        expires_ms: 7_190_000,
        rqueue: 0,
        wqueue: 300,
        uid: 0,
        inode: 77,
        info: Some(TcpInfo {
            notsent_bytes: Some(100),
            ..info(12_000)
        }),
    };
    let ns = NsDump {
        inode: 4026531840,
        sysctls: Sysctls {
            time_s: Some(7200),
            intvl_s: Some(75),
            probes: Some(9),
        },
        socks: vec![],
    };
    let opts = SockOpts {
        keepalive: true,
        idle_s: 7200,
        intvl_s: 75,
        probes: 9,
        user_timeout_ms: 30_000,
    };
    conn(
        &sock,
        &ns,
        Some(owner(
            1234,
            "postgres",
            Some("/system.slice/postgresql.service"),
        )),
        Some(opts),
        NAT,
    )
}

#[test]
fn json_layout() {
    assert_eq!(
        json_lines(&[sample()]),
        concat!(
            r#"{"saddr":"10.0.0.1","sport":40000,"daddr":"10.0.0.2","dport":5432,"family":"ipv4","#,
            r#""netns":4026531840,"state":"established","owner":{"pid":1234,"comm":"postgres","#,
            r#""cgroup":"/system.slice/postgresql.service"},"keepalive":{"enabled":true,"idle_s":7200,"#,
            r#""interval_s":75,"probes":9,"source":"sysctl"},"user_timeout_ms":30000,"#,
            r#""last_heard_ms":12000,"probes_outstanding":0,"timer_expires_ms":7190000,"#,
            r#""unacked_bytes":200,"queued_bytes":300,"risks":["keepalive_too_late","keepalive_suppressed"]}"#,
            "\n"
        )
    );
}

#[test]
fn nobody_holds_it_means_null_owner_and_keepalive() {
    let mut c = sample();
    c.owner = None;
    c.keepalive = Keepalive::default();
    let v: serde_json::Value = serde_json::from_str(json_lines(&[c]).trim()).unwrap();
    assert!(v["owner"].is_null());
    for k in ["enabled", "idle_s", "interval_s", "probes", "source"] {
        assert!(v["keepalive"][k].is_null(), "{k}");
    }
}

#[test]
fn human_table_summary_and_explanations() {
    let text = human(&[sample()], 3, NAT);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("NETNS"), "{text}");
    assert!(lines[1].contains("10.0.0.1:40000"), "{text}");
    assert!(lines[1].contains("1234/postgres"), "{text}");
    assert!(lines[1].contains("on 7200/75/9 sysctl"), "{text}");
    assert!(lines[1].contains("keepalive_too_late"), "{text}");
    // Columns align: every row has LOCAL at the same offset.
    let col = lines[0].find("LOCAL").unwrap();
    assert_eq!(lines[1].find("10.0.0.1").unwrap(), col, "{text}");
    assert!(
        lines[2].starts_with("1 connection(s) in 1 of 3 network namespace(s) scanned; 1 at risk (NAT timeout 350s): 1 keepalive_too_late"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("  keepalive_too_late: keepalive is on"),
        "{text}"
    );
    let empty = human(&[], 2, NAT);
    assert_eq!(
        empty,
        "0 connection(s) in 0 of 2 network namespace(s) scanned; no keepalive risks (NAT timeout 350s)\n"
    );
}

#[test]
fn short_durations() {
    assert_eq!(short_ms(850), "850ms");
    assert_eq!(short_ms(4_200), "4.2s");
    assert_eq!(short_ms(42_000), "42s");
    assert_eq!(short_ms(725_000), "12m05s");
    assert_eq!(short_ms(7_200_000), "2h00m");
}
