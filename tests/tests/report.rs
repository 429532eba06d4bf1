//! Knowing the connection (issue 3, `watch` side): the owner of client and accepted
//! sockets, the close report's byte counts, the owner/namespace filters and the periodic
//! summaries, against the real kernel. The references: this process's own pid and name,
//! the bytes the test wrote, and the namespaces it made.
use std::{
    io::{Read, Write},
    net::SocketAddr,
    time::Duration,
};

use kaprobe_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// This process's name as the kernel has it (the main thread's comm).
fn my_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("comm")
        .trim_end()
        .to_owned()
}

/// Sends `up` bytes client → server and `down` bytes back, then the client closes first.
/// Returns the client's and the server's local ports.
fn exchange(link: &Link, up: usize, down: usize) -> (u16, u16) {
    let listener = listen(&link.b, link.b4);
    let to = listener.local_addr().expect("addr");
    let mut client = connect(&link.a, to);
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(&vec![b'u'; up]).expect("write up");
    let mut buf = vec![0u8; up];
    server.read_exact(&mut buf).expect("read up");
    server.write_all(&vec![b'd'; down]).expect("write down");
    let mut buf = vec![0u8; down];
    client.read_exact(&mut buf).expect("read down");
    let ports = (port(&client), port(&server));
    drop(client);
    assert_eq!(
        read_until_error(&server),
        0,
        "the server sees the client's FIN"
    );
    drop(server);
    ports
}

#[test]
fn owner_and_bytes_of_a_client_and_an_accepted_connection() {
    if need_root() {
        return;
    }
    let link = Link::new("own");
    let (na, nb) = (link.a.inode(), link.b.inode());
    let agent = Agent::start(&[
        "--all",
        "--netns",
        &na.to_string(),
        "--netns",
        &nb.to_string(),
    ]);
    let (up, down) = (12_345, 6_789);
    let (cport, sport) = exchange(&link, up, down);
    agent.wait_for("the client's close", WAIT, |v| {
        is(v, "connection_closed", na, cport)
    });
    agent.wait_for("the server's close", WAIT, |v| {
        is(v, "connection_closed", nb, sport)
    });
    let all = agent.stop();

    let me = std::process::id();
    let comm = my_comm();
    for (ns, p, direction, sent, received, by, tw) in [
        (na, cport, "outbound", up, down, "local", true),
        (nb, sport, "inbound", down, up, "remote", false),
    ] {
        let closed = the_one(&all, ns, p, "connection_closed");
        assert_eq!(closed["owner"]["pid"], me, "{closed}");
        assert_eq!(closed["owner"]["comm"], comm.as_str(), "{closed}");
        assert!(closed["owner"]["cgroup"].is_string(), "{closed}");
        assert_eq!(closed["direction"], direction, "{closed}");
        assert_eq!(closed["bytes_sent"], sent as u64, "{closed}");
        assert_eq!(closed["bytes_received"], received as u64, "{closed}");
        assert_eq!(closed["cause"], "fin");
        assert_eq!(closed["closed_by"], by);
        assert_eq!(closed["time_wait"], tw);
        assert!(
            closed["segments"].as_u64().is_some_and(|n| n >= 4),
            "{closed}"
        );
        // Every event of the connection carries the owner.
        for e in conn_events(&all, ns, p) {
            assert_eq!(e["owner"]["pid"], me, "{e}");
        }
    }
}

#[test]
fn keepalive_timeout_of_an_accepted_connection_names_the_listener_owner() {
    if need_root() {
        return;
    }
    // The server side has keepalive on and the client goes silent: the timeout happens in
    // the timer of a socket born in softirq, whose owner is its listener's.
    let link = Link::new("sown");
    let nb = link.b.inode();
    let agent = Agent::start(&["--netns", &nb.to_string()]);
    let listener = listen(&link.b, link.b4);
    let client = connect(&link.a, listener.local_addr().expect("addr"));
    let (server, _) = listener.accept().expect("accept");
    set_keepalive(
        &server,
        Keepalive {
            idle_s: 1,
            intvl_s: 1,
            count: 2,
        },
    );
    let sport = port(&server);
    // Silence the client's side: drop what a sends to b.
    link.a.nft(&format!(
        "add table inet kaprobe_test\n\
         add chain inet kaprobe_test out {{ type filter hook output priority 0; }}\n\
         add rule inet kaprobe_test out ip daddr {} drop\n",
        link.b4
    ));
    assert_eq!(read_until_error(&server), ETIMEDOUT);
    let timeout = agent.wait_for("keepalive_timeout", WAIT, |v| {
        is(v, "keepalive_timeout", nb, sport)
    });
    let all = agent.stop();
    drop(client);
    assert_eq!(timeout["owner"]["pid"], std::process::id(), "{timeout}");
    assert_eq!(timeout["owner"]["comm"], my_comm().as_str());
    let probes = conn_kind(&all, nb, sport, "keepalive_probe");
    assert!(!probes.is_empty());
    for p in probes {
        assert_eq!(p["owner"]["pid"], std::process::id(), "{p}");
    }
    let closed = the_one(&all, nb, sport, "connection_closed");
    assert_eq!(closed["direction"], "inbound");
    assert_eq!(closed["cause"], "keepalive_timeout");
}

/// Closes `s` with `data` unread in its receive queue: the kernel resets the connection.
fn abort_with_unread(s: std::net::TcpStream, peer: &mut std::net::TcpStream) {
    peer.write_all(b"unread").expect("write");
    let mut probe = [0u8; 6];
    assert_eq!(s.peek(&mut probe).expect("peek"), 6);
    drop(s);
}

#[test]
fn owners_of_what_was_open_before_the_agent_started() {
    if need_root() {
        return;
    }
    let link = Link::new("old");
    let (na, nb) = (link.a.inode(), link.b.inode());
    // Before the agent: a listener and a connection it accepted.
    let listener = listen(&link.b, link.b4);
    let to = listener.local_addr().expect("addr");
    let old_client = connect(&link.a, to);
    let (mut old_server, _) = listener.accept().expect("accept");
    let agent = Agent::start(&["-v", "--netns", &na.to_string(), "--netns", &nb.to_string()]);
    // After: the old listener accepts a new connection.
    let mut new_client = connect(&link.a, to);
    let (new_server, _) = listener.accept().expect("accept");
    let (old_cport, new_cport, lport) = (port(&old_client), port(&new_client), to.port());
    // Both end with a reset: the old client's close() and the new server's, data unread.
    abort_with_unread(old_client, &mut old_server);
    abort_with_unread(new_server, &mut new_client);
    let server_close =
        |v: &Value, cport: u16| is(v, "connection_closed", nb, lport) && v["dport"] == cport;
    agent.wait_for("the old client's close", WAIT, |v| {
        is(v, "connection_closed", na, old_cport)
    });
    agent.wait_for("the new server's close", WAIT, |v| {
        server_close(v, new_cport)
    });
    agent.wait_for("the old server's close", WAIT, |v| {
        server_close(v, old_cport)
    });
    // Said at start-up (-v), before agent_start.
    let log = agent.stderr();
    assert!(
        log.contains("owners of what was open before kaprobe started"),
        "{log}"
    );
    let all = agent.stop();
    let me = std::process::id();
    let comm = my_comm();
    let closes: Vec<&Value> = all
        .iter()
        .filter(|v| {
            is(v, "connection_closed", na, old_cport)
                || server_close(v, new_cport)
                || server_close(v, old_cport)
        })
        .collect();
    assert_eq!(closes.len(), 3, "{closes:?}");
    // The old client: found in /proc at start-up. The new server: its listener's owner,
    // which the kernel learnt from the agent (it never saw listen()). The old server: both.
    for closed in closes {
        assert_eq!(closed["owner"]["pid"], me, "{closed}");
        assert_eq!(closed["owner"]["comm"], comm.as_str(), "{closed}");
        assert!(closed["owner"]["cgroup"].is_string(), "{closed}");
    }
    // Every event of those connections names it too (the RSTs, sent and received).
    for e in conn_events(&all, na, old_cport)
        .into_iter()
        .chain(conn_events(&all, nb, lport))
    {
        assert_eq!(e["owner"]["pid"], me, "{e}");
    }
    assert!(!conn_kind(&all, na, old_cport, "reset_sent").is_empty());
}

#[test]
fn owner_and_namespace_filters_exclude_other_connections() {
    if need_root() {
        return;
    }
    let link = Link::new("flt");
    let (na, nb) = (link.a.inode(), link.b.inode());
    let me = std::process::id().to_string();
    let comm = my_comm();
    // Three agents at once: by this pid and namespace a, by another pid, by another name.
    let mine = Agent::start(&["--all", "--pid", &me, "--netns", &na.to_string()]);
    let other_pid = Agent::start(&["--all", "--pid", "1"]);
    let other_comm = Agent::start(&[
        "--all",
        "--comm",
        "no-such-comm",
        "--netns",
        &na.to_string(),
    ]);
    let by_comm = Agent::start(&["--all", "--comm", &comm, "--netns", &nb.to_string()]);
    let (cport, sport) = exchange(&link, 100, 100);
    mine.wait_for("the client's close", WAIT, |v| {
        is(v, "connection_closed", na, cport)
    });
    by_comm.wait_for("the server's close", WAIT, |v| {
        is(v, "connection_closed", nb, sport)
    });
    let mine = mine.stop();
    let by_comm = by_comm.stop();
    // The other agents saw the same connections end: give them the time the others took.
    let other_pid = other_pid.stop();
    let other_comm = other_comm.stop();
    let conns = |all: &[Value]| all.iter().filter(|v| v.get("sport").is_some()).count();
    assert!(
        mine.iter().all(|v| v.get("netns").is_none_or(|n| *n == na)),
        "only namespace a"
    );
    assert!(
        mine.iter()
            .filter(|v| v.get("owner").is_some())
            .all(|v| v["owner"]["pid"] == std::process::id())
    );
    assert!(
        by_comm
            .iter()
            .all(|v| v.get("netns").is_none_or(|n| *n == nb)),
        "only namespace b"
    );
    assert!(
        conn_events(&other_pid, na, cport).is_empty()
            && conn_events(&other_pid, nb, sport).is_empty()
    );
    assert!(conn_events(&other_comm, na, cport).is_empty());
    assert_eq!(conns(&other_comm), 0, "no connection owned by no-such-comm");
    // --netns is applied in the kernel: the other namespace's records were never sent.
    let stop = mine.last().expect("agent_stop");
    assert!(
        stop["totals"]["filtered_in_kernel"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{stop}"
    );
}

#[test]
fn cgroup_filter_and_path() {
    if need_root() {
        return;
    }
    // A client process moved into a cgroup of its own before it connects.
    let root = cgroup2_root();
    let name = format!("kaprobe-test-{}", std::process::id());
    let dir = root.join(&name);
    std::fs::create_dir_all(&dir).expect("mkdir cgroup");
    let path = format!("/{name}");
    let link = Link::new("cg");
    let na = link.a.inode();
    let listener = listen(&link.b, link.b4);
    let to = listener.local_addr().expect("addr");
    let agent = Agent::start(&["--all", "--cgroup", &path]);
    let script = format!(
        "import socket,sys\nsys.stdin.readline()\ns=socket.create_connection(('{}',{}))\ns.sendall(b'x'*10)\ns.close()\n",
        to.ip(),
        to.port()
    );
    let mut child = python_in_cgroup(&link.a, &dir, &script);
    let (mut server, _) = listener.accept().expect("accept");
    let mut buf = Vec::new();
    server.read_to_end(&mut buf).expect("read");
    assert_eq!(buf.len(), 10);
    drop(server);
    assert!(child.wait().expect("wait").success());
    // And a connection of this process (not in that cgroup) at the same time.
    let (mine, _) = exchange(&link, 1, 1);
    let closed = agent.wait_for("the client's close", WAIT, |v| {
        v["event"] == "connection_closed"
            && v["netns"] == na
            && v["dport"] == to.port()
            && v["owner"]["pid"] == child.id()
    });
    let all = agent.stop();
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(closed["owner"]["cgroup"], path.as_str(), "{closed}");
    assert_eq!(closed["owner"]["comm"], "python3");
    assert_eq!(closed["bytes_sent"], 10);
    assert!(
        conn_events(&all, na, mine).is_empty(),
        "this process is not in {path}"
    );
    assert!(
        all.iter()
            .filter(|v| v.get("owner").is_some())
            .all(|v| v["owner"]["cgroup"] == path.as_str()),
        "only {path}"
    );
}

#[test]
fn summary_groups_closes_by_listening_port() {
    if need_root() {
        return;
    }
    const N: usize = 5;
    let link = Link::new("sum");
    let nb = link.b.inode();
    let agent = Agent::start(&[
        "--all",
        "--netns",
        &nb.to_string(),
        "--summary-interval",
        "1s",
    ]);
    let listener = listen(&link.b, link.b4);
    let to: SocketAddr = listener.local_addr().expect("addr");
    for i in 0..N {
        let mut c = connect(&link.a, to);
        let (mut s, _) = listener.accept().expect("accept");
        c.write_all(&vec![b'x'; 100 * (i + 1)]).expect("write");
        drop(c);
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).expect("read");
    }
    // A summary that has all N closes of the port (they may straddle two intervals).
    let port_closes = |v: &Value| -> u64 {
        v["summary"]["closes_by_listening_port"]["top"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["port"] == to.port() && r["netns"] == nb)
            .map(|r| r["count"].as_u64().unwrap_or(0))
            .sum()
    };
    agent.wait_count("N closes summarised", N, WAIT, |v| {
        v["event"] == "connection_closed" && v["netns"] == nb
    });
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let seen: u64 = agent
            .wait_count("summaries", 1, WAIT, |v| v["event"] == "summary")
            .iter()
            .map(port_closes)
            .sum();
        if seen == N as u64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "summaries count {seen} closes of {N}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = agent.stop();
    let summaries: Vec<&Value> = all.iter().filter(|v| v["event"] == "summary").collect();
    assert!(summaries.iter().all(|v| v["interval_ms"] == 1000));
    // The exit summary covers the whole run: all N, with the median of 100..500 bytes.
    let stop = all.last().expect("agent_stop");
    let rows = stop["summary"]["closes_by_listening_port"]["top"]
        .as_array()
        .expect("rows");
    let row = rows
        .iter()
        .find(|r| r["port"] == to.port())
        .expect("the port's row");
    assert_eq!(row["count"], N as u64, "{row}");
    assert_eq!(row["median_bytes"], 300, "{row}");
    assert_eq!(
        row["closed_remotely"], 1.0,
        "the clients closed first: {row}"
    );
    assert_eq!(
        row["time_wait_remote"], N as u64,
        "the clients hold TIME_WAIT: {row}"
    );
    assert!(row["median_lifetime_ms"].is_u64());
    let owners = stop["summary"]["by_owner"]["top"]
        .as_array()
        .expect("owners");
    assert!(
        owners
            .iter()
            .any(|o| o["pid"] == std::process::id() && o["closes_by_cause"]["fin"] == N as u64),
        "{owners:?}"
    );
}
