//! The container image (deploy/container/Containerfile) run as each DaemonSet of
//! deploy/kubernetes runs it (daemonset.yaml, least privilege; daemonset-full.yaml): built
//! from the kaprobe binary under test through the functions `cargo xtask image` uses, run with
//! rootful podman under the DaemonSet's pod and container settings translated flag by flag
//! (a setting the translation does not know fails the test), in a pod network of its own as
//! a CNI plugin makes it, and shown to report a real keepalive timeout between two network
//! namespaces of the host, and to name the owners of sockets opened before it started exactly
//! when the variant says so (docs/operations.md, "Two variants").
use std::{
    net::{Ipv4Addr, SocketAddr},
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

fn daemonset(variant: &Variant) -> Yaml {
    let text = std::fs::read_to_string(variant.daemonset_path()).expect("read the DaemonSet");
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
fn the_daemonsets_run_the_image_xtask_builds() {
    let version = env!("CARGO_PKG_VERSION");
    for variant in VARIANTS {
        let ds = daemonset(&variant);
        let (_, container) = pod_and_container(&ds);
        assert_eq!(
            text(&container["image"]),
            format!("{}:{version}", image::REPOSITORY),
            "{}: the DaemonSet's image must be the one `cargo xtask image` tags for the workspace version (Cargo.toml)",
            variant.daemonset
        );
        assert_eq!(text(&container["command"][0]), image::BINARY);
    }
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

/// The pod's network as a CNI plugin makes it (`hostNetwork: false`): a network namespace of
/// its own joined to the node's by a veth pair, the pod's address on its side (`eth0`) and the
/// node's on the other, so that the node reaches the pod IP as the kubelet's probes and
/// Prometheus do. Addresses from 198.18.0.0/15 (RFC 2544: for tests), a /30 per pod.
struct PodNetwork {
    /// Deleted on drop; the veth pair goes with it (once the container is gone too).
    ns: NetNs,
    pod_ip: Ipv4Addr,
    node_ip: Ipv4Addr,
}

impl PodNetwork {
    /// The `n`th pod network of this test process.
    fn new(n: u32) -> PodNetwork {
        let ns = NetNs::new("pod");
        let block = (std::process::id().wrapping_mul(2) + n) % (1 << 15);
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + block * 4;
        let (node_ip, pod_ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let node_if = format!("kpp{}_{n}", std::process::id() % 100_000);
        sh(
            "ip",
            &[
                "link", "add", &node_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ],
        );
        sh(
            "ip",
            &["addr", "add", &format!("{node_ip}/30"), "dev", &node_if],
        );
        sh("ip", &["link", "set", &node_if, "up"]);
        ns.ip(&["addr", "add", &format!("{pod_ip}/30"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &node_ip.to_string()]);
        PodNetwork {
            ns,
            pod_ip,
            node_ip,
        }
    }
}

/// The DaemonSet's container as a kubelet on this node would run it, for `podman run`, in the
/// pod network `pod_net`.
struct Translated {
    /// Options of `podman run`.
    options: Vec<String>,
    entrypoint: String,
    args: Vec<String>,
    /// The readiness probe's `httpGet` on the pod IP: (address, path).
    readiness: (SocketAddr, String),
    /// `terminationGracePeriodSeconds`: how long the kubelet waits after SIGTERM.
    grace: Duration,
}

fn translate(ds: &Yaml, pod_net: &PodNetwork) -> Translated {
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
    // The pod's network: its own namespace (the node's is not translated: no variant uses it).
    assert_eq!(
        pod["hostNetwork"].as_bool(),
        Some(false),
        "hostNetwork: translate `true` in tests/tests/container.rs"
    );
    options.push(format!("--network=ns:/run/netns/{}", pod_net.ns.name));
    // pid and IPC namespaces: the node's, or the container's own.
    let namespace = |key: &str, flag: &str| match pod[key].as_bool() {
        Some(true) => Some(format!("--{flag}=host")),
        Some(false) => Some(format!("--{flag}=private")),
        None => None,
    };
    options.extend(namespace("hostPID", "pid"));
    options.extend(namespace("hostIPC", "ipc"));
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

    // Environment: values, or the pod's or the node's IP; `$(NAME)` in args is expanded by
    // the kubelet.
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_vec().into_iter().flatten() {
        let value = match (&e["value"], text(&e["valueFrom"]["fieldRef"]["fieldPath"])) {
            (Yaml::String(v), _) => v.clone(),
            (_, "status.podIP") => pod_net.pod_ip.to_string(),
            (_, "status.hostIP") => pod_net.node_ip.to_string(),
            (_, other) => panic!("env from {other}"),
        };
        let name = text(&e["name"]).to_owned();
        opt(format!("--env={name}={value}"));
        env.push((name, value));
    }
    // Ports: only named for the cluster (the pod IP is reached directly; no hostPort).
    let ports: Vec<u16> = c["ports"]
        .as_vec()
        .into_iter()
        .flatten()
        .map(|p| {
            only_known(p, "ports[]", &["name", "containerPort", "protocol"]);
            p["containerPort"].as_i64().expect("containerPort") as u16
        })
        .collect();
    assert_eq!(ports.len(), 1, "one port: metrics");
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
            env.iter()
                .fold(a.to_owned(), |a, (n, v)| a.replace(&format!("$({n})"), v))
        })
        .collect();
    let probe = &c["readinessProbe"]["httpGet"];
    let probe_port = probe["port"].as_i64().expect("readinessProbe port") as u16;
    assert_eq!(
        probe_port, ports[0],
        "the readiness probe asks the metrics port"
    );
    let readiness = (
        SocketAddr::from((pod_net.pod_ip, probe_port)),
        text(&probe["path"]).to_owned(),
    );

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
            "appArmorProfile",
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
    // (A host without AppArmor, as this one may be, runs every container unconfined.)
    match sc["appArmorProfile"]["type"].as_str() {
        Some("Unconfined") => opt("--security-opt=apparmor=unconfined".into()),
        Some("RuntimeDefault") | None => {}
        Some(other) => panic!("appArmorProfile {other}"),
    }

    // Volumes: host paths, bind-mounted.
    let volumes = pod["volumes"].as_vec().expect("volumes");
    for m in c["volumeMounts"].as_vec().into_iter().flatten() {
        only_known(
            m,
            "volumeMounts[]",
            &["name", "mountPath", "readOnly", "mountPropagation"],
        );
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
        let mut mode = if m["readOnly"].as_bool() == Some(true) {
            "ro"
        } else {
            "rw"
        }
        .to_owned();
        match m["mountPropagation"].as_str() {
            // Mounts made on the host later appear in the container.
            Some("HostToContainer") => mode.push_str(",rslave"),
            Some("None") | None => {}
            Some(other) => panic!("mountPropagation {other}"),
        }
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

/// The image built from the binary under test, with a tag of this test's; removed on drop.
struct TestImage {
    tag: String,
}

impl TestImage {
    /// Built for the test `test` of this run (tests run in parallel).
    fn build(test: &str) -> TestImage {
        let id = format!("{}-{test}", std::process::id());
        let tag = format!("localhost/kaprobe-test:{id}");
        // The build context, removed on drop.
        struct Context(std::path::PathBuf);
        impl Drop for Context {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir = Context(std::env::temp_dir().join(format!("kaprobe-image-{id}")));
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
/// the pod's network namespace, the host's pid namespace or one of its own as `hostPID`
/// says, and the memory limit. Returns the process's pid (on the host).
fn assert_confined_as_the_daemonset_says(name: &str, ds: &Yaml, pod_net: &PodNetwork) -> String {
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
    let (pod, c) = pod_and_container(ds);
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
    let ns = |p: &str, kind: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{p}/ns/{kind}"))
            .expect("ns")
            .ino()
    };
    assert_eq!(
        ns(&pid, "net"),
        pod_net.ns.inode(),
        "the pod's network namespace"
    );
    // This process's pid namespace is the host's.
    let host_pid = pod["hostPID"].as_bool() == Some(true);
    assert_eq!(
        ns(&pid, "pid") == ns("self", "pid"),
        host_pid,
        "hostPID: {host_pid}"
    );
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
    pid
}

#[test]
fn the_image_run_as_the_least_privilege_daemonset_says() {
    if need_root() {
        return;
    }
    run_as_the_daemonset_says(LEAST_PRIVILEGE, 0);
}

#[test]
fn the_image_run_as_the_full_daemonset_says() {
    if need_root() {
        return;
    }
    run_as_the_daemonset_says(FULL, 1);
}

/// Runs the image as `variant`'s DaemonSet says, in the `n`th pod network of this process;
/// checks its confinement, its readiness probe, the owners of a listener and a connection
/// opened before it started (named exactly if the variant says so) and a real keepalive
/// timeout read from its event log.
fn run_as_the_daemonset_says(variant: Variant, n: u32) {
    let ds = daemonset(&variant);
    let image = TestImage::build(variant.daemonset.trim_end_matches(".yaml"));
    // (Dropped after the container: its network namespace goes once both are gone.)
    let pod_net = PodNetwork::new(n);
    let run = translate(&ds, &pod_net);
    let name = ContainerName(format!("kaprobe-test-{}-{n}", std::process::id()));
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
    let older = OlderSockets::open(&link);
    let agent = Agent::start_command(&argv);
    // The readiness probe, as the kubelet asks it: the metrics endpoint on the pod IP, from
    // the node.
    let probe = run.readiness.0;
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

    let agent_pid = assert_confined_as_the_daemonset_says(&name.0, &ds, &pod_net);

    // Sockets opened before the agent: owners named exactly where the variant says, with
    // their cgroup where the agent shares the host's cgroup namespace (podman's default on
    // cgroup v1; in one of its own, /proc/PID/cgroup paths are relative to it).
    let closes = older.end(&link, &agent, WAIT);
    let cgroup_ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).expect("ns");
    let host_cgroups = cgroup_ns(&agent_pid) == cgroup_ns("self");
    assert_older_owners(&closes, variant.finds_older_owners, host_cgroups);
    let named = closes.iter().filter(|c| c["owner"].is_object()).count();

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
    // Named by the kernel at connect(), in the host's pid namespace, whatever the agent's.
    assert_eq!(closed["owner"]["pid"], std::process::id(), "{closed}");
    assert_eq!(closed["owner"]["comm"], my_comm().as_str(), "{closed}");
    let stop = all.last().expect("agent_stop");
    assert_eq!(stop["totals"]["events_lost"], 0, "{stop}");
    eprintln!(
        "{}: owners of older sockets named {named} of 3 (host cgroup namespace: {host_cgroups}); probes {probes} (acks {acks}) = TcpExtTCPKeepAlive {}, TcpExtTCPAbortOnTimeout {}, stopped {:.2} s after SIGTERM; timeout: {timeout}\nclosed: {closed}",
        variant.name,
        nstat["TcpExtTCPKeepAlive"],
        nstat["TcpExtTCPAbortOnTimeout"],
        stopped.as_secs_f64()
    );
}
