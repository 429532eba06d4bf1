//! Overhead under connection churn (nginx and wrk, tracers in alternating rounds), the
//! keep-alive contrast, and the per-hook cost (`kernel.bpf_stats_enabled`).
use std::path::Path;

use anyhow::{Result, bail};

use super::{
    Plan, Tools,
    bpf::{MapMem, ProgCost, map_memory, perf_progs, prog_stats},
    perf::cpu_attribution,
    report::Report,
    system::{Sysctl, cpu_ns_between, thread_cpu_ns},
    tracers::{CHURN_TRACERS, KEEPALIVE_TRACERS, Tracer, start_tracer},
    workloads::{WrkResult, start_nginx, wrk},
};

/// The runs of one tracer, round by round.
#[derive(Clone, Debug, Default)]
pub(super) struct Series {
    pub(super) tracer: Option<Tracer>,
    pub(super) runs: Vec<WrkResult>,
}

impl Series {
    pub(super) fn rps(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.rps).collect()
    }
}

/// Every tracer's series, with `Connection: close` and with HTTP keep-alive.
#[derive(Clone, Debug, Default)]
pub(super) struct Churn {
    pub(super) close: Vec<Series>,
    pub(super) keepalive: Vec<Series>,
}

/// One churn run under bpf_stats.
#[derive(Clone, Debug)]
pub(super) struct HookRun {
    pub(super) tracer: Tracer,
    /// Which round (0-based) of [`hook_costs`].
    pub(super) round: usize,
    pub(super) requests: u64,
    pub(super) rps: f64,
    pub(super) progs: Vec<ProgCost>,
    pub(super) maps: Vec<MapMem>,
    /// CPU time of the tracer's own process (the agent) during the run, in ns.
    pub(super) process_ns: u64,
}

/// Fills `r.churn`, `r.hooks` and `r.cpu` (as far as it gets).
pub(super) fn churn(plan: &Plan, tools: &Tools, work: &Path, r: &mut Report) -> Result<()> {
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

/// `n` rounds of one wrk run per tracer on the nginx at `port` (`Connection: close` if
/// `close`).
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

/// `plan.hook_rounds` alternating rounds of one churn run per tracer with
/// `kernel.bpf_stats_enabled=1` (which itself costs two clock reads per program run, so these
/// runs are not in the throughput table). One run's figures scatter by ±25 % on this VM
/// (the agent's CPU per request: 1.4-2.4 µs over five runs of the same build), more than
/// the changes measured: the targets take the median of the rounds, with its interval.
fn hook_costs(plan: &Plan, tools: &Tools, work: &Path, port: u16) -> Result<Vec<HookRun>> {
    let _stats = Sysctl::set("kernel.bpf_stats_enabled", "1")?;
    let tracers = &CHURN_TRACERS[1..];
    let mut out = vec![];
    for round in 0..plan.hook_rounds {
        for k in 0..tracers.len() {
            let t = tracers[(round + k) % tracers.len()];
            let run = hook_run(plan, tools, work, port, t, round)?;
            eprintln!(
                "xtask: bench: bpf_stats round {}/{}: {:<30} {:>7.0} ns of programs, {:>5.2} µs of process per request",
                round + 1,
                plan.hook_rounds,
                t.label(),
                run.programs_ns_per_request(),
                run.process_us_per_request()
            );
            out.push(run);
        }
    }
    Ok(out)
}

/// One churn run of tracer `t` under bpf_stats.
fn hook_run(
    plan: &Plan,
    tools: &Tools,
    work: &Path,
    port: u16,
    t: Tracer,
    round: usize,
) -> Result<HookRun> {
    let tag = format!("hooks-{round}-{t:?}");
    let mut p = start_tracer(t, tools, work, &tag)?.expect("a tracer");
    let ids = perf_progs(p.pid())?;
    let maps = if t.kaprobe() {
        map_memory(p.pid())?
    } else {
        vec![]
    };
    let cpu_before = thread_cpu_ns(p.pid())?;
    let res = wrk(port, plan.secs, true)?;
    p.check_alive()?;
    let process_ns = cpu_ns_between(&cpu_before, &thread_cpu_ns(p.pid())?);
    let progs = prog_stats(&ids)?;
    p.stop()?;
    if t.kaprobe() && !progs.iter().any(|c| c.runs > 0) {
        bail!("{}: no program run counted under bpf_stats", t.label());
    }
    Ok(HookRun {
        tracer: t,
        round,
        requests: res.requests,
        rps: res.rps,
        progs,
        maps,
        process_ns,
    })
}

impl HookRun {
    /// Tracer `t`'s runs of `runs` pooled: run counts, run times, requests and process time
    /// summed over the rounds (requests/s the median); the first round's maps.
    pub(super) fn pooled(runs: &[HookRun], t: Tracer) -> Option<HookRun> {
        let mine: Vec<&HookRun> = runs.iter().filter(|h| h.tracer == t).collect();
        let first = (*mine.first()?).clone();
        let mut all = HookRun {
            requests: 0,
            process_ns: 0,
            rps: super::stats::median(&mine.iter().map(|h| h.rps).collect::<Vec<_>>()),
            ..first
        };
        for p in &mut all.progs {
            (p.runs, p.ns) = (0, 0);
        }
        for h in &mine {
            all.requests += h.requests;
            all.process_ns += h.process_ns;
            for sum in &mut all.progs {
                // By name and tracepoint: `bpftool perf list` need not list them in the
                // same order every round.
                let same = |p: &&ProgCost| p.name == sum.name && p.tracepoint == sum.tracepoint;
                if let Some(p) = h.progs.iter().find(same) {
                    sum.runs += p.runs;
                    sum.ns += p.ns;
                }
            }
        }
        Some(all)
    }

    /// Tracer `t`'s per-round values of `f`.
    pub(super) fn per_round(runs: &[HookRun], t: Tracer, f: impl Fn(&HookRun) -> f64) -> Vec<f64> {
        runs.iter().filter(|h| h.tracer == t).map(f).collect()
    }

    /// The programs' run time per request (bpf_stats), in ns.
    pub(super) fn programs_ns_per_request(&self) -> f64 {
        self.progs.iter().map(|p| p.ns as f64).sum::<f64>() / self.requests.max(1) as f64
    }

    /// The tracer's process CPU per request, in µs.
    pub(super) fn process_us_per_request(&self) -> f64 {
        self.process_ns as f64 / 1000.0 / self.requests.max(1) as f64
    }
}
