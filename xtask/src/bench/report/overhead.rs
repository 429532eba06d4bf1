//! The report's sections 1 and 2: overhead under connection churn, per-hook cost, where the
//! CPU goes, and the kernel memory of kaprobe's maps.
use std::fmt::Write as _;

use super::Report;
use crate::bench::{
    Plan,
    churn::{HookRun, Series},
    perf::{CpuRun, PERF_HZ},
    stats::{cpu_shares, median, median_ci, min_max, ratio_of},
    timers::{TIMER_TRACERS, ratios},
    tracers::{CHURN_TRACERS, Tracer},
    workloads::page,
};

/// 1: throughput with `Connection: close`, and the HTTP keep-alive contrast.
pub(super) fn churn(w: &mut String, plan: &Plan, r: &Report) {
    let _ = writeln!(w, "## 1. Overhead under connection churn\n");
    let _ = writeln!(
        w,
        "nginx (one process, `keepalive_timeout 0`, a {}-byte file) on 127.0.0.1, loaded by \
         `wrk -t1 -c32 -d{}s -H 'Connection: close'`: every request is a new TCP connection. \
         Tracers write to /dev/null. {} alternating round(s) (each configuration once per round; \
         ratios are medians of per-round ratios, see above). \
         CPU is the whole machine's busy time per request (/proc/stat).\n",
        page().len(),
        plan.secs,
        plan.rounds
    );
    table(w, &r.churn.close);
    let _ = writeln!(
        w,
        "\nThe empty programs (`KAPROBE_BENCH_EMPTY_PROGRAMS=1`) attach kaprobe's six hooks \
         and return at once: the floor of any tracer on these tracepoints.\n"
    );
    let _ = writeln!(
        w,
        "### Contrast: HTTP keep-alive\n\nThe same with long-lived connections \
         (`keepalive_timeout 65`, no `Connection: close`), {} round(s):\n",
        plan.keepalive_rounds
    );
    table(w, &r.churn.keepalive);
}

/// The tracers of the bpf_stats runs, in the report's order, each with its rounds pooled.
fn pooled_hooks(r: &Report) -> Vec<HookRun> {
    CHURN_TRACERS
        .iter()
        .filter_map(|&t| HookRun::pooled(&r.hooks, t))
        .collect()
}

/// 2: run count and run time of each program under bpf_stats.
pub(super) fn hooks(w: &mut String, r: &Report) {
    let rounds = r.hooks.iter().map(|h| h.round + 1).max().unwrap_or(0);
    let _ = writeln!(w, "\n## 2. Per-hook cost\n");
    let _ = writeln!(
        w,
        "{rounds} alternating round(s) of one more churn run per tracer with \
         `kernel.bpf_stats_enabled=1` (restored after): the kernel's run count and run time \
         of each program (`bpftool prog show`, programs matched by the tracer's pid in \
         `bpftool perf list`), summed over the rounds; the last column also gives the median \
         and range of the rounds' totals. bpf_stats adds its own clock reads, so these runs \
         are not in the tables above.\n"
    );
    let _ = writeln!(
        w,
        "| tracer | program | tracepoint | runs/request | ns/run | ns/request |\n| --- | --- | --- | --- | --- | --- |"
    );
    for h in pooled_hooks(r) {
        let req = h.requests.max(1) as f64;
        for p in &h.progs {
            let per_run = if p.runs > 0 {
                p.ns as f64 / p.runs as f64
            } else {
                0.0
            };
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
        let rounds = HookRun::per_round(&r.hooks, h.tracer, HookRun::programs_ns_per_request);
        let (lo, hi) = min_max(&rounds);
        let _ = writeln!(
            w,
            "| **{}** | **all** | | | | **{:.0}** (rounds: median {:.0}, {lo:.0}–{hi:.0}; {:.0} req/s) |",
            h.tracer.label(),
            h.programs_ns_per_request(),
            median(&rounds),
            h.rps
        );
    }
}

/// What kaprobe's programs add to the empty ones per request, against the CPU a request
/// costs without a tracer: the steady estimate.
pub(super) fn program_time(w: &mut String, r: &Report) {
    let per_req = |t: Tracer| HookRun::pooled(&r.hooks, t).map(|h| h.programs_ns_per_request());
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
}

/// The other half of a tracer's cost: its own process, in the same runs.
pub(super) fn process_cpu(w: &mut String, r: &Report) {
    let _ = writeln!(
        w,
        "\nThe tracer's own process in the same runs (its threads' CPU time from \
         /proc/PID/task/*/schedstat, in ns), per request: the median of the rounds and their \
         range; programs and together likewise.\n\n\
         | tracer | process CPU µs/request | programs µs/request | together µs/request |\n\
         | --- | --- | --- | --- |"
    );
    for &t in CHURN_TRACERS {
        let process = HookRun::per_round(&r.hooks, t, HookRun::process_us_per_request);
        if process.is_empty() {
            continue;
        }
        let programs = HookRun::per_round(&r.hooks, t, |h| h.programs_ns_per_request() / 1000.0);
        let together = HookRun::per_round(&r.hooks, t, |h| {
            h.process_us_per_request() + h.programs_ns_per_request() / 1000.0
        });
        let cell = |v: &[f64]| {
            let (lo, hi) = min_max(v);
            format!("{:.2} ({lo:.2}–{hi:.2})", median(v))
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} |",
            t.label(),
            cell(&process),
            cell(&programs),
            cell(&together)
        );
    }
}

/// Where the CPU goes (perf samples).
pub(super) fn where_cpu_goes(w: &mut String, plan: &Plan, r: &Report) {
    if r.cpu.is_empty() {
        return;
    }
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

/// The kernel memory of kaprobe's maps, default settings.
pub(super) fn map_memory(w: &mut String, r: &Report) {
    let Some(h) = r.hooks.iter().find(|h| h.tracer == Tracer::Default) else {
        return;
    };
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

/// One row per tracer of a churn series: throughput, ratio to no tracer, CPU, errors.
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

/// Section 6: the timer hooks per call under ordinary timers.
pub(super) fn timers(w: &mut String, r: &Report) {
    if r.timers.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "\n## 6. Timer hooks under ordinary timers\n\n\
         Every `timer_list` expiry of the machine runs `kp_timer_entry` and `kp_timer_exit`; \
         almost none is TCP's keepalive timer, and those must leave at once. Load: 64 threads \
         blocking in `recv()` with a 1 ms `SO_RCVTIMEO` (a `schedule_timeout` timer each \
         wait); bpf_stats run time per call, kaprobe (default) and its empty programs in \
         alternating rounds ({} each). Ratios are medians of per-round ratios (95 % CI).\n",
        r.timers.len() / TIMER_TRACERS.len()
    );
    let _ = writeln!(
        w,
        "| tracer | calls/round (median) | `kp_timer_entry` ns/call median (min–max) | `kp_timer_exit` ns/call median (min–max) |\n| --- | --- | --- | --- |"
    );
    for t in TIMER_TRACERS {
        let runs: Vec<_> = r.timers.iter().filter(|x| x.tracer == t).collect();
        let entry: Vec<f64> = runs.iter().map(|x| x.entry_ns).collect();
        let exit: Vec<f64> = runs.iter().map(|x| x.exit_ns).collect();
        let calls: Vec<f64> = runs.iter().map(|x| x.entry_runs as f64).collect();
        let ((a, b), (c, d)) = (min_max(&entry), min_max(&exit));
        let _ = writeln!(
            w,
            "| {} | {:.0} | {:.1} ({a:.1}–{b:.1}) | {:.1} ({c:.1}–{d:.1}) |",
            t.label(),
            median(&calls),
            median(&entry),
            median(&exit),
        );
    }
    let (entry, exit) = ratios(&r.timers);
    for (name, v) in [("kp_timer_entry", entry), ("kp_timer_exit", exit)] {
        let (m, lo, hi) = median_ci(&v);
        let _ = writeln!(
            w,
            "\n`{name}`: {m:.2} × the empty program (95 % CI {lo:.2}–{hi:.2})."
        );
    }
}
