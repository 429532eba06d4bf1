//! The timer hooks' cost per call. Every `timer_list` expiry of the system runs
//! `kp_timer_entry` and `kp_timer_exit`, almost none of them TCP's keepalive timer: what
//! such a call costs is kaprobe's tax on the whole machine. Measured with bpf_stats under a
//! load of ordinary timers (threads blocking in `recv()` with a 1 ms `SO_RCVTIMEO`: one
//! `schedule_timeout` timer per wait), in alternating rounds of kaprobe (default) and its
//! empty programs.
use std::{
    io::Read,
    os::unix::net::UnixStream,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    Plan, Tools,
    bpf::{perf_progs, prog_stats},
    system::Sysctl,
    tracers::{Tracer, start_tracer},
};

/// Threads waiting on timers at once.
const WAITERS: usize = 64;

/// One round of one tracer: bpf_stats per call of each timer hook.
#[derive(Clone, Debug)]
pub(super) struct TimerRun {
    pub(super) tracer: Tracer,
    /// `timer_expire_entry` runs, and their mean run time (ns).
    pub(super) entry_runs: u64,
    pub(super) entry_ns: f64,
    pub(super) exit_ns: f64,
}

/// The tracers compared, in alternating order.
pub(super) const TIMER_TRACERS: [Tracer; 2] = [Tracer::Default, Tracer::Empty];

pub(super) fn timer_hooks(plan: &Plan, tools: &Tools, work: &Path) -> Result<Vec<TimerRun>> {
    let _stats = Sysctl::set("kernel.bpf_stats_enabled", "1")?;
    let mut out = vec![];
    for round in 0..plan.timer_rounds {
        for k in 0..TIMER_TRACERS.len() {
            let t = TIMER_TRACERS[(round + k) % TIMER_TRACERS.len()];
            let run = timer_run(t, plan.secs, tools, work, &format!("timers-{round}-{k}"))?;
            eprintln!(
                "xtask: bench: timer round {}/{}: {:<24} entry {:>6.1} ns, exit {:>6.1} ns per call ({} calls)",
                round + 1,
                plan.timer_rounds,
                t.label(),
                run.entry_ns,
                run.exit_ns,
                run.entry_runs
            );
            out.push(run);
        }
    }
    Ok(out)
}

fn timer_run(t: Tracer, secs: u64, tools: &Tools, work: &Path, tag: &str) -> Result<TimerRun> {
    let mut p = start_tracer(t, tools, work, tag)?.expect("a kaprobe tracer");
    let ids = perf_progs(p.pid())?;
    let before = prog_stats(&ids)?;
    ordinary_timers(Duration::from_secs(secs))?;
    p.check_alive()?;
    let after = prog_stats(&ids)?;
    p.stop()?;
    let per_call = |tp: &str| {
        let find = |v: &[super::bpf::ProgCost]| {
            v.iter()
                .find(|c| c.tracepoint == tp)
                .map_or((0, 0), |c| (c.runs, c.ns))
        };
        let (r0, n0) = find(&before);
        let (r1, n1) = find(&after);
        let runs = r1.saturating_sub(r0);
        (runs, n1.saturating_sub(n0) as f64 / runs.max(1) as f64)
    };
    let (entry_runs, entry_ns) = per_call("timer_expire_entry");
    let (exit_runs, exit_ns) = per_call("timer_expire_exit");
    if entry_runs == 0 || exit_runs == 0 {
        bail!("{}: no timer hook run counted under bpf_stats", t.label());
    }
    Ok(TimerRun {
        tracer: t,
        entry_runs,
        entry_ns,
        exit_ns,
    })
}

/// `WAITERS` threads each blocking in `read()` with a 1 ms timeout for `d`.
fn ordinary_timers(d: Duration) -> Result<()> {
    let deadline = Instant::now() + d;
    let mut threads = vec![];
    for _ in 0..WAITERS {
        let (a, b) = UnixStream::pair()?;
        a.set_read_timeout(Some(Duration::from_millis(1)))?;
        threads.push(thread::spawn(move || {
            let _peer = b;
            let mut a = a;
            let mut buf = [0u8; 1];
            while Instant::now() < deadline {
                // Times out (EAGAIN) after 1 ms (rounded up to a jiffy): one timer each.
                let _ = a.read(&mut buf);
            }
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a timer thread panicked"))?;
    }
    Ok(())
}

/// Per round, default's run time per call over the empty program's, for the entry and the
/// exit hook.
pub(super) fn ratios(runs: &[TimerRun]) -> (Vec<f64>, Vec<f64>) {
    let (mut entry, mut exit) = (vec![], vec![]);
    for pair in runs.chunks(TIMER_TRACERS.len()) {
        let of = |t: Tracer| pair.iter().find(|r| r.tracer == t);
        if let (Some(d), Some(e)) = (of(Tracer::Default), of(Tracer::Empty)) {
            entry.push(d.entry_ns / e.entry_ns.max(1e-9));
            exit.push(d.exit_ns / e.exit_ns.max(1e-9));
        }
    }
    (entry, exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tracer: Tracer, entry_ns: f64, exit_ns: f64) -> TimerRun {
        TimerRun {
            tracer,
            entry_runs: 1,
            entry_ns,
            exit_ns,
        }
    }

    #[test]
    fn ratios_pair_each_round_in_either_order() {
        let runs = [
            run(Tracer::Default, 120.0, 50.0),
            run(Tracer::Empty, 60.0, 40.0),
            run(Tracer::Empty, 50.0, 50.0),
            run(Tracer::Default, 75.0, 50.0),
        ];
        let (entry, exit) = ratios(&runs);
        assert_eq!(entry, vec![2.0, 1.5]);
        assert_eq!(exit, vec![1.25, 1.0]);
    }
}
