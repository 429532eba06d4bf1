//! Many live connections between two network namespaces, held by `bench_conns` helper
//! processes (kaprobe-user/examples/bench_conns.rs), for the timeout burst and the memory
//! benchmark.
use std::{
    io::Write,
    path::Path,
    process::{ChildStdin, Command, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use kaprobe_tests::Link;

use super::{
    Tools,
    process::{Proc, lines, tail, wait_line},
    system::hard_fd_limit,
};

/// The tag of the benchmark's namespaces (`kaprobe_tests::NetNs` names).
pub(super) const NETNS_TAG: &str = "kpbench";

/// Two namespaces joined by a veth pair, for `bench_conns`.
pub(super) fn link(part: &str) -> Link {
    Link::new(&format!("{NETNS_TAG}-{part}"))
}

/// One `bench_conns` process.
struct Helper {
    proc: Proc,
    stdin: ChildStdin,
    out: Receiver<(Instant, String)>,
}

/// `bench_conns` processes holding connections from `a` to `b`: as many as the open-file
/// limit needs (each holds both ends of its connections).
pub(super) struct Conns(Vec<Helper>);

impl Conns {
    pub(super) fn start(tools: &Tools, link: &Link, work: &Path, n: usize) -> Result<Conns> {
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
            let stderr = work.join(format!("bench_conns-{n}-{}.stderr", conns.0.len()));
            conns.0.push(Helper::start(tools, link, share, stderr)?);
        }
        for h in &mut conns.0 {
            h.proc.check_alive()?;
        }
        Ok(conns)
    }

    pub(super) fn processes(&self) -> usize {
        self.0.len()
    }

    /// Sets keepalive on every client socket; returns when the last process is done.
    pub(super) fn keepalive(&mut self, idle: u32, intvl: u32, cnt: u32) -> Result<Instant> {
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

impl Helper {
    /// A `bench_conns` process holding `n` connections; returns once they are up.
    fn start(tools: &Tools, link: &Link, n: usize, stderr: std::path::PathBuf) -> Result<Helper> {
        // Up to 50k connections per listener (one client address: ≤ 64k ports each).
        let listeners = n.div_ceil(50_000).to_string();
        let mut proc = Proc::spawn(
            "bench_conns",
            Command::new(&tools.conns)
                .args([&link.a.name, &link.b.name])
                .args([link.b4.to_string(), listeners, n.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
            Some(stderr),
        )?;
        let stdin = proc.child.stdin.take().expect("piped");
        let out = lines(proc.child.stdout.take().expect("piped"));
        let wait = Duration::from_secs(40 + n as u64 / 1000);
        wait_line(&out, wait, "connections", |l| l.starts_with("connected"))
            .map_err(|e| anyhow!("bench_conns: {e}: {}", tail(&proc.stderr(), 1500)))?;
        Ok(Helper { proc, stdin, out })
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
