//! The machine the benchmark runs on: what it is, how busy it is (/proc), and the settings
//! the benchmark changes for its run (a sysctl, a tracefs mount), restored by guards.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, anyhow};

use crate::{child, setup};

/// A sysctl set for the benchmark, restored when dropped.
pub(super) struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    pub(super) fn set(name: &str, value: &str) -> Result<Sysctl> {
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
pub(super) struct TracefsMount(bool);

impl TracefsMount {
    pub(super) fn ensure() -> Result<TracefsMount> {
        if Path::new("/sys/kernel/tracing/events").is_dir() {
            return Ok(TracefsMount(false));
        }
        child::output(Command::new("mount").args([
            "-t",
            "tracefs",
            "nodev",
            "/sys/kernel/tracing",
        ]))?;
        Ok(TracefsMount(true))
    }
}

impl Drop for TracefsMount {
    fn drop(&mut self) {
        if self.0 {
            let _ = child::status(Command::new("umount").arg("/sys/kernel/tracing"));
        }
    }
}

pub(super) fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The share of the machine's CPU time that is busy over the next `d`.
pub(super) fn busy_fraction(d: Duration) -> f64 {
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
pub(super) fn cpu_ticks() -> (u64, u64) {
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

pub(super) fn ticks_per_second() -> f64 {
    child::output(Command::new("getconf").arg("CLK_TCK"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Run time of each thread of process `pid` so far, in ns, by thread id: the scheduler's
/// own account (/proc/PID/task/*/schedstat), to the nanosecond; /proc/PID/stat counts 10 ms
/// ticks, ±1 tick over a run, ~6 % of the agent's time in a 3 s churn run. See
/// [`cpu_ns_between`].
pub(super) fn thread_cpu_ns(pid: u32) -> Result<HashMap<u32, u64>> {
    let mut out = HashMap::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let path = task.path().join("schedstat");
        let s = match fs::read_to_string(&path) {
            Ok(s) => s,
            // A thread that ended between the listing and the read (ENOENT, or ESRCH once
            // it is reaped).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(3) => {
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let ns = s
            .split_whitespace()
            .next()
            .and_then(|x| x.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("{}: {s}", path.display()))?;
        out.insert(tid, ns);
    }
    Ok(out)
}

/// CPU time the threads took between two [`thread_cpu_ns`] readings: a thread's difference,
/// or all of its time if it started in between. A thread that ended in between is not in
/// the second reading and counts nothing (kaprobe's data path is its main thread; its
/// look-up threads are short and rare).
pub(super) fn cpu_ns_between(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
    after
        .iter()
        .map(|(tid, &ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

/// A `kB` value of /proc/PID/status (`VmRSS:`, `VmHWM:`).
pub(super) fn proc_status_kb(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The hard limit of open files here (a process without CAP_SYS_RESOURCE cannot raise it).
pub(super) fn hard_fd_limit() -> u64 {
    fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// The machine and the versions of what runs, for the report: (what, description).
pub(super) fn machine() -> Vec<(String, String)> {
    let rev = first_line(
        "git",
        &[
            "-C",
            setup::workspace_root().to_str().unwrap_or("."),
            "describe",
            "--always",
            "--dirty",
        ],
    );
    vec![
        ("CPU".into(), cpu()),
        ("memory".into(), memory_total()),
        ("kernel".into(), first_line("uname", &["-r"])),
        (
            "OS".into(),
            fs::read_to_string("/etc/debian_version")
                .map(|v| format!("Debian {}", v.trim()))
                .unwrap_or_default(),
        ),
        ("kaprobe".into(), format!("release build, git {rev}")),
        ("nginx".into(), first_line("nginx", &["-v"])),
        ("wrk".into(), first_line("wrk", &["-v"])),
        ("bpftrace".into(), first_line("bpftrace", &["--version"])),
        (
            "tcpstates".into(),
            first_line(
                "dpkg-query",
                &["-W", "-f=libbpf-tools ${Version}", "libbpf-tools"],
            ),
        ),
        (
            "date".into(),
            first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        ),
    ]
}

/// The CPU model and count, and whether this is a virtual machine.
fn cpu() -> String {
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
    let virt = if cpuinfo.contains(" hypervisor") {
        "virtual machine"
    } else {
        "bare metal"
    };
    format!("{model}, {cpus} CPUs ({virt})")
}

/// The machine's memory, in GiB.
fn memory_total() -> String {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1048576.0))
        .unwrap_or_default()
}

/// The first line a command prints (on stdout, else on stderr: `nginx -v`), or nothing.
fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
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
}
