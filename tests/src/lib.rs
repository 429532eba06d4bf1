//! Test harness for kaprobe's integration tests: real network namespaces, real sockets, the
//! real `kaprobe` binary, and the kernel's own counters (`nstat`) as the reference.
//!
//! Every test makes its own namespaces (unique names, removed on drop), so tests run in
//! parallel; each test reads only the events of its own namespaces (by inode number).
use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc::{Receiver, RecvTimeoutError, channel},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod image;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The start of every namespace name [`NetNs::new`] makes: `kpt-<tag>-<pid>-<n>`.
const NETNS_PREFIX: &str = "kpt-";

/// Runs a command, panicking with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts python3 running `script` in namespace `ns`, moved into the cgroup at `cgroup_dir`
/// before it goes on: `script` must first wait for a line on stdin (`sys.stdin.readline()`),
/// which is sent once the process is in the cgroup. Its stdout is piped.
pub fn python_in_cgroup(
    ns: &NetNs,
    cgroup_dir: &std::path::Path,
    script: &str,
) -> std::process::Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "/usr/bin/python3", "-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    // `ip netns exec` execs python3: the child's pid is the script's.
    std::fs::write(cgroup_dir.join("cgroup.procs"), child.id().to_string())
        .expect("move into the cgroup");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"go\n").expect("go");
    child
}

/// Where cgroup2 is mounted (the agent resolves cgroup paths against it).
pub fn cgroup2_root() -> std::path::PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(Into::into))?
        })
        .expect("a cgroup2 mount")
}

/// Skips (returns true, with a message) unless running as root.
pub fn need_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED: this test needs root (eBPF and network namespaces); run `cargo xtask test`"
        );
        return true;
    }
    false
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = format!(
            "{NETNS_PREFIX}{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh("ip", &["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Inode number of the namespace: what kaprobe reports as `netns`.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .expect("netns file")
            .ino()
    }

    /// Runs `program args` inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    pub fn ip(&self, args: &[&str]) -> String {
        self.exec("ip", args)
    }

    /// A firewall on this namespace's input: one nftables rule (e.g. `tcp dport 9 drop`)
    /// in a chain of its own.
    pub fn input_rule(&self, rule: &str) {
        self.nft(&format!(
            "add table inet kaprobe_test\n\
             add chain inet kaprobe_test in {{ type filter hook input priority 0; }}\n\
             add rule inet kaprobe_test in {rule}\n"
        ));
    }

    /// Adds nftables rules (one `nft -f` script).
    pub fn nft(&self, script: &str) {
        let path = std::env::temp_dir().join(format!(
            "{}-{}.nft",
            self.name,
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, script).expect("write nft script");
        self.exec("nft", &["-f", path.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(path);
    }

    /// The namespace's kernel counters (`nstat -az`), by name.
    pub fn nstat(&self) -> HashMap<String, u64> {
        let out = self.exec("nstat", &["-asz"]);
        out.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let name = it.next()?;
                let value = it.next()?.parse().ok()?;
                Some((name.to_owned(), value))
            })
            .collect()
    }

    /// Runs `f` on a thread that has entered this namespace; sockets made there belong to it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    /// Like [`NetNs::run`], without waiting.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

fn enter(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid namespace fd; it only changes this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for NetNs {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

/// `ip netns del` (it prints nothing on stdout: kept off the caller's, which may be data).
fn delete_netns(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdout(Stdio::null())
        .status();
}

/// Deletes the namespaces that [`NetNs::new`] made, with a tag starting with `tag`, for a
/// process that is gone (a run killed before its namespaces were dropped).
pub fn remove_stale_namespaces(tag: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for name in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        let pid = name
            .strip_prefix(NETNS_PREFIX)
            .filter(|rest| rest.starts_with(tag))
            .and_then(|rest| rest.rsplit('-').nth(1));
        if pid.is_some_and(|pid| !std::path::Path::new("/proc").join(pid).exists()) {
            delete_netns(name);
        }
    }
}

/// Two namespaces joined by a veth pair: client side `a` (10.x.y.1, fd00:x:y::1) and server
/// side `b` (.2 / ::2). Each pair gets its own addresses.
pub struct Link {
    pub a: NetNs,
    pub b: NetNs,
    pub a4: IpAddr,
    pub b4: IpAddr,
    pub a6: IpAddr,
    pub b6: IpAddr,
}

impl Link {
    pub fn new(tag: &str) -> Link {
        let a = NetNs::new(&format!("{tag}a"));
        let b = NetNs::new(&format!("{tag}b"));
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (x, y) = ((n / 250) % 250, n % 250);
        let va = format!("kpa{}_{n}", std::process::id() % 10000);
        let vb = format!("kpb{}_{n}", std::process::id() % 10000);
        sh(
            "ip",
            &[
                "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns",
                &b.name,
            ],
        );
        let a4 = format!("10.{x}.{y}.1");
        let b4 = format!("10.{x}.{y}.2");
        let a6 = format!("fd00:{x}:{y}::1");
        let b6 = format!("fd00:{x}:{y}::2");
        a.ip(&["addr", "add", &format!("{a4}/24"), "dev", &va]);
        b.ip(&["addr", "add", &format!("{b4}/24"), "dev", &vb]);
        a.ip(&["addr", "add", &format!("{a6}/64"), "dev", &va, "nodad"]);
        b.ip(&["addr", "add", &format!("{b6}/64"), "dev", &vb, "nodad"]);
        a.ip(&["link", "set", &va, "up"]);
        b.ip(&["link", "set", &vb, "up"]);
        Link {
            a,
            b,
            a4: a4.parse().expect("v4"),
            b4: b4.parse().expect("v4"),
            a6: a6.parse().expect("v6"),
            b6: b6.parse().expect("v6"),
        }
    }

    /// Drops everything `b` sends to `a` (the peer goes silent; its socket lives on).
    pub fn silence_b(&self) {
        self.b.nft(&format!(
            "add table inet kaprobe_test\n\
             add chain inet kaprobe_test out {{ type filter hook output priority 0; }}\n\
             add rule inet kaprobe_test out ip daddr {} drop\n\
             add rule inet kaprobe_test out ip6 daddr {} drop\n",
            self.a4, self.a6
        ));
    }

    /// Undoes [`Link::silence_b`].
    pub fn unsilence_b(&self) {
        self.b
            .exec("nft", &["delete", "table", "inet", "kaprobe_test"]);
    }
}

/// Keepalive settings for a socket.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    pub idle_s: i32,
    pub intvl_s: i32,
    pub count: i32,
}

/// Keepalive after 1 s idle, every 1 s, 3 probes: a silent peer is given up in about 4 s.
pub const KEEPALIVE_1S_3: Keepalive = Keepalive {
    idle_s: 1,
    intvl_s: 1,
    count: 3,
};

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: setsockopt with a pointer to a live i32 and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
}

/// SO_KEEPALIVE only: idle, interval and count come from the namespace's sysctls.
pub fn enable_keepalive(s: &impl AsRawFd) {
    setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
}

/// SO_KEEPALIVE off: the keepalive timer stops.
pub fn disable_keepalive(s: &impl AsRawFd) {
    setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE, 0);
}

/// Interval, count and idle time first, SO_KEEPALIVE last: turning keepalive on arms the
/// timer, and on a connection already idle longer than `idle_s` it fires at once, sending
/// its first probe and re-arming for the interval in force at that moment (a TCP_KEEPINTVL
/// set afterwards would only apply from the next firing: a race under load).
pub fn set_keepalive(s: &impl AsRawFd, ka: Keepalive) {
    let fd = s.as_raw_fd();
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, ka.intvl_s);
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, ka.count);
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, ka.idle_s);
    enable_keepalive(s);
}

pub fn set_user_timeout(s: &impl AsRawFd, ms: i32) {
    setsockopt_int(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms);
}

/// SO_LINGER {on, 0}: close() resets the connection.
pub fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a pointer to a live linger and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// A listener in a namespace.
pub fn listen(ns: &NetNs, addr: IpAddr) -> TcpListener {
    ns.run(move || TcpListener::bind(SocketAddr::new(addr, 0)).expect("bind"))
}

/// `n` connections from inside `from` to `listener`, each client with `ka` set when given:
/// (clients, the accepted server sockets).
pub fn connect_many(
    from: &NetNs,
    listener: TcpListener,
    n: usize,
    ka: Option<Keepalive>,
) -> (Vec<TcpStream>, Vec<TcpStream>) {
    // Both ends of every connection are held here (a VM's default limit is 1024).
    raise_fd_limit(2 * n as u64 + 1024);
    let to = listener.local_addr().expect("listener address");
    let acceptor = thread::spawn(move || {
        (0..n)
            .map(|_| listener.accept().expect("accept").0)
            .collect::<Vec<_>>()
    });
    let clients = from.run(move || {
        (0..n)
            .map(|_| {
                let c = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
                if let Some(ka) = ka {
                    set_keepalive(&c, ka);
                }
                c
            })
            .collect()
    });
    (clients, acceptor.join().expect("acceptor"))
}

/// A connection made from inside `ns`.
pub fn connect(ns: &NetNs, to: SocketAddr) -> TcpStream {
    ns.run(move || TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect"))
}

/// Blocks in `read` until the connection fails or ends; returns the errno (0 for EOF).
pub fn read_until_error(mut s: &TcpStream) -> i32 {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return 0,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return e.raw_os_error().unwrap_or(-1),
        }
    }
}

/// A socket created with `socket(2)` directly (for IPv6 sockets talking v4-mapped).
pub fn tcp6_socket() -> OwnedFd {
    // SAFETY: plain socket(2) call; the fd is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The `kaprobe watch` agent, run as the real binary, reading its JSON Lines. Every line it
/// wrote is validated against docs/events.schema.json when it stops (or, if it was not
/// stopped, when it is dropped): [`validate_event_lines`].
pub struct Agent {
    child: Option<Child>,
    lines: Receiver<Value>,
    seen: Mutex<Vec<Value>>,
    /// Every line read from the agent, as written (for the schema validation).
    written: std::sync::Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
    stderr: std::sync::Arc<Mutex<String>>,
}

pub fn kaprobe_bin() -> String {
    std::env::var("KAPROBE_BIN").unwrap_or_else(|_| {
        // target/debug/deps/<test> → target/debug/kaprobe
        let exe = std::env::current_exe().expect("current exe");
        exe.parent()
            .and_then(|p| p.parent())
            .expect("target dir")
            .join("kaprobe")
            .display()
            .to_string()
    })
}

impl Agent {
    /// Starts `kaprobe watch --format json <extra>` and waits for `agent_start`.
    pub fn start(extra: &[&str]) -> Agent {
        Agent::start_as(&[], extra)
    }

    /// Like [`Agent::start`], run through `wrapper` (e.g. `setpriv ...`) when not empty.
    pub fn start_as(wrapper: &[&str], extra: &[&str]) -> Agent {
        let verbose: &[&str] = if std::env::var("KAPROBE_TEST_VERBOSE").is_ok_and(|v| v == "1") {
            &["-vv"]
        } else {
            &[]
        };
        let bin = kaprobe_bin();
        let mut argv: Vec<&str> = wrapper.to_vec();
        argv.extend([bin.as_str(), "watch", "--format", "json"]);
        argv.extend(verbose);
        argv.extend(extra);
        let agent = Agent::start_command(&argv);
        if let Some(want) = extra
            .windows(2)
            .find(|w| w[0] == "--attach")
            .map(|w| w[1].replace('-', "_"))
        {
            let first = agent.seen.lock().expect("seen lock")[0].clone();
            let kinds: Vec<&str> = first["hooks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h["attach"].as_str())
                .collect();
            assert!(
                kinds.iter().all(|k| *k == want),
                "hooks attached as {kinds:?}, asked for {want}"
            );
        }
        agent
    }

    /// Runs `argv` (a command that runs `kaprobe watch` writing JSON Lines on its stdout, e.g.
    /// `podman run ... watch --format=json`) and waits for `agent_start`.
    pub fn start_command(argv: &[&str]) -> Agent {
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", argv.join(" ")));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = channel();
        let written = std::sync::Arc::new(Mutex::new(Vec::new()));
        let record = written.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("kaprobe wrote a line that is not JSON ({e}): {line}")
                });
                record.lock().expect("written lock").push(line);
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let err_text = std::sync::Arc::new(Mutex::new(String::new()));
        let sink = err_text.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("stderr lock").push_str(&(line + "\n"));
            }
        });
        let agent = Agent {
            child: Some(child),
            lines: rx,
            seen: Mutex::new(Vec::new()),
            written,
            reader: Some(reader),
            stderr: err_text,
        };
        // A readiness wait, not a sleep: on the host agent_start comes in well under a
        // second; a debug build parsing BTF in a VM under software emulation on a busy
        // machine has been seen to take over 20 s.
        let first = agent.next(Duration::from_secs(120)).unwrap_or_else(|| {
            panic!(
                "kaprobe did not start (no agent_start); stderr:\n{}",
                agent.stderr()
            )
        });
        assert_eq!(
            first["event"], "agent_start",
            "first line must be agent_start: {first}"
        );
        agent
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    fn next(&self, timeout: Duration) -> Option<Value> {
        match self.lines.recv_timeout(timeout) {
            Ok(v) => {
                self.seen.lock().expect("seen lock").push(v.clone());
                Some(v)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Waits until an event satisfying `pred` arrives (or was already seen); returns it.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self
            .seen
            .lock()
            .expect("seen lock")
            .iter()
            .find(|v| pred(v))
        {
            return v.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(v) if pred(&v) => return v,
                Some(_) => {}
                None => panic!(
                    "timed out after {timeout:?} waiting for {what}; events seen:\n{}\nstderr:\n{}\nagent: {}",
                    self.dump(),
                    self.stderr(),
                    self.diagnose()
                ),
            }
        }
    }

    /// Like [`Agent::wait_count`], without panicking: `Err(found)` after `timeout`.
    pub fn try_wait_count(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Vec<Value>, usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<Value> = self
                .seen
                .lock()
                .expect("seen lock")
                .iter()
                .filter(|v| pred(v))
                .cloned()
                .collect();
            if found.len() >= n {
                return Ok(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.next(left).is_none() {
                return Err(found.len());
            }
        }
    }

    /// Waits until `n` events satisfying `pred` have arrived; returns them.
    pub fn wait_count(
        &self,
        what: &str,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.try_wait_count(n, timeout, pred).unwrap_or_else(|found| {
            panic!(
                "timed out after {timeout:?} waiting for {what} ({found} of {n}); events seen:\n{}\nstderr:\n{}\nagent: {}",
                self.dump(),
                self.stderr(),
                self.diagnose()
            )
        })
    }

    /// The agent process's state, for timeout messages: alive or not, and where it waits.
    fn diagnose(&self) -> String {
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else {
            return "not running".into();
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let state = status
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or("State: gone")
            .to_owned();
        let mut stacks = String::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
                let stack = std::fs::read_to_string(t.path().join("stack")).unwrap_or_default();
                stacks.push_str(&format!(
                    "\n task {:?} wchan={wchan}\n{stack}",
                    t.file_name()
                ));
            }
        }
        format!("pid {pid} {state}{stacks}")
    }

    fn dump(&self) -> String {
        self.seen
            .lock()
            .expect("seen lock")
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the agent with SIGINT and returns every event it wrote, `agent_stop` last.
    pub fn stop(self) -> Vec<Value> {
        self.stop_with(libc::SIGINT)
    }

    /// Stops the agent with `signal` (sent to the command [`Agent::start_command`] ran) and
    /// returns every event it wrote, `agent_stop` last; the command must exit with status 0.
    pub fn stop_with(mut self, signal: i32) -> Vec<Value> {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        while self.next(Duration::from_secs(10)).is_some() {}
        let status = child.wait().expect("wait kaprobe");
        assert!(
            status.success(),
            "kaprobe exited with {status}; stderr:\n{}",
            self.stderr()
        );
        // Shown by the test runner only when the test fails.
        eprintln!("kaprobe stderr:\n{}", self.stderr());
        let all = self.seen.lock().expect("seen lock").clone();
        assert_eq!(
            all.last().map(|v| v["event"].clone()),
            Some(Value::from("agent_stop")),
            "the last line must be agent_stop"
        );
        self.validate_written();
        all
    }

    /// Validates every line the agent wrote: all of them once its stdout is closed (the
    /// reader is waited for 10 s at most: a command such as `podman run` killed by drop may
    /// leave the pipe open in a process of its own).
    fn validate_written(&mut self) {
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if reader.is_finished() {
                // (A line that is not JSON panicked the reader, and the test with it.)
                let _ = reader.join();
            }
        }
        let written = self.written.lock().expect("written lock").clone();
        validate_event_lines(&written);
    }

    /// [`Agent::stop`], with the lines as the agent wrote them (key order and all).
    pub fn stop_with_lines(self) -> (Vec<Value>, Vec<String>) {
        let written = self.written.clone();
        let all = self.stop();
        let lines = written.lock().expect("written lock").clone();
        (all, lines)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // Not stopped: what it wrote until killed must be valid too (a second panic
            // while the test is failing would abort the run and hide its message).
            if !thread::panicking() {
                self.validate_written();
            }
        }
    }
}

/// The schema every line of the event log follows.
pub fn event_schema() -> std::path::PathBuf {
    repo_root().join("docs/events.schema.json")
}

/// The Python of the venv `cargo xtask setup` makes (target/tools/venv), with `jsonschema`.
fn schema_python() -> std::path::PathBuf {
    repo_root().join("target/tools/venv/bin/python")
}

/// Validates the lines of the file `argv[2]` against the schema at `argv[1]` (after checking
/// the schema itself against its metaschema when `argv[3]` is `check-schema`: 0.2 s, so once
/// in tests/tests/docs.rs, not at every agent's stop): prints the number of lines, or the
/// first invalid one with the validator's messages (exit 1); exit 3 when the validator is
/// not installed.
///
/// The schema's `oneOf` has one branch per `event` (its `const`), so a line is valid iff
/// the root (without `oneOf`) and the branch of its `event` accept it: each line is checked
/// against those two (the branch with its `$ref`s inlined), which is about 7 times faster
/// than the whole `oneOf` in Python's jsonschema (0.5 ms a line; the stress test writes
/// thousands). The first line of each kind is checked against the whole schema too; a line
/// of no known kind is checked against the whole schema alone.
const VALIDATOR: &str = r##"
import json, sys
try:
    from jsonschema import Draft202012Validator, FormatChecker
except ImportError as e:
    print(e)
    sys.exit(3)
schema = json.load(open(sys.argv[1]))
if sys.argv[3:] == ["check-schema"]:
    Draft202012Validator.check_schema(schema)
checker = FormatChecker()
defs = schema["$defs"]
def inline(s):
    if isinstance(s, dict):
        if list(s) == ["$ref"] and s["$ref"].startswith("#/$defs/"):
            return inline(defs[s["$ref"][len("#/$defs/"):]])
        return {k: inline(v) for k, v in s.items()}
    if isinstance(s, list):
        return [inline(v) for v in s]
    return s
def validator(s):
    return Draft202012Validator(s, format_checker=checker)
whole = validator(schema)
root = validator({k: v for k, v in schema.items() if k != "oneOf"})
branches = {}
for ref in schema["oneOf"]:
    branch = defs[ref["$ref"][len("#/$defs/"):]]
    branches[branch["properties"]["event"]["const"]] = validator(inline(branch))
seen = set()
n = 0
with open(sys.argv[2]) as f:
    for number, line in enumerate(f, 1):
        value = json.loads(line)
        kind = value.get("event") if isinstance(value, dict) else None
        if not isinstance(kind, str) or kind not in branches:
            errors = list(whole.iter_errors(value))
        else:
            errors = list(root.iter_errors(value)) + list(branches[kind].iter_errors(value))
            if not errors and kind not in seen:
                seen.add(kind)
                errors = list(whole.iter_errors(value))
        if errors:
            print("line %d of %s is not valid: %s" % (number, sys.argv[2], line.strip()))
            for e in errors[:5]:
                print("%s: %s" % (e.json_path, e.message[-300:]))
            sys.exit(1)
        n += 1
print(n)
"##;

/// Validates each line (one JSON event) against docs/events.schema.json with a real JSON
/// Schema validator (Python's `jsonschema`, draft 2020-12, formats asserted), in one process
/// for all lines; panics with the first invalid line and the validator's message. Panics too
/// when the validator is not installed: the suite never skips this.
pub fn validate_event_lines(lines: &[String]) {
    if !lines.is_empty() {
        run_validator(lines, &[]);
    }
}

/// Checks docs/events.schema.json against the JSON Schema metaschema (draft 2020-12).
pub fn check_event_schema() {
    run_validator(&[], &["check-schema"]);
}

/// Runs [`VALIDATOR`] on `lines` with `extra` arguments.
fn run_validator(lines: &[String], extra: &[&str]) {
    let path = std::env::temp_dir().join(format!(
        "kaprobe-events-{}-{}.jsonl",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let content: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, content).expect("write the lines to validate");
    let python = schema_python();
    let started = Instant::now();
    let out = Command::new(&python)
        .arg("-c")
        .arg(VALIDATOR)
        .arg(event_schema())
        .arg(&path)
        .args(extra)
        .output();
    let missing = || {
        format!(
            "the event log's JSON Schema validator (Python jsonschema in {}) is not installed: `cargo xtask setup` installs it",
            python.display()
        )
    };
    let out = out.unwrap_or_else(|e| panic!("{} ({e})", missing()));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {
            let _ = std::fs::remove_file(&path);
            assert_eq!(
                text.trim().parse::<usize>().ok(),
                Some(lines.len()),
                "the validator checked every line: {text}"
            );
            // Shown by the test runner only when the test fails (or with --nocapture).
            eprintln!(
                "schema validation: {} lines in {} ms",
                lines.len(),
                started.elapsed().as_millis()
            );
        }
        Some(3) => panic!("{}: {text}", missing()),
        // The lines are kept for a look.
        _ => panic!(
            "the event log does not follow docs/events.schema.json (or the schema is broken): {text}"
        ),
    }
}

/// Events of one kind in one namespace.
pub fn events<'a>(all: &'a [Value], kind: &str, netns: u64) -> Vec<&'a Value> {
    all.iter()
        .filter(|v| v["event"] == kind && v["netns"] == netns)
        .collect()
}

/// Events about one connection (by local port) in one namespace.
pub fn conn_events(all: &[Value], netns: u64, sport: u16) -> Vec<&Value> {
    all.iter()
        .filter(|v| v["netns"] == netns && v["sport"] == sport)
        .collect()
}

/// Events about one connection, by kind.
pub fn conn_kind<'a>(all: &'a [Value], netns: u64, sport: u16, kind: &str) -> Vec<&'a Value> {
    conn_events(all, netns, sport)
        .into_iter()
        .filter(|v| v["event"] == kind)
        .collect()
}

/// Is `v` an event `kind` of the connection with local port `sport` in namespace `netns`?
pub fn is(v: &Value, kind: &str, netns: u64, sport: u16) -> bool {
    v["event"] == kind && v["netns"] == netns && v["sport"] == sport
}

pub const ETIMEDOUT: i32 = libc::ETIMEDOUT;
pub const ECONNRESET: i32 = libc::ECONNRESET;

/// Asserts that the `keepalive_probe` events of a connection match the kernel's own count
/// (`TcpExtTCPKeepAlive` of its namespace), showing the connection's events otherwise.
pub fn assert_probes_match_nstat(all: &[Value], ns: &NetNs, sport: u16) -> u64 {
    let probes = conn_kind(all, ns.inode(), sport, "keepalive_probe").len() as u64;
    let counted = ns.nstat().get("TcpExtTCPKeepAlive").copied().unwrap_or(0);
    assert_eq!(
        probes,
        counted,
        "keepalive_probe events must equal TcpExtTCPKeepAlive; events of port {sport}:\n{}",
        conn_events(all, ns.inode(), sport)
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    probes
}

/// A connection from `link.a` to a listener on `server_ip` in `link.b`: (client, accepted
/// server socket).
pub fn connected(link: &Link, server_ip: IpAddr) -> (TcpStream, TcpStream) {
    let listener = listen(&link.b, server_ip);
    let client = connect(&link.a, listener.local_addr().expect("addr"));
    let (server, _) = listener.accept().expect("accept");
    (client, server)
}

/// The pending error of a socket (SO_ERROR, cleared by reading it), as an errno.
pub fn socket_error(s: &TcpStream) -> Option<i32> {
    s.take_error()
        .expect("SO_ERROR")
        .and_then(|e| e.raw_os_error())
}

/// The local port of a socket.
pub fn port(s: &TcpStream) -> u16 {
    s.local_addr().expect("addr").port()
}

/// The one event of `kind` of a connection (panics, showing them, if there are not exactly one).
pub fn the_one<'a>(all: &'a [Value], ns: u64, sport: u16, kind: &str) -> &'a Value {
    let found = conn_kind(all, ns, sport, kind);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind} for port {sport}, got {found:?}"
    );
    found[0]
}

/// The `reason` a `reset_sent` event carries for an RST of kernel reason `name` on the
/// running kernel, as `agent_start.features` says: `unknown` without the tracepoint's
/// reason argument (before 6.10), `not_specified` for a keepalive timeout's RST before the
/// kernel named it (6.10, 6.11).
pub fn expected_reset_reason(all: &[Value], name: &str) -> String {
    let start = all
        .iter()
        .find(|v| v["event"] == "agent_start")
        .expect("agent_start");
    let features = &start["features"];
    if features["reset_reason"] != true {
        "unknown".into()
    } else if name == "tcp_keepalive_timeout" && features["keepalive_reset_reason"] != true {
        "not_specified".into()
    } else {
        name.into()
    }
}

/// The repository's root directory.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A TCP port on 127.0.0.1 that was free a moment ago, below the ephemeral range
/// (net.ipv4.ip_local_port_range starts at 32768): a port the kernel handed out (`:0`) can
/// be handed out again at once as the local port of an outgoing connection, which then
/// keeps it from being bound (seen once: the metrics test's agent got EADDRINUSE).
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(131)) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-31999 on 127.0.0.1");
}

/// Percent-encodes a URL query value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET: (status, body). Errors (nobody listening yet) as `Err`.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// A deployment variant (docs/operations.md, "Two variants"): a DaemonSet and the systemd
/// unit files that grant the same.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub name: &'static str,
    /// The DaemonSet, in deploy/kubernetes.
    pub daemonset: &'static str,
    /// In deploy/systemd: the unit, then its drop-ins (in the order systemd reads them).
    pub unit_files: &'static [&'static str],
    /// Whether it names the owners of what was open before the agent started.
    pub finds_older_owners: bool,
}

/// The least-privilege variant: the hooks only.
pub const LEAST_PRIVILEGE: Variant = Variant {
    name: "least privilege",
    daemonset: "daemonset.yaml",
    unit_files: &["kaprobe.service"],
    finds_older_owners: false,
};

/// The full variant: also the owners of what was open before the agent started.
pub const FULL: Variant = Variant {
    name: "full",
    daemonset: "daemonset-full.yaml",
    unit_files: &["kaprobe.service", "kaprobe.service.d/full.conf"],
    finds_older_owners: true,
};

pub const VARIANTS: [Variant; 2] = [LEAST_PRIVILEGE, FULL];

impl Variant {
    pub fn daemonset_path(&self) -> std::path::PathBuf {
        repo_root().join("deploy/kubernetes").join(self.daemonset)
    }

    /// Capability names (e.g. `CAP_BPF`) granted by `AmbientCapabilities=` in the unit files
    /// (systemd merges the lines), sorted.
    pub fn unit_capabilities(&self) -> Vec<String> {
        let mut caps: Vec<String> = self
            .unit_files
            .iter()
            .map(|f| {
                std::fs::read_to_string(repo_root().join("deploy/systemd").join(f))
                    .unwrap_or_else(|e| panic!("read deploy/systemd/{f}: {e}"))
            })
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.strip_prefix("AmbientCapabilities="))
                    .flat_map(|v| v.split_whitespace().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .collect();
        caps.sort();
        caps
    }
}

/// Closes `s` with data from `peer` unread: the kernel sends an RST (which the default mode
/// reports, with the connection's close).
pub fn abort_with_unread(s: TcpStream, peer: &mut TcpStream) {
    use std::io::Write;
    peer.write_all(b"unread").expect("write");
    let mut probe = [0u8; 6];
    assert_eq!(s.peek(&mut probe).expect("peek"), 6);
    drop(s);
}

/// This process's name, as the kernel records it (`comm`).
pub fn my_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("comm")
        .trim_end()
        .to_owned()
}

/// Checks the owners of [`OlderSockets::end`]'s events: this process (pid and name, and a
/// cgroup path exactly if `with_cgroup`) if `found`, else none (`owner: null`).
pub fn assert_older_owners(closes: &[Value], found: bool, with_cgroup: bool) {
    let (me, comm) = (std::process::id(), my_comm());
    for closed in closes {
        if found {
            assert_eq!(closed["owner"]["pid"], me, "{closed}");
            assert_eq!(closed["owner"]["comm"], comm.as_str(), "{closed}");
            assert_eq!(
                closed["owner"]["cgroup"].is_string(),
                with_cgroup,
                "cgroup: {closed}"
            );
        } else {
            assert!(closed["owner"].is_null(), "no owner: {closed}");
        }
    }
}

/// A listener and a connection it accepted, opened (in `link.b` and `link.a`) before an
/// agent starts: the kernel never saw their `listen()` and `connect()`, so their owners are
/// known only if the agent looks them up at start-up (docs/operations.md, "Privileges").
pub struct OlderSockets {
    listener: TcpListener,
    client: TcpStream,
    server: TcpStream,
}

impl OlderSockets {
    pub fn open(link: &Link) -> OlderSockets {
        let listener = listen(&link.b, link.b4);
        let client = connect(&link.a, listener.local_addr().expect("addr"));
        let (server, _) = listener.accept().expect("accept");
        OlderSockets {
            listener,
            client,
            server,
        }
    }

    /// Once `agent` runs: the older listener accepts a new connection, then the older
    /// connection and the new one end with an RST (the closing side leaves data unread).
    /// Returns their `connection_closed` events: the older client's, the new server's (its
    /// owner is the older listener's) and the older server's.
    pub fn end(self, link: &Link, agent: &Agent, timeout: Duration) -> [Value; 3] {
        let (na, nb) = (link.a.inode(), link.b.inode());
        let to = self.listener.local_addr().expect("addr");
        let mut new_client = connect(&link.a, to);
        let (new_server, _) = self.listener.accept().expect("accept");
        let (old_cport, new_cport) = (port(&self.client), port(&new_client));
        let mut old_server = self.server;
        abort_with_unread(self.client, &mut old_server);
        abort_with_unread(new_server, &mut new_client);
        let server_close = |v: &Value, cport: u16| {
            is(v, "connection_closed", nb, to.port()) && v["dport"] == cport
        };
        [
            agent.wait_for("the older client's close", timeout, |v| {
                is(v, "connection_closed", na, old_cport)
            }),
            agent.wait_for(
                "the close of the older listener's new connection",
                timeout,
                |v| server_close(v, new_cport),
            ),
            agent.wait_for("the older server's close", timeout, |v| {
                server_close(v, old_cport)
            }),
        ]
    }
}

/// Whether this kernel's `tcp:tcp_send_reset` fires for an RST sent without a full socket
/// (none, or a TIME_WAIT one): not on 6.1 (measured: docs/kernels.md), yes on 6.12 and 6.18;
/// kernels between are not tested here (taken as not: their checks are skipped).
pub fn kernel_traces_socketless_resets() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    version >= (6, 12)
}

/// Raises this process's open-file limit to at least `n` (root may); a higher limit is
/// kept (tests run in parallel in one process: none may lower another's).
pub fn raise_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass; nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(
        rc,
        0,
        "getrlimit NOFILE: {}",
        std::io::Error::last_os_error()
    );
    if lim.rlim_cur >= n {
        return;
    }
    lim.rlim_cur = n;
    lim.rlim_max = lim.rlim_max.max(n);
    // SAFETY: setrlimit reads the struct we pass; nothing else.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(
        rc,
        0,
        "setrlimit NOFILE {n}: {}",
        std::io::Error::last_os_error()
    );
}

/// How long [`Prometheus`] waits for itself and for a query's value.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(30);

/// A real Prometheus server on loopback (Debian's `prometheus`), scraping one target every
/// second as job `kaprobe` and evaluating its rules every second; killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Prometheus {
    pub fn start(target: SocketAddr) -> Prometheus {
        Prometheus::start_with_rules(target, &[])
    }

    /// Like [`Prometheus::start`], loading `rule_files` (absolute paths).
    pub fn start_with_rules(target: SocketAddr, rule_files: &[std::path::PathBuf]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "kaprobe-prom-{}-{}",
            std::process::id(),
            target.port()
        ));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let rules: String = rule_files
            .iter()
            .map(|f| format!("  - '{}'\n", f.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rules}\
             scrape_configs:\n  - job_name: kaprobe\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start prometheus (Debian package `prometheus`; `cargo xtask setup` installs it)");
        let p = Prometheus { child, addr, dir };
        p.wait_until(&format!("prometheus ready on {addr}"), || {
            matches!(http_get(p.addr, "/-/ready"), Ok((200, _))).then_some(())
        });
        p
    }

    /// GET `path` of the HTTP API: the JSON answer (`status`, `data` or `error`), whatever
    /// its HTTP status (a bad query is a 400 with a JSON error).
    pub fn api(&self, path: &str) -> Value {
        let (status, body) =
            http_get(self.addr, path).unwrap_or_else(|e| panic!("prometheus {path}: {e}"));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus {path}: HTTP {status}, not JSON ({e}): {body}"))
    }

    /// The `data` of an API answer that must succeed.
    pub fn data(&self, path: &str) -> Value {
        let v = self.api(path);
        assert_eq!(v["status"], "success", "prometheus {path}: {v}");
        v["data"].clone()
    }

    /// An instant query's answer: `status` and `data.result`, or `error`.
    pub fn instant(&self, q: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", url_encode(q)))
    }

    /// The value of an instant query with one result, if it has one.
    pub fn query(&self, q: &str) -> Option<f64> {
        let v = self.instant(q);
        assert_eq!(v["status"], "success", "query {q}: {v}");
        let result = v["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "query {q} has several series: {v}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `q` has value `want`; returns the last value seen.
    pub fn wait_value(&self, q: &str, want: f64) -> Option<f64> {
        let deadline = Instant::now() + PROMETHEUS_WAIT;
        loop {
            let v = self.query(q);
            if v == Some(want) || Instant::now() > deadline {
                return v;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls `f` until it gives a value; panics naming `what` after the wait.
    pub fn wait_until<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PROMETHEUS_WAIT;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {PROMETHEUS_WAIT:?} waiting for {what}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every rule Prometheus loaded (`/api/v1/rules`), across groups.
    pub fn rules(&self) -> Vec<Value> {
        let data = self.data("/api/v1/rules");
        data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` connections from `link.a` to `listener` (in `link.b`) with keepalive 1 s / 1 s / 2
/// probes, then `link.b` silenced: returns once every client has failed with ETIMEDOUT,
/// with (clients, the accepted server sockets).
pub fn keepalive_timeouts(
    link: &Link,
    listener: TcpListener,
    n: usize,
) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let ka = Keepalive {
        idle_s: 1,
        intvl_s: 1,
        count: 2,
    };
    let (clients, servers) = connect_many(&link.a, listener, n, Some(ka));
    link.silence_b();
    for c in &clients {
        assert_eq!(read_until_error(c), ETIMEDOUT, "each client sees ETIMEDOUT");
    }
    (clients, servers)
}

/// An agent serving metrics, run with `extra` and `--port port` (only the connections of
/// that port reach the log and the metrics), and a [`Prometheus`] scraping it (loading
/// `rule_files`) that has taken a first sample of the keepalive timeouts counter, at 0:
/// (agent, Prometheus, the metrics address).
pub fn scraped_agent(
    port: u16,
    extra: &[&str],
    rule_files: &[std::path::PathBuf],
) -> (Agent, Prometheus, SocketAddr) {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let (metrics_arg, port_arg) = (metrics.to_string(), port.to_string());
    let mut args = vec!["--metrics-addr", &metrics_arg, "--port", &port_arg];
    args.extend(extra);
    let agent = Agent::start(&args);
    let prom = Prometheus::start_with_rules(metrics, rule_files);
    assert_eq!(
        prom.wait_value("up{job=\"kaprobe\"}", 1.0),
        Some(1.0),
        "prometheus scrapes kaprobe"
    );
    assert_eq!(
        prom.wait_value("kaprobe_keepalive_timeouts_total", 0.0),
        Some(0.0),
        "a first sample of the counter, before any timeout"
    );
    (agent, prom, metrics)
}
