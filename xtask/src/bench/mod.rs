//! `cargo xtask bench`: measures kaprobe's costs on this machine and writes
//! docs/benchmarks.md; `--quick` runs every part with tiny rounds (a smoke test for CI) and
//! writes target/bench/quick.md instead.
//!
//! 1. Overhead under connection churn: nginx on loopback (`Connection: close`) loaded by
//!    wrk, with no tracer, kaprobe (default, `--lean`, `--all`, empty programs), libbpf-tools'
//!    tcpstates and a bpftrace one-liner, in alternating rounds; and a keep-alive contrast.
//! 2. Per-hook cost: `kernel.bpf_stats_enabled` run time per program, in separate runs.
//! 3. Agent throughput (kaprobe-user/examples/agent_throughput.rs), and end to end:
//!    thousands of keepalive timeouts at once between two network namespaces.
//! 4. Memory: the agent's RSS following 10k and 100k connections; kernel map memory.
//! 5. Start-up: exec to ready and to the first event, next to tcpstates and bpftrace.
//!
//! Everything it starts (nginx, tracers, helpers, namespaces, sysctls, a tracefs mount) is
//! undone when its guard drops, on errors too. Traffic stays on loopback and in the
//! namespaces it makes.
use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde_json::Value;

use crate::{build, setup};

/// Debian packages the benchmark drives.
const PACKAGES: &[&str] = &[
    "nginx",
    "wrk",
    "libbpf-tools",
    "bpftrace",
    "bpftool",
    "iproute2",
    "nftables",
    "procps",
    "util-linux",
    "coreutils",
    "linux-perf",
];
const TCPSTATES: &str = "/usr/sbin/tcpstates";
/// The bpftrace contrast: one line per TCP state change.
const BPFTRACE_SCRIPT: &str = "tracepoint:sock:inet_sock_set_state /args->protocol == 6/ { printf(\"%s %d %d>%d %d %d\\n\", comm, pid, args->sport, args->dport, args->oldstate, args->newstate); }";
const NAME_PREFIX: &str = "kpbench";

#[derive(Args)]
pub struct Options {
    /// Smoke test: every part with tiny rounds (under a minute once built); writes
    /// target/bench/quick.md, not docs/benchmarks.md; fails on harness errors.
    #[arg(long)]
    pub quick: bool,
    /// Alternating rounds of the churn benchmark (default 16; 1 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Seconds of each wrk run (default 3; 1 with --quick).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Write the report here instead.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Run one part only (for working on it); the report goes to target/bench/<part>.md
    /// unless --output says otherwise, never to docs/benchmarks.md.
    #[arg(long, value_enum)]
    pub only: Option<Part>,
}

/// The parts of the benchmark, in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Part {
    Startup,
    Churn,
    Throughput,
    Stress,
    Memory,
}

/// How much of everything to do.
struct Plan {
    quick: bool,
    rounds: usize,
    secs: u64,
    keepalive_rounds: usize,
    throughput_records: u64,
    throughput_runs: usize,
    stress_conns: usize,
    memory_conns: Vec<usize>,
    startup_runs: usize,
    cpu_rounds: usize,
    only: Option<Part>,
}

impl Plan {
    fn new(o: &Options) -> Plan {
        let q = o.quick;
        Plan {
            quick: q,
            rounds: o.rounds.unwrap_or(if q { 1 } else { 16 }).max(1),
            secs: o.seconds.unwrap_or(if q { 1 } else { 3 }).max(1),
            keepalive_rounds: if q { 1 } else { 3 },
            throughput_records: if q { 200_000 } else { 4_000_000 },
            throughput_runs: if q { 1 } else { 5 },
            stress_conns: if q { 200 } else { 5000 },
            memory_conns: if q { vec![1000] } else { vec![10_000, 100_000] },
            startup_runs: if q { 1 } else { 5 },
            cpu_rounds: if q { 1 } else { 6 },
            only: o.only,
        }
    }
}

pub fn run(o: Options) -> Result<()> {
    if !setup::is_root() {
        bail!(
            "the benchmark needs root (eBPF, network namespaces, sysctls): run `sudo -E cargo xtask bench`"
        );
    }
    let plan = Plan::new(&o);
    let started = Instant::now();
    setup::apt_install(PACKAGES)?;
    build::run(&build::Options::release())?;
    if !build::cargo(&[
        "build",
        "--release",
        "--package",
        "kaprobe-user",
        "--example",
        "agent_throughput",
        "--example",
        "bench_conns",
    ])
    .status()?
    .success()
    {
        bail!("building the benchmark helpers failed");
    }
    let release = build::target_dir()?.join("release");
    let tools = Tools {
        kaprobe: release.join("kaprobe"),
        throughput: release.join("examples/agent_throughput"),
        conns: release.join("examples/bench_conns"),
    };
    for p in [&tools.kaprobe, &tools.throughput, &tools.conns] {
        if !p.is_file() {
            bail!("{} was not built", p.display());
        }
    }
    let dir = setup::workspace_root().join("target/bench");
    let work = dir.join(format!("run-{}", std::process::id()));
    fs::create_dir_all(&work)?;
    remove_stale_namespaces();
    let _tracefs = TracefsMount::ensure()?;
    let mut r = Report {
        quick: plan.quick,
        load_before: load_average(),
        busy_before: busy_fraction(Duration::from_secs(2)),
        ..Report::default()
    };
    let bench_start = Instant::now();
    let result = measure(&plan, &tools, &work, &mut r);
    r.load_after = load_average();
    r.duration = bench_start.elapsed();
    let out = o.output.clone().unwrap_or_else(|| {
        if let Some(p) = plan.only {
            dir.join(format!("{p:?}.md").to_lowercase())
        } else if plan.quick {
            dir.join("quick.md")
        } else {
            setup::workspace_root().join("docs/benchmarks.md")
        }
    });
    match result {
        Ok(()) => {
            let text = render(&plan, &r);
            fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
            let _ = fs::remove_dir_all(&work);
            eprintln!(
                "xtask: bench: wrote {} ({:.0} s, {:.0} s with the build)",
                out.display(),
                r.duration.as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
            for t in targets(&plan, &r) {
                eprintln!("xtask: bench: {} {}: {}", t.verdict, t.name, t.measured);
            }
            Ok(())
        }
        Err(e) => {
            // Never overwrite the published numbers with a partial run.
            let partial = dir.join("failed.md");
            let _ = fs::write(&partial, render(&plan, &r));
            Err(e.context(format!(
                "benchmark failed (partial results in {}; logs in {})",
                partial.display(),
                work.display()
            )))
        }
    }
}

struct Tools {
    kaprobe: PathBuf,
    throughput: PathBuf,
    conns: PathBuf,
}

fn measure(plan: &Plan, tools: &Tools, work: &Path, r: &mut Report) -> Result<()> {
    machine(r);
    let runs = |p: Part| plan.only.is_none_or(|o| o == p);
    if runs(Part::Startup) {
        r.startup = startup(plan, tools, work).context("start-up benchmark")?;
    }
    if runs(Part::Churn) {
        churn(plan, tools, work, r).context("churn benchmark")?;
    }
    if runs(Part::Throughput) {
        r.throughput = throughput(plan, tools).context("agent throughput benchmark")?;
    }
    if runs(Part::Stress) {
        r.stress = Some(stress(plan, tools, work).context("end-to-end timeout burst")?);
    }
    if !runs(Part::Memory) {
        return Ok(());
    }
    for &n in &plan.memory_conns {
        match memory(tools, work, n) {
            Ok(m) => r.memory.push(m),
            // 100k connections may not fit on every machine: say so, keep the rest.
            Err(e) if n > 10_000 => r.memory_failures.push(format!("{n} connections: {e:#}")),
            Err(e) => return Err(e.context(format!("memory benchmark ({n} connections)"))),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Processes

/// A child process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: String,
    child: Child,
    stderr_path: Option<PathBuf>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, stderr_path: Option<PathBuf>) -> Result<Proc> {
        if let Some(p) = &stderr_path {
            cmd.stderr(fs::File::create(p)?);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            stderr_path,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        self.stderr_path
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Fails if the process has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited early ({status}): {}",
                self.name,
                tail(&self.stderr(), 1500)
            );
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.child.try_wait()? {
            return Ok(s);
        }
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("{} did not stop on SIGTERM in 10 s (killed)", self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

/// Lines of a child's output, each with the moment it was read.
fn lines(r: impl Read + Send + 'static) -> Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line matching `pred` within `timeout`.
fn wait_line(
    rx: &Receiver<(Instant, String)>,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> Result<(Instant, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, l)) if pred(&l) => return Ok((t, l)),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => bail!("no {what} within {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => bail!("output ended before {what}"),
        }
    }
}

fn run_out(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A sysctl set for the benchmark, restored when dropped.
struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    fn set(name: &str, value: &str) -> Result<Sysctl> {
        let path = Path::new("/proc/sys").join(name.replace('.', "/"));
        let old = fs::read_to_string(&path).with_context(|| format!("reading {name}"))?;
        fs::write(&path, value).with_context(|| format!("setting {name}"))?;
        Ok(Sysctl { path, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, self.old.trim());
    }
}

/// tcpstates and bpftrace attach through tracefs: mounted for the run if it is not.
struct TracefsMount(bool);

impl TracefsMount {
    fn ensure() -> Result<TracefsMount> {
        if Path::new("/sys/kernel/tracing/events").is_dir() {
            return Ok(TracefsMount(false));
        }
        run_out("mount", &["-t", "tracefs", "nodev", "/sys/kernel/tracing"])?;
        Ok(TracefsMount(true))
    }
}

impl Drop for TracefsMount {
    fn drop(&mut self) {
        if self.0 {
            let _ = Command::new("umount").arg("/sys/kernel/tracing").status();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The share of the machine's CPU time that is busy over the next `d`.
fn busy_fraction(d: Duration) -> f64 {
    let (b0, t0) = cpu_ticks();
    std::thread::sleep(d);
    let (b1, t1) = cpu_ticks();
    if t1 > t0 {
        (b1 - b0) as f64 / (t1 - t0) as f64
    } else {
        0.0
    }
}

/// Busy and total CPU ticks of the whole machine (/proc/stat).
fn cpu_ticks() -> (u64, u64) {
    let s = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn ticks_per_second() -> f64 {
    run_out("getconf", &["CLK_TCK"])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------------------
// Tracers

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tracer {
    None,
    Default,
    Lean,
    All,
    Empty,
    Tcpstates,
    Bpftrace,
}

impl Tracer {
    fn label(self) -> &'static str {
        match self {
            Tracer::None => "no tracer",
            Tracer::Default => "kaprobe (default)",
            Tracer::Lean => "kaprobe --lean",
            Tracer::All => "kaprobe --all",
            Tracer::Empty => "empty programs (floor)",
            Tracer::Tcpstates => "libbpf-tools tcpstates",
            Tracer::Bpftrace => "bpftrace inet_sock_set_state",
        }
    }

    fn kaprobe(self) -> bool {
        matches!(
            self,
            Tracer::Default | Tracer::Lean | Tracer::All | Tracer::Empty
        )
    }

    /// The command; `line_buffered` puts tcpstates and bpftrace under `stdbuf -oL` (for
    /// timing their lines; not when their output goes to /dev/null).
    fn command(self, tools: &Tools, extra: &[&str], line_buffered: bool) -> Option<Command> {
        let mut c = match self {
            Tracer::None => return None,
            Tracer::Default | Tracer::Lean | Tracer::All | Tracer::Empty => {
                let mut c = Command::new(&tools.kaprobe);
                c.args(["watch", "--format", "json"]);
                if self == Tracer::All {
                    c.arg("--all");
                }
                if self == Tracer::Lean {
                    c.arg("--lean");
                }
                if self == Tracer::Empty {
                    c.env("KAPROBE_BENCH_EMPTY_PROGRAMS", "1");
                }
                c
            }
            Tracer::Tcpstates | Tracer::Bpftrace => {
                let mut argv = vec![];
                if line_buffered {
                    argv.extend(["stdbuf", "-oL"]);
                }
                if self == Tracer::Tcpstates {
                    argv.push(TCPSTATES);
                } else {
                    argv.extend(["bpftrace", "-e", BPFTRACE_SCRIPT]);
                }
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        c.args(extra).stdin(Stdio::null());
        Some(c)
    }
}

/// Starts a tracer with its output to /dev/null; returns once its hooks are attached:
/// kaprobe says "tracing started" (after writing `agent_start`); for the others, the
/// kernel lists their tracepoint programs under their pid (`bpftool perf list`).
fn start_tracer(t: Tracer, tools: &Tools, work: &Path, tag: &str) -> Result<Option<Proc>> {
    let extra: &[&str] = if t.kaprobe() { &["-v"] } else { &[] };
    let Some(mut cmd) = t.command(tools, extra, false) else {
        return Ok(None);
    };
    cmd.stdout(Stdio::null());
    let err = work.join(format!("{tag}.stderr"));
    let mut p = Proc::spawn(t.label(), &mut cmd, Some(err))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        p.check_alive()?;
        let ready = if t.kaprobe() {
            p.stderr().contains("tracing started")
        } else {
            !perf_progs(p.pid())?.is_empty()
        };
        if ready {
            return Ok(Some(p));
        }
        if Instant::now() > deadline {
            bail!(
                "{} not ready after 60 s: {}",
                t.label(),
                tail(&p.stderr(), 1500)
            );
        }
        std::thread::sleep(Duration::from_millis(if t.kaprobe() { 10 } else { 50 }));
    }
}

/// (program id, tracepoint) of the tracepoint programs that process `pid` attached.
fn perf_progs(pid: u32) -> Result<Vec<(u64, String)>> {
    let v: Value = serde_json::from_str(&run_out("bpftool", &["perf", "list", "--json"])?)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["pid"].as_u64() == Some(pid as u64))
        .filter_map(|e| {
            Some((
                e["prog_id"].as_u64()?,
                e["tracepoint"].as_str().unwrap_or("?").to_owned(),
            ))
        })
        .collect())
}

/// Ids of the BPF maps process `pid` holds open.
fn map_ids(pid: u32) -> Vec<u64> {
    let mut ids: Vec<u64> = fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[derive(Clone, Debug)]
struct MapMem {
    name: String,
    kind: String,
    bytes: u64,
}

fn map_memory(pid: u32) -> Result<Vec<MapMem>> {
    let ids = map_ids(pid);
    let v: Value = serde_json::from_str(&run_out("bpftool", &["map", "show", "--json"])?)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .map(|m| MapMem {
            name: m["name"].as_str().unwrap_or("?").to_owned(),
            kind: m["type"].as_str().unwrap_or("?").to_owned(),
            bytes: m["bytes_memlock"]
                .as_u64()
                .or_else(|| m["bytes_memlock"].as_str().and_then(|s| s.parse().ok()))
                .unwrap_or(0),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// nginx and wrk

struct Nginx {
    _proc: Proc,
    port: u16,
}

fn start_nginx(work: &Path, keepalive: bool) -> Result<Nginx> {
    let dir = work.join(if keepalive {
        "nginx-keepalive"
    } else {
        "nginx-close"
    });
    fs::create_dir_all(dir.join("www"))?;
    fs::create_dir_all(dir.join("tmp"))?;
    // A small page, like nginx's default one.
    fs::write(
        dir.join("www/index.html"),
        format!(
            "<html><body>{}</body></html>\n",
            "kaprobe benchmark ".repeat(32)
        ),
    )?;
    let port = free_port()?;
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_timeout {};\n  keepalive_requests 1000000;\n\
         client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
         fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n\
         scgi_temp_path {d}/tmp/scgi;\n\
         server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    root {d}/www;\n\
         location / {{ }}\n  }}\n}}\n",
        if keepalive { 65 } else { 0 }
    );
    fs::write(dir.join("nginx.conf"), conf)?;
    let mut p = Proc::spawn(
        "nginx",
        Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
        Some(dir.join("stderr")),
    )?;
    // Ready when it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        p.check_alive()?;
        if http_get(port, "/index.html").is_ok_and(|s| s.starts_with("HTTP/1.1 200")) {
            return Ok(Nginx { _proc: p, port });
        }
        if Instant::now() > deadline {
            bail!("nginx does not answer on 127.0.0.1:{port}: {}", p.stderr());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn http_get(port: u16, path: &str) -> Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[derive(Clone, Debug, Default)]
struct WrkResult {
    rps: f64,
    requests: u64,
    errors: u64,
    /// Machine CPU time per request, µs (both cores, everything running).
    cpu_us: f64,
}

fn wrk(port: u16, secs: u64, close: bool) -> Result<WrkResult> {
    let url = format!("http://127.0.0.1:{port}/index.html");
    let d = format!("{secs}s");
    let mut args = vec!["-t1", "-c32", "-d", &d];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&url);
    let (b0, _) = cpu_ticks();
    let out = run_out("wrk", &args)?;
    let (b1, _) = cpu_ticks();
    let num_after = |key: &str| -> Option<f64> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.trim_end_matches(',').parse().ok())
    };
    let rps = num_after("Requests/sec:").ok_or_else(|| anyhow!("wrk said: {out}"))?;
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut errors = num_after("Non-2xx or 3xx responses:").unwrap_or(0.0) as u64;
    if let Some(l) = out.lines().find(|l| l.trim().starts_with("Socket errors:")) {
        errors += l
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum::<u64>();
    }
    if rps <= 0.0 || requests == 0 {
        bail!("wrk made no requests: {out}");
    }
    let cpu_us = (b1 - b0) as f64 / ticks_per_second() * 1e6 / requests as f64;
    Ok(WrkResult {
        rps,
        requests,
        errors,
        cpu_us,
    })
}

// ---------------------------------------------------------------------------------------
// 1 and 2: churn and per-hook cost

const CHURN_TRACERS: &[Tracer] = &[
    Tracer::None,
    Tracer::Default,
    Tracer::Lean,
    Tracer::All,
    Tracer::Empty,
    Tracer::Tcpstates,
    Tracer::Bpftrace,
];
const KEEPALIVE_TRACERS: &[Tracer] = &[Tracer::None, Tracer::Default, Tracer::All, Tracer::Empty];

#[derive(Clone, Debug, Default)]
struct Series {
    tracer: Option<Tracer>,
    runs: Vec<WrkResult>,
}

impl Series {
    fn rps(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.rps).collect()
    }
}

#[derive(Clone, Debug, Default)]
struct Churn {
    close: Vec<Series>,
    keepalive: Vec<Series>,
}

#[derive(Clone, Debug)]
struct ProgCost {
    tracepoint: String,
    name: String,
    runs: u64,
    ns: u64,
}

#[derive(Clone, Debug)]
struct HookRun {
    tracer: Tracer,
    requests: u64,
    rps: f64,
    progs: Vec<ProgCost>,
    maps: Vec<MapMem>,
    /// CPU time of the tracer's own process (the agent) during the run, in clock ticks.
    process_ticks: u64,
}

/// User plus system CPU time of process `pid` so far, in clock ticks (/proc/PID/stat).
fn process_ticks(pid: u32) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (in parentheses, may hold spaces): utime and
    // stime are the 14th and 15th fields of the line, the 12th and 13th after ")".
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: {s}"))?;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    match f[..] {
        [user, system] => Ok(user + system),
        _ => bail!("/proc/{pid}/stat: {s}"),
    }
}

fn rounds(
    plan: &Plan,
    tools: &Tools,
    work: &Path,
    port: u16,
    close: bool,
    tracers: &[Tracer],
    n: usize,
) -> Result<Vec<Series>> {
    let mut series: Vec<Series> = tracers
        .iter()
        .map(|&t| Series {
            tracer: Some(t),
            runs: vec![],
        })
        .collect();
    let kind = if close { "close" } else { "keepalive" };
    for round in 0..n {
        // The order turns by one each round, so that no configuration always follows the
        // same one or sits at the same place in a round (drift within a round).
        for k in 0..tracers.len() {
            let i = (round + k) % tracers.len();
            let t = tracers[i];
            let tag = format!("{kind}-{round}-{i}");
            let mut tracer = start_tracer(t, tools, work, &tag)?;
            let res = wrk(port, plan.secs, close)?;
            if let Some(p) = &mut tracer {
                p.check_alive()?;
                p.stop()?;
            }
            eprintln!(
                "xtask: bench: {kind} round {}/{n}: {:<30} {:>9.0} req/s",
                round + 1,
                t.label(),
                res.rps
            );
            series[i].runs.push(res);
        }
    }
    Ok(series)
}

/// Fills `r.churn` and `r.hooks` (as far as it gets).
fn churn(plan: &Plan, tools: &Tools, work: &Path, r: &mut Report) -> Result<()> {
    {
        let nginx = start_nginx(work, false)?;
        // Warm-up (caches, TIME_WAIT steady state), not counted.
        wrk(nginx.port, 1, true)?;
        r.churn.close = rounds(
            plan,
            tools,
            work,
            nginx.port,
            true,
            CHURN_TRACERS,
            plan.rounds,
        )?;
        r.hooks = hook_costs(plan, tools, work, nginx.port)?;
        r.cpu = cpu_attribution(plan, tools, work, nginx.port)?;
    }
    let nginx = start_nginx(work, true)?;
    wrk(nginx.port, 1, false)?;
    r.churn.keepalive = rounds(
        plan,
        tools,
        work,
        nginx.port,
        false,
        KEEPALIVE_TRACERS,
        plan.keepalive_rounds,
    )?;
    Ok(())
}

/// One churn run per tracer with `kernel.bpf_stats_enabled=1` (which itself costs two clock
/// reads per program run, so these runs are not in the throughput table).
fn hook_costs(plan: &Plan, tools: &Tools, work: &Path, port: u16) -> Result<Vec<HookRun>> {
    let _stats = Sysctl::set("kernel.bpf_stats_enabled", "1")?;
    let mut out = vec![];
    for &t in &CHURN_TRACERS[1..] {
        let mut p = start_tracer(t, tools, work, &format!("hooks-{t:?}"))?.expect("a tracer");
        let ids = perf_progs(p.pid())?;
        let maps = if t.kaprobe() {
            map_memory(p.pid())?
        } else {
            vec![]
        };
        let ticks_before = process_ticks(p.pid())?;
        let res = wrk(port, plan.secs, true)?;
        p.check_alive()?;
        let process_ticks = process_ticks(p.pid())? - ticks_before;
        let progs = prog_stats(&ids)?;
        p.stop()?;
        if t.kaprobe() && !progs.iter().any(|c| c.runs > 0) {
            bail!("{}: no program run counted under bpf_stats", t.label());
        }
        out.push(HookRun {
            tracer: t,
            requests: res.requests,
            rps: res.rps,
            progs,
            maps,
            process_ticks,
        });
    }
    Ok(out)
}

/// Where the machine's CPU went during one perf-sampled churn run: samples counted by
/// `perf record -a -g` (all CPUs, every CPU's idle loop included).
#[derive(Clone, Debug)]
struct CpuRun {
    tracer: Tracer,
    rps: f64,
    /// Samples outside the idle task.
    busy: u64,
    /// Samples, outside the tracer's process, whose kernel stack is in the tracepoint's
    /// dispatch to BPF: the programs, the helpers they call and the dispatch itself
    /// (`bpf_trace_run*`; for classic tracepoints `perf_trace_*` and `trace_call_bpf`).
    bpf: u64,
    /// Samples of the tracer's own process (the agent; user and kernel time).
    process: u64,
}

impl CpuRun {
    /// The tracer's share of the busy CPU: its BPF path plus its process.
    fn share(&self) -> f64 {
        (self.bpf + self.process) as f64 / self.busy.max(1) as f64
    }
}

/// Whether a symbol of a kernel stack belongs to a tracepoint's dispatch to BPF.
fn bpf_frame(sym: &str) -> bool {
    sym.starts_with("bpf_prog_")
        || sym.starts_with("bpf_trace_run")
        || sym.starts_with("__bpf_trace_")
        || sym.starts_with("perf_trace_")
        || sym == "trace_call_bpf"
}

/// Counts the samples of `perf script -F pid,ip,sym` output: a line with the pid (padded
/// with spaces when it is short), then one line per stack frame (starting with a tab), then
/// an empty line.
fn classify_samples(script: &str, tracer_pid: Option<u32>) -> (u64, u64, u64) {
    let (mut busy, mut bpf, mut process) = (0, 0, 0);
    let mut count = |pid: Option<u32>, in_bpf: bool| match pid {
        None | Some(0) => {}
        Some(p) => {
            busy += 1;
            if Some(p) == tracer_pid {
                process += 1;
            } else if in_bpf {
                bpf += 1;
            }
        }
    };
    let (mut pid, mut in_bpf) = (None, false);
    for line in script.lines() {
        if line.trim().is_empty() {
            count(pid.take(), in_bpf);
            in_bpf = false;
        } else if !line.starts_with('\t') {
            pid = line.split_whitespace().next().and_then(|p| p.parse().ok());
        } else if let Some(sym) = line.split_whitespace().nth(1) {
            in_bpf |= bpf_frame(sym);
        }
    }
    count(pid, in_bpf);
    (busy, bpf, process)
}

/// perf's sampling rate in the CPU-share rounds. At 999 Hz a 3 s round had ~50 samples in
/// kaprobe's BPF path: the per-round ratio to the empty programs scattered by ±20 % from
/// counting alone (a `--lean` run: 0.69-1.18 % of busy CPU over six rounds).
const PERF_HZ: &str = "2999";

/// Churn runs sampled by `perf record -a -g` (no bpf_stats), alternating tracers as the
/// throughput rounds do: the share of the busy CPU in each tracer's BPF path and process.
/// Unlike requests/s, a share does not move with the speed of the machine from run to run.
fn cpu_attribution(plan: &Plan, tools: &Tools, work: &Path, port: u16) -> Result<Vec<CpuRun>> {
    let mut out = vec![];
    let data = work.join("perf.data");
    for round in 0..plan.cpu_rounds {
        for k in 0..CHURN_TRACERS.len() {
            let t = CHURN_TRACERS[(round + k) % CHURN_TRACERS.len()];
            let mut tracer = start_tracer(t, tools, work, &format!("cpu-{round}-{k}"))?;
            // wrk runs a second longer than the sampling, which starts once it runs.
            let secs = plan.secs;
            let load = std::thread::spawn(move || wrk(port, secs + 1, true));
            std::thread::sleep(Duration::from_millis(300));
            let rec = Command::new("perf")
                .args(["record", "-q", "-a", "-g", "-F", PERF_HZ, "-o"])
                .arg(&data)
                .args(["--", "sleep", &secs.to_string()])
                .stdout(Stdio::null())
                .output()
                .context("running perf record (Debian package linux-perf)")?;
            let res = load.join().map_err(|_| anyhow!("wrk thread panicked"))??;
            let pid = tracer.as_ref().map(|p| p.pid());
            if let Some(p) = &mut tracer {
                p.check_alive()?;
                p.stop()?;
            }
            if !rec.status.success() {
                bail!(
                    "perf record failed ({}): {}",
                    rec.status,
                    tail(&String::from_utf8_lossy(&rec.stderr), 1500)
                );
            }
            let script = Command::new("perf")
                .args(["script", "-F", "pid,ip,sym", "-i"])
                .arg(&data)
                .stderr(Stdio::null())
                .output()
                .context("running perf script")?;
            let (busy, bpf, process) =
                classify_samples(&String::from_utf8_lossy(&script.stdout), pid);
            if busy == 0 {
                bail!("perf recorded no busy sample during a churn run");
            }
            let run = CpuRun {
                tracer: t,
                rps: res.rps,
                busy,
                bpf,
                process,
            };
            eprintln!(
                "xtask: bench: cpu round {}/{}: {:<30} {:>5.2} % of busy CPU",
                round + 1,
                plan.cpu_rounds,
                t.label(),
                run.share() * 100.0
            );
            out.push(run);
        }
    }
    let _ = fs::remove_file(&data);
    Ok(out)
}

fn prog_stats(ids: &[(u64, String)]) -> Result<Vec<ProgCost>> {
    let v: Value = serde_json::from_str(&run_out("bpftool", &["prog", "show", "--json"])?)?;
    let all = v.as_array().cloned().unwrap_or_default();
    Ok(ids
        .iter()
        .map(|(id, tp)| {
            let p = all.iter().find(|p| p["id"].as_u64() == Some(*id));
            let get = |k: &str| p.and_then(|p| p[k].as_u64()).unwrap_or(0);
            ProgCost {
                tracepoint: tp.clone(),
                name: p.and_then(|p| p["name"].as_str()).unwrap_or("?").to_owned(),
                runs: get("run_cnt"),
                ns: get("run_time_ns"),
            }
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// 3: agent throughput and the timeout burst

#[derive(Clone, Debug, Default)]
struct Throughput {
    records_per_s: Vec<f64>,
    events_per_s: Vec<f64>,
    records: u64,
    events: u64,
    bytes: u64,
}

fn throughput(plan: &Plan, tools: &Tools) -> Result<Throughput> {
    let mut t = Throughput::default();
    for _ in 0..plan.throughput_runs {
        // One core: the agent is single-threaded; pinned so that it does not migrate.
        let out = run_out(
            "taskset",
            &[
                "-c",
                "1",
                tools.throughput.to_str().expect("utf-8 path"),
                &plan.throughput_records.to_string(),
            ],
        )?;
        let v: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("agent_throughput printed {out}"))?;
        let secs = v["seconds"].as_f64().unwrap_or(0.0);
        t.records = v["records"].as_u64().unwrap_or(0);
        t.events = v["events"].as_u64().unwrap_or(0);
        t.bytes = v["bytes"].as_u64().unwrap_or(0);
        if secs <= 0.0 || t.events == 0 {
            bail!("agent_throughput measured nothing: {out}");
        }
        t.records_per_s.push(t.records as f64 / secs);
        t.events_per_s.push(t.events as f64 / secs);
    }
    Ok(t)
}

/// Two network namespaces joined by a veth pair (a: .1, b: .2), deleted when dropped.
struct NsPair {
    a: String,
    b: String,
    b4: String,
}

impl NsPair {
    fn new(tag: &str, subnet: u8) -> Result<NsPair> {
        let pid = std::process::id();
        let a = format!("{NAME_PREFIX}-{tag}a-{pid}");
        let b = format!("{NAME_PREFIX}-{tag}b-{pid}");
        run_out("ip", &["netns", "add", &a])?;
        let pair = NsPair {
            a: a.clone(),
            b: b.clone(),
            b4: format!("10.251.{subnet}.2"),
        };
        run_out("ip", &["netns", "add", &b])?;
        let (va, vb) = (
            format!("kpbA{}", pid % 100_000),
            format!("kpbB{}", pid % 100_000),
        );
        run_out(
            "ip",
            &[
                "link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b,
            ],
        )?;
        for (ns, dev, addr) in [
            (&a, &va, format!("10.251.{subnet}.1/24")),
            (&b, &vb, format!("10.251.{subnet}.2/24")),
        ] {
            pair.exec(ns, &["ip", "addr", "add", &addr, "dev", dev])?;
            pair.exec(ns, &["ip", "link", "set", dev, "up"])?;
            pair.exec(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    fn exec(&self, ns: &str, argv: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", ns];
        all.extend_from_slice(argv);
        run_out("ip", &all)
    }

    fn inode(&self, ns: &str) -> Result<u64> {
        Ok(fs::metadata(format!("/run/netns/{ns}"))?.ino())
    }

    fn nstat(&self, ns: &str, name: &str) -> Result<u64> {
        let out = self.exec(ns, &["nstat", "-asz", name])?;
        Ok(out
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }
}

impl Drop for NsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Namespaces left by a benchmark that was killed.
fn remove_stale_namespaces() {
    let Ok(list) = run_out("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|rest| rest.rsplit('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// The hard limit of open files here (a process without CAP_SYS_RESOURCE cannot raise it).
fn hard_fd_limit() -> u64 {
    fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// One `bench_conns` process.
struct Helper {
    proc: Proc,
    stdin: ChildStdin,
    out: Receiver<(Instant, String)>,
}

/// `bench_conns` processes holding connections from `a` to `b`: as many as the open-file
/// limit needs (each holds both ends of its connections).
struct Conns(Vec<Helper>);

impl Conns {
    fn start(tools: &Tools, pair: &NsPair, work: &Path, n: usize) -> Result<Conns> {
        let limit = hard_fd_limit();
        // Root may raise its limit (CAP_SYS_RESOURCE); in a sandbox without it, split.
        let per_proc = if limit >= 2 * n as u64 + 4096 {
            n
        } else {
            (limit.saturating_sub(256) / 2).max(1000) as usize
        };
        let mut conns = Conns(vec![]);
        let mut left = n;
        while left > 0 {
            let share = left.min(per_proc);
            left -= share;
            // Up to 50k connections per listener (one client address: ≤ 64k ports each).
            let listeners = share.div_ceil(50_000).to_string();
            let i = conns.0.len();
            let mut proc = Proc::spawn(
                "bench_conns",
                Command::new(&tools.conns)
                    .args([&pair.a, &pair.b, &pair.b4, &listeners, &share.to_string()])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped()),
                Some(work.join(format!("bench_conns-{n}-{i}.stderr"))),
            )?;
            let stdin = proc.child.stdin.take().expect("piped");
            let out = lines(proc.child.stdout.take().expect("piped"));
            let h = Helper { proc, stdin, out };
            let wait = Duration::from_secs(40 + share as u64 / 1000);
            wait_line(&h.out, wait, "connections", |l| l.starts_with("connected"))
                .map_err(|e| anyhow!("bench_conns: {e}: {}", tail(&h.proc.stderr(), 1500)))?;
            conns.0.push(h);
        }
        for h in &mut conns.0 {
            h.proc.check_alive()?;
        }
        Ok(conns)
    }

    fn processes(&self) -> usize {
        self.0.len()
    }

    /// Sets keepalive on every client socket; returns when the last process is done.
    fn keepalive(&mut self, idle: u32, intvl: u32, cnt: u32) -> Result<Instant> {
        for h in &mut self.0 {
            writeln!(h.stdin, "keepalive {idle} {intvl} {cnt}")?;
            h.stdin.flush()?;
        }
        let mut last = Instant::now();
        for h in &self.0 {
            let (t, _) = wait_line(&h.out, Duration::from_secs(60), "ok", |l| l == "ok")?;
            last = last.max(t);
        }
        Ok(last)
    }
}

impl Drop for Conns {
    fn drop(&mut self) {
        for h in &mut self.0 {
            let _ = writeln!(h.stdin, "exit");
            let _ = h.stdin.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for h in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = h.proc.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Stress {
    conns: usize,
    kernel_timeouts: u64,
    reported: u64,
    events_lost: u64,
    lost_timer_ends: u64,
    /// From the keepalive settings to the kernel's count reaching all of them.
    kernel_secs: f64,
    /// From the first reported timeout to the last, as read from the agent's output.
    report_spread_secs: f64,
    /// Largest delay between a timeout's kernel timestamp and reading its line.
    max_lag_secs: f64,
    /// From the kernel's count reaching all (as polled) to the agent's last report; negative
    /// when the agent was done before the poll saw the kernel's count.
    drain_after_kernel_secs: Option<f64>,
}

/// Parses an RFC 3339 UTC timestamp (`2025-01-02T03:04:05.123456Z`) as Unix seconds.
fn parse_rfc3339(s: &str) -> Option<f64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let ss: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Thousands of connections time out at once (the peer silenced by nftables), with the
/// default ring buffer: how long the agent takes to report them, and whether any is lost.
fn stress(plan: &Plan, tools: &Tools, work: &Path) -> Result<Stress> {
    let n = plan.stress_conns;
    let pair = NsPair::new("st", 1)?;
    let mut conns = Conns::start(tools, &pair, work, n)?;
    let ns_a = pair.inode(&pair.a)?;
    let mut agent = Proc::spawn(
        "kaprobe",
        Command::new(&tools.kaprobe)
            .args(["watch", "--format", "json", "-v"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
        Some(work.join("stress-kaprobe.stderr")),
    )?;
    let out = lines(agent.child.stdout.take().expect("piped"));
    wait_line(&out, Duration::from_secs(30), "agent_start", |l| {
        l.contains("\"agent_start\"")
    })?;
    let before = pair.nstat(&pair.a, "TcpExtTCPAbortOnTimeout")?;
    pair.exec(
        &pair.b,
        &[
            "nft",
            &format!(
                "add table inet {NAME_PREFIX}; add chain inet {NAME_PREFIX} out {{ type filter hook output priority 0; }}; add rule inet {NAME_PREFIX} out ip daddr 10.251.1.1 drop"
            ),
        ],
    )?;
    let armed = conns.keepalive(1, 1, 1)?;
    let mut s = Stress {
        conns: n,
        ..Stress::default()
    };
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    let mut kernel_done: Option<Instant> = None;
    let deadline = armed + Duration::from_secs(30 + n as u64 / 500);
    let mut next_poll = Instant::now();
    let mut on_line = |s: &mut Stress, t: Instant, l: &str| {
        if !l.contains("\"keepalive_timeout\"") {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            return;
        };
        if v["event"] != "keepalive_timeout" || v["netns"].as_u64() != Some(ns_a) {
            return;
        }
        s.reported += 1;
        first.get_or_insert(t);
        last = Some(t);
        if let Some(ts) = v["ts"].as_str().and_then(parse_rfc3339) {
            let lag = unix_now() - t.elapsed().as_secs_f64() - ts;
            s.max_lag_secs = s.max_lag_secs.max(lag);
        }
    };
    loop {
        let now = Instant::now();
        if now >= next_poll {
            next_poll = now + Duration::from_millis(100);
            let k = pair.nstat(&pair.a, "TcpExtTCPAbortOnTimeout")? - before;
            s.kernel_timeouts = k;
            if k >= n as u64 && kernel_done.is_none() {
                kernel_done = Some(Instant::now());
            }
        }
        if s.reported >= n as u64 && kernel_done.is_some() {
            break;
        }
        if kernel_done.is_some_and(|t| t.elapsed() > Duration::from_secs(5))
            || Instant::now() > deadline
        {
            break;
        }
        match out.recv_timeout(Duration::from_millis(20)) {
            Ok((t, l)) => on_line(&mut s, t, &l),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                agent.check_alive()?;
                bail!("kaprobe closed its output");
            }
        }
    }
    agent.check_alive()?;
    agent.stop()?;
    let mut stop = None;
    while let Ok((t, l)) = out.recv_timeout(Duration::from_secs(5)) {
        if l.contains("\"agent_stop\"") {
            stop = serde_json::from_str::<Value>(&l).ok();
        } else {
            on_line(&mut s, t, &l);
        }
    }
    let stop = stop.ok_or_else(|| anyhow!("kaprobe wrote no agent_stop"))?;
    s.events_lost = stop["totals"]["events_lost"].as_u64().unwrap_or(0);
    s.lost_timer_ends = stop["totals"]["lost_records"]["keepalive_timer_ends"]
        .as_u64()
        .unwrap_or(0);
    if let Some(k) = kernel_done {
        s.kernel_secs = (k - armed).as_secs_f64();
        if let Some(l) = last {
            s.drain_after_kernel_secs = Some(if l >= k {
                (l - k).as_secs_f64()
            } else {
                -(k - l).as_secs_f64()
            });
        }
    }
    if let (Some(f), Some(l)) = (first, last) {
        s.report_spread_secs = (l - f).as_secs_f64();
    }
    if s.kernel_timeouts < n as u64 {
        bail!(
            "only {} of {n} connections timed out in the kernel",
            s.kernel_timeouts
        );
    }
    if s.reported + s.lost_timer_ends != s.kernel_timeouts {
        bail!(
            "{} timeouts reported + {} counted lost ≠ {} in the kernel",
            s.reported,
            s.lost_timer_ends,
            s.kernel_timeouts
        );
    }
    drop(conns);
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// 4: memory

#[derive(Clone, Debug, Default)]
struct Memory {
    conns: usize,
    max_connections: Option<u32>,
    rss_idle_kb: u64,
    rss_kb: u64,
    hwm_kb: u64,
    tracked: u64,
    settle_secs: f64,
    helpers: usize,
    maps: Vec<MapMem>,
    events_lost: u64,
}

fn proc_status_kb(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A metric of the agent, summed over its labels.
fn metric(port: u16, name: &str) -> Option<u64> {
    let body = http_get(port, "/metrics").ok()?;
    let values: Vec<f64> = body
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            rest.rsplit(' ').next()?.trim().parse::<f64>().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
}

/// RSS of the agent following `n` live connections with keepalive on (idle 1 s, so each
/// one's timer fires and the agent learns it).
fn memory(tools: &Tools, work: &Path, n: usize) -> Result<Memory> {
    let pair = NsPair::new("mem", 2)?;
    // One client address: widen its ports (≤ 50k connections per listener).
    pair.exec(
        &pair.a,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_local_port_range=1024 65535",
        ],
    )?;
    // The agent follows at most --max-connections (default 65536); the kernel table holds
    // both ends of each connection (born in SYN_SENT / SYN_RECV).
    let max_conns = (n > 30_000).then(|| (2 * n as u32 + 1).next_power_of_two());
    let port = free_port()?;
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(&tools.kaprobe);
    cmd.args([
        "watch",
        "--format",
        "json",
        "-v",
        "--metrics-addr",
        &metrics_addr,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    let mc = max_conns.map(|m| m.to_string());
    if let Some(m) = &mc {
        cmd.args(["--max-connections", m]);
    }
    let mut agent = Proc::spawn(
        "kaprobe",
        &mut cmd,
        Some(work.join(format!("mem-{n}.stderr"))),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Idle: once the agent has freed what only start-up needed (after agent_start).
    while !agent.stderr().contains("start-up memory released") {
        agent.check_alive()?;
        if Instant::now() > deadline {
            bail!("kaprobe did not start: {}", agent.stderr());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = agent.pid();
    let mut m = Memory {
        conns: n,
        max_connections: max_conns,
        rss_idle_kb: proc_status_kb(pid, "VmRSS:"),
        maps: map_memory(pid)?,
        ..Memory::default()
    };
    let mut conns = Conns::start(tools, &pair, work, n)?;
    m.helpers = conns.processes();
    let armed = conns.keepalive(1, 1, 9)?;
    let deadline = Instant::now() + Duration::from_secs(60 + n as u64 / 2000);
    loop {
        agent.check_alive()?;
        m.tracked = metric(port, "kaprobe_tracked_connections").unwrap_or(0);
        if m.tracked >= n as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent follows {} of {n} connections after {:?}",
                m.tracked,
                armed.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    m.settle_secs = armed.elapsed().as_secs_f64();
    // One more second of probes and answers, then measure.
    std::thread::sleep(Duration::from_secs(1));
    m.rss_kb = proc_status_kb(pid, "VmRSS:");
    m.hwm_kb = proc_status_kb(pid, "VmHWM:");
    m.tracked = metric(port, "kaprobe_tracked_connections").unwrap_or(m.tracked);
    m.events_lost = metric(port, "kaprobe_events_lost_total").unwrap_or(0);
    // Quiet the timers, then stop the agent before the connections close (100k closes
    // would only measure the teardown).
    conns.keepalive(7200, 75, 9)?;
    agent.stop()?;
    drop(conns);
    Ok(m)
}

// ---------------------------------------------------------------------------------------
// 5: start-up

#[derive(Clone, Debug)]
struct Startup {
    tracer: Tracer,
    ready_what: &'static str,
    ready_secs: Vec<f64>,
    first_event_secs: Vec<f64>,
}

/// Connection attempts to a closed loopback port every 10 ms (each: a reset, and state
/// changes), until dropped.
struct Stimulus(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Stimulus {
    fn start() -> Result<Stimulus> {
        let port = free_port()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            // Bounded: at most two minutes.
            for _ in 0..12_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(100));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Ok(Stimulus(stop, Some(h)))
    }
}

impl Drop for Stimulus {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            let _ = h.join();
        }
    }
}

fn startup(plan: &Plan, tools: &Tools, work: &Path) -> Result<Vec<Startup>> {
    let _stimulus = Stimulus::start()?;
    let mut out = vec![];
    for (t, ready_what) in [
        (Tracer::Default, "`agent_start` written"),
        (Tracer::Tcpstates, "header line (printed after attaching)"),
        (
            Tracer::Bpftrace,
            "`Attaching 1 probe...` (printed before attaching)",
        ),
    ] {
        let mut s = Startup {
            tracer: t,
            ready_what,
            ready_secs: vec![],
            first_event_secs: vec![],
        };
        for i in 0..plan.startup_runs {
            let mut cmd = t.command(tools, &[], true).expect("a tracer");
            cmd.stdout(Stdio::piped());
            let t0 = Instant::now();
            let mut p = Proc::spawn(
                t.label(),
                &mut cmd,
                Some(work.join(format!("startup-{t:?}-{i}.stderr"))),
            )?;
            let rx = lines(p.child.stdout.take().expect("piped"));
            let timeout = Duration::from_secs(60);
            let ready = if t.kaprobe() {
                wait_line(&rx, timeout, "agent_start", |l| {
                    l.contains("\"agent_start\"")
                })
            } else {
                wait_line(&rx, timeout, "first line", |_| true)
            }
            .map_err(|e| anyhow!("{}: {e}: {}", t.label(), tail(&p.stderr(), 1500)))?;
            let event = if t.kaprobe() {
                wait_line(&rx, timeout, "first event", |l| l.contains("\"event\""))
            } else {
                wait_line(&rx, timeout, "first event", |l| !l.trim().is_empty())
            }
            .map_err(|e| anyhow!("{}: {e}: {}", t.label(), tail(&p.stderr(), 1500)))?;
            p.stop()?;
            s.ready_secs.push((ready.0 - t0).as_secs_f64());
            s.first_event_secs.push((event.0 - t0).as_secs_f64());
        }
        eprintln!(
            "xtask: bench: start-up {}: ready {:.3} s, first event {:.3} s (median)",
            t.label(),
            median(&s.ready_secs),
            median(&s.first_event_secs)
        );
        out.push(s);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Report

#[derive(Default)]
struct Report {
    quick: bool,
    machine: Vec<(String, String)>,
    load_before: String,
    load_after: String,
    /// Share of the machine's CPU time busy in the seconds before the run.
    busy_before: f64,
    duration: Duration,
    startup: Vec<Startup>,
    churn: Churn,
    hooks: Vec<HookRun>,
    cpu: Vec<CpuRun>,
    throughput: Throughput,
    stress: Option<Stress>,
    memory: Vec<Memory>,
    memory_failures: Vec<String>,
}

fn machine(r: &mut Report) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1048576.0))
        .unwrap_or_default();
    let virt = if cpuinfo.contains(" hypervisor") {
        "virtual machine"
    } else {
        "bare metal"
    };
    let cmd = |p: &str, a: &[&str]| -> String {
        Command::new(p)
            .args(a)
            .output()
            .map(|o| {
                let s = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&s)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let rev = cmd(
        "git",
        &[
            "-C",
            setup::workspace_root().to_str().unwrap_or("."),
            "describe",
            "--always",
            "--dirty",
        ],
    );
    r.machine = vec![
        ("CPU".into(), format!("{model}, {cpus} CPUs ({virt})")),
        ("memory".into(), mem),
        ("kernel".into(), cmd("uname", &["-r"])),
        (
            "OS".into(),
            fs::read_to_string("/etc/debian_version")
                .map(|v| format!("Debian {}", v.trim()))
                .unwrap_or_default(),
        ),
        ("kaprobe".into(), format!("release build, git {rev}")),
        ("nginx".into(), cmd("nginx", &["-v"])),
        ("wrk".into(), cmd("wrk", &["-v"])),
        ("bpftrace".into(), cmd("bpftrace", &["--version"])),
        (
            "tcpstates".into(),
            cmd(
                "dpkg-query",
                &["-W", "-f=libbpf-tools ${Version}", "libbpf-tools"],
            ),
        ),
        ("date".into(), cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"])),
    ];
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

struct Target {
    name: &'static str,
    measured: String,
    verdict: &'static str,
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "NOT MEASURED",
    }
}

/// The verdict on a target that a statistic with confidence interval `(x, lo, hi)` meets
/// when `ok(value)`, `ok` being monotonic: PASS or MISS only when the whole interval
/// agrees, else inconclusive (with what the point estimate says).
fn verdict_ci(r: Option<(f64, f64, f64)>, ok: impl Fn(f64) -> bool) -> &'static str {
    match r {
        None => "NOT MEASURED",
        Some((_, lo, hi)) if ok(lo) && ok(hi) => "PASS",
        Some((_, lo, hi)) if !ok(lo) && !ok(hi) => "MISS",
        Some((x, _, _)) if ok(x) => "INCONCLUSIVE (median passes)",
        Some(_) => "INCONCLUSIVE (median misses)",
    }
}

/// Throughput of `t` relative to no tracer, round by round: each run is divided by the
/// no-tracer run of the same round, which cancels the machine's slow drifts (this VM's
/// speed wanders by ±10 % over seconds to minutes).
fn paired_ratios(s: &[Series], t: Tracer) -> Vec<f64> {
    let find = |t| s.iter().find(|x| x.tracer == Some(t));
    let (Some(base), Some(x)) = (find(Tracer::None), find(t)) else {
        return vec![];
    };
    base.runs
        .iter()
        .zip(&x.runs)
        .filter(|(b, _)| b.rps > 0.0)
        .map(|(b, x)| x.rps / b.rps)
        .collect()
}

/// `stat` over all `n` rounds, and a 95 % bootstrap confidence interval of it: `stat` of
/// 2000 resamplings of the round indices with replacement (a fixed seed: the same data
/// give the same interval).
fn bootstrap(n: usize, stat: impl Fn(&[usize]) -> f64) -> (f64, f64, f64) {
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize
    };
    let all: Vec<usize> = (0..n).collect();
    let mut stats: Vec<f64> = (0..2000)
        .map(|_| stat(&(0..n).map(|_| next() % n).collect::<Vec<_>>()))
        .collect();
    stats.sort_by(|a, b| a.total_cmp(b));
    (stat(&all), stats[50], stats[1949])
}

/// The median of `v` and its 95 % bootstrap confidence interval.
fn median_ci(v: &[f64]) -> (f64, f64, f64) {
    bootstrap(v.len(), |idx| {
        median(&idx.iter().map(|&i| v[i]).collect::<Vec<_>>())
    })
}

/// Median paired ratio of `t` (see [`paired_ratios`]).
fn ratio_of(s: &[Series], t: Tracer) -> Option<(f64, f64, f64)> {
    let r = median_ci(&paired_ratios(s, t));
    r.0.is_finite().then_some(r)
}

/// The CPU shares ([`CpuRun::share`]) of tracer `t`, round by round.
fn cpu_shares(runs: &[CpuRun], t: Tracer) -> Vec<f64> {
    runs.iter()
        .filter(|c| c.tracer == t)
        .map(CpuRun::share)
        .collect()
}

/// Tracer `t`'s CPU share over the empty programs', round by round.
fn cpu_share_ratios(runs: &[CpuRun], t: Tracer) -> Vec<f64> {
    let d = cpu_shares(runs, t);
    let e = cpu_shares(runs, Tracer::Empty);
    d.iter()
        .zip(&e)
        .filter(|(_, e)| **e > 0.0)
        .map(|(d, e)| d / e)
        .collect()
}

fn targets(plan: &Plan, r: &Report) -> Vec<Target> {
    let mut out = vec![];
    let ratio = |t| ratio_of(&r.churn.close, t);
    let (dr, ar, er) = (
        ratio(Tracer::Default),
        ratio(Tracer::All),
        ratio(Tracer::Empty),
    );
    let pct = |r: Option<(f64, f64, f64)>| {
        r.map_or("-".into(), |(m, lo, hi)| {
            format!(
                "{:.1} % (95 % CI {:.1}–{:.1})",
                m * 100.0,
                lo * 100.0,
                hi * 100.0
            )
        })
    };
    let (d, e) = (dr.map(|x| x.0), er.map(|x| x.0));
    out.push(Target {
        name: "churn, kaprobe default ≥ 97 % of no tracer",
        measured: pct(dr),
        verdict: verdict_ci(dr, |x| x >= 0.97),
    });
    // kaprobe's cost minus 1.5 × the floor's, over the same resampled rounds.
    let pd = paired_ratios(&r.churn.close, Tracer::Default);
    let pe = paired_ratios(&r.churn.close, Tracer::Empty);
    let excess = (pd.len() == pe.len() && !pd.is_empty()).then(|| {
        bootstrap(pd.len(), |idx| {
            let m = |v: &[f64]| median(&idx.iter().map(|&i| v[i]).collect::<Vec<_>>());
            (1.0 - m(&pd)) - 1.5 * (1.0 - m(&pe))
        })
    });
    for (t, name) in [
        (
            Tracer::Default,
            "churn, kaprobe's CPU ≤ 1.5 × the empty programs' (perf samples)",
        ),
        (
            Tracer::Lean,
            "(not a target: the same for `--lean`, which records no start of connections \
             without keepalive)",
        ),
    ] {
        let cr = Some(median_ci(&cpu_share_ratios(&r.cpu, t))).filter(|x| x.0.is_finite());
        out.push(Target {
            name,
            measured: cr.map_or("-".into(), |(m, lo, hi)| {
                format!(
                    "{:.2} % vs {:.2} % of busy CPU: {m:.2} × (95 % CI {lo:.2}–{hi:.2})",
                    median(&cpu_shares(&r.cpu, t)) * 100.0,
                    median(&cpu_shares(&r.cpu, Tracer::Empty)) * 100.0,
                )
            }),
            verdict: verdict_ci(cr, |x| x <= 1.5),
        });
    }
    out.push(Target {
        name: "churn, kaprobe's cost ≤ 1.5 × the empty programs' cost (throughput)",
        measured: match (d, e, excess) {
            (Some(d), Some(e), Some((x, lo, hi))) => format!(
                "kaprobe {:.1} %, empty {:.1} % (limit {:.1} %); kaprobe − limit {:+.1} \
                 points (95 % CI {:+.1} to {:+.1})",
                (1.0 - d) * 100.0,
                (1.0 - e) * 100.0,
                1.5 * (1.0 - e) * 100.0,
                x * 100.0,
                lo * 100.0,
                hi * 100.0
            ),
            _ => "-".into(),
        },
        verdict: verdict_ci(excess, |x| x <= 0.0),
    });
    out.push(Target {
        name: "churn, kaprobe --all ≥ 90 % of no tracer",
        measured: pct(ar),
        verdict: verdict_ci(ar, |x| x >= 0.90),
    });
    let tp = Some(median(&r.throughput.records_per_s)).filter(|x| x.is_finite());
    let tpe = Some(median(&r.throughput.events_per_s)).filter(|x| x.is_finite());
    out.push(Target {
        name: "agent ≥ 1 M events/s on one core",
        measured: match (tp, tpe) {
            (Some(r), Some(e)) => format!(
                "{:.2} M records/s in, {:.2} M events/s out",
                r / 1e6,
                e / 1e6
            ),
            _ => "-".into(),
        },
        verdict: verdict(tp.zip(tpe).map(|(r, e)| r.min(e) >= 1e6)),
    });
    let m100 = r.memory.iter().find(|m| m.conns >= 100_000);
    out.push(Target {
        name: "100k tracked connections ≤ 100 MB RSS",
        measured: m100.map_or(
            if plan.quick {
                "not run by --quick".into()
            } else {
                "not measured (see Memory)".into()
            },
            |m| format!("{:.1} MB (VmHWM)", m.hwm_kb as f64 / 1000.0),
        ),
        verdict: verdict(m100.map(|m| m.hwm_kb as f64 / 1000.0 <= 100.0)),
    });
    let su = r
        .startup
        .iter()
        .find(|s| s.tracer == Tracer::Default)
        .map(|s| median(&s.ready_secs));
    out.push(Target {
        name: "start-up to agent_start ≤ 0.3 s",
        measured: su.map_or("-".into(), |s| format!("{s:.3} s")),
        verdict: verdict(su.map(|s| s <= 0.3)),
    });
    let st = r.stress.as_ref();
    out.push(Target {
        name: "timeout burst, default ring: 0 events lost",
        measured: st.map_or("-".into(), |s| {
            format!("{} lost of {} timeouts", s.events_lost, s.conns)
        }),
        verdict: verdict(st.map(|s| s.events_lost == 0)),
    });
    out
}

fn render(plan: &Plan, r: &Report) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# Benchmarks\n");
    if r.quick {
        let _ = writeln!(
            w,
            "**Smoke run (`cargo xtask bench --quick`): tiny rounds, the numbers mean nothing.**\n"
        );
    }
    let _ = writeln!(
        w,
        "Measured by `cargo xtask bench` (as root; {} round(s) of {} s, about {:.0} minute(s) here). \
         Reproduce with:\n\n```\nsudo -E cargo xtask bench\n```\n\n\
         `cargo xtask bench --quick` runs every part with tiny rounds (a smoke test, under a \
         minute once built) and writes `target/bench/quick.md` instead of this file.\n",
        plan.rounds,
        plan.secs,
        r.duration.as_secs_f64() / 60.0
    );
    let _ = writeln!(w, "## Machine\n\n| | |\n| --- | --- |");
    for (k, v) in &r.machine {
        let _ = writeln!(w, "| {k} | {} |", v.replace('|', "/"));
    }
    let _ = writeln!(
        w,
        "| load average (1, 5, 15 min) | before: {}; after: {} |\n\
         | CPU busy in the 2 s before the run | {:.0} % |\n",
        r.load_before,
        r.load_after,
        r.busy_before * 100.0
    );
    // The load average lags (a build that just ended still shows): what counts is whether
    // anything else ran when the run started.
    if r.busy_before >= 0.10 {
        let _ = writeln!(
            w,
            "**Taken under other load**: {:.0} % of the machine's CPU time was busy in the 2 s \
             before the run started (the benchmark itself then keeps both CPUs busy). Treat the \
             throughput ratios as indicative; the per-hook costs (bpf_stats) are less sensitive \
             to it.\n",
            r.busy_before * 100.0
        );
    }
    let _ = writeln!(
        w,
        "A shared 2-vCPU VM is noisy: the same configuration varies by 10-20 % from run to \
         run (coefficient of variation of 2-second runs without any tracer, measured on a \
         quiet machine; pinning wrk and nginx to CPUs did not reduce it). So the rounds \
         alternate the configurations (in an order that turns by one every round), each \
         ratio is the median over rounds of the run divided by the same round's no-tracer \
         run, and its 95 % confidence interval (bootstrap over rounds) says how far that \
         median can be trusted: differences of a per cent or two are within it. The per-hook \
         costs (section 2, bpf_stats) are measured by the kernel and much steadier.\n"
    );

    let _ = writeln!(
        w,
        "## Targets\n\n| target | measured | |\n| --- | --- | --- |"
    );
    for t in targets(plan, r) {
        let _ = writeln!(w, "| {} | {} | **{}** |", t.name, t.measured, t.verdict);
    }
    let _ = writeln!(
        w,
        "\nWhere the default mode's CPU goes, why it keeps a record of every connection's \
         start (and so stays above 1.5 × the empty programs), and what `--lean` gives up to \
         come under it: docs/design.md, \"Default mode against the empty programs\".\n"
    );

    let _ = writeln!(w, "## 1. Overhead under connection churn\n");
    let _ = writeln!(
        w,
        "nginx (one process, `keepalive_timeout 0`, a {}-byte file) on 127.0.0.1, loaded by \
         `wrk -t1 -c32 -d{}s -H 'Connection: close'`: every request is a new TCP connection. \
         Tracers write to /dev/null. {} alternating round(s) (each configuration once per round; \
         ratios are medians of per-round ratios, see above). \
         CPU is the whole machine's busy time per request (/proc/stat).\n",
        "kaprobe benchmark ".len() * 32 + 27,
        plan.secs,
        plan.rounds
    );
    table(w, &r.churn.close);
    let _ = writeln!(
        w,
        "\nThe empty programs (`KAPROBE_BENCH_EMPTY_PROGRAMS=1`) attach kaprobe's seven hooks \
         and return at once: the floor of any tracer on these tracepoints.\n"
    );
    let _ = writeln!(
        w,
        "### Contrast: HTTP keep-alive\n\nThe same with long-lived connections \
         (`keepalive_timeout 65`, no `Connection: close`), {} round(s):\n",
        plan.keepalive_rounds
    );
    table(w, &r.churn.keepalive);

    let _ = writeln!(w, "\n## 2. Per-hook cost\n");
    let _ = writeln!(
        w,
        "One more churn run per tracer with `kernel.bpf_stats_enabled=1` (restored after): the \
         kernel's run count and run time of each program (`bpftool prog show`, programs \
         matched by the tracer's pid in `bpftool perf list`). bpf_stats adds its own clock \
         reads, so these runs are not in the tables above.\n"
    );
    let _ = writeln!(
        w,
        "| tracer | program | tracepoint | runs/request | ns/run | ns/request |\n| --- | --- | --- | --- | --- | --- |"
    );
    for h in &r.hooks {
        let req = h.requests.max(1) as f64;
        let mut total = 0.0;
        for p in &h.progs {
            let per_run = if p.runs > 0 {
                p.ns as f64 / p.runs as f64
            } else {
                0.0
            };
            total += p.ns as f64 / req;
            let _ = writeln!(
                w,
                "| {} | `{}` | {} | {:.2} | {:.0} | {:.0} |",
                h.tracer.label(),
                p.name,
                p.tracepoint,
                p.runs as f64 / req,
                per_run,
                p.ns as f64 / req
            );
        }
        let _ = writeln!(
            w,
            "| **{}** | **all** | | | | **{:.0}** ({:.0} req/s) |",
            h.tracer.label(),
            total,
            h.rps
        );
    }
    // The steady estimate: what kaprobe's programs add to the empty ones, per request,
    // against the CPU a request costs without a tracer.
    let per_req = |t: Tracer| {
        r.hooks
            .iter()
            .find(|h| h.tracer == t)
            .map(|h| h.progs.iter().map(|p| p.ns as f64).sum::<f64>() / h.requests.max(1) as f64)
    };
    let base_cpu = r
        .churn
        .close
        .iter()
        .find(|s| s.tracer == Some(Tracer::None))
        .map(|s| median(&s.runs.iter().map(|x| x.cpu_us).collect::<Vec<_>>()))
        .filter(|c| c.is_finite() && *c > 0.0);
    if let (Some(empty), Some(cpu)) = (per_req(Tracer::Empty), base_cpu) {
        let _ = writeln!(
            w,
            "\nIn program time (bpf_stats), against {cpu:.1} µs of CPU per request without a \
             tracer (table above): the empty programs take {:.2} µs per request ({:.2} %)",
            empty / 1000.0,
            empty / 10.0 / cpu
        );
        for t in [Tracer::Default, Tracer::Lean, Tracer::All] {
            if let Some(k) = per_req(t) {
                let _ = writeln!(
                    w,
                    "- {}: {:.2} µs per request ({:.2} %), {:.2} µs more than the empty \
                     programs ({:.2} %, {:.1} × their program time)",
                    t.label(),
                    k / 1000.0,
                    k / 10.0 / cpu,
                    (k - empty) / 1000.0,
                    (k - empty) / 10.0 / cpu,
                    k / empty
                );
            }
        }
        let _ = writeln!(
            w,
            "\nThis leaves out what bpf_stats cannot see (the tracepoint's dispatch to the \
             program, the agent's CPU time), which the throughput table includes."
        );
    }
    // The other half of a tracer's cost: its own process, in the same runs.
    let tick_us = 1e6 / ticks_per_second();
    let _ = writeln!(
        w,
        "\nThe tracer's own process in the same runs (user + system CPU from /proc/PID/stat, \
         in clock ticks of {:.0} ms, so ±1 tick over the run):\n\n\
         | tracer | process CPU µs/request | programs µs/request | together µs/request |\n\
         | --- | --- | --- | --- |",
        tick_us / 1000.0
    );
    for h in &r.hooks {
        let req = h.requests.max(1) as f64;
        let process = h.process_ticks as f64 * tick_us / req;
        let programs = h.progs.iter().map(|p| p.ns as f64).sum::<f64>() / req / 1000.0;
        let _ = writeln!(
            w,
            "| {} | {:.2} | {:.2} | {:.2} |",
            h.tracer.label(),
            process,
            programs,
            process + programs
        );
    }
    if !r.cpu.is_empty() {
        let rounds = r.cpu.len() / CHURN_TRACERS.len().max(1);
        let _ = writeln!(
            w,
            "\n### Where the CPU goes (perf)\n\n\
             {rounds} more alternating churn round(s) without bpf_stats, sampled by \
             `perf record -a -g -F {PERF_HZ}` for {} s each: of the samples outside the idle loop, \
             those whose kernel stack runs through the tracepoint's dispatch to BPF (the \
             programs, the helpers they call, `bpf_trace_run*`; for classic tracepoints \
             `perf_trace_*` and `trace_call_bpf`, which include the record copy) and those of \
             the tracer's own process. A share of the busy CPU does not move with the \
             machine's speed as requests/s do; it is the cost bpf_stats cannot see (dispatch, \
             agent) and the throughput table cannot resolve on a noisy machine.\n\n\
             | tracer | BPF path, % of busy CPU | tracer process | together (min–max) | × empty programs | requests/s |\n\
             | --- | --- | --- | --- | --- | --- |",
            plan.secs
        );
        let floor = median(&cpu_shares(&r.cpu, Tracer::Empty));
        for &t in CHURN_TRACERS {
            let runs: Vec<&CpuRun> = r.cpu.iter().filter(|c| c.tracer == t).collect();
            if runs.is_empty() {
                continue;
            }
            let pct = |f: &dyn Fn(&CpuRun) -> u64| {
                median(
                    &runs
                        .iter()
                        .map(|c| f(c) as f64 / c.busy.max(1) as f64 * 100.0)
                        .collect::<Vec<_>>(),
                )
            };
            let shares = cpu_shares(&r.cpu, t);
            let (lo, hi) = min_max(&shares);
            let rps = median(&runs.iter().map(|c| c.rps).collect::<Vec<_>>());
            let _ = writeln!(
                w,
                "| {} | {:.2} % | {:.2} % | {:.2} % ({:.2}–{:.2}) | {} | {rps:.0} |",
                t.label(),
                pct(&|c| c.bpf),
                pct(&|c| c.process),
                median(&shares) * 100.0,
                lo * 100.0,
                hi * 100.0,
                if floor > 0.0 && t != Tracer::None {
                    format!("{:.2}", median(&shares) / floor)
                } else {
                    "-".into()
                },
            );
        }
    }
    if let Some(h) = r.hooks.iter().find(|h| h.tracer == Tracer::Default) {
        let total: u64 = h.maps.iter().map(|m| m.bytes).sum();
        let _ = writeln!(
            w,
            "\nKernel memory of kaprobe's maps (default settings, `bytes_memlock`): {:.1} MiB — {}.",
            total as f64 / 1048576.0,
            h.maps
                .iter()
                .map(|m| format!(
                    "{} ({}) {:.1} MiB",
                    m.name,
                    m.kind,
                    m.bytes as f64 / 1048576.0
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let _ = writeln!(w, "\n## 3. Agent throughput\n");
    let t = &r.throughput;
    let (lo, hi) = min_max(&t.records_per_s);
    let (elo, ehi) = min_max(&t.events_per_s);
    let _ = writeln!(
        w,
        "`kaprobe-user/examples/agent_throughput.rs` (release, pinned to one CPU with \
         `taskset`): {} generated kernel records (keepalive probe and answer, then FIN 70 %, \
         peer reset 20 %, keepalive timeout 10 %, then destroy; 4096 connections interleaved) \
         through decode → correlation → owner, filter, totals, summary → JSON Lines into a \
         sink, {} run(s).\n",
        t.records,
        t.records_per_s.len()
    );
    let _ = writeln!(
        w,
        "| | median | min–max |\n| --- | --- | --- |\n\
         | records in per second | {:.0} | {:.0}–{:.0} |\n\
         | events out per second | {:.0} | {:.0}–{:.0} |\n\
         | bytes of JSON per event | {:.0} | |\n",
        median(&t.records_per_s),
        lo,
        hi,
        median(&t.events_per_s),
        elo,
        ehi,
        t.bytes as f64 / t.events.max(1) as f64
    );
    if let Some(st) = &r.stress {
        let _ = writeln!(
            w,
            "### End to end: {} keepalive timeouts at once\n\n\
             {} connections between two network namespaces; the server side is silenced \
             (nftables), then every client gets keepalive 1 s / 1 s / 1 probe in one loop: all \
             time out within a few jiffies. kaprobe runs with its defaults (4 MiB ring).\n\n\
             | | |\n| --- | --- |\n\
             | timeouts in the kernel (TcpExtTCPAbortOnTimeout) | {} |\n\
             | reported (`keepalive_timeout`) | {} |\n\
             | events lost (ring buffer) | {} ({} connection ends) |\n\
             | keepalive armed → kernel count complete | {:.2} s (polled every 100 ms) |\n\
             | first → last timeout read from the agent | {:.3} s |\n\
             | kernel count complete → last timeout read | {} |\n\
             | largest delay, kernel timestamp → line read | {:.3} s |\n",
            st.conns,
            st.conns,
            st.kernel_timeouts,
            st.reported,
            st.events_lost,
            st.lost_timer_ends,
            st.kernel_secs,
            st.report_spread_secs,
            st.drain_after_kernel_secs.map_or("-".into(), |x| format!(
                "{x:+.3} s (negative: done before the 100 ms poll saw the kernel's count)"
            )),
            st.max_lag_secs
        );
    }

    let _ = writeln!(w, "## 4. Memory\n");
    let _ = writeln!(
        w,
        "kaprobe (default mode, `--metrics-addr` to read `kaprobe_tracked_connections`) while \
         `kaprobe-user/examples/bench_conns.rs` holds N connections between two network \
         namespaces, keepalive idle 1 s / interval 1 s on every client socket so that each \
         one's timer fires and the agent follows it. Measured one second after the agent \
         follows all of them. The helpers hold both ends of their connections, split over \
         processes when the open-file hard limit ({}) requires it.\n",
        hard_fd_limit()
    );
    let _ = writeln!(
        w,
        "| connections (helper processes) | --max-connections | followed | VmRSS idle | VmRSS | VmHWM | kernel maps | events lost | keepalive on → all followed |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for m in &r.memory {
        let maps: u64 = m.maps.iter().map(|x| x.bytes).sum();
        let _ = writeln!(
            w,
            "| {} ({}) | {} | {} | {:.1} MB | {:.1} MB | {:.1} MB | {:.1} MiB | {} | {:.1} s |",
            m.conns,
            m.helpers,
            m.max_connections
                .map_or("default (65536)".into(), |x| x.to_string()),
            m.tracked,
            m.rss_idle_kb as f64 / 1000.0,
            m.rss_kb as f64 / 1000.0,
            m.hwm_kb as f64 / 1000.0,
            maps as f64 / 1048576.0,
            m.events_lost,
            m.settle_secs
        );
    }
    for f in &r.memory_failures {
        let _ = writeln!(w, "\nNot measured: {f}");
    }

    let _ = writeln!(w, "\n## 5. Start-up\n");
    let _ = writeln!(
        w,
        "Time from exec to the tool's ready signal and to its first event line, with a \
         connection attempt to a closed loopback port every 10 ms (a reset and two state \
         changes each); {} run(s) each, medians (min–max). tcpstates and bpftrace run under \
         `stdbuf -oL`.\n",
        plan.startup_runs
    );
    let _ = writeln!(
        w,
        "| tool | ready signal | to ready | to first event |\n| --- | --- | --- | --- |"
    );
    for st in &r.startup {
        let (a, b) = min_max(&st.ready_secs);
        let (c, d) = min_max(&st.first_event_secs);
        let _ = writeln!(
            w,
            "| {} | {} | {:.3} s ({:.3}–{:.3}) | {:.3} s ({:.3}–{:.3}) |",
            st.tracer.label(),
            st.ready_what,
            median(&st.ready_secs),
            a,
            b,
            median(&st.first_event_secs),
            c,
            d
        );
    }
    s
}

fn table(w: &mut String, series: &[Series]) {
    let _ = writeln!(
        w,
        "| tracer | requests/s median | min–max | ratio to no tracer (median of rounds) | 95 % CI | cost | CPU µs/request | errors |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for s in series {
        let rps = s.rps();
        let m = median(&rps);
        let (lo, hi) = min_max(&rps);
        let (ratio, rlo, rhi) =
            s.tracer
                .and_then(|t| ratio_of(series, t))
                .unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        let cpu = median(&s.runs.iter().map(|r| r.cpu_us).collect::<Vec<_>>());
        let errors: u64 = s.runs.iter().map(|r| r.errors).sum();
        let _ = writeln!(
            w,
            "| {} | {:.0} | {:.0}–{:.0} | {:.3} | {:.3}–{:.3} | {:.1} % | {:.1} | {} |",
            s.tracer.map_or("?", |t| t.label()),
            m,
            lo,
            hi,
            ratio,
            rlo,
            rhi,
            (1.0 - ratio) * 100.0,
            cpu,
            errors
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_samples_are_split_by_process_and_bpf_stack() {
        // `perf script -F pid,ip,sym` as perf 6.1 prints it: idle, a sample in a BPF
        // program under the dispatch, one in the tracer's process, one in classic
        // tracepoint handling, one elsewhere, the last without a trailing empty line.
        let script = "    0 \n\tffffffff8100 default_idle\n\n\
                      1200 \n\tffffffffa000 bpf_prog_6deef7357e7b4530_F\n\
                      \tffffffff8200 bpf_trace_run3\n\tffffffff8300 tcp_set_state\n\n\
                         77 \n\tffffffff8400 bpf_ringbuf_output\n\tffffffffa000 bpf_prog_x\n\n\
                      1300 \n\tffffffff8500 perf_trace_inet_sock_set_state\n\n\
                      1200 \n\t7f00 http_parser_execute\n\tffffffff8600 tcp_v4_rcv";
        assert_eq!(classify_samples(script, Some(77)), (4, 2, 1));
        // Without a tracer process, its sample counts as a BPF one.
        assert_eq!(classify_samples(script, None), (4, 3, 0));
        let run = CpuRun {
            tracer: Tracer::Default,
            rps: 1.0,
            busy: 4,
            bpf: 2,
            process: 1,
        };
        assert_eq!(run.share(), 0.75);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        let t = parse_rfc3339("2025-11-28T02:13:57.250000Z").expect("parses");
        assert!((t - 1_764_296_037.25).abs() < 1e-6, "{t}");
    }

    #[test]
    fn paired() {
        let run = |rps| WrkResult {
            rps,
            ..WrkResult::default()
        };
        let series = vec![
            Series {
                tracer: Some(Tracer::None),
                runs: vec![run(100.0), run(200.0), run(150.0)],
            },
            Series {
                tracer: Some(Tracer::Default),
                runs: vec![run(90.0), run(190.0), run(150.0)],
            },
        ];
        assert_eq!(
            paired_ratios(&series, Tracer::Default),
            vec![0.9, 0.95, 1.0]
        );
        let (m, lo, hi) = ratio_of(&series, Tracer::Default).expect("a ratio");
        assert_eq!(m, 0.95);
        assert!(
            lo >= 0.9 && hi <= 1.0 && lo <= m && m <= hi,
            "{lo} {m} {hi}"
        );
        assert!(ratio_of(&series, Tracer::All).is_none());
    }

    #[test]
    fn verdicts_with_intervals() {
        let at_least = |x: f64| x >= 0.97;
        assert_eq!(verdict_ci(Some((0.98, 0.975, 0.99)), at_least), "PASS");
        assert_eq!(verdict_ci(Some((0.95, 0.94, 0.96)), at_least), "MISS");
        assert_eq!(
            verdict_ci(Some((0.98, 0.95, 0.99)), at_least),
            "INCONCLUSIVE (median passes)"
        );
        assert_eq!(
            verdict_ci(Some((0.96, 0.95, 0.99)), at_least),
            "INCONCLUSIVE (median misses)"
        );
        assert_eq!(verdict_ci(None, at_least), "NOT MEASURED");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(min_max(&[2.0, 5.0, 1.0]), (1.0, 5.0));
    }
}
