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
//! 6. Timer hooks: their cost per call under ordinary (non-TCP) timers, against the empty
//!    programs.
//!
//! Everything it starts (nginx, tracers, helpers, namespaces, sysctls, a tracefs mount) is
//! undone when its guard drops, on errors too. Traffic stays on loopback and in the
//! namespaces it makes.
//!
//! This module holds the options, the plan and the run; one module per part (`churn`,
//! `perf`, `throughput`, `stress`, `memory`, `startup`), what they drive (`workloads`,
//! `tracers`, `conns`, `bpf`, `process`, `system`), `stats` and `report`.
mod bpf;
mod churn;
mod conns;
mod memory;
mod perf;
mod process;
mod report;
mod startup;
mod stats;
mod stress;
mod system;
mod throughput;
mod timers;
mod tracers;
mod workloads;

use std::{
    fs,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

use self::{
    report::Report,
    system::{TracefsMount, busy_fraction, load_average},
};
use crate::{build, child, setup};

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

#[derive(Args)]
pub(crate) struct Options {
    /// Smoke test: every part with tiny rounds (under a minute once built); writes
    /// target/bench/quick.md, not docs/benchmarks.md; fails on harness errors.
    #[arg(long)]
    quick: bool,
    /// Alternating rounds of the churn benchmark (default 16; 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds of each wrk run (default 3; 1 with --quick).
    #[arg(long)]
    seconds: Option<u64>,
    /// Write the report here instead.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Run one part only (for working on it); the report goes to target/bench/<part>.md
    /// unless --output says otherwise, never to docs/benchmarks.md.
    #[arg(long, value_enum)]
    only: Option<Part>,
}

/// The parts of the benchmark, in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Part {
    Startup,
    Churn,
    Throughput,
    Stress,
    Memory,
    Timers,
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
    /// Alternating rounds of bpf_stats runs (per-hook cost, program and process time).
    hook_rounds: usize,
    timer_rounds: usize,
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
            hook_rounds: if q { 1 } else { 5 },
            timer_rounds: if q { 1 } else { 12 },
            only: o.only,
        }
    }

    /// Whether part `p` runs.
    fn runs(&self, p: Part) -> bool {
        self.only.is_none_or(|o| o == p)
    }

    /// Where the report goes unless `--output` says: docs/benchmarks.md for a full run, else
    /// under `dir` (target/bench).
    fn report_path(&self, dir: &Path) -> PathBuf {
        if let Some(p) = self.only {
            dir.join(format!("{p:?}.md").to_lowercase())
        } else if self.quick {
            dir.join("quick.md")
        } else {
            setup::workspace_root().join("docs/benchmarks.md")
        }
    }
}

/// The release binaries the benchmark runs.
struct Tools {
    kaprobe: PathBuf,
    throughput: PathBuf,
    conns: PathBuf,
}

impl Tools {
    /// Builds kaprobe (release) and the benchmark's helper examples.
    fn build() -> Result<Tools> {
        build::run(&build::Options::release())?;
        if !child::status(&mut build::cargo(&[
            "build",
            "--release",
            "--package",
            "kaprobe-user",
            "--example",
            "agent_throughput",
            "--example",
            "bench_conns",
        ]))?
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
        Ok(tools)
    }
}

/// `cargo xtask bench`: installs and builds what it needs, measures, writes the report.
pub(crate) fn run(o: Options) -> Result<()> {
    if !setup::is_root() {
        bail!(
            "the benchmark needs root (eBPF, network namespaces, sysctls): run `sudo -E cargo xtask bench`"
        );
    }
    let plan = Plan::new(&o);
    let started = Instant::now();
    setup::apt_install(PACKAGES)?;
    let tools = Tools::build()?;
    let dir = setup::workspace_root().join("target/bench");
    let work = dir.join(format!("run-{}", std::process::id()));
    fs::create_dir_all(&work)?;
    kaprobe_tests::remove_stale_namespaces(conns::NETNS_TAG);
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
    if let Err(e) = result {
        // Never overwrite the published numbers with a partial run.
        let partial = dir.join("failed.md");
        let _ = fs::write(&partial, report::render(&plan, &r));
        return Err(e.context(format!(
            "benchmark failed (partial results in {}; logs in {})",
            partial.display(),
            work.display()
        )));
    }
    let out = o.output.unwrap_or_else(|| plan.report_path(&dir));
    fs::write(&out, report::render(&plan, &r))
        .with_context(|| format!("writing {}", out.display()))?;
    let _ = fs::remove_dir_all(&work);
    eprintln!(
        "xtask: bench: wrote {} ({:.0} s, {:.0} s with the build)",
        out.display(),
        r.duration.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    report::print_targets(&plan, &r);
    Ok(())
}

/// Runs the parts the plan asks for into `r`. The helpers shared with the integration tests
/// (kaprobe_tests) panic where the benchmark's own code returns an error: a panic fails the
/// run as an error does (the partial report is still written).
fn measure(plan: &Plan, tools: &Tools, work: &Path, r: &mut Report) -> Result<()> {
    panic::catch_unwind(AssertUnwindSafe(|| measure_parts(plan, tools, work, r))).unwrap_or_else(
        |p| {
            let why = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Err(anyhow!("panicked: {why}"))
        },
    )
}

fn measure_parts(plan: &Plan, tools: &Tools, work: &Path, r: &mut Report) -> Result<()> {
    r.machine = system::machine();
    if plan.runs(Part::Startup) {
        r.startup = startup::startup(plan, tools, work).context("start-up benchmark")?;
    }
    if plan.runs(Part::Churn) {
        churn::churn(plan, tools, work, r).context("churn benchmark")?;
    }
    if plan.runs(Part::Throughput) {
        r.throughput = throughput::throughput(plan, tools).context("agent throughput benchmark")?;
    }
    if plan.runs(Part::Stress) {
        r.stress = Some(stress::stress(plan, tools, work).context("end-to-end timeout burst")?);
    }
    if plan.runs(Part::Memory) {
        memory::memory_all(plan, tools, work, r)?;
    }
    if plan.runs(Part::Timers) {
        r.timers = timers::timer_hooks(plan, tools, work).context("timer hooks benchmark")?;
    }
    Ok(())
}
