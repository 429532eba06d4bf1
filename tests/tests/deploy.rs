//! Production deployment: Prometheus scraping the metrics endpoint, least privilege as the
//! systemd unit and the DaemonSet grant it, and the deployment files' own validators.
use std::{net::SocketAddr, process::Command, time::Duration};

use kaprobe_tests::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn prometheus_sees_the_timeout_counter_rise_by_the_timeouts_caused() {
    if need_root() {
        return;
    }
    const N: usize = 4;
    let link = Link::new("prom");
    let listener = listen(&link.b, link.b4);
    let port = listener.local_addr().expect("addr").port();
    let (agent, prom, _) = scraped_agent(port, &[], &[]);
    let _conns = keepalive_timeouts(&link, listener, N);
    let ns = link.a.inode();
    agent.wait_count("a keepalive_timeout per connection", N, WAIT, |v| {
        v["event"] == "keepalive_timeout" && v["netns"] == ns
    });
    let caused = link.a.nstat()["TcpExtTCPAbortOnTimeout"];
    assert_eq!(caused, N as u64, "the kernel's count of keepalive timeouts");

    let after = prom.wait_value("kaprobe_keepalive_timeouts_total", caused as f64);
    assert_eq!(
        after,
        Some(caused as f64),
        "the counter rose from 0 by the timeouts caused"
    );
    let closes = "sum(kaprobe_connections_closed_total{cause=\"keepalive_timeout\"})";
    assert_eq!(prom.wait_value(closes, caused as f64), Some(caused as f64));
    let lost = prom.query("sum(kaprobe_events_lost_total)");
    assert_eq!(lost, Some(0.0), "nothing lost");
    drop(prom);
    agent.stop();
}

#[test]
fn metrics_endpoint_serves_openmetrics_and_404s_elsewhere() {
    if need_root() {
        return;
    }
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let agent = Agent::start(&[
        "--metrics-addr",
        &metrics.to_string(),
        "--metrics-remote-port",
    ]);
    let (status, body) = http_get(metrics, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF: {body}"
    );
    for name in [
        "kaprobe_keepalive_probes_total",
        "kaprobe_keepalive_timeouts_total",
        "kaprobe_events_lost_total{source=\"ring_buffer\"}",
        "kaprobe_tracked_connections",
        "kaprobe_ring_buffer_size_bytes 4194304",
        "kaprobe_agent_info{",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    assert_eq!(http_get(metrics, "/nope").expect("GET /nope").0, 404);
    agent.stop();
}

/// `setpriv` arguments that run a command as `nobody` holding exactly `caps`.
fn as_nobody_with(caps: &[String]) -> Vec<String> {
    let list: String = caps
        .iter()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps=-all{list}"),
        format!("--ambient-caps=-all{list}"),
        format!("--bounding-set=-all{list}"),
    ]
}

#[test]
fn the_units_capabilities_suffice_and_each_is_needed() {
    if need_root() {
        return;
    }
    let caps = unit_capabilities();
    assert!(!caps.is_empty(), "the unit grants capabilities");
    // A non-root user with exactly the unit's capabilities sees a real keepalive timeout.
    let wrapper = as_nobody_with(&caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let link = Link::new("lp");
    let agent = Agent::start_as(&wrapper, &[]);
    let (client, _server) = connected(&link, link.b4);
    set_keepalive(
        &client,
        Keepalive {
            idle_s: 1,
            intvl_s: 1,
            count: 2,
        },
    );
    let (ns, sport) = (link.a.inode(), port(&client));
    link.silence_b();
    assert_eq!(read_until_error(&client), ETIMEDOUT);
    agent.wait_for("keepalive_timeout", WAIT, |v| {
        is(v, "keepalive_timeout", ns, sport)
    });
    agent.wait_for("connection_closed", WAIT, |v| {
        is(v, "connection_closed", ns, sport)
    });
    let all = agent.stop();
    assert_probes_match_nstat(&all, &link.a, sport);
    let closed = the_one(&all, ns, sport, "connection_closed");
    assert_eq!(closed["cause"], "keepalive_timeout", "{closed}");

    // Without any one of them: one line naming it, status 3.
    for missing in &caps {
        let rest: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let argv = as_nobody_with(&rest);
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .arg(kaprobe_bin())
            .args(["watch", "--duration", "1s"])
            .output()
            .expect("setpriv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "without {missing}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(
            lines[0].contains(&format!("missing {missing}")),
            "names {missing}: {stderr}"
        );
    }
}

#[test]
fn the_daemonset_grants_the_units_capabilities() {
    let yaml = std::fs::read_to_string(repo_root().join("deploy/kubernetes/daemonset.yaml"))
        .expect("daemonset");
    let add = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: "))
        .expect("capabilities add: [...] in the DaemonSet");
    let mut caps: Vec<String> = add
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|c| format!("CAP_{}", c.trim().trim_matches('"')))
        .collect();
    caps.sort();
    assert_eq!(
        caps,
        unit_capabilities(),
        "the DaemonSet and the unit grant the same capabilities"
    );
    assert!(
        yaml.contains("drop: [\"ALL\"]"),
        "drops every other capability"
    );
    assert!(yaml.contains("privileged: false"));
}

#[test]
fn systemd_unit_verifies() {
    let unit =
        std::fs::read_to_string(repo_root().join("deploy/systemd/kaprobe.service")).expect("unit");
    // systemd-analyze checks that ExecStart's binary exists: point it at the one built.
    let dir = std::env::temp_dir().join(format!("kaprobe-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("kaprobe.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/kaprobe", &kaprobe_bin()),
    )
    .expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(stderr.trim().is_empty(), "no warnings: {stderr}");
}

#[test]
fn daemonset_validates_against_the_kubernetes_schema() {
    let validator = repo_root().join("target/tools/venv/bin/kubernetes-validate");
    let validator = if validator.exists() {
        validator
    } else {
        "kubernetes-validate".into()
    };
    let out = Command::new(&validator)
        .arg("--strict")
        .arg(repo_root().join("deploy/kubernetes/daemonset.yaml"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): `cargo xtask setup` installs it",
                validator.display()
            )
        });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("passed"), "{text}");
}
