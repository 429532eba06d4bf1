//! The tracers compared (kaprobe in its modes, its empty programs, libbpf-tools' tcpstates,
//! a bpftrace one-liner): their commands, and starting one until its hooks are attached.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    Tools, bpf,
    process::{Proc, tail},
};

const TCPSTATES: &str = "/usr/sbin/tcpstates";
/// The bpftrace contrast: one line per TCP state change.
const BPFTRACE_SCRIPT: &str = "tracepoint:sock:inet_sock_set_state /args->protocol == 6/ { printf(\"%s %d %d>%d %d %d\\n\", comm, pid, args->sport, args->dport, args->oldstate, args->newstate); }";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Tracer {
    None,
    Default,
    /// The default mode without a birth budget (every start recorded): what the default
    /// was before the budget.
    Unbudgeted,
    Lean,
    All,
    Empty,
    Tcpstates,
    Bpftrace,
}

/// The churn rounds' tracers, in the order of the report's tables.
pub(super) const CHURN_TRACERS: &[Tracer] = &[
    Tracer::None,
    Tracer::Default,
    Tracer::Unbudgeted,
    Tracer::Lean,
    Tracer::All,
    Tracer::Empty,
    Tracer::Tcpstates,
    Tracer::Bpftrace,
];
/// The HTTP keep-alive contrast's tracers.
pub(super) const KEEPALIVE_TRACERS: &[Tracer] =
    &[Tracer::None, Tracer::Default, Tracer::All, Tracer::Empty];

impl Tracer {
    pub(super) fn label(self) -> &'static str {
        match self {
            Tracer::None => "no tracer",
            Tracer::Default => "kaprobe (default)",
            Tracer::Unbudgeted => "kaprobe --birth-budget unlimited",
            Tracer::Lean => "kaprobe --lean",
            Tracer::All => "kaprobe --all",
            Tracer::Empty => "empty programs (floor)",
            Tracer::Tcpstates => "libbpf-tools tcpstates",
            Tracer::Bpftrace => "bpftrace inet_sock_set_state",
        }
    }

    pub(super) fn kaprobe(self) -> bool {
        matches!(
            self,
            Tracer::Default | Tracer::Unbudgeted | Tracer::Lean | Tracer::All | Tracer::Empty
        )
    }

    /// The command; `line_buffered` puts tcpstates and bpftrace under `stdbuf -oL` (for
    /// timing their lines; not when their output goes to /dev/null).
    pub(super) fn command(
        self,
        tools: &Tools,
        extra: &[&str],
        line_buffered: bool,
    ) -> Option<Command> {
        let mut c = match self {
            Tracer::None => return None,
            Tracer::Default | Tracer::Unbudgeted | Tracer::Lean | Tracer::All | Tracer::Empty => {
                self.kaprobe_command(tools)
            }
            Tracer::Tcpstates | Tracer::Bpftrace => self.other_command(line_buffered),
        };
        c.args(extra).stdin(Stdio::null());
        Some(c)
    }

    fn kaprobe_command(self, tools: &Tools) -> Command {
        let mut c = Command::new(&tools.kaprobe);
        c.args(["watch", "--format", "json"]);
        if self == Tracer::All {
            c.arg("--all");
        }
        if self == Tracer::Lean {
            c.arg("--lean");
        }
        if self == Tracer::Unbudgeted {
            c.args(["--birth-budget", "unlimited"]);
        }
        if self == Tracer::Empty {
            c.env("KAPROBE_BENCH_EMPTY_PROGRAMS", "1");
        }
        c
    }

    fn other_command(self, line_buffered: bool) -> Command {
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
}

/// Starts a tracer with its output to /dev/null; returns once its hooks are attached and
/// its start-up is over: kaprobe says "start-up memory released" (after "tracing started"
/// and `agent_start`), so that freeing the start-up's BTF and trimming the heap do not count
/// in a run's process CPU (measured: a few ms); for the
/// others, the kernel lists their tracepoint programs under their pid (`bpftool perf
/// list`).
pub(super) fn start_tracer(
    t: Tracer,
    tools: &Tools,
    work: &Path,
    tag: &str,
) -> Result<Option<Proc>> {
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
            p.stderr().contains("start-up memory released")
        } else {
            !bpf::perf_progs(p.pid())?.is_empty()
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
