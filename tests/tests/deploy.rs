//! Production deployment: Prometheus scraping the metrics endpoint, the privileges of each
//! variant (least privilege, full) as the systemd unit files and the DaemonSets grant them,
//! and the deployment files' own validators.
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
fn the_least_privilege_units_capabilities_suffice_and_each_is_needed() {
    if need_root() {
        return;
    }
    let caps = LEAST_PRIVILEGE.unit_capabilities();
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
    // Its owner, as the kernel recorded it at connect().
    assert_eq!(closed["owner"]["pid"], std::process::id(), "{closed}");
    assert_eq!(closed["owner"]["comm"], my_comm().as_str(), "{closed}");

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

/// Runs the agent as `nobody` holding `caps`, started after a listener and a connection it
/// accepted were opened: whether it names their owners (all three closes of
/// [`OlderSockets::end`] with this process, or none), and its stderr.
fn names_older_owners(caps: &[String]) -> (bool, String) {
    let link = Link::new("own");
    let older = OlderSockets::open(&link);
    let wrapper = as_nobody_with(caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let (na, nb) = (link.a.inode().to_string(), link.b.inode().to_string());
    let agent = Agent::start_as(&wrapper, &["--netns", &na, "--netns", &nb]);
    let closes = older.end(&link, &agent, WAIT);
    let stderr = agent.stderr();
    agent.stop();
    let found = closes[0]["owner"].is_object();
    // (In the host's cgroup namespace: cgroup paths can be trusted.)
    assert_older_owners(&closes, found, true);
    (found, stderr)
}

#[test]
fn the_full_units_capabilities_name_older_owners_and_each_is_needed() {
    if need_root() {
        return;
    }
    let least = LEAST_PRIVILEGE.unit_capabilities();
    let full = FULL.unit_capabilities();
    let added: Vec<&String> = full.iter().filter(|c| !least.contains(c)).collect();
    assert!(!added.is_empty(), "the drop-in adds capabilities: {full:?}");
    let (found, stderr) = names_older_owners(&least);
    assert!(
        !found,
        "least privilege: owners of older sockets unknown: {stderr}"
    );
    let (found, stderr) = names_older_owners(&full);
    assert!(found, "full: the owners of older sockets: {stderr}");
    eprintln!("full ({}): older owners named", full.join(" "));
    // Without any one of those it adds: not named, and the warning says what is missing.
    for missing in added {
        let rest: Vec<String> = full.iter().filter(|c| *c != missing).cloned().collect();
        let (found, stderr) = names_older_owners(&rest);
        assert!(!found, "without {missing}: {stderr}");
        assert!(
            stderr.contains(&format!("missing {missing}")),
            "the warning names {missing}: {stderr}"
        );
        eprintln!("without {missing}: not named");
    }
}

#[test]
fn each_daemonset_grants_its_units_capabilities() {
    for variant in VARIANTS {
        let yaml = std::fs::read_to_string(variant.daemonset_path()).expect("daemonset");
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
            variant.unit_capabilities(),
            "{}: the DaemonSet and the unit grant the same capabilities",
            variant.name
        );
        assert!(
            yaml.contains("drop: [\"ALL\"]"),
            "drops every other capability"
        );
        assert!(yaml.contains("privileged: false"));
        // The host's pid namespace exactly where the owners of older sockets are looked up.
        let host_pid = format!("hostPID: {}", variant.finds_older_owners);
        assert!(yaml.contains(&host_pid), "{}: {host_pid}", variant.name);
        assert!(yaml.contains("hostNetwork: false"), "{}", variant.name);
    }
}

/// `systemd-analyze ARGS... UNIT` on a copy of `variant`'s unit files (ExecStart pointing
/// at the binary built, the drop-ins beside it): (success, stdout, stderr).
fn systemd_analyze(variant: &Variant, args: &[&str]) -> (bool, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "kaprobe-unit-{}-{}",
        std::process::id(),
        variant.daemonset
    ));
    for file in variant.unit_files {
        let text = std::fs::read_to_string(repo_root().join("deploy/systemd").join(file))
            .expect("unit file");
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
        // systemd-analyze checks that ExecStart's binary exists: point it at the one built.
        std::fs::write(
            &path,
            text.replace("/usr/local/bin/kaprobe", &kaprobe_bin()),
        )
        .expect("write unit file");
    }
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(dir.join(variant.unit_files[0]))
        .output()
        .expect("systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn systemd_units_verify() {
    for variant in VARIANTS {
        let (ok, _, stderr) = systemd_analyze(&variant, &["verify"]);
        assert!(ok, "{}: systemd-analyze verify: {stderr}", variant.name);
        assert!(
            stderr.trim().is_empty(),
            "{}: no warnings: {stderr}",
            variant.name
        );
    }
}

/// systemd's own reading of each variant's merged settings (`systemd-analyze security
/// --offline`): sock_diag (AF_NETLINK) in both; entering network namespaces and the
/// capabilities of the owners' look-up only in the full one; no other namespace kind.
#[test]
fn systemd_grants_each_variant_what_it_says() {
    for variant in VARIANTS {
        let (_, stdout, stderr) =
            systemd_analyze(&variant, &["security", "--offline=true", "--json=short"]);
        let checks: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{}: security JSON ({e}): {stdout}{stderr}", variant.name));
        // `set` true: the unit forbids what the check names.
        let forbids = |name: &str| {
            checks
                .as_array()
                .expect("checks")
                .iter()
                .find(|c| c["name"] == name)
                .unwrap_or_else(|| panic!("no check {name}: {stdout}"))["set"]
                .as_bool()
                .expect("set")
        };
        let full = variant.finds_older_owners;
        let want = [
            ("RestrictAddressFamilies=~AF_NETLINK", false),
            ("RestrictNamespaces=~net", !full),
            ("CapabilityBoundingSet=~CAP_SYS_ADMIN", !full),
            ("CapabilityBoundingSet=~CAP_SYS_PTRACE", !full),
            ("CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)", !full),
            ("CapabilityBoundingSet=~CAP_NET_ADMIN", true),
            ("RestrictNamespaces=~user", true),
            ("RestrictNamespaces=~mnt", true),
            ("RestrictNamespaces=~pid", true),
        ];
        for (check, forbidden) in want {
            assert_eq!(forbids(check), forbidden, "{}: {check}", variant.name);
        }
    }
}

#[test]
fn daemonsets_validate_against_the_kubernetes_schema() {
    let validator = repo_root().join("target/tools/venv/bin/kubernetes-validate");
    let validator = if validator.exists() {
        validator
    } else {
        "kubernetes-validate".into()
    };
    let out = Command::new(&validator)
        .arg("--strict")
        .args(VARIANTS.map(|v| v.daemonset_path()))
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
    for variant in VARIANTS {
        assert!(
            text.contains(&format!("{} passed", variant.daemonset)),
            "{}: {text}",
            variant.name
        );
    }
}
