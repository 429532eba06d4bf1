//! The report (docs/benchmarks.md, or a file under target/bench): what was measured, and
//! its rendering in Markdown, one function per section. Sections 1 and 2 (churn, per-hook
//! cost) are in `overhead`, 3 to 5 (agent throughput, memory, start-up) in `agent`, the
//! targets and their verdicts in `targets`.
mod agent;
mod overhead;
mod targets;

use std::{fmt::Write as _, time::Duration};

use targets::targets;

use super::{
    Plan,
    churn::{Churn, HookRun},
    memory::Memory,
    perf::CpuRun,
    startup::Startup,
    stress::Stress,
    throughput::Throughput,
    timers::TimerRun,
};

/// Everything measured, as far as the run got.
#[derive(Default)]
pub(super) struct Report {
    pub(super) quick: bool,
    pub(super) machine: Vec<(String, String)>,
    pub(super) load_before: String,
    pub(super) load_after: String,
    /// Share of the machine's CPU time busy in the seconds before the run.
    pub(super) busy_before: f64,
    pub(super) duration: Duration,
    pub(super) startup: Vec<Startup>,
    pub(super) churn: Churn,
    pub(super) hooks: Vec<HookRun>,
    pub(super) cpu: Vec<CpuRun>,
    pub(super) throughput: Throughput,
    pub(super) stress: Option<Stress>,
    pub(super) memory: Vec<Memory>,
    pub(super) memory_failures: Vec<String>,
    pub(super) timers: Vec<TimerRun>,
}

/// The verdicts on the targets, on stderr.
pub(super) fn print_targets(plan: &Plan, r: &Report) {
    for t in targets(plan, r) {
        eprintln!("xtask: bench: {} {}: {}", t.verdict, t.name, t.measured);
    }
}

/// The report in Markdown.
pub(super) fn render(plan: &Plan, r: &Report) -> String {
    let mut s = String::new();
    let w = &mut s;
    intro(w, plan, r);
    machine(w, r);
    method(w);
    targets_table(w, plan, r);
    overhead::churn(w, plan, r);
    overhead::hooks(w, r);
    overhead::program_time(w, r);
    overhead::process_cpu(w, r);
    overhead::where_cpu_goes(w, plan, r);
    overhead::map_memory(w, r);
    agent::throughput(w, r);
    agent::stress(w, r);
    agent::memory(w, r);
    agent::startup(w, plan, r);
    overhead::timers(w, r);
    s
}

/// The title, and how the numbers were made.
fn intro(w: &mut String, plan: &Plan, r: &Report) {
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
}

/// The machine, and how busy it was.
fn machine(w: &mut String, r: &Report) {
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
}

/// Why rounds alternate, and how far a ratio can be trusted.
fn method(w: &mut String) {
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
}

/// The targets and their verdicts.
fn targets_table(w: &mut String, plan: &Plan, r: &Report) {
    let _ = writeln!(
        w,
        "## Targets\n\n| target | measured | |\n| --- | --- | --- |"
    );
    for t in targets(plan, r) {
        let _ = writeln!(w, "| {} | {} | **{}** |", t.name, t.measured, t.verdict);
    }
    let _ = writeln!(
        w,
        "\nWhere the default mode's CPU goes, why it records connections' starts, and how the \
         birth budget (`--birth-budget`) bounds that cost under churn: docs/design.md, \
         \"Default mode against the empty programs\".\n"
    );
}
