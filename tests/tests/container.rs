//! The container image (deploy/container/Containerfile) run as deploy/kubernetes/daemonset.yaml
//! runs it: built from the kaprobe binary under test through the functions `cargo xtask image`
//! uses, run with rootful podman under the DaemonSet's pod and container settings translated
//! flag by flag (a setting the translation does not know fails the test), and shown to report
//! a real keepalive timeout between two network namespaces of the host.
use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use kaprobe_tests::{image, *};
use yaml_rust2::{Yaml, YamlLoader};

const WAIT: Duration = Duration::from_secs(30);
const KA: Keepalive = Keepalive {
    idle_s: 1,
    intvl_s: 1,
    count: 3,
};

fn daemonset() -> Yaml {
    let path = repo_root().join("deploy/kubernetes/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("read the DaemonSet");
    YamlLoader::load_from_str(&text)
        .expect("the DaemonSet is YAML")
        .swap_remove(0)
}

/// The DaemonSet's pod spec and its one container.
fn pod_and_container(ds: &Yaml) -> (&Yaml, &Yaml) {
    let pod = &ds["spec"]["template"]["spec"];
    let containers = pod["containers"]
        .as_vec()
        .expect("spec.template.spec.containers");
    assert_eq!(containers.len(), 1, "one container");
    (pod, &containers[0])
}

fn text(v: &Yaml) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("a string in the DaemonSet, not {v:?}"))
}

fn keys(map: &Yaml) -> Vec<&str> {
    map.as_hash()
        .into_iter()
        .flat_map(|h| h.keys())
        .map(text)
        .collect()
}

/// Fails on a key of `map` that the translation neither translates nor knows to be
/// irrelevant to running the container on one node: a DaemonSet change must be looked at.
fn only_known(map: &Yaml, what: &str, known: &[&str]) {
    for key in keys(map) {
        assert!(
            known.contains(&key),
            "{what}.{key}: not translated into podman flags; translate it in tests/tests/container.rs"
        );
    }
}

#[test]
fn the_daemonset_runs_the_image_xtask_builds() {
    let ds = daemonset();
    let (_, container) = pod_and_container(&ds);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        text(&container["image"]),
        format!("{}:{version}", image::REPOSITORY),
        "the DaemonSet's image must be the one `cargo xtask image` tags for the workspace version (Cargo.toml)"
    );
    assert_eq!(text(&container["command"][0]), image::BINARY);
    let containerfile = std::fs::read_to_string(image::containerfile()).expect("Containerfile");
    assert!(
        containerfile.contains(&format!("ENTRYPOINT [\"{}\"]", image::BINARY)),
        "the image's entry point is the DaemonSet's command: {containerfile}"
    );
}

/// `256Mi` and the like, in bytes.
fn quantity(q: &str) -> u64 {
    let (digits, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = digits.parse().unwrap_or_else(|_| panic!("quantity {q}"));
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => panic!("quantity unit {unit} in {q}"),
    }
}

/// The DaemonSet's container as a kubelet on this node would run it, for `podman run`: the
/// node's IP is `host_ip`, and the metrics port (the container's `ports`) is moved to
/// `metrics_port`, since the host network is shared with whatever else runs here.
struct Translated {
    /// Options of `podman run`.
    options: Vec<String>,
    entrypoint: String,
    args: Vec<String>,
    /// The readiness probe's `httpGet`: (port, path).
    readiness: (u16, String),
    /// `terminationGracePeriodSeconds`: how long the kubelet waits after SIGTERM.
    grace: Duration,
}

fn translate(ds: &Yaml, host_ip: &str, metrics_port: u16) -> Translated {
    let (pod, c) = pod_and_container(ds);
    let mut options: Vec<String> = Vec::new();
    only_known(
        pod,
        "spec.template.spec",
        &[
            "hostNetwork",
            "hostPID",
            "hostIPC",
            "containers",
            "volumes",
            "terminationGracePeriodSeconds",
            // Scheduling and cluster DNS: nothing to run on one node.
            "dnsPolicy",
            "priorityClassName",
            "tolerations",
        ],
    );
    let namespace = |key: &str, flag: &str, private: &str| match pod[key].as_bool() {
        Some(true) => Some(format!("--{flag}=host")),
        Some(false) => Some(format!("--{flag}={private}")),
        None => None,
    };
    // A pod's own network is a bridge; pid and IPC namespaces are the container's own.
    options.extend(namespace("hostNetwork", "network", "bridge"));
    options.extend(namespace("hostPID", "pid", "private"));
    options.extend(namespace("hostIPC", "ipc", "private"));
    let mut opt = |o: String| options.push(o);
    only_known(
        c,
        "container",
        &[
            "name",
            "image",
            "imagePullPolicy",
            "command",
            "args",
            "env",
            "ports",
            "readinessProbe",
            "livenessProbe",
            "resources",
            "securityContext",
            "volumeMounts",
        ],
    );
    opt(format!(
        "--pull={}",
        match text(&c["imagePullPolicy"]) {
            "IfNotPresent" => "missing",
            "Always" => "always",
            "Never" => "never",
            p => panic!("imagePullPolicy {p}"),
        }
    ));

    // Environment: values, or the node's IP; `$(NAME)` in args is expanded by the kubelet.
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_vec().into_iter().flatten() {
        let value = match (&e["value"], text(&e["valueFrom"]["fieldRef"]["fieldPath"])) {
            (Yaml::String(v), _) => v.clone(),
            (_, "status.hostIP") => host_ip.to_owned(),
            (_, other) => panic!("env from {other}"),
        };
        let name = text(&e["name"]).to_owned();
        opt(format!("--env={name}={value}"));
        env.push((name, value));
    }
    let ports: Vec<u16> = c["ports"]
        .as_vec()
        .into_iter()
        .flatten()
        .map(|p| p["containerPort"].as_i64().expect("containerPort") as u16)
        .collect();
    assert_eq!(ports.len(), 1, "one port: metrics");
    let moved = |s: &str| s.replace(&format!(":{}", ports[0]), &format!(":{metrics_port}"));
    let command: Vec<&str> = c["command"]
        .as_vec()
        .expect("command")
        .iter()
        .map(text)
        .collect();
    let args = command[1..]
        .iter()
        .copied()
        .chain(c["args"].as_vec().into_iter().flatten().map(text))
        .map(|a| {
            let a = env
                .iter()
                .fold(a.to_owned(), |a, (n, v)| a.replace(&format!("$({n})"), v));
            moved(&a)
        })
        .collect();
    let probe = &c["readinessProbe"]["httpGet"];
    let probe_port = probe["port"].as_i64().expect("readinessProbe port") as u16;
    assert_eq!(
        probe_port, ports[0],
        "the readiness probe asks the metrics port"
    );
    let readiness = (metrics_port, text(&probe["path"]).to_owned());

    // Resources: the limits are the container's cgroup; requests only schedule.
    let limits = &c["resources"]["limits"];
    only_known(limits, "resources.limits", &["memory"]);
    if let Some(m) = limits["memory"].as_str() {
        opt(format!("--memory={}b", quantity(m)));
    }

    let sc = &c["securityContext"];
    only_known(
        sc,
        "securityContext",
        &[
            "privileged",
            "allowPrivilegeEscalation",
            "readOnlyRootFilesystem",
            "runAsUser",
            "capabilities",
            "seccompProfile",
        ],
    );
    if sc["privileged"].as_bool() == Some(true) {
        opt("--privileged".into());
    }
    if sc["allowPrivilegeEscalation"].as_bool() == Some(false) {
        opt("--security-opt=no-new-privileges".into());
    }
    if sc["readOnlyRootFilesystem"].as_bool() == Some(true) {
        // Kubernetes mounts no tmpfs of its own on /tmp, /run, /var/tmp: neither here.
        opt("--read-only".into());
        opt("--read-only-tmpfs=false".into());
    }
    if let Some(uid) = sc["runAsUser"].as_i64() {
        opt(format!("--user={uid}"));
    }
    only_known(&sc["capabilities"], "capabilities", &["drop", "add"]);
    for (key, flag) in [("drop", "--cap-drop"), ("add", "--cap-add")] {
        for cap in sc["capabilities"][key].as_vec().into_iter().flatten() {
            let cap = match text(cap) {
                "ALL" => "ALL".to_owned(),
                c => format!("CAP_{c}"),
            };
            opt(format!("{flag}={cap}"));
        }
    }
    match sc["seccompProfile"]["type"].as_str() {
        Some("Unconfined") => opt("--security-opt=seccomp=unconfined".into()),
        // podman's own default profile, as the runtime's.
        Some("RuntimeDefault") | None => {}
        Some(other) => panic!("seccompProfile {other}"),
    }

    // Volumes: host paths, bind-mounted.
    let volumes = pod["volumes"].as_vec().expect("volumes");
    for m in c["volumeMounts"].as_vec().into_iter().flatten() {
        only_known(m, "volumeMounts[]", &["name", "mountPath", "readOnly"]);
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("volume {:?}", m["name"]));
        only_known(v, "volumes[]", &["name", "hostPath"]);
        let host = text(&v["hostPath"]["path"]);
        match v["hostPath"]["type"].as_str() {
            Some("DirectoryOrCreate") => std::fs::create_dir_all(host).expect("hostPath"),
            Some("Directory") => assert!(Path::new(host).is_dir(), "hostPath {host}"),
            other => panic!("hostPath type {other:?}"),
        }
        let mode = if m["readOnly"].as_bool() == Some(true) {
            "ro"
        } else {
            "rw"
        };
        opt(format!("--volume={host}:{}:{mode}", text(&m["mountPath"])));
    }
    let grace =
        Duration::from_secs(pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30) as u64);
    Translated {
        options,
        entrypoint: command[0].to_owned(),
        args,
        readiness,
        grace,
    }
}

/// `--ulimit` options with limits podman can grant here. Kubernetes sets no rlimits: a
/// container gets the runtime's. podman 4.3 (Debian 12) asks for RLIMIT_NOFILE and NPROC
/// 1048576 instead, which the OCI runtime cannot set without CAP_SYS_RESOURCE above the
/// hard limits (`setrlimit RLIMIT_NOFILE: Operation not permitted`, seen on a machine whose
/// root lacks CAP_SYS_RESOURCE). So: this process's own open-file limits, and its process
/// limits at most 32768, to which podman lowers its own (strace); RLIMIT_NPROC does not
/// bind uid 0 anyway.
fn inherited_limits() -> Vec<String> {
    let get = |resource| {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we pass; nothing else.
        let rc = unsafe { libc::getrlimit(resource, &mut l) };
        assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
        l
    };
    let nofile = get(libc::RLIMIT_NOFILE);
    let nproc = get(libc::RLIMIT_NPROC);
    vec![
        format!("--ulimit=nofile={}:{}", nofile.rlim_cur, nofile.rlim_max),
        format!(
            "--ulimit=nproc={}:{}",
            nproc.rlim_cur.min(32768),
            nproc.rlim_max.min(32768)
        ),
    ]
}

/// Runs a podman command to the end: its stdout, or a panic showing its output.
fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run podman ({e}): Debian's `podman`; `cargo xtask setup` installs it")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The image built from the binary under test, with a tag of this test run's; removed on
/// drop.
struct TestImage {
    tag: String,
}

impl TestImage {
    fn build() -> TestImage {
        let tag = format!("localhost/kaprobe-test:{}", std::process::id());
        // The build context, removed on drop.
        struct Context(std::path::PathBuf);
        impl Drop for Context {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir =
            Context(std::env::temp_dir().join(format!("kaprobe-image-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        let started = Instant::now();
        let files = image::assemble(Path::new(&kaprobe_bin()), &dir.0).expect("assemble the image");
        let version = env!("CARGO_PKG_VERSION");
        output(&mut image::build_command(
            &dir.0,
            version,
            std::slice::from_ref(&tag),
        ));
        let img = TestImage { tag };
        let size: u64 = output(&mut image::inspect_command(&img.tag, "{{.Size}}"))
            .trim()
            .parse()
            .expect("image size");
        let content: u64 = files.iter().map(|(_, n)| n).sum();
        eprintln!(
            "image {}: built in {:.1} s, {size} bytes; files: {files:?}",
            img.tag,
            started.elapsed().as_secs_f64()
        );
        // The one layer is a tar of these files: nothing else is in the image.
        assert!(
            (content..content + (1 << 20)).contains(&size),
            "image of {size} bytes for {content} bytes of files: {files:?}"
        );
        let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        for lib in ["libc.so.6", "libgcc_s.so.1", "ld-linux"] {
            assert!(
                names.iter().any(|n| n.contains(lib)),
                "{lib} in the image: {names:?}"
            );
        }
        img
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.tag])
            .output();
    }
}

/// A container name, removed (forcibly) on drop: killing `podman run` leaves it running.
struct ContainerName(String);

impl Drop for ContainerName {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.0])
            .output();
    }
}

/// Capability numbers (linux/capability.h) of the names the DaemonSet adds, or may add
/// (docs/operations.md: DAC_READ_SEARCH, SYS_PTRACE and SYS_ADMIN name the owners of what was
/// open before the agent started).
const CAPABILITIES: &[(&str, u32)] = &[
    ("DAC_READ_SEARCH", 2),
    ("NET_ADMIN", 12),
    ("SYS_PTRACE", 19),
    ("SYS_ADMIN", 21),
    ("SYS_RESOURCE", 24),
    ("SYSLOG", 34),
    ("PERFMON", 38),
    ("BPF", 39),
];

/// The agent's process in container `name`, seen from the host: uid 0, exactly the
/// DaemonSet's capabilities (effective and bounding), no new privileges, no seccomp filter,
/// the host's network namespace and a pid namespace of its own, and the memory limit.
fn assert_confined_as_the_daemonset_says(name: &str, ds: &Yaml) {
    let pid = output(Command::new("podman").args(["inspect", "--format", "{{.State.Pid}}", name]))
        .trim()
        .to_owned();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |f: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(f))
            .unwrap_or_else(|| panic!("{f} in /proc/{pid}/status"))
            .trim()
            .to_owned()
    };
    let (_, c) = pod_and_container(ds);
    let want: u64 = c["securityContext"]["capabilities"]["add"]
        .as_vec()
        .expect("capabilities.add")
        .iter()
        .map(|cap| {
            let n = CAPABILITIES
                .iter()
                .find(|(name, _)| *name == text(cap))
                .unwrap_or_else(|| panic!("capability number of {cap:?}: add it to CAPABILITIES"))
                .1;
            1u64 << n
        })
        .sum();
    let caps = |f: &str| u64::from_str_radix(&field(f), 16).expect("capability mask");
    assert_eq!(caps("CapEff:"), want, "effective capabilities: {status}");
    assert_eq!(caps("CapBnd:"), want, "bounding set: {status}");
    assert_eq!(field("Uid:"), "0\t0\t0\t0", "runAsUser 0");
    assert_eq!(field("NoNewPrivs:"), "1", "allowPrivilegeEscalation: false");
    assert_eq!(field("Seccomp:"), "0", "seccomp Unconfined");
    let ns = |p: &str, kind: &str| std::fs::read_link(format!("/proc/{p}/ns/{kind}")).expect("ns");
    // This process's namespaces are the host's.
    assert_eq!(ns(&pid, "net"), ns("self", "net"), "hostNetwork: true");
    assert_ne!(ns(&pid, "pid"), ns("self", "pid"), "hostPID: false");
    // The memory limit: cgroup v1's memory controller, or v2's memory.max.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let limit_file = cgroups
        .lines()
        .find_map(|l| l.split_once(":memory:"))
        .map(|(_, path)| format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
        .or_else(|| {
            cgroups
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(|path| format!("/sys/fs/cgroup{path}/memory.max"))
        })
        .expect("the agent's memory cgroup");
    let limit = std::fs::read_to_string(&limit_file).expect("memory limit");
    assert_eq!(
        limit.trim().parse::<u64>().ok(),
        Some(quantity(text(&c["resources"]["limits"]["memory"]))),
        "{limit_file}"
    );
}

#[test]
fn the_image_run_as_the_daemonset_says_reports_a_keepalive_timeout() {
    if need_root() {
        return;
    }
    let ds = daemonset();
    let metrics_port = free_port();
    let run = translate(&ds, "127.0.0.1", metrics_port);
    let image = TestImage::build();
    let name = ContainerName(format!("kaprobe-test-{}", std::process::id()));
    let mut argv: Vec<String> = [
        "podman",
        // Kubernetes' usual OCI runtime (containerd's and CRI-O's default); Debian 12's crun
        // 1.8 refuses hybrid cgroup hierarchies ("cgroups in hybrid mode not supported").
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--name",
        &name.0,
    ]
    .map(str::to_owned)
    .to_vec();
    argv.extend(inherited_limits());
    argv.extend(run.options.iter().cloned());
    argv.push(format!("--entrypoint={}", run.entrypoint));
    argv.push(image.tag.clone());
    argv.extend(run.args.iter().cloned());
    eprintln!("{}", argv.join(" "));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();

    let link = Link::new("ctr");
    let agent = Agent::start_command(&argv);
    // The readiness probe, as the kubelet would ask it: the metrics endpoint on the node's
    // address, served from the container through the host network.
    let probe: SocketAddr = format!("127.0.0.1:{}", run.readiness.0)
        .parse()
        .expect("addr");
    let deadline = Instant::now() + WAIT;
    loop {
        match http_get(probe, &run.readiness.1) {
            Ok((200, body)) if body.contains("kaprobe_keepalive_probes_total") => break,
            other => assert!(
                Instant::now() < deadline,
                "readiness probe http://{probe}{}: {other:?}\nstderr:\n{}",
                run.readiness.1,
                agent.stderr()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    assert_confined_as_the_daemonset_says(&name.0, &ds);

    // The dead peer of tests/tests/keepalive.rs: answered probes, then silence.
    let (client, _server) = connected(&link, link.b4);
    set_keepalive(&client, KA);
    let (ns, sport) = (link.a.inode(), port(&client));
    agent.wait_for("a first answered probe", WAIT, |v| {
        is(v, "keepalive_ack", ns, sport)
    });
    link.silence_b();
    assert_eq!(
        read_until_error(&client),
        ETIMEDOUT,
        "the application sees ETIMEDOUT"
    );
    agent.wait_for("connection_closed", WAIT, |v| {
        is(v, "connection_closed", ns, sport)
    });
    // Stopped as the kubelet stops it: SIGTERM (podman passes it on), within the grace period.
    let stopping = Instant::now();
    let all = agent.stop_with(libc::SIGTERM);
    let stopped = stopping.elapsed();
    assert!(
        stopped < run.grace,
        "stopped {stopped:?} after SIGTERM: the kubelet kills it after {:?}",
        run.grace
    );

    let start = &all[0];
    assert_eq!(start["event"], "agent_start");
    for hook in start["hooks"].as_array().expect("hooks") {
        assert_eq!(
            hook["attach"], "tp_btf",
            "BTF from the mounted /sys/kernel/btf: {hook}"
        );
    }
    let probes = assert_probes_match_nstat(&all, &link.a, sport);
    let acks = conn_kind(&all, ns, sport, "keepalive_ack").len() as u64;
    let nstat = link.a.nstat();
    assert_eq!(nstat["TcpExtTCPAbortOnTimeout"], 1);
    assert_eq!(probes, acks + 3, "answered probes, then 3 unanswered");
    let timeout = the_one(&all, ns, sport, "keepalive_timeout");
    assert_eq!(timeout["probes"], 3, "{timeout}");
    assert_eq!(timeout["error"], "ETIMEDOUT", "{timeout}");
    let closed = the_one(&all, ns, sport, "connection_closed");
    assert_eq!(closed["cause"], "keepalive_timeout", "{closed}");
    assert_eq!(closed["error"], "ETIMEDOUT", "{closed}");
    assert_eq!(closed["keepalive_probes"], probes, "{closed}");
    // Named by the kernel at connect(), in the host's pid namespace, though the agent has a
    // pid namespace of its own (hostPID: false).
    assert_eq!(closed["owner"]["pid"], std::process::id(), "{closed}");
    let comm = std::fs::read_to_string("/proc/self/comm").expect("comm");
    assert_eq!(closed["owner"]["comm"], comm.trim(), "{closed}");
    let stop = all.last().expect("agent_stop");
    assert_eq!(stop["totals"]["events_lost"], 0, "{stop}");
    eprintln!(
        "probes {probes} (acks {acks}) = TcpExtTCPKeepAlive {}, TcpExtTCPAbortOnTimeout {}, stopped {:.2} s after SIGTERM; timeout: {timeout}\nclosed: {closed}",
        nstat["TcpExtTCPKeepAlive"],
        nstat["TcpExtTCPAbortOnTimeout"],
        stopped.as_secs_f64()
    );
}
