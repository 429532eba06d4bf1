//! Thousands of keepalive timeouts at once through a deliberately small ring buffer: every
//! timeout is either reported or counted as lost, never silently dropped.
//!
//! Alone in its own test binary (cargo runs test binaries one after another), because the
//! kernel's loss counters are global: another test's records would share the ring.
use std::time::{Duration, Instant};

use kaprobe_tests::*;
use serde_json::Value;

#[test]
fn small_ring_every_timeout_is_delivered_or_counted_lost() {
    if need_root() {
        return;
    }
    const N: usize = 2000;
    raise_fd_limit(4 * N as u64 + 1024);
    let link = Link::new("stress");
    // 4 KiB: room for about twenty keepalive timer records.
    let agent = Agent::start(&["--ring-size", "4K", "-v"]);
    let listener = listen(&link.b, link.b4);
    let (clients, _servers) = connect_many(&link.a, listener, N, None);
    link.silence_b();
    // Armed in one quick loop: the timers of all connections fire within a few jiffies.
    let ka = Keepalive {
        idle_s: 1,
        intvl_s: 1,
        count: 1,
    };
    for c in &clients {
        set_keepalive(c, ka);
    }
    // The kernel's own count is the readiness signal and the reference.
    let deadline = Instant::now() + Duration::from_secs(60);
    let caused = loop {
        let n = link
            .a
            .nstat()
            .get("TcpExtTCPAbortOnTimeout")
            .copied()
            .unwrap_or(0);
        if n >= N as u64 {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {N} connections timed out in 60 s; still open:\n{}\nnstat: {:?}",
            link.a.exec("ss", &["-tnoi", "state", "connected"]),
            link.a.nstat()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(caused, N as u64);
    for c in &clients {
        let err = socket_error(c);
        assert_eq!(err, Some(ETIMEDOUT), "every client sees ETIMEDOUT");
    }
    let all = agent.stop();

    let ns = link.a.inode();
    let delivered = events(&all, "keepalive_timeout", ns).len() as u64;
    let reports: Vec<&Value> = all
        .iter()
        .filter(|v| v["event"] == "events_lost" && v["source"] == "ring_buffer")
        .collect();
    let lost: u64 = reports
        .iter()
        .filter_map(|v| v["records"]["keepalive_timer_ends"].as_u64())
        .sum();
    let stop = all.last().expect("agent_stop");
    eprintln!(
        "{N} timeouts: {delivered} reported, {lost} counted lost; totals {}",
        stop["totals"]
    );
    assert!(
        lost > 0,
        "a 4 KiB ring cannot take {N} timeouts at once: the test must exercise loss"
    );
    assert!(delivered > 0, "some timeouts get through");
    // On failure, what the agent did report about the clients' namespace.
    let mut seen = std::collections::BTreeMap::new();
    for v in all.iter().filter(|v| v["netns"] == ns) {
        let key = format!("{} {}", v["event"], v["cause"]);
        *seen.entry(key).or_insert(0u64) += 1;
    }
    assert_eq!(
        delivered + lost,
        caused,
        "delivered + lost = caused; reported in the clients' namespace: {seen:?}"
    );
    assert_eq!(
        stop["totals"]["lost_records"]["keepalive_timer_ends"], lost,
        "the exit summary agrees"
    );
    let records_lost: u64 = reports.iter().filter_map(|v| v["count"].as_u64()).sum();
    assert_eq!(
        stop["totals"]["events_lost"], records_lost,
        "events_lost reports add up to the total"
    );
    assert!(records_lost >= lost);
    // Every connection that timed out and was reported is closed as a keepalive timeout.
    let closed = events(&all, "connection_closed", ns)
        .iter()
        .filter(|v| v["cause"] == "keepalive_timeout")
        .count() as u64;
    assert_eq!(
        closed, delivered,
        "one connection_closed per reported timeout"
    );
}
