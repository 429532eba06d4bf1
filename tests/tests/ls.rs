//! `kaprobe ls`: the keepalive audit of live connections, against the real kernel. Each test
//! reads only its own namespaces (`--netns`), so tests run in parallel.
use std::{
    io::Write,
    process::Command,
    time::{Duration, Instant},
};

use kaprobe_tests::*;
use serde_json::Value;

/// Runs `kaprobe ls --format json <args>`; returns its lines.
fn ls(args: &[&str]) -> Vec<Value> {
    let out = Command::new(kaprobe_bin())
        .args(["ls", "--format", "json"])
        .args(args)
        .output()
        .expect("run kaprobe ls");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kaprobe ls {args:?} exited with {}; stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `ls` of the namespaces given, plus `extra` flags.
fn ls_in(namespaces: &[&NetNs], extra: &[&str]) -> Vec<Value> {
    let inodes: Vec<String> = namespaces.iter().map(|n| n.inode().to_string()).collect();
    let mut args: Vec<&str> = Vec::new();
    for i in &inodes {
        args.extend(["--netns", i]);
    }
    args.extend_from_slice(extra);
    ls(&args)
}

/// The row of the connection whose local port is `sport` in namespace `ns`.
fn row<'a>(rows: &'a [Value], ns: &NetNs, sport: u16) -> &'a Value {
    let found: Vec<&Value> = rows
        .iter()
        .filter(|r| r["netns"] == ns.inode() && r["sport"] == sport)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one row for port {sport} in {}, got:\n{}",
        ns.name,
        dump(rows)
    );
    found[0]
}

fn dump(rows: &[Value]) -> String {
    rows.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn risks(r: &Value) -> Vec<&str> {
    r["risks"]
        .as_array()
        .expect("risks list")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

fn my_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("comm")
        .trim_end()
        .to_owned()
}

#[test]
fn socket_options_and_namespace_sysctls_are_reported() {
    if need_root() {
        return;
    }
    let link = Link::new("lso");
    // Distinctive defaults in the client's namespace.
    for (name, v) in [
        ("net.ipv4.tcp_keepalive_time", "4321"),
        ("net.ipv4.tcp_keepalive_intvl", "43"),
        ("net.ipv4.tcp_keepalive_probes", "4"),
    ] {
        link.a.exec("sysctl", &["-qw", &format!("{name}={v}")]);
    }
    let listener = listen(&link.b, link.b4);
    let to = listener.local_addr().expect("addr");
    let own = connect(&link.a, to);
    let (_own_peer, _) = listener.accept().expect("accept");
    set_keepalive(
        &own,
        Keepalive {
            idle_s: 1234,
            intvl_s: 56,
            count: 7,
        },
    );
    set_user_timeout(&own, 9876);
    let defaults = connect(&link.a, to);
    let (_defaults_peer, _) = listener.accept().expect("accept");
    enable_keepalive(&defaults);
    let off = connect(&link.a, to);
    let (_off_peer, _) = listener.accept().expect("accept");
    let l6 = listen(&link.b, link.b6);
    let v6 = connect(&link.a, l6.local_addr().expect("addr"));
    let (_v6_peer, _) = l6.accept().expect("accept");

    let rows = ls_in(&[&link.a], &[]);
    let r = row(&rows, &link.a, port(&own));
    assert_eq!(r["state"], "established", "{r}");
    assert_eq!(r["family"], "ipv4", "{r}");
    assert_eq!(r["saddr"], link.a4.to_string(), "{r}");
    assert_eq!(r["daddr"], link.b4.to_string(), "{r}");
    assert_eq!(r["dport"], to.port(), "{r}");
    assert_eq!(
        r["keepalive"],
        serde_json::json!({"enabled": true, "idle_s": 1234, "interval_s": 56, "probes": 7, "source": "socket"}),
        "{r}"
    );
    assert_eq!(r["user_timeout_ms"], 9876, "{r}");
    let expires = r["timer_expires_ms"]
        .as_u64()
        .expect("keepalive timer armed");
    assert!(expires > 1_200_000 && expires <= 1_234_000, "{r}");
    assert_eq!(r["probes_outstanding"], 0, "{r}");
    assert_eq!(r["unacked_bytes"], 0, "{r}");
    assert_eq!(r["queued_bytes"], 0, "{r}");
    assert!(r["last_heard_ms"].is_u64(), "{r}");

    let r = row(&rows, &link.a, port(&defaults));
    assert_eq!(
        r["keepalive"],
        serde_json::json!({"enabled": true, "idle_s": 4321, "interval_s": 43, "probes": 4, "source": "sysctl"}),
        "{r}"
    );
    assert_eq!(r["user_timeout_ms"], Value::Null, "{r}");
    let expires = r["timer_expires_ms"]
        .as_u64()
        .expect("keepalive timer armed");
    assert!(expires <= 4_321_000, "{r}");

    let r = row(&rows, &link.a, port(&off));
    assert_eq!(r["keepalive"]["enabled"], false, "{r}");
    assert_eq!(r["keepalive"]["idle_s"], 4321, "what would apply: {r}");
    assert_eq!(r["timer_expires_ms"], Value::Null, "{r}");

    let r = row(&rows, &link.a, port(&v6));
    assert_eq!(r["family"], "ipv6", "{r}");
    assert_eq!(r["saddr"], link.a6.to_string(), "{r}");
    assert_eq!(r["daddr"], link.b6.to_string(), "{r}");
    assert_eq!(r["keepalive"]["enabled"], false, "{r}");
}

#[test]
fn owners_of_client_and_accepted_sockets() {
    if need_root() {
        return;
    }
    let link = Link::new("low");
    let listener = listen(&link.b, link.b4);
    let client = connect(&link.a, listener.local_addr().expect("addr"));
    let (server, _) = listener.accept().expect("accept");
    let rows = ls_in(&[&link.a, &link.b], &[]);
    let me = std::process::id();
    for (ns, sock) in [(&link.a, &client), (&link.b, &server)] {
        let r = row(&rows, ns, port(sock));
        assert_eq!(r["owner"]["pid"], me, "{r}");
        assert_eq!(r["owner"]["comm"], my_comm(), "{r}");
        assert_eq!(r["state"], "established", "{r}");
    }
    assert!(
        rows.iter().all(|r| r["state"] != "listen"),
        "listeners are not connections:\n{}",
        dump(&rows)
    );
    // --state listen shows them.
    let listening = ls_in(&[&link.b], &["--state", "listen"]);
    assert_eq!(listening.len(), 1, "{}", dump(&listening));
    let r = &listening[0];
    assert_eq!(r["state"], "listen", "{r}");
    assert_eq!(
        r["sport"],
        listener.local_addr().expect("addr").port(),
        "{r}"
    );
    assert_eq!(r["owner"]["pid"], me, "{r}");
}

#[test]
fn time_wait_has_no_owner_and_no_keepalive() {
    if need_root() {
        return;
    }
    let link = Link::new("ltw");
    let (client, server) = connected(&link, link.b4);
    let sport = port(&client);
    drop(client); // the client closes first: it holds TIME_WAIT
    assert_eq!(read_until_error(&server), 0);
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let rows = ls_in(&[&link.a], &["--state", "time_wait"]);
        if let Some(r) = rows.iter().find(|r| r["sport"] == sport) {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no TIME_WAIT row:\n{}",
            dump(&rows)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(r["state"], "time_wait", "{r}");
    assert_eq!(r["owner"], Value::Null, "{r}");
    assert_eq!(
        r["keepalive"],
        serde_json::json!({"enabled": null, "idle_s": null, "interval_s": null, "probes": null, "source": null}),
        "{r}"
    );
    assert_eq!(r["risks"], serde_json::json!([]), "{r}");
}

#[test]
fn idle_connection_without_keepalive_is_flagged() {
    if need_root() {
        return;
    }
    let link = Link::new("lid");
    let (idle, _idle_peer) = connected(&link, link.b4);
    let (healthy, _healthy_peer) = connected(&link, link.b4);
    // Probes every second, answered: heard within the NAT timeout.
    set_keepalive(
        &healthy,
        Keepalive {
            idle_s: 1,
            intvl_s: 1,
            count: 5,
        },
    );
    // Not idle yet.
    let rows = ls_in(&[&link.a], &["--nat-timeout", "2s"]);
    assert!(
        risks(row(&rows, &link.a, port(&idle))).is_empty(),
        "{}",
        dump(&rows)
    );
    std::thread::sleep(Duration::from_millis(3200));
    let rows = ls_in(&[&link.a], &["--nat-timeout", "2s"]);
    let r = row(&rows, &link.a, port(&idle));
    assert_eq!(risks(r), ["no_keepalive_idle"], "{r}");
    assert!(r["last_heard_ms"].as_u64().expect("heard") > 2000, "{r}");
    let r = row(&rows, &link.a, port(&healthy));
    assert!(risks(r).is_empty(), "{r}");
    assert!(r["last_heard_ms"].as_u64().expect("heard") < 2000, "{r}");

    // The human format says it in words.
    let out = Command::new(kaprobe_bin())
        .args([
            "ls",
            "--format",
            "human",
            "--nat-timeout",
            "2s",
            "--at-risk",
        ])
        .args(["--netns", &link.a.inode().to_string()])
        .output()
        .expect("run kaprobe ls");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("NETNS"), "{text}");
    assert!(text.contains(&format!(":{} ", port(&idle))), "{text}");
    assert!(
        !text.contains(&format!(":{} ", port(&healthy))),
        "--at-risk leaves the healthy one out: {text}"
    );
    assert!(
        text.contains("1 at risk (NAT timeout 2s): 1 no_keepalive_idle"),
        "{text}"
    );
    assert!(
        text.contains("  no_keepalive_idle: keepalive is off"),
        "{text}"
    );
}

#[test]
fn keepalive_idle_at_or_past_the_nat_timeout_is_too_late() {
    if need_root() {
        return;
    }
    let link = Link::new("ltl");
    let (late, _p1) = connected(&link, link.b4);
    let (soon, _p2) = connected(&link, link.b4);
    for (s, idle_s) in [(&late, 2), (&soon, 1)] {
        set_keepalive(
            s,
            Keepalive {
                idle_s,
                intvl_s: 1,
                count: 5,
            },
        );
    }
    let rows = ls_in(&[&link.a], &["--nat-timeout", "2s"]);
    assert_eq!(
        risks(row(&rows, &link.a, port(&late))),
        ["keepalive_too_late"]
    );
    assert!(risks(row(&rows, &link.a, port(&soon))).is_empty());
    // With the default NAT timeout (350 s) both are fine.
    let rows = ls_in(&[&link.a], &[]);
    assert!(rows.iter().all(|r| risks(r).is_empty()), "{}", dump(&rows));
}

#[test]
fn unacknowledged_data_suppresses_keepalive() {
    if need_root() {
        return;
    }
    let link = Link::new("lsu");
    let (client, _server) = connected(&link, link.b4);
    set_keepalive(
        &client,
        Keepalive {
            idle_s: 1,
            intvl_s: 1,
            count: 5,
        },
    );
    let sport = port(&client);
    let rows = ls_in(&[&link.a], &["--nat-timeout", "60s"]);
    assert!(
        risks(row(&rows, &link.a, sport)).is_empty(),
        "{}",
        dump(&rows)
    );
    link.silence_b();
    (&client).write_all(&[7u8; 3000]).expect("write");
    // Flagged once the retransmission timer has fired unanswered (~200 ms on veth).
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let rows = ls_in(&[&link.a], &["--nat-timeout", "60s"]);
        let r = row(&rows, &link.a, sport).clone();
        if !risks(&r).is_empty() || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(risks(&r), ["keepalive_suppressed"], "{r}");
    assert_eq!(r["unacked_bytes"], 3000, "{r}");
    assert_eq!(r["queued_bytes"], 3000, "{r}");
    assert_eq!(
        r["timer_expires_ms"],
        Value::Null,
        "the retransmission timer, not keepalive's: {r}"
    );
    link.unsilence_b();
}

#[test]
fn filters_keep_only_what_was_asked_for() {
    if need_root() {
        return;
    }
    let one = Link::new("lf1");
    let other = Link::new("lf2");
    let l1 = listen(&one.b, one.b4);
    let l2 = listen(&one.b, one.b4);
    let (p1, p2) = (
        l1.local_addr().expect("addr").port(),
        l2.local_addr().expect("addr").port(),
    );
    let c1 = connect(&one.a, l1.local_addr().expect("addr"));
    let c2 = connect(&one.a, l2.local_addr().expect("addr"));
    let (_s1, _) = l1.accept().expect("accept");
    let (_s2, _) = l2.accept().expect("accept");
    let (c3, _s3) = connected(&other, other.b4);

    // Another namespace's connections never appear.
    let rows = ls_in(&[&one.a], &[]);
    assert!(
        rows.iter().all(|r| r["netns"] == one.a.inode()),
        "{}",
        dump(&rows)
    );
    row(&rows, &one.a, port(&c1));
    row(&rows, &one.a, port(&c2));
    assert!(
        !rows
            .iter()
            .any(|r| r["sport"] == port(&c3) && r["netns"] != one.a.inode())
    );

    // Ports: either end; OR within the kind.
    let rows = ls_in(&[&one.a], &["--port", &p1.to_string()]);
    assert_eq!(rows.len(), 1, "{}", dump(&rows));
    assert_eq!(rows[0]["sport"], port(&c1));
    let rows = ls_in(
        &[&one.a, &one.b],
        &["--port", &p1.to_string(), "--port", &p2.to_string()],
    );
    assert_eq!(
        rows.len(),
        4,
        "both ends of both connections:\n{}",
        dump(&rows)
    );
    // Without --netns: every namespace, still only the port asked for.
    let rows = ls(&["--port", &p1.to_string()]);
    assert!(
        rows.iter().all(|r| r["sport"] == p1 || r["dport"] == p1),
        "{}",
        dump(&rows)
    );
    assert!(rows.iter().any(|r| r["netns"] == one.a.inode()));
    assert!(rows.iter().any(|r| r["netns"] == one.b.inode()));

    // Addresses, AND with ports.
    let b4 = format!("{}/32", one.b4);
    assert_eq!(ls_in(&[&one.a], &["--addr", &b4]).len(), 2);
    assert!(ls_in(&[&one.a], &["--addr", "192.0.2.0/24"]).is_empty());
    assert_eq!(
        ls_in(&[&one.a], &["--addr", &b4, "--port", &p2.to_string()]).len(),
        1
    );

    // Owners.
    let me = std::process::id().to_string();
    assert_eq!(ls_in(&[&one.a], &["--pid", &me]).len(), 2);
    assert_eq!(ls_in(&[&one.a], &["--pid", "1", "--pid", &me]).len(), 2);
    assert!(ls_in(&[&one.a], &["--pid", "1"]).is_empty());
    assert_eq!(ls_in(&[&one.a], &["--comm", &my_comm()]).len(), 2);
    assert!(ls_in(&[&one.a], &["--comm", "no-such-comm"]).is_empty());
    assert!(ls_in(&[&one.a], &["--cgroup", "/no/such/cgroup"]).is_empty());
    if let Some(cg) = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(str::to_owned)
        })
    {
        assert_eq!(ls_in(&[&one.a], &["--cgroup", &cg]).len(), 2, "cgroup {cg}");
    }
    // States.
    assert!(ls_in(&[&one.a], &["--state", "time_wait"]).is_empty());
    assert_eq!(ls_in(&[&one.a], &["--state", "established"]).len(), 2);
}

#[test]
fn without_root_it_says_what_is_missing() {
    if need_root() {
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(kaprobe_bin())
        .args(["ls", "--format", "json"])
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("CAP_SYS_ADMIN"), "{stderr}");
    assert!(lines[0].contains("CAP_SYS_PTRACE"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_flags_are_status_2() {
    for args in [
        &["ls", "--nat-timeout", "soon"][..],
        &["ls", "--nat-timeout", "0s"],
        &["ls", "--state", "bogus"],
        &["ls", "--addr", "1.2.3/99"],
        &["ls", "--port", "70000"],
        &["ls", "--netns", "x"],
        &["ls", "--format", "xml"],
    ] {
        let out = Command::new(kaprobe_bin())
            .args(args)
            .output()
            .expect("run kaprobe");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}
